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
    let mut held = Held::reserve(conf, att, &host, &requested)?;
    let routes = routes_of(conf, &host);
    let state = AttachmentState {
        container_id: att.container_id.clone(),
        ifname: att.ifname.clone(),
        netns: Some(netns_path.to_path_buf()),
        bridge: conf.bridge.clone(),
        host_veth: link::host_veth_name(&att.container_id, &att.ifname),
        addresses: held.addresses.clone(),
        gateways: host.families.iter().map(|f| f.gateway.addr()).collect(),
        routes: routes.iter().map(|(dst, _)| *dst).collect(),
        mtu,
    };
    let bridge = held.save_with_bridge(&state, &mut host_nl, &host, mtu)?;
    // Admitted before the interface exists: the container's first packet meets its policy.
    let addresses: Vec<IpAddr> = state.addresses.iter().map(IpNet::addr).collect();
    crate::policy::admit(conf, att, addresses.clone())?;
    let side = ContainerSide {
        ifname: &att.ifname,
        addresses: &state.addresses,
        routes: &routes,
        mac,
    };
    let made = attach(
        &mut host_nl,
        &mut ctr_nl,
        &netns,
        &state,
        &bridge,
        conf,
        &side,
    )
    .inspect_err(|_| {
        let _ = crate::policy::withdraw(conf, att, &addresses);
    })?;
    held.keep();
    Ok(result(conf, &made, netns_path, &state, routes))
}

/// The addresses an ADD reserved, released again (with weft's record of the attachment)
/// unless the ADD went through: a failed ADD holds nothing. While the store is locked it is
/// released through that lock; after, through a new one.
struct Held<'a> {
    store: Option<Store>,
    conf: &'a NetConf,
    att: &'a Attachment,
    addresses: Vec<IpNet>,
    kept: bool,
}

impl<'a> Held<'a> {
    /// One address per family, under the store's lock: the requested one, or the next free.
    fn reserve(
        conf: &'a NetConf,
        att: &'a Attachment,
        host: &HostSubnet,
        requested: &[Option<IpAddr>],
    ) -> Result<Held<'a>> {
        let store = Store::lock(&conf.network_dir())?;
        refuse_duplicate(&store, att)?;
        let mut held = Held {
            store: Some(store),
            conf,
            att,
            addresses: Vec::new(),
            kept: false,
        };
        for (family, wanted) in host.families.iter().zip(requested) {
            let store = held
                .store
                .as_ref()
                .expect("locked until the bridge is set up");
            let a = reserve(store, &family.range, *wanted, att)?;
            held.addresses.push(a);
        }
        Ok(held)
    }

    /// Writes weft's record and sets the bridge up, both under the store's lock (parallel
    /// ADDs would race to create the bridge or to move its address), then unlocks.
    fn save_with_bridge(
        &mut self,
        state: &AttachmentState,
        nl: &mut link::Netlink,
        host: &HostSubnet,
        mtu: u32,
    ) -> Result<link::Link> {
        let store = self
            .store
            .as_ref()
            .expect("locked until the bridge is set up");
        state.save(store)?;
        let gateways: Vec<IpNet> = host.families.iter().map(|f| f.gateway).collect();
        let bridge = link::ensure_bridge(nl, &self.conf.bridge, &gateways, mtu)?;
        self.store = None;
        Ok(bridge)
    }

    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        match &self.store {
            Some(store) => release(store, self.att),
            None => {
                if let Ok(store) = Store::lock(&self.conf.network_dir()) {
                    release(&store, self.att);
                }
            }
        }
    }
}

/// The routes a container gets: each family's network through its gateway, and a default
/// route too with `isDefaultGateway`.
fn routes_of(conf: &NetConf, host: &HostSubnet) -> Vec<(IpNet, IpAddr)> {
    let mut routes = Vec::new();
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
    routes
}

/// The veth pair, made and configured; on a failure after it was made it is deleted (which
/// takes the container end with it). A pair that was never made is not ours to delete: the
/// name may belong to someone else.
fn attach(
    host_nl: &mut link::Netlink,
    ctr_nl: &mut link::Netlink,
    netns: &std::fs::File,
    state: &AttachmentState,
    bridge: &link::Link,
    conf: &NetConf,
    side: &ContainerSide<'_>,
) -> Result<link::Made> {
    link::create_pair(host_nl, netns, &state.host_veth, side.ifname, state.mtu)?;
    let hairpin = conf.hairpin_mode;
    let made = link::configure_pair(host_nl, ctr_nl, &state.host_veth, bridge, hairpin, side);
    if made.is_err() {
        let _ = link::delete_by_name(host_nl, &state.host_veth, "the host");
    }
    made
}

/// The result in the spec's shape: the bridge, the host end and the container end, each
/// address with its gateway on interface 2, and the routes.
fn result(
    conf: &NetConf,
    made: &link::Made,
    netns: &std::path::Path,
    state: &AttachmentState,
    routes: Vec<(IpNet, IpAddr)>,
) -> CniResult {
    let iface = |l: &link::Link, sandbox: Option<String>| Interface {
        name: l.name.clone(),
        mac: l.mac.as_ref().map(link::format_mac),
        mtu: Some(l.mtu),
        sandbox,
    };
    let sandbox = Some(netns.to_string_lossy().into_owned());
    CniResult {
        interfaces: vec![
            iface(&made.bridge, None),
            iface(&made.host, None),
            iface(&made.container, sandbox),
        ],
        ips: (state.addresses.iter().zip(&state.gateways))
            .map(|(address, gateway)| IpConfig {
                address: *address,
                gateway: Some(*gateway),
                interface: Some(2),
            })
            .collect(),
        routes: (routes.into_iter())
            .map(|(dst, gw)| RouteEntry { dst, gw: Some(gw) })
            .collect(),
        dns: conf.dns.clone(),
    }
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
