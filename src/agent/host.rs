//! This host's facts the agent keeps: the network config, the external interface, the
//! backend's device of each family with its MAC, this host's secrets, and the MTU containers
//! get. From them come this host's lease attributes and, with its lease, the firewall's spec.

use ipnet::Ipv6Net;

use crate::backend::{DeviceSpec, HostSecrets};
use crate::config::NetworkConfig;
use crate::firewall::{FirewallSpec, Overlay};
use crate::iface::ExtIface;
use crate::lease::{Lease, LeaseAttrs};
use crate::netlink::Mac;
use crate::subnet::{Family, PerFamily};

pub(super) struct HostFacts {
    pub cfg: NetworkConfig,
    pub ext: ExtIface,
    pub devices: PerFamily<Option<DeviceSpec>>,
    /// What the backend keeps on this host (WireGuard's key), for the device specs.
    pub secrets: HostSecrets,
    /// The devices' real MACs, which the lease must advertise.
    pub device_mac: PerFamily<Option<Mac>>,
    /// The MTU containers get: the smallest the families' devices allow.
    pub mtu: u32,
    /// `--vxlan-device`: the IPv4 device's name instead of the backend's.
    pub device_name: Option<String>,
}

impl HostFacts {
    /// The families this host runs: IPv4, and IPv6 when the network has it and the external
    /// interface has an IPv6 address (else a warning says why not).
    pub fn families(&self) -> Vec<Family> {
        families(&self.cfg, &self.ext)
    }

    /// The device spec of each of `families`, for backends that have devices; the
    /// `--vxlan-device` name applies to the IPv4 one.
    pub fn device_specs(&self, families: &[Family]) -> PerFamily<Option<DeviceSpec>> {
        let backend = self.cfg.backend.backend();
        let mut specs = PerFamily::default();
        for &f in families {
            let name = self.device_name.as_deref().filter(|_| f == Family::V4);
            specs[f] = backend.device(&self.ext, name, f, &self.secrets);
        }
        specs
    }

    /// The MTU containers get with the current devices: the smallest they allow.
    pub fn overlay_mtu(&self) -> u32 {
        Family::ALL
            .iter()
            .filter_map(|f| self.devices[*f].as_ref().map(|d| d.mtu))
            .min()
            .unwrap_or(self.ext.mtu)
    }

    /// This host's lease attributes, with flannel's field names and types. The IPv6 fields
    /// are set when the host runs the IPv6 overlay: a device for it (backends with devices),
    /// or an IPv6 address and an IPv6 network (host-gw).
    pub fn attrs(&self) -> LeaseAttrs {
        let backend = self.cfg.backend.backend();
        let (devices, macs) = (&self.devices, &self.device_mac);
        let v6 = self.cfg.ipv6_network.is_some()
            && self.ext.v6.is_some()
            && (devices.v6.is_some() || devices.v4.is_none());
        LeaseAttrs {
            public_ip: self.ext.public_ip,
            public_ipv6: self.ext.v6.as_ref().map(|v| v.public_ip).filter(|_| v6),
            backend_type: backend.type_name().to_string(),
            backend_data: backend.lease_data(devices.v4.as_ref(), macs.v4),
            backend_v6_data: if v6 {
                backend.lease_data(devices.v6.as_ref(), macs.v6)
            } else {
                None
            },
        }
    }

    /// `own`'s IPv6 subnet, when this host runs the IPv6 overlay.
    pub fn own_subnet6(&self, own: &Lease) -> Option<Ipv6Net> {
        own.subnet6.filter(|_| self.ext.v6.is_some())
    }

    /// The firewall's spec for `own`: each family's overlay network and this host's subnet
    /// in it.
    pub fn firewall_spec(&self, own: &Lease, masquerade: bool) -> FirewallSpec {
        let v4 = self.cfg.network.map(|n| Overlay {
            network: n.into(),
            subnet: own.subnet.into(),
        });
        let v6 = (self.cfg.ipv6_network.zip(self.own_subnet6(own))).map(|(n, s)| Overlay {
            network: n.into(),
            subnet: s.into(),
        });
        FirewallSpec {
            overlay: PerFamily { v4, v6 },
            masquerade,
        }
    }
}

/// The families a host with `ext` runs on the network `cfg` (see [`HostFacts::families`]).
pub(super) fn families(cfg: &NetworkConfig, ext: &ExtIface) -> Vec<Family> {
    let mut out = vec![Family::V4];
    if cfg.ipv6_network.is_some() {
        if ext.v6.is_some() {
            out.push(Family::V6);
        } else {
            tracing::warn!(iface = %ext.name, "the network has IPv6 but the external interface has no global IPv6 address (nor is --public-ipv6 given): this host runs the IPv4 overlay only");
        }
    }
    out
}
