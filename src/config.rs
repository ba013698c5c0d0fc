//! The network config stored at `<prefix>/config`: flannel's JSON, read the way flannel's Go
//! decoder reads it (keys case-insensitive, the last occurrence wins, `null` leaves a default),
//! then given flannel's defaults and validated. Every refusal names the field and its value.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

pub use crate::backend::vxlan::VxlanConfig;
pub use crate::backend::BackendConfig;
use crate::subnet::{is_subnet_of, subnets_from_to, Family};

/// A config that weft refuses, with the field and the value that made it refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("config is not valid JSON: {0}")]
    Json(String),
    #[error("config must be a JSON object, found {0}")]
    NotAnObject(String),
    #[error("{field} {value}: {why}")]
    Invalid {
        field: &'static str,
        value: String,
        why: String,
    },
    #[error("{field} is missing: {why}")]
    Missing { field: &'static str, why: String },
}

impl ConfigError {
    /// The field the error is about, as flannel spells it (`None` for syntax errors).
    pub fn field(&self) -> Option<&'static str> {
        match self {
            ConfigError::Invalid { field, .. } | ConfigError::Missing { field, .. } => Some(field),
            _ => None,
        }
    }
}

pub(crate) fn invalid(
    field: &'static str,
    value: impl fmt::Display,
    why: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        field,
        value: value.to_string(),
        why: why.into(),
    }
}

/// How a JSON value is shown in an error: strings bare, everything else as JSON.
pub(crate) fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The network, its division into per-host subnets, and the backend.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// `Network`; `None` when IPv4 is disabled.
    pub network: Option<Ipv4Net>,
    /// `SubnetLen`; 0 when IPv4 is disabled.
    pub subnet_len: u8,
    /// First and last subnet that may be handed out (network addresses of subnets).
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
    pub enable_ipv4: bool,
    pub enable_ipv6: bool,
    pub ipv6_network: Option<Ipv6Net>,
    pub ipv6_subnet_len: u8,
    pub ipv6_subnet_min: Option<Ipv6Addr>,
    pub ipv6_subnet_max: Option<Ipv6Addr>,
    pub enable_nftables: bool,
    pub backend: BackendConfig,
    /// The document as stored, for tools that show it back unchanged.
    pub raw: Value,
}

/// A JSON object with its keys in document order and duplicates kept, so that lookups can
/// follow Go's rule (case-insensitive, the last match wins).
struct OrderedObject(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<OrderedObject, A::Error> {
                let mut v = Vec::new();
                while let Some(entry) = m.next_entry::<String, Value>()? {
                    v.push(entry);
                }
                Ok(OrderedObject(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// Case-insensitive lookup in an object; `null` counts as absent, like Go leaves a
/// non-pointer field alone when it meets `null`.
pub(crate) trait Lookup {
    fn field(&self, name: &str) -> Option<&Value>;
}

impl Lookup for OrderedObject {
    fn field(&self, name: &str) -> Option<&Value> {
        self.0
            .iter()
            .rev()
            .find(|(k, v)| k.eq_ignore_ascii_case(name) && !v.is_null())
            .map(|(_, v)| v)
    }
}

impl Lookup for serde_json::Map<String, Value> {
    fn field(&self, name: &str) -> Option<&Value> {
        // Exact spelling first, as Go prefers it when several keys differ only in case.
        match self.get(name) {
            Some(v) if !v.is_null() => Some(v),
            _ => self
                .iter()
                .find(|(k, v)| k.eq_ignore_ascii_case(name) && !v.is_null())
                .map(|(_, v)| v),
        }
    }
}

pub(crate) fn get_bool(
    obj: &impl Lookup,
    field: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match obj.field(field) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(invalid(field, show(v), "must be true or false")),
    }
}

pub(crate) fn get_uint(obj: &impl Lookup, field: &'static str) -> Result<Option<u64>, ConfigError> {
    match obj.field(field) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            invalid(
                field,
                show(v),
                "must be a whole number that is not negative",
            )
        }),
    }
}

pub(crate) fn get_str<'a>(
    obj: &'a impl Lookup,
    field: &'static str,
) -> Result<Option<&'a str>, ConfigError> {
    match obj.field(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(invalid(field, show(v), "must be a string")),
    }
}

impl NetworkConfig {
    /// Parses and validates a config document, filling in flannel's defaults.
    pub fn parse(json: &str) -> Result<NetworkConfig, ConfigError> {
        let raw: Value =
            serde_json::from_str(json).map_err(|e| ConfigError::Json(e.to_string()))?;
        if !raw.is_object() {
            return Err(ConfigError::NotAnObject(raw.to_string()));
        }
        let obj: OrderedObject =
            serde_json::from_str(json).map_err(|e| ConfigError::Json(e.to_string()))?;

        let enable_ipv4 = get_bool(&obj, "EnableIPv4", true)?;
        let enable_ipv6 = get_bool(&obj, "EnableIPv6", false)?;
        let enable_nftables = get_bool(&obj, "EnableNFTables", false)?;
        if !enable_ipv4 && !enable_ipv6 {
            return Err(invalid(
                "EnableIPv4",
                false,
                "EnableIPv4 or EnableIPv6 must be true, or there is no network to share",
            ));
        }

        let mut cfg = NetworkConfig {
            network: None,
            subnet_len: 0,
            subnet_min: Ipv4Addr::UNSPECIFIED,
            subnet_max: Ipv4Addr::UNSPECIFIED,
            enable_ipv4,
            enable_ipv6,
            ipv6_network: None,
            ipv6_subnet_len: 0,
            ipv6_subnet_min: None,
            ipv6_subnet_max: None,
            enable_nftables,
            backend: BackendConfig::parse(obj.field("Backend"))?,
            raw: Value::Null,
        };
        if enable_ipv4 {
            let d = parse_division(&obj, &IPV4)?;
            let (IpNet::V4(n), IpAddr::V4(min), IpAddr::V4(max)) = (d.network, d.min, d.max) else {
                unreachable!("the IPv4 rules parse IPv4 networks only");
            };
            cfg.network = Some(n);
            cfg.subnet_len = d.subnet_len;
            cfg.subnet_min = min;
            cfg.subnet_max = max;
        }
        if enable_ipv6 {
            let d = parse_division(&obj, &IPV6)?;
            let (IpNet::V6(n), IpAddr::V6(min), IpAddr::V6(max)) = (d.network, d.min, d.max) else {
                unreachable!("the IPv6 rules parse IPv6 networks only");
            };
            cfg.ipv6_network = Some(n);
            cfg.ipv6_subnet_len = d.subnet_len;
            cfg.ipv6_subnet_min = Some(min);
            cfg.ipv6_subnet_max = Some(max);
        }
        cfg.raw = raw;
        Ok(cfg)
    }

    /// Whether `s` is one of this network's subnets: inside `Network`, `SubnetLen` long and
    /// on a subnet boundary. Leases of other hosts are judged by this.
    pub fn contains_subnet(&self, s: Ipv4Net) -> bool {
        self.network
            .is_some_and(|n| is_subnet_of(n.into(), self.subnet_len, s.into()))
    }

    /// The network of `family`, when that family is enabled.
    pub fn network_of(&self, family: Family) -> Option<IpNet> {
        match family {
            Family::V4 => self.network.map(IpNet::V4),
            Family::V6 => self.ipv6_network.map(IpNet::V6),
        }
    }

    /// Whether `s` is one of the subnets of the network of its family.
    pub fn contains(&self, s: IpNet) -> bool {
        match s {
            IpNet::V4(s) => self.contains_subnet(s),
            IpNet::V6(s) => self.contains_subnet6(s),
        }
    }

    /// Whether `s` may be handed out now: a subnet of the network within SubnetMin..SubnetMax.
    /// A host keeps its old lease only when this holds (flannel's rule).
    pub fn subnet_in_range(&self, s: Ipv4Net) -> bool {
        self.in_range(s.into())
    }

    /// [`contains_subnet`](Self::contains_subnet) for the IPv6 network.
    pub fn contains_subnet6(&self, s: Ipv6Net) -> bool {
        self.ipv6_network
            .is_some_and(|n| is_subnet_of(n.into(), self.ipv6_subnet_len, s.into()))
    }

    pub fn subnet6_in_range(&self, s: Ipv6Net) -> bool {
        self.in_range(s.into())
    }

    /// The subnets handed out in `family`: the first and last (network addresses) and their
    /// length; `None` when the family is off.
    pub fn range_of(&self, family: Family) -> Option<(IpAddr, IpAddr, u8)> {
        match family {
            Family::V4 => self.network.map(|_| {
                let (min, max) = (self.subnet_min.into(), self.subnet_max.into());
                (min, max, self.subnet_len)
            }),
            Family::V6 => {
                let (min, max) = (self.ipv6_subnet_min?, self.ipv6_subnet_max?);
                Some((min.into(), max.into(), self.ipv6_subnet_len))
            }
        }
    }

    /// [`subnet_in_range`](Self::subnet_in_range) for either family.
    pub fn in_range(&self, s: IpNet) -> bool {
        let Some((min, max, _)) = self.range_of(Family::of(s.addr())) else {
            return false;
        };
        let at = Family::number(s.network());
        self.contains(s) && at >= Family::number(min) && at <= Family::number(max)
    }

    /// flannel's choice of a new subnet in `family`: `prev` (this host's earlier subnet) when
    /// it may still be handed out and `free` says it is, else one of the first `pool` free
    /// subnets of the range, the one `pick` chooses (an index below the count it is given).
    /// `None` when no subnet is free.
    pub fn choose_subnet(
        &self,
        family: Family,
        prev: Option<IpNet>,
        free: impl Fn(&IpNet) -> bool,
        pool: usize,
        pick: impl FnOnce(usize) -> usize,
    ) -> Option<IpNet> {
        if let Some(p) = prev.filter(|p| self.in_range(*p) && free(p)) {
            return Some(p);
        }
        let (min, max, len) = self.range_of(family)?;
        let candidates: Vec<IpNet> = subnets_from_to(min, max, len)
            .filter(|s| free(s))
            .take(pool)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        candidates.get(pick(candidates.len())).copied()
    }

    /// Number of subnets in SubnetMin..SubnetMax.
    pub fn subnet_count(&self) -> u64 {
        if self.network.is_none() {
            return 0;
        }
        let step = 1u64 << (32 - self.subnet_len);
        (u64::from(u32::from(self.subnet_max)) - u64::from(u32::from(self.subnet_min))) / step + 1
    }

    /// The config with every default filled in, under flannel's field names.
    pub fn effective_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("EnableIPv4".into(), self.enable_ipv4.into());
        m.insert("EnableIPv6".into(), self.enable_ipv6.into());
        m.insert("EnableNFTables".into(), self.enable_nftables.into());
        if let Some(n) = self.network {
            m.insert("Network".into(), n.to_string().into());
            m.insert("SubnetLen".into(), self.subnet_len.into());
            m.insert("SubnetMin".into(), self.subnet_min.to_string().into());
            m.insert("SubnetMax".into(), self.subnet_max.to_string().into());
        }
        if let Some(n) = self.ipv6_network {
            m.insert("IPv6Network".into(), n.to_string().into());
            m.insert("IPv6SubnetLen".into(), self.ipv6_subnet_len.into());
            if let Some(a) = self.ipv6_subnet_min {
                m.insert("IPv6SubnetMin".into(), a.to_string().into());
            }
            if let Some(a) = self.ipv6_subnet_max {
                m.insert("IPv6SubnetMax".into(), a.to_string().into());
            }
        }
        m.insert("Backend".into(), self.backend.to_json());
        Value::Object(m)
    }
}

/// What differs between a config's IPv4 and IPv6 network: the field names and flannel's
/// limits. Everything else is [`parse_division`], one parser called once per family.
struct FamilyRules {
    family: Family,
    network: &'static str,
    subnet_len: &'static str,
    subnet_min: &'static str,
    subnet_max: &'static str,
    /// Why the network must be given.
    missing: &'static str,
    /// The longest subnet; the smallest network holds four of them.
    max_subnet_len: u8,
    /// The subnet length when the network is large enough for it.
    default_subnet_len: u8,
}

const IPV4: FamilyRules = FamilyRules {
    family: Family::V4,
    network: "Network",
    subnet_len: "SubnetLen",
    subnet_min: "SubnetMin",
    subnet_max: "SubnetMax",
    missing: "the overlay network (e.g. \"10.5.0.0/16\") must be set when EnableIPv4 is true",
    max_subnet_len: 30,
    default_subnet_len: 24,
};

const IPV6: FamilyRules = FamilyRules {
    family: Family::V6,
    network: "IPv6Network",
    subnet_len: "IPv6SubnetLen",
    subnet_min: "IPv6SubnetMin",
    subnet_max: "IPv6SubnetMax",
    missing: "the IPv6 overlay network must be set when EnableIPv6 is true",
    max_subnet_len: 126,
    default_subnet_len: 64,
};

/// One family's network, cut into subnets: which are handed out.
struct Division {
    network: IpNet,
    subnet_len: u8,
    /// First and last subnet that may be handed out (network addresses of subnets).
    min: IpAddr,
    max: IpAddr,
}

fn parse_division(obj: &OrderedObject, r: &FamilyRules) -> Result<Division, ConfigError> {
    let text = get_str(obj, r.network)?.ok_or_else(|| ConfigError::Missing {
        field: r.network,
        why: r.missing.into(),
    })?;
    let network = r.family.parse_net(text).ok_or_else(|| {
        invalid(
            r.network,
            text,
            format!("not an {} network in CIDR form", r.family),
        )
    })?;
    // Go's ParseCIDR drops host bits; so do we.
    let network = network.trunc();
    let subnet_len = parse_subnet_len(obj, r, network)?;
    let (min, max) = parse_bounds(obj, r, network, subnet_len)?;
    Ok(Division {
        network,
        subnet_len,
        min,
        max,
    })
}

/// SubnetMin and SubnetMax: as given (inside the network, on subnet boundaries, in order),
/// else the second subnet (the first is never handed out) and the last.
fn parse_bounds(
    obj: &OrderedObject,
    r: &FamilyRules,
    network: IpNet,
    subnet_len: u8,
) -> Result<(IpAddr, IpAddr), ConfigError> {
    let host_bits = u32::from(r.family.bits() - subnet_len);
    let size = 1u128 << host_bits;
    let first = Family::number(network.network());
    let last_subnet = Family::number(network.broadcast()) - (size - 1);
    let bound = |field: &'static str, default: u128| -> Result<IpAddr, ConfigError> {
        let Some(t) = get_str(obj, field)? else {
            return Ok(r.family.addr(default));
        };
        let a = r
            .family
            .parse_addr(t)
            .ok_or_else(|| invalid(field, t, format!("not an {} address", r.family)))?;
        if !network.contains(&a) {
            return Err(invalid(
                field,
                a,
                format!("is not inside {} {network}", r.network),
            ));
        }
        Ok(a)
    };
    let min = bound(r.subnet_min, first + size)?;
    let max = bound(r.subnet_max, last_subnet)?;
    let mask = u128::MAX << host_bits;
    for (field, a) in [(r.subnet_min, min), (r.subnet_max, max)] {
        if Family::number(a) & mask != Family::number(a) {
            return Err(invalid(
                field,
                a,
                format!(
                    "is not on a /{subnet_len} subnet boundary ({})",
                    r.subnet_len
                ),
            ));
        }
    }
    if Family::number(min) > Family::number(max) {
        return Err(invalid(
            r.subnet_min,
            min,
            format!("is after {} {max}", r.subnet_max),
        ));
    }
    Ok((min, max))
}

/// The subnet length: as given (long enough for four subnets, at most the family's
/// longest), else flannel's default for the network's size.
fn parse_subnet_len(
    obj: &OrderedObject,
    r: &FamilyRules,
    network: IpNet,
) -> Result<u8, ConfigError> {
    let plen = network.prefix_len();
    if let Some(len) = get_uint(obj, r.subnet_len)?.filter(|l| *l > 0) {
        if len > u64::from(r.max_subnet_len) {
            return Err(invalid(
                r.subnet_len,
                len,
                format!("must be at most {}", r.max_subnet_len),
            ));
        }
        if len < u64::from(plen) + 2 {
            return Err(invalid(
                r.subnet_len,
                len,
                format!(
                    "must be at least {} so that {} {network} holds four subnets",
                    plen + 2,
                    r.network
                ),
            ));
        }
        return Ok(len as u8);
    }
    let smallest = r.max_subnet_len - 2;
    if plen > smallest {
        return Err(invalid(
            r.network,
            network,
            format!("is too small: the smallest useful network is a /{smallest}"),
        ));
    }
    Ok(if plen <= r.default_subnet_len - 2 {
        r.default_subnet_len
    } else {
        plen + 2
    })
}

/// Backend fields are reported with their path so the operator finds them.
pub(crate) fn rename(e: ConfigError, field: &'static str) -> ConfigError {
    match e {
        ConfigError::Invalid { value, why, .. } => ConfigError::Invalid { field, value, why },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> NetworkConfig {
        NetworkConfig::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        NetworkConfig::parse(s).unwrap_err().to_string()
    }

    const VX: &str = r#""Backend": {"Type": "vxlan"}"#;

    #[test]
    fn defaults_for_a_16() {
        let c = parse(&format!(r#"{{"Network": "198.19.0.0/16", {VX}}}"#));
        assert_eq!(c.network, Some("198.19.0.0/16".parse().unwrap()));
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, Ipv4Addr::new(198, 19, 1, 0));
        assert_eq!(c.subnet_max, Ipv4Addr::new(198, 19, 255, 0));
        assert!(c.enable_ipv4 && !c.enable_ipv6 && !c.enable_nftables);
        assert_eq!(c.backend, BackendConfig::Vxlan(VxlanConfig::default()));
        assert_eq!(c.backend.type_name(), "vxlan");
        assert_eq!(c.subnet_count(), 255);
    }

    #[test]
    fn small_networks_get_prefix_plus_two() {
        let c = parse(&format!(r#"{{"Network": "198.19.0.0/26", {VX}}}"#));
        assert_eq!(c.subnet_len, 28);
        assert_eq!(c.subnet_min, Ipv4Addr::new(198, 19, 0, 16));
        assert_eq!(c.subnet_max, Ipv4Addr::new(198, 19, 0, 48));
        let c = parse(&format!(r#"{{"Network": "198.19.0.0/22", {VX}}}"#));
        assert_eq!(c.subnet_len, 24);
        let c = parse(&format!(r#"{{"Network": "198.19.0.0/28", {VX}}}"#));
        assert_eq!(c.subnet_len, 30);
        let e = err(&format!(r#"{{"Network": "198.19.0.0/29", {VX}}}"#));
        assert!(e.starts_with("Network 198.19.0.0/29:"), "{e}");
    }

    #[test]
    fn keys_are_case_insensitive_and_last_wins() {
        let c = parse(
            r#"{"network": "198.18.0.0/16", "NETWORK": "198.19.0.0/16", "subnetlen": 26,
                "backend": {"type": "VXLAN", "vni": 7, "port": 4789, "directrouting": true}}"#,
        );
        assert_eq!(c.network, Some("198.19.0.0/16".parse().unwrap()));
        assert_eq!(c.subnet_len, 26);
        assert_eq!(
            c.backend,
            BackendConfig::Vxlan(VxlanConfig {
                vni: 7,
                port: 4789,
                direct_routing: true,
                ..VxlanConfig::default()
            })
        );
    }

    #[test]
    fn explicit_bounds_are_checked() {
        let c = parse(&format!(
            r#"{{"Network": "198.19.0.0/16", "SubnetMin": "198.19.10.0", "SubnetMax": "198.19.20.0", {VX}}}"#
        ));
        assert_eq!(c.subnet_count(), 11);
        let e = err(&format!(
            r#"{{"Network": "198.19.0.0/16", "SubnetMin": "198.19.10.5", {VX}}}"#
        ));
        assert!(
            e.starts_with("SubnetMin 198.19.10.5: is not on a /24"),
            "{e}"
        );
        let e = err(&format!(
            r#"{{"Network": "198.19.0.0/16", "SubnetMax": "198.18.10.0", {VX}}}"#
        ));
        assert!(e.starts_with("SubnetMax 198.18.10.0: is not inside"), "{e}");
        let e = err(&format!(
            r#"{{"Network": "198.19.0.0/16", "SubnetMin": "198.19.30.0", "SubnetMax": "198.19.20.0", {VX}}}"#
        ));
        assert!(e.starts_with("SubnetMin 198.19.30.0: is after"), "{e}");
    }

    #[test]
    fn subnet_len_limits() {
        let e = err(&format!(
            r#"{{"Network": "198.19.0.0/16", "SubnetLen": 31, {VX}}}"#
        ));
        assert_eq!(e, "SubnetLen 31: must be at most 30");
        let e = err(&format!(
            r#"{{"Network": "198.19.0.0/16", "SubnetLen": 17, {VX}}}"#
        ));
        assert!(e.starts_with("SubnetLen 17: must be at least 18"), "{e}");
        let e = err(&format!(
            r#"{{"Network": "198.19.0.0/16", "SubnetLen": "24", {VX}}}"#
        ));
        assert!(e.starts_with("SubnetLen 24: must be a whole number"), "{e}");
    }

    #[test]
    fn network_is_required_and_must_parse() {
        assert!(err(&format!("{{{VX}}}")).starts_with("Network is missing"));
        let e = err(&format!(r#"{{"Network": "198.19.0.0/33", {VX}}}"#));
        assert!(e.starts_with("Network 198.19.0.0/33:"), "{e}");
        let e = err(&format!(r#"{{"Network": "fd00::/64", {VX}}}"#));
        assert!(e.starts_with("Network fd00::/64:"), "{e}");
        assert!(err("[1]").contains("JSON object"));
        assert!(err("{").contains("not valid JSON"));
    }

    #[test]
    fn subnet_choice_is_flannels_in_either_family() {
        let c = parse(&format!(
            r#"{{"Network": "198.19.0.0/16", "EnableIPv6": true, "IPv6Network": "2001:db8:100::/48", {VX}}}"#
        ));
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let all_free = |_: &IpNet| true;
        // The earlier subnet when it is free and in range; the first one is never handed out.
        let prev = Some(net("198.19.7.0/24"));
        let got = c.choose_subnet(Family::V4, prev, all_free, 100, |_| 0);
        assert_eq!(got, prev);
        let got = c.choose_subnet(Family::V4, Some(net("198.19.0.0/24")), all_free, 100, |_| 0);
        assert_eq!(got, Some(net("198.19.1.0/24")));
        // Else one of the first `pool` free ones, as `pick` says.
        let two_free = |s: &IpNet| *s == net("198.19.2.0/24") || *s == net("198.19.5.0/24");
        let got = c.choose_subnet(Family::V4, prev, two_free, 100, |n| n - 1);
        assert_eq!(got, Some(net("198.19.5.0/24")));
        assert_eq!(
            c.choose_subnet(Family::V4, None, |_| false, 100, |_| 0),
            None
        );
        // The same code for IPv6.
        let got = c.choose_subnet(Family::V6, None, all_free, 100, |n| n - 1);
        assert_eq!(got, Some(net("2001:db8:100:64::/64")));
        assert!(c.in_range(net("2001:db8:100:ffff::/64")));
        assert!(!c.in_range(net("2001:db8:100::/64")));
    }

    #[test]
    fn backends() {
        let e = err(r#"{"Network": "198.19.0.0/16"}"#);
        assert!(
            e.starts_with("Backend.Type udp:") && e.contains("vxlan") && e.contains("host-gw"),
            "{e}"
        );
        let e = err(r#"{"Network": "198.19.0.0/16", "Backend": {"Type": "udp"}}"#);
        assert!(e.starts_with("Backend.Type udp:"), "{e}");
        let e = err(r#"{"Network": "198.19.0.0/16", "Backend": {"Type": "wireguard"}}"#);
        assert!(e.starts_with("Backend.Type wireguard:"), "{e}");
        let c = parse(r#"{"Network": "198.19.0.0/16", "Backend": {"Type": "host-gw"}}"#);
        assert_eq!(c.backend, BackendConfig::HostGw);
        let e =
            err(r#"{"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan", "VNI": 16777216}}"#);
        assert!(e.starts_with("Backend.VNI 16777216:"), "{e}");
        let e = err(r#"{"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan", "MTU": 20}}"#);
        assert!(e.starts_with("Backend.MTU 20:"), "{e}");
        let e = err(r#"{"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan", "GBP": "yes"}}"#);
        assert!(e.starts_with("Backend.GBP yes:"), "{e}");
    }

    #[test]
    fn ipv6_defaults_and_limits() {
        let c = parse(&format!(
            r#"{{"Network": "198.19.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:1::/56", {VX}}}"#
        ));
        assert_eq!(c.ipv6_subnet_len, 64);
        assert_eq!(c.ipv6_subnet_min, Some("fd00:1:0:1::".parse().unwrap()));
        assert_eq!(c.ipv6_subnet_max, Some("fd00:1:0:ff::".parse().unwrap()));
        let c = parse(&format!(
            r#"{{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/120", {VX}}}"#
        ));
        assert_eq!(c.network, None);
        assert_eq!(c.ipv6_subnet_len, 122);
        let e = err(&format!(
            r#"{{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/125", {VX}}}"#
        ));
        assert!(e.starts_with("IPv6Network fd00::/125: is too small"), "{e}");
        let e = err(&format!(
            r#"{{"Network": "198.19.0.0/16", "EnableIPv6": true, {VX}}}"#
        ));
        assert!(e.starts_with("IPv6Network is missing"), "{e}");
        let e = err(&format!(
            r#"{{"Network": "198.19.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/56", "IPv6SubnetLen": 127, {VX}}}"#
        ));
        assert!(e.starts_with("IPv6SubnetLen 127:"), "{e}");
        let e = err(&format!(
            r#"{{"Network": "198.19.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/56", "IPv6SubnetMin": "fd00::1", {VX}}}"#
        ));
        assert!(
            e.starts_with("IPv6SubnetMin fd00::1: is not on a /64"),
            "{e}"
        );
        let e = err(&format!(r#"{{"EnableIPv4": false, {VX}}}"#));
        assert!(e.starts_with("EnableIPv4 false:"), "{e}");
    }

    #[test]
    fn null_keeps_defaults_and_host_bits_are_dropped() {
        let c = parse(&format!(
            r#"{{"Network": "198.19.3.7/16", "SubnetLen": null, "EnableIPv4": null, {VX}}}"#
        ));
        assert_eq!(c.network, Some("198.19.0.0/16".parse().unwrap()));
        assert_eq!(c.subnet_len, 24);
        assert!(c.enable_ipv4);
    }

    #[test]
    fn subnet_membership() {
        let c = parse(&format!(
            r#"{{"Network": "198.19.0.0/16", "SubnetMin": "198.19.10.0", {VX}}}"#
        ));
        assert!(c.contains_subnet("198.19.0.0/24".parse().unwrap()));
        assert!(!c.subnet_in_range("198.19.0.0/24".parse().unwrap()));
        assert!(c.subnet_in_range("198.19.10.0/24".parse().unwrap()));
        assert!(!c.contains_subnet("198.19.10.0/25".parse().unwrap()));
        assert!(!c.contains_subnet("198.19.10.1/24".parse().unwrap()));
        assert!(!c.contains_subnet("198.18.10.0/24".parse().unwrap()));
    }

    #[test]
    fn effective_json_round_trips() {
        let c = parse(&format!(
            r#"{{"Network": "198.19.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/56", {VX}}}"#
        ));
        let again = NetworkConfig::parse(&c.effective_json().to_string()).unwrap();
        assert_eq!(again.effective_json(), c.effective_json());
    }
}
