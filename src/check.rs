//! `weftctl check`: compares this host's kernel with what the leases say it should hold,
//! using the reconciler's own desired state and diff (without applying anything), plus the
//! device's MAC against the lease and its MTU against subnet.env.

use crate::backend::vxlan::DeviceSpec;
use crate::config::{BackendConfig, NetworkConfig};
use crate::iface::ExtIface;
use crate::lease::Lease;
use crate::netlink::{format_mac, parse_mac, Family, Netlink, NetlinkError, Op};
use crate::reconcile::{self, Host};
use crate::subnet_env::SubnetEnv;

/// One thing that is not as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding(pub String);

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a check found: `findings` are wrong on this host (exit 1); `notes` are leases of
/// other hosts that weft refuses to program, which this host cannot mend.
#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub notes: Vec<Finding>,
}

/// Reads the kernel through `nl` and reports every difference. `own` is this host's lease
/// (None: the host holds none, itself a finding).
pub fn check(
    nl: &mut Netlink,
    cfg: &NetworkConfig,
    ext: &ExtIface,
    device_name: Option<&str>,
    own: Option<&Lease>,
    leases: &[Lease],
    env: Option<&SubnetEnv>,
) -> Result<Report, NetlinkError> {
    let mut report = Report::default();
    let out = &mut report.findings;
    let Some(own) = own else {
        out.push(Finding(format!(
            "no lease in etcd holds this host's public IP {}",
            ext.public_ip
        )));
        return Ok(report);
    };
    match env {
        None => out.push(Finding("subnet.env is missing or unreadable".into())),
        Some(env) => {
            if env.subnet_network() != Some(own.subnet) {
                out.push(Finding(format!(
                    "subnet.env says FLANNEL_SUBNET={} but this host's lease is {}",
                    env.subnet.map(|s| s.to_string()).unwrap_or_default(),
                    own.subnet
                )));
            }
        }
    }

    let mut device_index = None;
    let mut device = String::new();
    if let BackendConfig::Vxlan(vx) = &cfg.backend {
        let spec = DeviceSpec::new(vx, device_name, ext.iface_addr.into(), ext.index, ext.mtu);
        device = spec.name.clone();
        match nl.link_by_name(&spec.name)? {
            None => out.push(Finding(format!("device {} is missing", spec.name))),
            Some(link) => {
                device_index = Some(link.index);
                let advertised = own
                    .attrs
                    .vxlan_data()
                    .and_then(|d| parse_mac(&d.vtep_mac).ok());
                if link.mac.is_some() && link.mac != advertised {
                    out.push(Finding(format!(
                        "device {} has MAC {} but the lease advertises {}",
                        spec.name,
                        link.mac.map(|m| format_mac(&m)).unwrap_or_default(),
                        own.attrs
                            .vxlan_data()
                            .map(|d| d.vtep_mac)
                            .unwrap_or_else(|| "none".into())
                    )));
                }
                if let Some(env) = env {
                    if env.mtu != link.mtu {
                        out.push(Finding(format!(
                            "device {} has MTU {} but subnet.env says FLANNEL_MTU={}",
                            spec.name, link.mtu, env.mtu
                        )));
                    }
                }
                if !link.up {
                    out.push(Finding(format!("device {} is down", spec.name)));
                }
            }
        }
    }

    let host = Host {
        public_ip: ext.public_ip,
        ext_index: ext.index,
        ext_networks: ext.networks.clone(),
        vxlan_index: device_index,
    };
    let desired = reconcile::desired(cfg, &host, own, leases);
    for skip in &desired.skipped {
        report.notes.push(Finding(format!(
            "lease {} is not programmed: {}",
            skip.key, skip.reason
        )));
    }
    let routes = nl.routes(Family::V4)?;
    let (neigh, fdb) = match device_index {
        Some(d) => (nl.neighbours(Some(d))?, nl.fdb(Some(d))?),
        None => (Vec::new(), Vec::new()),
    };
    let actual = reconcile::owned(cfg, &host, own.subnet, routes, neigh, fdb);
    let dev_name = |i: u32| {
        if Some(i) == device_index {
            device.clone()
        } else if i == ext.index {
            ext.name.clone()
        } else {
            format!("#{i}")
        }
    };
    for op in reconcile::diff(&desired, &actual) {
        let what = reconcile::describe(&op, &dev_name);
        let line = match op {
            Op::ReplaceRoute(_) | Op::ReplaceNeighbour(_) | Op::ReplaceFdb(_) => {
                format!("missing or wrong: {what}")
            }
            _ => format!("stale: {}", what.trim_start_matches("remove ")),
        };
        report.findings.push(Finding(line));
    }
    Ok(report)
}

/// The bridge dockerd makes for its containers.
pub const DOCKER_BRIDGE: &str = "docker0";

/// On a host that hands its subnet to Docker, dockerd's bridge must hold the subnet's gateway
/// address (FLANNEL_SUBNET, which `weftctl docker-opts` passes as `--bip`); anything else means
/// dockerd was started without weft's options, or before the subnet changed. No bridge, or no
/// subnet.env to compare with, is nothing to report.
pub fn docker_bridge(
    nl: &mut Netlink,
    env: Option<&SubnetEnv>,
) -> Result<Option<Finding>, NetlinkError> {
    let Some(gateway) = env.and_then(|e| e.subnet) else {
        return Ok(None);
    };
    let Some(bridge) = nl.links()?.into_iter().find(|l| l.name == DOCKER_BRIDGE) else {
        return Ok(None);
    };
    let held: Vec<String> = (nl.addresses(Some(bridge.index))?.into_iter())
        .filter(|a| a.index == bridge.index && a.addr.addr().is_ipv4())
        .map(|a| a.addr.to_string())
        .collect();
    if held.contains(&gateway.to_string()) {
        return Ok(None);
    }
    let has = if held.is_empty() {
        "no IPv4 address".to_string()
    } else {
        held.join(", ")
    };
    Ok(Some(Finding(format!(
        "{DOCKER_BRIDGE} has {has}, not this host's subnet gateway {gateway}: restart dockerd with the options `weftctl docker-opts` prints"
    ))))
}
