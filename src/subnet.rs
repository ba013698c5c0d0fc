//! Subnet arithmetic and lease-key names. A lease key's last path element names its subnet the
//! way flannel does (`10.5.52.0-24`, dual stack `10.5.52.0-24&fd00::-64`), so weft and flannel
//! hosts find each other's leases.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// An address family: the parameter that lets IPv4 and IPv6 go through the same code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Bits in an address.
    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// An address as a number, for arithmetic on either family (IPv4 in the low 32 bits).
    pub fn number(ip: IpAddr) -> u128 {
        match ip {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        }
    }

    /// The address of this family with number `n` (IPv4 keeps the low 32 bits).
    pub fn addr(self, n: u128) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(n as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(n)),
        }
    }

    /// A network in CIDR form of this family, or None.
    pub fn parse_net(self, s: &str) -> Option<IpNet> {
        match self {
            Family::V4 => s.parse::<Ipv4Net>().ok().map(IpNet::V4),
            Family::V6 => s.parse::<Ipv6Net>().ok().map(IpNet::V6),
        }
    }

    /// An address of this family, or None.
    pub fn parse_addr(self, s: &str) -> Option<IpAddr> {
        match self {
            Family::V4 => s.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
            Family::V6 => s.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        }
    }
}

/// Whether an IPv6 address is link-local (fe80::/10): the kernel's own on every link, and no
/// address to tunnel from or to.
pub fn is_link_local6(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

impl Family {
    /// Both families, IPv4 first (the order flannel writes them in).
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];
}

/// One value per family: what the datapath keeps for the IPv4 and the IPv6 overlay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerFamily<T> {
    pub v4: T,
    pub v6: T,
}

impl<T> std::ops::Index<Family> for PerFamily<T> {
    type Output = T;
    fn index(&self, f: Family) -> &T {
        match f {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }
}

impl<T> std::ops::IndexMut<Family> for PerFamily<T> {
    fn index_mut(&mut self, f: Family) -> &mut T {
        match f {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Whether `s` is one of the `len`-long subnets of `network`: inside it, that long and on a
/// subnet boundary. The same rule for either family.
pub fn is_subnet_of(network: IpNet, len: u8, s: IpNet) -> bool {
    s.prefix_len() == len && s.trunc() == s && network.contains(&s)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    #[error("lease key {key:?}: {why}")]
    BadKey { key: String, why: String },
    #[error("{value:?} is not a subnet (expected e.g. 10.5.52.0/24 or 10.5.52.0-24)")]
    BadSubnet { value: String },
    #[error("{value:?} is neither a subnet nor an IPv4 address")]
    BadTarget { value: String },
}

/// The key name of a lease: `<ip>-<len>`, plus `&<ip6>-<len6>` for dual stack.
pub fn lease_key_name(sn: Ipv4Net, sn6: Option<Ipv6Net>) -> String {
    let mut s = format!("{}-{}", sn.network(), sn.prefix_len());
    if let Some(sn6) = sn6 {
        s.push_str(&format!("&{}-{}", sn6.network(), sn6.prefix_len()));
    }
    s
}

/// Reads a key name back. Subnets with host bits set are refused: flannel never writes them
/// and accepting one would let two keys name the same subnet.
pub fn parse_lease_key_name(s: &str) -> Result<(Ipv4Net, Option<Ipv6Net>), SubnetError> {
    let bad = |why: &str| SubnetError::BadKey {
        key: s.to_string(),
        why: why.to_string(),
    };
    let (v4, v6) = match s.split_once('&') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let (ip, len) = v4
        .split_once('-')
        .ok_or_else(|| bad("expected <ip>-<prefix length>"))?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad("not an IPv4 address"))?;
    let len: u8 = len.parse().map_err(|_| bad("bad prefix length"))?;
    let sn = Ipv4Net::new(ip, len).map_err(|_| bad("prefix length over 32"))?;
    if sn.trunc() != sn {
        return Err(bad("address has host bits set"));
    }
    let sn6 = match v6 {
        None => None,
        Some(v6) => {
            let (ip, len) = v6
                .rsplit_once('-')
                .ok_or_else(|| bad("expected <ipv6>-<prefix length> after '&'"))?;
            let ip: Ipv6Addr = ip.parse().map_err(|_| bad("not an IPv6 address"))?;
            let len: u8 = len.parse().map_err(|_| bad("bad IPv6 prefix length"))?;
            let sn6 = Ipv6Net::new(ip, len).map_err(|_| bad("IPv6 prefix length over 128"))?;
            if sn6.trunc() != sn6 {
                return Err(bad("IPv6 address has host bits set"));
            }
            Some(sn6)
        }
    };
    Ok((sn, sn6))
}

/// Parses a subnet as an operator types it: CIDR (`10.5.52.0/24`) or key form (`10.5.52.0-24`).
pub fn parse_subnet(s: &str) -> Result<Ipv4Net, SubnetError> {
    let bad = || SubnetError::BadSubnet {
        value: s.to_string(),
    };
    let net: Ipv4Net = match s.parse() {
        Ok(n) => n,
        Err(_) => parse_lease_key_name(s)
            .ok()
            .filter(|(_, v6)| v6.is_none())
            .map(|(n, _)| n)
            .ok_or_else(bad)?,
    };
    if net.trunc() != net {
        return Err(bad());
    }
    Ok(net)
}

/// What `weftctl leases show` was asked for: a subnet (CIDR or key form) or an address, which
/// may lie inside a subnet or be a host's PublicIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseTarget {
    Subnet(Ipv4Net),
    /// A lease's IPv6 subnet.
    Subnet6(Ipv6Net),
    Address(IpAddr),
}

/// Parses an operator's `leases show` argument; the error names the value.
pub fn parse_lease_target(s: &str) -> Result<LeaseTarget, SubnetError> {
    if let Ok(n) = s.parse::<Ipv6Net>() {
        if n.trunc() != n {
            return Err(SubnetError::BadSubnet {
                value: s.to_string(),
            });
        }
        return Ok(LeaseTarget::Subnet6(n));
    }
    if s.contains('/') || s.contains('-') {
        return parse_subnet(s).map(LeaseTarget::Subnet);
    }
    s.parse()
        .map(LeaseTarget::Address)
        .map_err(|_| SubnetError::BadTarget {
            value: s.to_string(),
        })
}

/// The subnets of length `len` from `min` to `max` (both subnet addresses), in order.
pub fn subnets_between(min: Ipv4Addr, max: Ipv4Addr, len: u8) -> impl Iterator<Item = Ipv4Net> {
    subnets_from_to(min.into(), max.into(), len).filter_map(|n| match n {
        IpNet::V4(n) => Some(n),
        IpNet::V6(_) => None,
    })
}

/// The same for either family: `min` and `max` are subnet addresses of one family.
pub fn subnets_from_to(min: IpAddr, max: IpAddr, len: u8) -> impl Iterator<Item = IpNet> {
    let family = Family::of(min);
    let len = len.min(family.bits());
    // None for a zero-length prefix, whose one subnet is the whole space.
    let step = 1u128.checked_shl(u32::from(family.bits() - len));
    let (lo, hi) = (Family::number(min), Family::number(max));
    std::iter::successors(Some(lo), move |a| step.and_then(|s| a.checked_add(s)))
        .take_while(move |a| *a <= hi)
        .filter_map(move |a| IpNet::new(family.addr(a), len).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_arithmetic_is_one_code_for_both() {
        for (net, first) in [
            ("198.19.0.0/16", "198.19.0.0"),
            ("2001:db8::/32", "2001:db8::"),
        ] {
            let f = Family::of(first.parse().unwrap());
            let n = f.parse_net(net).unwrap();
            assert_eq!(f.addr(Family::number(n.network())), n.network());
            assert_eq!(f.parse_addr(first), Some(n.network()));
            let sub = f
                .parse_net(&format!("{first}/{}", n.prefix_len() + 8))
                .unwrap();
            assert!(is_subnet_of(n, n.prefix_len() + 8, sub));
            assert!(!is_subnet_of(n, n.prefix_len() + 4, sub));
        }
        assert_eq!(Family::V4.parse_net("2001:db8::/32"), None);
        assert_eq!(Family::V6.parse_addr("198.19.0.1"), None);
        assert_eq!(Family::V4.bits() + Family::V6.bits(), 160);
        assert_eq!(Family::V6.to_string(), "IPv6");
    }

    #[test]
    fn key_names_round_trip() {
        let sn: Ipv4Net = "10.5.52.0/24".parse().unwrap();
        let sn6: Ipv6Net = "fd00::/64".parse().unwrap();
        assert_eq!(lease_key_name(sn, None), "10.5.52.0-24");
        assert_eq!(lease_key_name(sn, Some(sn6)), "10.5.52.0-24&fd00::-64");
        assert_eq!(parse_lease_key_name("10.5.52.0-24").unwrap(), (sn, None));
        assert_eq!(
            parse_lease_key_name("10.5.52.0-24&fd00::-64").unwrap(),
            (sn, Some(sn6))
        );
    }

    #[test]
    fn bad_key_names_are_refused() {
        for k in [
            "10.5.52.0",
            "10.5.52.0-33",
            "10.5.52.1-24",
            "x-24",
            "10.5.52.0-24&fd00::",
            "10.5.52.0-24&fd00::1-64",
            "",
        ] {
            let e = parse_lease_key_name(k).unwrap_err().to_string();
            assert!(e.contains(&format!("{k:?}")), "{e}");
        }
    }

    #[test]
    fn operator_subnets() {
        let sn: Ipv4Net = "198.19.3.0/24".parse().unwrap();
        assert_eq!(parse_subnet("198.19.3.0/24").unwrap(), sn);
        assert_eq!(parse_subnet("198.19.3.0-24").unwrap(), sn);
        assert!(parse_subnet("198.19.3.1/24").is_err());
        assert!(parse_subnet("198.19.3.1").is_err());
    }

    #[test]
    fn ranges() {
        let v: Vec<_> = subnets_between(
            "198.19.1.0".parse().unwrap(),
            "198.19.3.0".parse().unwrap(),
            24,
        )
        .map(|n| n.to_string())
        .collect();
        assert_eq!(v, ["198.19.1.0/24", "198.19.2.0/24", "198.19.3.0/24"]);
        let last = subnets_between(
            "255.255.255.0".parse().unwrap(),
            "255.255.255.252".parse().unwrap(),
            30,
        )
        .count();
        assert_eq!(last, 64);
    }

    #[test]
    fn ranges_of_either_family() {
        let v6: Vec<_> = subnets_from_to(
            "2001:db8:0:1::".parse().unwrap(),
            "2001:db8:0:3::".parse().unwrap(),
            64,
        )
        .map(|n| n.to_string())
        .collect();
        assert_eq!(
            v6,
            [
                "2001:db8:0:1::/64",
                "2001:db8:0:2::/64",
                "2001:db8:0:3::/64"
            ]
        );
        let top = subnets_from_to(
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0".parse().unwrap(),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0".parse().unwrap(),
            124,
        );
        assert_eq!(top.count(), 1);
    }

    /// Property tests: `PROPTEST_CASES` sets how many cases each one runs (256 by default).
    mod props {
        use super::*;
        use proptest::prelude::*;

        fn v4net() -> impl Strategy<Value = Ipv4Net> {
            (any::<u32>(), 0u8..=32)
                .prop_map(|(a, len)| Ipv4Net::new(Ipv4Addr::from(a), len).unwrap().trunc())
        }

        fn v6net() -> impl Strategy<Value = Ipv6Net> {
            (any::<u128>(), 0u8..=128)
                .prop_map(|(a, len)| Ipv6Net::new(Ipv6Addr::from(a), len).unwrap().trunc())
        }

        /// Strings close to a key, so the parser's later branches are reached too.
        fn keyish() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                "[0-9a-f.:&/-]{0,48}",
                (v4net(), proptest::option::of(v6net()), "[0-9a-z:&/.-]{0,6}")
                    .prop_map(|(a, b, junk)| format!("{}{junk}", lease_key_name(a, b))),
            ]
        }

        proptest! {
            #[test]
            fn key_names_never_panic(s in keyish()) {
                if let Err(e) = parse_lease_key_name(&s) {
                    prop_assert!(e.to_string().contains(&format!("{s:?}")), "{}", e);
                }
            }

            #[test]
            fn key_names_round_trip(sn in v4net(), sn6 in proptest::option::of(v6net())) {
                let name = lease_key_name(sn, sn6);
                prop_assert_eq!(parse_lease_key_name(&name).unwrap(), (sn, sn6));
            }

            #[test]
            fn operator_arguments_never_panic(s in keyish()) {
                if let Err(e) = parse_subnet(&s) {
                    prop_assert!(e.to_string().contains(&format!("{s:?}")), "{}", e);
                }
                if let Err(e) = parse_lease_target(&s) {
                    prop_assert!(e.to_string().contains(&format!("{s:?}")), "{}", e);
                }
            }

            #[test]
            fn operator_arguments_round_trip(sn in v4net(), a in any::<u32>()) {
                prop_assert_eq!(parse_subnet(&sn.to_string()).unwrap(), sn);
                prop_assert_eq!(parse_subnet(&lease_key_name(sn, None)).unwrap(), sn);
                prop_assert_eq!(
                    parse_lease_target(&sn.to_string()).unwrap(),
                    LeaseTarget::Subnet(sn)
                );
                let ip = Ipv4Addr::from(a);
                prop_assert_eq!(
                    parse_lease_target(&ip.to_string()).unwrap(),
                    LeaseTarget::Address(ip.into())
                );
            }

            #[test]
            fn ipv6_arguments_round_trip(a in any::<u128>(), len in 0u8..=128) {
                let ip = Ipv6Addr::from(a);
                prop_assert_eq!(
                    parse_lease_target(&ip.to_string()).unwrap(),
                    LeaseTarget::Address(ip.into())
                );
                let net = Ipv6Net::new(ip, len).unwrap().trunc();
                prop_assert_eq!(
                    parse_lease_target(&net.to_string()).unwrap(),
                    LeaseTarget::Subnet6(net)
                );
            }
        }
    }
}
