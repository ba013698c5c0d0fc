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

use crate::backend::{Identity, PeerId, TunnelPeer};
use crate::netlink::{FdbEntry, Mac, Neighbour, Route};

pub use desired::{check_side, desired, families, peer_objects, refused_parts};
pub use diff::{describe, diff, diff_applied, diff_tunnel, is_repair, owned, Actual};
pub use incremental::{update, Update};

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
