//! The shipped unit's exposure as `systemd-analyze security` scores it, in the lab: measured,
//! and held so that a later change cannot quietly raise it (docs/operations.md "Hardening").

use crate::lab::{Lab, MANAGED_LIVE};
use crate::util::{self, repo_root};

/// The score `docs/rulekeeper.service` measures (3.8 before CapabilityBoundingSet=; lower is
/// better, 10 is unprotected); lower it here when the unit gets tighter, never raise it
/// without a reason in the docs.
const SHIPPED_EXPOSURE: f64 = 2.7;
/// The same with `pkg/systemd/unprivileged.conf`.
const UNPRIVILEGED_EXPOSURE: f64 = 1.1;

#[test]
fn the_shipped_unit_does_not_get_more_exposed() {
    let Some(lab) = Lab::boot() else { return };
    let (score, text) = exposure(&lab, None);
    eprintln!("systemd-analyze security rulekeeper.service: {score}");
    assert!(
        score <= SHIPPED_EXPOSURE,
        "the shipped unit's exposure rose to {score} (held at {SHIPPED_EXPOSURE}):\n{text}"
    );
}

/// `systemd-analyze security` of rulekeeper.service with `extra` drop-in text.
fn exposure(lab: &Lab, extra: Option<&str>) -> (f64, String) {
    let unit = std::fs::read_to_string(repo_root().join("docs/rulekeeper.service"))
        .expect("docs/rulekeeper.service");
    lab.write("/etc/systemd/system/rulekeeper.service", &unit);
    if let Some(text) = extra {
        lab.write(
            "/etc/systemd/system/rulekeeper.service.d/unprivileged.conf",
            text,
        );
    }
    lab.daemon_reload();
    let text = lab
        .sh("systemd-analyze security --no-pager rulekeeper.service")
        .all();
    let score = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for rulekeeper.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    (score, text)
}

/// The unprivileged variant (`pkg/systemd/unprivileged.conf` and `pkg/polkit/50-rulekeeper.rules`):
/// scored, and working: as the `rulekeeper` user, without capabilities, the daemon installs a
/// live file and `systemctl try-restart`s the managed unit through polkit, then verifies it.
#[test]
fn the_unprivileged_unit_scores_ok_and_still_restarts_through_polkit() {
    if util::require_tool("pkcheck").is_none() || util::require_tool("dbus-daemon").is_none() {
        return;
    }
    // /etc is an overlay in this lab: the user and the polkit rule never reach the host.
    let Some(lab) = Lab::boot_for_packages() else {
        return;
    };
    let dropin = std::fs::read_to_string(repo_root().join("pkg/systemd/unprivileged.conf"))
        .expect("pkg/systemd/unprivileged.conf");
    let (score, text) = exposure(&lab, Some(&dropin));
    eprintln!("systemd-analyze security rulekeeper.service (unprivileged): {score}");
    assert!(score <= UNPRIVILEGED_EXPOSURE, "{text}");

    let o = lab.sh("useradd --system --user-group --no-create-home rulekeeper");
    assert_eq!(o.code, 0, "{}", o.all());
    let rule = std::fs::read_to_string(repo_root().join("pkg/polkit/50-rulekeeper.rules"))
        .expect("pkg/polkit/50-rulekeeper.rules");
    lab.write("/etc/polkit-1/rules.d/50-rulekeeper.rules", &rule);
    // The lab's directory is the test's 0700 temp dir: the service's user must reach into it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(lab.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = lab.provide(&util::bin(), "bin/rulekeeper");
    let config = lab.managed_service(&util::rules("v1", "good"));
    let o = lab.sh("chown rulekeeper:rulekeeper /var/lib/powersync");
    assert_eq!(o.code, 0, "{}", o.all());
    lab.write("/run/lab/config.yaml", &config);
    lab.write(
        "/etc/systemd/system/rulekeeper.service.d/lab.conf",
        &format!("[Service]\nExecStart=\nExecStart={bin} run -c /run/lab/config.yaml\n"),
    );
    lab.daemon_reload();
    for unit in ["dbus.service", "polkit.service", "rulekeeper.service"] {
        let o = lab.systemctl(&["start", unit]);
        assert_eq!(o.code, 0, "start {unit}: {}", o.all());
    }
    let o = lab.systemctl(&["start", "powersync.service"]);
    assert_eq!(o.code, 0, "{}", o.all());
    let applied = || {
        lab.metric(
            "rulekeeper_cycles_total",
            &[("target", "powersync"), ("outcome", "applied")],
        )
    };
    util::wait_until(60, "the first apply", || applied() >= 1.0);
    let pid = lab.prop("powersync.service", "MainPID");
    lab.publish(&util::rules("v2", "good"));
    util::wait_until(60, "v2 applied: restarted through polkit, verified", || {
        applied() >= 2.0
    });
    assert_ne!(
        lab.prop("powersync.service", "MainPID"),
        pid,
        "the unit was restarted"
    );
    assert_eq!(lab.prop("rulekeeper.service", "User"), "rulekeeper");
    let o = lab.sh(&format!("stat -c %U {MANAGED_LIVE}"));
    assert_eq!(o.stdout.trim(), "rulekeeper", "{}", o.all());
}
