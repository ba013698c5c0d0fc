//! The leases the agent knows, this host's included, as the watch reports them: peers join,
//! change and leave; a change to this host's own lease is told apart and handed back.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;

use crate::lease::{Lease, LeaseEvent};
use crate::status::Ring;

#[derive(Default)]
pub(super) struct Peers {
    leases: BTreeMap<Ipv4Net, Arc<Lease>>,
    /// The leases' subnets as the status task sees them (to decide who marks a host gone).
    ring: Ring,
    /// Keys in etcd that hold no usable lease (malformed, outside the network); the store
    /// drops them before they become events, but they count as skipped leases.
    pub unreadable: usize,
}

/// What a batch of events meant for this host's own lease.
#[derive(Debug, Default)]
pub(super) struct OwnNews {
    /// The lease as etcd has it now, when it changed (this host wrote it).
    pub updated: Option<Lease>,
    /// The lease is gone, or another host holds its subnet: acquire one again.
    pub lost: bool,
}

/// Peers that joined and left in one batch of events, as logs name them.
#[derive(Default)]
struct Moves {
    joined: Vec<String>,
    left: Vec<String>,
}

/// Peers named in one line; the others are counted.
const LOG_NAMED: usize = 5;

fn label(l: &Lease) -> String {
    format!("{} at {}", l.subnet, l.attrs.public_ip)
}

impl Moves {
    fn log(self) {
        let line = |v: &[String]| (v.len(), crate::logging::some_of(v, LOG_NAMED));
        match line(&self.joined) {
            (0, _) => {}
            (1, peer) => tracing::info!(peer, "peer joined"),
            (count, peers) => tracing::info!(count, peers, "{count} peers joined"),
        }
        match line(&self.left) {
            (0, _) => {}
            (1, peer) => tracing::info!(peer, "peer left"),
            (count, peers) => tracing::info!(count, peers, "{count} peers left"),
        }
    }
}

impl Peers {
    pub fn new(ring: Ring) -> Peers {
        Peers {
            ring,
            ..Peers::default()
        }
    }

    /// Puts `own` among the leases (after an acquisition, a renewal, a rewrite).
    pub fn set_own(&mut self, own: &Lease) {
        self.put(Arc::new(own.clone()));
    }

    /// Takes a listed lease, shared with the watcher that listed it.
    pub fn adopt(&mut self, l: Arc<Lease>) {
        self.put(l);
    }

    pub fn get(&self, subnet: &Ipv4Net) -> Option<&Arc<Lease>> {
        self.leases.get(subnet)
    }

    fn put(&mut self, l: Arc<Lease>) {
        self.ring.insert(l.subnet);
        self.leases.insert(l.subnet, l);
    }

    pub fn remove(&mut self, subnet: &Ipv4Net) {
        self.ring.remove(subnet);
        self.leases.remove(subnet);
    }

    /// Every lease, shared: a snapshot costs a reference count per lease, not a copy.
    pub fn snapshot(&self) -> Vec<Arc<Lease>> {
        self.leases.values().cloned().collect()
    }

    /// Applies a batch of watch events; `own` is this host's lease as it knows it,
    /// `public_ip` its address. Peers joining and leaving are logged one line per batch.
    pub fn apply(&mut self, events: Vec<LeaseEvent>, own: &Lease, public_ip: Ipv4Addr) -> OwnNews {
        let mut news = OwnNews::default();
        let mut moves = Moves::default();
        for ev in events {
            match ev {
                LeaseEvent::Added(l) => self.added(l, own, public_ip, &mut news, &mut moves),
                LeaseEvent::Removed(l) | LeaseEvent::Expired(l) => {
                    self.removed(l, own, &mut news, &mut moves)
                }
            }
        }
        moves.log();
        news
    }

    fn added(
        &mut self,
        l: Arc<Lease>,
        own: &Lease,
        public_ip: Ipv4Addr,
        news: &mut OwnNews,
        moves: &mut Moves,
    ) {
        if l.subnet == own.subnet && l.mod_revision < own.mod_revision {
            // Written before this host's last update of it (e.g. with the public IP it had
            // before a renumbering): already superseded.
            return;
        }
        if l.subnet == own.subnet {
            if l.attrs.public_ip != public_ip {
                tracing::error!(subnet = %l.subnet, holder = %l.attrs.public_ip, "this host's subnet now belongs to another host");
                news.lost = true;
            } else {
                news.updated = Some(l.as_ref().clone());
            }
        } else if !self.leases.contains_key(&l.subnet) {
            moves.joined.push(label(&l));
        }
        self.put(l);
    }

    fn removed(&mut self, l: Arc<Lease>, own: &Lease, news: &mut OwnNews, moves: &mut Moves) {
        // A key of a subnet that now lives under another key (a lease moved when its IPv6
        // part changed) is history, not a departure.
        let held = (self.leases.get(&l.subnet)).is_some_and(|h| h.key_name() == l.key_name());
        if !held {
            return;
        }
        if l.subnet == own.subnet {
            tracing::warn!(subnet = %l.subnet, "this host's lease vanished from etcd; acquiring it again");
            news.lost = true;
        } else {
            moves.left.push(label(&l));
        }
        self.remove(&l.subnet);
    }

    /// What a fresh listing says happened since these leases were seen, as the watch events
    /// it would have delivered: a lease not listed any more was removed; a new one, or one
    /// with another revision, was added.
    pub fn changes_since(&self, listed: &[Arc<Lease>]) -> Vec<LeaseEvent> {
        let now: BTreeMap<Ipv4Net, &Arc<Lease>> = listed.iter().map(|l| (l.subnet, l)).collect();
        let mut events: Vec<LeaseEvent> = (self.leases.iter())
            .filter(|(s, _)| !now.contains_key(s))
            .map(|(_, l)| LeaseEvent::Removed(l.clone()))
            .collect();
        events.extend(
            (now.values())
                .filter(|l| {
                    (self.leases.get(&l.subnet)).is_none_or(|k| k.mod_revision != l.mod_revision)
                })
                .map(|l| LeaseEvent::Added(Arc::clone(l))),
        );
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(subnet: &str, rev: i64) -> Lease {
        Lease::for_tests(subnet, rev)
    }

    #[test]
    fn a_fresh_listing_becomes_the_events_that_were_missed() {
        let mut peers = Peers::default();
        for l in [
            lease("198.19.1.0/24", 1),
            lease("198.19.2.0/24", 2),
            lease("198.19.3.0/24", 3),
        ] {
            peers.set_own(&l);
        }
        let listed = [
            lease("198.19.1.0/24", 1),
            lease("198.19.3.0/24", 9),
            lease("198.19.4.0/24", 10),
        ]
        .map(Arc::new);
        let events: Vec<(&str, String, i64)> = (peers.changes_since(&listed).iter())
            .map(|e| match e {
                LeaseEvent::Added(l) => ("added", l.subnet.to_string(), l.mod_revision),
                LeaseEvent::Removed(l) => ("removed", l.subnet.to_string(), l.mod_revision),
                LeaseEvent::Expired(l) => ("expired", l.subnet.to_string(), l.mod_revision),
            })
            .collect();
        assert_eq!(
            events,
            [
                ("removed", "198.19.2.0/24".to_string(), 2),
                ("added", "198.19.3.0/24".to_string(), 9),
                ("added", "198.19.4.0/24".to_string(), 10),
            ]
        );
        let same: Vec<Arc<Lease>> = peers.leases.values().cloned().collect();
        assert!(peers.changes_since(&same).is_empty());
    }
}
