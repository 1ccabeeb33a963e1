//! The floor everything stands on: hashing, redaction, locks that survive a panic, handing
//! memory back, running programs, and opening files that must be regular. Nothing here knows
//! rulekeeper's targets or cycles.

pub mod digest;
pub mod exec;
pub mod memory;
pub mod mutex;
pub mod redact;
pub mod regular;
