//! The Debian package as `cargo deb` builds it (`.ci/run` builds it and names it in
//! `RULEKEEPER_DEB`): what it holds, that its config is a conffile, that installing starts
//! nothing, and that the binary and config it ships work as shipped.

use std::path::PathBuf;
use std::process::Command;

use crate::util::{self, Need};

/// The package to inspect: `RULEKEEPER_DEB`, else the newest `target/debian/*.deb`.
fn deb() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RULEKEEPER_DEB") {
        return Some(PathBuf::from(p));
    }
    let dir = util::repo_root().join("target/debian");
    let newest = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    newest
}

fn dpkg_deb(args: &[&str]) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .output()
        .expect("dpkg-deb");
    assert!(
        out.status.success(),
        "dpkg-deb {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_man_page_in_the_package_is_the_binarys() {
    let (ok, out, err) = util::run(Command::new(util::bin()).arg("man"));
    assert!(ok, "{err}");
    let shipped = std::fs::read_to_string(util::repo_root().join("pkg/deb/rulekeeper.1"))
        .expect("pkg/deb/rulekeeper.1");
    assert!(
        out == shipped,
        "pkg/deb/rulekeeper.1 is stale: run `cargo run -- man > pkg/deb/rulekeeper.1`"
    );
}

#[test]
fn the_debian_package_holds_the_service_and_starts_nothing() {
    if util::require_tool("dpkg-deb").is_none() {
        return;
    }
    let Some(deb) = deb() else {
        return util::skip(
            Need::Tool,
            "no Debian package: run `cargo deb` (or set RULEKEEPER_DEB)",
        )
        .unwrap_or(());
    };
    let deb_s = deb.to_str().expect("utf-8 path");
    let list = dpkg_deb(&["-c", deb_s]);
    for f in [
        "./usr/bin/rulekeeper",
        "./lib/systemd/system/rulekeeper.service",
        "./etc/rulekeeper/config.yaml",
        "./usr/share/man/man1/rulekeeper.1",
        "./usr/share/rulekeeper/alerts/rulekeeper.rules.yml",
        "./usr/share/rulekeeper/alerts/alertmanager.yml",
        "./usr/share/rulekeeper/grafana/",
        "./usr/share/doc/rulekeeper/security.md",
    ] {
        assert!(list.contains(f), "{f} is in the package:\n{list}");
    }
    let conffiles = dpkg_deb(&["-I", deb_s, "conffiles"]);
    assert!(
        conffiles
            .lines()
            .any(|l| l.trim() == "/etc/rulekeeper/config.yaml"),
        "the config is a conffile: {conffiles}"
    );
    let version = dpkg_deb(&["-f", deb_s, "Version"]);
    assert!(
        version.starts_with(&format!("{}-", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );

    // Installing starts nothing: postinst only reloads systemd, and restarts a daemon that
    // already runs on an upgrade.
    let postinst = dpkg_deb(&["-I", deb_s, "postinst"]);
    let commands = postinst
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("systemctl") && !l.starts_with('#') && !l.starts_with("echo"));
    for line in commands {
        let verb_ok = ["daemon-reload", "try-restart"]
            .iter()
            .any(|v| line.contains(v));
        assert!(verb_ok, "postinst starts nothing: {line}");
    }
    assert!(!postinst.contains("deb-systemd-invoke start"), "{postinst}");

    // What is shipped works as shipped: the binary runs, the unit names it, the config passes.
    let root = tempfile::tempdir().unwrap();
    dpkg_deb(&["-x", deb_s, root.path().to_str().expect("utf-8 path")]);
    let bin = root.path().join("usr/bin/rulekeeper");
    let (ok, out, err) = util::run(Command::new(&bin).arg("--version"));
    assert!(ok, "{err}");
    assert!(out.starts_with("rulekeeper "), "{out}");
    let unit =
        std::fs::read_to_string(root.path().join("lib/systemd/system/rulekeeper.service")).unwrap();
    assert!(unit.contains("\nExecStart=/usr/bin/rulekeeper run -c /etc/rulekeeper/config.yaml\n"));
    assert!(
        !unit.lines().any(|l| l.starts_with("LoadCredential=")),
        "the unit starts without credential files"
    );
    let config = root.path().join("etc/rulekeeper/config.yaml");
    let (ok, out, err) = util::run(Command::new(&bin).args(["check", "-c"]).arg(&config));
    assert!(ok, "the shipped config passes check: {out}{err}");
}
