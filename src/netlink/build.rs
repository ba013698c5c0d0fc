//! Translation between weft's plain values and netlink-packet-route messages, both ways. Pure
//! functions, so the exact bytes weft sends can be unit-tested without a kernel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;

use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, InfoVxlan,
    LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::AddressFamily;

use super::types::*;

fn family_of(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

// ---------------------------------------------------------------- links

pub(crate) fn link_get_by_index(index: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m
}

pub(crate) fn link_get_by_name(name: &str) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m
}

/// A new link of `kind` with optional MTU, MAC and kind-specific data.
pub(crate) fn link_new(
    name: &str,
    kind: InfoKind,
    data: Option<InfoData>,
    mtu: Option<u32>,
    mac: Option<Mac>,
) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    if let Some(mtu) = mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(mac) = mac {
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    let mut info = vec![LinkInfo::Kind(kind)];
    if let Some(data) = data {
        info.push(LinkInfo::Data(data));
    }
    m.attributes.push(LinkAttribute::LinkInfo(info));
    m
}

pub(crate) fn vxlan_new(spec: &VxlanSpec) -> LinkMessage {
    let mut data = vec![InfoVxlan::Id(spec.vni)];
    match spec.local {
        IpAddr::V4(a) => data.push(InfoVxlan::Local(a)),
        IpAddr::V6(a) => data.push(InfoVxlan::Local6(a)),
    }
    if let Some(lower) = spec.lower {
        data.push(InfoVxlan::Link(lower));
    }
    data.push(InfoVxlan::Port(spec.effective_port()));
    data.push(InfoVxlan::Learning(spec.learning));
    if spec.gbp {
        data.push(InfoVxlan::Gbp);
    }
    link_new(
        &spec.name,
        InfoKind::Vxlan,
        Some(InfoData::Vxlan(data)),
        spec.mtu,
        spec.mac,
    )
}

pub(crate) fn veth_new(
    name: &str,
    peer: &str,
    peer_netns: Option<RawFd>,
    mtu: Option<u32>,
) -> LinkMessage {
    let mut p = LinkMessage::default();
    p.attributes.push(LinkAttribute::IfName(peer.to_string()));
    if let Some(mtu) = mtu {
        p.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(fd) = peer_netns {
        p.attributes.push(LinkAttribute::NetNsFd(fd));
    }
    link_new(
        name,
        InfoKind::Veth,
        Some(InfoData::Veth(InfoVeth::Peer(p))),
        mtu,
        None,
    )
}

/// A change to an existing link: the attributes given, nothing else.
pub(crate) fn link_set(index: u32, attributes: Vec<LinkAttribute>) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.attributes = attributes;
    m
}

pub(crate) fn link_set_up(index: u32) -> LinkMessage {
    let mut m = link_set(index, vec![]);
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m
}

pub(crate) fn link_set_hairpin(index: u32, on: bool) -> LinkMessage {
    link_set(
        index,
        vec![LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                on,
            )])),
        ])],
    )
}

pub(crate) fn link_set_vxlan_learning(index: u32, on: bool) -> LinkMessage {
    link_set(
        index,
        vec![LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![InfoVxlan::Learning(on)])),
        ])],
    )
}

pub(crate) fn parse_link(m: &LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        kind: None,
        mac: None,
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        master: None,
        vxlan: None,
        alias: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Address(a) => link.mac = <Mac>::try_from(a.as_slice()).ok(),
            LinkAttribute::Controller(i) if *i != 0 => link.master = Some(*i),
            LinkAttribute::IfAlias(a) if !a.is_empty() => link.alias = Some(a.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(v)) => link.vxlan = Some(parse_vxlan(v)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn parse_vxlan(attrs: &[InfoVxlan]) -> VxlanInfo {
    let mut info = VxlanInfo {
        vni: 0,
        port: VXLAN_DEFAULT_PORT,
        local: None,
        lower: None,
        learning: false,
        gbp: false,
    };
    for a in attrs {
        match a {
            InfoVxlan::Id(v) => info.vni = *v,
            InfoVxlan::Port(p) => info.port = *p,
            InfoVxlan::Local(a) if !a.is_unspecified() => info.local = Some(IpAddr::V4(*a)),
            InfoVxlan::Local6(a) if !a.is_unspecified() => info.local = Some(IpAddr::V6(*a)),
            InfoVxlan::Link(l) if *l != 0 => info.lower = Some(*l),
            InfoVxlan::Learning(l) => info.learning = *l,
            InfoVxlan::Gbp => info.gbp = true,
            _ => {}
        }
    }
    info
}

// ---------------------------------------------------------------- addresses

pub(crate) fn address(index: u32, net: &IpNet) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = family_of(&net.addr());
    m.header.prefix_len = net.prefix_len();
    m.header.index = index;
    // iproute2 sends both: IFA_LOCAL is the address, IFA_ADDRESS the peer (= itself here).
    m.attributes.push(AddressAttribute::Local(net.addr()));
    m.attributes.push(AddressAttribute::Address(net.addr()));
    m
}

/// An address without Duplicate Address Detection (see `Netlink::add_address_nodad`).
pub(crate) fn address_nodad(index: u32, net: &IpNet) -> AddressMessage {
    let mut m = address(index, net);
    m.header.flags |= AddressHeaderFlags::Nodad;
    m
}

pub(crate) fn parse_address(m: &AddressMessage) -> Option<Address> {
    let mut local = None;
    let mut address = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    let ip = local.or(address)?;
    let addr = IpNet::new(ip, m.header.prefix_len).ok()?;
    Some(Address {
        index: m.header.index,
        addr,
    })
}

// ---------------------------------------------------------------- routes

pub(crate) fn route_dump(family: Family) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = match family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
        Family::All => AddressFamily::Unspec,
    };
    m
}

/// The message for adding/replacing (`delete` false) or deleting `r`.
pub(crate) fn route(r: &Route, delete: bool) -> RouteMessage {
    let mut m = RouteMessage::default();
    let h = &mut m.header;
    h.address_family = family_of(&r.dst.addr());
    h.destination_prefix_length = r.dst.prefix_len();
    // Tables above 255 only fit RTA_TABLE; the header then says "unspec".
    h.table = if r.table < 256 {
        r.table as u8
    } else {
        RouteHeader::RT_TABLE_UNSPEC
    };
    if delete {
        // Match like `ip route del`: any protocol, any scope, any type, so a route that was
        // written by someone else with the same destination and next hop still goes.
        h.protocol = RouteProtocol::Unspec;
        h.scope = RouteScope::NoWhere;
        h.kind = RouteType::Unspec;
    } else {
        h.protocol = r.protocol;
        h.scope = r.scope;
        h.kind = RouteType::Unicast;
    }
    if r.onlink {
        h.flags = RouteFlags::Onlink;
    }
    if r.table >= 256 {
        m.attributes.push(RouteAttribute::Table(r.table));
    }
    if r.dst.prefix_len() > 0 {
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                r.dst.network(),
            )));
    }
    if let Some(gw) = r.gateway {
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    if let Some(oif) = r.oif {
        m.attributes.push(RouteAttribute::Oif(oif));
    }
    if let Some(metric) = r.metric {
        m.attributes.push(RouteAttribute::Priority(metric));
    }
    m
}

/// A unicast IPv4/IPv6 route; None for other types (local, broadcast, multicast, blackhole,
/// ...) and families, which [`Route`] cannot represent.
pub(crate) fn parse_route(m: &RouteMessage) -> Option<Route> {
    let h = &m.header;
    if h.kind != RouteType::Unicast {
        return None;
    }
    let unspecified = match h.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut dst = unspecified;
    let mut r = Route::new(IpNet::new(dst, 0).ok()?);
    r.table = h.table as u32;
    r.protocol = h.protocol;
    r.scope = h.scope;
    r.onlink = h.flags.contains(RouteFlags::Onlink);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_ip(d)?,
            RouteAttribute::Gateway(g) => r.gateway = route_ip(g),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::Table(t) => r.table = *t,
            RouteAttribute::Priority(p) => r.metric = Some(*p),
            _ => {}
        }
    }
    r.dst = IpNet::new(dst, h.destination_prefix_length).ok()?;
    Some(r)
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

// ---------------------------------------------------------------- neighbours and FDB

pub(crate) fn neighbour_dump(family: AddressFamily) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family;
    m
}

pub(crate) fn neighbour(n: &Neighbour) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family_of(&n.ip);
    m.header.ifindex = n.index;
    m.header.state = n.state;
    m.attributes
        .push(NeighbourAttribute::Destination(neighbour_addr(n.ip)));
    if let Some(mac) = n.mac {
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    }
    m
}

fn neighbour_addr(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }
}

pub(crate) fn parse_neighbour(m: &NeighbourMessage) -> Option<Neighbour> {
    if !matches!(m.header.family, AddressFamily::Inet | AddressFamily::Inet6)
        || m.header.flags.contains(NeighbourFlags::Proxy)
    {
        return None;
    }
    let mut ip = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(d) => ip = neighbour_ip(d),
            NeighbourAttribute::LinkLayerAddress(l) => mac = <Mac>::try_from(l.as_slice()).ok(),
            _ => {}
        }
    }
    Some(Neighbour {
        index: m.header.ifindex,
        ip: ip?,
        mac,
        state: m.header.state,
    })
}

fn neighbour_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        // AF_BRIDGE messages carry NDA_DST as raw bytes; the length says which family.
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

pub(crate) fn fdb(f: &FdbEntry) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = f.index;
    m.header.flags = NeighbourFlags::Own;
    m.header.state = if f.permanent {
        NeighbourState::Permanent
    } else {
        NeighbourState::Reachable
    };
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(f.mac.to_vec()));
    if let Some(dst) = f.dst {
        m.attributes
            .push(NeighbourAttribute::Destination(neighbour_addr(dst)));
    }
    m
}

pub(crate) fn parse_fdb(m: &NeighbourMessage) -> Option<FdbEntry> {
    if m.header.family != AddressFamily::Bridge {
        return None;
    }
    let mut mac = None;
    let mut dst = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(l) => mac = <Mac>::try_from(l.as_slice()).ok(),
            NeighbourAttribute::Destination(d) => dst = neighbour_ip(d),
            _ => {}
        }
    }
    Some(FdbEntry {
        index: m.header.ifindex,
        mac: mac?,
        dst,
        permanent: is_permanent(m.header.state),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, Parseable};

    fn round_trip_route(m: &RouteMessage) -> RouteMessage {
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        RouteMessage::parse(buf.as_slice()).unwrap()
    }

    #[test]
    fn flannel_route_survives_encoding() {
        let r = Route::new("198.19.2.0/24".parse().unwrap())
            .via("198.19.2.0".parse().unwrap())
            .dev(5)
            .onlink();
        let m = route(&r, false);
        assert_eq!(m.header.table, 254);
        assert_eq!(m.header.kind, RouteType::Unicast);
        assert!(m.header.flags.contains(RouteFlags::Onlink));
        assert_eq!(parse_route(&round_trip_route(&m)), Some(r));
    }

    #[test]
    fn big_table_goes_in_rta_table() {
        let r = Route::new("198.19.0.0/16".parse().unwrap())
            .dev(3)
            .table(1000)
            .metric(20);
        let m = route(&r, false);
        assert_eq!(m.header.table, 0);
        assert!(m.attributes.contains(&RouteAttribute::Table(1000)));
        assert_eq!(parse_route(&round_trip_route(&m)), Some(r));
    }

    #[test]
    fn delete_matches_any_protocol_and_scope() {
        let r = Route::new("198.19.0.0/16".parse().unwrap()).dev(3);
        let m = route(&r, true);
        assert_eq!(m.header.protocol, RouteProtocol::Unspec);
        assert_eq!(m.header.scope, RouteScope::NoWhere);
    }

    #[test]
    fn non_unicast_routes_are_not_reported() {
        let mut m = route(&Route::new("198.19.0.0/16".parse().unwrap()), false);
        m.header.kind = RouteType::Local;
        assert_eq!(parse_route(&m), None);
    }

    #[test]
    fn fdb_entry_round_trips() {
        let f = FdbEntry {
            index: 7,
            mac: [0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44],
            dst: Some("198.18.0.2".parse().unwrap()),
            permanent: true,
        };
        let m = fdb(&f);
        assert!(m.header.flags.contains(NeighbourFlags::Own));
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        let back = NeighbourMessage::parse(buf.as_slice()).unwrap();
        assert_eq!(parse_fdb(&back), Some(f));
    }

    #[test]
    fn neighbour_round_trips() {
        let n = Neighbour::permanent(3, "198.19.2.0".parse().unwrap(), [2, 0, 0, 0, 0, 1]);
        let m = neighbour(&n);
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        let back = NeighbourMessage::parse(buf.as_slice()).unwrap();
        assert_eq!(parse_neighbour(&back), Some(n));
    }

    #[test]
    fn vxlan_request_carries_every_setting() {
        let spec = VxlanSpec {
            name: "flannel.1".into(),
            vni: 1,
            port: 0,
            local: "198.18.0.1".parse().unwrap(),
            lower: Some(2),
            learning: false,
            gbp: true,
            mtu: Some(1450),
            mac: Some([2, 0, 0, 0, 0, 9]),
        };
        let l = parse_link(&vxlan_new(&spec));
        assert_eq!(l.name, "flannel.1");
        assert_eq!(l.mtu, 1450);
        assert_eq!(l.mac, Some([2, 0, 0, 0, 0, 9]));
        assert_eq!(l.kind.as_deref(), Some("vxlan"));
        assert_eq!(
            l.vxlan,
            Some(VxlanInfo {
                vni: 1,
                port: 8472,
                local: Some("198.18.0.1".parse().unwrap()),
                lower: Some(2),
                learning: false,
                gbp: true,
            })
        );
    }

    #[test]
    fn address_uses_local_and_prefix() {
        let net: IpNet = "198.19.1.0/32".parse().unwrap();
        let m = address(4, &net);
        assert_eq!(
            parse_address(&m),
            Some(Address {
                index: 4,
                addr: net
            })
        );
    }

    #[test]
    fn nodad_address_carries_the_flag_and_nothing_else_changes() {
        let net: IpNet = "2001:db8:42::1/64".parse().unwrap();
        let m = address_nodad(4, &net);
        assert_eq!(m.header.flags, AddressHeaderFlags::Nodad);
        assert_eq!(m.attributes, address(4, &net).attributes);
        assert!(address(4, &net).header.flags.is_empty());
    }
}
