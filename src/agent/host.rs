//! This host's facts the agent keeps: the network config it runs, the backends it runs (one,
//! or two while the fleet moves between them) with their devices and MACs, the external
//! interface, this host's secrets, and the MTU containers get. From them come this host's
//! lease attributes and, with its lease, the firewall's spec.

use std::collections::BTreeMap;

use ipnet::Ipv6Net;

use crate::backend::{DeviceSpec, HostSecrets};
use crate::config::{BackendConfig, NetworkConfig};
use crate::firewall::{FirewallSpec, Overlay};
use crate::iface::ExtIface;
use crate::lease::{Lease, LeaseAttrs};
use crate::live::Running;
use crate::netlink::Mac;
use crate::subnet::{Family, PerFamily};

pub(super) struct HostFacts {
    /// The config the network runs (its backend is the one hosts prefer).
    pub cfg: NetworkConfig,
    /// The backends this host runs, the preferred first, and where it stands in a migration.
    pub run: Running,
    pub ext: ExtIface,
    /// Each backend's device per family, in the order of `run.backends`.
    pub devices: PerFamily<Vec<Option<DeviceSpec>>>,
    /// What each backend keeps on this host (WireGuard's key), by backend type, loaded when
    /// the backend first runs.
    pub secrets: BTreeMap<&'static str, HostSecrets>,
    /// The devices' real MACs by name, which the lease must advertise.
    pub device_mac: BTreeMap<String, Mac>,
    /// The MTU containers get: the smallest the devices allow.
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

    /// The device `backend` needs in `family`, if any; the `--vxlan-device` name applies to
    /// the IPv4 one.
    pub fn device_spec(&self, backend: &BackendConfig, family: Family) -> Option<DeviceSpec> {
        let name = self.device_name.as_deref().filter(|_| family == Family::V4);
        let secrets = self
            .secrets
            .get(backend.type_name())
            .cloned()
            .unwrap_or_default();
        backend.backend().device(&self.ext, name, family, &secrets)
    }

    /// Every running backend's device spec in each of `families`.
    pub fn device_specs(&self, families: &[Family]) -> PerFamily<Vec<Option<DeviceSpec>>> {
        let mut specs: PerFamily<Vec<Option<DeviceSpec>>> = PerFamily::default();
        for &f in families {
            specs[f] = (self.run.backends.iter())
                .map(|b| self.device_spec(b, f))
                .collect();
        }
        specs
    }

    /// The names of the devices of `others` (backends this host knows of but does not run).
    pub fn device_names_of(&self, others: &[&BackendConfig]) -> Vec<String> {
        let mut names = Vec::new();
        for b in others {
            for f in Family::ALL {
                let name = self.device_name.as_deref().filter(|_| f == Family::V4);
                let spec = b
                    .backend()
                    .device(&self.ext, name, f, &HostSecrets::default());
                names.extend(spec.map(|s| s.name));
            }
        }
        names
    }

    /// The MTU containers get with the current devices: the smallest they allow.
    pub fn overlay_mtu(&self) -> u32 {
        Family::ALL
            .iter()
            .flat_map(|f| self.devices[*f].iter().flatten().map(|d| d.mtu))
            .min()
            .unwrap_or(self.ext.mtu)
    }

    /// One backend's part of the lease: its `BackendData` and `BackendV6Data`. The IPv6 part
    /// is there when the host runs the IPv6 overlay: a device for it (backends with
    /// devices), or an IPv6 address and an IPv6 network (host-gw).
    fn lease_data(&self, i: usize) -> (Option<serde_json::Value>, Option<serde_json::Value>, bool) {
        let backend = self.run.backends[i].backend();
        let spec = |f: Family| self.devices[f].get(i).and_then(Option::as_ref);
        let mac = |f: Family| spec(f).and_then(|d| self.device_mac.get(&d.name)).copied();
        let v6 = self.cfg.ipv6_network.is_some()
            && self.ext.v6.is_some()
            && (spec(Family::V6).is_some() || spec(Family::V4).is_none());
        let data = backend.lease_data(spec(Family::V4), mac(Family::V4));
        let data6 = v6
            .then(|| backend.lease_data(spec(Family::V6), mac(Family::V6)))
            .flatten();
        (data, data6, v6)
    }

    /// This host's lease attributes, with flannel's field names and types: the primary
    /// backend in flannel's fields, any other in `WeftBackends`.
    pub fn attrs(&self) -> LeaseAttrs {
        let primary = self.run.primary;
        let (data, data6, v6) = self.lease_data(primary);
        let others: Vec<(&str, _, _)> = (0..self.run.backends.len())
            .filter(|i| *i != primary)
            .map(|i| {
                let (d, d6, _) = self.lease_data(i);
                (self.run.backends[i].type_name(), d, d6)
            })
            .collect();
        LeaseAttrs {
            public_ip: self.ext.public_ip,
            public_ipv6: self.ext.v6.as_ref().map(|v| v.public_ip).filter(|_| v6),
            backend_type: self.run.backends[primary].type_name().to_string(),
            backend_data: data,
            backend_v6_data: data6,
            weft_backends: LeaseAttrs::weft_backends_of(others),
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

    /// The running backends' types, the preferred first, e.g. `wireguard+vxlan`.
    pub fn backend_names(&self) -> String {
        let names: Vec<&str> = self.run.backends.iter().map(|b| b.type_name()).collect();
        names.join("+")
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
