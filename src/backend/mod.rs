//! Backends: what the overlay looks like on a host. A backend is its own module (a file, or
//! a folder when it has parts) and one line in the `backends!` list below: it plans through
//! [`Backend`] (its settings, the devices it needs, what a remote lease becomes, what goes
//! into this host's lease: pure) and owns its devices' kernel side through [`DeviceKind`]
//! and, for a device that holds peers of its own, [`Tunnel`]. Nothing outside this folder
//! names a backend's types; lease data stays opaque JSON outside it.

pub mod hostgw;
#[cfg(feature = "daemon")]
mod kernel;
#[cfg(all(test, feature = "daemon"))]
mod toy;
pub mod vxlan;
pub mod wireguard;

use serde_json::{Map, Value};

#[cfg(feature = "daemon")]
pub use kernel::*;

use crate::json::{get_str, invalid, rename, show, ConfigErrors};
use crate::subnet::Family;
#[cfg(feature = "daemon")]
use crate::{
    iface::ExtIface,
    netlink::{Mac, Route},
};

type ParseFn = fn(&Map<String, Value>) -> Result<BackendConfig, ConfigErrors>;

/// Writes the config enum, the registry of parsers and summaries and the dispatch to the
/// [`Backend`] from one list. Each entry is a backend's module, its variant of
/// [`BackendConfig`] and, when it has settings, their type (which has `parse`); the module has
/// `TYPE` and `SUMMARY`, and `BACKEND` when there are no settings. An entry may carry
/// attributes (a test-only backend is `#[cfg(test)]`).
macro_rules! backends {
    ($( $(#[$attr:meta])* $module:ident => $variant:ident $( ($config:ty) )? ),+ $(,)?) => {
        /// The `Backend` part of the network config: one variant per backend.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum BackendConfig {
            $( $(#[$attr])* $variant $( ($config) )? ),+
        }

        /// The backends weft has, by their name in `Backend.Type`, and how each reads its
        /// config.
        pub const REGISTRY: &[(&str, ParseFn)] = &[
            $( $(#[$attr])* ($module::TYPE, |obj| Ok(backends!(@make $variant obj $( $config )?))) ),+
        ];

        /// How each backend's lease data is shown, by `BackendType`.
        const SUMMARIES: &[(&str, Option<Summary>)] = &[
            $( $(#[$attr])* ($module::TYPE, $module::SUMMARY) ),+
        ];

        impl BackendConfig {
            /// The backend a config names.
            pub fn backend(&self) -> &dyn Backend {
                match self {
                    $(
                        $(#[$attr])*
                        BackendConfig::$variant $( (backends!(@bind c $config)) )? =>
                            backends!(@get c $module $( $config )?),
                    )+
                }
            }
        }
    };
    (@make $variant:ident $obj:ident $config:ty) => {
        BackendConfig::$variant(<$config>::parse($obj)?)
    };
    (@make $variant:ident $obj:ident) => {{
        let _ = $obj;
        BackendConfig::$variant
    }};
    (@bind $c:ident $config:ty) => {
        $c
    };
    (@get $c:ident $module:ident $config:ty) => {
        $c
    };
    (@get $c:ident $module:ident) => {
        &$module::BACKEND
    };
}

// The registry: one line per backend.
backends! {
    vxlan => Vxlan(vxlan::VxlanConfig),
    hostgw => HostGw,
    wireguard => Wireguard(wireguard::WireguardConfig),
    #[cfg(all(test, feature = "daemon"))]
    toy => Toy(toy::ToyConfig),
}

impl BackendConfig {
    /// The name flannel writes into a lease's `BackendType`.
    pub fn type_name(&self) -> &'static str {
        self.backend().type_name()
    }

    /// The `Backend` object with every default filled in.
    pub fn to_json(&self) -> Value {
        let mut m = self.backend().params();
        m.insert("Type".into(), self.type_name().into());
        Value::Object(m)
    }

    /// Reads the `Backend` object through the registry. The settings are read only when
    /// `Type` names a backend weft has, as what they mean depends on it.
    pub(crate) fn parse(v: Option<&Value>) -> Result<BackendConfig, ConfigErrors> {
        let Some(v) = v else {
            let set = supported(|n| format!("{{\"Type\": \"{n}\"}}"), " or ");
            return Err(ConfigErrors::from(invalid(
                "Backend.Type",
                "udp",
                format!(
                    "Backend is absent and flannel's default backend \"udp\" is not supported by weft; set Backend to {set}"
                ),
            )));
        };
        let Value::Object(obj) = v else {
            return Err(invalid("Backend", show(v), "must be a JSON object").into());
        };
        let ty = get_str(obj, "Type")
            .map_err(|e| rename(e, "Backend.Type"))?
            .unwrap_or("");
        // flannel lower-cases the type before looking the backend up.
        let lower = ty.to_ascii_lowercase();
        if let Some((_, parse)) = REGISTRY.iter().find(|(name, _)| *name == lower) {
            return parse(obj);
        }
        Err(ConfigErrors::from(unsupported(ty, &lower)))
    }
}

/// Why `Backend.Type` `ty` (`lower` lower-cased) names no backend weft has.
fn unsupported(ty: &str, lower: &str) -> crate::json::ConfigError {
    let quoted = |n: &str| format!("\"{n}\"");
    match lower {
        "" => invalid(
            "Backend.Type",
            "\"\"",
            format!("must be set; weft supports {}", supported(quoted, " and ")),
        ),
        "udp" => invalid(
            "Backend.Type",
            ty,
            format!(
                "the udp backend is not supported by weft; use {}",
                supported(quoted, " or ")
            ),
        ),
        _ => invalid(
            "Backend.Type",
            ty,
            format!(
                "unsupported backend; weft supports {}",
                supported(quoted, " and ")
            ),
        ),
    }
}

/// The registered backends' names, each shown by `show`, as a list ending in `last`. A
/// test-only backend is not one weft offers.
fn supported(show: impl Fn(&str) -> String, last: &str) -> String {
    let names: Vec<String> = (REGISTRY.iter())
        .filter(|(n, _)| !cfg!(test) || *n != "toy")
        .map(|(n, _)| show(n))
        .collect();
    match names.split_last() {
        Some((tail, [])) => tail.clone(),
        Some((tail, init)) => format!("{}{last}{tail}", init.join(", ")),
        None => String::new(),
    }
}

/// Backend settings that are secrets, whatever the backend (flannel's names): their values
/// appear in no error, log or output unless the operator asks for them.
pub const SECRET_SETTINGS: &[&str] = &["PSK"];

/// How `weftctl leases` shows one backend's lease data: a column (the VTEP MAC, the public
/// key), read from `BackendData` (`BackendV6Data`) by `read`, shortened to `short` characters
/// in a table (0: never), and named `json` in JSON listings when it is not plainly in
/// `backend_data` already.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub column: &'static str,
    pub json: Option<&'static str>,
    pub short: usize,
    pub read: fn(&Value) -> Option<String>,
}

/// The summary of a lease's data in one family, by its `BackendType`.
pub fn summary(attrs: &crate::lease::LeaseAttrs, family: Family) -> Option<(Summary, String)> {
    let s = summary_of(&attrs.backend_type)?;
    let data = match family {
        Family::V4 => attrs.backend_data.as_ref(),
        Family::V6 => attrs.backend_v6_data.as_ref(),
    };
    Some((s, (s.read)(data?)?))
}

/// The summary kind of a `BackendType`, if weft knows the backend.
pub fn summary_of(backend_type: &str) -> Option<Summary> {
    (SUMMARIES.iter())
        .find(|(name, _)| *name == backend_type)
        .and_then(|(_, s)| *s)
}

/// The JSON fields summaries add to a lease listing (each also with `_v6`), so every listing
/// has the same keys whatever its leases' backends.
pub fn summary_json_fields() -> impl Iterator<Item = &'static str> {
    SUMMARIES.iter().filter_map(|(_, s)| s.and_then(|s| s.json))
}

/// The questions every backend answers about planning: pure, except for loading this host's
/// secrets once at start-up. The first three are always built; the rest come with the daemon.
pub trait Backend {
    /// The name leases carry in `BackendType` and the config in `Backend.Type`.
    fn type_name(&self) -> &'static str;

    /// The backend's settings under flannel's names, every default filled in (no `Type`).
    fn params(&self) -> Map<String, Value>;

    /// Bytes the backend takes from the external interface's MTU over a `family` underlay.
    fn mtu_overhead(&self, family: Family) -> u32;

    /// Refuses an external interface the backend cannot work with in `family` (at start-up).
    #[cfg(feature = "daemon")]
    fn usable(&self, _ext: &ExtIface, _family: Family) -> Result<(), String> {
        Ok(())
    }

    /// Loads what the backend keeps on this host between runs (WireGuard's private key,
    /// created on first use); once, at start-up.
    #[cfg(feature = "daemon")]
    fn load_secrets(&self) -> Result<HostSecrets, String> {
        Ok(HostSecrets::default())
    }

    /// The device the backend needs on this host for `family`, if any; `name` overrides the
    /// backend's default name.
    #[cfg(feature = "daemon")]
    fn device(
        &self,
        ext: &ExtIface,
        name: Option<&str>,
        family: Family,
        secrets: &HostSecrets,
    ) -> Option<DeviceSpec>;

    /// What makes one family's backend data of a lease its host's alone (a VTEP MAC, a public
    /// key), if anything: no two leases may share it, and no peer may have this host's own.
    #[cfg(feature = "daemon")]
    fn identity(&self, _data: Option<&Value>) -> Option<Identity> {
        None
    }

    /// What one remote lease becomes in the kernel, in `host`'s family; `Err` says why it must
    /// not be programmed. The rules every backend shares (network, overlap, address) have
    /// been checked.
    #[cfg(feature = "daemon")]
    fn peer(&self, host: &Host, peer: &Peer) -> Result<PeerObjects, String>;

    /// Routes the device of `host`'s family needs whatever the peers (WireGuard's route for
    /// the whole `network`).
    #[cfg(feature = "daemon")]
    fn device_routes(&self, _host: &Host, _network: ipnet::IpNet) -> Vec<Route> {
        Vec::new()
    }

    /// The `BackendData` (`BackendV6Data`) this host writes into its own lease, given its
    /// device of that family and the device's MAC.
    #[cfg(feature = "daemon")]
    fn lease_data(&self, spec: Option<&DeviceSpec>, device_mac: Option<Mac>) -> Option<Value>;

    /// The MAC this backend's data in a lease (`BackendData` or `BackendV6Data`, or their
    /// counterparts in `WeftBackends`) advertises for the device (kept when the device must
    /// be recreated).
    #[cfg(feature = "daemon")]
    fn advertised_mac(&self, _data: Option<&Value>) -> Option<Mac> {
        None
    }

    /// What `weftctl check` finds wrong with the device, as the kernel has it (`link`),
    /// beyond MTU and state, given what this host's lease advertises for it (`data`).
    #[cfg(feature = "daemon")]
    fn check_device(&self, _link: &crate::netlink::Link, _data: Option<&Value>) -> Vec<String> {
        Vec::new()
    }

    /// What running hosts do when the backend's setting `key` (flannel's name under
    /// `Backend`) changes from `old` to `new`, both as [`Backend::params`] writes them. Unless
    /// a backend says otherwise, a change is refused: it is not known to be safe live.
    fn setting_change(&self, key: &str, _old: &Value, _new: &Value) -> SettingChange {
        SettingChange::Refused(format!("weft does not change {key} on running hosts"))
    }
}

/// What running hosts do with a changed backend setting; see [`Backend::setting_change`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingChange {
    /// Applied in place at once; peers and traffic notice nothing.
    Live,
    /// Applied in place, and traffic may notice (why): the operator confirms it.
    Disturbs(String),
    /// Running hosts keep the setting they run (why).
    Refused(String),
}

/// A changed MTU setting (0: derived from the external interface): raising it is live,
/// lowering it (or a change to or from 0, which may lower it) disturbs running containers,
/// which keep the MTU they were given. Shared by the backends that have `MTU`.
pub fn mtu_change(old: &Value, new: &Value) -> SettingChange {
    let (o, n) = (old.as_u64().unwrap_or(0), new.as_u64().unwrap_or(0));
    if o != 0 && n > o {
        return SettingChange::Live;
    }
    SettingChange::Disturbs(
        "the devices' MTU and FLANNEL_MTU follow at once; containers started afterwards get the new MTU, running ones keep theirs and, where it is now too large, depend on path-MTU discovery until restarted".into(),
    )
}

#[cfg(all(test, feature = "daemon"))]
mod tests {
    use super::*;
    use crate::lease::{Lease, LeaseAttrs};
    use crate::netlink::{Link, VxlanSpec};
    use std::net::IpAddr;

    fn ext() -> ExtIface {
        ExtIface {
            index: 2,
            name: "eth0".into(),
            mtu: 1500,
            iface_addr: "198.18.0.1".parse().unwrap(),
            public_ip: "198.18.0.1".parse().unwrap(),
            addresses: vec!["198.18.0.1".parse().unwrap()],
            networks: vec!["198.18.0.0/24".parse().unwrap()],
            v6: None,
        }
    }

    fn ext6() -> ExtIface {
        ExtIface {
            v6: Some(crate::iface::ExtV6 {
                iface_addr: "2001:db8::1".parse().unwrap(),
                public_ip: "2001:db8::1".parse().unwrap(),
                addresses: vec!["2001:db8::1".parse().unwrap()],
                networks: vec!["2001:db8::/64".parse().unwrap()],
            }),
            ..ext()
        }
    }

    fn backend_cfg(json: &str) -> BackendConfig {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        BackendConfig::parse(Some(&v)).unwrap()
    }

    fn vxlan_link(spec: &DeviceSpec) -> &VxlanSpec {
        (spec.kind.as_any().downcast_ref::<VxlanSpec>())
            .unwrap_or_else(|| panic!("not a VXLAN device: {:?}", spec.kind))
    }

    #[test]
    fn vxlan_needs_flannels_device_and_host_gw_none() {
        let cfg = backend_cfg(r#"{"Type":"vxlan","VNI":7}"#);
        let vx = cfg.backend();
        assert_eq!(vx.type_name(), "vxlan");
        let spec = vx
            .device(&ext(), None, Family::V4, &HostSecrets::default())
            .unwrap();
        assert_eq!((spec.name.as_str(), spec.mtu), ("flannel.7", 1450));
        let link = vxlan_link(&spec);
        assert_eq!((link.vni, link.port, link.lower), (7, 8472, Some(2)));
        assert_eq!(link.local, "198.18.0.1".parse::<IpAddr>().unwrap());
        assert!(vx
            .device(&ext(), None, Family::V6, &HostSecrets::default())
            .is_none());
        assert_eq!(vx.mtu_overhead(Family::V6), 70);
        let spec = vx
            .device(&ext6(), None, Family::V6, &HostSecrets::default())
            .unwrap();
        assert_eq!((spec.name.as_str(), spec.mtu), ("flannel-v6.7", 1430));
        let link = vxlan_link(&spec);
        assert_eq!((link.vni, link.lower), (7, Some(2)));
        assert_eq!(link.local, "2001:db8::1".parse::<IpAddr>().unwrap());

        let cfg = backend_cfg(r#"{"Type":"vxlan","MTU":1400,"Port":4789}"#);
        let spec = cfg
            .backend()
            .device(&ext(), Some("weft.1"), Family::V4, &HostSecrets::default())
            .unwrap();
        assert_eq!((spec.name.as_str(), spec.mtu), ("weft.1", 1400));
        assert_eq!(vxlan_link(&spec).port, 4789);

        let hg = BackendConfig::HostGw.backend();
        assert_eq!(hg.type_name(), "host-gw");
        assert!(hg
            .device(&ext(), None, Family::V4, &HostSecrets::default())
            .is_none());
        assert_eq!(hg.mtu_overhead(Family::V4), 0);
    }

    #[test]
    fn lease_data_is_flannels() {
        let cfg = backend_cfg(r#"{"Type":"vxlan"}"#);
        let vx = cfg.backend();
        let data = vx.lease_data(None, Some([0x0e, 0, 0, 0, 0, 1])).unwrap();
        assert_eq!(
            data,
            serde_json::json!({"VNI": 1, "VtepMAC": "0e:00:00:00:00:01"})
        );
        let attrs = LeaseAttrs {
            backend_data: Some(data),
            ..crate::backend::hostgw::lease_attrs("198.18.0.1".parse().unwrap())
        };
        assert_eq!(
            vx.advertised_mac(attrs.data(Family::V4)),
            Some([0x0e, 0, 0, 0, 0, 1])
        );
        assert_eq!(BackendConfig::HostGw.backend().lease_data(None, None), None);
        assert_eq!(
            BackendConfig::HostGw
                .backend()
                .advertised_mac(attrs.data(Family::V4)),
            None
        );
    }

    #[test]
    fn host_gw_needs_the_public_ip_on_the_interface() {
        let hg = BackendConfig::HostGw.backend();
        assert!(hg.usable(&ext(), Family::V4).is_ok());
        let mut e = ext();
        e.public_ip = "198.18.9.9".parse().unwrap();
        let why = hg.usable(&e, Family::V4).unwrap_err();
        assert!(
            why.contains("198.18.9.9 is not an address of eth0"),
            "{why}"
        );
        assert!(backend_cfg(r#"{"Type":"vxlan"}"#)
            .backend()
            .usable(&e, Family::V4)
            .is_ok());
    }

    #[test]
    fn check_finds_a_device_mac_the_lease_does_not_advertise() {
        let cfg = backend_cfg(r#"{"Type":"vxlan"}"#);
        let vx = cfg.backend();
        let own = Lease {
            subnet: "198.19.1.0/24".parse().unwrap(),
            subnet6: None,
            attrs: crate::backend::vxlan::lease_attrs(
                "198.18.0.1".parse().unwrap(),
                1,
                "0e:00:00:00:00:01",
            ),
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
            alias: None,
        };
        let data = own.attrs.data(Family::V4);
        assert!(vx.check_device(&link, data).is_empty());
        link.mac = Some([0x0e, 0, 0, 0, 0, 2]);
        let found = vx.check_device(&link, data);
        assert_eq!(
            found,
            ["device flannel.1 has MAC 0e:00:00:00:00:02 but the lease advertises 0e:00:00:00:00:01"]
        );
    }
}
