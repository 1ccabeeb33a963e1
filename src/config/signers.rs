//! git's allowed-signers file (`gpg.ssh.allowedSignersFile`, ssh-keygen(1) "ALLOWED SIGNERS"),
//! read well enough to refuse a broken one at `check` with its file and line: each line is
//! `principals [options] keytype base64-key [comment]`; `#` comments and blank lines are
//! skipped. `ssh-keygen -Y verify` does the verifying, and honours `valid-after`,
//! `valid-before` and `namespaces`.

use std::path::Path;

/// The file is readable and every line has principals, a key type and a key.
pub fn check_file(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut keys = 0;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        check_line(line).map_err(|why| format!("{}:{}: {why}", path.display(), i + 1))?;
        keys += 1;
    }
    if keys == 0 {
        return Err(format!("{}: no allowed signer in it", path.display()));
    }
    Ok(())
}

fn check_line(line: &str) -> Result<(), String> {
    let mut fields = split(line).into_iter();
    let principals = fields.next().ok_or("no principals")?;
    if principals.is_empty() {
        return Err("no principals".into());
    }
    let mut next = fields.next().ok_or("no key type")?;
    // Options (`valid-after=...`, `namespaces="git"`, `cert-authority`) come before the key.
    if !is_key_type(&next) {
        next = fields.next().ok_or("no key type after the options")?;
    }
    if !is_key_type(&next) {
        return Err(format!("`{next}` is not an SSH key type"));
    }
    let key = fields.next().ok_or("no key")?;
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(key.as_bytes())
        .map_err(|_| "the key is not base64".to_string())?;
    Ok(())
}

fn is_key_type(s: &str) -> bool {
    s.starts_with("ssh-") || s.starts_with("ecdsa-") || s.starts_with("sk-")
}

/// Fields split on blanks, double quotes keeping an option's value whole.
fn split(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_with_and_without_options() {
        let key = "AAAAC3NzaC1lZDI1NTE5AAAAIH0x";
        assert!(check_line(&format!("a@example.com ssh-ed25519 {key}")).is_ok());
        assert!(check_line(&format!("a@example.com,b@example.com valid-before=\"20250101\",namespaces=\"git\" ssh-ed25519 {key} c")).is_ok());
        assert!(check_line("a@example.com nonsense").is_err());
        assert!(check_line("a@example.com ssh-ed25519 !!!").is_err());
    }
}
