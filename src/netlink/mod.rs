//! weft's synchronous netlink layer: typed link, address, route, neighbour and FDB operations on
//! one NETLINK_ROUTE socket bound to one network namespace, plus a pipelined [`Netlink::apply`]
//! that programs thousands of objects per call, and a [`Monitor`] for change notifications.
//! No async runtime: weftd calls it from a blocking thread, the CNI plugin from `main`.
//!
//! Semantics shared by every call: deleting something that is not there succeeds, adding an
//! address that is there succeeds, "replace" creates or overwrites; every error names the
//! operation, the object and the kernel's errno (see [`NetlinkError`]).

mod build;
mod error;
mod monitor;
mod netns;
#[cfg(feature = "policy")]
pub mod nf_sets;
#[cfg(test)]
mod props;
pub(crate) mod socket;
mod types;

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

pub use error::NetlinkError;
pub use monitor::Monitor;
pub use netns::{open_netns, run_in_netns};
pub use types::*;

use socket::{encode, Conn};

/// One NETLINK_ROUTE socket, bound to the network namespace it was created in. Not shared
/// between threads (`&mut self` everywhere), but it may be moved to any thread.
pub struct Netlink {
    conn: Conn,
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn new() -> Result<Self, NetlinkError> {
        Ok(Netlink { conn: Conn::new()? })
    }

    /// A socket in the network namespace at `path` (`/run/netns/x`, `/proc/PID/ns/net`). It is
    /// created on a short-lived thread that joins the namespace; the socket stays bound to that
    /// namespace and works from any thread.
    pub fn in_netns(path: &Path) -> Result<Self, NetlinkError> {
        let conn = run_in_netns(path, Conn::new)??;
        Ok(Netlink { conn })
    }

    // ------------------------------------------------------------------ links

    /// Every device in the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let msgs = self.conn.dump(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            &|| "list links".to_string(),
        )?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(build::parse_link(l)),
                _ => None,
            })
            .collect())
    }

    /// The device called `name`, if there is one.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        check_ifname("get link", name)?;
        let op = || format!("get link {name}");
        self.get_link(build::link_get_by_name(name), &op)
    }

    /// The device with index `index`, if there is one.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>, NetlinkError> {
        let op = || format!("get link {index}");
        self.get_link(build::link_get_by_index(index), &op)
    }

    fn get_link(
        &mut self,
        msg: LinkMessage,
        op: &dyn Fn() -> String,
    ) -> Result<Option<Link>, NetlinkError> {
        match self.conn.get(RouteNetlinkMessage::GetLink(msg), op)? {
            Ok(RouteNetlinkMessage::NewLink(l)) => Ok(Some(build::parse_link(&l))),
            Ok(_) => Err(NetlinkError::Decode {
                op: op(),
                detail: "the reply is not a link".into(),
            }),
            Err(raw) => {
                let e = raw.into_error(op());
                if e.is_not_found() {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Creates a bridge with `mac` as its own address (pinned: a bridge without one takes the
    /// lowest of its ports' and changes it as ports come and go), or returns the existing
    /// bridge called `name` as it is.
    pub fn create_bridge(
        &mut self,
        name: &str,
        mtu: Option<u32>,
        mac: Option<Mac>,
    ) -> Result<Link, NetlinkError> {
        let op = format!("create bridge {name}");
        check_ifname(&op, name)?;
        let msg = build::link_new(name, InfoKind::Bridge, None, mtu, mac);
        match self.new_link(msg, &op) {
            Ok(()) => self.created(name, &op),
            Err(e) if e.is_exists() => match self.link_by_name(name)? {
                Some(l) if l.kind.as_deref() == Some("bridge") => Ok(l),
                Some(l) => Err(NetlinkError::Invalid {
                    op,
                    detail: format!(
                        "a device of kind {} already has that name",
                        l.kind.as_deref().unwrap_or("(none)")
                    ),
                }),
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Creates a VXLAN device. If a device called `spec.name` exists and is a VXLAN device
    /// whose identity matches the spec ([`VxlanSpec::matches`]: VNI, port, local, lower, GBP)
    /// it is returned as it is (learning and MTU can be fixed in place afterwards); any other
    /// existing device gives the EEXIST error (`is_exists()`), and the caller decides whether
    /// to delete and recreate it.
    pub fn create_vxlan(&mut self, spec: &VxlanSpec) -> Result<Link, NetlinkError> {
        let op = format!(
            "create vxlan {} id {} local {} dstport {}",
            spec.name,
            spec.vni,
            spec.local,
            spec.effective_port()
        );
        check_ifname(&op, &spec.name)?;
        match self.new_link(build::vxlan_new(spec), &op) {
            Ok(()) => self.created(&spec.name, &op),
            Err(e) if e.is_exists() => match self.link_by_name(&spec.name)? {
                Some(l) if l.vxlan.as_ref().is_some_and(|v| spec.matches(v)) => Ok(l),
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Creates a veth pair; the peer is created directly inside the namespace `peer_netns`
    /// (an open namespace file) when given, so it never appears in ours.
    pub fn create_veth(
        &mut self,
        name: &str,
        peer_name: &str,
        peer_netns: Option<BorrowedFd<'_>>,
        mtu: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let op = format!("create veth {name} peer {peer_name}");
        check_ifname(&op, name)?;
        check_ifname(&op, peer_name)?;
        let msg = build::veth_new(name, peer_name, peer_netns.map(|fd| fd.as_raw_fd()), mtu);
        self.new_link(msg, &op)
    }

    /// Creates a kernel WireGuard device. Fails with EOPNOTSUPP when the kernel has no
    /// WireGuard module (see [`NetlinkError::errno`]).
    pub fn create_wireguard(&mut self, name: &str) -> Result<Link, NetlinkError> {
        let op = format!("create wireguard {name}");
        check_ifname(&op, name)?;
        self.new_link(
            build::link_new(name, InfoKind::Wireguard, None, None, None),
            &op,
        )?;
        self.created(name, &op)
    }

    fn new_link(&mut self, msg: LinkMessage, op: &str) -> Result<(), NetlinkError> {
        self.conn
            .request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(|raw| raw.into_error(op.to_string()))
    }

    fn created(&mut self, name: &str, op: &str) -> Result<Link, NetlinkError> {
        self.link_by_name(name)?
            .ok_or_else(|| NetlinkError::Invalid {
                op: op.to_string(),
                detail: "the device vanished right after it was created".into(),
            })
    }

    /// Sets the device administratively up.
    pub fn set_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.set_link(build::link_set_up(index), false, || {
            format!("set link {index} up")
        })
    }

    /// Sets the MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let msg = build::link_set(index, vec![LinkAttribute::Mtu(mtu)]);
        self.set_link(msg, false, || format!("set mtu {mtu} on link {index}"))
    }

    /// Sets the MAC address.
    pub fn set_mac(&mut self, index: u32, mac: Mac) -> Result<(), NetlinkError> {
        let msg = build::link_set(index, vec![LinkAttribute::Address(mac.to_vec())]);
        self.set_link(msg, false, || {
            format!("set address {} on link {index}", format_mac(&mac))
        })
    }

    /// Sets the device's alias (IFLA_IFALIAS), the description `ip link` shows.
    pub fn set_alias(&mut self, index: u32, alias: &str) -> Result<(), NetlinkError> {
        let msg = build::link_set(index, vec![LinkAttribute::IfAlias(alias.to_string())]);
        self.set_link(msg, false, || {
            format!("set alias {alias:?} on link {index}")
        })
    }

    /// Enslaves the device to `master` (a bridge); 0 releases it.
    pub fn set_master(&mut self, index: u32, master: u32) -> Result<(), NetlinkError> {
        let msg = build::link_set(index, vec![LinkAttribute::Controller(master)]);
        self.set_link(msg, false, || {
            format!("set master {master} on link {index}")
        })
    }

    /// Hairpin mode (IFLA_BRPORT_MODE) on a bridge port, so a container can reach itself
    /// through a service address.
    pub fn set_hairpin(&mut self, index: u32, on: bool) -> Result<(), NetlinkError> {
        self.set_link(build::link_set_hairpin(index, on), true, || {
            format!("set hairpin {} on bridge port {index}", on_off(on))
        })
    }

    /// Turns address learning on a VXLAN device on or off, in place (the kernel allows a
    /// changelink of learning, so the device and its FDB survive).
    pub fn set_vxlan_learning(&mut self, link: &Link, on: bool) -> Result<(), NetlinkError> {
        let op = || format!("set learning {} on vxlan {}", on_off(on), link.name);
        if link.kind.as_deref() != Some("vxlan") {
            return Err(NetlinkError::Invalid {
                op: op(),
                detail: "not a vxlan device".into(),
            });
        }
        self.set_link(build::link_set_vxlan_learning(link.index, on), true, op)
    }

    /// RTM_SETLINK for plain attributes; RTM_NEWLINK (without CREATE) when the change goes
    /// through IFLA_LINKINFO, which only the newlink path hands to the driver.
    fn set_link(
        &mut self,
        msg: LinkMessage,
        via_newlink: bool,
        op: impl FnOnce() -> String,
    ) -> Result<(), NetlinkError> {
        let msg = if via_newlink {
            RouteNetlinkMessage::NewLink(msg)
        } else {
            RouteNetlinkMessage::SetLink(msg)
        };
        self.conn
            .request(msg, 0)
            .map_err(|raw| raw.into_error(op()))
    }

    /// Deletes the device; a device that is already gone is fine.
    pub fn delete_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        let msg = RouteNetlinkMessage::DelLink(build::link_get_by_index(index));
        match self.conn.request(msg, 0) {
            Ok(()) => Ok(()),
            Err(raw) => {
                let e = raw.into_error(format!("delete link {index}"));
                if e.is_not_found() {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    // ------------------------------------------------------------------ addresses

    /// Addresses of one device, or of all devices.
    pub fn addresses(&mut self, index: Option<u32>) -> Result<Vec<Address>, NetlinkError> {
        let msgs = self
            .conn
            .dump(RouteNetlinkMessage::GetAddress(Default::default()), &|| {
                "list addresses".to_string()
            })?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => build::parse_address(a),
                _ => None,
            })
            .filter(|a| wanted(index, a.index))
            .collect())
    }

    /// Adds an address; one that is already there is fine.
    pub fn add_address(&mut self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        self.one(Op::AddAddress(index, addr))
    }

    /// Adds an address with IFA_F_NODAD, for a caller that knows the address is unique on
    /// the link (it hands it out itself): an IPv6 address is then usable at once instead of
    /// "tentative" for the 1-2 s of Duplicate Address Detection. IPv4 has no DAD; the flag
    /// changes nothing there. One that is already there is fine.
    pub fn add_address_nodad(&mut self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        match self.conn.request(
            RouteNetlinkMessage::NewAddress(build::address_nodad(index, &addr)),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(()) => Ok(()),
            Err(raw) => {
                let op = Op::AddAddress(index, addr);
                let e = raw.into_error(format!("{op} nodad"));
                if op.tolerates(&e) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Removes an address; one that is not there is fine.
    pub fn del_address(&mut self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        self.one(Op::DelAddress(index, addr))
    }

    // ------------------------------------------------------------------ routes

    /// Unicast routes of every table, as the kernel reports them; the caller filters by table,
    /// device or protocol. Local, broadcast, multicast and blackhole routes are left out
    /// ([`Route`] cannot say what they are).
    pub fn routes(&mut self, family: Family) -> Result<Vec<Route>, NetlinkError> {
        let msgs = self.conn.dump(
            RouteNetlinkMessage::GetRoute(build::route_dump(family)),
            &|| "list routes".to_string(),
        )?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => build::parse_route(r),
                _ => None,
            })
            .collect())
    }

    /// Creates the route; an existing one is an error (EEXIST).
    pub fn add_route(&mut self, r: &Route) -> Result<(), NetlinkError> {
        self.conn
            .request(
                RouteNetlinkMessage::NewRoute(build::route(r, false)),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .map_err(|raw| raw.into_error(format!("add route {r}")))
    }

    /// Deletes the route (matched on destination, table, and gateway/device/metric when
    /// given, whatever its protocol); one that is not there is fine.
    pub fn del_route(&mut self, r: &Route) -> Result<(), NetlinkError> {
        self.one(Op::DelRoute(r.clone()))
    }

    // ------------------------------------------------------------------ neighbours

    /// IPv4 and IPv6 neighbour entries of one device, or of all devices.
    pub fn neighbours(&mut self, index: Option<u32>) -> Result<Vec<Neighbour>, NetlinkError> {
        let msgs = self.conn.dump(
            RouteNetlinkMessage::GetNeighbour(build::neighbour_dump(AddressFamily::Unspec)),
            &|| "list neighbours".to_string(),
        )?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => build::parse_neighbour(n),
                _ => None,
            })
            .filter(|n| wanted(index, n.index))
            .collect())
    }

    /// Creates or overwrites a neighbour entry.
    pub fn replace_neighbour(&mut self, n: &Neighbour) -> Result<(), NetlinkError> {
        self.one(Op::ReplaceNeighbour(n.clone()))
    }

    /// Deletes a neighbour entry; one that is not there is fine.
    pub fn del_neighbour(&mut self, n: &Neighbour) -> Result<(), NetlinkError> {
        self.one(Op::DelNeighbour(n.clone()))
    }

    // ------------------------------------------------------------------ bridge FDB

    /// Forwarding database entries (AF_BRIDGE neighbours) of one device, or of all devices.
    /// Besides a VXLAN device's remotes this includes what the kernel lists for every device
    /// (e.g. multicast addresses) and learned entries of bridges; filter by MAC as needed.
    pub fn fdb(&mut self, index: Option<u32>) -> Result<Vec<FdbEntry>, NetlinkError> {
        let msgs = self.conn.dump(
            RouteNetlinkMessage::GetNeighbour(build::neighbour_dump(AddressFamily::Bridge)),
            &|| "list fdb entries".to_string(),
        )?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => build::parse_fdb(n),
                _ => None,
            })
            .filter(|f| wanted(index, f.index))
            .collect())
    }

    /// Creates or overwrites an FDB entry on the device itself (NTF_SELF), like
    /// `bridge fdb replace MAC dev DEV dst IP self permanent`.
    pub fn replace_fdb(&mut self, f: &FdbEntry) -> Result<(), NetlinkError> {
        self.one(Op::ReplaceFdb(f.clone()))
    }

    // ------------------------------------------------------------------ pipelining

    /// Applies many changes at once: requests are packed many to a sendmsg() and their acks
    /// collected by sequence number, with never more in flight than the receive buffer holds.
    /// Returns one result per op, in order; a failed op does not stop the others.
    pub fn apply(&mut self, ops: &[Op]) -> Vec<Result<(), NetlinkError>> {
        let raw = self.conn.pipeline(ops.len(), |i, seq, out| {
            let (msg, flags) = op_message(&ops[i]);
            encode(
                msg,
                netlink_packet_core::NLM_F_REQUEST | netlink_packet_core::NLM_F_ACK | flags,
                seq,
                out,
            );
        });
        raw.into_iter()
            .zip(ops)
            .map(|(r, op)| match r {
                Ok(()) => Ok(()),
                Err(raw) => {
                    let e = raw.into_error(op.to_string());
                    if op.tolerates(&e) {
                        Ok(())
                    } else {
                        Err(e)
                    }
                }
            })
            .collect()
    }

    fn one(&mut self, op: Op) -> Result<(), NetlinkError> {
        self.apply(std::slice::from_ref(&op))
            .pop()
            .unwrap_or(Ok(()))
    }
}

/// The request for one op and the NLM_F_* flags it needs beyond REQUEST|ACK.
fn op_message(op: &Op) -> (RouteNetlinkMessage, u16) {
    use RouteNetlinkMessage as M;
    let create_replace = NLM_F_CREATE | NLM_F_REPLACE;
    match op {
        Op::ReplaceRoute(r) => (M::NewRoute(build::route(r, false)), create_replace),
        Op::DelRoute(r) => (M::DelRoute(build::route(r, true)), 0),
        Op::ReplaceNeighbour(n) => (M::NewNeighbour(build::neighbour(n)), create_replace),
        Op::DelNeighbour(n) => (M::DelNeighbour(build::neighbour(n)), 0),
        Op::ReplaceFdb(f) => (M::NewNeighbour(build::fdb(f)), create_replace),
        Op::DelFdb(f) => (M::DelNeighbour(build::fdb(f)), 0),
        Op::AddAddress(i, a) => (
            M::NewAddress(build::address(*i, a)),
            NLM_F_CREATE | NLM_F_EXCL,
        ),
        Op::DelAddress(i, a) => (M::DelAddress(build::address(*i, a)), 0),
    }
}

/// Interface names are at most 15 bytes and never contain '/' or whitespace; catching this here
/// gives a clearer message than the kernel's EINVAL.
fn check_ifname(op: &str, name: &str) -> Result<(), NetlinkError> {
    let bad = |detail: &str| {
        Err(NetlinkError::Invalid {
            op: op.to_string(),
            detail: format!("invalid interface name {name:?}: {detail}"),
        })
    };
    if name.is_empty() || name.len() > 15 {
        return bad("must be 1 to 15 bytes long");
    }
    if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        return bad("must not be '.', '..' or contain '/', ':' or whitespace");
    }
    Ok(())
}

fn wanted(filter: Option<u32>, index: u32) -> bool {
    filter.is_none() || filter == Some(index)
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_can_move_to_a_blocking_thread() {
        fn send<T: Send>() {}
        send::<Netlink>();
        send::<Monitor>();
        send::<NetlinkError>();
        fn sync<T: Sync>() {}
        sync::<NetlinkError>();
    }

    #[test]
    fn interface_names_are_checked_before_the_kernel() {
        assert!(check_ifname("x", "flannel.1").is_ok());
        assert!(check_ifname("x", "0123456789abcde").is_ok());
        let e = check_ifname("create bridge", "0123456789abcdef").unwrap_err();
        assert!(e.to_string().contains("1 to 15 bytes"), "{e}");
        assert!(check_ifname("x", "").is_err());
        assert!(check_ifname("x", "a/b").is_err());
        assert!(check_ifname("x", "a b").is_err());
    }

    #[test]
    fn deletes_tolerate_absence_and_adds_tolerate_presence() {
        let r = Route::new("198.19.0.0/16".parse().unwrap());
        let gone = NetlinkError::kernel("x".into(), libc::ESRCH, None);
        let there = NetlinkError::kernel("x".into(), libc::EEXIST, None);
        assert!(Op::DelRoute(r.clone()).tolerates(&gone));
        assert!(!Op::ReplaceRoute(r).tolerates(&gone));
        let a = "198.19.1.0/32".parse().unwrap();
        assert!(Op::AddAddress(1, a).tolerates(&there));
        assert!(!Op::DelAddress(1, a).tolerates(&there));
    }
}
