//! The shipped unit's exposure as `systemd-analyze security` scores it, in the lab: measured,
//! and held so that a later change cannot quietly raise it (docs/operations.md "Hardening").

use crate::lab::Lab;
use crate::util::repo_root;

/// The score `docs/rulekeeper.service` measures (3.8 before CapabilityBoundingSet=; lower is
/// better, 10 is unprotected); lower it here when the unit gets tighter, never raise it
/// without a reason in the docs.
const SHIPPED_EXPOSURE: f64 = 2.7;

#[test]
fn the_shipped_unit_does_not_get_more_exposed() {
    let Some(lab) = Lab::boot() else { return };
    let unit = std::fs::read_to_string(repo_root().join("docs/rulekeeper.service"))
        .expect("docs/rulekeeper.service");
    lab.write("/etc/systemd/system/rulekeeper.service", &unit);
    lab.daemon_reload();
    let o = lab.sh("systemd-analyze security --no-pager rulekeeper.service");
    let text = o.all();
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for rulekeeper.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    eprintln!("systemd-analyze security rulekeeper.service: {score}");
    assert!(
        score <= SHIPPED_EXPOSURE,
        "the shipped unit's exposure rose to {score} (held at {SHIPPED_EXPOSURE}):\n{text}"
    );
}
