//! The daemon's tasks, supervised: each runs in a `JoinSet`; one that ends (returns or panics)
//! while the daemon runs marks it unhealthy (`/healthz` answers 503 with the task's name) and is
//! logged, and all of them are cancelled at shutdown.
use std::{future::Future, sync::Arc, time::Duration};

use tokio::task::JoinSet;
use tracing::error;

use crate::metrics::Health;

pub struct Tasks {
    set: JoinSet<&'static str>,
    health: Arc<Health>,
}

impl Tasks {
    pub fn new(health: Arc<Health>) -> Self {
        Tasks { set: JoinSet::new(), health }
    }

    /// Run `fut` until it ends or the daemon stops.
    pub fn spawn(&mut self, name: &'static str, fut: impl Future<Output = ()> + Send + 'static) {
        self.set.spawn(async move {
            fut.await;
            name
        });
    }

    /// Run the blocking job `make()` returns every `period`, off the async runtime. A job that
    /// panics ends the task.
    pub fn every<J: FnMut() + Send + 'static>(
        &mut self,
        name: &'static str,
        period: Duration,
        make: impl FnOnce() -> J + Send + 'static,
    ) {
        self.spawn(name, async move {
            let job = std::sync::Arc::new(std::sync::Mutex::new(make()));
            loop {
                let j = job.clone();
                if tokio::task::spawn_blocking(move || (j.lock().unwrap())()).await.is_err() {
                    error!(task = name, "a periodic job panicked; it no longer runs");
                    return;
                }
                tokio::time::sleep(period).await;
            }
        });
    }

    /// The next task that ended (only while the daemon runs: tasks do not end on their own).
    /// Says which, marks the daemon unhealthy, and returns what it said.
    pub async fn next_ended(&mut self) -> Option<String> {
        let ended = self.set.join_next().await?;
        let why = match ended {
            Ok(name) => format!("task {name:?} ended"),
            Err(e) if e.is_panic() => format!("a task panicked: {e}"),
            Err(e) => format!("a task was cancelled: {e}"),
        };
        error!("{why}; the daemon keeps enforcing in the kernel but is unhealthy");
        self.health.fail("tasks", why.clone());
        Some(why)
    }

    /// Cancel every task and wait for them.
    pub async fn shutdown(&mut self) {
        self.set.abort_all();
        while self.set.join_next().await.is_some() {}
    }
}
