//! Waiting for events instead of sleeping: a test that polls for what it needs fails when it
//! does not come, where a fixed sleep would pass whether it came or not.

use std::time::{Duration, Instant};

/// Polls `f` every 20 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    poll(timeout, Duration::from_millis(20), f)
}

/// Polls `f` every `step` until it returns Some or `timeout` passes (a finer step for what
/// is timed, as the benches do).
pub fn poll<T>(timeout: Duration, step: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(step);
    }
}

/// Polls until `done` or `patience` passes; the time from `since` until it was done, or None.
pub fn time_until(
    patience: Duration,
    since: Instant,
    mut done: impl FnMut() -> bool,
) -> Option<Duration> {
    wait_for(patience, || done().then(|| since.elapsed()))
}

/// Sleeps until `at`, for traffic that must run for a while (pings covering an event): pacing,
/// not waiting for anything.
pub fn pace_until(at: Instant) {
    std::thread::sleep(at.saturating_duration_since(Instant::now()));
}
