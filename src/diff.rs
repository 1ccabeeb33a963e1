//! `rulekeeper diff`: what the next apply would change, before anything is applied. A unified
//! diff of the live file against upstream (or a revision, or a file), and the validators'
//! verdict on the new side. It installs nothing and takes no lock: the live file is replaced
//! only by rename, so a read sees a whole old or a whole new file.

use std::io::Write;
use std::path::Path;

use crate::config::Target;
use crate::exit::Exit;
use crate::source::{Fetched, Source};
use crate::store::state::Store;

/// What the new side is.
pub enum Against<'a> {
    /// What upstream serves now.
    Upstream,
    /// Upstream at this revision.
    Revision(&'a str),
    /// A local file.
    File(&'a Path),
}

/// Prints the diff and the verdict; returns the exit status: 0 no change, 1 a change (as
/// `git diff --exit-code`), 2 usage or config, 5 when upstream or a file cannot be read.
pub async fn run(state_dir: &Path, t: &Target, against: Against<'_>) -> Exit {
    let (new, label) = match new_side(state_dir, t, &against).await {
        Ok(n) => n,
        Err((exit, why)) => {
            eprintln!("rulekeeper: target `{}`: {why}", t.name);
            return exit;
        }
    };
    let live = match crate::store::install::read_live(&t.path, &t.file) {
        Ok(l) => l.unwrap_or_default(),
        Err(e) => {
            eprintln!("rulekeeper: target `{}`: {e}", t.name);
            return Exit::Io;
        }
    };
    let mut out = std::io::stdout().lock();
    let changed = live != new;
    if changed && t.tree {
        let _ = write!(out, "{}", tree_diff(t, &live, &new, &label));
    } else if changed {
        let old_text = String::from_utf8_lossy(&live);
        let new_text = String::from_utf8_lossy(&new);
        let diff = similar::TextDiff::from_lines(old_text.as_ref(), new_text.as_ref());
        let _ = write!(
            out,
            "{}",
            diff.unified_diff()
                .context_radius(3)
                .header(&format!("live {}", t.path.display()), &label)
        );
    } else {
        let _ = writeln!(out, "no change: {} is {label}", t.path.display());
    }
    let verdict = validate(t, &new).await;
    let _ = writeln!(out, "validators on {label}: {verdict}");
    if changed {
        Exit::Rejected
    } else {
        Exit::Ok
    }
}

async fn new_side(
    state_dir: &Path,
    t: &Target,
    against: &Against<'_>,
) -> Result<(Vec<u8>, String), (Exit, String)> {
    if let Against::File(p) = against {
        if t.tree && p.is_dir() {
            let limits = crate::store::tree::Limits {
                max_files: t.max_files,
                max_bytes: t.max_bytes,
            };
            return crate::store::tree::Tree::from_dir(p, limits)
                .map(|tree| (tree.encode(), p.display().to_string()))
                .map_err(|e| (Exit::Io, format!("{}: {e}", p.display())));
        }
        return std::fs::read(p)
            .map(|b| (b, p.display().to_string()))
            .map_err(|e| (Exit::Io, format!("cannot read {}: {e}", p.display())));
    }
    let store = Store::new(state_dir, &t.name);
    let source = Source::new(t, store.git_cache()).map_err(|e| (Exit::Usage, e.to_string()))?;
    match against {
        Against::Revision(rev) => source
            .fetch_revision(rev)
            .await
            .map(|b| (b, format!("upstream at {rev}")))
            .map_err(|e| (fetch_exit(&e), e.message)),
        _ => match source.fetch(None).await {
            Ok(Fetched::Content { body, revision, .. }) => {
                let label = match revision {
                    Some(r) => format!("upstream at {r}"),
                    None => "upstream".to_string(),
                };
                Ok((body, label))
            }
            Ok(Fetched::NotModified) => Err((
                Exit::Io,
                "upstream answered 304 to an unconditional request".into(),
            )),
            Err(e) => Err((fetch_exit(&e), e.message)),
        },
    }
}

/// A tree target: one unified diff per file that differs (added and removed files against
/// nothing), in path order.
fn tree_diff(t: &Target, live: &[u8], new: &[u8], label: &str) -> String {
    use crate::store::tree::{Limits, Tree};
    let all = Limits {
        max_files: usize::MAX,
        max_bytes: u64::MAX,
    };
    let decode = |b: &[u8]| {
        if b.is_empty() {
            Tree::default()
        } else {
            Tree::decode(b, all).unwrap_or_default()
        }
    };
    let (old, new) = (decode(live), decode(new));
    let mut paths: Vec<&String> = old.0.keys().chain(new.0.keys()).collect();
    paths.sort();
    paths.dedup();
    let mut out = String::new();
    for p in paths {
        let (a, b) = (old.0.get(p), new.0.get(p));
        if a == b {
            continue;
        }
        let a_text = String::from_utf8_lossy(a.map(Vec::as_slice).unwrap_or_default());
        let b_text = String::from_utf8_lossy(b.map(Vec::as_slice).unwrap_or_default());
        let d = similar::TextDiff::from_lines(a_text.as_ref(), b_text.as_ref());
        let old_name = match a {
            Some(_) => format!("live {}/{p}", t.path.display()),
            None => "/dev/null".to_string(),
        };
        let new_name = match b {
            Some(_) => format!("{label}/{p}"),
            None => "/dev/null".to_string(),
        };
        out.push_str(&format!(
            "{}",
            d.unified_diff()
                .context_radius(3)
                .header(&old_name, &new_name)
        ));
    }
    out
}

fn fetch_exit(e: &crate::source::FetchError) -> Exit {
    match e.reason {
        crate::model::labels::FetchReason::Config => Exit::Usage,
        _ => Exit::Io,
    }
}

/// The validators on the new side, run on a copy in a private directory (never beside the
/// live file: a diff leaves no trace there).
async fn validate(t: &Target, bytes: &[u8]) -> String {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return format!("not run (cannot make a temp dir: {e})"),
    };
    let name = t
        .path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let copy = dir.path().join(name);
    if let Err(e) = std::fs::write(&copy, bytes) {
        return format!("not run (cannot write {}: {e})", copy.display());
    }
    match crate::service::validate::full(&t.validate, &copy, &t.path, bytes).await {
        Ok(()) => "valid".into(),
        Err(e) => format!("invalid: {e}"),
    }
}
