//! The alerting chain operators run, as real processes on 127.0.0.1: VictoriaMetrics scraping
//! rulekeeper daemons every second (`-promscrape.config`, job `rulekeeper`), vmalert evaluating
//! a copy of alerts/rulekeeper.rules.yml, and Alertmanager routing with a copy of
//! alerts/alertmanager.yml. The copies differ from the shipped files only in durations (`for:`,
//! windows, evaluation and grouping intervals, the SyncStale floor) and, in Alertmanager, in
//! the receivers' transport: the shipped route tree is kept, but each Pushover receiver
//! becomes a webhook to [`Sink`], a stand-in for Pushover's API (which cannot be reached here).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::{free_port, http, repo_root, require_tool, wait_until};

/// One notification as the stand-in for Pushover received it.
#[derive(Debug, Clone)]
pub struct Note {
    /// `normal` or `emergency`: which Pushover receiver the route chose.
    pub receiver: String,
    pub body: serde_json::Value,
    pub at: Instant,
}

/// Records every webhook Alertmanager sends, by path (`/normal`, `/emergency`).
pub struct Sink {
    pub port: u16,
    pub notes: Arc<Mutex<Vec<Note>>>,
}

impl Sink {
    fn start() -> Sink {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind sink");
        let port = l.local_addr().expect("addr").port();
        let notes = Arc::new(Mutex::new(Vec::new()));
        let n = notes.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { continue };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                // head, then Content-Length bytes of body
                let (head_end, len) = loop {
                    match c.read(&mut chunk) {
                        Ok(0) | Err(_) => break (None, 0),
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (Some(i + 4), len);
                    }
                };
                let Some(start) = head_end else { continue };
                while buf.len() < start + len {
                    match c.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
                let head = String::from_utf8_lossy(&buf[..start]).into_owned();
                let path = head.split(' ').nth(1).unwrap_or("").trim_start_matches('/');
                if let Ok(body) = serde_json::from_slice(&buf[start..]) {
                    n.lock().expect("sink").push(Note {
                        receiver: path.to_string(),
                        body,
                        at: Instant::now(),
                    });
                }
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Sink { port, notes }
    }

    pub fn all(&self) -> Vec<Note> {
        self.notes.lock().expect("sink").clone()
    }
}

/// The alerts of a notification with `status` whose labels include every `(k, v)`, with the
/// note they came in.
pub fn find(
    notes: &[Note],
    alertname: &str,
    status: &str,
    labels: &[(&str, &str)],
) -> Option<(Note, serde_json::Value)> {
    notes.iter().find_map(|n| {
        n.body["alerts"].as_array()?.iter().find_map(|a| {
            let ok = a["labels"]["alertname"] == alertname
                && a["status"] == status
                && labels.iter().all(|(k, v)| a["labels"][*k] == *v);
            ok.then(|| (n.clone(), a.clone()))
        })
    })
}

/// VictoriaMetrics alone, scraping rulekeeper daemons every second as job `rulekeeper`.
pub struct Vm {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    /// Scrapes each `(port, role)`: the daemon's `listen` port and an optional `role` label
    /// set by the scrape config (as docs/fleet.md recommends).
    pub fn start(targets: &[(u16, Option<&str>)]) -> Option<Vm> {
        let vm = require_tool("victoria-metrics")?;
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let port = free_port();
        let mut scrape = String::from(
            "scrape_configs:\n  - job_name: rulekeeper\n    scrape_interval: 1s\n    static_configs:\n",
        );
        for (p, role) in targets {
            scrape.push_str(&format!("      - targets: [\"127.0.0.1:{p}\"]\n"));
            if let Some(r) = role {
                scrape.push_str(&format!("        labels: {{role: {r}}}\n"));
            }
        }
        std::fs::write(d.join("scrape.yml"), scrape).unwrap();
        let child = spawn(
            Command::new(&vm)
                .arg(format!("-storageDataPath={}", d.join("vm").display()))
                .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
                .arg(format!(
                    "-promscrape.config={}",
                    d.join("scrape.yml").display()
                ))
                .arg("-search.latencyOffset=1s")
                .arg("-search.disableCache")
                .arg("-loggerLevel=ERROR"),
            &d.join("victoria-metrics.log"),
        );
        wait_until(30, "victoria-metrics ready", || {
            http(port, "GET", "/health", &[], b"").0 == 200
        });
        Some(Vm {
            port,
            child,
            _dir: dir,
        })
    }

    /// An instant query: the result vector.
    pub fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let q: String = url::form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let (code, body) = http(
            self.port,
            "GET",
            &format!("/api/v1/query?query={q}"),
            &[],
            b"",
        );
        if code != 200 {
            return Vec::new();
        }
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .unwrap_or_default()
    }
}

pub struct Stack {
    /// Configs, data and logs of vmalert and Alertmanager.
    _dir: tempfile::TempDir,
    pub vm: Vm,
    pub sink: Sink,
    children: Vec<Child>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The shipped rules with durations shortened for a test, nothing else.
///
/// VictoriaMetrics makes a brand-new series searchable only some seconds after its first
/// scrape (measured: 2-10 s here). RulekeeperUpstreamQuarantined's and RulekeeperRolledBack's
/// `rules` annotations query `rulekeeper_quarantined_info`, a series born with the quarantine;
/// at `for: 3s` (and RolledBack without a `for`) vmalert sometimes templated it before the
/// series was visible ("quarantined content unknown", or the live file alone). The shipped
/// `for: 5m` and `for: 30s` leave time; the copy keeps 15 s for both, past the measured delay.
fn fast_rules(text: &str) -> String {
    let mut alert = "";
    text.lines()
        .map(|l| {
            let t = l.trim_start();
            let indent = &l[..l.len() - t.len()];
            if let Some(name) = t.strip_prefix("- alert: ") {
                alert = name.trim();
            }
            if t.starts_with("for: ") {
                let d = if alert == "RulekeeperUpstreamQuarantined"
                    || alert == "RulekeeperRolledBack"
                {
                    "15s"
                } else {
                    "3s"
                };
                format!("{indent}for: {d}")
            } else if t == "interval: 1m" {
                format!("{indent}interval: 1s")
            } else {
                l.replace("[15m]", "[20s]")
                    .replace("[30m]", "[20s]")
                    .replace("[1h]", "[20s]")
                    .replace(
                        "clamp_min(rulekeeper_poll_interval_seconds, 60)",
                        "clamp_min(rulekeeper_poll_interval_seconds, 1)",
                    )
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The shipped Alertmanager config with short grouping intervals, its Pushover receivers
/// pointed at the sink (the route tree untouched).
fn fast_alertmanager(text: &str, sink: u16) -> String {
    let mut v: serde_yaml::Value = serde_yaml::from_str(text).expect("alertmanager.yml parses");
    fn shorten(route: &mut serde_yaml::Value) {
        for (k, d) in [("group_wait", "1s"), ("group_interval", "1s")] {
            if route.get(k).is_some() {
                route[k] = d.into();
            }
        }
        if let Some(rs) = route.get_mut("routes").and_then(|r| r.as_sequence_mut()) {
            for r in rs {
                shorten(r);
            }
        }
    }
    shorten(&mut v["route"]);
    for r in v["receivers"].as_sequence_mut().expect("receivers") {
        let name = r["name"].as_str().expect("receiver name").to_string();
        let path = name.trim_start_matches("rulekeeper-pushover-").to_string();
        let m = r.as_mapping_mut().expect("receiver");
        assert!(
            m.remove("pushover_configs").is_some(),
            "{name}: a Pushover receiver"
        );
        m.insert(
            "webhook_configs".into(),
            serde_yaml::to_value(vec![serde_json::json!({
                "url": format!("http://127.0.0.1:{sink}/{path}"),
                "send_resolved": true,
            })])
            .expect("yaml"),
        );
    }
    serde_yaml::to_string(&v).expect("yaml")
}

fn spawn(cmd: &mut Command, log: &Path) -> Child {
    let f = std::fs::File::create(log).expect("log");
    cmd.stdin(Stdio::null())
        .stdout(f.try_clone().expect("log"))
        .stderr(f)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

impl Stack {
    /// Starts the chain scraping `targets` (rulekeeper `listen` ports). None (after a loud
    /// message) when a tool is missing.
    pub fn start(targets: &[u16]) -> Option<Stack> {
        let vmalert = require_tool("vmalert")?;
        let am = require_tool("prometheus-alertmanager")?;
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let sink = Sink::start();
        let (vmalert_port, am_port) = (free_port(), free_port());
        let scraped: Vec<(u16, Option<&str>)> = targets.iter().map(|p| (*p, None)).collect();
        let vm = Vm::start(&scraped)?;
        let vm_port = vm.port;
        let rules =
            std::fs::read_to_string(repo_root().join("alerts/rulekeeper.rules.yml")).unwrap();
        std::fs::write(d.join("rules.yml"), fast_rules(&rules)).unwrap();
        let amc = std::fs::read_to_string(repo_root().join("alerts/alertmanager.yml")).unwrap();
        std::fs::write(
            d.join("alertmanager.yml"),
            fast_alertmanager(&amc, sink.port),
        )
        .unwrap();
        std::fs::copy(
            repo_root().join("alerts/rulekeeper.tmpl"),
            d.join("rulekeeper.tmpl"),
        )
        .unwrap();

        let mut children = Vec::new();
        children.push(spawn(
            Command::new(&am)
                .arg(format!(
                    "--config.file={}",
                    d.join("alertmanager.yml").display()
                ))
                .arg(format!("--storage.path={}", d.join("am").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
                .arg("--cluster.listen-address=")
                .arg("--log.level=warn"),
            &d.join("alertmanager.log"),
        ));
        children.push(spawn(
            Command::new(&vmalert)
                .arg(format!("-rule={}", d.join("rules.yml").display()))
                .arg(format!("-datasource.url=http://127.0.0.1:{vm_port}"))
                .arg(format!("-notifier.url=http://127.0.0.1:{am_port}"))
                .arg(format!("-httpListenAddr=127.0.0.1:{vmalert_port}"))
                .arg("-evaluationInterval=1s")
                .arg("-loggerLevel=ERROR"),
            &d.join("vmalert.log"),
        ));
        let stack = Stack {
            _dir: dir,
            vm,
            sink,
            children,
        };
        wait_until(30, "alertmanager ready", || {
            http(am_port, "GET", "/-/ready", &[], b"").0 == 200
        });
        wait_until(30, "vmalert ready", || {
            http(vmalert_port, "GET", "/health", &[], b"").0 == 200
        });
        Some(stack)
    }
}

#[test]
fn the_test_copies_change_only_durations_and_transport() {
    let rules = std::fs::read_to_string(repo_root().join("alerts/rulekeeper.rules.yml")).unwrap();
    let fast = fast_rules(&rules);
    let strip = |t: &str| -> String {
        t.lines()
            .filter(|l| {
                !l.trim_start().starts_with("for: ") && !l.trim_start().starts_with("interval: ")
            })
            .map(|l| {
                l.replace("[20s]", "[W]")
                    .replace("[15m]", "[W]")
                    .replace("[30m]", "[W]")
                    .replace("[1h]", "[W]")
                    .replace("clamp_min(rulekeeper_poll_interval_seconds, 1)", "FLOOR")
                    .replace("clamp_min(rulekeeper_poll_interval_seconds, 60)", "FLOOR")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&rules), strip(&fast));
    let am = std::fs::read_to_string(repo_root().join("alerts/alertmanager.yml")).unwrap();
    let fast: serde_yaml::Value = serde_yaml::from_str(&fast_alertmanager(&am, 1)).unwrap();
    let shipped: serde_yaml::Value = serde_yaml::from_str(&am).unwrap();
    // Same routing: receivers and matchers of every route.
    fn tree(r: &serde_yaml::Value) -> Vec<String> {
        let mut out = vec![format!(
            "{:?} {:?} {:?}",
            r["receiver"], r["matchers"], r["group_by"]
        )];
        if let Some(rs) = r["routes"].as_sequence() {
            for x in rs {
                out.extend(tree(x));
            }
        }
        out
    }
    assert_eq!(tree(&shipped["route"]), tree(&fast["route"]));
}
