//! From text to a checked `Config`: reading the file, refusing a key given twice (serde_yaml
//! would let a second target of one name replace the first), deserializing with the key path
//! of any error, then `check`.

use std::path::Path;

use super::{check, Config, ConfigError};

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
    duplicate_keys(text, file)?;
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
    check::config(&mut cfg)?;
    Ok(cfg)
}

/// Refuses a key given twice in one mapping (a second target `one:` would otherwise replace
/// the first without a word), naming the line and column of the second. serde_yaml finds the
/// duplicate but places it at the start of its mapping; the key itself is found from there.
fn duplicate_keys(text: &str, file: &Path) -> Result<(), ConfigError> {
    let Err(e) = serde_yaml::from_str::<serde_yaml::Value>(text) else {
        return Ok(());
    };
    let msg = e.to_string();
    let Some(rest) = msg.split("duplicate entry with key ").nth(1) else {
        // Any other problem is the typed parse's to report, with its key path.
        return Ok(());
    };
    let key = rest
        .split(" at line ")
        .next()
        .unwrap_or(rest)
        .trim_matches('"')
        .to_string();
    let (line, col) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((1, 1));
    let at = second_key(text, &key, line, col)
        .map(|(l, c)| format!("line {l} column {c}"))
        .unwrap_or_else(|| format!("the mapping at line {line} column {col}"));
    let parent = parent_key(text, line, col);
    let (what, path) = match parent.as_deref() {
        None => ("top-level key", key.clone()),
        Some("targets") => ("target name", format!("targets.{key}")),
        Some(p) => ("key", format!("{p}.{key}")),
    };
    Err(ConfigError {
        file: file.to_path_buf(),
        target: None,
        key: path,
        message: format!("duplicate {what} `{key}` at {at}: each is given once"),
    })
}

/// The key whose value is the mapping at (`line`, `col`): the nearest line above it that is
/// indented less. None for the top level.
fn parent_key(text: &str, line: usize, col: usize) -> Option<String> {
    if col <= 1 {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[..line.saturating_sub(1).min(lines.len())]
        .iter()
        .rev()
        .find(|l| {
            let t = l.trim_start();
            !t.is_empty() && !t.starts_with('#') && l.len() - t.len() < col - 1
        })
        .and_then(|l| l.trim().split(':').next())
        .map(|k| {
            k.trim_matches(|c| c == '"' || c == '\'' || c == '-' || c == ' ')
                .to_string()
        })
}

/// The line and column of the second block-style `key:` at the indentation of the mapping
/// that starts at (`line`, `col`).
fn second_key(text: &str, key: &str, line: usize, col: usize) -> Option<(usize, usize)> {
    let indent = col.saturating_sub(1);
    let forms = [
        format!("{key}:"),
        format!("\"{key}\":"),
        format!("'{key}':"),
    ];
    text.lines()
        .enumerate()
        .skip(line.saturating_sub(1))
        .filter(|(_, l)| {
            let body = &l[l.len() - l.trim_start().len()..];
            l.len() - body.len() == indent && forms.iter().any(|f| body.starts_with(f.as_str()))
        })
        .nth(1)
        .map(|(i, _)| (i + 1, col))
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
