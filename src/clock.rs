//! Wall-clock time as CRI carries it: nanoseconds since the Unix epoch. A leaf: the journal, the
//! API, the reconcilers and the stats all stamp times with it.

/// Now, in nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
