//! The kernel side of an attachment, through the library's sync netlink layer: the bridge
//! with the gateway addresses, the veth pair, the container end's addresses, MAC and routes, and
//! their removal. Nothing here decides policy; the commands do.

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::Path;

use ipnet::IpNet;
use weft::bridge;
pub use weft::netlink::Netlink;
pub use weft::netlink::{format_mac, parse_mac, Link, Mac};
use weft::netlink::{Family, NetlinkError, Route, RT_TABLE_MAIN};

use crate::error::{CniError, Result};

fn kernel(what: impl std::fmt::Display, e: NetlinkError) -> CniError {
    CniError::kernel(format!("{what}: {e}"))
}

/// The host end's name, derived from the attachment so that DEL and GC find it without
/// asking the netns. FNV-1a, because it is short, stable across releases and needs no crate.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("veth{:08x}", (h ^ (h >> 32)) as u32)
}

pub fn host() -> Result<Netlink> {
    Netlink::new().map_err(|e| kernel("cannot open a netlink socket", e))
}

pub fn in_netns(netns: &Path) -> Result<Netlink> {
    Netlink::in_netns(netns)
        .map_err(|e| kernel(format_args!("cannot enter netns {}", netns.display()), e))
}

/// Makes the bridge exist, be up, have its MAC pinned (see [`weft::bridge`]) and hold each
/// family's gateway (address/prefix). Any other address of that family on it is the gateway
/// of a subnet this host held before, so it is moved, not refused; IPv6 link-local addresses
/// are the kernel's and stay.
pub fn ensure_bridge(nl: &mut Netlink, name: &str, gateways: &[IpNet], mtu: u32) -> Result<Link> {
    let first = gateways
        .first()
        .ok_or_else(|| CniError::kernel(format!("no gateway to put on bridge {name}")))?
        .addr();
    let mut bridge = nl
        .create_bridge(name, Some(mtu), Some(bridge::derived_mac(first)))
        .map_err(|e| kernel(format_args!("cannot create bridge {name}"), e))?;
    if bridge::pinned_mac(&bridge).is_none_or(|m| bridge.mac != Some(m)) {
        let mac = bridge::pin(nl, &bridge, first)
            .map_err(|e| kernel(format_args!("cannot pin the MAC of bridge {name}"), e))?;
        bridge.mac = Some(mac);
    }
    let addrs = nl
        .addresses(Some(bridge.index))
        .map_err(|e| kernel(format_args!("cannot list addresses of {name}"), e))?;
    for want in gateways {
        let old = addrs.iter().filter(|a| {
            a.addr.addr().is_ipv4() == want.addr().is_ipv4()
                && a.addr != *want
                && !is_link_local(a.addr.addr())
        });
        for a in old {
            nl.del_address(bridge.index, a.addr).map_err(|e| {
                kernel(
                    format_args!("cannot remove old gateway {} from {name}", a.addr),
                    e,
                )
            })?;
        }
        if !addrs.iter().any(|a| a.addr == *want) {
            add_address(nl, bridge.index, *want)
                .map_err(|e| kernel(format_args!("cannot add {want} to {name}"), e))?;
        }
    }
    if !bridge.up {
        nl.set_up(bridge.index)
            .map_err(|e| kernel(format_args!("cannot set {name} up"), e))?;
    }
    for gateway in gateways {
        enable_forwarding(nl, gateway.addr(), name)?;
    }
    Ok(bridge)
}

fn is_link_local(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// IPv6 addresses go on without Duplicate Address Detection: they come from weft's IPAM,
/// whose reservation files already make them unique on the bridge, so DAD could only hold
/// them "tentative" for 1-2 s, during which the container cannot send (runtimes start the
/// workload right after ADD). The flag is per address, so the interfaces' own settings, and
/// the DAD of their link-local addresses, stay as the kernel and the operator made them.
fn add_address(nl: &mut Netlink, index: u32, addr: IpNet) -> std::result::Result<(), NetlinkError> {
    match addr {
        IpNet::V4(_) => nl.add_address(index, addr),
        IpNet::V6(_) => nl.add_address_nodad(index, addr),
    }
}

/// The bridge routes between containers and the overlay, which needs forwarding of the
/// gateway's family in the host's namespace (the reference bridge plugin does the same for a
/// gateway bridge).
///
/// IPv6 forwarding is switched on for all interfaces at once, and an interface that forwards
/// ignores router advertisements unless its `accept_ra` is 2: a host that learns its default
/// route by SLAAC on its uplink would lose it. So before switching it on, every interface that
/// accepts them now (`accept_ra` 1, not forwarding) is moved to 2, which keeps it accepting them: each
/// interface goes on doing what it did. weft's bridge is left out: advertisements there come
/// from containers, and the host must never take routes from them. Interfaces made later
/// start from `default`, as on any router: one that needs advertisements wants `accept_ra` 2.
fn enable_forwarding(nl: &mut Netlink, gateway: IpAddr, bridge: &str) -> Result<()> {
    let path = match gateway {
        IpAddr::V4(_) => "/proc/sys/net/ipv4/ip_forward",
        IpAddr::V6(_) => "/proc/sys/net/ipv6/conf/all/forwarding",
    };
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    if gateway.is_ipv6() {
        keep_accepting_router_advertisements(nl, bridge)?;
    }
    std::fs::write(path, "1")
        .map_err(|e| CniError::kernel(format!("cannot enable forwarding in {path}: {e}")))
}

fn keep_accepting_router_advertisements(nl: &mut Netlink, bridge: &str) -> Result<()> {
    let links = nl
        .links()
        .map_err(|e| kernel("cannot list the host's interfaces", e))?;
    // A bridge's port hands its packets to the bridge and never reads an advertisement
    // itself; loopback never receives one.
    for l in links
        .iter()
        .filter(|l| l.name != bridge && l.name != "lo" && l.master.is_none())
    {
        let conf = format!("/proc/sys/net/ipv6/conf/{}", l.name);
        let is = |key: &str, want: &str| {
            std::fs::read_to_string(format!("{conf}/{key}")).is_ok_and(|v| v.trim() == want)
        };
        // An interface without IPv6 (disabled, or not a kind that has it) has no such files;
        // one that forwards already ignores advertisements and goes on ignoring them.
        if is("accept_ra", "1") && is("forwarding", "0") {
            let path = format!("{conf}/accept_ra");
            std::fs::write(&path, "2").map_err(|e| {
                CniError::kernel(format!(
                    "cannot keep {} accepting router advertisements once IPv6 forwarding is \
                     on ({path}): {e}",
                    l.name
                ))
            })?;
        }
    }
    Ok(())
}

/// What the container end gets: one address per family, and routes through that family's
/// gateway.
pub struct ContainerSide<'a> {
    pub ifname: &'a str,
    pub addresses: &'a [IpNet],
    /// (destination, gateway)
    pub routes: &'a [(IpNet, IpAddr)],
    pub mac: Option<Mac>,
}

pub struct Made {
    pub bridge: Link,
    pub host: Link,
    pub container: Link,
}

/// Creates the pair with its container end already inside the netns, so its name never
/// collides on the host. When this fails nothing was made.
pub fn create_pair(
    host_nl: &mut Netlink,
    netns: &std::fs::File,
    host_name: &str,
    ifname: &str,
    mtu: u32,
) -> Result<()> {
    host_nl
        .create_veth(host_name, ifname, Some(netns.as_fd()), Some(mtu))
        .map_err(|e| kernel(format_args!("cannot create veth {host_name}/{ifname}"), e))
}

/// Enslaves the host end and configures the container end of a pair `create_pair` made.
pub fn configure_pair(
    host_nl: &mut Netlink,
    ctr_nl: &mut Netlink,
    host_name: &str,
    bridge: &Link,
    hairpin: bool,
    side: &ContainerSide<'_>,
) -> Result<Made> {
    let host = host_nl
        .link_by_name(host_name)
        .map_err(|e| kernel(format_args!("cannot read {host_name}"), e))?
        .ok_or_else(|| CniError::kernel(format!("{host_name} vanished after its creation")))?;
    host_nl
        .set_master(host.index, bridge.index)
        .map_err(|e| kernel(format_args!("cannot put {host_name} on {}", bridge.name), e))?;
    if hairpin {
        host_nl
            .set_hairpin(host.index, true)
            .map_err(|e| kernel(format_args!("cannot set hairpin mode on {host_name}"), e))?;
    }
    host_nl
        .set_up(host.index)
        .map_err(|e| kernel(format_args!("cannot set {host_name} up"), e))?;

    let name = side.ifname;
    let ctr = ctr_nl
        .link_by_name(name)
        .map_err(|e| kernel(format_args!("cannot read {name} in the container"), e))?
        .ok_or_else(|| CniError::kernel(format!("{name} did not arrive in the container")))?;
    if let Some(mac) = side.mac {
        ctr_nl.set_mac(ctr.index, mac).map_err(|e| {
            kernel(
                format_args!("cannot set MAC {} on {name}", format_mac(&mac)),
                e,
            )
        })?;
    }
    for addr in side.addresses {
        add_address(ctr_nl, ctr.index, *addr)
            .map_err(|e| kernel(format_args!("cannot add {addr} to {name}"), e))?;
    }
    ctr_nl
        .set_up(ctr.index)
        .map_err(|e| kernel(format_args!("cannot set {name} up"), e))?;
    for (dst, via) in side.routes {
        let route = Route::new(*dst).via(*via).dev(ctr.index);
        ctr_nl.add_route(&route).map_err(|e| {
            kernel(
                format_args!("cannot add route {dst} via {via} to {name}"),
                e,
            )
        })?;
    }
    // Read back: the MACs of the container end, the host end and the bridge.
    let read = |nl: &mut Netlink, index: u32, what: &str| {
        nl.link_by_index(index)
            .map_err(|e| kernel(format_args!("cannot read {what}"), e))?
            .ok_or_else(|| CniError::kernel(format!("{what} vanished")))
    };
    Ok(Made {
        bridge: read(host_nl, bridge.index, &bridge.name)?,
        host: read(host_nl, host.index, host_name)?,
        container: read(ctr_nl, ctr.index, name)?,
    })
}

/// Deletes a link by name if it is there.
pub fn delete_by_name(nl: &mut Netlink, name: &str, whereabouts: &str) -> Result<()> {
    if let Some(link) = nl
        .link_by_name(name)
        .map_err(|e| kernel(format_args!("cannot read {name} in {whereabouts}"), e))?
    {
        nl.delete_link(link.index)
            .map_err(|e| kernel(format_args!("cannot delete {name} in {whereabouts}"), e))?;
    }
    Ok(())
}

pub fn link_by_name(nl: &mut Netlink, name: &str, whereabouts: &str) -> Result<Option<Link>> {
    nl.link_by_name(name)
        .map_err(|e| kernel(format_args!("cannot read {name} in {whereabouts}"), e))
}

pub fn addresses(nl: &mut Netlink, link: &Link, whereabouts: &str) -> Result<Vec<IpNet>> {
    nl.addresses(Some(link.index))
        .map(|list| list.into_iter().map(|a| a.addr).collect())
        .map_err(|e| {
            kernel(
                format_args!("cannot list addresses of {} in {whereabouts}", link.name),
                e,
            )
        })
}

/// The main table's routes as (destination, gateway).
pub fn main_routes(nl: &mut Netlink, whereabouts: &str) -> Result<Vec<(IpNet, Option<IpAddr>)>> {
    nl.routes(Family::All)
        .map(|list| {
            list.into_iter()
                .filter(|r| r.table == RT_TABLE_MAIN)
                .map(|r| (r.dst, r.gateway))
                .collect()
        })
        .map_err(|e| kernel(format_args!("cannot list routes in {whereabouts}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_short_and_distinct() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_eq!(a.len(), 12);
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(host_veth_name("ab", "ceth0"), host_veth_name("abc", "eth0"));
    }
}
