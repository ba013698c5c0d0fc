//! `weftctl check`: compares this host's kernel with what the leases say it should hold,
//! through the datapath's own path (backend, desired state, kernel read, diff) without
//! applying anything, plus the backend's device against the lease and subnet.env.

use crate::backend::{DeviceSpec, Host, HostSecrets};
use crate::config::{BackendConfig, NetworkConfig};
use crate::datapath::kernel::read_actual;
use crate::iface::ExtIface;
use crate::lease::Lease;
use crate::netlink::{Netlink, NetlinkError, Op};
use crate::plan::{self, Desired};
use crate::subnet::Family;
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

/// What the check compares the kernel with: the network config the host runs and the
/// backends it runs (the preferred first; two mid-migration), this host's external interface
/// and device name (None: the backend's default), the leases and subnet.env.
pub struct Subject<'a> {
    pub cfg: &'a NetworkConfig,
    pub backends: &'a [BackendConfig],
    pub ext: &'a ExtIface,
    pub device_name: Option<&'a str>,
    pub leases: &'a [Lease],
    pub env: Option<&'a SubnetEnv>,
}

/// Reads the kernel through `nl` and reports every difference. `own` is this host's lease
/// (None: the host holds none, itself a finding).
pub fn check(nl: &mut Netlink, s: &Subject, own: Option<&Lease>) -> Result<Report, NetlinkError> {
    let mut report = Report::default();
    let Some(own) = own else {
        report.findings.push(Finding(format!(
            "no lease in etcd holds this host's public IP {}",
            s.ext.public_ip
        )));
        return Ok(report);
    };
    check_env(own, s.env, &mut report.findings);
    for family in plan::families(s.cfg, s.ext, own) {
        check_family(nl, s, own, family, &mut report)?;
    }
    Ok(report)
}

/// One family: the devices, then the datapath's own path without the apply (desired state,
/// kernel read, diff).
fn check_family(
    nl: &mut Netlink,
    s: &Subject,
    own: &Lease,
    family: Family,
    report: &mut Report,
) -> Result<(), NetlinkError> {
    let mut list = Vec::new();
    let mut devices: Vec<(u32, DeviceSpec)> = Vec::new();
    for b in s.backends {
        let dev = check_device(nl, s, b, own, family, &mut report.findings)?;
        let Some(host) = Host::new(s.ext, family, dev.as_ref().map(|(i, _)| *i)) else {
            return Ok(());
        };
        list.push(plan::Speaker {
            backend: b.clone(),
            host,
        });
        devices.extend(dev);
    }
    let Some(side) = own.side(family) else {
        return Ok(());
    };
    let run = plan::Speakers {
        list,
        settled: None,
    };
    let desired = plan::desired(s.cfg, &run, own, s.leases);
    for skip in &desired.skipped {
        report.notes.push(Finding(format!(
            "lease {} is not programmed ({family}): {}",
            skip.key, skip.reason
        )));
    }
    let actual = read_actual(nl, s.cfg, &run, side.subnet)?;
    let dev_name = |i: u32| match devices.iter().find(|(index, _)| *index == i) {
        Some((_, spec)) => spec.name.clone(),
        _ if i == s.ext.index => s.ext.name.clone(),
        _ => format!("#{i}"),
    };
    for op in plan::diff(&desired, &actual) {
        let what = plan::describe(&op, &dev_name);
        let line = match op {
            Op::ReplaceRoute(_) | Op::ReplaceNeighbour(_) | Op::ReplaceFdb(_) => {
                format!("missing or wrong: {what}")
            }
            _ => format!("stale: {}", what.trim_start_matches("remove ")),
        };
        report.findings.push(Finding(line));
    }
    // One device of a family holds peers (see the datapath's tunnels).
    if let Some((_, spec)) = devices.iter().find(|(_, d)| d.kind.tunnel(d).is_some()) {
        check_tunnel(nl, spec, &desired, &mut report.findings);
    }
    Ok(())
}

/// A tunnel device's own peers (WireGuard's) against the leases, through the datapath's own
/// diff; nothing for a device that holds none.
fn check_tunnel(nl: &mut Netlink, spec: &DeviceSpec, desired: &Desired, out: &mut Vec<Finding>) {
    let Some(mut tunnel) = spec.kind.tunnel(spec) else {
        return;
    };
    let have = match tunnel.read(nl) {
        Ok(have) => have,
        Err(e) => {
            out.push(Finding(format!(
                "cannot read the peers of {}: {e}",
                spec.name
            )));
            return;
        }
    };
    let change = plan::diff_tunnel(&desired.tunnel, &have);
    for p in &change.set {
        out.push(Finding(format!(
            "missing or wrong on {}: {}",
            spec.name,
            p.describe()
        )));
    }
    for p in &change.remove {
        out.push(Finding(format!("stale on {}: {}", spec.name, p.describe())));
    }
}

/// subnet.env must name this host's subnets.
fn check_env(own: &Lease, env: Option<&SubnetEnv>, out: &mut Vec<Finding>) {
    let Some(env) = env else {
        out.push(Finding("subnet.env is missing or unreadable".into()));
        return;
    };
    if env.subnet_network() != Some(own.subnet) {
        out.push(Finding(format!(
            "subnet.env says FLANNEL_SUBNET={} but this host's lease is {}",
            env.subnet.map(|s| s.to_string()).unwrap_or_default(),
            own.subnet
        )));
    }
    if own.subnet6.is_some() && env.subnet6_network() != own.subnet6 {
        out.push(Finding(format!(
            "subnet.env says FLANNEL_IPV6_SUBNET={} but this host's lease has {}",
            env.ipv6_subnet.map(|s| s.to_string()).unwrap_or_default(),
            own.subnet6.map(|s| s.to_string()).unwrap_or_default()
        )));
    }
}

/// The backend's device of `family`, if it needs one: there, up, within subnet.env's MTU
/// (the smallest of the families'), and whatever the backend itself checks. Returns its
/// index and spec when it exists.
fn check_device(
    nl: &mut Netlink,
    s: &Subject,
    backend: &BackendConfig,
    own: &Lease,
    family: Family,
    out: &mut Vec<Finding>,
) -> Result<Option<(u32, DeviceSpec)>, NetlinkError> {
    let backend = backend.backend();
    let name = s.device_name.filter(|_| family == Family::V4);
    let Some(spec) = backend.device(s.ext, name, family, &HostSecrets::default()) else {
        return Ok(None);
    };
    let Some(link) = nl.link_by_name(&spec.name)? else {
        out.push(Finding(format!("device {} is missing", spec.name)));
        return Ok(None);
    };
    let data = (own.attrs.speaks(backend.type_name())).and_then(|sp| sp.data(family));
    out.extend(backend.check_device(&link, data).into_iter().map(Finding));
    if link.mtu != spec.mtu {
        out.push(Finding(format!(
            "device {} has MTU {} but should have {}",
            spec.name, link.mtu, spec.mtu
        )));
    }
    if let Some(env) = s.env.filter(|e| e.mtu > link.mtu) {
        out.push(Finding(format!(
            "device {} has MTU {} but subnet.env says FLANNEL_MTU={}",
            spec.name, link.mtu, env.mtu
        )));
    }
    if !link.up {
        out.push(Finding(format!("device {} is down", spec.name)));
    }
    Ok(Some((link.index, spec)))
}

/// weft's container bridges whose MAC moved from the one pinned on them (see
/// [`crate::bridge`]): weftd puts it back; `weftctl check` reports it.
pub fn container_bridges(nl: &mut Netlink) -> Result<Vec<Finding>, NetlinkError> {
    let moved = crate::bridge::moved(&nl.links()?);
    Ok(moved.iter().map(|m| Finding(m.to_string())).collect())
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
