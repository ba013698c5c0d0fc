//! The pure part of the peer prober: one peer's reachability state machine, and the slot grid
//! that spreads the probes of n peers evenly over the interval. No sockets and no clock of its
//! own: callers pass the time, so every rule here is unit-tested without root.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

/// What the prober believes about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// Neither an answer nor enough consecutive losses yet (a peer just added).
    Unknown,
    /// The last probe that finished was answered.
    Reachable,
    /// The last `down_after` probes were all lost.
    Unreachable,
}

/// How one probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An echo reply, after this round trip.
    Answer(Duration),
    /// No echo reply within the timeout (or an ICMP error, or a failed send).
    Lost,
}

/// One peer's record: its state, since when, and the counters `/peers` shows.
#[derive(Debug, Clone)]
pub struct Health {
    state: PeerState,
    since: SystemTime,
    losses_in_row: u32,
    /// The last `window` finished probes, oldest first; true = lost.
    recent: VecDeque<bool>,
    sent: u64,
    lost: u64,
    last_rtt: Option<Duration>,
}

impl Health {
    pub fn new(now: SystemTime) -> Health {
        Health {
            state: PeerState::Unknown,
            since: now,
            losses_in_row: 0,
            recent: VecDeque::new(),
            sent: 0,
            lost: 0,
            last_rtt: None,
        }
    }

    /// Counts a probe as sent (its outcome comes later through [`Health::record`]).
    pub fn sent(&mut self) {
        self.sent += 1;
    }

    /// Takes a finished probe into account; returns whether the state changed. The first
    /// answer makes a peer Reachable; `down_after` losses in a row make it Unreachable.
    pub fn record(
        &mut self,
        outcome: Outcome,
        down_after: u32,
        window: u32,
        now: SystemTime,
    ) -> bool {
        let lost = outcome == Outcome::Lost;
        self.recent.push_back(lost);
        while self.recent.len() > window.max(1) as usize {
            self.recent.pop_front();
        }
        let next = match outcome {
            Outcome::Answer(rtt) => {
                self.last_rtt = Some(rtt);
                self.losses_in_row = 0;
                PeerState::Reachable
            }
            Outcome::Lost => {
                self.lost += 1;
                self.losses_in_row = self.losses_in_row.saturating_add(1);
                if self.losses_in_row >= down_after.max(1) {
                    PeerState::Unreachable
                } else {
                    self.state
                }
            }
        };
        if next == self.state {
            return false;
        }
        self.state = next;
        self.since = now;
        true
    }

    pub fn state(&self) -> PeerState {
        self.state
    }

    /// When the state last changed (for a peer never decided: when it was added).
    pub fn since(&self) -> SystemTime {
        self.since
    }

    /// The share of the finished probes in the window that were lost (0 before any finished).
    pub fn loss(&self) -> f64 {
        if self.recent.is_empty() {
            return 0.0;
        }
        self.recent.iter().filter(|l| **l).count() as f64 / self.recent.len() as f64
    }

    pub fn last_rtt(&self) -> Option<Duration> {
        self.last_rtt
    }

    pub fn sent_count(&self) -> u64 {
        self.sent
    }

    pub fn lost_count(&self) -> u64 {
        self.lost
    }
}

/// When slot i of n falls within an interval: at i·interval/n, so n probes are spread evenly
/// instead of leaving together.
pub fn slot_offset(i: u64, n: u64, interval: Duration) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    // Nanoseconds in u128: 1,000,000 peers × a one-hour interval still fits with room.
    let ns = interval.as_nanos() * u128::from(i) / u128::from(n);
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

/// The times at which probes leave: slot k at `epoch + slot_offset(k, n, interval)`, counted on
/// from the epoch without drift. Each slot probes the next peer of the rotation, so every peer
/// is probed once per interval.
#[derive(Debug, Clone)]
pub struct Grid {
    epoch: Instant,
    n: u64,
    interval: Duration,
    /// The next slot not yet taken.
    k: u64,
}

impl Grid {
    pub fn new(at: Instant, n: usize, interval: Duration) -> Grid {
        Grid {
            epoch: at,
            n: n as u64,
            interval,
            k: 0,
        }
    }

    /// Starts the grid again at `at` for `n` peers, its first slot due at once: a changed peer
    /// set gets a new spacing, and a peer just added (placed next in the rotation) is probed
    /// right away.
    pub fn reanchor(&mut self, at: Instant, n: usize) {
        *self = Grid::new(at, n, self.interval);
    }

    /// When the next slot is due; None with no peers.
    pub fn next_due(&self) -> Option<Instant> {
        (self.n > 0).then(|| self.epoch + self.at(self.k))
    }

    fn at(&self, k: u64) -> Duration {
        let rounds = k / self.n;
        let rounds = u32::try_from(rounds).unwrap_or(u32::MAX);
        self.interval.saturating_mul(rounds) + slot_offset(k % self.n, self.n, self.interval)
    }

    /// Takes the next slot if it is due at `now`. A grid that fell more than one interval
    /// behind (a stopped process, a starved runtime) starts again at `now` rather than sending
    /// the missed probes in one burst.
    pub fn take(&mut self, now: Instant) -> bool {
        let Some(due) = self.next_due() else {
            return false;
        };
        if due > now {
            return false;
        }
        if now - due > self.interval {
            self.reanchor(now, self.n as usize);
        }
        self.k += 1;
        true
    }
}

/// The order in which peers are probed: a ring with a cursor. New peers go in at the cursor,
/// so they are probed in the next slots; the others keep their order.
#[derive(Debug, Clone)]
pub struct Rotation<K> {
    order: Vec<K>,
    cursor: usize,
}

impl<K: Clone + PartialEq> Default for Rotation<K> {
    fn default() -> Self {
        Rotation {
            order: Vec::new(),
            cursor: 0,
        }
    }
}

impl<K: Clone + PartialEq> Rotation<K> {
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Keeps only the keys for which `keep` holds; the cursor stays on the same next key.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        let mut next = self.cursor;
        let mut kept = Vec::with_capacity(self.order.len());
        for (i, k) in self.order.drain(..).enumerate() {
            if keep(&k) {
                kept.push(k);
            } else if i < self.cursor {
                next -= 1;
            }
        }
        self.order = kept;
        self.cursor = if self.order.is_empty() {
            0
        } else {
            next % self.order.len()
        };
    }

    /// Adds new keys so that they are the next ones probed, in this order.
    pub fn add_next(&mut self, keys: impl IntoIterator<Item = K>) {
        let at = self.cursor;
        self.order.splice(at..at, keys);
    }

    /// The key whose turn it is, and moves the cursor on.
    pub fn turn(&mut self) -> Option<K> {
        if self.order.is_empty() {
            return None;
        }
        let k = self.order[self.cursor].clone();
        self.cursor = (self.cursor + 1) % self.order.len();
        Some(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: SystemTime = SystemTime::UNIX_EPOCH;
    fn at(s: u64) -> SystemTime {
        T0 + Duration::from_secs(s)
    }
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn probe_health_unknown_until_first_answer() {
        let mut h = Health::new(T0);
        assert_eq!(h.state(), PeerState::Unknown);
        h.sent();
        assert!(!h.record(Outcome::Lost, 3, 10, at(1)));
        assert_eq!(h.state(), PeerState::Unknown);
        assert_eq!(h.since(), T0);
        h.sent();
        assert!(h.record(Outcome::Answer(5 * MS), 3, 10, at(2)));
        assert_eq!(h.state(), PeerState::Reachable);
        assert_eq!(h.since(), at(2));
        assert_eq!(h.last_rtt(), Some(5 * MS));
        assert_eq!((h.sent_count(), h.lost_count()), (2, 1));
    }

    #[test]
    fn probe_health_unknown_becomes_unreachable_after_down_after_losses() {
        let mut h = Health::new(T0);
        assert!(!h.record(Outcome::Lost, 3, 10, at(1)));
        assert!(!h.record(Outcome::Lost, 3, 10, at(2)));
        assert!(h.record(Outcome::Lost, 3, 10, at(3)));
        assert_eq!(h.state(), PeerState::Unreachable);
        assert_eq!(h.since(), at(3));
        // More losses change nothing, not even `since`.
        assert!(!h.record(Outcome::Lost, 3, 10, at(4)));
        assert_eq!(h.since(), at(3));
    }

    #[test]
    fn probe_health_down_after_consecutive_losses_only() {
        let mut h = Health::new(T0);
        h.record(Outcome::Answer(MS), 3, 10, at(0));
        // Two losses, an answer, two losses: never three in a row.
        for (i, o) in [
            Outcome::Lost,
            Outcome::Lost,
            Outcome::Answer(MS),
            Outcome::Lost,
            Outcome::Lost,
        ]
        .into_iter()
        .enumerate()
        {
            assert!(!h.record(o, 3, 10, at(i as u64 + 1)), "probe {i}");
        }
        assert_eq!(h.state(), PeerState::Reachable);
        assert!(h.record(Outcome::Lost, 3, 10, at(9)));
        assert_eq!(h.state(), PeerState::Unreachable);
        // Reachable again after the first answer.
        assert!(h.record(Outcome::Answer(2 * MS), 3, 10, at(10)));
        assert_eq!(h.state(), PeerState::Reachable);
        assert_eq!(h.since(), at(10));
    }

    #[test]
    fn probe_health_down_after_one() {
        let mut h = Health::new(T0);
        h.record(Outcome::Answer(MS), 1, 10, at(0));
        assert!(h.record(Outcome::Lost, 1, 10, at(1)));
        assert_eq!(h.state(), PeerState::Unreachable);
    }

    #[test]
    fn probe_health_loss_over_the_window() {
        let mut h = Health::new(T0);
        assert_eq!(h.loss(), 0.0);
        for _ in 0..4 {
            h.record(Outcome::Lost, 3, 4, T0);
        }
        assert_eq!(h.loss(), 1.0);
        h.record(Outcome::Answer(MS), 3, 4, T0);
        assert_eq!(h.loss(), 0.75);
        for _ in 0..3 {
            h.record(Outcome::Answer(MS), 3, 4, T0);
        }
        assert_eq!(h.loss(), 0.0);
        // The lifetime counter keeps everything.
        assert_eq!(h.lost_count(), 4);
    }

    #[test]
    fn probe_slots_spread_evenly() {
        let s = Duration::from_secs(1);
        let offsets: Vec<_> = (0..4).map(|i| slot_offset(i, 4, s)).collect();
        assert_eq!(offsets, [0, 250, 500, 750].map(Duration::from_millis));
        assert_eq!(slot_offset(999, 1000, s), Duration::from_millis(999));
        assert_eq!(slot_offset(0, 0, s), Duration::ZERO);
    }

    #[test]
    fn probe_grid_takes_one_slot_per_offset_and_never_drifts() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut g = Grid::new(t0, 4, s);
        let mut taken = Vec::new();
        // Walk a millisecond clock over three intervals.
        for ms in 0..3000u64 {
            let now = t0 + Duration::from_millis(ms);
            while g.take(now) {
                taken.push(ms);
            }
        }
        let want: Vec<u64> = (0..12).map(|k| k * 250).collect();
        assert_eq!(taken, want);
        assert_eq!(g.next_due(), Some(t0 + Duration::from_secs(3)));
    }

    #[test]
    fn probe_grid_with_1000_peers_sends_no_burst() {
        let t0 = Instant::now();
        let mut g = Grid::new(t0, 1000, Duration::from_secs(1));
        let mut per_ms = Vec::new();
        for ms in 0..1000u64 {
            let now = t0 + Duration::from_millis(ms);
            let mut c = 0;
            while g.take(now) {
                c += 1;
            }
            per_ms.push(c);
        }
        assert!(per_ms.iter().all(|c| *c == 1), "{per_ms:?}");
    }

    #[test]
    fn probe_grid_late_by_a_little_catches_up_late_by_much_starts_again() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut g = Grid::new(t0, 10, s);
        // 250 ms late: the three slots missed are taken now (at most one interval's worth).
        let now = t0 + Duration::from_millis(250);
        let mut c = 0;
        while g.take(now) {
            c += 1;
        }
        assert_eq!(c, 3);
        // 5 s late: one probe now, the rest spread from here on.
        let now = t0 + Duration::from_secs(5);
        let mut c = 0;
        while g.take(now) {
            c += 1;
        }
        assert_eq!(c, 1);
        assert_eq!(g.next_due(), Some(now + Duration::from_millis(100)));
    }

    #[test]
    fn probe_grid_empty_has_no_slot() {
        let mut g = Grid::new(Instant::now(), 0, Duration::from_secs(1));
        assert_eq!(g.next_due(), None);
        assert!(!g.take(Instant::now() + Duration::from_secs(9)));
    }

    #[test]
    fn probe_rotation_visits_each_once_per_round_and_new_ones_next() {
        let mut r = Rotation::default();
        r.add_next(["a", "b", "c"]);
        assert_eq!(r.turn(), Some("a"));
        assert_eq!(r.turn(), Some("b"));
        // New peers come before the rest of the round.
        r.add_next(["x", "y"]);
        let got: Vec<_> = (0..5).map(|_| r.turn().unwrap()).collect();
        assert_eq!(got, ["x", "y", "c", "a", "b"]);
    }

    #[test]
    fn probe_rotation_retain_keeps_the_cursor_on_the_next_key() {
        let mut r = Rotation::default();
        r.add_next(["a", "b", "c", "d"]);
        r.turn();
        r.turn(); // next up: c
        r.retain(|k| *k != "a");
        assert_eq!(r.turn(), Some("c"));
        r.retain(|k| *k != "d"); // next up was d: now b
        assert_eq!(r.turn(), Some("b"));
        r.retain(|_| false);
        assert!(r.is_empty());
        assert_eq!(r.turn(), None);
    }
}
