//! ADD: an address from each of the host's subnets (IPv4, IPv6 or both), the bridge with
//! their gateways, a veth pair with its container end configured. All or nothing: once an
//! address is reserved, any failure removes what was made and releases every address before
//! the error goes back.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::HostSubnet;
use crate::config::NetConf;
use crate::env::Attachment;
use crate::error::{code, CniError, Result};
use crate::ipam::{Range, Store};
use crate::link::{self, ContainerSide, Mac};
use crate::result::{CniResult, Interface, IpConfig, RouteEntry};
use crate::state::AttachmentState;

pub fn run(conf: &NetConf, att: &Attachment) -> Result<CniResult> {
    let host = HostSubnet::read(&conf.subnet_file)?;
    let mtu = conf.mtu.unwrap_or(host.mtu);
    let requested = requested_addresses(conf, att, &host)?;
    let mac = requested_mac(conf, att)?;
    let netns_path = att
        .netns
        .as_deref()
        .ok_or_else(|| CniError::env("CNI_NETNS is not set; ADD needs it"))?;
    let netns = weft::netlink::open_netns(netns_path).map_err(|e| {
        CniError::env(format!(
            "CNI_NETNS={}: cannot open it: {e}",
            netns_path.display()
        ))
    })?;
    let mut host_nl = link::host()?;
    let mut ctr_nl = link::in_netns(netns_path)?;
    let whereabouts = format!("netns {}", netns_path.display());
    if link::link_by_name(&mut ctr_nl, &att.ifname, &whereabouts)?.is_some() {
        return Err(CniError::new(
            code::ATTACHMENT_EXISTS,
            format!("interface {} already exists in {whereabouts}", att.ifname),
        ));
    }

    let store = Store::lock(&conf.network_dir())?;
    refuse_duplicate(&store, att)?;
    // One address per family; when a later family fails (its range is exhausted), the
    // earlier ones are released with it, so a failed ADD holds nothing.
    let mut addresses = Vec::new();
    for (family, wanted) in host.families.iter().zip(&requested) {
        match reserve(&store, &family.range, *wanted, att) {
            Ok(a) => addresses.push(a),
            Err(e) => {
                release(&store, att);
                return Err(e);
            }
        }
    }
    let gateways: Vec<IpAddr> = host.families.iter().map(|f| f.gateway.addr()).collect();
    let mut routes: Vec<(IpNet, IpAddr)> = Vec::new();
    for f in &host.families {
        let via = f.gateway.addr();
        routes.extend(f.network.map(|n| (n, via)));
        if conf.is_default_gateway {
            let default = match via {
                IpAddr::V4(_) => IpNet::V4(Ipv4Net::default()),
                IpAddr::V6(_) => IpNet::V6(Ipv6Net::default()),
            };
            routes.push((default, via));
        }
    }
    let state = AttachmentState {
        container_id: att.container_id.clone(),
        ifname: att.ifname.clone(),
        netns: Some(netns_path.to_path_buf()),
        bridge: conf.bridge.clone(),
        host_veth: link::host_veth_name(&att.container_id, &att.ifname),
        addresses: addresses.clone(),
        gateways: gateways.clone(),
        routes: routes.iter().map(|(dst, _)| *dst).collect(),
        mtu,
    };
    let bridge_gateways: Vec<IpNet> = host.families.iter().map(|f| f.gateway).collect();
    // The bridge is set up under the store's lock: parallel ADDs would race to create it or
    // to move its address.
    let bridge = state
        .save(&store)
        .and_then(|()| link::ensure_bridge(&mut host_nl, &conf.bridge, &bridge_gateways, mtu));
    let bridge = match bridge {
        Ok(b) => b,
        Err(e) => {
            release(&store, att);
            return Err(e);
        }
    };
    drop(store);

    let side = ContainerSide {
        ifname: &att.ifname,
        addresses: &addresses,
        routes: &routes,
        mac,
    };
    let made = link::create_pair(&mut host_nl, &netns, &state.host_veth, &att.ifname, mtu)
        .map_err(|e| (e, false))
        .and_then(|()| {
            link::configure_pair(
                &mut host_nl,
                &mut ctr_nl,
                &state.host_veth,
                &bridge,
                conf.hairpin_mode,
                &side,
            )
            .map_err(|e| (e, true))
        });
    let made = match made {
        Ok(m) => m,
        Err((e, pair_made)) => {
            // Deleting the host end takes the container end with it. A pair that was never
            // made is not ours to delete: the name may belong to someone else.
            if pair_made {
                let _ = link::delete_by_name(&mut host_nl, &state.host_veth, "the host");
            }
            if let Ok(store) = Store::lock(&conf.network_dir()) {
                release(&store, att);
            }
            return Err(e);
        }
    };

    let iface = |l: &link::Link, sandbox: Option<String>| Interface {
        name: l.name.clone(),
        mac: l.mac.as_ref().map(link::format_mac),
        mtu: Some(l.mtu),
        sandbox,
    };
    Ok(CniResult {
        interfaces: vec![
            iface(&made.bridge, None),
            iface(&made.host, None),
            iface(
                &made.container,
                Some(netns_path.to_string_lossy().into_owned()),
            ),
        ],
        ips: addresses
            .iter()
            .zip(&gateways)
            .map(|(address, gateway)| IpConfig {
                address: *address,
                gateway: Some(*gateway),
                interface: Some(2),
            })
            .collect(),
        routes: routes
            .into_iter()
            .map(|(dst, gw)| RouteEntry { dst, gw: Some(gw) })
            .collect(),
        dns: conf.dns.clone(),
    })
}

/// Best effort: the error that made ADD give up is the one the runtime must see.
fn release(store: &Store, att: &Attachment) {
    let _ = store.release_attachment(&att.container_id, &att.ifname);
    let _ = AttachmentState::remove(store, &att.container_id, &att.ifname);
}

fn refuse_duplicate(store: &Store, att: &Attachment) -> Result<()> {
    let exists = |what: String| {
        CniError::new(
            code::ATTACHMENT_EXISTS,
            format!(
                "container {} already has interface {} on this network ({what}); DEL it first",
                att.container_id, att.ifname
            ),
        )
    };
    if AttachmentState::load(store, &att.container_id, &att.ifname)?.is_some() {
        return Err(exists("weft's attachment record exists".into()));
    }
    if let Some(r) = store
        .reservations()?
        .into_iter()
        .find(|r| r.container_id == att.container_id && r.ifname.as_deref() == Some(&att.ifname))
    {
        return Err(exists(format!("it holds {}", r.ip)));
    }
    Ok(())
}

fn reserve(
    store: &Store,
    range: &Range,
    requested: Option<IpAddr>,
    att: &Attachment,
) -> Result<IpNet> {
    let (subnet, gateway) = (range.subnet, range.gateway);
    let ip = match requested {
        Some(ip) => {
            if !range.assignable(ip) {
                return Err(CniError::new(
                    code::ADDRESS_UNAVAILABLE,
                    format!(
                        "requested address {ip} cannot be assigned: it is not a host address of \
                         {subnet} other than the gateway {gateway}"
                    ),
                ));
            }
            if !store.reserve(range, ip, &att.container_id, &att.ifname)? {
                let holder = store
                    .reservations()?
                    .into_iter()
                    .find(|r| r.ip == ip)
                    .map(|r| r.container_id)
                    .unwrap_or_default();
                return Err(CniError::new(
                    code::ADDRESS_UNAVAILABLE,
                    format!("requested address {ip} is already reserved by container {holder:?}"),
                ));
            }
            ip
        }
        None => store
            .allocate(range, &att.container_id, &att.ifname)?
            .ok_or_else(|| {
                CniError::new(
                    code::POOL_EXHAUSTED,
                    format!(
                        "no free address: the pool {subnet} is exhausted (every address is \
                         reserved in {})",
                        store.dir().display()
                    ),
                )
            })?,
    };
    Ok(IpNet::new(ip, subnet.prefix_len()).expect("prefix of a valid subnet"))
}

/// `runtimeConfig.ips` and `CNI_ARGS` `IP=`: at most one address per family, and only of a
/// family this host has a subnet of. Returns, for each of the host's families in order, the
/// address asked for, if any.
pub fn requested_addresses(
    conf: &NetConf,
    att: &Attachment,
    host: &HostSubnet,
) -> Result<Vec<Option<IpAddr>>> {
    let unavailable = |msg: String| CniError::new(code::ADDRESS_UNAVAILABLE, msg);
    let mut out = vec![None; host.families.len()];
    for ip in conf.runtime_ips.iter().chain(&att.args.ip) {
        let (name, key) = if ip.is_ipv4() {
            ("IPv4", "FLANNEL_SUBNET")
        } else {
            ("IPv6", "FLANNEL_IPV6_SUBNET")
        };
        let slot = host.family_of(*ip).ok_or_else(|| {
            unavailable(format!(
                "requested address {ip} is {name}, but {} has no {key}",
                conf.subnet_file.display()
            ))
        })?;
        match out[slot] {
            Some(other) if other != *ip => {
                return Err(unavailable(format!(
                    "several {name} addresses were requested ({other}, {ip}); weft assigns one \
                     per family"
                )))
            }
            _ => out[slot] = Some(*ip),
        }
    }
    Ok(out)
}

fn requested_mac(conf: &NetConf, att: &Attachment) -> Result<Option<Mac>> {
    if let Some(m) = &conf.runtime_mac {
        return link::parse_mac(m).map(Some).map_err(|_| {
            CniError::config(format!("runtimeConfig.mac = {m:?} is not a MAC address"))
        });
    }
    match &att.args.mac {
        Some(m) => link::parse_mac(m)
            .map(Some)
            .map_err(|_| CniError::env(format!("CNI_ARGS: MAC={m:?} is not a MAC address"))),
        None => Ok(None),
    }
}
