//! The vxlan backend, flannel's wire format: one `flannel.<VNI>` device, created or adopted,
//! kept at the right MTU and learning mode, and its MAC kept stable across recreation so the
//! MAC this host advertises stays true; per peer a route, a neighbour and an FDB entry.

#[cfg(feature = "daemon")]
use std::net::IpAddr;

use serde_json::{Map, Value};

use super::{Backend, SettingChange, Summary};
use crate::json::{get_bool, get_uint, invalid, rename, ConfigErrors};
use crate::subnet::Family;
#[cfg(feature = "daemon")]
use {
    super::{
        Device, DeviceError, DeviceKind, DeviceSpec, Host, HostSecrets, Identity, Peer, PeerObjects,
    },
    crate::iface::ExtIface,
    crate::netlink::{
        format_mac, parse_mac, FdbEntry, Link, Mac, Neighbour, Netlink, Route, VxlanSpec,
        NUD_PERMANENT, VXLAN_DEFAULT_PORT,
    },
};

/// The backend's name in `Backend.Type` and a lease's `BackendType`.
pub const TYPE: &str = "vxlan";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanConfig {
    pub vni: u32,
    /// UDP port; 0 leaves the kernel's default (8472).
    pub port: u16,
    /// `None`: derived from the external interface.
    pub mtu: Option<u32>,
    pub gbp: bool,
    pub learning: bool,
    pub direct_routing: bool,
}

impl Default for VxlanConfig {
    fn default() -> Self {
        VxlanConfig {
            vni: 1,
            port: 0,
            mtu: None,
            gbp: false,
            learning: false,
            direct_routing: false,
        }
    }
}

impl VxlanConfig {
    /// Reads `Backend` of a vxlan config; fields are named with their path in errors, and
    /// every broken one is reported.
    pub fn parse(obj: &Map<String, Value>) -> Result<VxlanConfig, ConfigErrors> {
        let mut problems = ConfigErrors::default();
        let mut c = VxlanConfig::default();
        if let Some(vni) = uint(&mut problems, obj, "VNI", "Backend.VNI") {
            match u32::try_from(vni).ok().filter(|v| *v <= 0xFF_FFFF) {
                Some(v) => c.vni = v,
                None => problems.push(invalid(
                    "Backend.VNI",
                    vni,
                    "must be at most 16777215 (24 bits)",
                )),
            }
        }
        if let Some(port) = uint(&mut problems, obj, "Port", "Backend.Port") {
            match u16::try_from(port) {
                Ok(p) => c.port = p,
                Err(_) => problems.push(invalid("Backend.Port", port, "must be at most 65535")),
            }
        }
        match uint(&mut problems, obj, "MTU", "Backend.MTU") {
            None | Some(0) => {}
            Some(mtu @ 68..=65535) => c.mtu = Some(mtu as u32),
            Some(mtu) => problems.push(invalid(
                "Backend.MTU",
                mtu,
                "must be between 68 and 65535 (or 0 to derive it)",
            )),
        }
        let mut flag = |name: &'static str, field: &'static str| {
            problems
                .check(get_bool(obj, name, false).map_err(|e| rename(e, field)))
                .unwrap_or_default()
        };
        c.gbp = flag("GBP", "Backend.GBP");
        c.learning = flag("Learning", "Backend.Learning");
        c.direct_routing = flag("DirectRouting", "Backend.DirectRouting");
        problems.or(Some(c))
    }
}

/// A number setting, when given and of the right kind; a wrong kind is noted under `field`.
fn uint(
    problems: &mut ConfigErrors,
    obj: &Map<String, Value>,
    name: &'static str,
    field: &'static str,
) -> Option<u64> {
    problems
        .check(get_uint(obj, name).map_err(|e| rename(e, field)))
        .flatten()
}

/// The VXLAN part of a lease: which VNI and which VTEP MAC to send to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanLeaseData {
    pub vni: u32,
    /// As stored (flannel writes lower-case colon-separated hex).
    pub vtep_mac: String,
}

impl VxlanLeaseData {
    /// flannel's `BackendData` object for a VXLAN lease.
    pub fn to_value(&self) -> Value {
        serde_json::json!({"VNI": self.vni, "VtepMAC": self.vtep_mac})
    }

    /// Reads `BackendData` (or `BackendV6Data`); `None` when it is not a VXLAN one.
    pub fn from_value(v: &Value) -> Option<VxlanLeaseData> {
        let obj = v.as_object()?;
        let get = |name: &str| {
            obj.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        };
        let vni = u32::try_from(get("VNI")?.as_u64()?).ok()?;
        let vtep_mac = get("VtepMAC")?.as_str()?.to_string();
        Some(VxlanLeaseData { vni, vtep_mac })
    }
}

impl Backend for VxlanConfig {
    fn type_name(&self) -> &'static str {
        TYPE
    }

    fn params(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("VNI".into(), self.vni.into());
        m.insert("Port".into(), self.port.into());
        m.insert("MTU".into(), self.mtu.unwrap_or(0).into());
        m.insert("GBP".into(), self.gbp.into());
        m.insert("Learning".into(), self.learning.into());
        m.insert("DirectRouting".into(), self.direct_routing.into());
        m
    }

    /// The outer Ethernet, IP, UDP and VXLAN headers.
    fn mtu_overhead(&self, family: Family) -> u32 {
        match family {
            Family::V4 => 50,
            Family::V6 => 70,
        }
    }

    /// `flannel.<VNI>` (`flannel-v6.<VNI>` over the IPv6 underlay) with the config's MTU, else
    /// the external interface's less the family's overhead.
    #[cfg(feature = "daemon")]
    fn device(
        &self,
        ext: &ExtIface,
        name: Option<&str>,
        family: Family,
        _: &HostSecrets,
    ) -> Option<DeviceSpec> {
        let local: IpAddr = ext.local(family)?;
        let mtu = self
            .mtu
            .unwrap_or(ext.mtu.saturating_sub(self.mtu_overhead(family)));
        let name = name.map_or_else(
            || match family {
                Family::V4 => format!("flannel.{}", self.vni),
                Family::V6 => format!("flannel-v6.{}", self.vni),
            },
            str::to_string,
        );
        let link = VxlanSpec {
            name: name.clone(),
            vni: self.vni,
            port: if self.port == 0 {
                VXLAN_DEFAULT_PORT
            } else {
                self.port
            },
            local,
            lower: Some(ext.index),
            learning: self.learning,
            gbp: self.gbp,
            mtu: Some(mtu),
            mac: None,
        };
        Some(DeviceSpec {
            name,
            mtu,
            kind: std::sync::Arc::new(link),
        })
    }

    /// The VTEP MAC: a second device with it would take the first one's FDB entry.
    #[cfg(feature = "daemon")]
    fn identity(&self, data: Option<&Value>) -> Option<Identity> {
        let mac = parse_mac(&VxlanLeaseData::from_value(data?)?.vtep_mac).ok()?;
        Some(Identity {
            what: "VtepMAC",
            value: format_mac(&mac),
        })
    }

    #[cfg(feature = "daemon")]
    fn peer(&self, host: &Host, peer: &Peer) -> Result<PeerObjects, String> {
        let public_ip = peer.public_ip;
        if self.direct_routing && host.reaches_directly(public_ip) {
            return Ok(PeerObjects {
                route: Some(host.direct_route(peer.subnet, public_ip)),
                ..PeerObjects::default()
            });
        }
        let data = peer
            .data
            .and_then(VxlanLeaseData::from_value)
            .ok_or_else(|| "BackendData has no usable VNI and VtepMAC".to_string())?;
        if data.vni != self.vni {
            return Err(format!(
                "VNI {} differs from this network's {}",
                data.vni, self.vni
            ));
        }
        let mac = parse_mac(&data.vtep_mac)
            .map_err(|_| format!("VtepMAC {:?} is not a MAC address", data.vtep_mac))?;
        if !assignable(&mac) {
            return Err(format!(
                "VtepMAC {} is not a unicast address",
                data.vtep_mac
            ));
        }
        let Some(dev) = host.device else {
            return Err("the VXLAN device does not exist yet".to_string());
        };
        // flannel's three objects: the peer's subnet via its VTEP address on the device,
        // that address's MAC, and where to send frames for that MAC.
        let gw = peer.subnet.network();
        let mut route = Route::new(peer.subnet);
        route.gateway = Some(gw);
        route.oif = Some(dev);
        route.onlink = true;
        Ok(PeerObjects {
            route: Some(route),
            neighbour: Some(Neighbour {
                index: dev,
                ip: gw,
                mac: Some(mac),
                state: NUD_PERMANENT,
            }),
            fdb: Some(FdbEntry {
                index: dev,
                mac,
                dst: Some(public_ip),
                permanent: true,
            }),
            tunnel: None,
        })
    }

    #[cfg(feature = "daemon")]
    fn lease_data(&self, _: Option<&DeviceSpec>, device_mac: Option<Mac>) -> Option<Value> {
        let vtep_mac = device_mac.map(|m| format_mac(&m)).unwrap_or_default();
        Some(
            VxlanLeaseData {
                vni: self.vni,
                vtep_mac,
            }
            .to_value(),
        )
    }

    #[cfg(feature = "daemon")]
    fn advertised_mac(&self, data: Option<&Value>) -> Option<Mac> {
        let d = VxlanLeaseData::from_value(data?)?;
        parse_mac(&d.vtep_mac).ok()
    }

    /// Peers send to the MAC the lease advertises, so the device must have it.
    #[cfg(feature = "daemon")]
    fn check_device(&self, link: &Link, data: Option<&Value>) -> Vec<String> {
        if link.mac.is_none() || link.mac == self.advertised_mac(data) {
            return Vec::new();
        }
        vec![format!(
            "device {} has MAC {} but the lease advertises {}",
            link.name,
            link.mac.map(|m| format_mac(&m)).unwrap_or_default(),
            data.and_then(VxlanLeaseData::from_value)
                .map(|d| d.vtep_mac)
                .unwrap_or_else(|| "none".into())
        )]
    }

    /// Learning and DirectRouting are fixed in place (a route replaced is never missing); the
    /// MTU follows as on a NIC change. VNI, Port and GBP make another wire format: a host on
    /// the new one and a host on the old (flannel hosts keep theirs until restarted) could no
    /// longer reach each other.
    fn setting_change(&self, key: &str, old: &Value, new: &Value) -> SettingChange {
        let split = |what: &str, old: &Value, new: &Value| {
            SettingChange::Refused(format!(
                "hosts on {what} {old} and on {new} cannot reach each other, and flannel hosts keep {old} until restarted; every host would have to move at one instant"
            ))
        };
        // Port 0 is the kernel's default, which is flannel's.
        let port = |v: &Value| match v.as_u64() {
            None | Some(0) => Value::from(KERNEL_PORT),
            Some(p) => Value::from(p),
        };
        match key {
            "Learning" | "DirectRouting" => SettingChange::Live,
            "MTU" => super::mtu_change(old, new),
            "VNI" => split("VNI", old, new),
            "Port" if port(old) == port(new) => SettingChange::Live,
            "Port" => split("UDP port", &port(old), &port(new)),
            "GBP" => split("GBP", old, new),
            _ => SettingChange::Refused(format!("weft does not change {key} on running hosts")),
        }
    }
}

/// The UDP port the kernel gives a VXLAN device made with port 0.
const KERNEL_PORT: u64 = 8472;

/// `weftctl leases` shows each host's VTEP MAC (it is in `backend_data` already).
pub const SUMMARY: Option<Summary> = Some(Summary {
    column: "VTEP MAC",
    json: None,
    short: 0,
    read: |v| VxlanLeaseData::from_value(v).map(|d| d.vtep_mac),
});

/// A VXLAN device is made or adopted with the MAC this host's lease advertises.
#[cfg(feature = "daemon")]
impl DeviceKind for VxlanSpec {
    fn ensure(
        &self,
        nl: &mut Netlink,
        _spec: &DeviceSpec,
        mac: Option<Mac>,
    ) -> Result<Device, DeviceError> {
        ensure(nl, self, mac)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Attributes of a VXLAN host, as flannel writes them.
pub fn lease_attrs(
    public_ip: std::net::Ipv4Addr,
    vni: u32,
    vtep_mac: &str,
) -> crate::lease::LeaseAttrs {
    crate::lease::LeaseAttrs {
        public_ip,
        public_ipv6: None,
        backend_type: TYPE.into(),
        backend_data: Some(
            VxlanLeaseData {
                vni,
                vtep_mac: vtep_mac.to_string(),
            }
            .to_value(),
        ),
        backend_v6_data: None,
        weft_backends: None,
    }
}

/// A MAC a device can be given: unicast and not all zeros. A lease may advertise anything,
/// and the kernel refuses any other MAC, which would keep the device from being created.
#[cfg(feature = "daemon")]
pub fn assignable(mac: &Mac) -> bool {
    *mac != [0; 6] && mac[0] & 1 == 0
}

/// Creates the device or adopts the one that is there. `mac` is the MAC to give a device that
/// must be created (the one this host's lease advertises), so peers keep reaching it.
#[cfg(feature = "daemon")]
fn ensure(nl: &mut Netlink, spec: &VxlanSpec, mac: Option<Mac>) -> Result<Device, DeviceError> {
    let existing = nl.link_by_name(&spec.name)?;
    if let Some(bad) = mac.filter(|m| !assignable(m)) {
        tracing::warn!(device = %spec.name, mac = %format_mac(&bad), "the lease advertises a MAC no device can have; the kernel picks one");
    }
    let mac = mac.filter(assignable);
    let (link, created) = match existing {
        // Only VNI, port, addresses and GBP need a new device; the rest is fixed in place.
        Some(link)
            if link.kind.as_deref() == Some("vxlan")
                && link.vxlan.as_ref().is_some_and(|v| spec.matches(v)) =>
        {
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
                mac,
                ..spec.clone()
            })?;
            (link, true)
        }
    };
    if let Some(mtu) = spec.mtu.filter(|m| *m != link.mtu) {
        nl.set_mtu(link.index, mtu)?;
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
        mac: Some(mac),
        mtu: link.mtu,
        created,
    })
}

#[cfg(all(test, feature = "daemon"))]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;
    use proptest::prelude::*;

    fn mac() -> impl Strategy<Value = String> {
        any::<[u8; 6]>().prop_map(|m| format_mac(&m))
    }

    proptest! {
        #[test]
        fn vxlan_data_round_trips(ip in any::<u32>(), vni in any::<u32>(), m in mac()) {
            let a = lease_attrs(std::net::Ipv4Addr::from(ip), vni, &m);
            let back = LeaseAttrs::from_json("k", a.to_json().as_bytes()).unwrap();
            let data = back.data(Family::V4).and_then(VxlanLeaseData::from_value);
            prop_assert_eq!(data, Some(VxlanLeaseData { vni, vtep_mac: m }));
        }
    }

    #[test]
    fn only_unicast_nonzero_macs_are_assignable() {
        assert!(assignable(&[0x0e, 0, 0, 0, 0, 1]));
        assert!(!assignable(&[0; 6]));
        assert!(!assignable(&[0x01, 0x00, 0x5e, 0, 0, 1]));
        assert!(!assignable(&[0xff; 6]));
    }
}
