//! CHECK: the container's network is still what ADD made, as `prevResult` describes it: the
//! interface with its MAC and addresses, the routes, the host end on the bridge, and the
//! address reservations. Silent on success.

use std::net::IpAddr;
use std::path::Path;

use crate::config::NetConf;
use crate::env::Attachment;
use crate::error::{code, CniError, Result};
use crate::ipam::Store;
use crate::link;
use crate::result::CniResult;
use crate::state::AttachmentState;

fn failed(msg: String) -> CniError {
    CniError::new(code::CHECK_FAILED, msg)
}

pub fn run(conf: &NetConf, att: &Attachment) -> Result<()> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::config("CHECK needs the prevResult of the ADD"))?;
    let prev = CniResult::parse(prev)?;
    let netns = att
        .netns
        .as_deref()
        .ok_or_else(|| CniError::env("CNI_NETNS is not set; CHECK needs it"))?;
    let state = check_reservations(conf, att)?;
    check_container(&prev, att, netns)?;
    check_host(&state)
}

/// weft's record of the attachment, and each of its addresses still reserved for it.
fn check_reservations(conf: &NetConf, att: &Attachment) -> Result<AttachmentState> {
    let store = Store::lock(&conf.network_dir())?;
    let state =
        AttachmentState::load(&store, &att.container_id, &att.ifname)?.ok_or_else(|| {
            failed(format!(
                "weft has no record of container {} interface {}",
                att.container_id, att.ifname
            ))
        })?;
    let held = store.reservations()?;
    for a in &state.addresses {
        let ours = |r: &crate::ipam::Reservation| {
            r.ip == a.addr() && r.belongs_to(&att.container_id, &att.ifname)
        };
        if !held.iter().any(ours) {
            return Err(failed(format!(
                "the reservation of {} for container {} is gone from {}",
                a.addr(),
                att.container_id,
                store.dir().display()
            )));
        }
    }
    Ok(state)
}

/// The container end: the veth with prevResult's MAC and addresses, and its routes.
fn check_container(prev: &CniResult, att: &Attachment, netns: &Path) -> Result<()> {
    let whereabouts = format!("netns {}", netns.display());
    let index = (prev.interfaces.iter())
        .position(|i| i.name == att.ifname && i.sandbox.is_some())
        .ok_or_else(|| {
            failed(format!(
                "prevResult lists no interface {} inside a sandbox",
                att.ifname
            ))
        })?;
    if !netns.exists() {
        return Err(failed(format!("{whereabouts} does not exist")));
    }
    let mut nl = link::in_netns(netns)?;
    let ctr = link::link_by_name(&mut nl, &att.ifname, &whereabouts)?.ok_or_else(|| {
        failed(format!(
            "interface {} is missing in {whereabouts}",
            att.ifname
        ))
    })?;
    if ctr.kind.as_deref() != Some("veth") {
        return Err(failed(format!(
            "{} in {whereabouts} is a {}, not the veth weft made",
            att.ifname,
            ctr.kind.as_deref().unwrap_or("device of unknown kind")
        )));
    }
    if let (Some(want), Some(have)) = (&prev.interfaces[index].mac, &ctr.mac) {
        let have = link::format_mac(have);
        if !want.eq_ignore_ascii_case(&have) {
            return Err(failed(format!(
                "{} in {whereabouts} has MAC {have}, prevResult says {want}",
                att.ifname
            )));
        }
    }
    let have = link::addresses(&mut nl, &ctr, &whereabouts)?;
    let mine = (prev.ips.iter()).filter(|ip| ip.interface.is_none_or(|i| i == index));
    if let Some(ip) = mine.into_iter().find(|ip| !have.contains(&ip.address)) {
        return Err(failed(format!(
            "{} in {whereabouts} lacks its address {}",
            att.ifname, ip.address
        )));
    }
    check_routes(prev, &mut nl, &whereabouts)
}

/// Every route of prevResult in the container.
fn check_routes(prev: &CniResult, nl: &mut link::Netlink, whereabouts: &str) -> Result<()> {
    let routes = link::main_routes(nl, whereabouts)?;
    for r in &prev.routes {
        let gw = r.gw.or_else(|| default_gateway(prev, r.dst.addr()));
        if !(routes.iter()).any(|(dst, g)| *dst == r.dst && (gw.is_none() || *g == gw)) {
            return Err(failed(format!(
                "route {}{} is missing in {whereabouts}",
                r.dst,
                gw.map(|g| format!(" via {g}")).unwrap_or_default()
            )));
        }
    }
    Ok(())
}

/// The host end, on the bridge.
fn check_host(state: &AttachmentState) -> Result<()> {
    let mut host = link::host()?;
    let bridge = link::link_by_name(&mut host, &state.bridge, "the host")?
        .ok_or_else(|| failed(format!("bridge {} is missing on the host", state.bridge)))?;
    let veth = link::link_by_name(&mut host, &state.host_veth, "the host")?
        .ok_or_else(|| failed(format!("host interface {} is missing", state.host_veth)))?;
    if veth.master != Some(bridge.index) {
        return Err(failed(format!(
            "host interface {} is not on bridge {}",
            state.host_veth, state.bridge
        )));
    }
    Ok(())
}

/// A route without `gw` goes through the gateway of the IP of the same family, as the spec's
/// result type allows.
fn default_gateway(prev: &CniResult, dst: IpAddr) -> Option<IpAddr> {
    prev.ips
        .iter()
        .find(|ip| ip.address.addr().is_ipv4() == dst.is_ipv4())
        .and_then(|ip| ip.gateway)
}
