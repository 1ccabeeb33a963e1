//! Where live files are: resolving paths through links and `..`, and refusing targets whose
//! files would overwrite each other's (or rulekeeper's own state).

use std::collections::HashMap;
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
    // Looked up, not compared pairwise: `check` stays linear in the number of targets.
    let mut lives: HashMap<&Path, Vec<&str>> = HashMap::new();
    let mut prevs: HashMap<&Path, Vec<&str>> = HashMap::new();
    for (n, live, prev) in &files {
        lives.entry(live.as_path()).or_default().push(n);
        prevs.entry(prev.as_path()).or_default().push(n);
    }
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
        if let Some(c) = clash(a, live_a, prev_a, &lives, &prevs) {
            return Err(err(
                a,
                "path",
                format!(
                    "{} is {c} (paths compared after resolving links and `..`)",
                    live_a.display()
                ),
            ));
        }
        let t = &cfg.targets[*a];
        if t.source.kind == SourceKind::File {
            let src = resolve(Path::new(t.source.path.as_deref().unwrap_or_default()));
            if let Some(b) = lives
                .get(src.as_path())
                .or_else(|| prevs.get(src.as_path()))
                .and_then(|names| names.first())
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

/// What target `a`'s live file clashes with among the others, if anything: another's live
/// file, another's `.prev` (or its `.prev` is another's live file), or a temp name written
/// beside another's live file (`.<name>.rk-*`).
fn clash(
    a: &str,
    live_a: &Path,
    prev_a: &Path,
    lives: &HashMap<&Path, Vec<&str>>,
    prevs: &HashMap<&Path, Vec<&str>>,
) -> Option<String> {
    let other = |m: &HashMap<&Path, Vec<&str>>, p: &Path| -> Option<String> {
        m.get(p)?.iter().find(|b| **b != a).map(|b| b.to_string())
    };
    if let Some(b) = other(lives, live_a) {
        return Some(format!("the same live file as target `{b}`"));
    }
    if let Some(b) = other(prevs, live_a) {
        return Some(format!("target `{b}`'s `.prev` file"));
    }
    if let Some(b) = other(lives, prev_a) {
        return Some(format!("its `.prev` is target `{b}`'s live file"));
    }
    // `.<name>.rk-XXXX`: every `<name>` the file name could be a temp name of.
    let name = live_a.file_name()?.to_string_lossy();
    let rest = name.strip_prefix('.')?;
    let dir = live_a.parent()?;
    rest.match_indices(".rk-").find_map(|(i, _)| {
        other(lives, &dir.join(&rest[..i])).map(|b| format!("named like target `{b}`'s temp files"))
    })
}
