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
        "./usr/share/rulekeeper/systemd/unprivileged.conf",
        "./usr/share/rulekeeper/polkit/50-rulekeeper.rules",
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

/// The package as shipped, in the systemd lab: `dpkg -i`, a config, a verified apply of a
/// managed unit, an in-place upgrade that keeps last-good, hold, quarantine and history, and
/// a purge that keeps only the state directory.
#[test]
fn installed_upgraded_and_purged_in_the_lab() {
    if util::require_tool("dpkg-deb").is_none() || util::require_tool("cargo-deb").is_none() {
        return;
    }
    let Some(deb1) = deb() else {
        return util::skip(
            Need::Tool,
            "no Debian package: run `cargo deb` (or set RULEKEEPER_DEB)",
        )
        .unwrap_or(());
    };
    // The upgrade: the same tree, the next package revision (`.ci/run` builds it; else built
    // here, after setting the first aside: cargo deb empties target/debian).
    let out = tempfile::tempdir().unwrap();
    let kept = out.path().join("first.deb");
    std::fs::copy(&deb1, &kept).expect("copy the package");
    let deb1 = kept;
    let version1 = dpkg_deb(&["-f", deb1.to_str().unwrap(), "Version"])
        .trim()
        .to_string();
    let revision: u32 = version1
        .rsplit('-')
        .next()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let deb2 = match std::env::var_os("RULEKEEPER_DEB_UPGRADE") {
        Some(p) => PathBuf::from(p),
        None => {
            let next = out.path().join("next");
            std::fs::create_dir_all(&next).unwrap();
            let (ok, _, err) = util::run(
                Command::new("cargo")
                    .current_dir(util::repo_root())
                    .args(["deb", "--no-build", "--deb-revision"])
                    .arg((revision + 1).to_string())
                    .arg("-o")
                    .arg(&next),
            );
            assert!(ok, "cargo deb --no-build: {err}");
            std::fs::read_dir(&next)
                .unwrap()
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "deb"))
                .expect("the upgrade package")
        }
    };

    let Some(lab) = crate::lab::Lab::boot_for_packages() else {
        return;
    };
    let p1 = lab.provide(&deb1, "rk1.deb");
    let p2 = lab.provide(&deb2, "rk2.deb");
    let sh = |script: &str| {
        let o = lab.sh(&format!("DEBIAN_FRONTEND=noninteractive {script}"));
        eprintln!("# {script}\n{}", o.all());
        o
    };

    // Installing starts nothing.
    let o = sh(&format!("dpkg -i {p1}"));
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.all().contains("installed, not started"), "{}", o.all());
    assert_eq!(lab.prop("rulekeeper.service", "ActiveState"), "inactive");
    assert_eq!(
        lab.systemctl(&["is-enabled", "rulekeeper.service"])
            .stdout
            .trim(),
        "disabled"
    );
    assert!(lab.path("/etc/rulekeeper/credentials").is_dir());

    // The operator's config: a local source, a managed unit restarted and probed.
    let config = lab.managed_service(&util::rules("v1", "good"));
    lab.write("/etc/rulekeeper/config.yaml", &config);
    lab.daemon_reload();
    let o = sh("rulekeeper check -c /etc/rulekeeper/config.yaml");
    assert_eq!(o.code, 0, "{}", o.all());
    let o = sh("systemctl enable --now rulekeeper.service");
    assert_eq!(o.code, 0, "{}", o.all());
    let o = lab.systemctl(&["start", "powersync.service"]);
    assert_eq!(o.code, 0, "{}", o.all());
    let metric = |name: &str, labels: &[(&str, &str)]| lab.metric(name, labels);
    let applied = || {
        metric(
            "rulekeeper_cycles_total",
            &[("target", "powersync"), ("outcome", "applied")],
        )
    };
    util::wait_until(60, "the first apply", || applied() >= 1.0);

    // A verified apply of the managed unit.
    lab.publish(&util::rules("v2", "good"));
    util::wait_until(60, "v2 applied, restarted and verified", || {
        applied() >= 2.0
    });
    let starts = std::fs::read_to_string(lab.dir.path().join("svc/starts.log")).unwrap_or_default();
    assert!(
        starts.lines().last().is_some_and(|l| l.contains("v2")),
        "{starts}"
    );
    let journal = lab.journal("-u rulekeeper.service TARGET_NAME=powersync OUTCOME=applied");
    assert!(journal.len() >= 2, "the cycles are in the journal");

    // State worth keeping: a quarantine, a hold, the history.
    lab.publish("nothing: here\n");
    util::wait_until(60, "the bad content quarantined", || {
        metric("rulekeeper_quarantined", &[("target", "powersync")]) == 1.0
    });
    let o = sh("rulekeeper hold -c /etc/rulekeeper/config.yaml -t powersync");
    assert_eq!(o.code, 0, "{}", o.all());
    let state_before =
        std::fs::read_to_string(lab.path("/var/lib/rulekeeper/targets/powersync/state.json"))
            .unwrap();
    let before: serde_json::Value = serde_json::from_str(&state_before).unwrap();
    let history_before =
        sh("rulekeeper history -c /etc/rulekeeper/config.yaml -t powersync --json").stdout;
    let pid1 = lab.prop("rulekeeper.service", "MainPID");

    // The upgrade in place restarts the daemon on the new binary, and loses nothing.
    let o = sh(&format!("dpkg -i {p2}"));
    assert_eq!(o.code, 0, "{}", o.all());
    util::wait_until(30, "the daemon restarted", || {
        let pid = lab.prop("rulekeeper.service", "MainPID");
        pid != pid1 && pid != "0" && lab.prop("rulekeeper.service", "ActiveState") == "active"
    });
    let version = sh("dpkg-query -W -f '${Version}' rulekeeper").stdout;
    assert_eq!(
        version.trim(),
        format!("{}-{}", env!("CARGO_PKG_VERSION"), revision + 1)
    );
    let after: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(lab.path("/var/lib/rulekeeper/targets/powersync/state.json"))
            .unwrap(),
    )
    .unwrap();
    for key in ["applied", "quarantine", "hold"] {
        assert_eq!(after[key], before[key], "{key} survives the upgrade");
    }
    let history_after =
        sh("rulekeeper history -c /etc/rulekeeper/config.yaml -t powersync --json").stdout;
    assert_eq!(
        history_after, history_before,
        "the history survives the upgrade"
    );
    assert!(std::fs::read_to_string(lab.path(crate::lab::MANAGED_LIVE))
        .unwrap()
        .contains("v2"));

    // Purge: everything but the state directory, and it says so.
    let o = sh("dpkg --purge rulekeeper");
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(
        o.all()
            .contains("the state directory /var/lib/rulekeeper is kept"),
        "{}",
        o.all()
    );
    assert!(!lab.path("/usr/bin/rulekeeper").exists());
    assert!(!lab.path("/etc/rulekeeper").exists());
    assert!(!lab.path("/lib/systemd/system/rulekeeper.service").exists());
    assert!(lab
        .path("/var/lib/rulekeeper/targets/powersync/state.json")
        .exists());
    assert_ne!(lab.prop("rulekeeper.service", "ActiveState"), "active");
}
