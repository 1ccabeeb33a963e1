//! Every HTTP client rulekeeper builds: one builder with the User-Agent every request carries
//! (GitHub's API refuses requests without one) and no redirects unless a caller says so, and
//! one shared client per use whose idle pool is sized for that use, with the reason beside it.
//! Timeouts are per request (each caller knows its own); a client is built once because
//! building one parses the system's root store.

use std::sync::OnceLock;

pub const USER_AGENT: &str = concat!("rulekeeper/", env!("CARGO_PKG_VERSION"));

/// Who a shared client is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// PowerSync's admin and sync-rules API.
    PowerSync,
    /// `verify.http` probes.
    Probe,
    /// A fleet gate's metrics store.
    Gate,
    /// A service's reload endpoint and its metrics (`restart.http`, `verify.metrics`).
    Reload,
}

impl Use {
    /// Idle connections kept per host, and why.
    fn idle_pool(self) -> usize {
        match self {
            // PowerSync restarts under its connections: a kept one would be dead on the next
            // call, so each call connects afresh.
            Use::PowerSync => 0,
            // One probe at a time per target, every `verify.interval`: one warm connection
            // saves a handshake per probe, and a dead one is retried after 250 ms.
            Use::Probe => 1,
            // A gate is asked once per new revision per target; a couple of connections serve
            // several targets asking at once.
            Use::Gate => 2,
            // A reload, then its metrics a few times: one warm connection, as for probes.
            Use::Reload => 1,
        }
    }
}

/// A builder with the User-Agent and no redirects: what every client starts from.
pub fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
}

/// The process's one client for `what`; the error (a client that cannot be built) is fit for a
/// reason.
pub fn shared(what: Use) -> Result<&'static reqwest::Client, String> {
    static POWERSYNC: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    static PROBE: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    static GATE: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    static RELOAD: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    let cell = match what {
        Use::PowerSync => &POWERSYNC,
        Use::Probe => &PROBE,
        Use::Gate => &GATE,
        Use::Reload => &RELOAD,
    };
    cell.get_or_init(|| {
        builder()
            .pool_max_idle_per_host(what.idle_pool())
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}
