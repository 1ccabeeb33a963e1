//! Where live files are: resolving paths through links and `..`, and refusing targets whose
//! files would overwrite each other's (or rulekeeper's own state).

use std::path::{Path, PathBuf};

use super::{Config, ConfigError, SourceKind};

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
pub(super) fn check_overlaps(cfg: &Config) -> Result<(), ConfigError> {
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
