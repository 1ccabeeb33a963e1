//! rulekeeper keeps a service's rules file in step with an upstream source: fetch,
//! validate, atomic swap keeping `.prev`, restart, verify, roll back. See
//! docs/architecture.md for the map.

// Floors, bottom to top (docs/architecture.md "Code map"): each imports only from floors below.
// 0: hashing, redaction, locks, memory, child processes, regular files.
pub(crate) mod util;

// 1: the vocabulary (label values, reasons).
pub(crate) mod model;
/// The typed ids public functions take (`observe::status::of`), for the fuzz targets.
pub use model::ids::{Revision, Sha256};

// 2: the config.
pub mod config;

// 3: what is kept on disk.
pub mod store;

// 4: fetching upstream.
pub(crate) mod source;

// 5: the managed service.
pub mod service;

// 6: one target's cycle.
pub(crate) mod cycle;

// 7: how rulekeeper is seen.
pub mod observe;

// 8: the long-running process.
pub mod daemon;

// 9: the commands and their exit codes.
pub mod cli;
pub(crate) mod diff;
pub mod exit;
