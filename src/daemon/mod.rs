//! The long-running process: the supervisor (boot, one loop per target, shutdown), what its
//! parts share, the HTTP server and webhook, sd-notify, the commit-status poster, and the
//! pre-flight look at a config against the host.

pub(crate) mod notify;
pub(crate) mod poster;
pub(crate) mod preflight;
pub mod server;
pub(crate) mod shared;
pub(crate) mod supervisor;
