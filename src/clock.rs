//! Wall-clock time as the stored records and the status documents carry it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 when the clock is before it: a record's time is informational,
/// never a security decision by itself).
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
