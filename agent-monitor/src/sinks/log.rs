//! The events log: every line sealed into the audit chain (`super::audit`), offered to the live
//! stream (`events --follow`) and written to the sink; each decoded event counted first.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::Path,
};

use agent_monitor_common::Event;
use anyhow::Context as _;
use tokio::sync::broadcast;

use super::audit::Chain;
use crate::{
    events::EventRecord,
    metrics::{EventSeries, Metrics},
};

/// The events log's file ("-": stdout), opened for appending; its directory is created.
pub fn open_sink(path: &str) -> anyhow::Result<Box<dyn Write + Send>> {
    if path == "-" {
        return Ok(Box::new(io::BufWriter::new(io::stdout())));
    }
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
    if let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    // The log records what agents did, and the agents run on this host: a new log is its owner's
    // alone (whatever the umask; a group an operator gave it later is kept), and one that other
    // users could read (an older version made it 0644) is narrowed.
    let f: File = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening events file {path}"))?;
    let mode = f.metadata().with_context(|| format!("reading {path}"))?.permissions().mode();
    if mode & 0o007 != 0 {
        f.set_permissions(fs::Permissions::from_mode(mode & 0o770))
            .with_context(|| format!("narrowing the permissions of {path}"))?;
        tracing::warn!(path, from = format!("{:o}", mode & 0o777), "the events log was open to other users: no longer");
    }
    Ok(Box::new(io::BufWriter::with_capacity(1 << 16, f)))
}

pub struct EventLog {
    /// The events file (buffered: the reader flushes once per ring-buffer batch), or stdout.
    pub sink: Box<dyn Write + Send>,
    chain: Chain,
    live: broadcast::Sender<String>,
    series: EventSeries,
    /// The line being written, reused: a line costs no allocation.
    line: String,
    /// [`super::Origin::json_fields`]: the host and labels every line ends with.
    origin: String,
}

impl EventLog {
    pub fn new(sink: Box<dyn Write + Send>, chain: Chain, live: broadcast::Sender<String>) -> Self {
        EventLog {
            sink,
            chain,
            live,
            series: EventSeries::default(),
            line: String::with_capacity(4096),
            origin: String::new(),
        }
    }

    /// Every line from now on says where it comes from.
    pub fn with_origin(mut self, origin: &super::Origin) -> Self {
        self.origin = origin.json_fields();
        self
    }

    /// The per-event path after decoding: count `rec` (decoded from `ev`) in the metrics, then
    /// write its line.
    pub fn record(&mut self, metrics: &Metrics, ev: &Event, rec: &EventRecord) -> io::Result<()> {
        self.series.count(metrics, ev, &rec.agent);
        self.line.clear();
        rec.write_json(&mut self.line);
        self.write_line()
    }

    /// Write a serialised JSON object (a record that is not a decoded event: `policy.load`,
    /// `hold.decision`).
    pub fn write_json(&mut self, json: &str) -> io::Result<()> {
        self.line.clear();
        self.line.push_str(json);
        self.write_line()
    }

    fn write_line(&mut self) -> io::Result<()> {
        if !self.origin.is_empty() && self.line.ends_with('}') {
            self.line.pop();
            self.line.push_str(&self.origin);
            self.line.push('}');
        }
        self.chain.seal_in_place(&mut self.line);
        // Copy the line for the live stream only when someone follows it (a follower that
        // subscribes meanwhile starts with the next line).
        if self.live.receiver_count() > 0 {
            let _ = self.live.send(self.line.clone());
        }
        self.line.push('\n');
        self.sink.write_all(self.line.as_bytes())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }
}
