//! The results as JSON (`bench/results-DATE.json`): one typed document, written by serde_json.
//! Its keys and nesting are those of the results files committed under `bench/`, so runs stay
//! comparable (a test holds the shape to `bench/results-2026-11-27.json`).

use super::event_path::{EVENT_STEP_SECS, EVENT_THREADS};
use super::median;
use super::report::{case_target, Target};
use super::results::{Delivery, EventStep, Results};
use super::workloads::{Case, Key, Monitor, REFUSED_NOT_APPLICABLE};
use serde::ser::{Serialize, Serializer};
use serde_json::Value;

/// A measured number as the results files have always written it: an integral value without a
/// fraction, any other to 4 decimals, a non-finite one as null.
#[derive(Clone, Copy)]
struct Num(f64);

impl Serialize for Num {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            v if !v.is_finite() => s.serialize_none(),
            v if v.fract() == 0.0 && v.abs() < 1e15 => s.serialize_i64(v as i64),
            v => s.serialize_f64((v * 1e4).round() / 1e4),
        }
    }
}

fn num(v: Option<f64>) -> Option<Num> {
    v.map(Num)
}

/// An object whose keys are data (monitor or workload names), in the given order.
struct Pairs<'a>(Vec<(&'a str, &'a str)>);

impl Serialize for Pairs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().copied())
    }
}

#[derive(serde::Serialize)]
struct Stats {
    min: Option<Num>,
    median: Option<Num>,
    max: Option<Num>,
    all: Vec<Num>,
}

impl Stats {
    fn of(v: &[f64]) -> Stats {
        Stats {
            min: num(v.iter().copied().reduce(f64::min)),
            median: num(median(v)),
            max: num(v.iter().copied().reduce(f64::max)),
            all: v.iter().copied().map(Num).collect(),
        }
    }
}

#[derive(serde::Serialize)]
struct Doc<'a> {
    date: &'a str,
    kernel: &'a str,
    cpu: &'a str,
    cores: usize,
    commit: &'a str,
    rounds: usize,
    runs_per_round: usize,
    run_secs: Num,
    loadavg_start: &'a str,
    loadavg_end: &'a str,
    notes: Vec<String>,
    targets: Vec<Target>,
    syscall_overhead: Vec<Row<'a>>,
    events_delivered: Vec<Delivered<'a>>,
    peers: Pairs<'a>,
    enforcement: Option<Enforcement>,
    startup_s: Stats,
    startup_ebpf_load_attach_s: Stats,
    rss_idle_mib: Stats,
    hwm_after_startup_mib: Stats,
    rss_after_load_mib: Stats,
    hwm_at_end_mib: Stats,
    cpu_idle_percent: Option<Num>,
    cpu_under_load: Vec<CpuUnderLoad<'a>>,
    denied_events: Vec<Denied<'a>>,
    peer_records: Vec<PeerRecords<'a>>,
    event_path: EventPath,
    no_refused_case: Pairs<'a>,
    not_measured: &'a [String],
}

/// A row of the syscall overhead table.
#[derive(serde::Serialize)]
struct Row<'a> {
    workload: &'a str,
    monitor: &'a str,
    case: &'a str,
    ops_per_run: u64,
    median_ns_per_op: Num,
    ns_per_op_per_round: Vec<Option<Num>>,
    ratio: Stats,
    failed_ops: u64,
    refused_ops: u64,
    target: Option<Num>,
}

#[derive(serde::Serialize)]
struct Delivered<'a> {
    monitor: &'a str,
    ops: u64,
    offered_events_per_s: Option<Num>,
    delivered: u64,
    lost: u64,
    records_on_allowed_ops: u64,
}

#[derive(serde::Serialize)]
struct Enforcement {
    refused_attempts: u64,
    refused_connected: u64,
    refused_sent_by_client: u64,
    refused_replies: u64,
    refused_bytes_at_server: u64,
    agent_killed_runs: u64,
    check_non_agent_attempts: u64,
    check_non_agent_bytes: u64,
    check_non_agent_expected_bytes: u64,
    kill_latency_us: Stats,
    kill_survived: u64,
}

#[derive(serde::Serialize)]
struct CpuUnderLoad<'a> {
    workload: &'a str,
    case: &'a str,
    cpu_percent: Num,
}

#[derive(serde::Serialize)]
struct Denied<'a> {
    workload: &'a str,
    refused_ops: u64,
    events: u64,
}

#[derive(serde::Serialize)]
struct PeerRecords<'a> {
    workload: &'a str,
    monitor: &'a str,
    case: &'a str,
    ops: u64,
    records: u64,
}

#[derive(serde::Serialize)]
struct EventPath {
    threads: u32,
    step_secs: Num,
    steps: Vec<Step>,
    zero_loss_events_per_s: Option<Num>,
    first_loss_events_per_s: Option<Num>,
}

#[derive(serde::Serialize)]
struct Step {
    /// A rate, or "max" (unpaced).
    requested_events_per_s: Value,
    offered_events_per_s: Num,
    secs: Num,
    ops: u64,
    delivered: u64,
    lost: u64,
    kernel_drops: Vec<Drops>,
    daemon_cpu_percent: Num,
    drain_s: Num,
    /// "yes" or "no".
    zero_loss: &'static str,
}

#[derive(serde::Serialize)]
struct Drops {
    reason: String,
    count: u64,
}

impl Results {
    pub fn json(&self) -> String {
        let i = &self.info;
        let (idle_cpu, idle_wall) = self.cpu_idle;
        let (zero, first_loss) = self.zero_loss_rate().map_or((None, None), |(z, f)| (Some(z), f));
        let doc = Doc {
            date: &i.date,
            kernel: &i.kernel,
            cpu: &i.cpu,
            cores: i.cores,
            commit: &i.commit,
            rounds: self.rounds,
            runs_per_round: self.reps,
            run_secs: Num(self.run_secs),
            loadavg_start: &i.loadavg_start,
            loadavg_end: &i.loadavg_end,
            notes: self.noise_notes(),
            targets: self.targets(),
            syscall_overhead: self
                .rows()
                .into_iter()
                .map(|(key, med, ratios)| self.json_row(key, med, &ratios))
                .collect(),
            events_delivered: self.json_delivered(),
            peers: Pairs(self.peers.iter().map(|(m, s)| (m.name(), s.as_str())).collect()),
            enforcement: self.json_enforcement(),
            startup_s: Stats::of(&self.startup_s),
            startup_ebpf_load_attach_s: Stats::of(&self.attach_s),
            rss_idle_mib: Stats::of(&self.rss_idle_mib),
            hwm_after_startup_mib: Stats::of(&self.hwm_start_mib),
            rss_after_load_mib: Stats::of(&self.rss_load_mib),
            hwm_at_end_mib: Stats::of(&self.rss_peak_mib),
            cpu_idle_percent: num((idle_wall > 0.0).then(|| 100.0 * idle_cpu / idle_wall)),
            cpu_under_load: self.json_cpu_under_load(),
            denied_events: self
                .denied
                .iter()
                .map(|(w, &(refused_ops, events))| Denied { workload: w, refused_ops, events })
                .collect(),
            peer_records: self.json_peer_records(),
            event_path: EventPath {
                threads: EVENT_THREADS,
                step_secs: Num(EVENT_STEP_SECS),
                steps: self.event_path.iter().map(json_step).collect(),
                zero_loss_events_per_s: num(zero),
                first_loss_events_per_s: num(first_loss),
            },
            no_refused_case: Pairs(REFUSED_NOT_APPLICABLE.to_vec()),
            not_measured: &self.not_measured,
        };
        serde_json::to_string_pretty(&doc).expect("the results serialise") + "\n"
    }

    fn json_row(&self, (wi, mon, case): Key, med: f64, ratios: &[f64]) -> Row<'_> {
        Row {
            workload: self.workloads[wi].name,
            monitor: mon.name(),
            case: case.name(),
            ops_per_run: self.n[wi],
            median_ns_per_op: Num(med),
            ns_per_op_per_round: self.samples[&(wi, mon, case)].iter().map(|s| num(*s)).collect(),
            ratio: Stats::of(ratios),
            failed_ops: self.errors.get(&(wi, mon, case)).copied().unwrap_or(0),
            refused_ops: self.refused.get(&(wi, mon, case)).map_or(0, |r| r.0),
            target: if mon == Monitor::Ours { num(case_target(case)) } else { None },
        }
    }

    fn json_delivered(&self) -> Vec<Delivered<'_>> {
        let row = |(m, d): (&Monitor, &Delivery)| Delivered {
            monitor: m.name(),
            ops: d.ops,
            offered_events_per_s: num(self.offered_rate(*m)),
            delivered: d.delivered,
            lost: d.lost,
            records_on_allowed_ops: d.spurious,
        };
        self.delivery.iter().map(row).collect()
    }

    fn json_enforcement(&self) -> Option<Enforcement> {
        self.enforcement.as_ref().map(|e| Enforcement {
            refused_attempts: e.attempts,
            refused_connected: e.connected,
            refused_sent_by_client: e.sent,
            refused_replies: e.replies,
            refused_bytes_at_server: e.bytes_at_server,
            agent_killed_runs: e.agent_killed_runs,
            check_non_agent_attempts: e.validation_attempts,
            check_non_agent_bytes: e.validation_bytes,
            check_non_agent_expected_bytes: e.validation_expected,
            kill_latency_us: Stats::of(&e.kill_latency_us),
            kill_survived: e.kill_survived,
        })
    }

    fn json_cpu_under_load(&self) -> Vec<CpuUnderLoad<'_>> {
        let row = |(&(wi, c), &(cpu, wall)): (&(usize, Case), &(f64, f64))| CpuUnderLoad {
            workload: self.workloads[wi].name,
            case: c.name(),
            cpu_percent: Num(if wall > 0.0 { 100.0 * cpu / wall } else { 0.0 }),
        };
        self.cpu_load.iter().map(row).collect()
    }

    fn json_peer_records(&self) -> Vec<PeerRecords<'_>> {
        let row = |(&(wi, m, case), &(ops, records)): (&Key, &(u64, u64))| PeerRecords {
            workload: self.workloads[wi].name,
            monitor: m.name(),
            case: case.name(),
            ops,
            records,
        };
        self.peer_records.iter().map(row).collect()
    }
}

fn json_step(st: &EventStep) -> Step {
    Step {
        requested_events_per_s: if st.requested == 0 { "max".into() } else { st.requested.into() },
        offered_events_per_s: Num(st.offered),
        secs: Num(st.secs),
        ops: st.ops,
        delivered: st.delivered,
        lost: st.lost,
        kernel_drops: st.kernel_drops.iter().map(|(r, v)| Drops { reason: r.clone(), count: *v }).collect(),
        daemon_cpu_percent: Num(st.cpu_percent),
        drain_s: Num(st.drain_s),
        zero_loss: if st.zero_loss() { "yes" } else { "no" },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn numbers_are_written_as_before() {
        let v = serde_json::to_string(&[Num(1.0), Num(0.5), Num(2.123456), Num(f64::NAN), Num(-3.0)]).unwrap();
        assert_eq!(v, "[1,0.5,2.1235,null,-3]");
        let p = serde_json::to_string(&Pairs(vec![("write", "a \"quoted\"\n"), ("SSL_write", "b")])).unwrap();
        assert_eq!(p, r#"{"write":"a \"quoted\"\n","SSL_write":"b"}"#);
    }

    /// Every key path of a JSON document, arrays' elements merged (`a.b[].c`).
    fn key_paths(v: &Value, at: &str, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let path = format!("{at}.{k}");
                    out.insert(path.clone());
                    key_paths(v, &path, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| key_paths(v, &format!("{at}[]"), out)),
            _ => {}
        }
    }

    /// A run's JSON has the keys and nesting of the committed results, so runs stay comparable.
    #[test]
    fn same_shape_as_the_committed_results() {
        let committed = crate::root().join("bench/results-2026-11-27.json");
        let committed: Value = serde_json::from_str(&std::fs::read_to_string(committed).unwrap()).unwrap();
        let ours: Value = serde_json::from_str(&crate::bench::tests::sample_results().json()).unwrap();
        let (mut want, mut got) = (BTreeSet::new(), BTreeSet::new());
        key_paths(&committed, "", &mut want);
        key_paths(&ours, "", &mut got);
        let (missing, new): (Vec<_>, Vec<_>) = (want.difference(&got).collect(), got.difference(&want).collect());
        assert!(missing.is_empty() && new.is_empty(), "missing keys: {missing:?}; new keys: {new:?}");
    }
}
