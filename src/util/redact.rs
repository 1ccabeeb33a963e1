//! Keeping credentials that operators put into URLs out of everything rulekeeper shows or
//! stores: logs at every level, errors, `state.json`, `status`, `/status`. Userinfo
//! (`user:password@`) and query parameters whose names look like credentials (`token`,
//! `access_token`, `private_token`, `key`, `sig`, ...) are replaced by `***`. Tokens belong in
//! `token_file`; `rulekeeper check` warns when a URL carries one.

/// Query parameter names (compared case-insensitively, `-` as `_`) whose values are secret.
const SECRET_PARAMS: &[&str] = &[
    "token",
    "access_token",
    "private_token",
    "auth_token",
    "api_token",
    "id_token",
    "refresh_token",
    "key",
    "api_key",
    "apikey",
    "secret",
    "client_secret",
    "password",
    "passwd",
    "pass",
    "pwd",
    "auth",
    "authorization",
    "sig",
    "signature",
    "x_amz_signature",
    "x_amz_credential",
    "x_amz_security_token",
    "credential",
    "session",
];

fn secret_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace('-', "_");
    SECRET_PARAMS.contains(&n.as_str()) || n.ends_with("_token") || n.ends_with("_key")
}

/// Whether `u` carries a credential (a password in the userinfo, or a secret-looking query
/// parameter). A bare user name (`ssh://git@host/...`) is not one.
pub fn has_credentials(u: &str) -> bool {
    match url::Url::parse(u) {
        Ok(p) => p.password().is_some() || p.query_pairs().any(|(k, _)| secret_param(&k)),
        Err(_) => false,
    }
}

/// `u` with its credentials replaced by `***`. Text that does not parse as a URL (an scp-like
/// git remote such as `git@host:owner/repo.git`) is returned as it is.
pub fn url(u: &str) -> String {
    let Ok(mut p) = url::Url::parse(u) else {
        return u.to_string();
    };
    if p.password().is_some() {
        let _ = p.set_password(Some("***"));
    }
    if p.query_pairs().any(|(k, _)| secret_param(&k)) {
        let pairs: Vec<(String, String)> = p
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret_param(&k) {
                    "***".to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        p.query_pairs_mut().clear().extend_pairs(pairs);
    }
    p.to_string()
}

/// `text` with every occurrence of `u` (as written, and as `url::Url` prints it) replaced by
/// its redacted form: for messages from libraries and programs that quote the URL.
pub fn in_text(text: &str, u: &str) -> String {
    let shown = url(u);
    let mut out = text.replace(u, &shown);
    if let Ok(p) = url::Url::parse(u) {
        out = out.replace(p.as_str(), &shown);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_and_secret_params_are_replaced() {
        let u =
            "https://bob:hunter2@example.com/r.yaml?ref=main&access_token=abc123&Private-Token=zz";
        let r = url(u);
        assert!(
            !r.contains("hunter2") && !r.contains("abc123") && !r.contains("zz"),
            "{r}"
        );
        assert!(r.contains("bob:***@") && r.contains("ref=main"), "{r}");
        assert!(has_credentials(u));
        assert!(!has_credentials("ssh://git@example.com/o/r.git"));
        assert_eq!(
            url("ssh://git@example.com/o/r.git"),
            "ssh://git@example.com/o/r.git"
        );
        assert_eq!(url("git@example.com:o/r.git"), "git@example.com:o/r.git");
        let msg = format!("error sending request for url ({u})");
        assert!(!in_text(&msg, u).contains("hunter2"));
        assert!(has_credentials("https://h/x?api_key=1"));
        assert!(has_credentials("https://h/x?X-Amz-Signature=1"));
        assert!(!has_credentials("https://h/x?ref=main&path=a"));
    }
}
