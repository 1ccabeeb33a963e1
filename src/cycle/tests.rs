//! In-process tests of the cycle's decisions.
