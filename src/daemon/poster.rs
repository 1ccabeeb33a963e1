//! Delivers commit statuses beside the cycles: one `Poster` per process, owned by the daemon
//! or by the one-shot command. Each post is retried a few times, logged once when it gives
//! up, and counted (`rulekeeper_commit_status_total`). The owner flushes it, bounded, before
//! the process exits (the daemon on SIGTERM, a command once its result is out), so a status
//! in flight is not lost with the process.

use std::sync::Mutex;
use std::time::Duration;

use prometheus::IntCounterVec;
use tokio::task::JoinHandle;

use crate::config::Target;
use crate::cycle::commit_status::{context, Post};
use crate::source::forge::status::{self, Status};

const ATTEMPTS: u32 = 3;

pub struct Poster {
    running: Mutex<Vec<JoinHandle<()>>>,
    /// `{target, result}`: `posted` or `failed` (after retries). Registered by the daemon's
    /// metrics; a one-shot command counts into one nobody scrapes.
    counter: IntCounterVec,
}

impl Poster {
    pub fn new(counter: IntCounterVec) -> Poster {
        Poster {
            running: Mutex::new(Vec::new()),
            counter,
        }
    }

    /// Starts posting `post` for `t`; never waits for it. Outside a runtime nothing is sent.
    pub fn send(&self, t: &Target, post: Post) {
        let Some(c) = t.commit_status.clone() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let t = t.clone();
        let counter = self.counter.clone();
        let h = rt.spawn(async move {
            let ctx = context(&t, &c);
            let st = Status {
                sha: &post.sha,
                state: post.state,
                context: &ctx,
                description: &post.description,
            };
            let result = with_retries(|| status::post(&t.source, &c.token_file, c.timeout, &st)).await;
            let label = if result.is_ok() { "posted" } else { "failed" };
            counter.with_label_values(&[&t.name, label]).inc();
            match result {
                Ok(()) => {
                    tracing::info!(target_name = %t.name, commit = %post.sha, state = ?post.state, "commit status posted")
                }
                Err(e) => {
                    tracing::warn!(target_name = %t.name, commit = %post.sha, error = %e, "cannot post the commit status; given up")
                }
            }
        });
        let mut running = crate::util::mutex::lock(&self.running);
        running.retain(|h| !h.is_finished());
        running.push(h);
    }

    /// Waits, at most `limit`, for the posts still running; returns how many were left
    /// unfinished (and are dropped with the process).
    pub async fn flush(&self, limit: Duration) -> usize {
        let handles: Vec<_> = std::mem::take(&mut *crate::util::mutex::lock(&self.running));
        let deadline = tokio::time::Instant::now() + limit;
        let mut left = 0;
        for h in handles {
            if tokio::time::timeout_at(deadline, h).await.is_err() {
                left += 1;
            }
        }
        left
    }
}

async fn with_retries<F, Fut>(mut once: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        }
        match once().await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(format!("{ATTEMPTS} attempts: {last}"))
}
