//! The results as JSON (`bench/results-DATE.json`).

use super::event_path::{EVENT_STEP_SECS, EVENT_THREADS};
use super::median;
use super::report::case_target;
use super::results::Results;
use super::workloads::{Monitor, REFUSED_NOT_APPLICABLE};
use std::fmt::Write as _;

impl Results {
    pub fn json(&self) -> String {
        let i = &self.info;
        let num = |v: Option<f64>| v.map(J::N).unwrap_or(J::Null);
        let stats = |v: &[f64]| {
            J::O(vec![
                ("min", num(v.iter().copied().reduce(f64::min))),
                ("median", num(median(v))),
                ("max", num(v.iter().copied().reduce(f64::max))),
                ("all", J::A(v.iter().map(|x| J::N(*x)).collect())),
            ])
        };
        let rows = self.rows().into_iter().map(|((wi, mon, case), med, ratios)| {
            let per_round = self.samples[&(wi, mon, case)].iter().map(|s| num(*s)).collect();
            J::O(vec![
                ("workload", J::S(self.workloads[wi].name.into())),
                ("monitor", J::S(mon.name().into())),
                ("case", J::S(case.name().into())),
                ("ops_per_run", J::N(self.n[wi] as f64)),
                ("median_ns_per_op", J::N(med)),
                ("ns_per_op_per_round", J::A(per_round)),
                ("ratio", stats(&ratios)),
                ("failed_ops", J::N(self.errors.get(&(wi, mon, case)).copied().unwrap_or(0) as f64)),
                ("refused_ops", J::N(self.refused.get(&(wi, mon, case)).map_or(0, |r| r.0) as f64)),
                (
                    "target",
                    match (mon, case_target(case)) {
                        (Monitor::Ours, Some(t)) => J::N(t),
                        _ => J::Null,
                    },
                ),
            ])
        });
        let delivery = self.delivery.iter().map(|(m, d)| {
            J::O(vec![
                ("monitor", J::S(m.name().into())),
                ("ops", J::N(d.ops as f64)),
                ("offered_events_per_s", self.offered_rate(*m).map(J::N).unwrap_or(J::Null)),
                ("delivered", J::N(d.delivered as f64)),
                ("lost", J::N(d.lost as f64)),
                ("records_on_allowed_ops", J::N(d.spurious as f64)),
            ])
        });
        let enforcement = self.enforcement.as_ref().map(|e| {
            J::O(vec![
                ("refused_attempts", J::N(e.attempts as f64)),
                ("refused_connected", J::N(e.connected as f64)),
                ("refused_sent_by_client", J::N(e.sent as f64)),
                ("refused_replies", J::N(e.replies as f64)),
                ("refused_bytes_at_server", J::N(e.bytes_at_server as f64)),
                ("agent_killed_runs", J::N(e.agent_killed_runs as f64)),
                ("check_non_agent_attempts", J::N(e.validation_attempts as f64)),
                ("check_non_agent_bytes", J::N(e.validation_bytes as f64)),
                ("check_non_agent_expected_bytes", J::N(e.validation_expected as f64)),
                ("kill_latency_us", stats(&e.kill_latency_us)),
                ("kill_survived", J::N(e.kill_survived as f64)),
            ])
        });
        let targets = self.targets().into_iter().map(|(name, bound, value, status)| {
            J::O(vec![
                ("name", J::S(name)),
                ("bound", J::S(bound)),
                ("value", J::S(value)),
                ("status", J::S(status.into())),
            ])
        });
        let (idle_cpu, idle_wall) = self.cpu_idle;
        let cpu_load = self.cpu_load.iter().map(|(&(wi, c), &(cpu, wall))| {
            J::O(vec![
                ("workload", J::S(self.workloads[wi].name.into())),
                ("case", J::S(c.name().into())),
                ("cpu_percent", J::N(if wall > 0.0 { 100.0 * cpu / wall } else { 0.0 })),
            ])
        });
        let denied = self.denied.iter().map(|(w, (refused, events))| {
            J::O(vec![
                ("workload", J::S(w.to_string())),
                ("refused_ops", J::N(*refused as f64)),
                ("events", J::N(*events as f64)),
            ])
        });
        let peer_records = self.peer_records.iter().map(|(&(wi, m, case), &(ops, records))| {
            J::O(vec![
                ("workload", J::S(self.workloads[wi].name.into())),
                ("monitor", J::S(m.name().into())),
                ("case", J::S(case.name().into())),
                ("ops", J::N(ops as f64)),
                ("records", J::N(records as f64)),
            ])
        });
        let steps = self.event_path.iter().map(|st| {
            J::O(vec![
                (
                    "requested_events_per_s",
                    if st.requested == 0 { J::S("max".into()) } else { J::N(st.requested as f64) },
                ),
                ("offered_events_per_s", J::N(st.offered)),
                ("secs", J::N(st.secs)),
                ("ops", J::N(st.ops as f64)),
                ("delivered", J::N(st.delivered as f64)),
                ("lost", J::N(st.lost as f64)),
                (
                    "kernel_drops",
                    J::A(
                        st.kernel_drops
                            .iter()
                            .map(|(r, v)| J::O(vec![("reason", J::S(r.clone())), ("count", J::N(*v as f64))]))
                            .collect(),
                    ),
                ),
                ("daemon_cpu_percent", J::N(st.cpu_percent)),
                ("drain_s", J::N(st.drain_s)),
                ("zero_loss", J::S(if st.zero_loss() { "yes" } else { "no" }.into())),
            ])
        });
        let (zero, first_loss) = self.zero_loss_rate().map_or((None, None), |(z, f)| (Some(z), f));
        let event_path = J::O(vec![
            ("threads", J::N(EVENT_THREADS as f64)),
            ("step_secs", J::N(EVENT_STEP_SECS)),
            ("steps", J::A(steps.collect())),
            ("zero_loss_events_per_s", num(zero)),
            ("first_loss_events_per_s", num(first_loss)),
        ]);
        let doc = J::O(vec![
            ("date", J::S(i.date.clone())),
            ("kernel", J::S(i.kernel.clone())),
            ("cpu", J::S(i.cpu.clone())),
            ("cores", J::N(i.cores as f64)),
            ("commit", J::S(i.commit.clone())),
            ("rounds", J::N(self.rounds as f64)),
            ("runs_per_round", J::N(self.reps as f64)),
            ("run_secs", J::N(self.run_secs)),
            ("loadavg_start", J::S(i.loadavg_start.clone())),
            ("loadavg_end", J::S(i.loadavg_end.clone())),
            ("notes", J::A(self.noise_notes().into_iter().map(J::S).collect())),
            ("targets", J::A(targets.collect())),
            ("syscall_overhead", J::A(rows.collect())),
            ("events_delivered", J::A(delivery.collect())),
            ("peers", J::O(self.peers.iter().map(|(m, s)| (m.name(), J::S(s.clone()))).collect())),
            ("enforcement", enforcement.unwrap_or(J::Null)),
            ("startup_s", stats(&self.startup_s)),
            ("startup_ebpf_load_attach_s", stats(&self.attach_s)),
            ("rss_idle_mib", stats(&self.rss_idle_mib)),
            ("hwm_after_startup_mib", stats(&self.hwm_start_mib)),
            ("rss_after_load_mib", stats(&self.rss_load_mib)),
            ("hwm_at_end_mib", stats(&self.rss_peak_mib)),
            ("cpu_idle_percent", num((idle_wall > 0.0).then(|| 100.0 * idle_cpu / idle_wall))),
            ("cpu_under_load", J::A(cpu_load.collect())),
            ("denied_events", J::A(denied.collect())),
            ("peer_records", J::A(peer_records.collect())),
            ("event_path", event_path),
            (
                "no_refused_case",
                J::O(REFUSED_NOT_APPLICABLE.iter().map(|(w, why)| (*w, J::S(why.to_string()))).collect()),
            ),
            ("not_measured", J::A(self.not_measured.iter().map(|s| J::S(s.clone())).collect())),
        ]);
        let mut s = String::new();
        doc.write(&mut s, 0);
        s.push('\n');
        s
    }
}

/// Just enough JSON for the results (no serde in xtask).
enum J {
    Null,
    N(f64),
    S(String),
    A(Vec<J>),
    O(Vec<(&'static str, J)>),
}

impl J {
    fn write(&self, out: &mut String, depth: usize) {
        let pad = |out: &mut String, d: usize| {
            out.push('\n');
            out.push_str(&"  ".repeat(d));
        };
        match self {
            J::Null => out.push_str("null"),
            J::N(v) if !v.is_finite() => out.push_str("null"),
            J::N(v) if v.fract() == 0.0 && v.abs() < 1e15 => {
                let _ = write!(out, "{}", *v as i64);
            }
            J::N(v) => {
                let _ = write!(out, "{}", (v * 1e4).round() / 1e4);
            }
            J::S(s) => {
                out.push('"');
                for c in s.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        c if (c as u32) < 0x20 => {
                            let _ = write!(out, "\\u{:04x}", c as u32);
                        }
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            J::A(items) if items.iter().all(|i| matches!(i, J::N(_) | J::Null)) => {
                out.push('[');
                for (k, item) in items.iter().enumerate() {
                    if k > 0 {
                        out.push_str(", ");
                    }
                    item.write(out, depth);
                }
                out.push(']');
            }
            J::A(items) => {
                out.push('[');
                for (k, item) in items.iter().enumerate() {
                    out.push_str(if k > 0 { "," } else { "" });
                    pad(out, depth + 1);
                    item.write(out, depth + 1);
                }
                if !items.is_empty() {
                    pad(out, depth);
                }
                out.push(']');
            }
            J::O(members) => {
                out.push('{');
                for (k, (name, v)) in members.iter().enumerate() {
                    out.push_str(if k > 0 { "," } else { "" });
                    pad(out, depth + 1);
                    let _ = write!(out, "\"{name}\": ");
                    v.write(out, depth + 1);
                }
                if !members.is_empty() {
                    pad(out, depth);
                }
                out.push('}');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_writer() {
        let mut s = String::new();
        J::O(vec![("a", J::A(vec![J::N(1.0), J::N(0.5), J::Null])), ("b", J::S("q\"\n".into()))]).write(&mut s, 0);
        assert_eq!(s, "{\n  \"a\": [1, 0.5, null],\n  \"b\": \"q\\\"\\n\"\n}");
    }
}
