//! Subnet arithmetic and lease-key names. A lease key's last path element names its subnet the
//! way flannel does (`10.5.52.0-24`, dual stack `10.5.52.0-24&fd00::-64`), so weft and flannel
//! hosts find each other's leases.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

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
    Address(Ipv4Addr),
}

/// Parses an operator's `leases show` argument; the error names the value.
pub fn parse_lease_target(s: &str) -> Result<LeaseTarget, SubnetError> {
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
    let step = 1u64 << (32 - u32::from(len.min(32)));
    let (lo, hi) = (u64::from(u32::from(min)), u64::from(u32::from(max)));
    (0..)
        .map(move |i: u64| lo + i * step)
        .take_while(move |a| *a <= hi)
        .filter_map(move |a| Ipv4Net::new(Ipv4Addr::from(a as u32), len).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

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
                    LeaseTarget::Address(ip)
                );
            }
        }
    }
}
