//! rulekeeper's vocabulary: the typed values every layer speaks (the label values of metrics,
//! journal fields and state, and the reason a cycle ended as it did). Leaves: they import only
//! `util`.

pub(crate) mod conditional;
pub(crate) mod ids;
pub(crate) mod labels;
pub(crate) mod reason;
