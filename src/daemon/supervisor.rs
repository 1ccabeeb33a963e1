//! The daemon (`rulekeeper run`): owns time. Boot (every target ends with a usable live file
//! before READY=1), one loop per target (interval with jitter, backoff on fetch failures,
//! coalescing triggers), the watchdog, STATUS=, signals, and recording each cycle's report
//! into metrics. The cycle itself lives in `cycle`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{Config, Target};
use crate::cycle::report::Report;
use crate::cycle::{self, Ctx, Request, Stop};
use crate::daemon::notify;
use crate::daemon::server::webhook::Secrets;
use crate::daemon::shared::Shared;
use crate::model::labels::Outcome;
use crate::observe::metrics::Metrics;
use crate::source::Source;
use crate::store::install;
use crate::util::digest::sha256_hex;

/// Records a finished cycle: metrics, log line, STATUS=.
fn record(shared: &Shared, rep: &Report) {
    shared.metrics.record(rep);
    shared.note_unsaved(
        &rep.target,
        rep.unsaved
            .as_ref()
            .map(|error| crate::daemon::shared::Unsaved {
                error: error.clone(),
                state: (!rep.state_unknown).then(|| rep.state.clone()),
            }),
    );
    rep.log();
    let due = shared.note_cycle(&rep.target, rep.success, rep.outcome);
    if due && shared.is_ready() && notify::enabled() {
        notify::status(&shared.status_line());
    }
}

fn jittered(interval: Duration) -> Duration {
    use rand::Rng;
    let f: f64 = rand::rng().random_range(0.9..1.1);
    interval.mul_f64(f)
}

/// Delay before retrying after `failures` consecutive fetch failures: doubling from a
/// few seconds, capped at the interval.
fn backoff(interval: Duration, failures: u32) -> Duration {
    let base = Duration::from_secs(5).min(interval);
    let d = base.saturating_mul(1u32 << failures.min(16));
    jittered(d.min(interval))
}

/// Raises the soft open-files limit to the hard one (at most 65,536): the HTTP side may hold
/// up to `server::MAX_CONNECTIONS` sockets, and systemd's default soft limit is 1,024.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            let want = lim.rlim_max.min(65_536);
            if lim.rlim_cur < want {
                lim.rlim_cur = want;
                let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    }
}

/// How the daemon ended (the CLI makes an exit status of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A clean shutdown (SIGTERM, SIGINT).
    Stopped,
    /// Start-up failed: no usable file for some target within `startup_timeout`.
    StartupFailed,
}

/// Entry point of `rulekeeper run`.
pub fn run(cfg: Config) -> anyhow::Result<Ended> {
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        // One worker: the daemon waits on timers, sockets and child processes; what holds a
        // thread (fsyncs, a metrics render) goes through `util::offload`, which hands the
        // worker's other tasks to another thread meanwhile. A second worker cost more than
        // it gave: every wake-up of one woke the other to look for work to steal
        // (docs/benchmarks.md, "The unchanged poll").
        .worker_threads(1)
        .max_blocking_threads(64)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(daemon(cfg))
}

/// Every target's state directory, metric series and source, before anything is served.
fn init_targets(shared: &Shared) -> anyhow::Result<BTreeMap<String, Source>> {
    let (cfg, metrics) = (&shared.cfg, &shared.metrics);
    let mut sources = BTreeMap::new();
    for t in cfg.targets.values() {
        let store = shared.store(t);
        store
            .ensure_dir()
            .with_context(|| format!("target `{}`: state directory", t.name))?;
        // A broken state file costs its own target, not the daemon: its cycles report
        // `state_error` until an operator fixes it.
        let st = store.load().unwrap_or_else(|e| {
            tracing::error!(target_name = %t.name, error = %e, "cannot read the target's state; its cycles report state_error");
            Default::default()
        });
        let live = install::read_live(&t.path, &t.file)
            .ok()
            .flatten()
            .map(|b| sha256_hex(&b));
        metrics.init_target(&t.name, t.interval, &st, live.as_deref());
        if t.webhook.is_some() {
            metrics.init_webhook(&t.name);
        }
        let src = Source::new(t, store.git_cache())
            .map_err(|e| anyhow::anyhow!("{}: target `{}`: {e}", cfg.file.display(), t.name))?;
        sources.insert(t.name.clone(), src);
    }
    Ok(sources)
}

/// `state_dir/daemon.lock`, held until the process exits: `status` reads it as "a daemon runs
/// on this directory". A second daemon on the same directory is warned about, not refused.
fn hold_state_dir(cfg: &Config) -> anyhow::Result<Option<crate::store::lock::LockGuard>> {
    match crate::store::lock::daemon_lock(&cfg.state_dir) {
        Ok(Some(g)) => Ok(Some(g)),
        Ok(None) => {
            tracing::warn!(state_dir = %cfg.state_dir.display(), "another rulekeeper daemon holds this state directory; both will work on its targets");
            Ok(None)
        }
        Err(e) => Err(anyhow::anyhow!(
            "{}: key `state_dir`: {e}",
            cfg.file.display()
        )),
    }
}

/// The listening socket of `listen`, for the async server.
fn bind(cfg: &Config) -> anyhow::Result<tokio::net::TcpListener> {
    let std_listener = std::net::TcpListener::bind(cfg.listen).with_context(|| {
        format!(
            "{}: key `listen`: cannot listen on {}",
            cfg.file.display(),
            cfg.listen
        )
    })?;
    std_listener.set_nonblocking(true)?;
    Ok(tokio::net::TcpListener::from_std(std_listener)?)
}

async fn daemon(cfg: Config) -> anyhow::Result<Ended> {
    let _running = hold_state_dir(&cfg)?;
    let shared = Arc::new(Shared::new(cfg, Metrics::new()?));
    let sources = Arc::new(init_targets(&shared)?);
    let cfg = &shared.cfg;
    let listener = bind(cfg)?;
    tracing::info!(listen = %cfg.listen, targets = cfg.targets.len(), "rulekeeper starting");
    for w in crate::daemon::preflight::warnings(cfg) {
        tracing::warn!("{w}");
    }
    let secrets = Arc::new(Secrets::new(cfg));
    let stop = Stop::default();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    tokio::spawn(crate::daemon::server::serve(
        listener,
        shared.clone(),
        secrets.clone(),
        shutdown_rx.clone(),
    ));
    tokio::spawn(signals(secrets, stop.clone(), shutdown_tx));

    notify::status("starting: first fetch of every target");
    let fetch_failing = match boot(&shared, &sources, &stop, shutdown_rx.clone()).await {
        Boot::Ready { fetch_failing } => fetch_failing,
        Boot::ShutDown => {
            flush_posts(&shared).await;
            flush_times(&shared).await;
            return Ok(Ended::Stopped);
        }
        Boot::Failed(names) => {
            flush_posts(&shared).await;
            let msg = format!(
                "no usable rules file for target(s) {} within startup_timeout",
                names.join(", ")
            );
            tracing::error!("{msg}");
            notify::status(&format!("failed: {msg}"));
            return Ok(Ended::StartupFailed);
        }
    };
    // From here, every loop counts as alive until its first deadline passes.
    for (name, t) in &shared.cfg.targets {
        shared.loop_waiting(name, Instant::now() + t.interval.mul_f64(1.1));
    }
    shared.set_ready();
    notify::ready(&shared.status_line());
    crate::util::memory::release();
    tracing::info!("ready");

    let mut tasks = Vec::new();
    for name in shared.cfg.targets.keys() {
        tasks.push(tokio::spawn(target_loop(
            shared.clone(),
            sources.clone(),
            name.clone(),
            stop.clone(),
            shutdown_rx.clone(),
            fetch_failing.contains(name),
        )));
    }
    if let Some(period) = notify::watchdog_period() {
        tokio::spawn(watchdog(shared.clone(), period, shutdown_rx.clone()));
    }
    for t in tasks {
        let _ = t.await;
    }
    flush_posts(&shared).await;
    flush_times(&shared).await;
    tracing::info!("stopped");
    Ok(Ended::Stopped)
}

enum Boot {
    /// Every target has a usable file; these could not fetch upstream on their first try.
    Ready {
        fetch_failing: BTreeSet<String>,
    },
    ShutDown,
    Failed(Vec<String>),
}

/// First cycle of every target, concurrently. A target with a usable live file is ready
/// after one try whatever upstream says; one without retries until `startup_timeout`.
async fn boot(
    shared: &Arc<Shared>,
    sources: &Arc<BTreeMap<String, Source>>,
    stop: &Stop,
    mut shutdown: watch::Receiver<bool>,
) -> Boot {
    let deadline = Instant::now() + shared.cfg.startup_timeout;
    let mut set = tokio::task::JoinSet::new();
    for name in shared.cfg.targets.keys() {
        let (shared, sources, stop, name) =
            (shared.clone(), sources.clone(), stop.clone(), name.clone());
        set.spawn(async move {
            let t = &shared.cfg.targets[&name];
            let mut failures = 0u32;
            loop {
                match run_one(&shared, &sources, t, &stop, true).await {
                    Ok(rep) if rep.live.usable => {
                        let failing = rep.outcome == Outcome::FetchFailed;
                        return (name, true, failing);
                    }
                    Err(cycle::CycleError::Deferred) if crate::service::validate::live_file_usable(t) => {
                        // Ready on the current file; the loop applies right after READY=1.
                        shared.trigger(&name);
                        return (name, true, false);
                    }
                    _ => {}
                }
                if stop.requested() {
                    return (name, false, false);
                }
                let wait = Duration::from_secs(1 << failures.min(3));
                failures += 1;
                if Instant::now() + wait >= deadline {
                    return (name, false, false);
                }
                tracing::warn!(target_name = %name, retry_in = ?wait, "no usable rules file yet; retrying");
                tokio::time::sleep(wait).await;
            }
        });
    }
    let mut failed = Vec::new();
    let mut fetch_failing = BTreeSet::new();
    let mut tick = tokio::time::interval_at(
        Instant::now() + Duration::from_secs(5),
        Duration::from_secs(5),
    );
    loop {
        tokio::select! {
            r = set.join_next() => match r {
                None => break,
                Some(Ok((name, true, failing))) => {
                    if failing {
                        fetch_failing.insert(name);
                    }
                }
                Some(Ok((name, false, _))) => failed.push(name),
                Some(Err(e)) => failed.push(format!("(task failed: {e})")),
            },
            _ = tick.tick() => {
                // A slow first fetch: keep systemd's start timeout ahead of us.
                notify::extend_timeout(Duration::from_secs(15));
            }
            // On shutdown the first cycles see the stop flag: each finishes, or stops
            // before its swap, and then the loop above ends.
            _ = shutdown.changed(), if !*shutdown.borrow() => {}
        }
    }
    if stop.requested() {
        return Boot::ShutDown;
    }
    if failed.is_empty() {
        Boot::Ready { fetch_failing }
    } else {
        failed.sort();
        Boot::Failed(failed)
    }
}

/// The daemon's cycles: a quarantine goes on `/metrics` at once, posts to the poster.
impl cycle::Observer for Shared {
    fn quarantined(&self, target: &Target, q: &crate::store::state::Quarantine) {
        self.metrics.quarantined(&target.name, q);
    }

    fn post(&self, target: &Target, post: crate::cycle::commit_status::Post) {
        self.poster.send(target, post);
    }

    fn waiting(&self, target: &Target, what: &str) {
        tracing::info!(target_name = %target.name, "{what}");
    }
}

/// How long a stopping daemon waits for commit statuses still in flight: within systemd's
/// default stop timeout (90 s), and above one post's retries at a typical timeout.
const FLUSH_ON_STOP: Duration = Duration::from_secs(20);

/// A status in flight is a commit's line saying what happened here: delivered before the
/// process exits, within [`FLUSH_ON_STOP`].
async fn flush_posts(shared: &Shared) {
    let left = shared.poster.flush(FLUSH_ON_STOP).await;
    if left > 0 {
        tracing::warn!(left, "commit statuses still unsent at shutdown; given up");
    }
}

/// Writes the times of routine cycles kept in memory only (`Store::save_after`), so a
/// stopped daemon's `status` is exact.
async fn flush_times(shared: &Arc<Shared>) {
    let shared = shared.clone();
    let done = tokio::task::spawn_blocking(move || {
        for (name, store) in shared.stores() {
            if let Err(e) = store.flush_times() {
                tracing::warn!(target_name = %name, error = %e, "cannot write the last cycle's times");
            }
        }
    });
    if let Err(e) = done.await {
        tracing::warn!(error = %e, "cannot write the last cycles' times");
    }
}

/// Runs one poll cycle and records it.
async fn run_one(
    shared: &Shared,
    sources: &BTreeMap<String, Source>,
    t: &Target,
    stop: &Stop,
    boot: bool,
) -> Result<Report, cycle::CycleError> {
    let source = sources
        .get(&t.name)
        .ok_or_else(|| cycle::CycleError::Internal("no source".into()))?;
    let mut ctx = Ctx::new(t, source, &shared.cfg.state_dir, shared);
    ctx.store = shared.store(t);
    ctx.turn = shared.turn(t);
    ctx.stop = stop.clone();
    ctx.boot = boot;
    ctx.tidy = boot;
    ctx.carry = shared.take_carry(&t.name);
    shared.loop_cycling(&t.name);
    // Boxed: the cycle future is large, and an idle loop should not carry it inline.
    let r = Box::pin(cycle::run(&ctx, Request::Poll)).await;
    match &r {
        Ok(rep) => record(shared, rep),
        Err(cycle::CycleError::Aborted) => {
            tracing::info!(target_name = %t.name, "cycle stopped before the swap (shutting down)")
        }
        Err(cycle::CycleError::Deferred) => {
            tracing::info!(target_name = %t.name, "new content waits until start-up is over (its unit is active)")
        }
        Err(e) => tracing::error!(target_name = %t.name, error = %e, "cycle failed"),
    }
    r
}

/// After a triggered cycle starts, further triggers wait this long, so a burst of pushes
/// costs one immediate cycle plus at most one trailing cycle.
const TRIGGER_COOLDOWN: Duration = Duration::from_millis(500);

async fn target_loop(
    shared: Arc<Shared>,
    sources: Arc<BTreeMap<String, Source>>,
    name: String,
    stop: Stop,
    mut shutdown: watch::Receiver<bool>,
    fetch_failing: bool,
) {
    let t = &shared.cfg.targets[&name];
    let Some(handle) = shared.loop_handle(&name) else {
        return;
    };
    // A forge down at boot is retried on the backoff's few seconds, not after a whole
    // interval: the boot cycle's failure counts as the first.
    let (mut failures, first) = if fetch_failing {
        (1, backoff(t.interval, 0))
    } else {
        (0, jittered(t.interval))
    };
    let mut next_poll = shared.on_grid(Instant::now() + first);
    let mut last_start: Option<Instant> = None;
    loop {
        shared.loop_waiting(&name, next_poll);
        let timer = tokio::select! {
            _ = tokio::time::sleep_until(next_poll) => true,
            _ = handle.trigger.notified() => false,
            _ = shutdown.changed() => false,
        };
        if *shutdown.borrow() {
            break;
        }
        if !timer {
            if !handle.pending.load(Ordering::SeqCst) {
                continue; // a permit left from a trigger that an earlier cycle already served
            }
            if let Some(ready_at) = last_start.map(|s| s + TRIGGER_COOLDOWN) {
                tokio::select! {
                    _ = tokio::time::sleep_until(ready_at) => {}
                    _ = shutdown.changed() => break,
                }
            }
        }
        // Triggers from here on ask for the next cycle, not this one.
        handle.pending.store(false, Ordering::SeqCst);
        last_start = Some(Instant::now());
        let rep = run_one(&shared, &sources, t, &stop, false).await.ok();
        if *shutdown.borrow() {
            break;
        }
        let fetch_failed = rep
            .as_ref()
            .map(|r| r.outcome == Outcome::FetchFailed)
            .unwrap_or(true);
        let gated = rep.as_ref().is_some_and(|r| r.outcome == Outcome::Gated);
        let delay = if let (true, Some(g)) = (gated, &t.gate) {
            // Waiting content is re-asked on the gate's own clock, not only at the next poll.
            failures = 0;
            jittered(t.interval).min(g.interval)
        } else if fetch_failed {
            let d = backoff(t.interval, failures);
            failures = failures.saturating_add(1);
            // A forge that named a time is not asked before it (nor polled in vain till then).
            let named = rep
                .as_ref()
                .and_then(|r| r.retry_at)
                .and_then(|at| at.duration_since(std::time::SystemTime::now()).ok());
            named.map_or(d, |n| d.max(n))
        } else {
            failures = 0;
            jittered(t.interval)
        };
        next_poll = shared.on_grid(Instant::now() + delay);
    }
    // Parked: count as alive while the process shuts down.
    shared.loop_parked(&name);
}

/// Pings WATCHDOG=1 at half the period, only while every loop is alive.
async fn watchdog(shared: Arc<Shared>, period: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(period / 2);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if shared.alive() {
            notify::watchdog();
        } else {
            tracing::error!("a target loop is stuck; withholding the watchdog ping");
        }
    }
}

async fn signals(secrets: Arc<Secrets>, stop: Stop, shutdown: watch::Sender<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        // Keep the sender alive: a dropped one would wake every shutdown wait at once.
        std::future::pending::<()>().await;
        drop(shutdown);
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: re-reading webhook secrets");
                secrets.reload();
            }
        }
    }
    tracing::info!("stopping: letting in-flight cycles finish (or stop before their swap)");
    notify::stopping();
    stop.request();
    let _ = shutdown.send(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_few_seconds_and_stops_at_the_interval() {
        let interval = Duration::from_secs(300);
        let within = |d: Duration, want: u64| {
            let w = Duration::from_secs(want);
            assert!(d >= w.mul_f64(0.9) && d <= w.mul_f64(1.1), "{d:?} vs {w:?}");
        };
        within(backoff(interval, 0), 5);
        within(backoff(interval, 1), 10);
        within(backoff(interval, 3), 40);
        within(backoff(interval, 10), 300);
        within(backoff(interval, u32::MAX), 300);
        // An interval shorter than the base: never longer than the interval.
        within(backoff(Duration::from_secs(2), 4), 2);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(100));
            assert!(d >= Duration::from_secs(90) && d <= Duration::from_secs(110));
        }
    }
}
