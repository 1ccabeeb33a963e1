//! Looking at a loaded config against the host before running it: what works but is careless
//! (a credential written into a URL, a secret file others can read) is a warning at start-up
//! and in `rulekeeper check`; what cannot work (a live file that is a FIFO or a symbolic
//! link) is an error in `check`, and a per-target error when a cycle meets it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::{Config, SourceKind, Target};

fn place(cfg: &Config, t: &Target, key: &str) -> String {
    format!(
        "{}: target `{}`: key `targets.{}.{key}`",
        cfg.file.display(),
        t.name,
        t.name
    )
}

/// The URLs a target is configured with, by key.
fn urls(t: &Target) -> Vec<(&'static str, &str)> {
    let mut out = Vec::new();
    if let Some(u) = &t.source.url {
        out.push(("source.url", u.as_str()));
    }
    if let Some(u) = &t.source.base_url {
        out.push(("source.base_url", u.as_str()));
    }
    if let Some(u) = &t.verify.http {
        out.push(("verify.http", u.as_str()));
    }
    if let Some(p) = &t.validate.powersync_api {
        out.push(("validate.powersync_api.url", p.url.as_str()));
    }
    if let Some(p) = &t.verify.powersync_api {
        out.push(("verify.powersync_api.url", p.url.as_str()));
    }
    if let Some(g) = &t.gate {
        out.push(("gate.url", g.url.as_str()));
    }
    out
}

/// The secret files a target reads, by key.
pub fn secret_files(t: &Target) -> Vec<(&'static str, &Path)> {
    let mut out = Vec::new();
    if let Some(p) = &t.source.token_file {
        out.push(("source.token_file", p.as_path()));
    }
    if let Some(w) = &t.webhook {
        out.push(("webhook.secret_file", w.secret_file.as_path()));
    }
    if let Some(p) = &t.validate.powersync_api {
        out.push(("validate.powersync_api.token_file", p.token_file.as_path()));
    }
    if let Some(p) = &t.verify.powersync_api {
        out.push(("verify.powersync_api.token_file", p.token_file.as_path()));
    }
    if let Some(p) = t.gate.as_ref().and_then(|g| g.token_file.as_ref()) {
        out.push(("gate.token_file", p.as_path()));
    }
    out
}

/// Careless but working: credentials in URLs, secret files readable by group or others.
pub fn warnings(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for t in cfg.targets.values() {
        for (key, u) in urls(t) {
            if crate::util::redact::has_credentials(u) {
                out.push(format!(
                    "{}: the URL carries a credential ({}); it is redacted from logs, errors and status, but put the token in `token_file` instead",
                    place(cfg, t, key),
                    crate::util::redact::url(u)
                ));
            }
        }
        let dir = crate::store::install::live_dir(&t.path);
        if !dir.is_dir() {
            let how = match dir.parent().map(Path::is_dir) {
                Some(true) | None => "the first apply creates it",
                Some(false) if t.create_dirs => "the first apply creates it and its parents (`create_dirs: true`)",
                Some(false) => "nor does its parent, so applies fail until it is created (or `create_dirs: true` is set)",
            };
            out.push(format!(
                "{}: directory {} does not exist; {how}. Is the path right?",
                place(cfg, t, "path"),
                dir.display()
            ));
        }
        for (key, f) in secret_files(t) {
            if let Ok(m) = std::fs::metadata(f) {
                let mode = m.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    out.push(format!(
                        "{}: secret file {} is readable by group or others (mode {mode:04o}); `chmod 600` it, or hand it over with LoadCredential=",
                        place(cfg, t, key),
                        f.display()
                    ));
                }
            }
        }
    }
    out
}

/// What cannot work: a live file (or `.prev`) that exists but is not a regular file or is a
/// symbolic link; a `file` source that is not a regular file.
/// A tree target's live path is a directory, or rulekeeper's link to one; a `file` source is a
/// directory.
fn tree_problems(cfg: &Config, t: &crate::config::Target) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(m) = std::fs::metadata(&t.path) {
        if !m.is_dir() {
            out.push(format!(
                "{}: {} is not a directory (`tree: true`)",
                place(cfg, t, "path"),
                t.path.display()
            ));
        }
    }
    if t.source.kind == SourceKind::File {
        if let Some(p) = &t.source.path {
            if std::fs::metadata(p).is_ok_and(|m| !m.is_dir()) {
                out.push(format!(
                    "{}: {p} is not a directory (`tree: true`)",
                    place(cfg, t, "source.path")
                ));
            }
        }
    }
    out
}

pub fn file_problems(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for t in cfg.targets.values() {
        if t.tree {
            out.extend(tree_problems(cfg, t));
            continue;
        }
        let prev = crate::store::install::prev_path(&t.path);
        let mut paths = vec![("path", t.path.clone(), false), ("path", prev, false)];
        if t.source.kind == SourceKind::File {
            if let Some(p) = &t.source.path {
                paths.push(("source.path", PathBuf::from(p), true));
            }
        }
        for (key, path, follow) in paths {
            match crate::util::regular_file::check(&path, follow) {
                Err(e) if !e.is_not_found() => {
                    out.push(format!("{}: {} {e}", place(cfg, t, key), path.display()))
                }
                _ => {}
            }
        }
    }
    out
}
