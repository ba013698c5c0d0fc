//! What a backend deals in on the kernel side: this host's facts, the objects one peer
//! becomes, the device a backend needs (made ready by the backend's own [`DeviceKind`]) and a
//! tunnel device's own peers ([`Tunnel`]). Only with the daemon.

use std::any::Any;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::iface::ExtIface;
use crate::netlink::{FdbEntry, Mac, Neighbour, Netlink, NetlinkError, Route};
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

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.what, self.value)
    }
}

/// The kernel objects one remote lease calls for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerObjects {
    pub route: Option<Route>,
    pub neighbour: Option<Neighbour>,
    pub fdb: Option<FdbEntry>,
    /// A peer held inside the backend's tunnel device (WireGuard's).
    pub tunnel: Option<TunnelPeer>,
}

/// What this host keeps for its backend between runs (WireGuard's private key), loaded once
/// at start-up by [`super::Backend::load_secrets`] and read only by the backend that loaded
/// it. Never shown.
#[derive(Clone, Default)]
pub struct HostSecrets(pub Option<Arc<dyn Any + Send + Sync>>);

impl fmt::Debug for HostSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "HostSecrets(hidden)"
        } else {
            "HostSecrets(none)"
        })
    }
}

impl HostSecrets {
    /// The secret a backend stored, if it is of type `T`.
    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.0.as_ref()?.downcast_ref()
    }
}

/// A device a backend needs: its name and MTU, which the core uses, and the backend's own
/// description of it, which only the backend's code reads.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub name: String,
    pub mtu: u32,
    pub kind: Arc<dyn DeviceKind>,
}

/// A backend's kind of device: how it is made ready, and its peers if it holds any.
pub trait DeviceKind: fmt::Debug + Send + Sync {
    /// Creates the device or adopts the one that is there; `mac` is the MAC this host's lease
    /// advertises, for a device that has to be created.
    fn ensure(
        &self,
        nl: &mut Netlink,
        spec: &DeviceSpec,
        mac: Option<Mac>,
    ) -> Result<Device, DeviceError>;

    /// The device's own peers, for a device that holds them (WireGuard's) when this family's
    /// pass manages them; `None` otherwise. The tunnel is kept for the device's life, so it
    /// may remember what it did.
    fn tunnel(&self, _spec: &DeviceSpec) -> Option<Box<dyn Tunnel>> {
        None
    }

    /// The backend's own description, for the backend that made it.
    fn as_any(&self) -> &dyn Any;
}

/// What [`DeviceKind::ensure`] found and did.
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
    /// What the backend's own code for the device reports.
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

/// What identifies a peer on its tunnel device (WireGuard's public key).
pub type PeerId = Vec<u8>;

/// A peer held inside a tunnel device, as the backend that owns the device models it. The
/// core stores, compares and hands such peers back to the device without knowing what they
/// are.
pub trait DevicePeer: fmt::Debug + Send + Sync {
    fn id(&self) -> PeerId;
    /// Whether `other` is the same peer with the same settings (as the device compares them).
    fn same(&self, other: &dyn DevicePeer) -> bool;
    /// A short description, for logs and `weftctl check`.
    fn describe(&self) -> String;
    fn as_any(&self) -> &dyn Any;
    /// The peer's latest handshake, for a tunnel that has them (WireGuard): metrics only.
    fn handshake(&self) -> Option<Handshake> {
        None
    }
}

/// When a tunnel device last completed a handshake with one peer, named as an operator
/// knows the peer (its subnet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub peer: String,
    /// None: never.
    pub last: Option<std::time::SystemTime>,
}

/// A shared [`DevicePeer`]; equal when the device would call the peers the same.
#[derive(Debug, Clone)]
pub struct TunnelPeer(pub Arc<dyn DevicePeer>);

impl TunnelPeer {
    pub fn id(&self) -> PeerId {
        self.0.id()
    }

    pub fn describe(&self) -> String {
        self.0.describe()
    }
}

impl PartialEq for TunnelPeer {
    fn eq(&self, other: &TunnelPeer) -> bool {
        self.0.same(&*other.0)
    }
}

impl Eq for TunnelPeer {}

/// A change of a tunnel device's peers: peers set (added, or replaced whole), peers removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelChange {
    pub set: Vec<TunnelPeer>,
    pub remove: Vec<TunnelPeer>,
}

impl TunnelChange {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// A device that holds peers of its own (WireGuard's). Such a device tells nobody when its
/// peers change, so the datapath reads them back; reading and writing them is the backend's.
pub trait Tunnel: Send {
    /// The peers the device holds now.
    fn read(&mut self, nl: &mut Netlink) -> Result<Vec<TunnelPeer>, DeviceError>;

    /// Applies `change`; `held` says whether the device holds a peer already. Returns the
    /// peers of `change.set` that only finish what an earlier write began (a device may take
    /// a new peer in two steps), which are not drift.
    fn write(
        &mut self,
        nl: &mut Netlink,
        change: &TunnelChange,
        held: &dyn Fn(&PeerId) -> bool,
    ) -> Result<Vec<PeerId>, DeviceError>;
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
