//! The prober follows the datapath: it probes exactly the peers every family programs, and
//! is told only what changed, so a lease event costs it nothing that grows with the fleet.

use std::collections::BTreeMap;
use std::sync::Arc;

use ipnet::IpNet;

use crate::plan::{Desired, ProbeAt};
use crate::probe::{Prober, Target};

#[derive(Default)]
pub(super) struct ProbeSync {
    prober: Option<Arc<Prober>>,
    /// The targets the prober was last given.
    sent: BTreeMap<IpNet, ProbeAt>,
}

impl ProbeSync {
    pub fn new(prober: Option<Arc<Prober>>) -> ProbeSync {
        ProbeSync {
            prober,
            sent: BTreeMap::new(),
        }
    }

    /// Points the prober at every peer of `applied` (each family's programmed state),
    /// changing only what differs from what it was last given.
    pub fn programmed<'a>(&mut self, applied: impl Iterator<Item = &'a Desired>) {
        let now: BTreeMap<IpNet, ProbeAt> = applied
            .flat_map(|a| a.probes.iter().map(|(k, v)| (*k, *v)))
            .collect();
        let removed = (self.sent.keys())
            .filter(|k| !now.contains_key(*k))
            .copied()
            .collect();
        let set = (now.iter())
            .filter(|(k, v)| self.sent.get(*k) != Some(*v))
            .map(|(k, v)| (*k, *v))
            .collect();
        self.change(removed, set);
    }

    /// Hands the prober a change of its targets, whose ids are the peers' subnets.
    pub fn change(&mut self, removed: Vec<IpNet>, set: Vec<(IpNet, ProbeAt)>) {
        if removed.is_empty() && set.is_empty() {
            return;
        }
        for k in &removed {
            self.sent.remove(k);
        }
        self.sent.extend(set.iter().copied());
        let Some(prober) = &self.prober else {
            return;
        };
        let remove: Vec<String> = removed.iter().map(|k| k.to_string()).collect();
        let set = (set.into_iter())
            .map(|(id, at)| Target {
                id: id.to_string(),
                addr: at.addr,
                host: at.host,
                public_ip: at.public_ip,
            })
            .collect();
        prober.change(set, &remove);
    }
}
