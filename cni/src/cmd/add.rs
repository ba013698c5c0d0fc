//! ADD: an address from the host's subnet, the bridge with the gateway, a veth pair with its
//! container end configured. All or nothing: once the address is reserved, any failure
//! removes what was made and releases it before the error goes back.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};

use super::HostSubnet;
use crate::config::NetConf;
use crate::env::Attachment;
use crate::error::{code, CniError, Result};
use crate::ipam::{assignable, Store};
use crate::link::{self, ContainerSide, Mac};
use crate::result::{CniResult, Interface, IpConfig, RouteEntry};
use crate::state::AttachmentState;

pub fn run(conf: &NetConf, att: &Attachment) -> Result<CniResult> {
    let host = HostSubnet::read(&conf.subnet_file)?;
    let mtu = conf.mtu.unwrap_or(host.mtu);
    let requested = requested_address(conf, att)?;
    let mac = requested_mac(conf, att)?;
    let netns_path = att
        .netns
        .as_deref()
        .ok_or_else(|| CniError::env("CNI_NETNS is not set; ADD needs it"))?;
    let netns = File::open(netns_path).map_err(|e| {
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
    let address = reserve(&store, &host, requested, att)?;
    let gateway = host.gateway_addr();
    let mut routes: Vec<IpNet> = host.network.map(IpNet::V4).into_iter().collect();
    if conf.is_default_gateway {
        routes.push(IpNet::V4(Ipv4Net::default()));
    }
    let state = AttachmentState {
        container_id: att.container_id.clone(),
        ifname: att.ifname.clone(),
        netns: Some(netns_path.to_path_buf()),
        bridge: conf.bridge.clone(),
        host_veth: link::host_veth_name(&att.container_id, &att.ifname),
        addresses: vec![IpNet::V4(address)],
        gateway: IpAddr::V4(gateway),
        routes: routes.clone(),
        mtu,
    };
    // The bridge is set up under the store's lock: parallel ADDs would race to create it or
    // to move its address.
    let bridge = state
        .save(&store)
        .and_then(|()| link::ensure_bridge(&mut host_nl, &conf.bridge, host.gateway, mtu));
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
        address,
        gateway,
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
        ips: vec![IpConfig {
            address: IpNet::V4(address),
            gateway: Some(IpAddr::V4(gateway)),
            interface: Some(2),
        }],
        routes: routes
            .into_iter()
            .map(|dst| RouteEntry {
                dst,
                gw: Some(IpAddr::V4(gateway)),
            })
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
    host: &HostSubnet,
    requested: Option<Ipv4Addr>,
    att: &Attachment,
) -> Result<Ipv4Net> {
    let subnet = host.subnet();
    let gateway = host.gateway_addr();
    let ip = match requested {
        Some(ip) => {
            if !assignable(subnet, gateway, ip) {
                return Err(CniError::new(
                    code::ADDRESS_UNAVAILABLE,
                    format!(
                        "requested address {ip} cannot be assigned: it is not a host address of \
                         {subnet} other than the gateway {gateway}"
                    ),
                ));
            }
            if !store.reserve(IpAddr::V4(ip), &att.container_id, &att.ifname)? {
                let holder = store
                    .reservations()?
                    .into_iter()
                    .find(|r| r.ip == IpAddr::V4(ip))
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
            .allocate(subnet, gateway, &att.container_id, &att.ifname)?
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
    Ok(Ipv4Net::new(ip, subnet.prefix_len()).expect("prefix of a valid subnet"))
}

/// `runtimeConfig.ips` and `CNI_ARGS` `IP=`; weft gives one IPv4 address per attachment.
fn requested_address(conf: &NetConf, att: &Attachment) -> Result<Option<Ipv4Addr>> {
    let mut wanted = conf.runtime_ips.clone();
    wanted.extend(att.args.ip);
    wanted.dedup();
    match wanted.as_slice() {
        [] => Ok(None),
        [IpAddr::V4(ip)] => Ok(Some(*ip)),
        [ip @ IpAddr::V6(_)] => Err(CniError::new(
            code::ADDRESS_UNAVAILABLE,
            format!("requested address {ip} is IPv6; weft assigns IPv4 addresses only"),
        )),
        several => Err(CniError::new(
            code::ADDRESS_UNAVAILABLE,
            format!(
                "several addresses were requested ({}); weft assigns one per attachment",
                several
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
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
