//! The two names a version of a rules file goes by: its content's [`Sha256`] (what state,
//! metrics, the journal, quarantine and history identify it by) and the [`Revision`] upstream
//! gave it (a commit id, `push`, `rollback`). Two types, so one is never passed for the other;
//! both serialize as the plain strings they always were.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! name {
    ($(#[$doc:meta])* $t:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $t(String);

        impl $t {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The first 12 characters, for messages.
            pub fn short(&self) -> &str {
                crate::util::digest::short(&self.0)
            }
        }

        impl From<String> for $t {
            fn from(s: String) -> $t {
                $t(s)
            }
        }

        impl From<&$t> for $t {
            fn from(s: &$t) -> $t {
                s.clone()
            }
        }

        impl From<&str> for $t {
            fn from(s: &str) -> $t {
                $t(s.to_string())
            }
        }

        impl std::ops::Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<&$t> for $t {
            fn eq(&self, other: &&$t) -> bool {
                self.0 == other.0
            }
        }

        impl PartialEq<String> for $t {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }
    };
}

name! {
    /// The hex sha256 of a version's bytes.
    Sha256
}

name! {
    /// Where upstream says a version came from: a commit id, or `push` / `rollback` for an
    /// operator's content.
    Revision
}

impl Sha256 {
    /// The sha256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Sha256 {
        Sha256(crate::util::digest::sha256_hex(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_strings_on_the_wire_and_short_in_messages() {
        let s = Sha256::of(b"x");
        assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        assert_eq!(s.short().len(), 12);
        let r: Revision = serde_json::from_str("\"0123abcd\"").unwrap();
        assert_eq!(r, "0123abcd");
    }
}
