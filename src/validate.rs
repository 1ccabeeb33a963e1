//! Deciding whether a candidate file may be installed: built-in checks (non-empty, UTF-8,
//! YAML, required top-level keys), then the operator's command, then PowerSync's own
//! validate API. The candidate is already on disk next to the live file, so the command
//! checks exactly the bytes that would be installed.

use std::path::Path;

use crate::config::{PowerSyncApi, Validate, Warnings};
use crate::exec;
use crate::powersync;

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("the file is empty")]
    Empty,
    #[error("the file is not UTF-8 (invalid byte at offset {0})")]
    NotUtf8(usize),
    #[error("YAML does not parse: {0}")]
    Yaml(String),
    #[error("the top level is not a mapping, so required keys cannot be present")]
    NotMapping,
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
/// file at boot when nothing else can be asked.
pub fn builtin(cfg: &Validate, content: &[u8]) -> Result<(), ValidateError> {
    let text = std::str::from_utf8(content).map_err(|e| ValidateError::NotUtf8(e.valid_up_to()))?;
    if text.trim().is_empty() {
        return Err(ValidateError::Empty);
    }
    if !cfg.yaml && cfg.require_keys.is_empty() {
        return Ok(());
    }
    let doc: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| ValidateError::Yaml(e.to_string()))?;
    if cfg.require_keys.is_empty() {
        return Ok(());
    }
    let map = doc.as_mapping().ok_or(ValidateError::NotMapping)?;
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

/// Whether a target's live file exists and passes the built-in checks: the cheap test
/// used where no cycle ran (start-up deferral, CLI errors).
pub fn live_usable(t: &crate::config::Target) -> bool {
    std::fs::read(&t.path)
        .map(|b| builtin(&t.validate, &b).is_ok())
        .unwrap_or(false)
}

/// Every validator in order. `file` is the candidate's path (for `{file}`).
pub async fn full(cfg: &Validate, file: &Path, content: &[u8]) -> Result<(), ValidateError> {
    builtin(cfg, content)?;
    if let Some(argv) = &cfg.command {
        command(argv, cfg.timeout, file).await?;
    }
    if let Some(api) = &cfg.powersync_api {
        powersync_api(api, content).await?;
    }
    Ok(())
}

/// Runs the operator's validator: argv with `{file}` replaced, no shell.
pub async fn command(
    argv: &[String],
    timeout: std::time::Duration,
    file: &Path,
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
            output: out.summary(),
        })
    }
}

/// Asks the running PowerSync service to validate the candidate. Unreachable → skipped with
/// a warning, unless `required`.
pub async fn powersync_api(api: &PowerSyncApi, content: &[u8]) -> Result<(), ValidateError> {
    let yaml = String::from_utf8_lossy(content);
    match powersync::validate(api, &yaml).await {
        Ok(problems) => {
            let fatal: Vec<&powersync::Problem> = problems.iter().filter(|p| p.fatal).collect();
            let warnings: Vec<&powersync::Problem> = problems.iter().filter(|p| !p.fatal).collect();
            for w in &warnings {
                tracing::warn!(message = %w.message, "PowerSync validation warning");
            }
            if !fatal.is_empty() {
                return Err(ValidateError::PowerSync(powersync::join(&fatal)));
            }
            if api.warnings == Warnings::Reject && !warnings.is_empty() {
                return Err(ValidateError::PowerSync(format!(
                    "warnings (warnings: reject): {}",
                    powersync::join(&warnings)
                )));
            }
            Ok(())
        }
        Err(powersync::ApiError::Unreachable(msg)) if !api.required => {
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
            Err(ValidateError::NotMapping)
        ));
    }
}
