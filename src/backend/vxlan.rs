//! The VXLAN device: created or adopted, kept at the right MTU and learning mode, and its MAC
//! kept stable across recreation so the MAC this host advertises in its lease stays true.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

use crate::config::VxlanConfig;
use crate::netlink::{Link, Mac, Netlink, NetlinkError, VxlanSpec};

/// The kernel's default VXLAN port on Linux, which flannel's `Port: 0` means.
pub const DEFAULT_PORT: u16 = 8472;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("device {0} vanished while it was being set up")]
    Vanished(String),
}

/// What the device must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: IpAddr,
    pub lower: u32,
    pub learning: bool,
    pub gbp: bool,
    pub mtu: u32,
}

impl DeviceSpec {
    /// MTU: the config's, else the external interface's less the encapsulation overhead
    /// (50 bytes over IPv4, 70 over IPv6).
    pub fn new(
        cfg: &VxlanConfig,
        name: Option<&str>,
        local: IpAddr,
        lower: u32,
        ext_mtu: u32,
    ) -> DeviceSpec {
        let overhead = if local.is_ipv6() { 70 } else { 50 };
        DeviceSpec {
            name: name
                .map(str::to_string)
                .unwrap_or_else(|| format!("flannel.{}", cfg.vni)),
            vni: cfg.vni,
            port: if cfg.port == 0 {
                DEFAULT_PORT
            } else {
                cfg.port
            },
            local,
            lower,
            learning: cfg.learning,
            gbp: cfg.gbp,
            mtu: cfg.mtu.unwrap_or(ext_mtu.saturating_sub(overhead)),
        }
    }
}

/// A MAC a device can be given: unicast and not all zeros. A lease may advertise anything,
/// and the kernel refuses any other MAC, which would keep the device from being created.
pub fn assignable(mac: &Mac) -> bool {
    *mac != [0; 6] && mac[0] & 1 == 0
}

/// What `ensure` found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub index: u32,
    pub mac: Mac,
    pub mtu: u32,
    /// True when the device was (re)created rather than adopted.
    pub created: bool,
}

/// The identity that cannot change in place: anything else is corrected on the live device.
fn same_identity(link: &Link, spec: &DeviceSpec) -> bool {
    let Some(v) = &link.vxlan else { return false };
    v.vni == spec.vni
        && v.port == spec.port
        && v.local == Some(spec.local)
        && v.lower == Some(spec.lower)
        && v.gbp == spec.gbp
}

/// Creates the device or adopts the one that is there. `mac` is the MAC to give a device that
/// must be created (the one this host's lease advertises), so peers keep reaching it.
pub fn ensure(
    nl: &mut Netlink,
    spec: &DeviceSpec,
    mac: Option<Mac>,
) -> Result<Device, DeviceError> {
    let existing = nl.link_by_name(&spec.name)?;
    if let Some(bad) = mac.filter(|m| !assignable(m)) {
        tracing::warn!(device = %spec.name, mac = %crate::netlink::format_mac(&bad), "the lease advertises a MAC no device can have; the kernel picks one");
    }
    let mac = mac.filter(assignable);
    let (link, created) = match existing {
        Some(link) if link.kind.as_deref() == Some("vxlan") && same_identity(&link, spec) => {
            (link, false)
        }
        other => {
            let mut mac = mac;
            if let Some(old) = other {
                tracing::warn!(device = %spec.name, "existing device has another identity (VNI, port, local address, lower device or GBP); recreating it");
                mac = mac.or(old.mac.filter(assignable));
                nl.delete_link(old.index)?;
            }
            let link = nl.create_vxlan(&VxlanSpec {
                name: spec.name.clone(),
                vni: spec.vni,
                port: spec.port,
                local: spec.local,
                lower: Some(spec.lower),
                learning: spec.learning,
                gbp: spec.gbp,
                mtu: Some(spec.mtu),
                mac,
            })?;
            (link, true)
        }
    };
    if link.mtu != spec.mtu {
        nl.set_mtu(link.index, spec.mtu)?;
    }
    if link
        .vxlan
        .as_ref()
        .is_some_and(|v| v.learning != spec.learning)
    {
        nl.set_vxlan_learning(&link, spec.learning)?;
    }
    if !link.up {
        nl.set_up(link.index)?;
    }
    let link = nl
        .link_by_index(link.index)?
        .ok_or_else(|| DeviceError::Vanished(spec.name.clone()))?;
    let mac = link
        .mac
        .ok_or_else(|| DeviceError::Vanished(spec.name.clone()))?;
    Ok(Device {
        index: link.index,
        mac,
        mtu: link.mtu,
        created,
    })
}

/// Gives the device exactly one address inside the network: `<subnet ip>/32`. An address left
/// from an earlier lease (another subnet) is removed.
pub fn ensure_address(nl: &mut Netlink, index: u32, subnet: Ipv4Net) -> Result<bool, NetlinkError> {
    let want = IpNet::V4(Ipv4Net::new(subnet.network(), 32).expect("32 is a valid prefix"));
    let mut changed = false;
    let mut present = false;
    for a in nl.addresses(Some(index))? {
        if a.addr == want {
            present = true;
        } else if a.addr.addr().is_ipv4() {
            nl.del_address(index, a.addr)?;
            changed = true;
        }
    }
    if !present {
        nl.add_address(index, want)?;
        changed = true;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unicast_nonzero_macs_are_assignable() {
        assert!(assignable(&[0x0e, 0, 0, 0, 0, 1]));
        assert!(!assignable(&[0; 6]));
        assert!(!assignable(&[0x01, 0x00, 0x5e, 0, 0, 1]));
        assert!(!assignable(&[0xff; 6]));
    }
}
