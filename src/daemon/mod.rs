//! The long-running process: the supervisor (boot, one loop per target, shutdown), what its
//! parts share, the HTTP server and webhook, sd-notify, the commit-status poster, and the
//! pre-flight look at a config against the host.

pub mod notify;
pub mod poster;
pub mod preflight;
pub mod server;
pub mod shared;
pub mod supervisor;
