//! Deciding whether a candidate file may be installed: built-in checks (non-empty, UTF-8,
//! YAML, required top-level keys), then the operator's command, then PowerSync's own
//! validate API. The candidate is already on disk next to the live file, so the command
//! checks exactly the bytes that would be installed.

use std::path::Path;

use crate::config::{PowerSyncApi, Validate, Warnings};
use crate::model::reason::{bounded, cut, REASON_CHARS, REASON_LINES};
use crate::service::powersync;
use crate::util::exec;

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("the file is empty")]
    Empty,
    /// A file of a tree failed (its path first), or the tree itself is malformed.
    #[error("{0}")]
    Tree(String),
    #[error("the file is not UTF-8 (invalid byte at offset {0})")]
    NotUtf8(usize),
    #[error("YAML does not parse: {0}")]
    Yaml(String),
    #[error("the file holds {0} YAML documents; a rules file is exactly one")]
    Documents(usize),
    #[error("the top level is {0}, not a mapping of keys (a rules file is a mapping)")]
    NotMapping(&'static str),
    #[error("none of the required top-level keys is present (require_keys: {0})")]
    MissingKeys(String),
    #[error("validate.command {status}: {output}")]
    Command { status: String, output: String },
    #[error("validate.command: {0}")]
    CommandRun(String),
    #[error("PowerSync rejected the rules: {0}")]
    PowerSync(String),
    #[error("PowerSync validate API: {0}")]
    PowerSyncUnreachable(String),
}

/// The checks that need no process and no network: also what "usable" means for a live
/// file at boot when nothing else can be asked. Every rules file rulekeeper manages is one
/// YAML mapping, so an HTML page from a proxy, a bare string, a list or an empty document is
/// refused here, before anything is installed.
pub fn builtin(cfg: &Validate, content: &[u8]) -> Result<(), ValidateError> {
    // A tree (`tree: true`): the checks apply to each `*.yml` / `*.yaml` file in it, and the
    // refusal names the file.
    if crate::store::tree::Tree::is_encoding(content) {
        let all = crate::store::tree::Limits {
            max_files: usize::MAX,
            max_bytes: u64::MAX,
        };
        let tree = crate::store::tree::Tree::decode(content, all)
            .map_err(|e| ValidateError::Tree(e.to_string()))?;
        if tree.0.is_empty() {
            return Err(ValidateError::Empty);
        }
        for (entry, bytes) in &tree.0 {
            if entry.ends_with(".yml") || entry.ends_with(".yaml") {
                builtin(cfg, bytes).map_err(|e| ValidateError::Tree(format!("{entry}: {e}")))?;
            }
        }
        return Ok(());
    }
    let text = std::str::from_utf8(content).map_err(|e| ValidateError::NotUtf8(e.valid_up_to()))?;
    if text.trim().is_empty() {
        return Err(ValidateError::Empty);
    }
    if !cfg.yaml && cfg.require_keys.is_empty() {
        return Ok(());
    }
    let map = one_mapping(text)?;
    if cfg.require_keys.is_empty() {
        return Ok(());
    }
    let present = cfg
        .require_keys
        .iter()
        .any(|k| map.contains_key(serde_yaml::Value::String(k.clone())));
    if present {
        Ok(())
    } else {
        Err(ValidateError::MissingKeys(cfg.require_keys.join(", ")))
    }
}

/// Parses `text` as exactly one YAML document whose top level is a mapping.
fn one_mapping(text: &str) -> Result<serde_yaml::Mapping, ValidateError> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(text) {
        docs.push(
            serde_yaml::Value::deserialize(de).map_err(|e| ValidateError::Yaml(e.to_string()))?,
        );
    }
    if docs.len() != 1 {
        return Err(ValidateError::Documents(docs.len()));
    }
    match docs.pop() {
        Some(serde_yaml::Value::Mapping(m)) => Ok(m),
        Some(other) => Err(ValidateError::NotMapping(kind(&other))),
        None => Err(ValidateError::Documents(0)),
    }
}

fn kind(v: &serde_yaml::Value) -> &'static str {
    use serde_yaml::Value;
    match v {
        Value::Null => "empty (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string (HTML or plain text?)",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// "Usable" without running anything: the file exists and passes the built-in checks.
/// Where content was validated when it was applied (an unchanged poll), where no process may
/// run (a broken state file), and for `.prev` before it goes back in.
pub fn usable_builtin(cfg: &Validate, file: Option<&[u8]>) -> bool {
    file.is_some_and(|b| builtin(cfg, b).is_ok())
}

/// "Usable" in full for a live file left as it is: the built-in checks and the validate
/// command (on the live path itself). PowerSync's API is not asked: it judges candidates
/// against the running service, and the live file is what that service runs.
pub async fn usable_full(t: &crate::config::Target, live: Option<&[u8]>) -> bool {
    let Some(bytes) = live else { return false };
    if let Err(e) = builtin(&t.validate, bytes) {
        tracing::warn!(target_name = %t.name, error = %e, "live file is not usable");
        return false;
    }
    if let Some(argv) = &t.validate.command {
        if let Err(e) = command(argv, t.validate.timeout, &t.path, &t.path).await {
            tracing::warn!(target_name = %t.name, error = %e, "live file is not usable");
            return false;
        }
    }
    true
}

/// [`usable_builtin`] read from disk: where no cycle ran (start-up deferral, CLI errors).
pub fn live_file_usable(t: &crate::config::Target) -> bool {
    let live = crate::util::regular_file::read(&t.path, false, t.max_bytes).ok();
    usable_builtin(&t.validate, live.as_deref())
}

/// Every validator in order. `file` is the candidate's path (for `{file}`); `shown` is the
/// name messages give it: the target's live path, since the candidate is a temp file whose
/// name means nothing to whoever reads the reason.
pub async fn full(
    cfg: &Validate,
    file: &Path,
    shown: &Path,
    content: &[u8],
) -> Result<(), ValidateError> {
    builtin(cfg, content)?;
    if let Some(argv) = &cfg.command {
        command(argv, cfg.timeout, file, shown).await?;
    }
    if let Some(api) = &cfg.powersync_api {
        powersync_api(api, content, shown).await?;
    }
    Ok(())
}

/// What a failed validator said that matters: its lines naming an error (`fatal`, `error`),
/// first ones first, from stdout then stderr, with the candidate's temp name replaced by
/// `shown`; or, when no line names one, the tail of what it said.
fn findings(out: &exec::Output, file: &Path, shown: &Path) -> String {
    let rename = |text: &str| -> String {
        let mut t = text.replace(&file.display().to_string(), &shown.display().to_string());
        if let (Some(tmp), Some(live)) = (file.file_name(), shown.file_name()) {
            t = t.replace(&*tmp.to_string_lossy(), &live.to_string_lossy());
        }
        t
    };
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let errors: Vec<String> = said
        .lines()
        .filter(|l| names_an_error(l))
        .map(rename)
        .collect();
    if errors.is_empty() {
        cut(&rename(&out.summary()), REASON_CHARS)
    } else {
        bounded(&errors, REASON_LINES)
    }
}

fn names_an_error(line: &str) -> bool {
    line.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| w.eq_ignore_ascii_case("fatal") || w.eq_ignore_ascii_case("error"))
}

/// Runs the operator's validator: argv with `{file}` replaced, no shell. `shown` names the
/// file in the reason (see [`full`]).
pub async fn command(
    argv: &[String],
    timeout: std::time::Duration,
    file: &Path,
    shown: &Path,
) -> Result<(), ValidateError> {
    let f = file.display().to_string();
    let argv: Vec<String> = argv.iter().map(|a| a.replace("{file}", &f)).collect();
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
    let out = exec::run(&argv, timeout, dir, &[])
        .await
        .map_err(|e| ValidateError::CommandRun(e.to_string()))?;
    if out.success {
        let said = out.summary();
        if !said.is_empty() {
            tracing::info!(output = %said, "validate.command passed");
        }
        Ok(())
    } else {
        Err(ValidateError::Command {
            status: out.status_text(),
            output: findings(&out, file, shown),
        })
    }
}

/// Asks the running PowerSync service to validate the candidate. Unreachable → skipped with
/// a warning, unless `required`.
pub async fn powersync_api(
    api: &PowerSyncApi,
    content: &[u8],
    shown: &Path,
) -> Result<(), ValidateError> {
    let yaml = String::from_utf8_lossy(content);
    let name = shown.display().to_string();
    match powersync::validate(api, &yaml).await {
        Ok(problems) => {
            let fatal: Vec<&powersync::Problem> = problems.iter().filter(|p| p.fatal).collect();
            let warnings: Vec<&powersync::Problem> = problems.iter().filter(|p| !p.fatal).collect();
            for w in &warnings {
                tracing::warn!(warning = %w.located(&name, &yaml), "PowerSync validation warning");
            }
            if !fatal.is_empty() {
                return Err(ValidateError::PowerSync(powersync::summarize(
                    &fatal,
                    &name,
                    &yaml,
                    REASON_LINES,
                )));
            }
            if api.warnings == Warnings::Reject && !warnings.is_empty() {
                return Err(ValidateError::PowerSync(format!(
                    "warnings (warnings: reject): {}",
                    powersync::summarize(&warnings, &name, &yaml, REASON_LINES)
                )));
            }
            Ok(())
        }
        Err(powersync::ApiError::Unreachable(msg) | powersync::ApiError::Lost(msg))
            if !api.required =>
        {
            tracing::warn!(error = %msg, "PowerSync validate API unreachable; skipped (set required: true to reject instead)");
            Ok(())
        }
        Err(e) => Err(ValidateError::PowerSyncUnreachable(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(keys: &[&str]) -> Validate {
        Validate {
            require_keys: keys.iter().map(|s| s.to_string()).collect(),
            ..Validate::default()
        }
    }

    #[test]
    fn builtins() {
        assert!(matches!(
            builtin(&cfg(&[]), b"  \n"),
            Err(ValidateError::Empty)
        ));
        assert!(matches!(
            builtin(&cfg(&[]), b"a: \xff"),
            Err(ValidateError::NotUtf8(3))
        ));
        assert!(matches!(
            builtin(&cfg(&[]), b"a: [1,"),
            Err(ValidateError::Yaml(_))
        ));
        assert!(matches!(
            builtin(&cfg(&["bucket_definitions", "streams"]), b"other: 1"),
            Err(ValidateError::MissingKeys(_))
        ));
        assert!(builtin(&cfg(&["bucket_definitions", "streams"]), b"streams: {}").is_ok());
        assert!(matches!(
            builtin(&cfg(&["x"]), b"- 1"),
            Err(ValidateError::NotMapping(_))
        ));
    }

    #[test]
    fn one_mapping_document_even_without_required_keys() {
        let none = cfg(&[]);
        for (text, want) in [
            ("<html><body>Sign in</body></html>\n", "a string"),
            ("just words\n", "a string"),
            ("- a\n- b\n", "a list"),
            ("42\n", "a number"),
            ("# only a comment\n", "empty"),
            ("---\n", "empty"),
        ] {
            let e = builtin(&none, text.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let e = builtin(&none, b"a: 1\n---\nb: 2\n").unwrap_err();
        assert!(matches!(e, ValidateError::Documents(2)), "{e}");
        assert!(builtin(&none, b"a: 1\n").is_ok());
        assert!(builtin(&none, b"---\na: 1\n").is_ok());
        // yaml: false and no keys: only non-empty UTF-8
        let raw = Validate {
            yaml: false,
            ..Validate::default()
        };
        assert!(builtin(&raw, b"<html></html>").is_ok());
    }

    #[test]
    fn findings_name_the_live_path_and_keep_the_first_errors() {
        let tmp = Path::new("/srv/ps/.sync-rules.yaml.rk-Dlrt46");
        let live = Path::new("/srv/ps/sync-rules.yaml");
        let out = exec::Output {
            success: false,
            code: Some(1),
            stdout: b"/srv/ps/.sync-rules.yaml.rk-Dlrt46:4:34: fatal: Function 'nosuchfunc' is not defined\n\
                      /srv/ps/.sync-rules.yaml.rk-Dlrt46:6:1: warning: unused\n"
                .to_vec(),
            stderr: b".sync-rules.yaml.rk-Dlrt46: 1 fatal error(s), 1 warning(s)\n".to_vec(),
        };
        assert_eq!(
            findings(&out, tmp, live),
            "/srv/ps/sync-rules.yaml:4:34: fatal: Function 'nosuchfunc' is not defined; \
             sync-rules.yaml: 1 fatal error(s), 1 warning(s)"
        );
        // nothing names an error: the tail of what it said
        let quiet = exec::Output {
            success: false,
            code: Some(1),
            stdout: Vec::new(),
            stderr: b"rules look wrong in /srv/ps/.sync-rules.yaml.rk-Dlrt46\n".to_vec(),
        };
        assert_eq!(
            findings(&quiet, tmp, live),
            "rules look wrong in /srv/ps/sync-rules.yaml"
        );
    }
}
