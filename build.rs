//! Build script: records the git commit the binary is built from, for `rulekeeper --version`.
//! Taken from `RULEKEEPER_COMMIT` when set (a package build without `.git`), else from
//! `git rev-parse` in the checkout, else `unknown`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=RULEKEEPER_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-changed=.git/packed-refs");
    let commit = std::env::var("RULEKEEPER_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            if !out.status.success() {
                return None;
            }
            Some(String::from_utf8(out.stdout).ok()?.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=RULEKEEPER_COMMIT={commit}");
}
