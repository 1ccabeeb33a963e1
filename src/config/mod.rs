//! The configuration file: its schema (docs/contract.md "Config"). `load` reads the text
//! (duplicate keys refused where they are), `check` holds the semantic checks that make every
//! later stage able to trust it, `paths` the ones about where live files are. Every error names the file, the target and the key path, and never
//! quotes a secret (secrets live in files the config only points at).

mod check;
mod load;
mod paths;
pub(crate) mod signers;

pub use check::is_loopback_host;
pub use paths::resolve;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// A configuration error: which file, which target (if any), which key, and what is wrong.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub target: Option<String>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(t) = &self.target {
            write!(f, ": target `{t}`")?;
        }
        if !self.key.is_empty() {
            write!(f, ": key `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9871))
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/rulekeeper")
}
const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
fn d_60s() -> Duration {
    secs(60)
}
fn d_30s() -> Duration {
    secs(30)
}
fn d_5s() -> Duration {
    secs(5)
}
fn d_10s() -> Duration {
    secs(10)
}
fn d_120s() -> Duration {
    secs(120)
}
fn d_90s() -> Duration {
    secs(90)
}
fn d_2s() -> Duration {
    secs(2)
}
fn d_5m() -> Duration {
    secs(300)
}
fn default_max_files() -> usize {
    1000
}
fn default_max_bytes() -> u64 {
    1024 * 1024
}
fn default_true() -> bool {
    true
}
fn default_successes() -> u32 {
    3
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "d_60s", with = "humantime_serde")]
    pub startup_timeout: Duration,
    pub targets: BTreeMap<String, Target>,
    /// Where the config was read from (filled in by [`load`]), for error messages.
    #[serde(skip)]
    pub file: PathBuf,
}

/// One managed rules file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub source: Source,
    /// The live file the managed service reads.
    pub path: PathBuf,
    /// The live file's mode (octal). Unset: the file it replaces keeps its mode; a new file
    /// gets 0644.
    #[serde(default)]
    pub mode: Option<String>,
    /// The live file's owner and group (names or numeric ids). Unset: those of the file it
    /// replaces; for a new file, those of its directory.
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    /// Create the live file's missing parent directories; by default only the last one is
    /// created, so a typo in `path` does not grow a tree the service never reads.
    #[serde(default)]
    pub create_dirs: bool,
    /// The target is a directory: `source.path` names one upstream, `path` is the live
    /// directory (a link to a whole version, swapped at once).
    #[serde(default)]
    pub tree: bool,
    /// Most files a tree may hold.
    #[serde(default = "default_max_files")]
    pub max_files: usize,
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    #[serde(default = "d_5m", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default)]
    pub validate: Validate,
    pub restart: Restart,
    pub verify: Verify,
    #[serde(default)]
    pub webhook: Option<Webhook>,
    /// Fleets: new upstream content waits until this query says so.
    #[serde(default)]
    pub gate: Option<Gate>,
    /// Post what each upstream commit did on this host as a commit status on the forge.
    #[serde(default)]
    pub commit_status: Option<CommitStatus>,
    /// How many applies and rollbacks `history` keeps, and the bytes their contents may take.
    #[serde(default)]
    pub history: HistoryLimits,
    /// Filled in by [`load`].
    #[serde(skip)]
    pub name: String,
    /// `mode`, `owner`, `group` and `create_dirs` resolved, filled in by [`load`].
    #[serde(skip)]
    pub file: LiveFile,
}

/// How the live file (and `.prev`, and the candidate the validators read) is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveFile {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub create_dirs: bool,
    /// A directory target: its limits (files, bytes). None for a file.
    pub tree: Option<(usize, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Forgejo,
    Gitea,
    Github,
    Gitlab,
    Git,
    Http,
    File,
}

impl SourceKind {
    /// A forge with a REST API (raw files, commits, statuses): not `git`, `http` or `file`.
    pub fn is_forge(self) -> bool {
        matches!(
            self,
            SourceKind::Forgejo | SourceKind::Gitea | SourceKind::Github | SourceKind::Gitlab
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Forgejo => "forgejo",
            SourceKind::Gitea => "gitea",
            SourceKind::Github => "github",
            SourceKind::Gitlab => "gitlab",
            SourceKind::Git => "git",
            SourceKind::Http => "http",
            SourceKind::File => "file",
        }
    }
}

/// Where upstream content comes from. One flat struct rather than a tagged enum so that
/// serde reports unknown keys with their full path; `check::source` enforces which keys
/// each kind takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub kind: SourceKind,
    pub base_url: Option<String>,
    pub repo: Option<String>,
    pub path: Option<String>,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub token_file: Option<PathBuf>,
    pub url: Option<String>,
    /// Extra CA certificate (PEM) trusted in addition to the system store.
    pub ca_file: Option<PathBuf>,
    /// `http` only: accept a body delimited by the server closing the connection (no
    /// Content-Length, not chunked), which cannot be told from one cut short.
    #[serde(default)]
    pub allow_close_delimited: bool,
    #[serde(default = "d_30s", with = "humantime_serde")]
    pub timeout: Duration,
    /// Apply only commits signed by an allowed key (docs/security.md).
    #[serde(default)]
    pub require_signature: Option<RequireSignature>,
}

/// `source.require_signature`: the revision to apply must carry a valid signature by one of
/// these keys. Both files are read on every cycle (a rotated key needs no restart).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RequireSignature {
    /// git's `gpg.ssh.allowedSignersFile` format, for SSH signatures.
    #[serde(default)]
    pub allowed_signers: Option<PathBuf>,
    /// A keyring `gpgv` reads, for OpenPGP signatures.
    #[serde(default)]
    pub gpg_keyring: Option<PathBuf>,
    /// When set, the signed commit's committer email must be one of these.
    #[serde(default)]
    pub committers: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Validate {
    #[serde(default = "default_true")]
    pub yaml: bool,
    #[serde(default)]
    pub require_keys: Vec<String>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default = "d_60s", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default)]
    pub powersync_api: Option<PowerSyncApi>,
}

impl Default for Validate {
    fn default() -> Self {
        Validate {
            yaml: true,
            require_keys: Vec::new(),
            command: None,
            timeout: d_60s(),
            powersync_api: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Warnings {
    #[default]
    Allow,
    Reject,
}

/// PowerSync's own admin API, used to validate a candidate or to check after a restart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerSyncApi {
    pub url: String,
    pub token_file: PathBuf,
    #[serde(default = "d_10s", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default)]
    pub warnings: Warnings,
    /// When true, an unreachable service rejects the candidate instead of skipping.
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restart {
    pub systemd: Option<String>,
    /// `systemctl reload UNIT`: the same process takes the new file.
    pub systemd_reload: Option<String>,
    /// A signal (`HUP`, ...) to a unit's main process or to the process a pid file names.
    pub signal: Option<SignalReload>,
    /// A reload endpoint (Prometheus', Alertmanager's, vmalert's `/-/reload`).
    pub http: Option<HttpReload>,
    pub command: Option<Vec<String>>,
    pub none: Option<bool>,
    /// Deploy through PowerSync's sync-rules API instead of restarting it.
    pub powersync_deploy: Option<PowerSyncDeploy>,
    #[serde(default = "d_120s", with = "humantime_serde")]
    pub timeout: Duration,
}

/// PowerSync's deploy API (`POST {url}/api/sync-rules/v1/deploy`): PowerSync keeps its rules
/// in bucket storage and takes new ones without a restart (docs/powersync.md, "Restart or
/// deploy"). Each request is limited by `restart.timeout`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PowerSyncDeploy {
    pub url: String,
    pub token_file: PathBuf,
}

/// `restart: {signal: {name, unit | pid_file}}`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SignalReload {
    /// `HUP`, `USR1`, `USR2`, ... (with or without `SIG`).
    pub name: String,
    /// Signal the unit's main process (`systemctl kill --kill-whom=main`).
    pub unit: Option<String>,
    /// Signal the process this file names (a service that is not a unit).
    pub pid_file: Option<PathBuf>,
    /// `name` resolved, filled in by [`load`].
    #[serde(skip)]
    pub number: i32,
}

/// `restart: {http: {url, method}}`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpReload {
    pub url: String,
    #[serde(default = "default_post")]
    pub method: String,
}

fn default_post() -> String {
    "POST".into()
}

/// What [`Restart`] resolves to once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartKind {
    Systemd(String),
    SystemdReload(String),
    Signal(SignalReload),
    Http(HttpReload),
    Command(Vec<String>),
    PowerSyncDeploy(PowerSyncDeploy),
    None,
}

impl Restart {
    pub fn kind(&self) -> RestartKind {
        if let Some(u) = &self.systemd {
            RestartKind::Systemd(u.clone())
        } else if let Some(u) = &self.systemd_reload {
            RestartKind::SystemdReload(u.clone())
        } else if let Some(s) = &self.signal {
            RestartKind::Signal(s.clone())
        } else if let Some(h) = &self.http {
            RestartKind::Http(h.clone())
        } else if let Some(c) = &self.command {
            RestartKind::Command(c.clone())
        } else if let Some(d) = &self.powersync_deploy {
            RestartKind::PowerSyncDeploy(d.clone())
        } else {
            RestartKind::None
        }
    }

    /// The deploy API, when this target deploys instead of restarting.
    pub fn deploy(&self) -> Option<&PowerSyncDeploy> {
        self.powersync_deploy.as_ref()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    pub http: Option<String>,
    pub command: Option<Vec<String>>,
    pub none: Option<bool>,
    #[serde(default = "d_90s", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "d_2s", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_successes")]
    pub successes: u32,
    /// After the probe window, ask PowerSync whether the new rules are live and clean.
    #[serde(default)]
    pub powersync_api: Option<PowerSyncApi>,
    /// The service's own "did the reload work" gauges, read from its metrics.
    #[serde(default)]
    pub metrics: Option<ReloadMetrics>,
}

/// `verify: {metrics: {url, success, timestamp, count}}`: a reload passes when the `success`
/// gauge is 1 and the service shows it handled this reload: the `timestamp` gauge (when given)
/// at or after the moment of the reload, or the `count` of reload attempts (when given) past
/// its value before.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReloadMetrics {
    pub url: String,
    pub success: String,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub count: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyKind {
    Http(String),
    Command(Vec<String>),
    None,
}

impl Verify {
    pub fn kind(&self) -> VerifyKind {
        if let Some(u) = &self.http {
            VerifyKind::Http(u.clone())
        } else if let Some(c) = &self.command {
            VerifyKind::Command(c.clone())
        } else {
            VerifyKind::None
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub secret_file: PathBuf,
}

/// The versions kept under `state_dir/targets/<t>/history/` for `history` and `rollback --to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryLimits {
    /// Entries in the list (applies and rollbacks).
    #[serde(default = "default_history_keep")]
    pub keep: usize,
    /// Bytes the kept contents may take together; older versions lose their content first.
    #[serde(default = "default_history_max_bytes")]
    pub max_bytes: u64,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            keep: default_history_keep(),
            max_bytes: default_history_max_bytes(),
        }
    }
}

fn default_history_keep() -> usize {
    10
}
fn default_history_max_bytes() -> u64 {
    16 * 1024 * 1024
}

/// Commit statuses on the source's forge (docs/operations.md, "What the app team sees").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitStatus {
    /// A token with write access to statuses (not the read token of `source`).
    pub token_file: PathBuf,
    /// Defaults to `rulekeeper/<hostname>/<target>`: one line per host and target.
    #[serde(default)]
    pub context: Option<String>,
    #[serde(default = "d_10s", with = "humantime_serde")]
    pub timeout: Duration,
}

/// A staged-rollout gate: a Prometheus-compatible query that must answer before new upstream
/// content is swapped in (docs/fleet.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// Base URL of the query API (`GET {url}/api/v1/query`).
    pub url: String,
    /// PromQL; `{sha256}` and `{revision}` are replaced by the candidate's.
    pub query: String,
    #[serde(default = "d_30s", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "d_5s", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

pub use load::{load, parse};

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = r#"
state_dir: /tmp/x
targets:
  ps:
    source: { kind: file, path: /tmp/up.yaml }
    path: /tmp/live.yaml
    restart: { none: true }
    verify: { none: true }
"#;

    #[test]
    fn duplicate_target_names_and_keys_are_refused_where_they_are() {
        let twice = format!("{BASE}  ps:\n    source: {{ kind: file, path: /tmp/b }}\n");
        let e = parse(&twice, Path::new("c.yaml")).unwrap_err();
        assert_eq!(e.key, "targets.ps");
        assert!(
            e.message
                .contains("duplicate target name `ps` at line 9 column 3"),
            "{e}"
        );
        let top = format!("state_dir: /tmp/y\n{BASE}");
        let e = parse(&top, Path::new("c.yaml")).unwrap_err();
        assert_eq!(e.key, "state_dir");
        assert!(e.message.contains("at line 3 column 1"), "{e}");
    }

    #[test]
    fn minimal_parses() {
        let c = parse(BASE, Path::new("c.yaml")).unwrap();
        assert_eq!(c.targets["ps"].file.mode, None);
        assert_eq!(c.targets["ps"].interval, Duration::from_secs(300));
    }

    #[test]
    fn unknown_key_names_path_and_target() {
        let t = BASE.replace(
            "path: /tmp/live.yaml",
            "path: /tmp/live.yaml\n    colour: red",
        );
        let e = parse(&t, Path::new("c.yaml")).unwrap_err();
        assert_eq!(e.target.as_deref(), Some("ps"));
        assert!(e.to_string().contains("colour"), "{e}");
        assert!(e.to_string().contains("c.yaml"), "{e}");
    }

    #[test]
    fn history_limits_default_and_are_checked() {
        let c = parse(BASE, Path::new("c.yaml")).unwrap();
        assert_eq!(c.targets["ps"].history, HistoryLimits::default());
        let with = |h: &str| {
            BASE.replace(
                "verify: { none: true }",
                &format!("verify: {{ none: true }}\n    history: {h}"),
            )
        };
        let c = parse(
            &with("{ keep: 3, max_bytes: 4194304 }"),
            Path::new("c.yaml"),
        )
        .unwrap();
        assert_eq!(c.targets["ps"].history.keep, 3);
        let e = parse(&with("{ keep: 0 }"), Path::new("c.yaml")).unwrap_err();
        assert_eq!(e.key, "targets.ps.history.keep");
        let e = parse(&with("{ max_bytes: 1000 }"), Path::new("c.yaml")).unwrap_err();
        assert_eq!(e.key, "targets.ps.history.max_bytes");
        assert!(e.to_string().contains("max_bytes (1048576)"), "{e}");
    }

    #[test]
    fn plain_http_only_to_loopback() {
        let t = BASE.replace(
            "{ kind: file, path: /tmp/up.yaml }",
            "{ kind: http, url: \"http://example.com/x\" }",
        );
        let e = parse(&t, Path::new("c.yaml")).unwrap_err();
        assert_eq!(e.key, "targets.ps.source.url");
        let t = BASE.replace(
            "{ kind: file, path: /tmp/up.yaml }",
            "{ kind: http, url: \"http://127.0.0.1:9/x\" }",
        );
        parse(&t, Path::new("c.yaml")).unwrap();
    }

    #[test]
    fn aliased_live_paths_are_refused_naming_both_targets() {
        let d = tempfile::tempdir().unwrap();
        let x = d.path().join("x");
        let y = d.path().join("y");
        std::fs::create_dir_all(&x).unwrap();
        std::fs::create_dir_all(&y).unwrap();
        let two = |a: String, b: String| {
            format!(
                "state_dir: {}\ntargets:\n  a:\n    source: {{ kind: file, path: /srv/up-a.yaml }}\n    path: {a}\n    restart: {{ none: true }}\n    verify: {{ none: true }}\n  b:\n    source: {{ kind: file, path: /srv/up-b.yaml }}\n    path: {b}\n    restart: {{ none: true }}\n    verify: {{ none: true }}\n",
                d.path().join("state").display()
            )
        };
        let r = x.join("r.yaml").display().to_string();
        let cases = [
            (format!("{}/../x/r.yaml", y.display()), "the same live file"),
            (format!("{r}.prev"), "`.prev`"),
            (x.join(".r.yaml.rk-abc").display().to_string(), "temp files"),
        ];
        for (b, want) in cases {
            let e = parse(&two(r.clone(), b.clone()), Path::new("c.yaml")).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(want), "{b}: {msg}");
            assert!(
                msg.contains("target `a`") && msg.contains("target `b`"),
                "{msg}"
            );
        }
        // through a symlinked directory
        std::os::unix::fs::symlink(&x, d.path().join("link")).unwrap();
        let e = parse(
            &two(
                r.clone(),
                d.path().join("link/r.yaml").display().to_string(),
            ),
            Path::new("c.yaml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("the same live file"), "{e}");
        // inside state_dir
        let e = parse(
            &two(
                r.clone(),
                d.path()
                    .join("state/targets/a/x.yaml")
                    .display()
                    .to_string(),
            ),
            Path::new("c.yaml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("inside state_dir"), "{e}");
        // a file source that is a live file
        let t =
            two(r.clone(), y.join("r.yaml").display().to_string()).replace("/srv/up-b.yaml", &r);
        let e = parse(&t, Path::new("c.yaml")).unwrap_err();
        assert_eq!(e.key, "targets.b.source.path");
        // distinct files are fine
        parse(
            &two(r, y.join("r.yaml").display().to_string()),
            Path::new("c.yaml"),
        )
        .unwrap();
    }

    #[test]
    fn restart_needs_exactly_one() {
        let t = BASE.replace("restart: { none: true }", "restart: {}");
        let e = parse(&t, Path::new("c.yaml")).unwrap_err();
        assert_eq!(e.key, "targets.ps.restart");
    }
}
