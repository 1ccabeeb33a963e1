//! Secrets read from files (forge tokens, webhook secrets, PowerSync's API token, a gate's
//! token): [`Secret`] never shows its value in `Debug`, and [`read`]'s error names the file,
//! never the content. Each caller says what the secret is for in its own error.

use std::fmt;
use std::path::{Path, PathBuf};

/// A secret read from a file. Its Debug never shows the value.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Why a secret file gave no secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secret file {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("secret file {} is empty", path.display())]
    Empty { path: PathBuf },
}

/// Reads a secret file, its surrounding whitespace (a trailing newline) trimmed.
pub fn read(path: &Path) -> Result<Secret, SecretError> {
    let raw = std::fs::read_to_string(path).map_err(|source| SecretError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let s = raw.trim();
    if s.is_empty() {
        return Err(SecretError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(Secret(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimmed_never_shown_and_empty_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        std::fs::write(&p, "hunter2\n").unwrap();
        let s = read(&p).unwrap();
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        std::fs::write(&p, " \n").unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(
            e.contains("is empty") && e.contains(&p.display().to_string()),
            "{e}"
        );
        let e = read(&d.path().join("none")).unwrap_err().to_string();
        assert!(e.starts_with("cannot read secret file"), "{e}");
    }
}
