//! One way to take a mutex. A leaf.

/// Locks a mutex, taking over the data of a holder that panicked: every mutex in rulekeeper
/// guards a cache or a counter that stays consistent between statements, so a panic
/// elsewhere is no reason to stop serving.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}
