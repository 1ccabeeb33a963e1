//! Every value rulekeeper puts in a metric label, a journal field or `state.json`, as a type:
//! the outcome of a cycle, the timed phases, why a fetch failed, what a webhook request got.
//! These are the words operators type into alerts and `journalctl` filters
//! (docs/contract.md "Metrics"), so each set is one enum with an `ALL` list that the metrics
//! pre-create series from, and one `as_str` that spells it. A leaf: imports nothing.

use serde::{Deserialize, Serialize};

/// Declares a label enum: variants with their spelling, `ALL`, `as_str`, and `Display`.
macro_rules! label_set {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident => $s:literal,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $v,)+
        }

        impl $name {
            /// Every value, in the order metrics create them.
            pub const ALL: &'static [$name] = &[$($name::$v,)+];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $s,)+
                }
            }

            /// The value spelled `s`, if there is one.
            pub fn parse(s: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

label_set! {
    /// What a cycle ended with: `rulekeeper_cycles_total{outcome}`, journald `OUTCOME=`,
    /// `state.json` `last_outcome`.
    Outcome {
        Unchanged => "unchanged",
        Applied => "applied",
        Rejected => "rejected",
        Quarantined => "quarantined",
        RolledBack => "rolled_back",
        RollbackFailed => "rollback_failed",
        FetchFailed => "fetch_failed",
        Held => "held",
        /// New content waits on its gate (fleets: staged rollout).
        Gated => "gated",
        /// The target's state file cannot be read or parsed; the target is left alone.
        StateError => "state_error",
        /// The cycle failed on I/O (installing the file, saving state) or on rulekeeper's own
        /// error; the reason names the stage.
        Failed => "failed",
    }
}

impl Outcome {
    /// The outcomes after which the live file is what it should be: nothing to report as an
    /// error (a note, such as "verification skipped", may remain).
    pub fn is_good(self) -> bool {
        matches!(self, Outcome::Unchanged | Outcome::Applied)
    }

    /// The outcomes of a cycle that put content in place: what the history records.
    pub fn changes_live(self) -> bool {
        matches!(
            self,
            Outcome::Applied | Outcome::RolledBack | Outcome::RollbackFailed
        )
    }
}

label_set! {
    /// The stages timed in `rulekeeper_cycle_duration_seconds{phase}`.
    Phase {
        Fetch => "fetch",
        Validate => "validate",
        Install => "install",
        Restart => "restart",
        Verify => "verify",
        Total => "total",
    }
}

label_set! {
    /// Why a fetch failed: `rulekeeper_fetch_failures_total{reason}`.
    FetchReason {
        Timeout => "timeout",
        Connect => "connect",
        Transport => "transport",
        Redirect => "redirect",
        Auth => "auth",
        NotFound => "not_found",
        ServerError => "server_error",
        HttpStatus => "http_status",
        TooLarge => "too_large",
        /// A token file that cannot be read or is empty.
        Token => "token",
        Git => "git",
        Io => "io",
        Config => "config",
        Protocol => "protocol",
        /// The bytes differ from the forge's own blob id or digest.
        Integrity => "integrity",
        /// The forge asked to slow down (429 `Retry-After`, GitHub's rate limit).
        RateLimited => "rate_limited",
    }
}

label_set! {
    /// What a webhook request got: `rulekeeper_webhook_requests_total{result}`.
    WebhookResult {
        Triggered => "triggered",
        Unchanged => "unchanged",
        Ignored => "ignored",
        Unauthorized => "unauthorized",
        NotConfigured => "not_configured",
        TooLarge => "too_large",
        BadRequest => "bad_request",
        Busy => "busy",
        Timeout => "timeout",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip_through_serde_and_parse() {
        for o in Outcome::ALL {
            let json = serde_json::to_string(o).unwrap();
            assert_eq!(json, format!("\"{}\"", o.as_str()));
            assert_eq!(serde_json::from_str::<Outcome>(&json).unwrap(), *o);
            assert_eq!(Outcome::parse(o.as_str()), Some(*o));
        }
        assert_eq!(Outcome::parse("nope"), None);
        assert_eq!(FetchReason::ALL.len(), 16);
        assert_eq!(WebhookResult::ALL.len(), 9);
    }
}
