//! The wireguard backend, flannel's format: devices `flannel-wg` (and `flannel-wg-v6` in
//! `separate` mode), one peer per remote lease (its public key, endpoint, subnet, PSK and
//! keepalive), one route for the whole network on the device. The config and lease parts
//! here are pure; the device is [`device`]'s (kernel WireGuard over [`genl`], or wireguard-go
//! over [`uapi`]), the host's key [`key`]'s.

#[cfg(feature = "daemon")]
pub mod device;
#[cfg(feature = "daemon")]
pub mod genl;
#[cfg(feature = "daemon")]
pub mod key;
#[cfg(feature = "daemon")]
pub mod uapi;

use serde_json::{Map, Value};

use super::{Backend, SettingChange, Summary};
use crate::json::{get_str, get_uint, hide_value, invalid, rename, ConfigErrors, HIDDEN};
use crate::subnet::Family;
#[cfg(feature = "daemon")]
use {
    super::{
        DevicePeer, DeviceSpec, Handshake, Host, HostSecrets, Identity, Peer, PeerId, PeerObjects,
        TunnelPeer,
    },
    crate::iface::ExtIface,
    crate::netlink::{Mac, Route, RouteScope},
    device::WgSpec,
    std::net::SocketAddr,
    std::sync::Arc,
};

/// The backend's name in `Backend.Type` and a lease's `BackendType`.
pub const TYPE: &str = "wireguard";

/// A WireGuard key (private, public or preshared): 32 bytes, base64 in configs and leases.
pub type Key = [u8; 32];

/// How the families share tunnels (flannel's `Mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One device per family: IPv4 over IPv4, IPv6 over IPv6 (flannel's default).
    Separate,
    /// One device for both families, over IPv6 when both ends have it, else IPv4.
    Auto,
    /// One device for both families, over IPv4.
    Ipv4,
    /// One device for both families, over IPv6.
    Ipv6,
}

impl Mode {
    /// flannel's name of the mode.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Separate => "separate",
            Mode::Auto => "auto",
            Mode::Ipv4 => "ipv4",
            Mode::Ipv6 => "ipv6",
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct WireguardConfig {
    pub listen_port: u16,
    pub listen_port_v6: u16,
    pub psk: Option<Key>,
    /// Seconds; 0 is off.
    pub keepalive: u16,
    pub mode: Mode,
    /// `None`: the external interface's MTU less the overhead.
    pub mtu: Option<u32>,
}

/// The PSK is a secret: a config printed for debugging shows it hidden.
impl std::fmt::Debug for WireguardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireguardConfig")
            .field("listen_port", &self.listen_port)
            .field("listen_port_v6", &self.listen_port_v6)
            .field("psk", &self.psk.map(|_| HIDDEN))
            .field("keepalive", &self.keepalive)
            .field("mode", &self.mode)
            .field("mtu", &self.mtu)
            .finish()
    }
}

impl Default for WireguardConfig {
    fn default() -> Self {
        WireguardConfig {
            listen_port: 51820,
            listen_port_v6: 51821,
            psk: None,
            keepalive: 0,
            mode: Mode::Separate,
            mtu: None,
        }
    }
}

/// A key from its base64 form; `None` unless it is exactly 32 bytes.
pub fn parse_key(s: &str) -> Option<Key> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()?;
    bytes.try_into().ok()
}

/// A key in base64, as `wg` and flannel write it.
pub fn format_key(k: &Key) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(k)
}

impl WireguardConfig {
    /// Reads `Backend` of a wireguard config; every broken field is reported by its path.
    pub fn parse(obj: &Map<String, Value>) -> Result<WireguardConfig, ConfigErrors> {
        let mut problems = ConfigErrors::default();
        let mut c = WireguardConfig::default();
        let mut uint = |name, field| {
            problems
                .check(get_uint(obj, name).map_err(|e| rename(e, field)))
                .flatten()
        };
        let port = uint("ListenPort", "Backend.ListenPort");
        let port6 = uint("ListenPortV6", "Backend.ListenPortV6");
        let keepalive = uint(
            "PersistentKeepaliveInterval",
            "Backend.PersistentKeepaliveInterval",
        );
        let mtu = uint("MTU", "Backend.MTU");
        for (value, field, into) in [
            (port, "Backend.ListenPort", &mut c.listen_port),
            (port6, "Backend.ListenPortV6", &mut c.listen_port_v6),
        ] {
            match value.map(u16::try_from) {
                None | Some(Ok(0)) => {}
                Some(Ok(p)) => *into = p,
                Some(Err(_)) => {
                    problems.push(invalid(field, value.unwrap_or(0), "must be at most 65535"))
                }
            }
        }
        match keepalive.map(u16::try_from) {
            None => {}
            Some(Ok(k)) => c.keepalive = k,
            Some(Err(_)) => problems.push(invalid(
                "Backend.PersistentKeepaliveInterval",
                keepalive.unwrap_or(0),
                "must be at most 65535 seconds",
            )),
        }
        match mtu {
            None | Some(0) => {}
            Some(m @ 1280..=65535) => c.mtu = Some(m as u32),
            Some(m) => problems.push(invalid(
                "Backend.MTU",
                m,
                "must be between 1280 and 65535 (or 0 to derive it)",
            )),
        }
        let str_field = |name, field| get_str(obj, name).map_err(|e| rename(e, field));
        let psk = get_str(obj, "PSK").map_err(|e| hide_value(rename(e, "Backend.PSK")));
        if let Some(psk) = problems.check(psk).flatten() {
            match parse_key(psk) {
                Some(k) => c.psk = Some(k),
                None if psk.is_empty() => {}
                None => problems.push(invalid(
                    "Backend.PSK",
                    HIDDEN,
                    "must be 32 bytes in base64, as `wg genpsk` prints",
                )),
            }
        }
        if let Some(mode) = problems.check(str_field("Mode", "Backend.Mode")).flatten() {
            match mode.to_ascii_lowercase().as_str() {
                "" | "separate" => c.mode = Mode::Separate,
                "auto" => c.mode = Mode::Auto,
                "ipv4" => c.mode = Mode::Ipv4,
                "ipv6" => c.mode = Mode::Ipv6,
                _ => problems.push(invalid(
                    "Backend.Mode",
                    mode,
                    "must be \"separate\", \"auto\", \"ipv4\" or \"ipv6\"",
                )),
            }
        }
        problems.or(Some(c))
    }

    /// The listen port of the device for `family` (in the single-tunnel modes, the one device
    /// listens on ListenPort).
    pub fn port_of(&self, family: Family) -> u16 {
        match (self.mode, family) {
            (Mode::Separate, Family::V6) => self.listen_port_v6,
            _ => self.listen_port,
        }
    }

    /// The device of `family`: `flannel-wg-v6` for IPv6 in `separate` mode, else `flannel-wg`.
    pub fn device_name(&self, family: Family) -> &'static str {
        match (self.mode, family) {
            (Mode::Separate, Family::V6) => "flannel-wg-v6",
            _ => "flannel-wg",
        }
    }
}

/// One WireGuard peer as a device holds it: what one remote lease becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeer {
    pub public_key: Key,
    pub endpoint: Option<std::net::SocketAddr>,
    pub allowed_ips: Vec<ipnet::IpNet>,
    pub psk: Option<Key>,
    /// Seconds; 0 is off.
    pub keepalive: u16,
    /// When the device last completed a handshake with the peer (None: never, or a peer
    /// weft is about to write). Read back, never written, and no part of [`DevicePeer::same`].
    pub last_handshake: Option<std::time::SystemTime>,
}

/// The WireGuard part of a lease: the host's public key and the port it listens on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WgLeaseData {
    pub public_key: Key,
    /// 0 (older flannel): the receiver's own listen port.
    pub port: u16,
}

impl WgLeaseData {
    /// flannel's `BackendData` of a wireguard lease.
    pub fn to_value(&self) -> Value {
        serde_json::json!({"PublicKey": format_key(&self.public_key), "Port": self.port})
    }

    /// Reads `BackendData` (or `BackendV6Data`); `None` when it is not a usable one.
    pub fn from_value(v: &Value) -> Option<WgLeaseData> {
        let obj = v.as_object()?;
        let get = |name: &str| {
            obj.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        };
        let public_key = parse_key(get("PublicKey")?.as_str()?)?;
        let port = match get("Port") {
            None | Some(Value::Null) => 0,
            Some(p) => u16::try_from(p.as_u64()?).ok()?,
        };
        Some(WgLeaseData { public_key, port })
    }
}

/// The outer IP (IPv6's 40 bytes, so one figure fits both underlays), UDP and WireGuard
/// headers, as flannel counts them.
const OVERHEAD: u32 = 80;

impl Backend for WireguardConfig {
    fn type_name(&self) -> &'static str {
        TYPE
    }

    fn params(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("ListenPort".into(), self.listen_port.into());
        m.insert("ListenPortV6".into(), self.listen_port_v6.into());
        if let Some(psk) = &self.psk {
            m.insert("PSK".into(), format_key(psk).into());
        }
        m.insert("PersistentKeepaliveInterval".into(), self.keepalive.into());
        m.insert("Mode".into(), self.mode.name().into());
        m.insert("MTU".into(), self.mtu.unwrap_or(0).into());
        m
    }

    fn mtu_overhead(&self, _family: Family) -> u32 {
        OVERHEAD
    }

    fn setting_change(&self, key: &str, old: &Value, new: &Value) -> SettingChange {
        WireguardConfig::change_of(key, old, new)
    }

    /// Mode ipv6 reaches every peer over IPv6, so this host needs an IPv6 address.
    #[cfg(feature = "daemon")]
    fn usable(&self, ext: &ExtIface, _family: Family) -> Result<(), String> {
        if self.mode == Mode::Ipv6 && ext.public(Family::V6).is_none() {
            return Err(format!(
                "Backend.Mode \"ipv6\" reaches peers over IPv6, but {} has no global IPv6 address (nor is --public-ipv6 given)",
                ext.name
            ));
        }
        Ok(())
    }

    /// The key file is read (or written) here, once: a host keeps one key for good.
    #[cfg(feature = "daemon")]
    fn load_secrets(&self) -> Result<HostSecrets, String> {
        let path = key::key_file();
        let flannel = std::path::Path::new(key::FLANNEL_KEY_FILE);
        let (k, source) = key::load_or_create(&path, Some(flannel)).map_err(|e| e.to_string())?;
        let public = format_key(&key::public_key(&k));
        tracing::info!(file = %path.display(), ?source, public_key = %public, "WireGuard key ready");
        Ok(HostSecrets(Some(Arc::new(k))))
    }

    /// `flannel-wg` (`flannel-wg-v6`) with the config's MTU, else the external interface's
    /// less 80. The name cannot be overridden: peers and tools know the device by it.
    #[cfg(feature = "daemon")]
    fn device(
        &self,
        ext: &ExtIface,
        _name: Option<&str>,
        family: Family,
        secrets: &HostSecrets,
    ) -> Option<DeviceSpec> {
        ext.local(family)?;
        Some(DeviceSpec {
            name: self.device_name(family).to_string(),
            mtu: self.mtu.unwrap_or(ext.mtu.saturating_sub(OVERHEAD)),
            kind: Arc::new(WgSpec {
                port: self.port_of(family),
                key: secrets.get::<Key>().copied(),
                peers: self.mode == Mode::Separate || family == Family::V4,
            }),
        })
    }

    /// The public key: one key is one peer of the device.
    #[cfg(feature = "daemon")]
    fn identity(&self, data: Option<&Value>) -> Option<Identity> {
        let data = WgLeaseData::from_value(data?)?;
        Some(Identity {
            what: "PublicKey",
            value: format_key(&data.public_key),
        })
    }

    /// flannel's peer: the lease's public key at its public IP and port (the receiver's own
    /// port when the lease says 0), the subnet as its only allowed IPs, PSK and keepalive as
    /// configured.
    ///
    /// With one device for both families (Mode auto, ipv4, ipv6) the IPv4 pass makes one peer
    /// of both subnets, reached at the address the mode picks on the port of `BackendData`
    /// (the one the peer's device listens on); the IPv6 pass adds none.
    #[cfg(feature = "daemon")]
    fn peer(&self, host: &Host, peer: &Peer) -> Result<PeerObjects, String> {
        if host.device.is_none() {
            return Err("the WireGuard device does not exist yet".to_string());
        }
        let one_device = self.mode != Mode::Separate;
        if one_device && host.family() == Family::V6 {
            return Ok(PeerObjects::default());
        }
        let what = if host.family() == Family::V6 {
            "BackendV6Data"
        } else {
            "BackendData"
        };
        let data = peer
            .data
            .and_then(WgLeaseData::from_value)
            .ok_or_else(|| format!("{what} has no usable PublicKey"))?;
        let port = match data.port {
            0 => self.port_of(host.family()),
            p => p,
        };
        let mut allowed_ips = vec![peer.subnet];
        let mut ip = peer.public_ip;
        if one_device {
            allowed_ips.extend(peer.lease.subnet6.map(ipnet::IpNet::from));
            ip = self.endpoint_ip(host, peer.public_ip, peer.lease.attrs.public_ipv6)?;
        }
        Ok(PeerObjects {
            tunnel: Some(TunnelPeer(Arc::new(WgPeer {
                public_key: data.public_key,
                endpoint: Some(SocketAddr::new(ip, port)),
                allowed_ips,
                psk: self.psk,
                keepalive: self.keepalive,
                last_handshake: None,
            }))),
            ..PeerObjects::default()
        })
    }

    /// One route for the whole network on the device: WireGuard picks the peer by allowed
    /// IPs, so no per-peer route is needed.
    #[cfg(feature = "daemon")]
    fn device_routes(&self, host: &Host, network: ipnet::IpNet) -> Vec<Route> {
        let Some(dev) = host.device else {
            return Vec::new();
        };
        let mut r = Route::new(network.trunc()).scope(RouteScope::Link);
        r.oif = Some(dev);
        vec![r]
    }

    /// flannel's `{"PublicKey", "Port"}` from this host's key and the device's port.
    #[cfg(feature = "daemon")]
    fn lease_data(&self, spec: Option<&DeviceSpec>, _: Option<Mac>) -> Option<Value> {
        let wg = spec?.kind.as_any().downcast_ref::<WgSpec>()?;
        Some(
            WgLeaseData {
                public_key: key::public_key(&wg.key?),
                port: wg.port,
            }
            .to_value(),
        )
    }
}

impl WireguardConfig {
    /// What a changed setting does to running hosts (see [`Backend::setting_change`]).
    fn change_of(key: &str, old: &Value, new: &Value) -> SettingChange {
        match key {
            // Set on every peer in place. A session keeps the keys its handshake made, and a
            // new handshake (every 2 minutes) uses the new PSK once both ends have it, which
            // weft hosts do within the moment the change takes to reach them.
            "PSK" | "PersistentKeepaliveInterval" => SettingChange::Live,
            "MTU" => super::mtu_change(old, new),
            "ListenPort" | "ListenPortV6" => SettingChange::Disturbs(
                "each host listens on the new port and advertises it in its lease; packets its peers send before they read the lease (a moment) go to the old port and are lost".into(),
            ),
            "Mode" => SettingChange::Refused(
                "the mode decides which devices exist and where peers are reached; hosts in different modes cannot reach each other".into(),
            ),
            _ => SettingChange::Refused(format!("weft does not change {key} on running hosts")),
        }
    }

    /// Where a peer's one device is reached in Mode ipv4, ipv6 or auto. Auto takes IPv4 unless
    /// the peer's IPv4 address is private and both ends have a public IPv6 one, flannel's
    /// choice of the address most likely to connect.
    #[cfg(feature = "daemon")]
    fn endpoint_ip(
        &self,
        host: &Host,
        v4: std::net::IpAddr,
        v6: Option<std::net::Ipv6Addr>,
    ) -> Result<std::net::IpAddr, String> {
        let v6 = v6.map(std::net::IpAddr::V6);
        let public = |ip: &std::net::IpAddr| match ip {
            std::net::IpAddr::V4(a) => !a.is_private(),
            std::net::IpAddr::V6(a) => (a.segments()[0] & 0xfe00) != 0xfc00,
        };
        match self.mode {
            Mode::Ipv6 => {
                v6.ok_or_else(|| "the lease has no PublicIPv6, which Mode ipv6 needs".into())
            }
            Mode::Auto if !public(&v4) => {
                let ours = host.other_public_ip.filter(public);
                Ok(v6.filter(|a| public(a) && ours.is_some()).unwrap_or(v4))
            }
            _ => Ok(v4),
        }
    }
}

/// A peer as the device holds it, compared the way the device does: the allowed IPs in any
/// order.
#[cfg(feature = "daemon")]
impl DevicePeer for WgPeer {
    fn id(&self) -> PeerId {
        self.public_key.to_vec()
    }

    fn same(&self, other: &dyn DevicePeer) -> bool {
        let Some(o) = other.as_any().downcast_ref::<WgPeer>() else {
            return false;
        };
        let sorted = |p: &WgPeer| {
            let mut ips = p.allowed_ips.clone();
            ips.sort();
            ips
        };
        self.public_key == o.public_key
            && self.endpoint == o.endpoint
            && self.psk == o.psk
            && self.keepalive == o.keepalive
            && sorted(self) == sorted(o)
    }

    fn describe(&self) -> String {
        let ips: Vec<String> = self.allowed_ips.iter().map(|n| n.to_string()).collect();
        format!(
            "WireGuard peer {} endpoint {} allowed-ips {}",
            format_key(&self.public_key),
            self.endpoint
                .map(|e| e.to_string())
                .unwrap_or_else(|| "none".into()),
            ips.join(",")
        )
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    /// Named by the first of its allowed IPs, the peer's subnet (a lease's key part, stable
    /// for the host's life, unlike its endpoint): what `/peers` calls it too.
    fn handshake(&self) -> Option<Handshake> {
        let peer = match self.allowed_ips.first() {
            Some(net) => net.to_string(),
            None => format_key(&self.public_key),
        };
        Some(Handshake {
            peer,
            last: self.last_handshake,
        })
    }
}

/// `weftctl leases` shows each host's public key (shortened in a table, whole in JSON as
/// `public_key`).
pub const SUMMARY: Option<Summary> = Some(Summary {
    column: "PUBLIC KEY",
    json: Some("public_key"),
    short: 10,
    read: |v| WgLeaseData::from_value(v).map(|d| format_key(&d.public_key)),
});

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "daemon")]
    use crate::plan::testing::{cfg, run, updates_match_full};
    #[cfg(feature = "daemon")]
    use crate::plan::{desired, diff_tunnel};
    #[cfg(feature = "daemon")]
    use ipnet::IpNet;

    fn parse(json: &str) -> Result<WireguardConfig, ConfigErrors> {
        let v: Value = serde_json::from_str(json).unwrap();
        WireguardConfig::parse(v.as_object().unwrap())
    }

    #[test]
    fn flannels_defaults_and_fields() {
        assert_eq!(
            parse(r#"{"Type":"wireguard"}"#).unwrap(),
            WireguardConfig::default()
        );
        let psk = format_key(&[7; 32]);
        let c = parse(&format!(
            r#"{{"Type":"wireguard","ListenPort":5000,"ListenPortV6":5001,"PSK":"{psk}","PersistentKeepaliveInterval":25,"Mode":"Auto","MTU":1400}}"#
        ))
        .unwrap();
        assert_eq!(
            c,
            WireguardConfig {
                listen_port: 5000,
                listen_port_v6: 5001,
                psk: Some([7; 32]),
                keepalive: 25,
                mode: Mode::Auto,
                mtu: Some(1400),
            }
        );
        assert_eq!(c.device_name(Family::V6), "flannel-wg");
        assert_eq!(c.port_of(Family::V6), 5000);
        let d = WireguardConfig::default();
        assert_eq!(
            (d.device_name(Family::V6), d.port_of(Family::V6)),
            ("flannel-wg-v6", 51821)
        );
    }

    #[test]
    fn every_bad_field_is_named_and_the_psk_is_not_echoed() {
        let e = parse(
            r#"{"ListenPort":70000,"PSK":"c2VjcmV0","Mode":"tunnel","MTU":100,"PersistentKeepaliveInterval":-1}"#,
        )
        .unwrap_err()
        .to_string();
        for part in [
            "Backend.ListenPort 70000",
            "Backend.PSK (hidden): must be 32 bytes",
            "Backend.Mode tunnel",
            "Backend.MTU 100",
            "Backend.PersistentKeepaliveInterval -1",
        ] {
            assert!(e.contains(part), "{part:?} not in {e}");
        }
        assert!(!e.contains("c2VjcmV0"), "{e}");
    }

    #[test]
    fn lease_data_is_flannels_and_port_zero_is_kept() {
        let d = WgLeaseData {
            public_key: [1; 32],
            port: 51820,
        };
        let v = d.to_value();
        assert_eq!(
            v.to_string(),
            format!(r#"{{"PublicKey":"{}","Port":51820}}"#, format_key(&[1; 32]))
        );
        assert_eq!(WgLeaseData::from_value(&v), Some(d));
        let old = serde_json::json!({"PublicKey": format_key(&[2; 32])});
        assert_eq!(WgLeaseData::from_value(&old).unwrap().port, 0);
        assert_eq!(
            WgLeaseData::from_value(&serde_json::json!({"PublicKey": "short"})),
            None
        );
    }

    #[cfg(feature = "daemon")]
    fn peer_of(
        mode: &str,
        host_ip: &str,
        other: Option<&str>,
        lease_json: &str,
    ) -> Result<WgPeer, String> {
        let cfg = parse(&format!(r#"{{"Type":"wireguard","Mode":"{mode}"}}"#)).unwrap();
        let host = Host {
            public_ip: host_ip.parse().unwrap(),
            ext_index: 2,
            ext_networks: vec![],
            device: Some(9),
            other_public_ip: other.map(|o| o.parse().unwrap()),
        };
        let lease = crate::lease::Lease {
            subnet: "198.19.2.0/24".parse().unwrap(),
            subnet6: Some("2001:db8:100:2::/64".parse().unwrap()),
            attrs: crate::lease::LeaseAttrs::from_json("k", lease_json.as_bytes()).unwrap(),
            expiration: None,
            etcd_lease_id: None,
            mod_revision: 1,
        };
        let side = lease.side(host.family()).unwrap();
        let peer = Peer {
            subnet: side.subnet,
            public_ip: side.public_ip.unwrap(),
            data: side.backend_data,
            lease: &lease,
        };
        cfg.peer(&host, &peer).map(|o| match o.tunnel {
            Some(t) => wg(&t).clone(),
            None => WgPeer {
                public_key: [0; 32],
                endpoint: None,
                allowed_ips: vec![],
                psk: None,
                keepalive: 0,
                last_handshake: None,
            },
        })
    }

    #[cfg(feature = "daemon")]
    #[test]
    fn the_mode_picks_devices_ports_and_endpoints() {
        let key = format_key(&[5; 32]);
        let lease = |ip4: &str| {
            format!(
                r#"{{"PublicIP":"{ip4}","PublicIPv6":"2001:db8::2","BackendType":"wireguard","BackendData":{{"PublicKey":"{key}","Port":51820}},"BackendV6Data":{{"PublicKey":"{key}","Port":51821}}}}"#
            )
        };
        // separate: each family its own device, port and subnet.
        let p = peer_of("separate", "198.18.0.1", None, &lease("198.18.0.2")).unwrap();
        assert_eq!(p.endpoint, Some("198.18.0.2:51820".parse().unwrap()));
        assert_eq!(p.allowed_ips, vec!["198.19.2.0/24".parse().unwrap()]);
        let p = peer_of("separate", "2001:db8::1", None, &lease("198.18.0.2")).unwrap();
        assert_eq!(p.endpoint, Some("[2001:db8::2]:51821".parse().unwrap()));
        assert_eq!(p.allowed_ips, vec!["2001:db8:100:2::/64".parse().unwrap()]);
        // One device: both subnets on one peer, the port of BackendData, no IPv6 peer.
        let both: Vec<ipnet::IpNet> = vec![
            "198.19.2.0/24".parse().unwrap(),
            "2001:db8:100:2::/64".parse().unwrap(),
        ];
        let p = peer_of(
            "ipv6",
            "198.18.0.1",
            Some("2001:db8::1"),
            &lease("198.18.0.2"),
        )
        .unwrap();
        assert_eq!(
            (p.endpoint, &p.allowed_ips),
            (Some("[2001:db8::2]:51820".parse().unwrap()), &both)
        );
        let p = peer_of(
            "ipv4",
            "198.18.0.1",
            Some("2001:db8::1"),
            &lease("198.18.0.2"),
        )
        .unwrap();
        assert_eq!(p.endpoint, Some("198.18.0.2:51820".parse().unwrap()));
        assert_eq!(
            peer_of("auto", "2001:db8::1", None, &lease("198.18.0.2"))
                .unwrap()
                .public_key,
            [0; 32],
            "the IPv6 pass adds no peer of its own"
        );
        // auto: IPv4 unless the peer's is private and both ends have public IPv6.
        let p = peer_of(
            "auto",
            "198.18.0.1",
            Some("2001:db8::1"),
            &lease("198.18.0.2"),
        )
        .unwrap();
        assert_eq!(p.endpoint, Some("198.18.0.2:51820".parse().unwrap()));
        // An address literal only (no traffic): the rule needs an RFC 1918 one.
        let private = "10.0.0.2";
        let p = peer_of("auto", "198.18.0.1", Some("2001:db8::1"), &lease(private)).unwrap();
        assert_eq!(p.endpoint, Some("[2001:db8::2]:51820".parse().unwrap()));
        let p = peer_of("auto", "198.18.0.1", None, &lease(private)).unwrap();
        assert_eq!(p.endpoint, Some("10.0.0.2:51820".parse().unwrap()));
        // Port 0 (older flannel): this host's own port; no key: refused with the reason.
        let old = format!(
            r#"{{"PublicIP":"198.18.0.2","BackendType":"wireguard","BackendData":{{"PublicKey":"{key}","Port":0}}}}"#
        );
        let cfg_port = peer_of("separate", "198.18.0.1", None, &old).unwrap();
        assert_eq!(cfg_port.endpoint, Some("198.18.0.2:51820".parse().unwrap()));
        let bad = r#"{"PublicIP":"198.18.0.2","BackendType":"wireguard","BackendData":{"PublicKey":"x"}}"#;
        assert_eq!(
            peer_of("separate", "198.18.0.1", None, bad).unwrap_err(),
            "BackendData has no usable PublicKey"
        );
    }

    #[cfg(feature = "daemon")]
    fn wg_lease(subnet: &str, ip: &str, key: u8, rev: i64) -> crate::lease::Lease {
        let mut l = crate::plan::testing::lease(subnet, ip, None, rev);
        l.attrs.backend_type = "wireguard".into();
        l.attrs.backend_data = Some(
            WgLeaseData {
                public_key: [key; 32],
                port: 51820,
            }
            .to_value(),
        );
        l
    }

    #[cfg(feature = "daemon")]
    fn wg(p: &TunnelPeer) -> &WgPeer {
        p.0.as_any()
            .downcast_ref::<WgPeer>()
            .expect("a WireGuard peer")
    }

    #[cfg(feature = "daemon")]
    #[test]
    fn a_lease_with_this_hosts_key_is_skipped_as_such() {
        let c = cfg(r#"{"Type":"wireguard"}"#);
        let own = wg_lease("198.19.1.0/24", "198.18.0.1", 1, 1);
        let forged = wg_lease("198.19.181.0/24", "198.18.0.2", 1, 2);
        let d = desired(&c, &run(&c), &own, &[own.clone(), forged]);
        assert!(d.tunnel.is_empty());
        assert_eq!(d.skipped.len(), 1);
        let key = format_key(&[1; 32]);
        assert_eq!(
            d.skipped[0].reason,
            format!("PublicKey {key} is this host's own")
        );
    }

    #[cfg(feature = "daemon")]
    #[test]
    fn wireguard_peers_are_one_per_key_with_one_network_route() {
        let c = cfg(
            r#"{"Type":"wireguard","PSK":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=","PersistentKeepaliveInterval":25}"#,
        );
        let own = wg_lease("198.19.1.0/24", "198.18.0.1", 1, 1);
        let peer = wg_lease("198.19.2.0/24", "198.18.0.2", 2, 2);
        let twin = wg_lease("198.19.3.0/24", "198.18.0.3", 2, 3);
        let d = desired(&c, &run(&c), &own, &[own.clone(), peer.clone(), twin]);
        assert_eq!(d.peers, 1);
        assert_eq!(d.skipped.len(), 1);
        assert!(
            d.skipped[0].reason.contains("PublicKey is already used"),
            "{:?}",
            d.skipped
        );
        let p = wg(&d.tunnel[&vec![2; 32]]);
        assert_eq!(p.endpoint, Some("198.18.0.2:51820".parse().unwrap()));
        assert_eq!(
            p.allowed_ips,
            vec!["198.19.2.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!((p.psk, p.keepalive), (Some([7; 32]), 25));
        // No per-peer route: one for the whole network on the device, scope link.
        assert_eq!(d.routes.len(), 1);
        let r = &d.routes[&"198.19.0.0/16".parse::<IpNet>().unwrap()];
        assert_eq!((r.oif, r.gateway), (Some(7), None));
        assert_eq!(r.scope, crate::netlink::RouteScope::Link);
    }

    #[cfg(feature = "daemon")]
    #[test]
    fn update_of_tunnel_peers_gives_what_a_full_computation_gives_or_declines() {
        let c = cfg(r#"{"Type":"wireguard"}"#);
        let own = wg_lease("198.19.1.0/24", "198.18.0.1", 1, 1);
        let a = wg_lease("198.19.2.0/24", "198.18.0.2", 2, 2);
        let b = wg_lease("198.19.3.0/24", "198.18.0.3", 3, 3);
        let b_moved = wg_lease("198.19.3.0/24", "198.18.0.33", 3, 4);
        let b_rekeyed = wg_lease("198.19.3.0/24", "198.18.0.3", 33, 5);
        let d = wg_lease("198.19.4.0/24", "198.18.0.4", 4, 6);
        let dup_key = wg_lease("198.19.5.0/24", "198.18.0.5", 2, 7);
        let states = [
            vec![],
            vec![a.clone()],
            vec![a.clone(), b.clone()],
            vec![a.clone(), b_moved.clone(), d.clone()],
            vec![a.clone(), b_rekeyed.clone()],
            vec![d.clone()],
            vec![a.clone(), dup_key.clone()],
        ];
        let fast = updates_match_full(&c, &own, &states);
        assert!(fast >= 25, "only {fast} changes took the incremental path");
    }

    #[cfg(feature = "daemon")]
    #[test]
    fn tunnel_diff_sets_what_differs_and_removes_what_no_lease_wants() {
        let c = cfg(r#"{"Type":"wireguard"}"#);
        let own = wg_lease("198.19.1.0/24", "198.18.0.1", 1, 1);
        let a = wg_lease("198.19.2.0/24", "198.18.0.2", 2, 2);
        let b = wg_lease("198.19.3.0/24", "198.18.0.3", 3, 3);
        let d = desired(&c, &run(&c), &own, &[a, b]);
        let mut have: Vec<WgPeer> = d.tunnel.values().map(|p| wg(p).clone()).collect();
        let peers = |h: &[WgPeer]| -> Vec<TunnelPeer> {
            h.iter().map(|p| TunnelPeer(Arc::new(p.clone()))).collect()
        };
        assert!(diff_tunnel(&d.tunnel, &peers(&have)).is_empty());
        // Another order of allowed IPs is the same peer.
        have[0].allowed_ips.push("198.19.200.0/24".parse().unwrap());
        have[0].allowed_ips.reverse();
        let mut want = d.tunnel.clone();
        want.insert(vec![2; 32], peers(&have)[0].clone());
        have[0].allowed_ips.reverse();
        assert!(diff_tunnel(&want, &peers(&have)).is_empty());
        have[0] = wg(&d.tunnel[&vec![2; 32]]).clone();
        have[0].endpoint = Some("198.18.0.99:51820".parse().unwrap());
        have.remove(1);
        let stranger = WgPeer {
            public_key: [9; 32],
            endpoint: None,
            allowed_ips: vec![],
            psk: None,
            keepalive: 0,
            last_handshake: None,
        };
        have.push(stranger);
        let change = diff_tunnel(&d.tunnel, &peers(&have));
        let keys: Vec<PeerId> = change.set.iter().map(|p| p.id()).collect();
        assert_eq!(keys, vec![vec![2; 32], vec![3; 32]]);
        assert_eq!(change.set[0], d.tunnel[&vec![2; 32]]);
        let removed: Vec<PeerId> = change.remove.iter().map(|p| p.id()).collect();
        assert_eq!(removed, vec![vec![9; 32]]);
    }

    /// Property tests of the lease data: `PROPTEST_CASES` sets how many cases each one runs.
    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Values a foreign BackendData may hold: JSON text of any shape, and objects whose
        /// PublicKey and Port are of any type.
        fn data() -> impl Strategy<Value = Value> {
            let scalar = prop_oneof![
                Just(Value::Null),
                any::<i64>().prop_map(Value::from),
                ".{0,50}".prop_map(Value::from),
            ];
            prop_oneof![
                ".{0,64}".prop_map(|s| serde_json::from_str(&s).unwrap_or(Value::String(s))),
                (scalar.clone(), scalar)
                    .prop_map(|(k, p)| serde_json::json!({"PublicKey": k, "Port": p})),
            ]
        }

        proptest! {
            #[test]
            fn wireguard_data_round_trips(key in any::<[u8; 32]>(), port in any::<u16>()) {
                let data = WgLeaseData { public_key: key, port };
                prop_assert_eq!(WgLeaseData::from_value(&data.to_value()), Some(data.clone()));
                let summary = SUMMARY.map(|s| (s.read)(&data.to_value()));
                prop_assert_eq!(summary, Some(Some(format_key(&key))));
            }

            #[test]
            fn wireguard_data_from_anything_never_panics(v in data()) {
                let _ = WgLeaseData::from_value(&v);
                let _ = SUMMARY.map(|s| (s.read)(&v));
            }
        }
    }
}
