//! The configuration file: its schema (DESIGN.md "Config"), loading, and the checks that
//! make every later stage able to trust it. Every error names the file, the target and the
//! key path, and never quotes a secret (secrets live in files the config only points at).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
fn default_max_bytes() -> u64 {
    1024 * 1024
}
fn default_mode() -> String {
    "0644".to_string()
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
    #[serde(default = "default_mode")]
    pub mode: String,
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
    /// Filled in by [`load`].
    #[serde(skip)]
    pub name: String,
    /// `mode` parsed, filled in by [`load`].
    #[serde(skip)]
    pub mode_bits: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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
/// serde reports unknown keys with their full path; [`check_source`] enforces which keys
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
    pub command: Option<Vec<String>>,
    pub none: Option<bool>,
    #[serde(default = "d_120s", with = "humantime_serde")]
    pub timeout: Duration,
}

/// What [`Restart`] resolves to once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartKind {
    Systemd(String),
    Command(Vec<String>),
    None,
}

impl Restart {
    pub fn kind(&self) -> RestartKind {
        if let Some(u) = &self.systemd {
            RestartKind::Systemd(u.clone())
        } else if let Some(c) = &self.command {
            RestartKind::Command(c.clone())
        } else {
            RestartKind::None
        }
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

/// Reads and checks a config file.
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        target: None,
        key: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    parse(&text, file)
}

/// Parses config text; `file` is only used in messages.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let de = serde_yaml::Deserializer::from_str(text);
    let mut cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let target = target_of_path(&key);
        let inner = e.into_inner().to_string();
        ConfigError {
            file: file.to_path_buf(),
            target,
            key: if key == "." { String::new() } else { key },
            message: inner,
        }
    })?;
    cfg.file = file.to_path_buf();
    check(&mut cfg)?;
    Ok(cfg)
}

/// `targets.NAME.rest` -> Some(NAME).
fn target_of_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix("targets.")?;
    let name = rest.split('.').next()?;
    if name.is_empty() {
        None
    } else {
        Some(name.to_string())
    }
}

fn valid_target_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Semantic checks serde cannot express. Also fills in derived fields.
fn check(cfg: &mut Config) -> Result<(), ConfigError> {
    let file = cfg.file.clone();
    let err = |target: Option<&str>, key: String, message: String| ConfigError {
        file: file.clone(),
        target: target.map(str::to_string),
        key,
        message,
    };
    if cfg.targets.is_empty() {
        return Err(err(
            None,
            "targets".into(),
            "at least one target is required".into(),
        ));
    }
    for (name, t) in cfg.targets.iter_mut() {
        let k = |key: &str| format!("targets.{name}.{key}");
        let tn = Some(name.as_str());
        if !valid_target_name(name) {
            return Err(err(
                tn,
                format!("targets.{name}"),
                "target names must match [a-z0-9_-]+ (at most 64 characters)".into(),
            ));
        }
        t.name = name.clone();
        if !t.path.is_absolute() {
            return Err(err(tn, k("path"), "must be an absolute path".into()));
        }
        if t.path.file_name().is_none() {
            return Err(err(tn, k("path"), "must name a file".into()));
        }
        t.mode_bits = match u32::from_str_radix(t.mode.trim_start_matches("0o"), 8) {
            Ok(m) if m <= 0o7777 => m,
            _ => {
                return Err(err(
                    tn,
                    k("mode"),
                    format!("`{}` is not an octal file mode like \"0644\"", t.mode),
                ))
            }
        };
        if t.max_bytes == 0 {
            return Err(err(tn, k("max_bytes"), "must be greater than 0".into()));
        }
        if t.interval < Duration::from_secs(1) {
            return Err(err(tn, k("interval"), "must be at least 1s".into()));
        }
        check_source(&t.source, name).map_err(|(key, m)| err(tn, k(&key), m))?;
        if !exactly_one(&[
            t.restart.systemd.is_some(),
            t.restart.command.is_some(),
            t.restart.none == Some(true),
        ]) {
            return Err(err(
                tn,
                k("restart"),
                "set exactly one of `systemd: UNIT`, `command: [argv]` or `none: true`".into(),
            ));
        }
        if let Some(u) = &t.restart.systemd {
            if u.is_empty() || u.starts_with('-') || u.contains(char::is_whitespace) {
                return Err(err(tn, k("restart.systemd"), "not a unit name".into()));
            }
        }
        if let Some(c) = &t.restart.command {
            check_argv(c).map_err(|m| err(tn, k("restart.command"), m))?;
        }
        if !exactly_one(&[
            t.verify.http.is_some(),
            t.verify.command.is_some(),
            t.verify.none == Some(true),
        ]) {
            return Err(err(
                tn,
                k("verify"),
                "set exactly one of `http: URL`, `command: [argv]` or `none: true`".into(),
            ));
        }
        if let Some(u) = &t.verify.http {
            check_url(u, false).map_err(|m| err(tn, k("verify.http"), m))?;
        }
        if let Some(c) = &t.verify.command {
            check_argv(c).map_err(|m| err(tn, k("verify.command"), m))?;
        }
        if t.verify.successes == 0 {
            return Err(err(tn, k("verify.successes"), "must be at least 1".into()));
        }
        if t.verify.interval.is_zero() {
            return Err(err(
                tn,
                k("verify.interval"),
                "must be greater than 0".into(),
            ));
        }
        // The PowerSync API token travels with these requests: TLS unless loopback.
        if let Some(p) = &t.verify.powersync_api {
            check_url(&p.url, true).map_err(|m| err(tn, k("verify.powersync_api.url"), m))?;
        }
        if let Some(c) = &t.validate.command {
            check_argv(c).map_err(|m| err(tn, k("validate.command"), m))?;
        }
        if let Some(p) = &t.validate.powersync_api {
            check_url(&p.url, true).map_err(|m| err(tn, k("validate.powersync_api.url"), m))?;
        }
        if let Some(g) = &t.gate {
            // A bearer token may travel with the query: TLS unless loopback.
            check_url(&g.url, true).map_err(|m| err(tn, k("gate.url"), m))?;
            if g.query.trim().is_empty() {
                return Err(err(tn, k("gate.query"), "must not be empty".into()));
            }
            if g.interval < Duration::from_secs(1) {
                return Err(err(tn, k("gate.interval"), "must be at least 1s".into()));
            }
            if g.timeout.is_zero() {
                return Err(err(tn, k("gate.timeout"), "must be greater than 0".into()));
            }
        }
    }
    check_overlaps(cfg)
}

/// Where a path really is: the longest existing ancestor resolved (symbolic links, `..`),
/// the rest normalised by hand. Live files need not exist yet.
pub fn resolve(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut lexical = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            other => lexical.push(other.as_os_str()),
        }
    }
    let mut base = p.to_path_buf();
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&base) {
            let mut out = real;
            for seg in rest.iter().rev() {
                if seg == ".." {
                    out.pop();
                } else if seg != "." {
                    out.push(seg);
                }
            }
            return out;
        }
        match (base.file_name().map(|n| n.to_os_string()), base.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                base = parent.to_path_buf();
            }
            // `..` as the last component, or nothing exists: fall back to the lexical form.
            _ => return lexical,
        }
    }
}

/// Two targets must not share a live file, and no target's live file may be another's
/// `.prev` or temp file, sit inside `state_dir`, or be a `file` source: each would make two
/// targets overwrite each other forever. Paths are compared resolved ([`resolve`]).
fn check_overlaps(cfg: &Config) -> Result<(), ConfigError> {
    let state_dir = resolve(&cfg.state_dir);
    let files: Vec<(&str, PathBuf, PathBuf)> = cfg
        .targets
        .iter()
        .map(|(n, t)| {
            let live = resolve(&t.path);
            let mut prev = live.clone().into_os_string();
            prev.push(".prev");
            (n.as_str(), live, PathBuf::from(prev))
        })
        .collect();
    let err = |target: &str, key: &str, message: String| ConfigError {
        file: cfg.file.clone(),
        target: Some(target.to_string()),
        key: format!("targets.{target}.{key}"),
        message,
    };
    for (a, live_a, prev_a) in &files {
        if live_a.starts_with(&state_dir) {
            return Err(err(
                a,
                "path",
                format!(
                    "the live file {} is inside state_dir ({})",
                    live_a.display(),
                    state_dir.display()
                ),
            ));
        }
        for (b, live_b, prev_b) in &files {
            if a == b {
                continue;
            }
            let clash = if live_a == live_b {
                Some(format!("the same live file as target `{b}`"))
            } else if live_a == prev_b {
                Some(format!("target `{b}`'s `.prev` file"))
            } else if prev_a == live_b {
                Some(format!("its `.prev` is target `{b}`'s live file"))
            } else if live_a.parent() == live_b.parent() && is_temp_of(live_a, live_b) {
                Some(format!("named like target `{b}`'s temp files"))
            } else {
                None
            };
            if let Some(c) = clash {
                return Err(err(
                    a,
                    "path",
                    format!(
                        "{} is {c} (paths compared after resolving links and `..`)",
                        live_a.display()
                    ),
                ));
            }
        }
        let t = &cfg.targets[*a];
        if t.source.kind == SourceKind::File {
            let src = resolve(Path::new(t.source.path.as_deref().unwrap_or_default()));
            if let Some((b, _, _)) = files
                .iter()
                .find(|(_, live, prev)| *live == src || *prev == src)
            {
                return Err(err(
                    a,
                    "source.path",
                    format!(
                        "{} is target `{b}`'s live file (or its `.prev`): a source must not be a file rulekeeper writes",
                        src.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Whether `a`'s file name is one of the temp names written beside `b` (`.<b>.rk-*`).
fn is_temp_of(a: &Path, b: &Path) -> bool {
    match (a.file_name(), b.file_name()) {
        (Some(a), Some(b)) => a
            .to_string_lossy()
            .starts_with(&format!(".{}.rk-", b.to_string_lossy())),
        _ => false,
    }
}

/// `restart` and `verify` each take exactly one of their forms.
fn exactly_one(set: &[bool]) -> bool {
    set.iter().filter(|b| **b).count() == 1
}

fn check_argv(argv: &[String]) -> Result<(), String> {
    match argv.first() {
        None => Err("must name a program (an argv list, no shell)".into()),
        Some(p) if p.is_empty() => Err("the program name is empty".into()),
        Some(_) => Ok(()),
    }
}

/// Which keys each source kind takes: (required, allowed-but-optional).
fn source_keys(kind: SourceKind) -> (&'static [&'static str], &'static [&'static str]) {
    match kind {
        SourceKind::Forgejo | SourceKind::Gitea | SourceKind::Github | SourceKind::Gitlab => (
            &["repo", "path"],
            &["base_url", "ref", "token_file", "ca_file", "timeout"],
        ),
        SourceKind::Git => (&["url", "path"], &["ref", "timeout"]),
        SourceKind::Http => (&["url"], &["token_file", "ca_file", "timeout"]),
        SourceKind::File => (&["path"], &["timeout"]),
    }
}

fn check_source(s: &Source, _target: &str) -> Result<(), (String, String)> {
    let present: [(&str, bool); 6] = [
        ("base_url", s.base_url.is_some()),
        ("repo", s.repo.is_some()),
        ("path", s.path.is_some()),
        ("ref", s.git_ref.is_some()),
        ("token_file", s.token_file.is_some()),
        ("url", s.url.is_some()),
    ];
    let (required, optional) = source_keys(s.kind);
    for (key, is_set) in present {
        if required.contains(&key) && !is_set {
            return Err((
                format!("source.{key}"),
                format!("required for kind `{}`", s.kind.as_str()),
            ));
        }
        if is_set && !required.contains(&key) && !optional.contains(&key) {
            return Err((
                format!("source.{key}"),
                format!("not used by kind `{}`", s.kind.as_str()),
            ));
        }
    }
    if s.ca_file.is_some() && !optional.contains(&"ca_file") {
        return Err((
            "source.ca_file".into(),
            format!("not used by kind `{}`", s.kind.as_str()),
        ));
    }
    if s.allow_close_delimited && s.kind != SourceKind::Http {
        return Err((
            "source.allow_close_delimited".into(),
            format!(
                "not used by kind `{}` (forge kinds check the bytes against the forge's own digest)",
                s.kind.as_str()
            ),
        ));
    }
    let needs_base = matches!(
        s.kind,
        SourceKind::Forgejo | SourceKind::Gitea | SourceKind::Gitlab
    );
    if needs_base && s.base_url.is_none() {
        return Err((
            "source.base_url".into(),
            format!("required for kind `{}`", s.kind.as_str()),
        ));
    }
    if let Some(u) = &s.base_url {
        check_url(u, true).map_err(|m| ("source.base_url".to_string(), m))?;
    }
    if let Some(u) = &s.url {
        if s.kind == SourceKind::Http {
            check_url(u, true).map_err(|m| ("source.url".to_string(), m))?;
        } else if u.is_empty() {
            return Err(("source.url".into(), "must not be empty".into()));
        }
    }
    if let Some(r) = &s.repo {
        let ok = if s.kind == SourceKind::Gitlab {
            !r.is_empty()
        } else {
            r.split('/').count() == 2 && r.split('/').all(|p| !p.is_empty())
        };
        if !ok {
            return Err(("source.repo".into(), "must look like `owner/name`".into()));
        }
    }
    if let Some(p) = &s.path {
        if p.is_empty() {
            return Err(("source.path".into(), "must not be empty".into()));
        }
        if s.kind == SourceKind::File && !Path::new(p).is_absolute() {
            return Err(("source.path".into(), "must be an absolute path".into()));
        }
        if s.kind != SourceKind::File && p.split('/').any(|seg| seg == "..") {
            return Err(("source.path".into(), "must not contain `..`".into()));
        }
    }
    if let Some(r) = &s.git_ref {
        if r.is_empty() || r.starts_with('-') {
            return Err(("source.ref".into(), "not a valid ref".into()));
        }
    }
    Ok(())
}

/// Whether a host (as written in a URL) is a loopback address.
pub fn is_loopback_host(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(a) => a.is_loopback(),
        url::Host::Ipv6(a) => a.is_loopback(),
    }
}

/// URLs must parse; for fetching (`require_tls`), plain http is allowed only to loopback.
fn check_url(u: &str, require_tls: bool) -> Result<(), String> {
    let parsed = url::Url::parse(u).map_err(|e| format!("not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => {
            let loop_ok = parsed.host().map(|h| is_loopback_host(&h)).unwrap_or(false);
            if require_tls && !loop_ok {
                Err("must be https:// (plain http:// is allowed only to a loopback host)".into())
            } else {
                Ok(())
            }
        }
        other => Err(format!("unsupported scheme `{other}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn minimal_parses() {
        let c = parse(BASE, Path::new("c.yaml")).unwrap();
        assert_eq!(c.targets["ps"].mode_bits, 0o644);
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
