//! rulekeeper keeps a service's rules file in step with an upstream source: fetch,
//! validate, atomic swap keeping `.prev`, restart, verify, roll back. See
//! docs/architecture.md for the map.

pub mod cli;
pub mod commit_status;
pub mod config;
pub mod cycle;
pub mod digest;
pub mod exec;
pub mod exit;
pub mod gate;
pub mod history;
pub mod install;
pub mod labels;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod mutex;
pub mod notify;
pub mod poster;
pub mod powersync;
pub mod preflight;
pub mod reason;
pub mod redact;
pub mod regular;
pub mod report;
pub mod restart;
pub mod server;
pub mod shared;
pub mod source;
pub mod state;
pub mod status;
pub mod supervisor;
pub mod validate;
pub mod verify;
