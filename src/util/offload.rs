//! Work that holds a thread for a while (fsyncs, rendering every target's metrics) run so it
//! does not stall the daemon's one async worker: on a multi-thread runtime the worker hands
//! its other tasks to another thread for the while (`block_in_place`); on a command's
//! current-thread runtime, or outside any runtime, it simply runs.

/// Runs `f`, off the async worker where there is one to spare.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
