//! The semantic checks serde cannot express: which keys each source kind takes, exactly one
//! form of `restart` and `verify`, URLs (TLS unless loopback wherever a token travels),
//! argv lists, durations and counts. Also fills in derived fields (`name`, `file`).

use std::path::Path;
use std::time::Duration;

use super::{paths, Config, ConfigError, Source, SourceKind, Target};

/// A check's complaint about one target: the key under `targets.NAME.` and the message.
type Complaint = (String, String);

fn at(key: &str, message: impl Into<String>) -> Complaint {
    (key.to_string(), message.into())
}

/// Checks the whole file (then the paths of every live file against each other).
pub(super) fn config(cfg: &mut Config) -> Result<(), ConfigError> {
    let file = cfg.file.clone();
    if cfg.targets.is_empty() {
        return Err(ConfigError {
            file,
            target: None,
            key: "targets".into(),
            message: "at least one target is required".into(),
        });
    }
    for (name, t) in cfg.targets.iter_mut() {
        let named = |key: String, message: String| ConfigError {
            file: file.clone(),
            target: Some(name.clone()),
            key,
            message,
        };
        if !valid_target_name(name) {
            return Err(named(
                format!("targets.{name}"),
                "target names must match [a-z0-9_-]+ (at most 64 characters)".into(),
            ));
        }
        t.name = name.clone();
        target(t).map_err(|(key, m)| named(format!("targets.{name}.{key}"), m))?;
    }
    paths::check_overlaps(cfg)
}

/// `mode`, `owner`, `group` and `create_dirs`, resolved on this host.
fn live_file(t: &Target) -> Result<crate::config::LiveFile, Complaint> {
    let mode = match &t.mode {
        None => None,
        Some(m) => match u32::from_str_radix(m.trim_start_matches("0o"), 8) {
            Ok(bits) if bits <= 0o7777 => Some(bits),
            _ => {
                return Err(at(
                    "mode",
                    format!("`{m}` is not an octal file mode like \"0644\""),
                ))
            }
        },
    };
    let uid = match &t.owner {
        None => None,
        Some(o) => Some(crate::util::ids::uid(o).ok_or_else(|| {
            at(
                "owner",
                format!("no user `{o}` on this host (a name or a numeric uid)"),
            )
        })?),
    };
    let gid = match &t.group {
        None => None,
        Some(g) => Some(crate::util::ids::gid(g).ok_or_else(|| {
            at(
                "group",
                format!("no group `{g}` on this host (a name or a numeric gid)"),
            )
        })?),
    };
    Ok(crate::config::LiveFile {
        mode,
        uid,
        gid,
        create_dirs: t.create_dirs,
        tree: t.tree.then_some((t.max_files, t.max_bytes)),
    })
}

/// One target's keys.
fn target(t: &mut Target) -> Result<(), Complaint> {
    if !t.path.is_absolute() {
        return Err(at("path", "must be an absolute path"));
    }
    if t.path.file_name().is_none() {
        return Err(at("path", "must name a file"));
    }
    t.file = live_file(t)?;
    if t.max_bytes == 0 {
        return Err(at("max_bytes", "must be greater than 0"));
    }
    if t.interval < Duration::from_secs(1) {
        return Err(at("interval", "must be at least 1s"));
    }
    source(&t.source)?;
    restart(t)?;
    if let Some(s) = t.restart.signal.as_mut() {
        signal(s)?;
    }
    verify(t)?;
    if let Some(c) = &t.validate.command {
        check_argv(c).map_err(|m| at("validate.command", m))?;
    }
    if let Some(p) = &t.validate.powersync_api {
        check_url(&p.url, true).map_err(|m| at("validate.powersync_api.url", m))?;
    }
    gate(t)?;
    commit_status(t)?;
    tree(t)?;
    history(t)
}

/// `tree: true`: what cannot work on a directory is refused here, naming the key.
fn tree(t: &Target) -> Result<(), Complaint> {
    if !t.tree {
        return Ok(());
    }
    if t.max_files == 0 {
        return Err(at("max_files", "must be greater than 0"));
    }
    if t.source.require_signature.is_some() && t.source.kind != SourceKind::Git {
        return Err(at(
            "source.require_signature",
            "a signed directory (`tree: true`) is verified on a `git` source only; use `kind: git`",
        ));
    }
    if t.validate.powersync_api.is_some() {
        return Err(at(
            "validate.powersync_api",
            "PowerSync validates one rules file, not a directory (`tree: true`)",
        ));
    }
    if t.verify.powersync_api.is_some() {
        return Err(at(
            "verify.powersync_api",
            "PowerSync checks one rules file, not a directory (`tree: true`)",
        ));
    }
    if t.restart.powersync_deploy.is_some() {
        return Err(at(
            "restart.powersync_deploy",
            "PowerSync deploys one rules file, not a directory (`tree: true`)",
        ));
    }
    match t.source.kind {
        SourceKind::Http => Err(at(
            "source.kind",
            "a plain `http` source serves one file, not a directory",
        )),
        _ => Ok(()),
    }
}

fn history(t: &Target) -> Result<(), Complaint> {
    let h = &t.history;
    if !(1..=100).contains(&h.keep) {
        return Err(at("history.keep", "must be 1 to 100"));
    }
    // The live version must always fit: it is the first one `rollback --to` needs.
    if h.max_bytes < t.max_bytes {
        return Err(at(
            "history.max_bytes",
            format!(
                "must be at least the target's max_bytes ({}), so the live version is kept",
                t.max_bytes
            ),
        ));
    }
    Ok(())
}

fn commit_status(t: &Target) -> Result<(), Complaint> {
    let Some(c) = &t.commit_status else {
        return Ok(());
    };
    if !t.source.kind.is_forge() {
        return Err(at(
            "commit_status",
            "needs a forgejo, gitea, github or gitlab source (it posts to that forge's statuses API)",
        ));
    }
    // The status token travels to the source's forge: TLS unless loopback.
    if let Some(b) = &t.source.base_url {
        check_url(b, true).map_err(|m| at("commit_status", format!("source.base_url: {m}")))?;
    }
    if let Some(ctx) = &c.context {
        if ctx.trim().is_empty() || ctx.len() > 255 {
            return Err(at("commit_status.context", "must be 1 to 255 characters"));
        }
    }
    if c.timeout.is_zero() {
        return Err(at("commit_status.timeout", "must be greater than 0"));
    }
    Ok(())
}

fn restart(t: &Target) -> Result<(), Complaint> {
    let r = &t.restart;
    if !exactly_one(&[
        r.systemd.is_some(),
        r.systemd_reload.is_some(),
        r.signal.is_some(),
        r.http.is_some(),
        r.command.is_some(),
        r.none == Some(true),
        r.powersync_deploy.is_some(),
    ]) {
        return Err(at(
            "restart",
            "set exactly one of `systemd: UNIT`, `systemd_reload: UNIT`, `signal: {name, unit | pid_file}`, `http: {url}`, `command: [argv]`, `powersync_deploy: {url, token_file}` or `none: true`",
        ));
    }
    for (key, u) in [("restart.systemd_reload", &r.systemd_reload)] {
        if let Some(u) = u {
            unit_name(u).map_err(|m| at(key, m))?;
        }
    }
    if let Some(h) = &r.http {
        check_url(&h.url, true).map_err(|m| at("restart.http.url", m))?;
        if !matches!(h.method.as_str(), "POST" | "PUT" | "GET") {
            return Err(at("restart.http.method", "must be POST, PUT or GET"));
        }
    }
    // The API token travels with every deploy: TLS unless loopback.
    if let Some(d) = &r.powersync_deploy {
        check_url(&d.url, true).map_err(|m| at("restart.powersync_deploy.url", m))?;
    }
    if let Some(u) = &r.systemd {
        unit_name(u).map_err(|m| at("restart.systemd", m))?;
    }
    if let Some(c) = &r.command {
        check_argv(c).map_err(|m| at("restart.command", m))?;
    }
    Ok(())
}

fn unit_name(u: &str) -> Result<(), String> {
    if u.is_empty() || u.starts_with('-') || u.contains(char::is_whitespace) {
        return Err("not a unit name".into());
    }
    Ok(())
}

/// `restart.signal`: a known signal, and exactly one of `unit` or an absolute `pid_file`.
fn signal(s: &mut crate::config::SignalReload) -> Result<(), Complaint> {
    s.number = signal_number(&s.name).ok_or_else(|| {
        at(
            "restart.signal.name",
            format!(
                "`{}` is not a signal rulekeeper sends (HUP, USR1, USR2, INT, TERM, QUIT, WINCH)",
                s.name
            ),
        )
    })?;
    match (&s.unit, &s.pid_file) {
        (Some(u), None) => unit_name(u).map_err(|m| at("restart.signal.unit", m)),
        (None, Some(p)) if p.is_absolute() => Ok(()),
        (None, Some(_)) => Err(at("restart.signal.pid_file", "must be an absolute path")),
        _ => Err(at(
            "restart.signal",
            "set exactly one of `unit: UNIT` or `pid_file: PATH`",
        )),
    }
}

fn signal_number(name: &str) -> Option<i32> {
    let n = name.trim().to_ascii_uppercase();
    Some(match n.strip_prefix("SIG").unwrap_or(&n) {
        "HUP" => libc::SIGHUP,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "INT" => libc::SIGINT,
        "TERM" => libc::SIGTERM,
        "QUIT" => libc::SIGQUIT,
        "WINCH" => libc::SIGWINCH,
        _ => return None,
    })
}

fn verify(t: &Target) -> Result<(), Complaint> {
    let v = &t.verify;
    if !exactly_one(&[v.http.is_some(), v.command.is_some(), v.none == Some(true)]) {
        return Err(at(
            "verify",
            "set exactly one of `http: URL`, `command: [argv]` or `none: true`",
        ));
    }
    if let Some(u) = &v.http {
        check_url(u, false).map_err(|m| at("verify.http", m))?;
    }
    if let Some(c) = &v.command {
        check_argv(c).map_err(|m| at("verify.command", m))?;
    }
    if v.successes == 0 {
        return Err(at("verify.successes", "must be at least 1"));
    }
    if v.interval.is_zero() {
        return Err(at("verify.interval", "must be greater than 0"));
    }
    // The PowerSync API token travels with these requests: TLS unless loopback.
    if let Some(p) = &v.powersync_api {
        check_url(&p.url, true).map_err(|m| at("verify.powersync_api.url", m))?;
    }
    if let Some(m) = &v.metrics {
        check_url(&m.url, true).map_err(|e| at("verify.metrics.url", e))?;
        for (key, name) in [
            ("verify.metrics.success", Some(&m.success)),
            ("verify.metrics.timestamp", m.timestamp.as_ref()),
            ("verify.metrics.count", m.count.as_ref()),
        ] {
            if let Some(n) = name {
                if n.is_empty()
                    || !n
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                {
                    return Err(at(key, format!("`{n}` is not a metric name")));
                }
            }
        }
    }
    Ok(())
}

fn gate(t: &Target) -> Result<(), Complaint> {
    let Some(g) = &t.gate else { return Ok(()) };
    // A bearer token may travel with the query: TLS unless loopback.
    check_url(&g.url, true).map_err(|m| at("gate.url", m))?;
    if g.query.trim().is_empty() {
        return Err(at("gate.query", "must not be empty"));
    }
    if g.interval < Duration::from_secs(1) {
        return Err(at("gate.interval", "must be at least 1s"));
    }
    if g.timeout.is_zero() {
        return Err(at("gate.timeout", "must be greater than 0"));
    }
    Ok(())
}

fn valid_target_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
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

/// A source's keys and values.
fn source(s: &Source) -> Result<(), Complaint> {
    source_keys_present(s)?;
    source_values(s)?;
    if let Some(r) = &s.require_signature {
        require_signature(s, r)?;
    }
    Ok(())
}

/// `source.require_signature`: at least one key file, each readable and well-formed (the
/// complaint names the file and the line), and a kind whose API gives the signed payload.
fn require_signature(s: &Source, r: &crate::config::RequireSignature) -> Result<(), Complaint> {
    if s.kind == SourceKind::Gitlab {
        return Err(at(
            "source.require_signature",
            "GitLab's API gives no signed commit payload to verify here; use `kind: git` with the project's clone URL",
        ));
    }
    if matches!(s.kind, SourceKind::Http | SourceKind::File) {
        return Err(at(
            "source.require_signature",
            "only commits carry signatures: use a `git` or forge source",
        ));
    }
    if r.allowed_signers.is_none() && r.gpg_keyring.is_none() {
        return Err(at(
            "source.require_signature",
            "set `allowed_signers`, `gpg_keyring`, or both",
        ));
    }
    if let Some(f) = &r.allowed_signers {
        crate::config::signers::check_file(f)
            .map_err(|m| at("source.require_signature.allowed_signers", m))?;
    }
    if let Some(f) = &r.gpg_keyring {
        match std::fs::metadata(f) {
            Ok(m) if m.len() > 0 => {}
            Ok(_) => {
                return Err(at(
                    "source.require_signature.gpg_keyring",
                    format!("{} is empty", f.display()),
                ))
            }
            Err(e) => {
                return Err(at(
                    "source.require_signature.gpg_keyring",
                    format!("{}: {e}", f.display()),
                ))
            }
        }
    }
    Ok(())
}

/// Each kind takes its own keys: required ones present, nothing it does not use.
fn source_keys_present(s: &Source) -> Result<(), Complaint> {
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
    Ok(())
}

/// The values of a source's keys.
fn source_values(s: &Source) -> Result<(), Complaint> {
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
