//! Handing freed heap back to the operating system. A leaf.

/// Hands freed heap back to the OS. A scrape with many targets or the burst of first
/// cycles at boot leave megabytes glibc would otherwise keep for the process's lifetime.
pub fn release() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
