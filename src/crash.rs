//! Crash points for the crash tests (a leaf: the reconcile loop calls it, and nothing it needs
//! may depend on the daemon).

/// A crash-test hook: when `CONCORD_CRASH_AT` names this point, concord aborts here (as a
/// SIGKILL would stop it: nothing after this point runs, nothing is cleaned up). The crash tests
/// use it to stop concord inside windows too short to hit with a signal.
pub fn crash_point(name: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if AT
        .get_or_init(|| std::env::var("CONCORD_CRASH_AT").ok())
        .as_deref()
        == Some(name)
    {
        eprintln!("concord: CONCORD_CRASH_AT={name}: aborting");
        std::process::abort();
    }
}
