//! Property tests of what weft reads from the kernel: datagrams split into messages, error
//! and done payloads with extended acks, notifications reduced to changes, and the typed
//! link/address/route/neighbour/FDB readers behind netlink-packet-route's decoder. Arbitrary
//! bytes never panic; what weft builds reads back the same. `PROPTEST_CASES` sets how many
//! cases each property runs (256 by default).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLMSG_DONE, NLMSG_ERROR};
use netlink_packet_route::RouteNetlinkMessage;
use proptest::prelude::*;

use super::build;
use super::monitor::parse_changes;
use super::socket::{align4, encode, parse_done, parse_error, split};
use super::{FdbEntry, Neighbour, Route, RouteProtocol, RouteScope};

/// The message types a NETLINK_ROUTE socket hands weft.
const TYPES: &[u16] = &[
    NLMSG_ERROR,
    NLMSG_DONE,
    libc::RTM_NEWLINK,
    libc::RTM_DELLINK,
    libc::RTM_NEWADDR,
    libc::RTM_DELADDR,
    libc::RTM_NEWROUTE,
    libc::RTM_DELROUTE,
    libc::RTM_NEWNEIGH,
    libc::RTM_DELNEIGH,
];

/// One message with a consistent header and any payload: what a kernel (or a confused one)
/// could send, so the decoders behind the header get exercised, not just the length check.
fn message() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(TYPES),
        any::<u16>(),
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..256),
        any::<bool>(),
    )
        .prop_map(|(ty, flags, seq, payload, pad)| {
            let mut v = Vec::with_capacity(16 + payload.len());
            v.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
            v.extend_from_slice(&ty.to_ne_bytes());
            v.extend_from_slice(&flags.to_ne_bytes());
            v.extend_from_slice(&seq.to_ne_bytes());
            v.extend_from_slice(&0u32.to_ne_bytes());
            v.extend_from_slice(&payload);
            if pad {
                v.resize(align4(v.len()), 0);
            }
            v
        })
}

fn datagram() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<Vec<u8>>(),
        prop::collection::vec(message(), 0..4).prop_map(|m| m.concat()),
    ]
}

/// Everything weft does with a datagram it receives, as the dump, get, pipeline and monitor
/// paths do it.
fn read_all(d: &[u8]) {
    let _ = parse_changes(d);
    for m in split(d) {
        let Ok(m) = m else { break };
        match m.ty {
            NLMSG_ERROR => {
                let _ = parse_error(m.flags, m.payload);
            }
            NLMSG_DONE => {
                let _ = parse_done(m.flags, m.payload);
            }
            _ => {}
        }
        let Ok(nl) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(m.whole) else {
            continue;
        };
        if let NetlinkPayload::InnerMessage(inner) = nl.payload {
            match inner {
                RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l) => {
                    let _ = build::parse_link(&l);
                }
                RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => {
                    let _ = build::parse_address(&a);
                }
                RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => {
                    let _ = build::parse_route(&r);
                }
                RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
                    let _ = build::parse_neighbour(&n);
                    let _ = build::parse_fdb(&n);
                }
                _ => {}
            }
        }
    }
}

/// The message as it crosses the socket: encoded, split out of a datagram, decoded.
fn over_the_wire(msg: RouteNetlinkMessage) -> RouteNetlinkMessage {
    let mut d = Vec::new();
    encode(msg, 0, 1, &mut d);
    let raw = split(&d).next().unwrap().unwrap();
    match NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw.whole)
        .unwrap()
        .payload
    {
        NetlinkPayload::InnerMessage(m) => m,
        other => panic!("not a route message: {other:?}"),
    }
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
    ]
}

fn route() -> impl Strategy<Value = Route> {
    (
        any::<bool>(),
        any::<u128>(),
        0u8..=128,
        proptest::option::of(any::<u128>()),
        proptest::option::of(any::<u32>()),
        any::<bool>(),
        any::<u32>(),
        any::<u8>(),
        any::<u8>(),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(
            |(v6, a, len, gw, oif, onlink, table, protocol, scope, metric)| {
                let (dst, gateway) = if v6 {
                    let dst = IpNet::new(Ipv6Addr::from(a).into(), len).unwrap();
                    (dst, gw.map(|g| IpAddr::V6(Ipv6Addr::from(g))))
                } else {
                    let dst = IpNet::new(Ipv4Addr::from(a as u32).into(), len % 33).unwrap();
                    (dst, gw.map(|g| IpAddr::V4(Ipv4Addr::from(g as u32))))
                };
                Route {
                    dst: dst.trunc(),
                    gateway,
                    oif,
                    onlink,
                    table,
                    protocol: RouteProtocol::from(protocol),
                    scope: RouteScope::from(scope),
                    metric,
                }
            },
        )
}

proptest! {
    #[test]
    fn datagrams_never_panic(d in datagram()) {
        read_all(&d);
    }

    #[test]
    fn routes_round_trip(r in route()) {
        let RouteNetlinkMessage::NewRoute(m) =
            over_the_wire(RouteNetlinkMessage::NewRoute(build::route(&r, false)))
        else {
            panic!("not a route");
        };
        prop_assert_eq!(build::parse_route(&m), Some(r.clone()));
        // A notification of it names its destination.
        let mut d = Vec::new();
        encode(RouteNetlinkMessage::DelRoute(build::route(&r, true)), 0, 1, &mut d);
        prop_assert_eq!(
            parse_changes(&d),
            vec![super::Change::Route { dst: r.dst, deleted: true }]
        );
    }

    #[test]
    fn neighbours_and_fdb_entries_round_trip(
        index in 1u32..,
        addr in ip(),
        mac in any::<[u8; 6]>(),
        dst in proptest::option::of(ip()),
        permanent in any::<bool>(),
    ) {
        let n = Neighbour::permanent(index, addr, mac);
        let RouteNetlinkMessage::NewNeighbour(m) =
            over_the_wire(RouteNetlinkMessage::NewNeighbour(build::neighbour(&n)))
        else {
            panic!("not a neighbour");
        };
        prop_assert_eq!(build::parse_neighbour(&m), Some(n));
        let f = FdbEntry { index, mac, dst, permanent };
        let RouteNetlinkMessage::NewNeighbour(m) =
            over_the_wire(RouteNetlinkMessage::NewNeighbour(build::fdb(&f)))
        else {
            panic!("not an FDB entry");
        };
        prop_assert_eq!(build::parse_fdb(&m), Some(f));
    }

    #[test]
    fn addresses_round_trip(index in 1u32.., addr in ip(), len in 0u8..=128) {
        let net = match addr {
            IpAddr::V4(_) => IpNet::new(addr, len % 33).unwrap(),
            IpAddr::V6(_) => IpNet::new(addr, len).unwrap(),
        };
        let RouteNetlinkMessage::NewAddress(m) =
            over_the_wire(RouteNetlinkMessage::NewAddress(build::address(index, &net)))
        else {
            panic!("not an address");
        };
        prop_assert_eq!(build::parse_address(&m), Some(super::Address { index, addr: net }));
    }
}
