//! The daemon (placeholder until issue 3 lands).
use crate::config::Config;
pub fn run(_cfg: Config) -> anyhow::Result<i32> {
    anyhow::bail!("`run` is not implemented yet")
}
