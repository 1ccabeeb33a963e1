//! rulekeeper's one integration test binary: black-box tests against real processes,
//! real files and real sockets on 127.0.0.1. `util` is the shared harness.
mod alertchain;
mod alerts;
mod lab;
mod nix;
mod operator;
mod powersync_api;
mod powersync_offline;
mod util;
mod vmstack;

mod cycle;
mod daemon;
mod fleet;
mod forge;
mod hostile;
mod sources;
mod systemd;
mod untrusted;
mod webhook;
