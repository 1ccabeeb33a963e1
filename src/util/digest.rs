//! Content hashes as rulekeeper names them: the hex sha256 that identifies a rules file
//! everywhere (state, metrics, journal, quarantine), and its 12-character short form for
//! messages. A leaf.

/// Hex sha256 of some bytes.
pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// The first 12 characters of a hash or id, for messages (the whole value when shorter).
pub fn short(s: &str) -> &str {
    s.get(..12).unwrap_or(s)
}
