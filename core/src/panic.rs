//! Panics of code we call turned into errors: the embedded engine and the forward pass must
//! fail a request, not the thread or the process serving every request. Depends on nothing
//! else in the crate, so the stores and the batcher use it without importing `error`.

/// Runs `f`, turning a panic inside it into its message.
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into())
    })
}
