//! rulekeeper keeps a service's rules file in step with an upstream source: fetch,
//! validate, atomic swap keeping `.prev`, restart, verify, roll back. See
//! docs/architecture.md for the map.

// Floors, bottom to top (docs/architecture.md "Code map"): each imports only from floors below.
pub mod util;
pub mod model;
pub mod config;
pub mod store;
pub mod source;
pub mod service;
pub mod cycle;
pub mod observe;
pub mod daemon;
pub mod exit;
pub mod cli;
