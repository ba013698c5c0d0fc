//! The network config stored at `<prefix>/config`: flannel's JSON, read the way flannel's Go
//! decoder reads it (keys case-insensitive, the last occurrence wins, `null` leaves a default),
//! then given flannel's defaults and validated. Every refusal names the field and its value.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::Value;

pub use crate::backend::BackendConfig;
use crate::json::{
    get_bool, get_str, get_uint, invalid, ConfigError, ConfigErrors, Lookup, OrderedObject, HIDDEN,
};
use crate::subnet::{is_subnet_of, subnets_from_to, Family};

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

impl NetworkConfig {
    /// Parses and validates a config document, filling in flannel's defaults. A refused
    /// document gets every problem found, each naming the field and its value; a check that
    /// depends on a broken value is skipped rather than reported as well.
    pub fn parse(json: &str) -> Result<NetworkConfig, ConfigErrors> {
        let raw: Value =
            serde_json::from_str(json).map_err(|e| ConfigError::Json(e.to_string()))?;
        if !raw.is_object() {
            return Err(ConfigError::NotAnObject(raw.to_string()).into());
        }
        let obj: OrderedObject =
            serde_json::from_str(json).map_err(|e| ConfigError::Json(e.to_string()))?;

        let mut problems = ConfigErrors::default();
        let enable_ipv4 = problems.check(get_bool(&obj, "EnableIPv4", true));
        let enable_ipv6 = problems.check(get_bool(&obj, "EnableIPv6", false));
        let enable_nftables = problems.check(get_bool(&obj, "EnableNFTables", false));
        if enable_ipv4 == Some(false) && enable_ipv6 == Some(false) {
            problems.push(invalid(
                "EnableIPv4",
                false,
                "EnableIPv4 or EnableIPv6 must be true, or there is no network to share",
            ));
        } else if enable_ipv4 == Some(false) {
            // flannel forces IPv4 on for the leases it reads: an IPv6-only network would
            // make its hosts misbehave, and weft's would have no key to write.
            problems.push(invalid(
                "EnableIPv4",
                false,
                "IPv6-only networks are not possible: flannel's etcd layout names every lease by its IPv4 subnet (<ipv4>-<len>&<ipv6>-<len>); keep EnableIPv4 with a Network beside EnableIPv6",
            ));
        }
        // A family whose Enable flag is broken is checked only as far as it is written down:
        // its network being absent is not a problem of its own.
        let division =
            |problems: &mut ConfigErrors, enabled: Option<bool>, r: &FamilyRules| match enabled {
                Some(false) => Some(None),
                None if obj.field(r.network).is_none() => None,
                _ => problems.absorb(parse_division(&obj, r)).map(Some),
            };
        let v4 = division(&mut problems, enable_ipv4, &IPV4);
        let v6 = division(&mut problems, enable_ipv6, &IPV6);
        let backend = problems.absorb(BackendConfig::parse(obj.field("Backend")));
        let (
            Some(enable_ipv4),
            Some(enable_ipv6),
            Some(enable_nftables),
            Some(backend),
            Some(v4),
            Some(v6),
        ) = (enable_ipv4, enable_ipv6, enable_nftables, backend, v4, v6)
        else {
            return problems.or(None);
        };

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
            backend,
            raw,
        };
        // Each family's rules parse only that family's networks and bounds.
        match v4.map(|d| (d.network, d.min, d.max, d.subnet_len)) {
            Some((IpNet::V4(n), IpAddr::V4(min), IpAddr::V4(max), len)) => {
                (cfg.network, cfg.subnet_len) = (Some(n), len);
                (cfg.subnet_min, cfg.subnet_max) = (min, max);
            }
            Some((n, ..)) => problems.push(invalid("Network", n, "must be an IPv4 network")),
            None => {}
        }
        match v6.map(|d| (d.network, d.min, d.max, d.subnet_len)) {
            Some((IpNet::V6(n), IpAddr::V6(min), IpAddr::V6(max), len)) => {
                (cfg.ipv6_network, cfg.ipv6_subnet_len) = (Some(n), len);
                (cfg.ipv6_subnet_min, cfg.ipv6_subnet_max) = (Some(min), Some(max));
            }
            Some((n, ..)) => problems.push(invalid("IPv6Network", n, "must be an IPv6 network")),
            None => {}
        }
        problems.or(Some(cfg))
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
        self.subnet_count_in(Family::V4) as u64
    }

    /// Number of subnets handed out in `family` (saturating for huge IPv6 ranges); 0 when
    /// the family is off.
    pub fn subnet_count_in(&self, family: Family) -> u128 {
        let Some((min, max, len)) = self.range_of(family) else {
            return 0;
        };
        let shift = u32::from(family.bits() - len);
        let span = (Family::number(max) - Family::number(min))
            .checked_shr(shift)
            .unwrap_or(0);
        span.saturating_add(1)
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

fn parse_division(obj: &OrderedObject, r: &FamilyRules) -> Result<Division, ConfigErrors> {
    let mut problems = ConfigErrors::default();
    let network = problems.check(parse_network(obj, r));
    let subnet_len = parse_subnet_len(&mut problems, obj, r, network);
    let bounds = parse_bounds(&mut problems, obj, r, network, subnet_len);
    let division = match (network, subnet_len, bounds) {
        (Some(network), Some(subnet_len), Some((min, max))) => Some(Division {
            network,
            subnet_len,
            min,
            max,
        }),
        _ => None,
    };
    problems.or(division)
}

fn parse_network(obj: &OrderedObject, r: &FamilyRules) -> Result<IpNet, ConfigError> {
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
    Ok(network.trunc())
}

/// SubnetMin and SubnetMax: as given (inside the network, on subnet boundaries, in order),
/// else the second subnet (the first is never handed out) and the last. Each check runs
/// only when what it compares with is known.
fn parse_bounds(
    problems: &mut ConfigErrors,
    obj: &OrderedObject,
    r: &FamilyRules,
    network: Option<IpNet>,
    subnet_len: Option<u8>,
) -> Option<(IpAddr, IpAddr)> {
    // Each bound as written: `Some(None)` when absent, `None` when broken.
    let mut written = |field: &'static str| -> Option<Option<IpAddr>> {
        let t = problems.check(get_str(obj, field))?;
        let Some(t) = t else { return Some(None) };
        let a = r.family.parse_addr(t);
        if a.is_none() {
            problems.push(invalid(field, t, format!("not an {} address", r.family)));
        }
        a.map(Some)
    };
    let min = written(r.subnet_min);
    let max = written(r.subnet_max);
    let mut inside = |field: &'static str, a: Option<Option<IpAddr>>| match (a, network) {
        (Some(Some(a)), Some(network)) if !network.contains(&a) => {
            problems.push(invalid(
                field,
                a,
                format!("is not inside {} {network}", r.network),
            ));
            None
        }
        _ => a,
    };
    let min = inside(r.subnet_min, min);
    let max = inside(r.subnet_max, max);
    let (network, subnet_len) = (network?, subnet_len?);

    let host_bits = u32::from(r.family.bits() - subnet_len);
    let size = 1u128 << host_bits;
    let first = Family::number(network.network());
    let last_subnet = Family::number(network.broadcast()) - (size - 1);
    let mask = u128::MAX << host_bits;
    let mut on_boundary = |field: &'static str, a: Option<Option<IpAddr>>, default: u128| {
        let a = a?.unwrap_or_else(|| r.family.addr(default));
        if Family::number(a) & mask != Family::number(a) {
            problems.push(invalid(
                field,
                a,
                format!(
                    "is not on a /{subnet_len} subnet boundary ({})",
                    r.subnet_len
                ),
            ));
            return None;
        }
        Some(a)
    };
    let min = on_boundary(r.subnet_min, min, first + size);
    let max = on_boundary(r.subnet_max, max, last_subnet);
    let (min, max) = (min?, max?);
    if Family::number(min) > Family::number(max) {
        problems.push(invalid(
            r.subnet_min,
            min,
            format!("is after {} {max}", r.subnet_max),
        ));
        return None;
    }
    Some((min, max))
}

/// The subnet length: as given (long enough for four subnets, at most the family's
/// longest), else flannel's default for the network's size. The checks against the network
/// run only when the network is known.
fn parse_subnet_len(
    problems: &mut ConfigErrors,
    obj: &OrderedObject,
    r: &FamilyRules,
    network: Option<IpNet>,
) -> Option<u8> {
    let given = problems.check(get_uint(obj, r.subnet_len))?;
    if let Some(len) = given.filter(|l| *l > 0) {
        if len > u64::from(r.max_subnet_len) {
            problems.push(invalid(
                r.subnet_len,
                len,
                format!("must be at most {}", r.max_subnet_len),
            ));
            return None;
        }
        let network = network?;
        let plen = network.prefix_len();
        if len < u64::from(plen) + 2 {
            problems.push(invalid(
                r.subnet_len,
                len,
                format!(
                    "must be at least {} so that {} {network} holds four subnets",
                    plen + 2,
                    r.network
                ),
            ));
            return None;
        }
        return Some(len as u8);
    }
    let network = network?;
    let plen = network.prefix_len();
    let smallest = r.max_subnet_len - 2;
    if plen > smallest {
        problems.push(invalid(
            r.network,
            network,
            format!("is too small: the smallest useful network is a /{smallest}"),
        ));
        return None;
    }
    Some(if plen <= r.default_subnet_len - 2 {
        r.default_subnet_len
    } else {
        plen + 2
    })
}

/// Replaces the value of every secret backend setting in a config document (stored text
/// read as JSON, or [`NetworkConfig::effective_json`]) with [`HIDDEN`]; gives the hidden
/// fields' paths. Keys match case-insensitively, as flannel reads them.
pub fn hide_secrets(doc: &mut Value) -> Vec<String> {
    let mut hidden = Vec::new();
    let Some(obj) = doc.as_object_mut() else {
        return hidden;
    };
    for (key, backend) in obj.iter_mut() {
        if !key.eq_ignore_ascii_case("Backend") {
            continue;
        }
        let Some(backend) = backend.as_object_mut() else {
            continue;
        };
        for (name, value) in backend.iter_mut() {
            let secret =
                (crate::backend::SECRET_SETTINGS.iter()).any(|s| name.eq_ignore_ascii_case(s));
            if secret && !value.is_null() {
                *value = Value::String(HIDDEN.into());
                hidden.push(format!("{key}.{name}"));
            }
        }
    }
    hidden
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
        assert_eq!(
            c.backend.to_json(),
            serde_json::json!({"Type": "vxlan", "VNI": 1, "Port": 0, "MTU": 0, "GBP": false,
                               "Learning": false, "DirectRouting": false})
        );
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
        let b = c.backend.to_json();
        assert_eq!(
            (&b["VNI"], &b["Port"], &b["DirectRouting"]),
            (&7.into(), &4789.into(), &true.into())
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
        let e = err(r#"{"Network": "198.19.0.0/16", "Backend": {"Type": "ipsec"}}"#);
        assert!(e.starts_with("Backend.Type ipsec:"), "{e}");
        let c = parse(r#"{"Network": "198.19.0.0/16", "Backend": {"Type": "WireGuard"}}"#);
        assert_eq!(c.backend.type_name(), "wireguard");
        let e = err(
            r#"{"Network": "198.19.0.0/16", "Backend": {"Type": "wireguard", "ListenPort": "x"}}"#,
        );
        assert!(e.starts_with("Backend.ListenPort x:"), "{e}");
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
            r#"{{"Network": "198.19.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/120", {VX}}}"#
        ));
        assert_eq!(c.ipv6_subnet_len, 122);
        let e = err(&format!(
            r#"{{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/120", {VX}}}"#
        ));
        assert!(
            e.starts_with(
                "EnableIPv4 false: IPv6-only networks are not possible: flannel's etcd layout"
            ),
            "{e}"
        );
        let e = err(&format!(
            r#"{{"Network": "198.19.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/125", {VX}}}"#
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

    /// Every problem of a refused document, as shown.
    fn problems(s: &str) -> Vec<String> {
        let e = NetworkConfig::parse(s).unwrap_err();
        let shown: Vec<String> = e.problems().iter().map(|p| p.to_string()).collect();
        assert_eq!(e.to_string(), shown.join("\n"), "one problem per line");
        shown
    }

    /// Each problem starts with its field and value, in this order.
    fn assert_problems(s: &str, expected: &[&str]) {
        let got = problems(s);
        assert_eq!(got.len(), expected.len(), "{s}: {got:#?}");
        for (g, e) in got.iter().zip(expected) {
            assert!(
                g.starts_with(e),
                "{s}: {g:?} should start with {e:?}; all: {got:#?}"
            );
        }
    }

    #[test]
    fn the_issue_example_reports_subnet_len_and_backend() {
        let e = NetworkConfig::parse(r#"{"Network":"198.19.0.0/16","SubnetLen":31}"#).unwrap_err();
        let fields: Vec<_> = e.problems().iter().map(|p| p.field()).collect();
        assert_eq!(fields, [Some("SubnetLen"), Some("Backend.Type")]);
        let shown = e.to_string();
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 2, "{shown}");
        assert_eq!(lines[0], "SubnetLen 31: must be at most 30");
        assert!(
            lines[1].starts_with("Backend.Type udp: Backend is absent"),
            "{shown}"
        );
    }

    #[test]
    fn every_independent_problem_is_reported_with_field_and_value() {
        assert_problems(
            r#"{"Network": "198.19.0.0/16", "SubnetLen": 31, "SubnetMin": "nope",
                "SubnetMax": "198.18.0.0", "EnableNFTables": "yes",
                "EnableIPv6": true, "IPv6Network": "fd00::/130",
                "Backend": {"Type": "vxlan", "VNI": 16777216, "Port": 70000, "MTU": 20,
                            "GBP": "yes", "DirectRouting": 1}}"#,
            &[
                "EnableNFTables yes: must be true or false",
                "SubnetLen 31: must be at most 30",
                "SubnetMin nope: not an IPv4 address",
                "SubnetMax 198.18.0.0: is not inside Network 198.19.0.0/16",
                "IPv6Network fd00::/130: not an IPv6 network",
                "Backend.VNI 16777216: must be at most 16777215",
                "Backend.Port 70000: must be at most 65535",
                "Backend.MTU 20: must be between 68 and 65535",
                "Backend.GBP yes: must be true or false",
                "Backend.DirectRouting 1: must be true or false",
            ],
        );
        // Wrong JSON kinds, each under its own name.
        assert_problems(
            r#"{"Network": 7, "SubnetLen": -1, "SubnetMin": [1], "EnableIPv6": "no",
                "Backend": {"Type": "vxlan", "VNI": "1", "Learning": null, "Port": 1.5}}"#,
            &[
                "EnableIPv6 no: must be true or false",
                "Network 7: must be a string",
                "SubnetLen -1: must be a whole number",
                "SubnetMin [1]: must be a string",
                "Backend.VNI 1: must be a whole number",
                "Backend.Port 1.5: must be a whole number",
            ],
        );
        // Both families at once.
        assert_problems(
            r#"{"Network": "198.19.0.0/16", "SubnetLen": 17, "EnableIPv6": true,
                "IPv6Network": "fd00::/56", "IPv6SubnetMin": "fd00::1", "IPv6SubnetLen": 127,
                "Backend": []}"#,
            &[
                "SubnetLen 17: must be at least 18 so that Network 198.19.0.0/16 holds",
                "IPv6SubnetLen 127: must be at most 126",
                "Backend []: must be a JSON object",
            ],
        );
        assert_problems(
            r#"{"EnableIPv4": false, "EnableIPv6": true, "IPv6SubnetMin": "x",
                "Backend": {"Type": 4}}"#,
            &[
                "EnableIPv4 false: IPv6-only networks are not possible",
                "IPv6Network is missing",
                "IPv6SubnetMin x: not an IPv6 address",
                "Backend.Type 4: must be a string",
            ],
        );
    }

    #[test]
    fn checks_on_a_broken_value_are_skipped() {
        // A broken Network: nothing is measured against it.
        assert_problems(
            r#"{"Network": "198.19.0.0/33", "SubnetLen": 17, "SubnetMin": "198.19.10.5",
                "SubnetMax": "10.0.0.0", "Backend": {"Type": "vxlan"}}"#,
            &["Network 198.19.0.0/33: not an IPv4 network"],
        );
        // A broken SubnetLen: no boundary check, but the network check still runs.
        assert_problems(
            r#"{"Network": "198.19.0.0/16", "SubnetLen": 31, "SubnetMin": "198.19.10.5",
                "SubnetMax": "198.20.0.0", "Backend": {"Type": "vxlan"}}"#,
            &[
                "SubnetLen 31: must be at most 30",
                "SubnetMax 198.20.0.0: is not inside",
            ],
        );
        // Order is compared only between two good bounds.
        assert_problems(
            r#"{"Network": "198.19.0.0/16", "SubnetMin": "198.19.30.0",
                "SubnetMax": "198.19.20.1", "Backend": {"Type": "vxlan"}}"#,
            &["SubnetMax 198.19.20.1: is not on a /24 subnet boundary"],
        );
        // A network too small for any subnet: no bounds follow from it.
        assert_problems(
            r#"{"Network": "198.19.0.0/29", "SubnetMin": "198.19.0.3", "Backend": {"Type": "vxlan"}}"#,
            &["Network 198.19.0.0/29: is too small"],
        );
        // A broken Enable flag: an absent network is not a second problem, a bad one is.
        assert_problems(
            r#"{"EnableIPv4": "yes", "Backend": {"Type": "host-gw"}}"#,
            &["EnableIPv4 yes: must be true or false"],
        );
        assert_problems(
            r#"{"EnableIPv4": "yes", "Network": "x", "Backend": {"Type": "host-gw"}}"#,
            &["EnableIPv4 yes: must be true or false", "Network x:"],
        );
        // No settings are read for a backend weft does not have.
        assert_problems(
            r#"{"Network": "198.19.0.0/16", "Backend": {"Type": "ipsec", "VNI": "x"}}"#,
            &["Backend.Type ipsec: unsupported backend"],
        );
        // Neither family: nothing else about the networks to say, but the backend is read.
        assert_problems(
            r#"{"EnableIPv4": false, "Backend": {"Type": "vxlan", "MTU": 1}}"#,
            &["EnableIPv4 false:", "Backend.MTU 1:"],
        );
    }

    #[test]
    fn a_document_that_is_not_an_object_is_one_problem() {
        assert_eq!(problems("{").len(), 1);
        assert_eq!(problems("[1, 2]").len(), 1);
        assert_eq!(problems("null").len(), 1);
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
