//! When the datapath works: commands from the agent and the kernel monitor (taken in
//! batches, a burst of kernel changes settled briefly), and the timers of the full pass (the
//! resync, backing off after failures) and of the tunnel read-back.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Snapshot;

pub(super) enum Cmd {
    State(Arc<Snapshot>),
    Kick(&'static str),
}

/// What the commands taken in one turn ask for.
#[derive(Default)]
pub(super) struct Wanted {
    /// A kick or the resync timer: dump, diff and apply.
    pub full: bool,
    /// The newest snapshot, when one came: the fast path may do.
    pub state: Option<Arc<Snapshot>>,
    /// Nothing came before the timer ran out.
    pub timer: bool,
}

/// Waits up to `wait` for commands and takes every one that is queued; `None` when the
/// agent is gone. After a kick, kernel changes that follow within 20 ms are taken with it
/// (they come in bursts: a device going down takes all its routes with it); a snapshot that
/// comes meanwhile goes to `early` at once, so a lease change does not wait for the settling.
pub(super) fn next(
    rx: &mpsc::Receiver<Cmd>,
    wait: Duration,
    early: &mut dyn FnMut(Arc<Snapshot>),
) -> Option<Wanted> {
    let mut wanted = Wanted::default();
    let first = match rx.recv_timeout(wait) {
        Ok(cmd) => cmd,
        Err(RecvTimeoutError::Timeout) => {
            wanted.timer = true;
            return Some(wanted);
        }
        Err(RecvTimeoutError::Disconnected) => return None,
    };
    let mut cmds = vec![first];
    if matches!(cmds[0], Cmd::Kick(_)) {
        settle(rx, &mut cmds, early);
    }
    cmds.extend(rx.try_iter());
    for cmd in cmds {
        match cmd {
            Cmd::State(s) => wanted.state = Some(s),
            Cmd::Kick(why) => {
                tracing::debug!(why, "full reconciliation requested");
                wanted.full = true;
            }
        }
    }
    Some(wanted)
}

fn settle(rx: &mpsc::Receiver<Cmd>, cmds: &mut Vec<Cmd>, early: &mut dyn FnMut(Arc<Snapshot>)) {
    let settled = Instant::now() + Duration::from_millis(20);
    while let Some(left) = settled.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(Cmd::State(s)) => early(s),
            Ok(other) => cmds.push(other),
            Err(_) => break,
        }
    }
}

/// What a timer calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tick {
    Full,
    Poll,
    Nothing,
}

/// The timers: the full pass every `resync` (sooner after a failure, backing off), the
/// tunnel read-back every `tunnel_poll`.
pub(super) struct Schedule {
    resync: Duration,
    tunnel_poll: Duration,
    full_due: Instant,
    poll_due: Instant,
    failures: u32,
}

impl Schedule {
    pub fn new(resync: Duration, tunnel_poll: Duration) -> Schedule {
        let now = Instant::now();
        Schedule {
            resync,
            tunnel_poll,
            full_due: now + resync,
            poll_due: now + tunnel_poll,
            failures: 0,
        }
    }

    /// How long to wait for commands; the read-back counts only while `polling`.
    pub fn wait(&self, polling: bool) -> Duration {
        let due = if polling {
            self.full_due.min(self.poll_due)
        } else {
            self.full_due
        };
        due.saturating_duration_since(Instant::now())
    }

    /// What the timer that ran out calls for.
    pub fn tick(&mut self) -> Tick {
        let now = Instant::now();
        if now >= self.full_due {
            Tick::Full
        } else if now >= self.poll_due {
            self.poll_due = now + self.tunnel_poll;
            Tick::Poll
        } else {
            Tick::Nothing
        }
    }

    /// A full pass ended: the next one after the resync interval, or soon after a failure,
    /// backing off to the resync interval.
    pub fn full_done(&mut self, ok: bool) {
        self.failures = if ok { 0 } else { self.failures + 1 };
        let retry = Duration::from_millis(200 << self.failures.min(6)).min(self.resync);
        self.full_due = Instant::now() + if ok { self.resync } else { retry };
    }
}
