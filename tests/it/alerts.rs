//! The shipped alerting: `alerts/` (Prometheus/vmalert rules and their promtool unit tests) and
//! `grafana/` (the same seven alerts as Grafana-managed rules, Pushover contact points, the
//! notification policy, the dashboard). The tool tests run promtool and vmalert when they are
//! installed (skipped loudly otherwise); the others need no tool and check that the two worlds
//! agree with each other and with the metric names of docs/contract.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

use crate::util;

/// The contract (docs/contract.md, "Alerts", plus RulekeeperStateError for a target whose state
/// file is broken): exactly these alerts, in both worlds.
const ALERTS: [&str; 8] = [
    "RulekeeperDown",
    "RulekeeperSyncStale",
    "RulekeeperRolledBack",
    "RulekeeperUpstreamQuarantined",
    "RulekeeperRollbackFailed",
    "RulekeeperFleetDrift",
    "RulekeeperStateError",
    "RulekeeperCycleFailed",
];

use crate::util::{CYCLE_OUTCOMES, METRICS};

const HISTOGRAMS: [&str; 1] = ["rulekeeper_cycle_duration_seconds"];

const DS_UID_VAR: &str = "${RULEKEEPER_DS_UID}";

// ---------------------------------------------------------------------------------------------
// helpers

fn root() -> PathBuf {
    util::repo_root()
}

fn rules_path() -> PathBuf {
    root().join("alerts/rulekeeper.rules.yml")
}

fn rules_test_path() -> PathBuf {
    root().join("alerts/rulekeeper.rules.test.yml")
}

fn grafana_rules_path() -> PathBuf {
    root().join("grafana/provisioning/alerting/rulekeeper-alerts.yaml")
}

fn contact_points_path() -> PathBuf {
    root().join("grafana/provisioning/alerting/contact-points.yaml")
}

fn policies_path() -> PathBuf {
    root().join("grafana/provisioning/alerting/policies.yaml")
}

fn dashboard_path() -> PathBuf {
    root().join("grafana/dashboards/rulekeeper.json")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn yaml(path: &Path) -> Value {
    serde_yaml::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// `v[key]` as a string, panicking with `what` when it is missing or not a string.
fn s<'a>(v: &'a Value, key: &str, what: &str) -> &'a str {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{what}: `{key}` missing or not a string in {v:?}"))
}

fn seq<'a>(v: &'a Value, key: &str, what: &str) -> &'a Vec<Value> {
    v.get(key)
        .and_then(Value::as_sequence)
        .unwrap_or_else(|| panic!("{what}: `{key}` missing or not a list"))
}

fn norm_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Prometheus-style duration ("5m", "1h30m", "0s") in seconds; absent = 0.
fn duration_secs(d: Option<&str>) -> u64 {
    let Some(d) = d else { return 0 };
    let (mut total, mut num) = (0u64, String::new());
    let mut chars = d.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        if c == 'm' && chars.peek() == Some(&'s') {
            unit.push(chars.next().unwrap());
        }
        let n: u64 = num.parse().unwrap_or_else(|_| panic!("bad duration {d:?}"));
        num.clear();
        total += match unit.as_str() {
            "ms" => 0,
            "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            "d" => n * 86400,
            "w" => n * 7 * 86400,
            other => panic!("bad duration unit {other:?} in {d:?}"),
        };
    }
    assert!(num.is_empty(), "duration {d:?} has no unit");
    total
}

/// The Prometheus alerting rules, by alert name (panics on duplicates).
fn prometheus_alerts() -> BTreeMap<String, Value> {
    let doc = yaml(&rules_path());
    let mut out = BTreeMap::new();
    for group in seq(&doc, "groups", "alerts/rulekeeper.rules.yml") {
        for rule in seq(group, "rules", "rule group") {
            let name = s(rule, "alert", "prometheus rule").to_string();
            assert!(
                out.insert(name.clone(), rule.clone()).is_none(),
                "alert {name} defined twice"
            );
        }
    }
    out
}

/// The Grafana-provisioned alert rules, by title (panics on duplicates).
fn grafana_alerts() -> BTreeMap<String, Value> {
    let doc = yaml(&grafana_rules_path());
    assert_eq!(
        doc.get("apiVersion").and_then(Value::as_u64),
        Some(1),
        "grafana rules: apiVersion: 1"
    );
    let mut out = BTreeMap::new();
    for group in seq(&doc, "groups", "grafana rules") {
        s(group, "folder", "grafana rule group");
        s(group, "interval", "grafana rule group");
        for rule in seq(group, "rules", "grafana rule group") {
            let title = s(rule, "title", "grafana rule").to_string();
            assert!(
                out.insert(title.clone(), rule.clone()).is_none(),
                "grafana rule {title} defined twice"
            );
        }
    }
    out
}

fn assert_exact_alert_set(names: impl Iterator<Item = String>, what: &str) {
    let got: BTreeSet<String> = names.collect();
    let want: BTreeSet<String> = ALERTS.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        got, want,
        "{what}: the alert names must be exactly the ones of ALERTS"
    );
}

/// Every metric name a PromQL expression uses (functions, keywords, label names in grouping
/// clauses, label matchers, durations, numbers and Grafana `$variables` are not metric names).
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: [&str; 27] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
        // aggregation operators: `count by (x) (...)` puts a clause between name and call
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut out = BTreeSet::new();
    let mut i = 0;
    let mut depth_skip: Option<char> = None; // inside {...} or [...]
    let mut after_grouping = false; // the next '(' opens a label list
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            // string literal
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            continue;
        }
        if let Some(close) = depth_skip {
            if c == close {
                depth_skip = None;
            }
            i += 1;
            continue;
        }
        match c {
            '{' => depth_skip = Some('}'),
            '[' => depth_skip = Some(']'),
            '(' if after_grouping => {
                after_grouping = false;
                depth_skip = Some(')');
            }
            '$' => {
                // Grafana variable: $name or ${name}
                i += 1;
                if i < chars.len() && chars[i] == '{' {
                    while i < chars.len() && chars[i] != '}' {
                        i += 1;
                    }
                    i += 1;
                } else {
                    while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                        i += 1;
                    }
                }
                continue;
            }
            _ if c.is_ascii_digit() || c == '.' => {
                // number or duration
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                continue;
            }
            _ if c.is_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let is_call = j < chars.len() && chars[j] == '(';
                let lower = word.to_ascii_lowercase();
                if GROUPING.contains(&lower.as_str()) {
                    after_grouping = true;
                } else if !is_call && !KEYWORDS.contains(&lower.as_str()) {
                    out.insert(word);
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// A Grafana template-variable query: `label_values(expr, label)` uses `expr`;
/// `label_values(label)` uses no metric; anything else is PromQL.
fn variable_query_metrics(q: &str) -> BTreeSet<String> {
    let q = q.trim();
    if let Some(inner) = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return match inner.rfind(',') {
            Some(comma) => metric_names(&inner[..comma]),
            None => BTreeSet::new(),
        };
    }
    metric_names(q)
}

fn allowed_metric(name: &str) -> bool {
    METRICS.contains(&name)
        || name.starts_with("process_")
        || HISTOGRAMS.iter().any(|h| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| name == format!("{h}{suffix}"))
        })
}

/// Every `expr` of the dashboard (panel targets) and every template variable query.
fn dashboard_queries(dash: &serde_json::Value) -> (Vec<String>, Vec<String>) {
    let mut exprs = Vec::new();
    fn walk_panels(panels: &[serde_json::Value], exprs: &mut Vec<String>) {
        for p in panels {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    exprs.push(e.to_string());
                }
            }
            if let Some(inner) = p["panels"].as_array() {
                walk_panels(inner, exprs);
            }
        }
    }
    walk_panels(
        dash["panels"].as_array().expect("dashboard has panels"),
        &mut exprs,
    );
    let mut vars = Vec::new();
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .or_else(|| v["definition"].as_str());
            vars.push(q.expect("query variable without a query").to_string());
        }
    }
    (exprs, vars)
}

fn run_tool(cmd: &mut Command) -> (String, String) {
    let shown = format!("{cmd:?}");
    let (ok, out, err) = util::run(cmd);
    assert!(ok, "{shown} failed\n--- stdout\n{out}\n--- stderr\n{err}");
    (out, err)
}

// ---------------------------------------------------------------------------------------------
// tool tests

#[test]
fn promtool_check_rules() {
    let Some(promtool) = util::require_tool("promtool") else {
        return;
    };
    let (out, _) = run_tool(
        Command::new(promtool)
            .arg("check")
            .arg("rules")
            .arg(rules_path()),
    );
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", ALERTS.len())),
        "expected exactly {} rules:\n{out}",
        ALERTS.len()
    );
}

#[test]
fn promtool_test_rules() {
    let Some(promtool) = util::require_tool("promtool") else {
        return;
    };
    let (out, _) = run_tool(
        Command::new(promtool)
            .arg("test")
            .arg("rules")
            .arg(rules_test_path()),
    );
    assert!(
        out.contains("SUCCESS"),
        "promtool test rules did not report SUCCESS:\n{out}"
    );
}

#[test]
fn vmalert_dry_run() {
    let Some(vmalert) = util::require_tool("vmalert") else {
        return;
    };
    let rule = format!("-rule={}", rules_path().display());
    run_tool(
        Command::new(vmalert)
            .arg("-dryRun")
            .arg(rule)
            .arg("-loggerLevel=ERROR"),
    );
}

/// alerts/alertmanager.yml passes Alertmanager's own check, its templates render, and its routes
/// send exactly the critical alerts to the emergency (priority 2) Pushover receiver.
#[test]
fn alertmanager_config_checks_and_routes_critical_to_emergency() {
    let Some(amtool) = util::require_tool("amtool") else {
        return;
    };
    let am = root().join("alerts/alertmanager.yml");
    let (out, _) = run_tool(Command::new(&amtool).arg("check-config").arg(&am));
    assert!(out.contains("1 templates"), "{out}");
    let (out, _) = run_tool(
        Command::new(&amtool)
            .arg("template")
            .arg("render")
            .arg(format!(
                "--template.glob={}",
                root().join("alerts/rulekeeper.tmpl").display()
            ))
            .arg("--template.text={{ template \"rulekeeper.title\" . }}|{{ template \"rulekeeper.message\" . }}"),
    );
    assert!(out.contains("host: "), "{out}");
    let v: Value = serde_yaml::from_str(&std::fs::read_to_string(&am).unwrap()).unwrap();
    let text = std::fs::read_to_string(&am).unwrap();
    assert!(
        !text.contains("user_key: ") || text.contains("user_key: $PUSHOVER_USER_KEY"),
        "no literal Pushover secrets"
    );
    let receivers: BTreeMap<String, &Value> = v["receivers"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap().to_string(), r))
        .collect();
    let emergency = &receivers["rulekeeper-pushover-emergency"]["pushover_configs"][0];
    assert!(emergency["priority"].as_str().unwrap().contains('2'));
    assert!(emergency["retry"].is_string() && emergency["expire"].is_string());
    let normal = &receivers["rulekeeper-pushover-normal"]["pushover_configs"][0];
    assert_eq!(normal["priority"].as_str(), Some("0"));
    // Which receiver each alert reaches: amtool's routing test against the shipped tree.
    let prom = prometheus_alerts();
    for name in ALERTS {
        let sev = prom[name]["labels"]["severity"].as_str().unwrap();
        let (out, _) = run_tool(
            Command::new(&amtool)
                .arg("config")
                .arg("routes")
                .arg("test")
                .arg(format!("--config.file={}", am.display()))
                .arg(format!("alertname={name}"))
                .arg(format!("severity={sev}")),
        );
        let want = if sev == "critical" {
            "rulekeeper-pushover-emergency"
        } else {
            "rulekeeper-pushover-normal"
        };
        assert_eq!(out.trim(), want, "{name} ({sev})");
    }
    for name in ["RulekeeperDown", "RulekeeperRollbackFailed"] {
        assert_eq!(
            prom[name]["labels"]["severity"].as_str(),
            Some("critical"),
            "{name}"
        );
    }
}

/// Every dashboard query (with Grafana's variables filled in) is valid PromQL: promtool parses
/// them as recording rules.
#[test]
fn dashboard_queries_are_valid_promql() {
    let Some(promtool) = util::require_tool("promtool") else {
        return;
    };
    let (exprs, _) = dashboard_queries(&json(&dashboard_path()));
    assert!(!exprs.is_empty());
    let mut rules = Vec::new();
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h")
            .replace("$instance", ".*")
            .replace("$target", ".*");
        assert!(
            !e.contains('$'),
            "unhandled Grafana variable in dashboard query {e}"
        );
        let mut rule = serde_yaml::Mapping::new();
        rule.insert("record".into(), format!("dashboard:query{i}").into());
        rule.insert("expr".into(), e.into());
        rules.push(Value::Mapping(rule));
    }
    let mut group = serde_yaml::Mapping::new();
    group.insert("name".into(), "dashboard".into());
    group.insert("rules".into(), Value::Sequence(rules));
    let mut doc = serde_yaml::Mapping::new();
    doc.insert(
        "groups".into(),
        Value::Sequence(vec![Value::Mapping(group)]),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(&file, serde_yaml::to_string(&doc).unwrap()).unwrap();
    let (out, _) = run_tool(Command::new(promtool).arg("check").arg("rules").arg(&file));
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------------
// pure checks (no tool needed)

/// Every YAML file under alerts/ and grafana/ parses as YAML, every JSON file as JSON.
#[test]
fn every_alert_and_grafana_file_parses() {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, files);
            } else {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join("alerts"), &mut files);
    walk(&root().join("grafana"), &mut files);
    let mut parsed = 0;
    for f in &files {
        match f.extension().and_then(|e| e.to_str()) {
            Some("yml" | "yaml") => {
                yaml(f);
                parsed += 1;
            }
            Some("json") => {
                json(f);
                parsed += 1;
            }
            _ => {}
        }
    }
    // rules, rules test, grafana rules, contact points, policies, dashboard provider, dashboard
    assert!(
        parsed >= 7,
        "expected at least 7 YAML/JSON files, parsed {parsed}: {files:?}"
    );
}

#[test]
fn prometheus_rules_have_every_alert_with_severity_and_annotations() {
    let alerts = prometheus_alerts();
    assert_exact_alert_set(alerts.keys().cloned(), "alerts/rulekeeper.rules.yml");
    for (name, rule) in &alerts {
        let sev = rule["labels"]["severity"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no severity label"));
        assert!(
            sev == "warning" || sev == "critical",
            "{name}: severity {sev:?} is not warning|critical"
        );
        for key in ["summary", "description"] {
            let text = rule["annotations"][key]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no {key} annotation"));
            assert!(
                text.trim().len() > 10,
                "{name}: {key} is too short to be useful: {text:?}"
            );
        }
        let desc = rule["annotations"]["description"].as_str().unwrap();
        assert!(
            desc.contains("journalctl -u rulekeeper"),
            "{name}: description should say to read the journal"
        );
        assert!(
            desc.contains("rulekeeper status"),
            "{name}: description should point to `rulekeeper status`"
        );
        for m in metric_names(s(rule, "expr", name)) {
            assert!(
                m == "up" || allowed_metric(&m),
                "{name}: expr uses unknown metric {m}"
            );
        }
    }
    assert_eq!(
        alerts["RulekeeperRollbackFailed"]["labels"]["severity"].as_str(),
        Some("critical"),
        "RulekeeperRollbackFailed must be critical (Pushover emergency)"
    );
    // the operator commands of docs/contract.md's CLI are all mentioned somewhere
    let all: String = alerts
        .values()
        .map(|r| r["annotations"]["description"].as_str().unwrap())
        .collect();
    for cmd in [
        "rulekeeper rollback",
        "rulekeeper hold",
        "rulekeeper status",
        "journalctl -u rulekeeper",
    ] {
        assert!(
            all.contains(cmd) || read(&root().join("docs/alerts-runbook.md")).contains(cmd),
            "nobody mentions `{cmd}`"
        );
    }
    // the specific semantics of the contract
    let e = |n: &str| norm_ws(s(&alerts[n], "expr", n));
    assert!(
        e("RulekeeperDown").contains(r#"up{job="rulekeeper"}"#)
            && e("RulekeeperDown").contains("absent(")
    );
    assert!(e("RulekeeperSyncStale").contains("rulekeeper_last_success_timestamp_seconds"));
    assert!(e("RulekeeperRolledBack").contains("rulekeeper_rollbacks_total"));
    assert!(e("RulekeeperUpstreamQuarantined").contains("rulekeeper_quarantined"));
    assert!(e("RulekeeperRollbackFailed").contains(r#"outcome="rollback_failed""#));
    assert!(e("RulekeeperFleetDrift").contains("count by (target, sha256)"));
    assert_eq!(
        duration_secs(alerts["RulekeeperFleetDrift"]["for"].as_str()),
        30 * 60,
        "FleetDrift: for: 30m"
    );
    // cycle outcomes used in label matchers exist
    for (name, rule) in &alerts {
        let expr = s(rule, "expr", name);
        if let Some(pos) = expr.find("outcome=\"") {
            let rest = &expr[pos + 9..];
            let outcome = &rest[..rest.find('"').unwrap()];
            assert!(
                CYCLE_OUTCOMES.contains(&outcome),
                "{name}: unknown outcome {outcome:?}"
            );
        }
    }
}

/// The promtool unit tests cover each alert at least once firing and once silent.
#[test]
fn every_alert_has_a_firing_and_a_silent_unit_test() {
    let doc = yaml(&rules_test_path());
    let mut firing = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for t in seq(&doc, "tests", "rules test") {
        for a in t
            .get("alert_rule_test")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let name = s(a, "alertname", "alert_rule_test").to_string();
            match a.get("exp_alerts").and_then(Value::as_sequence) {
                Some(list) if !list.is_empty() => firing.insert(name),
                _ => silent.insert(name),
            };
        }
    }
    for name in ALERTS {
        assert!(
            firing.contains(name),
            "{name}: no promtool test case where it fires"
        );
        assert!(
            silent.contains(name),
            "{name}: no promtool test case where it stays silent"
        );
    }
    let files: Vec<&str> = seq(&doc, "rule_files", "rules test")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        files,
        ["rulekeeper.rules.yml"],
        "the unit tests must load the shipped rules file"
    );
}

#[test]
fn grafana_rules_mirror_the_prometheus_rules() {
    let prom = prometheus_alerts();
    let graf = grafana_alerts();
    assert_exact_alert_set(graf.keys().cloned(), "grafana rulekeeper-alerts.yaml");
    let mut uids = BTreeSet::new();
    for (name, rule) in &graf {
        let twin = &prom[name];
        assert!(
            uids.insert(s(rule, "uid", name).to_string()),
            "{name}: duplicate uid"
        );
        assert!(
            s(rule, "uid", name).len() <= 40,
            "{name}: Grafana uids are at most 40 characters"
        );
        // same labels and annotation keys
        assert_eq!(
            rule["labels"]["severity"].as_str(),
            twin["labels"]["severity"].as_str(),
            "{name}: severity differs between Grafana and Prometheus"
        );
        for key in ["summary", "description"] {
            let text = rule["annotations"][key]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no {key}"));
            assert!(text.trim().len() > 10, "{name}: {key} too short");
            // Grafana would try to expand `$x` as an environment variable in some versions
            assert!(
                !text.contains('$'),
                "{name}: {key} contains `$`; use {{{{ .Labels.x }}}} in Grafana"
            );
        }
        assert_eq!(
            duration_secs(rule["for"].as_str()),
            duration_secs(twin["for"].as_str()),
            "{name}: `for` differs between Grafana and Prometheus"
        );
        assert_eq!(
            rule["noDataState"].as_str(),
            Some("OK"),
            "{name}: no series means nothing is wrong"
        );
        // the query pipeline: A = prometheus expr, B = reduce(A), C = threshold(B) > 0
        let cond = s(rule, "condition", name);
        let data = seq(rule, "data", name);
        let by_ref: BTreeMap<&str, &Value> =
            data.iter().map(|q| (s(q, "refId", name), q)).collect();
        let a = by_ref
            .get("A")
            .unwrap_or_else(|| panic!("{name}: no refId A"));
        assert_eq!(
            s(a, "datasourceUid", name),
            DS_UID_VAR,
            "{name}: A must query ${{RULEKEEPER_DS_UID}}"
        );
        let a_expr = a["model"]["expr"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: A has no model.expr"));
        assert_eq!(
            norm_ws(a_expr),
            norm_ws(s(twin, "expr", name)),
            "{name}: Grafana query A differs from the Prometheus expr"
        );
        assert_eq!(
            a["model"]["instant"].as_bool(),
            Some(true),
            "{name}: A must be an instant query"
        );
        let c = by_ref
            .get(cond)
            .unwrap_or_else(|| panic!("{name}: condition {cond} is not a refId"));
        assert_eq!(s(c, "datasourceUid", name), "__expr__");
        assert_eq!(
            c["model"]["type"].as_str(),
            Some("threshold"),
            "{name}: condition must be a threshold"
        );
        let b_ref = c["model"]["expression"]
            .as_str()
            .expect("threshold expression");
        let ev = &c["model"]["conditions"][0]["evaluator"];
        assert_eq!(
            ev["type"].as_str(),
            Some("gt"),
            "{name}: threshold must be `> 0`"
        );
        assert_eq!(
            ev["params"][0].as_f64(),
            Some(0.0),
            "{name}: threshold must be `> 0`"
        );
        let b = by_ref
            .get(b_ref)
            .unwrap_or_else(|| panic!("{name}: threshold input {b_ref} missing"));
        assert_eq!(
            b["model"]["type"].as_str(),
            Some("reduce"),
            "{name}: {b_ref} must reduce A"
        );
        assert_eq!(
            b["model"]["expression"].as_str(),
            Some("A"),
            "{name}: {b_ref} must reduce A"
        );
        assert_eq!(
            b["model"]["reducer"].as_str(),
            Some("last"),
            "{name}: {b_ref} must take the last value"
        );
        // no other datasource anywhere (a literal uid would break on another Grafana)
        for q in data {
            let uid = s(q, "datasourceUid", name);
            assert!(
                uid == DS_UID_VAR || uid == "__expr__",
                "{name}: literal datasource uid {uid:?}"
            );
        }
    }
}

/// The Pushover contact points: both of type pushover, secrets only from the environment,
/// emergency = priority 2 with retry/expire inside Pushover's limits.
#[test]
fn contact_points_are_pushover_without_literal_secrets() {
    let text = read(&contact_points_path());
    // a Pushover key or token is 30 alphanumerics: none may appear literally
    for word in text.split(|c: char| !c.is_ascii_alphanumeric()) {
        assert!(
            !(word.len() >= 30 && word.chars().any(|c| c.is_ascii_digit())),
            "contact-points.yaml contains what looks like a literal key: {word}"
        );
    }
    let doc = yaml(&contact_points_path());
    let cps = seq(&doc, "contactPoints", "contact points");
    assert_eq!(
        cps.len(),
        2,
        "expected two contact points (normal, emergency)"
    );
    let mut by_kind: BTreeMap<&str, &Value> = BTreeMap::new();
    for cp in cps {
        let name = s(cp, "name", "contact point");
        let receivers = seq(cp, "receivers", name);
        assert_eq!(receivers.len(), 1, "{name}: one pushover receiver");
        let r = &receivers[0];
        assert_eq!(
            s(r, "type", name),
            "pushover",
            "{name}: must be type pushover"
        );
        s(r, "uid", name);
        let settings = r
            .get("settings")
            .and_then(Value::as_mapping)
            .unwrap_or_else(|| panic!("{name}: no settings"));
        for (k, v) in settings {
            let k = k.as_str().unwrap_or_default();
            let lower = k.to_ascii_lowercase();
            if ["key", "token", "secret", "password"]
                .iter()
                .any(|w| lower.contains(w))
            {
                let v = v
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}: {k} must be a string"));
                assert!(
                    v.starts_with('$') && v.len() > 1,
                    "{name}: {k} must come from the environment ($VAR), got {v:?}"
                );
            }
        }
        assert_eq!(
            settings.get("userKey").and_then(Value::as_str),
            Some("$PUSHOVER_USER_KEY"),
            "{name}: userKey"
        );
        assert_eq!(
            settings.get("apiToken").and_then(Value::as_str),
            Some("$PUSHOVER_API_TOKEN"),
            "{name}: apiToken"
        );
        let kind = if name.contains("emergency") {
            "emergency"
        } else if name.contains("normal") {
            "normal"
        } else {
            panic!("contact point {name}: name should say normal or emergency")
        };
        assert!(
            by_kind.insert(kind, r).is_none(),
            "two {kind} contact points"
        );
    }
    let prio = |r: &Value| {
        r["settings"]["priority"]
            .as_i64()
            .expect("numeric priority")
    };
    let emergency = by_kind["emergency"];
    assert_eq!(
        prio(emergency),
        2,
        "emergency contact point must use Pushover priority 2"
    );
    let retry = emergency["settings"]["retry"]
        .as_i64()
        .expect("emergency needs retry");
    let expire = emergency["settings"]["expire"]
        .as_i64()
        .expect("emergency needs expire");
    assert!(retry >= 30, "Pushover requires retry >= 30 s, got {retry}");
    assert!(
        (retry..=10800).contains(&expire),
        "Pushover requires expire <= 10800 s, got {expire}"
    );
    assert!(
        prio(by_kind["normal"]) < 2,
        "the normal contact point must not page as an emergency"
    );
}

/// The notification policy sends severity=critical to the emergency contact point and
/// everything else (the root) to the normal one; every receiver exists.
#[test]
fn policy_routes_critical_to_emergency() {
    let cps = yaml(&contact_points_path());
    let names: BTreeSet<String> = seq(&cps, "contactPoints", "contact points")
        .iter()
        .map(|cp| s(cp, "name", "contact point").to_string())
        .collect();
    let emergency = names
        .iter()
        .find(|n| n.contains("emergency"))
        .expect("emergency contact point")
        .clone();
    let normal = names
        .iter()
        .find(|n| n.contains("normal"))
        .expect("normal contact point")
        .clone();

    let doc = yaml(&policies_path());
    let policies = seq(&doc, "policies", "policies");
    assert_eq!(policies.len(), 1, "one policy tree");
    let root = &policies[0];
    assert_eq!(
        s(root, "receiver", "root policy"),
        normal,
        "the default route goes to the normal contact point"
    );

    /// The receiver an alert with these labels reaches: the first matching child route (a
    /// child without a receiver inherits its parent's), else this node's receiver.
    fn route<'a>(node: &'a Value, labels: &BTreeMap<&str, &str>) -> &'a str {
        let own = node.get("receiver").and_then(Value::as_str).unwrap_or("");
        for child in node
            .get("routes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let matchers = child
                .get("object_matchers")
                .and_then(Value::as_sequence)
                .cloned()
                .unwrap_or_default();
            let matches = matchers.iter().all(|m| {
                let m: Vec<&str> = m
                    .as_sequence()
                    .expect("matcher [label, op, value]")
                    .iter()
                    .map(|x| x.as_str().unwrap())
                    .collect();
                let got = labels.get(m[0]).copied().unwrap_or("");
                match m[1] {
                    "=" => got == m[2],
                    "!=" => got != m[2],
                    op => panic!("matcher op {op} not handled by this test"),
                }
            });
            if matches {
                let r = route(child, labels);
                return if r.is_empty() { own } else { r };
            }
        }
        own
    }
    let critical = BTreeMap::from([
        ("severity", "critical"),
        ("alertname", "RulekeeperRollbackFailed"),
    ]);
    let warning = BTreeMap::from([
        ("severity", "warning"),
        ("alertname", "RulekeeperRolledBack"),
    ]);
    assert_eq!(
        route(root, &critical),
        emergency,
        "severity=critical must reach the emergency contact point"
    );
    assert_eq!(
        route(root, &warning),
        normal,
        "severity=warning must reach the normal contact point"
    );

    // and every alert of both worlds routes as its severity says
    for (name, rule) in prometheus_alerts().iter().chain(grafana_alerts().iter()) {
        let sev = rule["labels"]["severity"].as_str().unwrap();
        let labels = BTreeMap::from([("severity", sev), ("alertname", name.as_str())]);
        let want = if sev == "critical" {
            &emergency
        } else {
            &normal
        };
        assert_eq!(
            route(root, &labels),
            want,
            "{name} ({sev}) routes to the wrong contact point"
        );
    }

    // every receiver named anywhere in the tree exists
    fn receivers<'a>(node: &'a Value, out: &mut Vec<&'a str>) {
        if let Some(r) = node.get("receiver").and_then(Value::as_str) {
            out.push(r);
        }
        for child in node
            .get("routes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            receivers(child, out);
        }
    }
    let mut used = Vec::new();
    receivers(root, &mut used);
    for r in used {
        assert!(
            names.contains(r),
            "policy names receiver {r:?}, which is not a provisioned contact point"
        );
    }
}

#[test]
fn metric_name_extractor_understands_promql() {
    let got = metric_names(
        r#"histogram_quantile(0.95, sum by (target, phase, le) (rate(rulekeeper_cycle_duration_seconds_bucket{instance=~"$instance",target=~"a|b"}[$__rate_interval]))) > bool 3 * 300 or absent(up{job="x"}) unless on(target) foo:bar offset 5m"#,
    );
    let want: BTreeSet<String> = ["rulekeeper_cycle_duration_seconds_bucket", "up", "foo:bar"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        variable_query_metrics(
            r#"label_values(rulekeeper_rules_info{instance=~"$instance"}, target)"#
        ),
        BTreeSet::from(["rulekeeper_rules_info".to_string()])
    );
    assert!(variable_query_metrics("label_values(instance)").is_empty());
    assert!(allowed_metric("rulekeeper_cycle_duration_seconds_count"));
    assert!(!allowed_metric("rulekeeper_cycles_total_bucket"));
    assert!(!allowed_metric("rulekeeper_last_success"));
}

/// The dashboard: fixed uid, templated data source, only metric names from docs/contract.md, and the
/// panels the operator needs.
#[test]
fn dashboard_has_fixed_uid_and_uses_only_known_metrics() {
    let dash = json(&dashboard_path());
    assert_eq!(
        dash["uid"].as_str(),
        Some("rulekeeper"),
        "dashboard uid must be \"rulekeeper\""
    );
    let vars = dash["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let ds_var = vars
        .iter()
        .find(|v| v["type"] == "datasource" && v["query"] == "prometheus")
        .expect("a data source template variable of type prometheus");
    let ds_ref = format!("${{{}}}", ds_var["name"].as_str().unwrap());

    // every datasource reference is the template variable, never a literal uid
    fn check_ds(v: &serde_json::Value, ds_ref: &str, path: &str) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, child) in map {
                    if k == "datasource" {
                        if let Some(uid) = child.get("uid").and_then(|u| u.as_str()) {
                            assert_eq!(uid, ds_ref, "{path}.datasource uses a literal uid");
                        }
                    }
                    check_ds(child, ds_ref, &format!("{path}.{k}"));
                }
            }
            serde_json::Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    check_ds(child, ds_ref, &format!("{path}[{i}]"));
                }
            }
            _ => {}
        }
    }
    check_ds(&dash, &ds_ref, "dashboard");

    let (exprs, var_queries) = dashboard_queries(&dash);
    let mut used = BTreeSet::new();
    for e in &exprs {
        let names = metric_names(e);
        assert!(!names.is_empty(), "dashboard query uses no metric: {e}");
        used.extend(names);
    }
    for q in &var_queries {
        used.extend(variable_query_metrics(q));
    }
    for m in &used {
        assert!(
            allowed_metric(m),
            "dashboard uses {m}, which is not a rulekeeper metric of docs/contract.md"
        );
    }
    for needed in [
        "rulekeeper_rules_info",
        "rulekeeper_last_success_timestamp_seconds",
        "rulekeeper_cycles_total",
        "rulekeeper_rollbacks_total",
        "rulekeeper_cycle_duration_seconds_bucket",
    ] {
        assert!(
            used.contains(needed),
            "dashboard shows nothing from {needed}"
        );
    }
    // the live hash and revision are shown per target
    assert!(
        exprs.iter().any(|e| e.contains("rulekeeper_rules_info")
            && e.contains("sha256")
            && e.contains("revision")),
        "a panel must show sha256 and revision from rulekeeper_rules_info"
    );
    assert!(
        exprs.iter().any(|e| e.contains("histogram_quantile")),
        "phase duration quantiles"
    );
}

/// The runbook has one entry per alert (the annotations link to `#<alertname lowercased>`),
/// and the provisioning docs name every environment variable the files use.
#[test]
fn runbook_and_grafana_readme_cover_everything() {
    let runbook = read(&root().join("docs/alerts-runbook.md"));
    for name in ALERTS {
        assert!(
            runbook
                .lines()
                .any(|l| l.starts_with('#') && l.trim_start_matches('#').trim() == name),
            "docs/alerts-runbook.md has no heading `{name}`"
        );
        let anchor = format!("docs/alerts-runbook.md#{}", name.to_ascii_lowercase());
        let desc = prometheus_alerts()[name]["annotations"]["description"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            desc.contains(&anchor),
            "{name}: description should link {anchor}"
        );
    }
    let readme = read(&root().join("grafana/README.md"));
    let mut env_vars = BTreeSet::new();
    for f in [
        grafana_rules_path(),
        contact_points_path(),
        policies_path(),
        root().join("grafana/provisioning/dashboards/rulekeeper.yaml"),
    ] {
        let text = read(&f);
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let mut rest = line;
            while let Some(pos) = rest.find('$') {
                rest = &rest[pos + 1..];
                let name: String = rest
                    .trim_start_matches('{')
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    env_vars.insert(name);
                }
            }
        }
    }
    assert!(
        env_vars.contains("RULEKEEPER_DS_UID") && env_vars.contains("PUSHOVER_USER_KEY"),
        "{env_vars:?}"
    );
    for v in &env_vars {
        assert!(
            readme.contains(v.as_str()),
            "grafana/README.md does not document ${v}"
        );
        assert!(
            runbook.contains(v.as_str()),
            "docs/alerts-runbook.md does not document ${v}"
        );
    }
}
