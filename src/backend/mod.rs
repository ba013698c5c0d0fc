//! Backends: what the overlay looks like in this host's kernel. Each backend answers the same
//! questions through [`Backend`] (its devices, what a remote lease becomes, what goes into this
//! host's lease, its MTU overhead, what `weftctl check` verifies); [`of`] is the registry.

pub mod hostgw;
pub mod vxlan;

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};

use crate::config::BackendConfig;
use crate::iface::ExtIface;
use crate::lease::{Lease, LeaseAttrs};
use crate::netlink::VxlanSpec;
use crate::netlink::{Family, FdbEntry, Link, Mac, Neighbour, Netlink, NetlinkError, Route};

/// The registry: the backend a config names. One line per backend.
pub fn of(cfg: &BackendConfig) -> &dyn Backend {
    match cfg {
        BackendConfig::Vxlan(c) => c,
        BackendConfig::HostGw => &hostgw::HostGw,
    }
}

/// The questions every backend answers. Everything but [`Backend::ensure_device`] is pure.
pub trait Backend {
    /// The name leases carry in `BackendType`.
    fn type_name(&self) -> &'static str;

    /// Bytes the backend takes from the external interface's MTU over a `family` underlay.
    fn mtu_overhead(&self, family: Family) -> u32;

    /// Refuses an external interface the backend cannot work with (at start-up).
    fn usable(&self, _ext: &ExtIface) -> Result<(), String> {
        Ok(())
    }

    /// The device the backend needs on this host for `family`, if any; `name` overrides the
    /// backend's default name.
    fn device(&self, ext: &ExtIface, name: Option<&str>, family: Family) -> Option<DeviceSpec>;

    /// Creates the device or adopts the one that is there. `mac` is the MAC this host's lease
    /// advertises, for a device that has to be created.
    fn ensure_device(
        &self,
        nl: &mut Netlink,
        spec: &DeviceSpec,
        mac: Option<Mac>,
    ) -> Result<Device, DeviceError>;

    /// What one remote lease becomes in the kernel; `Err` says why it must not be programmed.
    /// The rules every backend shares (network, overlap, address) are checked before.
    fn peer(&self, host: &Host, lease: &Lease) -> Result<PeerObjects, String>;

    /// The `BackendData` this host writes into its own lease, given its device's MAC.
    fn lease_data(&self, device_mac: Option<Mac>) -> Option<serde_json::Value>;

    /// The device MAC a lease advertises (kept when the device must be recreated).
    fn advertised_mac(&self, _attrs: &LeaseAttrs) -> Option<Mac> {
        None
    }

    /// What `weftctl check` finds wrong with the backend's device beyond MTU and state.
    fn check_device(&self, _link: &Link, _own: &Lease) -> Vec<String> {
        Vec::new()
    }
}

/// Facts about this host the desired state depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub public_ip: Ipv4Addr,
    /// The external (underlay) interface.
    pub ext_index: u32,
    /// The external interface's IPv4 networks: a peer inside one is reachable without a
    /// gateway (DirectRouting, host-gw).
    pub ext_networks: Vec<Ipv4Net>,
    /// The backend's device, when it has one and it exists.
    pub device: Option<u32>,
}

impl Host {
    pub fn new(ext: &ExtIface, device: Option<u32>) -> Host {
        Host {
            public_ip: ext.public_ip,
            ext_index: ext.index,
            ext_networks: ext.networks.clone(),
            device,
        }
    }

    /// Whether a peer at `ip` is on a network of the external interface (no gateway between).
    pub fn reaches_directly(&self, ip: Ipv4Addr) -> bool {
        self.ext_networks.iter().any(|n| n.contains(&ip))
    }

    /// A route to `subnet` through a peer on the external interface's network.
    pub fn direct_route(&self, subnet: Ipv4Net, public_ip: Ipv4Addr) -> Route {
        let mut r = Route::new(IpNet::V4(subnet));
        r.gateway = Some(IpAddr::V4(public_ip));
        r.oif = Some(self.ext_index);
        r
    }
}

/// The kernel objects one remote lease calls for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerObjects {
    pub route: Option<Route>,
    pub neighbour: Option<Neighbour>,
    pub fdb: Option<FdbEntry>,
}

/// A device a backend needs: its name, MTU, and how to create it.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub name: String,
    pub mtu: u32,
    pub link: LinkSpec,
}

/// How a device is created; read back by the backend that asked for it.
#[derive(Debug, Clone)]
pub enum LinkSpec {
    Vxlan(VxlanSpec),
}

/// What [`Backend::ensure_device`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub index: u32,
    pub mac: Mac,
    pub mtu: u32,
    /// True when the device was (re)created rather than adopted.
    pub created: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("device {0} vanished while it was being set up")]
    Vanished(String),
    #[error("device {0} is not a device this backend creates")]
    Foreign(String),
}

/// Gives a device exactly one address inside the network: `<subnet ip>/32`. An address left
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
    use crate::config::NetworkConfig;

    fn ext() -> ExtIface {
        ExtIface {
            index: 2,
            name: "eth0".into(),
            mtu: 1500,
            iface_addr: "198.18.0.1".parse().unwrap(),
            public_ip: "198.18.0.1".parse().unwrap(),
            addresses: vec!["198.18.0.1".parse().unwrap()],
            networks: vec!["198.18.0.0/24".parse().unwrap()],
        }
    }

    fn backend_cfg(json: &str) -> BackendConfig {
        NetworkConfig::parse(&format!(
            r#"{{"Network":"198.19.0.0/16","Backend":{json}}}"#
        ))
        .unwrap()
        .backend
    }

    fn vxlan_link(spec: &DeviceSpec) -> &VxlanSpec {
        let LinkSpec::Vxlan(v) = &spec.link;
        v
    }

    #[test]
    fn vxlan_needs_flannels_device_and_host_gw_none() {
        let cfg = backend_cfg(r#"{"Type":"vxlan","VNI":7}"#);
        let vx = of(&cfg);
        assert_eq!(vx.type_name(), "vxlan");
        let spec = vx.device(&ext(), None, Family::V4).unwrap();
        assert_eq!((spec.name.as_str(), spec.mtu), ("flannel.7", 1450));
        let link = vxlan_link(&spec);
        assert_eq!((link.vni, link.port, link.lower), (7, 8472, Some(2)));
        assert_eq!(link.local, "198.18.0.1".parse::<IpAddr>().unwrap());
        assert!(vx.device(&ext(), None, Family::V6).is_none());
        assert_eq!(vx.mtu_overhead(Family::V6), 70);

        let cfg = backend_cfg(r#"{"Type":"vxlan","MTU":1400,"Port":4789}"#);
        let spec = of(&cfg).device(&ext(), Some("weft.1"), Family::V4).unwrap();
        assert_eq!((spec.name.as_str(), spec.mtu), ("weft.1", 1400));
        assert_eq!(vxlan_link(&spec).port, 4789);

        let hg = of(&BackendConfig::HostGw);
        assert_eq!(hg.type_name(), "host-gw");
        assert!(hg.device(&ext(), None, Family::V4).is_none());
        assert_eq!(hg.mtu_overhead(Family::V4), 0);
    }

    #[test]
    fn lease_data_is_flannels() {
        let cfg = backend_cfg(r#"{"Type":"vxlan"}"#);
        let vx = of(&cfg);
        let data = vx.lease_data(Some([0x0e, 0, 0, 0, 0, 1])).unwrap();
        assert_eq!(
            data,
            serde_json::json!({"VNI": 1, "VtepMAC": "0e:00:00:00:00:01"})
        );
        let attrs = LeaseAttrs {
            backend_data: Some(data),
            ..LeaseAttrs::new_host_gw("198.18.0.1".parse().unwrap())
        };
        assert_eq!(vx.advertised_mac(&attrs), Some([0x0e, 0, 0, 0, 0, 1]));
        assert_eq!(of(&BackendConfig::HostGw).lease_data(None), None);
        assert_eq!(of(&BackendConfig::HostGw).advertised_mac(&attrs), None);
    }

    #[test]
    fn host_gw_needs_the_public_ip_on_the_interface() {
        let hg = of(&BackendConfig::HostGw);
        assert!(hg.usable(&ext()).is_ok());
        let mut e = ext();
        e.public_ip = "198.18.9.9".parse().unwrap();
        let why = hg.usable(&e).unwrap_err();
        assert!(
            why.contains("198.18.9.9 is not an address of eth0"),
            "{why}"
        );
        assert!(of(&backend_cfg(r#"{"Type":"vxlan"}"#)).usable(&e).is_ok());
    }

    #[test]
    fn check_finds_a_device_mac_the_lease_does_not_advertise() {
        let cfg = backend_cfg(r#"{"Type":"vxlan"}"#);
        let vx = of(&cfg);
        let own = Lease {
            subnet: "198.19.1.0/24".parse().unwrap(),
            subnet6: None,
            attrs: LeaseAttrs::new_vxlan("198.18.0.1".parse().unwrap(), 1, "0e:00:00:00:00:01"),
            expiration: None,
            etcd_lease_id: None,
            mod_revision: 1,
        };
        let mut link = Link {
            index: 7,
            name: "flannel.1".into(),
            kind: Some("vxlan".into()),
            mac: Some([0x0e, 0, 0, 0, 0, 1]),
            mtu: 1450,
            up: true,
            master: None,
            vxlan: None,
        };
        assert!(vx.check_device(&link, &own).is_empty());
        link.mac = Some([0x0e, 0, 0, 0, 0, 2]);
        let found = vx.check_device(&link, &own);
        assert_eq!(
            found,
            ["device flannel.1 has MAC 0e:00:00:00:00:02 but the lease advertises 0e:00:00:00:00:01"]
        );
    }
}
