//! How rulekeeper is seen: `/metrics`, `status` (CLI and `/status`), and logging to stderr or
//! journald.

pub mod logging;
pub mod metrics;
pub mod status;
