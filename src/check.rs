//! `weftctl check`: compares this host's kernel with what the leases say it should hold,
//! through the datapath's own path (backend, desired state, kernel read, diff) without
//! applying anything, plus the backend's device against the lease and subnet.env.

use crate::backend::{self, DeviceSpec, Host};
use crate::config::NetworkConfig;
use crate::iface::ExtIface;
use crate::lease::Lease;
use crate::netlink::{Netlink, NetlinkError, Op};
use crate::reconcile;
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
    let Some(own) = own else {
        report.findings.push(Finding(format!(
            "no lease in etcd holds this host's public IP {}",
            ext.public_ip
        )));
        return Ok(report);
    };
    check_env(own, env, &mut report.findings);
    for family in reconcile::families(cfg, ext, own) {
        let name = device_name.filter(|_| family == Family::V4);
        check_family(nl, cfg, ext, name, own, leases, env, family, &mut report)?;
    }
    Ok(report)
}

/// One family: the device, then the datapath's own path without the apply (desired state,
/// kernel read, diff).
#[allow(clippy::too_many_arguments)]
fn check_family(
    nl: &mut Netlink,
    cfg: &NetworkConfig,
    ext: &ExtIface,
    device_name: Option<&str>,
    own: &Lease,
    leases: &[Lease],
    env: Option<&SubnetEnv>,
    family: Family,
    report: &mut Report,
) -> Result<(), NetlinkError> {
    let device = check_device(
        nl,
        cfg,
        ext,
        device_name,
        own,
        env,
        family,
        &mut report.findings,
    )?;
    let device_index = device.as_ref().map(|(i, _)| *i);
    let spec = device.as_ref().map(|(_, s)| s.clone());
    let device = device.map(|(i, s)| (i, s.name));
    let (Some(host), Some(side)) = (Host::new(ext, family, device_index), own.side(family)) else {
        return Ok(());
    };
    let desired = reconcile::desired(cfg, &host, own, leases);
    for skip in &desired.skipped {
        report.notes.push(Finding(format!(
            "lease {} is not programmed ({family}): {}",
            skip.key, skip.reason
        )));
    }
    let actual = reconcile::read_actual(nl, cfg, &host, side.subnet)?;
    let dev_name = |i: u32| match &device {
        Some((index, name)) if *index == i => name.clone(),
        _ if i == ext.index => ext.name.clone(),
        _ => format!("#{i}"),
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
    if let Some(spec) = spec.filter(DeviceSpec::has_peers) {
        check_tunnel(nl, cfg, &spec, &desired, &mut report.findings);
    }
    Ok(())
}

/// A tunnel device's peers (WireGuard) against the leases, through the datapath's own diff.
fn check_tunnel(
    nl: &mut Netlink,
    cfg: &NetworkConfig,
    spec: &DeviceSpec,
    desired: &reconcile::Desired,
    out: &mut Vec<Finding>,
) {
    let have = match backend::of(&cfg.backend).tunnel_peers(nl, spec) {
        Ok(have) => have.unwrap_or_default(),
        Err(e) => {
            out.push(Finding(format!(
                "cannot read the peers of {}: {e}",
                spec.name
            )));
            return;
        }
    };
    let change = reconcile::diff_tunnel(&desired.tunnel, &have);
    for p in &change.set {
        out.push(Finding(format!(
            "missing or wrong on {}: {}",
            spec.name,
            reconcile::describe_peer(p)
        )));
    }
    for k in &change.remove {
        let stale = have.iter().find(|p| p.public_key == *k);
        out.push(Finding(format!(
            "stale on {}: {}",
            spec.name,
            stale.map(reconcile::describe_peer).unwrap_or_default()
        )));
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
#[allow(clippy::too_many_arguments)]
fn check_device(
    nl: &mut Netlink,
    cfg: &NetworkConfig,
    ext: &ExtIface,
    device_name: Option<&str>,
    own: &Lease,
    env: Option<&SubnetEnv>,
    family: Family,
    out: &mut Vec<Finding>,
) -> Result<Option<(u32, DeviceSpec)>, NetlinkError> {
    let backend = backend::of(&cfg.backend);
    let Some(spec) = backend.device(ext, device_name, family, &backend::HostSecrets::default())
    else {
        return Ok(None);
    };
    let Some(link) = nl.link_by_name(&spec.name)? else {
        out.push(Finding(format!("device {} is missing", spec.name)));
        return Ok(None);
    };
    out.extend(
        backend
            .check_device(&link, own, family)
            .into_iter()
            .map(Finding),
    );
    if link.mtu != spec.mtu {
        out.push(Finding(format!(
            "device {} has MTU {} but should have {}",
            spec.name, link.mtu, spec.mtu
        )));
    }
    if let Some(env) = env.filter(|e| e.mtu > link.mtu) {
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
