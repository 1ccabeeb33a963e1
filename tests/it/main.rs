//! rulekeeper's one integration test binary: black-box tests against the built `rulekeeper`,
//! real processes, real files and real sockets on 127.0.0.1 (docs/architecture.md "Tests").
//!
//! A guide for the newcomer:
//! - start from `util.rs`: `Env::new()` gives a temp world (state dir, live path, a managed
//!   service from `tests/support/fakesvc.py`); configs are built, never edited as text:
//!   `env.write_config(...)` (or `util::Cfg` and `util::Target` for several targets), then
//!   `env.edit(|t| t.set("interval", "1h"))` changes a key; `env.once()`,
//!   `env.daemon(...)` run the binary; `util::wait_until` waits on a condition (never sleep);
//!   `util::require_tool` skips loudly when a tool is missing and fails under
//!   `RULEKEEPER_REQUIRE_TOOLS=1`.
//! - peers: `forge.rs` (a fake forge and a fake PowerSync admin API), `lab.rs` (a real
//!   systemd), `vmstack.rs` (VictoriaMetrics, vmalert, Alertmanager), `pservice.rs` (PowerSync:
//!   the real service from `RULEKEEPER_POWERSYNC_DIR` on a private Postgres, else the stand-in
//!   `tests/support/powersync-standin.mjs`; `tests/support/psctl` restarts either),
//!   `tests/support/faultshim.c` (an `LD_PRELOAD` shim failing chosen writes and fsyncs, for
//!   `storage.rs`).
//! - one file per feature; `cargo test --test it <file>::` runs one of them.

// Harness and peers.
mod forge;
mod lab;
mod pservice;
mod util;
mod vmstack;

// The cycle and its commands.
mod commit_status;
mod cycle;
mod diff;
mod history;
mod operator;
mod ownership;
mod package;
mod signatures;
mod sources;
mod untrusted;
mod upgrade;

// The daemon.
mod behind;
mod daemon;
mod hardening;
mod hostile;
mod storage;
mod systemd;
mod webhook;

// PowerSync: the real service or its stand-in (pservice.rs); the fake admin API only for the
// answers neither gives (500, malformed JSON).
mod powersync_api;
mod powersync_deploy;
mod powersync_offline;
mod powersync_parity;
mod powersync_real;

// Reloads of other services (Prometheus, Alertmanager, vmalert, nginx).
mod services;
mod trees;

// Shipped files: alerts, dashboard, fleets, Nix.
mod alertchain;
mod alerts;
mod fleet;
mod nix;
