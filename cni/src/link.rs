//! The kernel side of an attachment, through the library's sync netlink layer: the bridge
//! with the gateway address, the veth pair, the container end's address, MAC and routes, and
//! their removal. Nothing here decides policy; the commands do.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::path::Path;

use ipnet::{IpNet, Ipv4Net};
pub use weft::netlink::{format_mac, parse_mac, Link, Mac};
use weft::netlink::{Family, Netlink, NetlinkError, Route, RT_TABLE_MAIN};

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

/// Makes the bridge exist, be up and hold `gateway` (address/prefix). Any other IPv4 address
/// on it is the gateway of a subnet this host held before, so it is moved, not refused.
pub fn ensure_bridge(nl: &mut Netlink, name: &str, gateway: Ipv4Net, mtu: u32) -> Result<Link> {
    let bridge = nl
        .create_bridge(name, Some(mtu))
        .map_err(|e| kernel(format_args!("cannot create bridge {name}"), e))?;
    let want = IpNet::V4(gateway);
    let addrs = nl
        .addresses(Some(bridge.index))
        .map_err(|e| kernel(format_args!("cannot list addresses of {name}"), e))?;
    for a in addrs
        .iter()
        .filter(|a| a.addr.addr().is_ipv4() && a.addr != want)
    {
        nl.del_address(bridge.index, a.addr).map_err(|e| {
            kernel(
                format_args!("cannot remove old gateway {} from {name}", a.addr),
                e,
            )
        })?;
    }
    if !addrs.iter().any(|a| a.addr == want) {
        nl.add_address(bridge.index, want)
            .map_err(|e| kernel(format_args!("cannot add {want} to {name}"), e))?;
    }
    if !bridge.up {
        nl.set_up(bridge.index)
            .map_err(|e| kernel(format_args!("cannot set {name} up"), e))?;
    }
    enable_forwarding()?;
    Ok(bridge)
}

/// The bridge routes between containers and the overlay, which needs IPv4 forwarding in the
/// host's namespace (the reference bridge plugin does the same for a gateway bridge).
fn enable_forwarding() -> Result<()> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(PATH).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(PATH, "1")
        .map_err(|e| CniError::kernel(format!("cannot enable forwarding in {PATH}: {e}")))
}

/// What the container end gets.
pub struct ContainerSide<'a> {
    pub ifname: &'a str,
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub routes: &'a [IpNet],
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
    ctr_nl
        .add_address(ctr.index, IpNet::V4(side.address))
        .map_err(|e| kernel(format_args!("cannot add {} to {name}", side.address), e))?;
    ctr_nl
        .set_up(ctr.index)
        .map_err(|e| kernel(format_args!("cannot set {name} up"), e))?;
    for dst in side.routes {
        let route = Route::new(*dst)
            .via(IpAddr::V4(side.gateway))
            .dev(ctr.index);
        ctr_nl.add_route(&route).map_err(|e| {
            kernel(
                format_args!("cannot add route {dst} via {} to {name}", side.gateway),
                e,
            )
        })?;
    }
    // Read back: the container end's MAC, and the bridge's, which follows its ports until set.
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
