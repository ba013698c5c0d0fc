//! Which peers are down, kept up to date as probes finish instead of recounted: the
//! unreachable targets ordered by how long they have been so, per host, and the counts the
//! metrics show. A change of state costs O(log n), so a partition that takes half the fleet
//! away costs in proportion to its size, never to its square.

use std::collections::{BTreeSet, HashMap};
use std::time::SystemTime;

use ipnet::Ipv4Net;

use super::PeerState;

/// How many unreachable hosts a summary names (the longest unreachable); the others are
/// counted. Bounds the host's status record whatever the fleet's size.
pub const NAMED: usize = 8;

/// The hosts this host cannot reach: how many, and the longest unreachable of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnreachableHosts {
    /// Hosts with at least one family unreachable.
    pub count: usize,
    /// At most [`NAMED`] of them, the longest unreachable first: the host's IPv4 subnet (which
    /// names its lease) and since when.
    pub oldest: Vec<(Ipv4Net, SystemTime)>,
}

/// One probe target as the bookkeeping sees it.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub id: &'a str,
    pub host: Ipv4Net,
    pub state: PeerState,
    pub since: SystemTime,
}

#[derive(Debug, Default)]
pub struct Down {
    /// Unreachable targets by (since, id): the oldest first.
    by_since: BTreeSet<(SystemTime, String)>,
    /// The host of each unreachable target.
    host_of: HashMap<String, Ipv4Net>,
    /// Unreachable targets per host (a dual-stack host has up to two).
    hosts: HashMap<Ipv4Net, u32>,
    reachable: u64,
}

impl Down {
    /// A target leaves its state `was` (a change of state, or the target removed).
    pub fn leave(&mut self, was: Seen<'_>) {
        match was.state {
            PeerState::Reachable => self.reachable = self.reachable.saturating_sub(1),
            PeerState::Unreachable => {
                self.by_since.remove(&(was.since, was.id.to_string()));
                self.host_of.remove(was.id);
                if let Some(n) = self.hosts.get_mut(&was.host) {
                    *n -= 1;
                    if *n == 0 {
                        self.hosts.remove(&was.host);
                    }
                }
            }
            PeerState::Unknown => {}
        }
    }

    /// A target enters its state `now`.
    pub fn enter(&mut self, now: Seen<'_>) {
        match now.state {
            PeerState::Reachable => self.reachable += 1,
            PeerState::Unreachable => {
                self.by_since.insert((now.since, now.id.to_string()));
                self.host_of.insert(now.id.to_string(), now.host);
                *self.hosts.entry(now.host).or_default() += 1;
            }
            PeerState::Unknown => {}
        }
    }

    /// Targets reachable and unreachable now.
    pub fn counts(&self) -> (u64, u64) {
        (self.reachable, self.by_since.len() as u64)
    }

    /// The summary: walks the oldest unreachable targets only until [`NAMED`] hosts are found.
    pub fn summary(&self) -> UnreachableHosts {
        let mut oldest: Vec<(Ipv4Net, SystemTime)> = Vec::with_capacity(NAMED);
        for (since, id) in &self.by_since {
            if oldest.len() == NAMED {
                break;
            }
            let Some(host) = self.host_of.get(id) else {
                continue;
            };
            if !oldest.iter().any(|(h, _)| h == host) {
                oldest.push((*host, *since));
            }
        }
        UnreachableHosts {
            count: self.hosts.len(),
            oldest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn seen(id: &str, host: u8, state: PeerState, since: u64) -> Seen<'_> {
        Seen {
            id,
            host: Ipv4Net::new([198, 19, host, 0].into(), 24).unwrap(),
            state,
            since: at(since),
        }
    }

    #[test]
    fn hosts_are_counted_once_and_the_oldest_named_first() {
        let mut d = Down::default();
        d.enter(seen("v4-2", 2, PeerState::Unreachable, 20));
        d.enter(seen("v6-2", 2, PeerState::Unreachable, 10));
        d.enter(seen("v4-3", 3, PeerState::Unreachable, 15));
        d.enter(seen("v4-4", 4, PeerState::Reachable, 5));
        let s = d.summary();
        assert_eq!(s.count, 2);
        let named: Vec<(u8, SystemTime)> = (s.oldest.iter())
            .map(|(h, t)| (h.addr().octets()[2], *t))
            .collect();
        assert_eq!(named, [(2, at(10)), (3, at(15))]);
        assert_eq!(d.counts(), (1, 3));

        d.leave(seen("v6-2", 2, PeerState::Unreachable, 10));
        d.enter(seen("v6-2", 2, PeerState::Reachable, 30));
        assert_eq!(d.summary().count, 2, "host 2 is still cut in IPv4");
        d.leave(seen("v4-2", 2, PeerState::Unreachable, 20));
        assert_eq!(d.summary().count, 1);
        assert_eq!(d.counts(), (2, 1));
    }

    #[test]
    fn a_partition_of_thousands_names_a_bounded_few() {
        let mut d = Down::default();
        let ids: Vec<String> = (0..5000).map(|i| format!("p{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            let host = Ipv4Net::new([198, 18 + (i / 256) as u8 % 2, i as u8, 0].into(), 24);
            d.enter(Seen {
                id,
                host: host.unwrap(),
                state: PeerState::Unreachable,
                since: at(1000 - (i as u64 % 1000)),
            });
        }
        let s = d.summary();
        assert_eq!(s.oldest.len(), NAMED);
        assert!(s.oldest.windows(2).all(|w| w[0].1 <= w[1].1), "{s:?}");
    }
}
