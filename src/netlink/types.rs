//! The kernel objects weft manipulates, as plain comparable values, and how each one is written
//! in an error message (close to iproute2's spelling so operators recognise it).

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
pub use netlink_packet_route::neighbour::NeighbourState;
use netlink_packet_route::route::RouteHeader;
pub use netlink_packet_route::route::{RouteProtocol, RouteScope};

use super::NetlinkError;

/// An Ethernet address.
pub type Mac = [u8; 6];

/// The main routing table.
pub const RT_TABLE_MAIN: u32 = RouteHeader::RT_TABLE_MAIN as u32;
/// Route protocol "boot": what `ip route add` and flannel write, and what weft writes.
pub const RTPROT_BOOT: RouteProtocol = RouteProtocol::Boot;
/// Route protocol "kernel": routes the kernel derives from addresses.
pub const RTPROT_KERNEL: RouteProtocol = RouteProtocol::Kernel;
/// Neighbour state `NUD_PERMANENT`: never ages out.
pub const NUD_PERMANENT: NeighbourState = NeighbourState::Permanent;

/// The VXLAN UDP port the Linux kernel uses by default (flannel's "Port": 0).
pub const VXLAN_DEFAULT_PORT: u16 = 8472;

/// "c6:d2:32:6f:8f:44".
pub fn format_mac(m: &Mac) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Parses six colon-separated hex bytes ("c6:d2:32:6f:8f:44"; upper case is fine).
pub fn parse_mac(s: &str) -> Result<Mac, NetlinkError> {
    let bad = || NetlinkError::InvalidMac(s.to_string());
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in mac.iter_mut() {
        let p = parts.next().ok_or_else(bad)?;
        if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

/// Which address family to dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
    All,
}

impl From<crate::subnet::Family> for Family {
    fn from(f: crate::subnet::Family) -> Family {
        match f {
            crate::subnet::Family::V4 => Family::V4,
            crate::subnet::Family::V6 => Family::V6,
        }
    }
}

/// A network device as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// IFLA_INFO_KIND: "bridge", "vxlan", "veth", "dummy", ...; None for physical devices.
    pub kind: Option<String>,
    pub mac: Option<Mac>,
    pub mtu: u32,
    /// The administrative state (IFF_UP), not the carrier.
    pub up: bool,
    /// The bridge (or other master) this device is enslaved to.
    pub master: Option<u32>,
    /// Set for VXLAN devices.
    pub vxlan: Option<VxlanInfo>,
    /// The description an operator or a program gave it (IFLA_IFALIAS, `ip link set alias`).
    pub alias: Option<String>,
}

/// The VXLAN settings weft cares about, read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VxlanInfo {
    pub vni: u32,
    /// The destination UDP port (8472 when created with port 0).
    pub port: u16,
    pub local: Option<IpAddr>,
    /// The lower (underlay) device index.
    pub lower: Option<u32>,
    pub learning: bool,
    pub gbp: bool,
}

/// What to create with [`Netlink::create_vxlan`](super::Netlink::create_vxlan).
#[derive(Debug, Clone)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    /// 0 means the kernel default, 8472 (flannel's convention).
    pub port: u16,
    pub local: IpAddr,
    pub lower: Option<u32>,
    pub learning: bool,
    pub gbp: bool,
    pub mtu: Option<u32>,
    pub mac: Option<Mac>,
}

impl VxlanSpec {
    /// The port the device will really use.
    pub fn effective_port(&self) -> u16 {
        if self.port == 0 {
            VXLAN_DEFAULT_PORT
        } else {
            self.port
        }
    }

    /// True when an existing device's identity (VNI, port, local address, lower device, GBP)
    /// matches this spec. Learning and MTU can be changed in place, so they do not count.
    pub fn matches(&self, info: &VxlanInfo) -> bool {
        info.vni == self.vni
            && info.port == self.effective_port()
            && info.local == Some(self.local)
            && (self.lower.is_none() || info.lower == self.lower)
            && info.gbp == self.gbp
    }
}

/// An address on a device.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    pub index: u32,
    pub addr: IpNet,
}

/// A unicast route.
///
/// weft writes its routes with protocol "boot" (3), the same as `ip route add` and flannel, so a
/// node moving from flanneld to weftd keeps its routes byte for byte; what is weft's is decided
/// by destination (inside the overlay network) and device, never by protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    /// RTNH_F_ONLINK: the gateway is on the link even though no address says so.
    pub onlink: bool,
    /// 254 is the main table.
    pub table: u32,
    /// Who made the route; see [`RTPROT_BOOT`].
    pub protocol: RouteProtocol,
    /// Universe for routes via a gateway, link for device routes.
    pub scope: RouteScope,
    /// RTA_PRIORITY. None is metric 0 for IPv4; the kernel picks 1024 for IPv6.
    pub metric: Option<u32>,
}

impl Route {
    /// A route to `dst` in the main table, protocol boot, scope universe, no gateway yet.
    pub fn new(dst: IpNet) -> Self {
        Route {
            dst,
            gateway: None,
            oif: None,
            onlink: false,
            table: RT_TABLE_MAIN,
            protocol: RTPROT_BOOT,
            scope: RouteScope::Universe,
            metric: None,
        }
    }

    /// Sets the gateway.
    pub fn via(mut self, gateway: IpAddr) -> Self {
        self.gateway = Some(gateway);
        self
    }

    /// Sets the output device.
    pub fn dev(mut self, oif: u32) -> Self {
        self.oif = Some(oif);
        self
    }

    /// Marks the gateway as on-link (flannel's VXLAN routes).
    pub fn onlink(mut self) -> Self {
        self.onlink = true;
        self
    }

    /// Sets the table.
    pub fn table(mut self, table: u32) -> Self {
        self.table = table;
        self
    }

    /// Sets the metric.
    pub fn metric(mut self, metric: u32) -> Self {
        self.metric = Some(metric);
        self
    }

    /// Sets the scope (e.g. link for a device route without gateway).
    pub fn scope(mut self, scope: RouteScope) -> Self {
        self.scope = scope;
        self
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev {oif}")?;
        }
        if self.onlink {
            write!(f, " onlink")?;
        }
        if self.table != RT_TABLE_MAIN {
            write!(f, " table {}", self.table)?;
        }
        if let Some(m) = self.metric {
            write!(f, " metric {m}")?;
        }
        Ok(())
    }
}

/// An ARP (IPv4) or NDP (IPv6) neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub index: u32,
    pub ip: IpAddr,
    pub mac: Option<Mac>,
    /// NUD_* bits, e.g. [`NUD_PERMANENT`].
    pub state: NeighbourState,
}

impl Neighbour {
    /// A permanent entry, as flannel writes for each remote VTEP.
    pub fn permanent(index: u32, ip: IpAddr, mac: Mac) -> Self {
        Neighbour {
            index,
            ip,
            mac: Some(mac),
            state: NUD_PERMANENT,
        }
    }
}

impl fmt::Display for Neighbour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.ip)?;
        if let Some(mac) = &self.mac {
            write!(f, " lladdr {}", format_mac(mac))?;
        }
        write!(f, " dev {} nud {}", self.index, nud_name(self.state))
    }
}

/// Whether a neighbour or FDB state has the permanent bit (the kernel's states are bits).
pub fn is_permanent(state: NeighbourState) -> bool {
    u16::from(state) & u16::from(NeighbourState::Permanent) != 0
}

/// iproute2's name of a neighbour state (netlink-packet-route spells them the same); a state
/// it has no name for as a number.
fn nud_name(state: NeighbourState) -> String {
    match state {
        NeighbourState::None | NeighbourState::Other(_) => format!("{:#x}", u16::from(state)),
        known => known.to_string(),
    }
}

/// A bridge forwarding database entry on a device itself (NTF_SELF), e.g. a VXLAN remote:
/// `bridge fdb append MAC dev flannel.1 dst 198.18.0.2 self permanent`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FdbEntry {
    pub index: u32,
    pub mac: Mac,
    /// The remote VTEP (NDA_DST) for VXLAN entries.
    pub dst: Option<IpAddr>,
    pub permanent: bool,
}

impl fmt::Display for FdbEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} dev {}", format_mac(&self.mac), self.index)?;
        if let Some(dst) = self.dst {
            write!(f, " dst {dst}")?;
        }
        write!(f, " self")?;
        if self.permanent {
            write!(f, " permanent")?;
        }
        Ok(())
    }
}

/// One change for [`Netlink::apply`](super::Netlink::apply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    ReplaceRoute(Route),
    /// Not-found counts as success.
    DelRoute(Route),
    ReplaceNeighbour(Neighbour),
    /// Not-found counts as success.
    DelNeighbour(Neighbour),
    ReplaceFdb(FdbEntry),
    /// Not-found counts as success.
    DelFdb(FdbEntry),
    /// Already-present counts as success.
    AddAddress(u32, IpNet),
    /// Not-found counts as success.
    DelAddress(u32, IpNet),
}

impl Op {
    /// Whether this failure is really the desired end state (deleting what is gone, adding an
    /// address that is there).
    pub(crate) fn tolerates(&self, e: &NetlinkError) -> bool {
        match self {
            Op::DelRoute(_) | Op::DelNeighbour(_) | Op::DelFdb(_) | Op::DelAddress(..) => {
                e.is_not_found()
            }
            Op::AddAddress(..) => e.is_exists(),
            Op::ReplaceRoute(_) | Op::ReplaceNeighbour(_) | Op::ReplaceFdb(_) => false,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::ReplaceRoute(r) => write!(f, "replace route {r}"),
            Op::DelRoute(r) => write!(f, "delete route {r}"),
            Op::ReplaceNeighbour(n) => write!(f, "replace neighbour {n}"),
            Op::DelNeighbour(n) => write!(f, "delete neighbour {n}"),
            Op::ReplaceFdb(e) => write!(f, "replace fdb entry {e}"),
            Op::DelFdb(e) => write!(f, "delete fdb entry {e}"),
            Op::AddAddress(i, a) => write!(f, "add address {a} dev {i}"),
            Op::DelAddress(i, a) => write!(f, "delete address {a} dev {i}"),
        }
    }
}

/// A kernel change notification, reduced to what tells a reconciler where to look.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    Link {
        index: u32,
        deleted: bool,
        /// The device's MAC as the notification carries it.
        mac: Option<Mac>,
    },
    Route {
        dst: IpNet,
        deleted: bool,
    },
    Neighbour {
        index: u32,
        deleted: bool,
    },
    Address {
        index: u32,
        deleted: bool,
    },
    /// The kernel dropped notifications (ENOBUFS): anything may have changed, resync fully.
    Overflow,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m = parse_mac("c6:d2:32:6f:8f:44").unwrap();
        assert_eq!(m, [0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]);
        assert_eq!(format_mac(&m), "c6:d2:32:6f:8f:44");
        assert_eq!(parse_mac("C6:D2:32:6F:8F:44").unwrap(), m);
        assert_eq!(format_mac(&[0, 1, 2, 3, 4, 5]), "00:01:02:03:04:05");
    }

    #[test]
    fn mac_rejects_garbage() {
        for bad in [
            "",
            "c6:d2:32:6f:8f",
            "c6:d2:32:6f:8f:44:00",
            "c6-d2-32-6f-8f-44",
            "c6:d2:32:6f:8f:4g",
            "c6:d2:32:6f:8f:",
            "c6:d2:32:6f:8f:444",
            "+6:d2:32:6f:8f:44",
        ] {
            let e = parse_mac(bad).unwrap_err();
            assert!(e.to_string().contains("invalid MAC"), "{bad}: {e}");
        }
    }

    #[test]
    fn route_builder_and_display() {
        let dst: IpNet = "198.19.2.0/24".parse().unwrap();
        let r = Route::new(dst)
            .via("198.19.2.0".parse().unwrap())
            .dev(5)
            .onlink();
        assert_eq!(r.table, RT_TABLE_MAIN);
        assert_eq!(r.protocol, RTPROT_BOOT);
        assert_eq!(r.to_string(), "198.19.2.0/24 via 198.19.2.0 dev 5 onlink");
        assert_eq!(
            Op::ReplaceRoute(r).to_string(),
            "replace route 198.19.2.0/24 via 198.19.2.0 dev 5 onlink"
        );
        let r = Route::new(dst).table(1000).metric(7);
        assert_eq!(r.to_string(), "198.19.2.0/24 table 1000 metric 7");
    }

    #[test]
    fn neighbour_and_fdb_display() {
        let mac = parse_mac("c6:d2:32:6f:8f:44").unwrap();
        let n = Neighbour::permanent(4, "198.19.2.0".parse().unwrap(), mac);
        assert_eq!(
            n.to_string(),
            "198.19.2.0 lladdr c6:d2:32:6f:8f:44 dev 4 nud permanent"
        );
        let f = FdbEntry {
            index: 4,
            mac,
            dst: Some("198.18.0.2".parse().unwrap()),
            permanent: true,
        };
        assert_eq!(
            f.to_string(),
            "c6:d2:32:6f:8f:44 dev 4 dst 198.18.0.2 self permanent"
        );
    }

    #[test]
    fn vxlan_spec_matching_ignores_learning() {
        let spec = VxlanSpec {
            name: "flannel.1".into(),
            vni: 1,
            port: 0,
            local: "198.18.0.1".parse().unwrap(),
            lower: Some(2),
            learning: false,
            gbp: false,
            mtu: Some(1450),
            mac: None,
        };
        let mut info = VxlanInfo {
            vni: 1,
            port: 8472,
            local: Some("198.18.0.1".parse().unwrap()),
            lower: Some(2),
            learning: true,
            gbp: false,
        };
        assert!(spec.matches(&info));
        info.port = 4789;
        assert!(!spec.matches(&info));
    }
}
