//! What rulekeeper keeps on disk: a target's state (and its locks), its history of applies, and
//! the live file's swap (`install`: stage, fsync, rename, `.prev`).

pub(crate) mod history;
pub(crate) mod install;
pub mod lock;
pub mod state;
pub(crate) mod tree;
