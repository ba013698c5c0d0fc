//! What a backend deals in on the kernel side: this host's facts, the objects one peer
//! becomes, the device a backend needs and how it is brought up. Only with the daemon.

use std::net::IpAddr;

use ipnet::IpNet;

use super::wgdev::WgDeviceError;
use super::wireguard::{Key, WgPeer};
use crate::iface::ExtIface;
use crate::netlink::{FdbEntry, Mac, Neighbour, Netlink, NetlinkError, Route, VxlanSpec};
use crate::subnet::Family;

/// Facts about this host the desired state of one family depends on; the family is that of
/// `public_ip`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub public_ip: IpAddr,
    /// The external (underlay) interface.
    pub ext_index: u32,
    /// The external interface's networks of the family: a peer inside one is reachable
    /// without a gateway (DirectRouting, host-gw).
    pub ext_networks: Vec<IpNet>,
    /// The backend's device for the family, when it has one and it exists.
    pub device: Option<u32>,
    /// This host's public address in the other family, if it has one.
    pub other_public_ip: Option<IpAddr>,
}

impl Host {
    /// This host's facts in `family`; `None` when the external interface has none.
    pub fn new(ext: &ExtIface, family: Family, device: Option<u32>) -> Option<Host> {
        Some(Host {
            public_ip: ext.public(family)?,
            ext_index: ext.index,
            ext_networks: ext.networks_of(family),
            device,
            other_public_ip: Family::ALL
                .into_iter()
                .find(|f| *f != family)
                .and_then(|f| ext.public(f)),
        })
    }

    pub fn family(&self) -> Family {
        Family::of(self.public_ip)
    }

    /// Whether a peer at `ip` is on a network of the external interface (no gateway between).
    pub fn reaches_directly(&self, ip: IpAddr) -> bool {
        self.ext_networks.iter().any(|n| n.contains(&ip))
    }

    /// A route to `subnet` through a peer on the external interface's network.
    pub fn direct_route(&self, subnet: IpNet, public_ip: IpAddr) -> Route {
        let mut r = Route::new(subnet);
        r.gateway = Some(public_ip);
        r.oif = Some(self.ext_index);
        r
    }
}

/// A remote lease as a backend sees it, in one family, once the rules every backend shares
/// have accepted it.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    pub subnet: IpNet,
    pub public_ip: IpAddr,
    /// `BackendData` (`BackendV6Data` for IPv6).
    pub data: Option<&'a serde_json::Value>,
    /// The whole lease, for a backend whose one device carries both families.
    pub lease: &'a crate::lease::Lease,
}

/// What makes a lease's backend data one host's and no other's: `what` names it in messages
/// ("VtepMAC"), `value` is its canonical text, so two spellings of one value are one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity {
    pub what: &'static str,
    pub value: String,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.what, self.value)
    }
}

/// The kernel objects one remote lease calls for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerObjects {
    pub route: Option<Route>,
    pub neighbour: Option<Neighbour>,
    pub fdb: Option<FdbEntry>,
    /// A peer of the backend's tunnel device (WireGuard), keyed by its public key.
    pub tunnel: Option<WgPeer>,
}

/// What this host keeps for its backend between runs (WireGuard's private key), loaded once
/// at start-up by [`super::Backend::load_secrets`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HostSecrets {
    pub private_key: Option<Key>,
}

impl std::fmt::Debug for HostSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = self.private_key.map(|_| "(hidden)");
        f.debug_struct("HostSecrets")
            .field("private_key", &key)
            .finish()
    }
}

/// A device a backend needs: its name, MTU, and how to create it.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub name: String,
    pub mtu: u32,
    pub link: LinkSpec,
}

impl DeviceSpec {
    /// Whether the device holds peers of its own (WireGuard), which must be read back: such
    /// a device tells nobody when they change.
    pub fn has_peers(&self) -> bool {
        matches!(&self.link, LinkSpec::Wireguard(w) if w.peers)
    }
}

/// How a device is created; read back by the backend that asked for it.
#[derive(Debug, Clone)]
pub enum LinkSpec {
    Vxlan(VxlanSpec),
    Wireguard(WgSpec),
}

/// A WireGuard device: the port it listens on and this host's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgSpec {
    pub port: u16,
    pub secrets: HostSecrets,
    /// Whether this family's pass manages the device's peers: with one device for both
    /// families the IPv4 pass does, for both.
    pub peers: bool,
}

/// What [`super::Backend::ensure_device`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub index: u32,
    /// None for a device without one (WireGuard's).
    pub mac: Option<Mac>,
    pub mtu: u32,
    /// True when the device was (re)created rather than adopted.
    pub created: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("device {0} vanished while it was being set up")]
    Vanished(String),
    #[error("device {0} is not a device this backend creates")]
    Foreign(String),
    #[error(transparent)]
    Tunnel(#[from] WgDeviceError),
    #[error("device {0} cannot be set up without this host's key")]
    NoKey(String),
}

/// Gives a device exactly one address of the subnet's family: `<subnet ip>/32` (`/128`). An
/// address left from an earlier lease (another subnet) is removed; IPv6 link-local addresses
/// are the kernel's and stay.
pub fn ensure_address(nl: &mut Netlink, index: u32, subnet: IpNet) -> Result<bool, NetlinkError> {
    let family = Family::of(subnet.addr());
    let want = IpNet::new(subnet.network(), family.bits()).expect("a full-length prefix is valid");
    let mut changed = false;
    let mut present = false;
    for a in nl.addresses(Some(index))? {
        let ip = a.addr.addr();
        if a.addr == want {
            present = true;
        } else if Family::of(ip) == family
            && !matches!(ip, IpAddr::V6(v6) if crate::subnet::is_link_local6(v6))
        {
            nl.del_address(index, a.addr)?;
            changed = true;
        }
    }
    if !present {
        // The address is this host's own in the overlay, unique by its lease: no duplicate
        // detection, so it is usable at once rather than tentative for a second or two.
        nl.add_address_nodad(index, want)?;
        changed = true;
    }
    Ok(changed)
}
