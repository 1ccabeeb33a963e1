//! The managed service, as a cycle sees it: validating a candidate (built-in checks, a command,
//! PowerSync's API), restarting, reloading or deploying it, verifying it afterwards, and the
//! fleet gate asked before an apply.

pub(crate) mod activate;
pub(crate) mod gate;
pub(crate) mod gauges;
pub(crate) mod powersync;
pub(crate) mod reload;
pub mod validate;
pub(crate) mod verify;
