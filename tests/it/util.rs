//! Shared test harness: tool discovery, temp dirs, the built binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Path of the `rulekeeper` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rulekeeper"))
}

/// Root of the repository (for alerts/, grafana/, nix/, contrib/ ...).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Finds an external tool on PATH. When it is missing the test is skipped with a loud
/// message, unless `RULEKEEPER_REQUIRE_TOOLS=1`, in which case the test fails.
/// Usage: `let Some(promtool) = util::require_tool("promtool") else { return };`
pub fn require_tool(name: &str) -> Option<PathBuf> {
    if let Some(p) = which(name) {
        return Some(p);
    }
    if std::env::var("RULEKEEPER_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!("required tool `{name}` is not on PATH (RULEKEEPER_REQUIRE_TOOLS=1)");
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED: tool `{name}` is not installed; this test did not run !!!!!!!!\n"
    );
    None
}

/// Looks a program up on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs a command and returns (status success, stdout, stderr) as strings.
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("spawn command");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
