//! rulekeeper: keeps a service's rules file in step with an upstream source.
pub mod cli;
