//! The floor everything stands on: hashing, redaction, locks that survive a panic, handing
//! memory back, running programs, and opening files that must be regular. Nothing here knows
//! rulekeeper's targets or cycles.

pub(crate) mod digest;
pub(crate) mod exec;
pub(crate) mod http;
pub(crate) mod ids;
pub(crate) mod memory;
pub(crate) mod mutex;
pub(crate) mod offload;
pub(crate) mod redact;
pub(crate) mod regular_file;
pub(crate) mod secret;
pub(crate) mod stamp;
