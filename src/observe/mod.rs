//! How rulekeeper is seen: `/metrics`, `status` (CLI and `/status`), and logging to stderr or
//! journald.

pub(crate) mod logging;
pub(crate) mod metrics;
pub mod status;
