//! This node's wall clock. Every wall-clock read of the node goes through [`unix_now`], so a
//! test can skew one node's clock (`AUTHSEC_TEST_CLOCK_OFFSET_MS`, signed milliseconds) and
//! check that what must not depend on clocks (revocation ordering, log order) does not. The
//! offset exists only in debug builds: a release binary reads the system clock as it is.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The environment variable that skews a debug build's clock.
pub const OFFSET_ENV: &str = "AUTHSEC_TEST_CLOCK_OFFSET_MS";

static OFFSET_MS: OnceLock<i64> = OnceLock::new();

fn offset_ms() -> i64 {
    *OFFSET_MS.get_or_init(|| {
        if !cfg!(debug_assertions) {
            return 0;
        }
        let ms = std::env::var(OFFSET_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(0);
        if ms != 0 {
            tracing::warn!(
                offset_ms = ms,
                "TEST CLOCK OFFSET: this node's wall clock is deliberately skewed"
            );
        }
        ms
    })
}

/// Time since the Unix epoch, as this node sees it.
pub fn unix_now() -> Duration {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    match offset_ms() {
        0 => real,
        ms if ms > 0 => real.saturating_add(Duration::from_millis(ms.unsigned_abs())),
        ms => real.saturating_sub(Duration::from_millis(ms.unsigned_abs())),
    }
}

/// Milliseconds since the Unix epoch, as this node sees it.
pub fn now_ms() -> u64 {
    unix_now().as_millis() as u64
}
