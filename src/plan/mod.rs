//! The planner: the kernel state this host should have is a pure function of the network
//! config, this host's facts and the leases it knows ([`desired`]); [`diff`] turns what the
//! kernel holds (or what was applied last) into it, and [`incremental`] moves an applied state
//! by a few changed leases without looking at the rest. No I/O here: the datapath and
//! `weftctl check` read the kernel and apply, both through this one path.

pub mod desired;
pub mod diff;
pub mod incremental;
#[cfg(test)]
pub(crate) mod testing;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

use crate::backend::{Backend, Host, Identity, PeerId, TunnelPeer};
use crate::config::BackendConfig;
use crate::netlink::{FdbEntry, Mac, Neighbour, Route};

pub use desired::{check_side, desired, families, peer_objects, refused_parts};
pub use diff::{describe, diff, diff_applied, diff_tunnel, is_repair, owned, Actual};
pub use incremental::{update, Update};

/// One backend this host runs, with this host's facts as that backend sees them in one
/// family (its own device).
#[derive(Debug, Clone, PartialEq)]
pub struct Speaker {
    pub backend: BackendConfig,
    pub host: Host,
}

/// The backends this host runs in one family, the preferred (the config's) first: one,
/// or two while the fleet moves from one to another (see [`crate::live::moving`]). Each
/// peer goes over the first one both ends speak, once its advertisement and this host's
/// have `settled` (`None`: all have); the others keep their per-peer state too (a device's
/// peers, neighbours, FDB entries), so moving a pair between them is a route replaced.
#[derive(Debug, Clone, PartialEq)]
pub struct Speakers {
    pub list: Vec<Speaker>,
    pub settled: Option<std::sync::Arc<BTreeSet<Ipv4Net>>>,
}

impl Speakers {
    /// One backend, as a host runs outside a migration.
    pub fn one(backend: BackendConfig, host: Host) -> Speakers {
        Speakers {
            list: vec![Speaker { backend, host }],
            settled: None,
        }
    }

    /// This host's facts in the family (those of the preferred backend; they differ only by
    /// device).
    pub fn host(&self) -> &Host {
        &self.list[0].host
    }

    pub fn family(&self) -> crate::subnet::Family {
        self.host().family()
    }

    /// Whether the lease of `subnet` has settled its advertisement of the preferred backend.
    fn settled(&self, subnet: Ipv4Net) -> bool {
        self.settled.as_ref().is_none_or(|s| s.contains(&subnet))
    }

    /// The devices of every backend in the family.
    pub fn devices(&self) -> impl Iterator<Item = u32> + '_ {
        self.list.iter().filter_map(|s| s.host.device)
    }

    fn backends(&self) -> impl Iterator<Item = (&dyn Backend, &Host)> {
        self.list.iter().map(|s| (s.backend.backend(), &s.host))
    }
}

/// A lease that is not programmed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub key: String,
    pub reason: String,
}

/// Where a peer is probed: the address that answers along the path its traffic takes (see
/// [`crate::probe::probe_addr`]), and the host it names (its lease's IPv4 subnet and public
/// address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeAt {
    pub addr: IpAddr,
    pub host: Ipv4Net,
    pub public_ip: IpAddr,
}

/// The whole desired state, keyed the way the kernel identifies each object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub routes: BTreeMap<IpNet, Route>,
    pub neighbours: BTreeMap<IpAddr, Neighbour>,
    pub fdb: BTreeMap<Mac, FdbEntry>,
    /// The peers held inside the backend's tunnel device, by their id there.
    pub tunnel: BTreeMap<PeerId, TunnelPeer>,
    /// The identities (VTEP MACs, public keys) of the accepted peers and of this host.
    pub identities: BTreeSet<Identity>,
    /// The accepted peers as the probes see them, by each one's subnet in the family.
    pub probes: BTreeMap<IpNet, ProbeAt>,
    pub peers: usize,
    pub skipped: Vec<Skip>,
}
