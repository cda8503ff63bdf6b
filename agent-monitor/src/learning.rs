//! From alert to kill with evidence: `agent-monitor profile` (a least-privilege profile learned
//! from recorded events, `policy::learn`) and `agent-monitor policy test` (what a candidate
//! policy would have refused of them, `policy::replay`). Both read events logs offline: the
//! daemon's file and its rotations (`.gz` too), oldest first.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::BufRead,
    net::{IpAddr, ToSocketAddrs},
    path::{Path, PathBuf},
    process::ExitCode,
};

use crate::policy::{
    self,
    replay::{Decision, Grant, Judge, Recorded},
    PolicySource,
};

/// The window of events to read.
pub struct Window<'a> {
    pub since: Option<&'a str>,
    pub until: Option<&'a str>,
}

impl Window<'_> {
    fn holds(&self, ts: &str) -> bool {
        self.since.is_none_or(|s| ts >= s) && self.until.is_none_or(|u| ts <= u)
    }
}

/// The events files to read: those given, else the policy's `events_file` with its rotations
/// (`FILE.N`, `FILE.N.gz`; the oldest, highest N, first).
pub fn event_files(given: Vec<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<Vec<PathBuf>> {
    if !given.is_empty() {
        return Ok(given);
    }
    let p = PolicySource::resolve(config)
        .load()
        .map_err(|d| anyhow::anyhow!("{}", d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")))?;
    let file = PathBuf::from(p.daemon.events_file.unwrap_or_else(|| policy::DEFAULT_EVENTS_FILE.into()));
    let mut rotated: Vec<(u32, PathBuf)> = Vec::new();
    if let (Some(dir), Some(name)) = (file.parent(), file.file_name().and_then(|n| n.to_str())) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            let Some(rest) = n.strip_prefix(name).and_then(|r| r.strip_prefix('.')) else { continue };
            if let Ok(i) = rest.trim_end_matches(".gz").parse::<u32>() {
                rotated.push((i, e.path()));
            }
        }
    }
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    Ok(rotated.into_iter().map(|(_, p)| p).chain([file]).collect())
}

/// Every agent event in `files`, in order, within the window.
pub fn read_events(files: &[PathBuf], w: &Window) -> anyhow::Result<Vec<Recorded>> {
    let mut out = Vec::new();
    for f in files {
        let r = open(f).map_err(|e| anyhow::anyhow!("cannot read the events log {}: {e}", f.display()))?;
        for (i, line) in r.lines().enumerate() {
            let line = line.map_err(|e| anyhow::anyhow!("{}:{}: {e}", f.display(), i + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&line)
                .map_err(|e| anyhow::anyhow!("{}:{}: not an event line: {e}", f.display(), i + 1))?;
            if let Some(r) = Recorded::from_json(&v).filter(|r| w.holds(&r.ts)) {
                out.push(r);
            }
        }
    }
    Ok(out)
}

fn open(path: &Path) -> std::io::Result<Box<dyn BufRead>> {
    let f = std::fs::File::open(path)?;
    Ok(if path.extension().is_some_and(|e| e == "gz") {
        Box::new(std::io::BufReader::new(flate2::read::MultiGzDecoder::new(f)))
    } else {
        Box::new(std::io::BufReader::new(f))
    })
}

/// `agent-monitor profile`: print the learned `[[agent]]` table.
pub fn profile(agent: &str, action: &str, files: &[PathBuf], w: &Window) -> anyhow::Result<()> {
    let events = read_events(files, w)?;
    if !events.iter().any(|e| e.agent == agent) {
        let mut names: Vec<&str> =
            events.iter().map(|e| e.agent.as_str()).collect::<BTreeSet<_>>().into_iter().collect();
        names.retain(|n| !n.is_empty());
        anyhow::bail!(
            "no event of agent {agent:?} in {} (agents seen: {})",
            files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "),
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        );
    }
    if !events
        .iter()
        .any(|e| e.agent == agent && e.verdict == "allowed" && e.kind != "process.exec" && e.kind != "process.exit")
    {
        eprintln!(
            "agent-monitor: warning: no allowed operation of {agent:?} was recorded: was `audit = true` set for the \
             learning run? Without it only violations are recorded, and the profile grants only those."
        );
    }
    print!("{}", policy::learn::profile(agent, action, &events));
    Ok(())
}

/// The system resolver, as the daemon resolves `allow` host names.
fn resolve(host: &str) -> Vec<IpAddr> {
    (host, 0).to_socket_addrs().map(|a| a.map(|s| s.ip()).collect()).unwrap_or_default()
}

/// `agent-monitor policy test`: exit 0 if the candidate refuses nothing recorded, 1 if it
/// refuses something, 2 if it cannot be read.
pub fn policy_test(candidate: &Path, files: &[PathBuf], agent: Option<&str>, w: &Window, json: bool) -> ExitCode {
    let p = match policy::load_set(candidate) {
        Ok((p, _)) => p,
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            return ExitCode::from(2);
        }
    };
    let events = match read_events(files, w) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("agent-monitor: {e:#}");
            return ExitCode::from(2);
        }
    };
    let judge = Judge::new(&p, &resolve);
    let report = Report::of(&judge, &events, agent);
    if json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text(candidate, files));
    }
    if report.refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Refusals grouped by (agent, kind, target, rule, why): count, first and last seen.
type Groups = BTreeMap<(String, String, String, String, String), (usize, String, String)>;

/// What a replay found.
#[derive(Default)]
pub struct Report {
    pub judged: usize,
    pub refused: Groups,
    /// Refused when recorded, allowed by the candidate.
    pub now_allowed: Groups,
    /// Grants of the candidate no recorded operation used.
    pub unused: Vec<(String, String)>,
    /// Events of agents the candidate does not have, per agent.
    pub no_agent: BTreeMap<String, usize>,
}

impl Report {
    pub fn of(judge: &Judge, events: &[Recorded], agent: Option<&str>) -> Report {
        let mut r = Report::default();
        let mut used: BTreeSet<Grant> = BTreeSet::new();
        let add = |g: &mut Groups, e: &Recorded, rule: &str, why: &str| {
            let k = (e.agent.clone(), e.kind.clone(), e.target.clone(), rule.to_string(), why.to_string());
            let v = g.entry(k).or_insert((0, e.ts.clone(), e.ts.clone()));
            v.0 += 1;
            v.2 = e.ts.clone();
        };
        for e in events.iter().filter(|e| agent.is_none_or(|a| e.agent == a)) {
            match judge.decide(e) {
                Decision::NotJudged => continue,
                Decision::NoAgent => *r.no_agent.entry(e.agent.clone()).or_default() += 1,
                Decision::Allowed(g) => {
                    if e.was_violation() {
                        add(&mut r.now_allowed, e, &e.rule, "");
                    }
                    used.extend(g);
                }
                Decision::Refused { rule, why } => add(&mut r.refused, e, &rule, &why),
                Decision::Always { rule, why } => {
                    add(&mut r.refused, e, &rule, &format!("refused whatever the policy: {why}"))
                }
            }
            r.judged += 1;
        }
        let seen_agents: BTreeSet<&str> = events.iter().map(|e| e.agent.as_str()).collect();
        for (g, what) in judge.grants() {
            let owner = match &g {
                Grant::Writable(a, _) | Grant::Allow(a, _) | Grant::Syscalls(a, _) => a.as_str(),
                Grant::Implicit => continue,
            };
            if agent.is_none_or(|a| a == owner) && seen_agents.contains(owner) && !used.contains(&g) {
                r.unused.push((owner.to_string(), what));
            }
        }
        r
    }

    /// `{"judged": N, "refused": [...], "now_allowed": [...], "unused": [...], "no_agent": {...}}`;
    /// a group is `{"agent", "kind", "target", "rule", "why", "count", "first", "last"}`.
    pub fn json(&self) -> serde_json::Value {
        let groups = |g: &Groups| {
            g.iter()
                .map(|((agent, kind, target, rule, why), (count, first, last))| {
                    serde_json::json!({"agent": agent, "kind": kind, "target": target, "rule": rule, "why": why,
                        "count": count, "first": first, "last": last})
                })
                .collect::<Vec<_>>()
        };
        serde_json::json!({
            "judged": self.judged,
            "refused": groups(&self.refused),
            "now_allowed": groups(&self.now_allowed),
            "unused": self.unused.iter().map(|(a, w)| serde_json::json!({"agent": a, "grant": w})).collect::<Vec<_>>(),
            "no_agent": self.no_agent,
        })
    }

    pub fn text(&self, candidate: &Path, files: &[PathBuf]) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let n: usize = self.refused.values().map(|v| v.0).sum();
        let _ = writeln!(
            out,
            "{}: {} of {} recorded operations would be refused ({})",
            candidate.display(),
            n,
            self.judged,
            files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
        );
        let section = |out: &mut String, title: &str, g: &Groups| {
            if g.is_empty() {
                return;
            }
            let _ = writeln!(out, "\n{title}:");
            let mut agent = "";
            for ((a, kind, target, rule, why), (count, first, last)) in g {
                if a != agent {
                    let _ = writeln!(out, "  agent {a}");
                    agent = a;
                }
                let why = if why.is_empty() { String::new() } else { format!(": {why}") };
                let _ = writeln!(out, "    {kind} {target} [{rule}] x{count} (first {first}, last {last}){why}");
            }
        };
        section(&mut out, "would refuse", &self.refused);
        section(&mut out, "would allow (refused when recorded)", &self.now_allowed);
        if !self.unused.is_empty() {
            let _ = writeln!(out, "\nnever used (least-privilege slack):");
            for (a, what) in &self.unused {
                let _ = writeln!(out, "  agent {a}: {what}");
            }
        }
        if !self.no_agent.is_empty() {
            let _ = writeln!(out, "\nnot judged (the candidate has no such agent):");
            for (a, n) in &self.no_agent {
                let _ = writeln!(out, "  agent {a}: {n} operations");
            }
        }
        out
    }
}
