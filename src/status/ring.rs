//! Who marks a host gone. Every weftd hears of a vanished status record (a delete-only
//! watch), but only the [`MARKERS`] hosts that follow it in the ring of lease subnets write
//! the mark, the first at once and each next one a moment later only if it is still missing:
//! a death costs etcd a constant few requests, not one per host. The ring is every lease this
//! host knows (flannel hosts included, which never mark), kept by the agent as leases come
//! and go.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use ipnet::Ipv4Net;

/// How many hosts after a vanished one may mark it: enough that a few flannel hosts or dead
/// hosts among them still leave a weft host to do it.
pub const MARKERS: usize = 5;

#[derive(Debug, Clone, Default)]
pub struct Ring(Arc<RwLock<BTreeSet<Ipv4Net>>>);

impl Ring {
    pub fn insert(&self, subnet: Ipv4Net) {
        self.write().insert(subnet);
    }

    pub fn remove(&self, subnet: &Ipv4Net) {
        self.write().remove(subnet);
    }

    /// Where `own` stands among the hosts after `gone` (1 = right after it, going round),
    /// if among the first `MARKERS`.
    pub fn rank_after(&self, gone: Ipv4Net, own: Ipv4Net) -> Option<usize> {
        let ring = self.0.read().unwrap_or_else(|e| e.into_inner());
        let after = ring.range(gone..).skip_while(|s| **s == gone);
        let before = ring.range(..gone);
        (after.chain(before))
            .take(MARKERS)
            .position(|s| *s == own)
            .map(|i| i + 1)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeSet<Ipv4Net>> {
        // A panic while holding the lock leaves a plain set behind, still usable.
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(i: u8) -> Ipv4Net {
        Ipv4Net::new([198, 19, i, 0].into(), 24).unwrap()
    }

    #[test]
    fn the_hosts_right_after_the_gone_one_mark_it_going_round() {
        let ring = Ring::default();
        for i in 1..=10 {
            ring.insert(net(i));
        }
        assert_eq!(ring.rank_after(net(3), net(4)), Some(1));
        assert_eq!(ring.rank_after(net(3), net(8)), Some(5));
        assert_eq!(ring.rank_after(net(3), net(9)), None);
        assert_eq!(ring.rank_after(net(9), net(1)), Some(2), "round the end");
        assert_eq!(ring.rank_after(net(3), net(3)), None, "not itself");
        ring.remove(&net(4));
        assert_eq!(ring.rank_after(net(3), net(5)), Some(1));
        // A gone host this host never knew: its successors still rank.
        assert_eq!(ring.rank_after(net(11), net(1)), Some(1));
    }

    #[test]
    fn in_a_small_ring_everyone_else_marks() {
        let ring = Ring::default();
        ring.insert(net(1));
        ring.insert(net(2));
        assert_eq!(ring.rank_after(net(1), net(2)), Some(1));
        assert_eq!(ring.rank_after(net(2), net(1)), Some(1));
    }
}
