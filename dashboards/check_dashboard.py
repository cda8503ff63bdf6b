#!/usr/bin/env python3
"""Check every PromQL expression of a Grafana dashboard against a Prometheus server.

Extracts the expressions of all panels (rows included, collapsed or not), of the dashboard's
Prometheus annotations and of its query variables (label_values(SELECTOR, LABEL) is checked as
SELECTOR), replaces the template variables, runs each as an instant query through
/api/v1/query, and prints one line per expression:

    ok     3 series   Violations / Violations by agent, kind and action [A]
    empty             Alert delivery / Webhook queue length [A]
    ERROR  parse error: ...   Daemon / Uptime [A]

Exit status: 1 if any query fails (a PromQL error, a non-success status); with --require-data,
also 1 if any panel or variable expression returns no series, except those matching an
--allow-empty pattern. Annotation expressions are filters (e.g. "> 0"): they are checked for
errors but never required to return data. 2 when Prometheus cannot be reached.

Template variables become ".*" (every metric label selector in the dashboard is a regex match),
unless given with --var NAME=VALUE; $__rate_interval and $__interval become --rate-interval
(default 1m), $__range becomes --range (default 1h).

Usage:
    check_dashboard.py [--url http://127.0.0.1:9090] [--require-data] [--allow-empty REGEX]...
                       [--var NAME=VALUE]... [--rate-interval 1m] [--range 1h] [DASHBOARD.json]...

Only the Python standard library is used.
"""
import argparse
import json
import math
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DASHBOARDS = [os.path.join(HERE, "agent-monitor.json")]

DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def seconds(duration):
    """Seconds in a Prometheus duration such as 1h30m or 90s."""
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise argparse.ArgumentTypeError(f"not a duration: {duration!r}")
    for n, u in parts:
        total += float(n) * DURATION_UNITS[u]
    return total


class Expr:
    def __init__(self, where, expr, kind):
        self.where = where  # human-readable location
        self.expr = expr
        self.kind = kind  # "panel", "variable" or "annotation"


def walk_panels(panels, row_title=""):
    for p in panels or []:
        if p.get("type") == "row":
            yield from walk_panels(p.get("panels"), p.get("title", ""))
            continue
        yield row_title, p
        # Library panels or nested layouts may nest panels too.
        if p.get("panels"):
            yield from walk_panels(p.get("panels"), row_title)


def extract(dashboard):
    """All Prometheus expressions of a dashboard, in display order."""
    out = []
    current_row = ""
    for p in dashboard.get("panels", []):
        if p.get("type") == "row":
            current_row = p.get("title", "")
            nested = p.get("panels") or []
        else:
            nested = [p]
        for row_title, panel in walk_panels(nested, current_row):
            for t in panel.get("targets") or []:
                expr = t.get("expr")
                if not expr:
                    continue
                where = f"{row_title} / {panel.get('title', '?')} [{t.get('refId', '?')}]"
                out.append(Expr(where, expr, "panel"))
    for a in (dashboard.get("annotations") or {}).get("list", []):
        if a.get("expr"):
            out.append(Expr(f"annotation {a.get('name', '?')}", a["expr"], "annotation"))
    for v in (dashboard.get("templating") or {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query", "")
        q = (q or "").strip()
        m = re.fullmatch(r"label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)", q, re.S)
        if m:
            out.append(Expr(f"variable ${v.get('name')}", f"group by ({m.group(2)}) ({m.group(1)})", "variable"))
        elif q.startswith("query_result(") and q.endswith(")"):
            out.append(Expr(f"variable ${v.get('name')}", q[len("query_result("):-1], "variable"))
        elif q and not q.startswith(("label_names(", "metrics(", "label_values(")):
            out.append(Expr(f"variable ${v.get('name')}", q, "variable"))
    return out


def template_vars(dashboard):
    return [v.get("name") for v in (dashboard.get("templating") or {}).get("list", []) if v.get("name")]


def substitute(expr, variables, rate_interval, range_):
    """Replace Grafana variables ($x, ${x}, ${x:fmt}, [[x]]) with concrete values."""
    range_s = seconds(range_)
    builtins = {
        "__rate_interval": rate_interval,
        "__interval": rate_interval,
        "__interval_ms": str(int(seconds(rate_interval) * 1000)),
        "__range": range_,
        "__range_s": str(int(range_s)),
        "__range_ms": str(int(range_s * 1000)),
    }

    def value(name, original):
        if name in builtins:
            return builtins[name]
        if name in variables:
            return variables[name]
        return original

    expr = re.sub(r"\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}", lambda m: value(m.group(1), m.group(0)), expr)
    expr = re.sub(r"\[\[([A-Za-z0-9_]+)(?::[^\]]*)?\]\]", lambda m: value(m.group(1), m.group(0)), expr)
    # The name is matched greedily: $__range_s is not read as $__range followed by "_s".
    expr = re.sub(r"\$([A-Za-z0-9_]+)", lambda m: value(m.group(1), m.group(0)), expr)
    return expr


def query(url, expr, at=None, timeout=30):
    """(status, result or error message). Raises OSError when the server cannot be reached."""
    form = {"query": expr}
    if at:
        form["time"] = at
    data = urllib.parse.urlencode(form).encode()
    req = urllib.request.Request(url.rstrip("/") + "/api/v1/query", data=data,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as e:
        # Prometheus answers 400/422 with a JSON body for a bad query.
        try:
            body = json.load(e)
        except ValueError:
            return "error", f"HTTP {e.code} {e.reason}"
    if body.get("status") != "success":
        return "error", f"{body.get('errorType', 'error')}: {body.get('error', body)}"
    return "success", body.get("data", {})


def count_series(data):
    """(number of series, whether all values are NaN)."""
    rtype, result = data.get("resultType"), data.get("result")
    if rtype == "scalar" or rtype == "string":
        v = result[1] if result else None
        return 1, v is not None and v.lower() == "nan"
    result = result or []
    values = []
    for s in result:
        if "value" in s:
            values.append(s["value"][1])
        values.extend(v[1] for v in s.get("values", []))
    all_nan = bool(values) and all(v.lower() == "nan" for v in values)
    return len(result), all_nan


def parse_var(text):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    return name.lstrip("$"), value


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("dashboards", nargs="*", default=DEFAULT_DASHBOARDS, metavar="DASHBOARD.json",
                    help="dashboards to check (default: agent-monitor.json beside this script)")
    ap.add_argument("--url", default=os.environ.get("PROMETHEUS_URL", "http://127.0.0.1:9090"),
                    help="Prometheus base URL (default: $PROMETHEUS_URL or http://127.0.0.1:9090)")
    ap.add_argument("--require-data", action="store_true",
                    help="fail when a panel or variable expression returns no series")
    ap.add_argument("--allow-empty", action="append", default=[], metavar="REGEX",
                    help="with --require-data, tolerate no data for expressions whose location "
                         "(\"Row / Panel [refId]\") or text matches REGEX (repeatable)")
    ap.add_argument("--var", action="append", type=parse_var, default=[], metavar="NAME=VALUE",
                    help="value of a template variable (default: .*)")
    ap.add_argument("--rate-interval", type=str, default="1m", help="value of $__rate_interval (default 1m)")
    ap.add_argument("--range", dest="range_", type=str, default="1h", help="value of $__range (default 1h)")
    ap.add_argument("--time", help="evaluation time (RFC 3339 or Unix seconds; default: now)")
    ap.add_argument("-q", "--quiet", action="store_true", help="print only problems and the summary")
    args = ap.parse_args(argv)
    for d in (args.rate_interval, args.range_):
        try:
            seconds(d)
        except argparse.ArgumentTypeError as e:
            ap.error(str(e))
    allow = [re.compile(r) for r in args.allow_empty]
    given = dict(args.var)

    errors = empty_fail = empty_ok = ok = 0
    for path in args.dashboards:
        with open(path) as f:
            dashboard = json.load(f)
        variables = {name: ".*" for name in template_vars(dashboard) if name != "datasource"}
        variables.update(given)
        exprs = extract(dashboard)
        if not exprs:
            print(f"{path}: no Prometheus expressions found", file=sys.stderr)
            errors += 1
            continue
        print(f"{path}: {len(exprs)} expressions against {args.url}")
        for e in exprs:
            text = substitute(e.expr, variables, args.rate_interval, args.range_)
            try:
                status, data = query(args.url, text, args.time)
            except OSError as err:
                print(f"cannot query Prometheus at {args.url}: {err}", file=sys.stderr)
                return 2
            one_line = " ".join(text.split())
            if status != "success":
                errors += 1
                print(f"ERROR  {e.where}: {data}\n       query: {one_line}")
                continue
            n, all_nan = count_series(data)
            if n == 0:
                if e.kind == "annotation" or not args.require_data:
                    empty_ok += 1
                    if not args.quiet:
                        print(f"empty  {e.where}")
                elif any(r.search(e.where) or r.search(e.expr) for r in allow):
                    empty_ok += 1
                    if not args.quiet:
                        print(f"empty  {e.where} (allowed)")
                else:
                    empty_fail += 1
                    print(f"EMPTY  {e.where}\n       query: {one_line}")
                continue
            ok += 1
            if not args.quiet:
                note = " (all NaN)" if all_nan else ""
                print(f"ok     {e.where}: {n} series{note}")
    print(f"{ok} with data, {empty_ok + empty_fail} empty ({empty_fail} not allowed), {errors} errors")
    if errors or (args.require_data and empty_fail):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
