//! rulekeeper's own state as Prometheus metrics (docs/contract.md "Metrics"). The record side
//! (`record`, `init_target`) is called by the supervisor after each cycle; the read side
//! (`render`) by the HTTP server. Every label set a target will ever use is created at start,
//! so `increase()` in alerts sees the first event.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::cycle::report::Report;
use crate::model::labels::{FetchReason, Outcome, WebhookResult};
use crate::store::state::TargetState;
use crate::util::mutex;

pub struct Metrics {
    pub registry: Registry,
    commit_statuses: IntCounterVec,
    rules_info: GaugeVec,
    last_success: GaugeVec,
    last_apply: GaugeVec,
    rollbacks: IntCounterVec,
    cycles: IntCounterVec,
    fetch_failures: IntCounterVec,
    quarantined: IntGaugeVec,
    drift: IntCounterVec,
    durations: HistogramVec,
    webhook: IntCounterVec,
    held: IntGaugeVec,
    gated: IntGaugeVec,
    powersync_deploying: IntGaugeVec,
    poll_interval: GaugeVec,
    quarantined_info: GaugeVec,
    /// The (sha256, reason) each target's quarantined_info series carries now.
    quarantined_labels: Mutex<HashMap<String, (String, String)>>,
    /// The (sha256, revision) each target's rules_info series carries now.
    info_labels: Mutex<HashMap<String, (String, String)>>,
}

#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// `rulekeeper_commit_status_total{target, result}`: what a `poster::Poster` counts into.
pub fn commit_status_counter() -> IntCounterVec {
    IntCounterVec::new(
        Opts::new(
            "rulekeeper_commit_status_total",
            "Commit statuses posted to the forge (result = posted | failed, after retries)",
        ),
        &["target", "result"],
    )
    .unwrap_or_else(|e| unreachable!("static metric definition: {e}"))
}

impl Metrics {
    /// The counter the daemon's poster counts into (registered here).
    pub fn commit_statuses(&self) -> IntCounterVec {
        self.commit_statuses.clone()
    }
}

impl Metrics {
    /// Long on purpose: each metric's name, help text and labels stand together, in the
    /// order of docs/contract.md "Metrics", so the registry reads as the contract does.
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let build = GaugeVec::new(
            Opts::new("rulekeeper_build_info", "rulekeeper build; always 1"),
            &["version"],
        )?;
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        registry.register(Box::new(build))?;
        let m = Metrics {
            rules_info: GaugeVec::new(
                Opts::new("rulekeeper_rules_info", "The live rules file now; always 1"),
                &["target", "sha256", "revision"],
            )?,
            last_success: GaugeVec::new(
                Opts::new(
                    "rulekeeper_last_success_timestamp_seconds",
                    "Last cycle that left the live file usable and equal to upstream",
                ),
                &["target"],
            )?,
            last_apply: GaugeVec::new(
                Opts::new(
                    "rulekeeper_last_apply_timestamp_seconds",
                    "Last verified apply of new content",
                ),
                &["target"],
            )?,
            rollbacks: IntCounterVec::new(
                Opts::new(
                    "rulekeeper_rollbacks_total",
                    "Rollbacks to the last-good file",
                ),
                &["target"],
            )?,
            cycles: IntCounterVec::new(
                Opts::new("rulekeeper_cycles_total", "Cycles by outcome"),
                &["target", "outcome"],
            )?,
            fetch_failures: IntCounterVec::new(
                Opts::new(
                    "rulekeeper_fetch_failures_total",
                    "Failed fetches by reason",
                ),
                &["target", "reason"],
            )?,
            quarantined: IntGaugeVec::new(
                Opts::new(
                    "rulekeeper_quarantined",
                    "1 while upstream serves known-bad content",
                ),
                &["target"],
            )?,
            drift: IntCounterVec::new(
                Opts::new(
                    "rulekeeper_drift_corrections_total",
                    "Hand-edited live files converged back to upstream",
                ),
                &["target"],
            )?,
            durations: HistogramVec::new(
                HistogramOpts::new("rulekeeper_cycle_duration_seconds", "Cycle phase durations")
                    .buckets(vec![
                        0.005, 0.025, 0.1, 0.25, 1.0, 2.5, 10.0, 30.0, 60.0, 120.0, 300.0,
                    ]),
                &["target", "phase"],
            )?,
            webhook: IntCounterVec::new(
                Opts::new(
                    "rulekeeper_webhook_requests_total",
                    "Webhook requests by result",
                ),
                &["target", "result"],
            )?,
            held: IntGaugeVec::new(
                Opts::new("rulekeeper_held", "1 while applying is held by an operator"),
                &["target"],
            )?,
            powersync_deploying: IntGaugeVec::new(
                Opts::new(
                    "rulekeeper_powersync_deploying",
                    "1 while PowerSync is still deploying the live file (initial replication)",
                ),
                &["target"],
            )?,
            gated: IntGaugeVec::new(
                Opts::new("rulekeeper_gated", "1 while new content waits on its gate"),
                &["target"],
            )?,
            poll_interval: GaugeVec::new(
                Opts::new(
                    "rulekeeper_poll_interval_seconds",
                    "The target's configured poll interval",
                ),
                &["target"],
            )?,
            quarantined_info: GaugeVec::new(
                Opts::new(
                    "rulekeeper_quarantined_info",
                    "Content this host quarantined (rejected or rolled back), and why; always 1",
                ),
                &["target", "sha256", "reason"],
            )?,
            commit_statuses: commit_status_counter(),
            quarantined_labels: Mutex::new(HashMap::new()),
            info_labels: Mutex::new(HashMap::new()),
            registry,
        };
        for c in [
            Box::new(m.commit_statuses.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.rules_info.clone()),
            Box::new(m.last_success.clone()),
            Box::new(m.last_apply.clone()),
            Box::new(m.rollbacks.clone()),
            Box::new(m.cycles.clone()),
            Box::new(m.fetch_failures.clone()),
            Box::new(m.quarantined.clone()),
            Box::new(m.drift.clone()),
            Box::new(m.durations.clone()),
            Box::new(m.webhook.clone()),
            Box::new(m.held.clone()),
            Box::new(m.gated.clone()),
            Box::new(m.powersync_deploying.clone()),
            Box::new(m.poll_interval.clone()),
            Box::new(m.quarantined_info.clone()),
        ] {
            m.registry.register(c)?;
        }
        #[cfg(target_os = "linux")]
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(m)
    }

    /// Creates a target's series and sets gauges from its persisted state and live file.
    pub fn init_target(
        &self,
        target: &str,
        interval: std::time::Duration,
        st: &TargetState,
        live_sha: Option<&str>,
    ) {
        self.poll_interval
            .with_label_values(&[target])
            .set(interval.as_secs_f64());

        for o in Outcome::ALL {
            self.cycles.with_label_values(&[target, o.as_str()]);
        }
        for r in FetchReason::ALL {
            self.fetch_failures.with_label_values(&[target, r.as_str()]);
        }
        self.rollbacks.with_label_values(&[target]);
        self.drift.with_label_values(&[target]);
        for r in ["posted", "failed"] {
            self.commit_statuses.with_label_values(&[target, r]);
        }
        self.set_gauges(target, st, live_sha);
    }

    /// Creates the webhook series of a target that has a webhook.
    pub fn init_webhook(&self, target: &str) {
        for r in WebhookResult::ALL {
            self.webhook.with_label_values(&[target, r.as_str()]);
        }
    }

    fn set_gauges(&self, target: &str, st: &TargetState, live_sha: Option<&str>) {
        if let Some(t) = st.last_success {
            self.last_success
                .with_label_values(&[target])
                .set(t.timestamp() as f64);
        }
        if let Some(a) = &st.applied {
            self.last_apply
                .with_label_values(&[target])
                .set(a.at.timestamp() as f64);
        }
        self.quarantined
            .with_label_values(&[target])
            .set(st.upstream_quarantined() as i64);
        self.held.with_label_values(&[target]).set(st.hold as i64);
        self.gated
            .with_label_values(&[target])
            .set(st.gate.is_some() as i64);
        self.powersync_deploying
            .with_label_values(&[target])
            .set(st.deploying.is_some() as i64);
        let info = st.quarantine.as_ref().map(quarantine_labels).or_else(|| {
            st.upstream_unsigned().map(|u| {
                let sha = st.upstream_sha256.as_ref().map(|s| s.to_string());
                (
                    sha.unwrap_or_default(),
                    crate::model::reason::label(&u.reason),
                )
            })
        });
        self.set_quarantined_info(target, info);
        let sha = live_sha.unwrap_or("").to_string();
        let revision = st.revision_of(&sha).unwrap_or_default();
        self.set_info(target, sha, revision.to_string());
    }

    /// Publishes a quarantine decided mid-cycle, ahead of the cycle's record.
    pub fn quarantined(&self, target: &str, q: &crate::store::state::Quarantine) {
        self.set_quarantined_info(target, Some(quarantine_labels(q)));
    }

    /// Keeps at most one quarantined_info series per target: the content it quarantined.
    fn set_quarantined_info(&self, target: &str, now: Option<(String, String)>) {
        let mut labels = mutex::lock(&self.quarantined_labels);
        if labels.get(target) == now.as_ref() {
            return;
        }
        if let Some((sha, reason)) = labels.remove(target) {
            let _ = self
                .quarantined_info
                .remove_label_values(&[target, &sha, &reason]);
        }
        if let Some((sha, reason)) = now {
            self.quarantined_info
                .with_label_values(&[target, &sha, &reason])
                .set(1.0);
            labels.insert(target.to_string(), (sha, reason));
        }
    }

    /// Keeps exactly one rules_info series per target.
    fn set_info(&self, target: &str, sha: String, revision: String) {
        let mut labels = mutex::lock(&self.info_labels);
        if let Some((old_sha, old_rev)) = labels.get(target) {
            if *old_sha == sha && *old_rev == revision {
                return;
            }
            let _ = self
                .rules_info
                .remove_label_values(&[target, old_sha, old_rev]);
        }
        if !sha.is_empty() {
            self.rules_info
                .with_label_values(&[target, &sha, &revision])
                .set(1.0);
            labels.insert(target.to_string(), (sha, revision));
        } else {
            labels.remove(target);
        }
    }

    /// Records one cycle.
    pub fn record(&self, rep: &Report) {
        let t = rep.target.as_str();
        self.cycles
            .with_label_values(&[t, rep.outcome.as_str()])
            .inc();
        if let Some(r) = rep.fetch_reason {
            self.fetch_failures
                .with_label_values(&[t, r.as_str()])
                .inc();
        }
        if matches!(rep.outcome, Outcome::RolledBack | Outcome::RollbackFailed) {
            self.rollbacks.with_label_values(&[t]).inc();
        }
        if rep.drift_corrected {
            self.drift.with_label_values(&[t]).inc();
        }
        for (phase, d) in &rep.phases {
            self.durations
                .with_label_values(&[t, phase.as_str()])
                .observe(d.as_secs_f64());
        }
        // Without a readable state the gauges keep what they last knew.
        if rep.outcome != Outcome::StateError && !rep.state_unknown {
            self.set_gauges(t, &rep.state, rep.live.sha256.as_deref());
        }
    }

    pub fn webhook(&self, target: &str, result: WebhookResult) {
        self.webhook
            .with_label_values(&[target, result.as_str()])
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        drop(families);
        crate::util::memory::release();
        buf
    }
}

/// The `(sha256, reason)` labels of a quarantine's `rulekeeper_quarantined_info` series.
fn quarantine_labels(q: &crate::store::state::Quarantine) -> (String, String) {
    (q.sha256.to_string(), crate::model::reason::label(&q.reason))
}
