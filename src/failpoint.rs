//! Fault injection for tests: with `FLAGHOOK_FAILPOINT=<name>` in the environment, the
//! point of that name panics, so tests can prove that no failure goes unnoticed.
//!
//! Debug builds only (the ones `cargo test` runs); release builds compile it to nothing.

/// Panics when the failpoint `name` is set.
#[inline]
pub fn hit(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var_os("FLAGHOOK_FAILPOINT").is_some_and(|v| v == name) {
        panic!("failpoint `{name}` hit");
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
