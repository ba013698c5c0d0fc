//! Choosing the external interface and the public IP, as flanneld does: `--iface` (a name or
//! an address, first match wins), then `--iface-regex`, then `--iface-can-reach`, then the
//! interface holding the default route. IPv6 comes from the same interface (`--iface`,
//! `--iface-regex` and `--iface-can-reach` take IPv6 addresses too, where flannel's take IPv4
//! only). Pure over the kernel's links, addresses and routes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::netlink::{Address, Family as Dump, Link, Netlink, NetlinkError, Route, RT_TABLE_MAIN};
use crate::subnet::Family;

/// How to pick the external interface and public IP: weftd's flags, which `weftctl check`
/// shares (with the same WEFTD_* variables) so one environment file serves both.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct IfaceSelect {
    /// External interface, by name or by address; repeat to give fallbacks (the first that
    /// exists wins). Default: the interface holding the default route.
    #[arg(
        long = "iface",
        value_name = "IFACE",
        env = "WEFTD_IFACE",
        value_delimiter = ','
    )]
    pub ifaces: Vec<String>,

    /// Regular expression matched against interface names and addresses; repeat to give
    /// fallbacks. Used when --iface is not given. Default: none.
    #[arg(
        long = "iface-regex",
        value_name = "IFACE_REGEX",
        env = "WEFTD_IFACE_REGEX",
        value_delimiter = ','
    )]
    pub regexes: Vec<String>,

    /// Use the interface the kernel would route this address (IPv4 or IPv6) through. Used
    /// when neither --iface nor --iface-regex is given. Default: none.
    #[arg(
        long = "iface-can-reach",
        value_name = "IFACE_CAN_REACH",
        env = "WEFTD_IFACE_CAN_REACH"
    )]
    pub can_reach: Option<IpAddr>,

    /// The address other hosts reach this one at. Default: the external interface's address.
    #[arg(long = "public-ip", env = "WEFTD_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,

    /// The IPv6 address other hosts reach this one at (dual stack). Default: the external
    /// interface's first global IPv6 address.
    #[arg(long = "public-ipv6", env = "WEFTD_PUBLIC_IPV6")]
    pub public_ipv6: Option<Ipv6Addr>,
}

/// The chosen external interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtIface {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// The interface's own IPv4 address used as the VXLAN source.
    pub iface_addr: Ipv4Addr,
    /// The address other hosts reach this one at (`--public-ip`, else `iface_addr`).
    pub public_ip: Ipv4Addr,
    /// The interface's IPv4 addresses.
    pub addresses: Vec<Ipv4Addr>,
    /// The interface's IPv4 networks (for DirectRouting and host-gw reachability).
    pub networks: Vec<Ipv4Net>,
    /// The same facts for IPv6, when the interface has a global IPv6 address (or
    /// `--public-ipv6` names one).
    pub v6: Option<ExtV6>,
}

/// The external interface's IPv6 facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtV6 {
    /// The interface's own IPv6 address used as the VXLAN source.
    pub iface_addr: Ipv6Addr,
    /// `--public-ipv6`, else `iface_addr`.
    pub public_ip: Ipv6Addr,
    pub addresses: Vec<Ipv6Addr>,
    pub networks: Vec<Ipv6Net>,
}

impl ExtIface {
    /// The source address for tunnels in `family`.
    pub fn local(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => Some(self.iface_addr.into()),
            Family::V6 => self.v6.as_ref().map(|v| v.iface_addr.into()),
        }
    }

    /// The address peers reach this host at in `family`.
    pub fn public(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => Some(self.public_ip.into()),
            Family::V6 => self.v6.as_ref().map(|v| v.public_ip.into()),
        }
    }

    /// The interface's addresses in `family`.
    pub fn addresses_of(&self, family: Family) -> Vec<IpAddr> {
        match family {
            Family::V4 => self.addresses.iter().map(|a| (*a).into()).collect(),
            Family::V6 => self
                .v6
                .iter()
                .flat_map(|v| &v.addresses)
                .map(|a| (*a).into())
                .collect(),
        }
    }

    /// The interface's networks in `family`.
    pub fn networks_of(&self, family: Family) -> Vec<IpNet> {
        match family {
            Family::V4 => self.networks.iter().map(|n| (*n).into()).collect(),
            Family::V6 => self
                .v6
                .iter()
                .flat_map(|v| &v.networks)
                .map(|n| (*n).into())
                .collect(),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum IfaceError {
    #[error("--iface {0}: no interface has that name or holds that address")]
    NoSuchIface(String),
    #[error("--iface {0}: the interface has no usable IPv4 address")]
    NoAddress(String),
    #[error("--iface-regex {0:?} is not a valid regular expression: {1}")]
    BadRegex(String, String),
    #[error("--iface-regex {0}: no interface name or address matches")]
    NoRegexMatch(String),
    #[error("--iface-can-reach {0}: no route reaches that address")]
    Unreachable(IpAddr),
    #[error("no default route, so no interface to use: pass --iface, --iface-regex or --iface-can-reach")]
    NoDefaultRoute,
    #[error("--public-ip/--public-ipv6 {0} is not usable: {1}")]
    BadPublicIp(IpAddr, &'static str),
}

fn v4_addrs(addrs: &[Address], index: u32) -> Vec<Ipv4Net> {
    addrs
        .iter()
        .filter(|a| a.index == index)
        .filter_map(|a| match a.addr {
            IpNet::V4(n) if !n.addr().is_loopback() && !n.addr().is_link_local() => Some(n),
            _ => None,
        })
        .collect()
}

/// The interface's global IPv6 addresses: link-local ones cannot carry a tunnel to another
/// network.
fn v6_addrs(addrs: &[Address], index: u32) -> Vec<Ipv6Net> {
    addrs
        .iter()
        .filter(|a| a.index == index)
        .filter_map(|a| match a.addr {
            IpNet::V6(n) if !n.addr().is_loopback() && !crate::subnet::is_link_local6(n.addr()) => {
                Some(n)
            }
            _ => None,
        })
        .collect()
}

/// Why an address cannot be what peers send to.
fn unusable(ip: IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() || ip.is_loopback() {
        Some("it is unspecified or loopback")
    } else if ip.is_multicast() || matches!(ip, IpAddr::V4(a) if a.is_broadcast()) {
        Some("it is multicast or broadcast")
    } else {
        None
    }
}

/// The chosen link's facts. `prefer` is the address `--iface` or `--iface-regex` named, used
/// as the tunnel source of its family.
fn build(
    link: &Link,
    addrs: &[Address],
    prefer: Option<IpAddr>,
    sel: &IfaceSelect,
) -> Result<ExtIface, IfaceError> {
    let networks = v4_addrs(addrs, link.index);
    let iface_addr = match prefer {
        Some(IpAddr::V4(p)) => p,
        _ => networks
            .first()
            .map(|n| n.addr())
            .ok_or_else(|| IfaceError::NoAddress(link.name.clone()))?,
    };
    let public_ip = sel.public_ip.unwrap_or(iface_addr);
    if let Some(why) = unusable(public_ip.into()) {
        return Err(IfaceError::BadPublicIp(public_ip.into(), why));
    }
    let networks6 = v6_addrs(addrs, link.index);
    let iface_addr6 = match prefer {
        Some(IpAddr::V6(p)) => Some(p),
        _ => networks6.first().map(|n| n.addr()),
    };
    let v6 = match (iface_addr6, sel.public_ipv6) {
        (None, None) => None,
        (local, public) => {
            let public_ip = public.or(local).expect("one of the two is set");
            if let Some(why) = unusable(public_ip.into()) {
                return Err(IfaceError::BadPublicIp(public_ip.into(), why));
            }
            Some(ExtV6 {
                // Without an IPv6 address of its own the interface cannot source a tunnel;
                // the public one is all there is.
                iface_addr: local.unwrap_or(public_ip),
                public_ip,
                addresses: networks6.iter().map(|n| n.addr()).collect(),
                networks: networks6.iter().map(|n| n.trunc()).collect(),
            })
        }
    };
    Ok(ExtIface {
        index: link.index,
        name: link.name.clone(),
        mtu: link.mtu,
        iface_addr,
        public_ip,
        addresses: networks.iter().map(|n| n.addr()).collect(),
        networks: networks.iter().map(|n| n.trunc()).collect(),
        v6,
    })
}

/// Longest-prefix match over the main table's routes.
fn route_to(routes: &[Route], dst: IpAddr) -> Option<&Route> {
    routes
        .iter()
        .filter(|r| r.table == RT_TABLE_MAIN)
        .filter(|r| r.dst.contains(&dst))
        .max_by_key(|r| (r.dst.prefix_len(), std::cmp::Reverse(r.metric.unwrap_or(0))))
}

/// Why no external interface could be chosen from the kernel.
#[derive(Debug, thiserror::Error)]
pub enum ChooseError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Iface(#[from] IfaceError),
}

/// Reads the links, addresses and IPv4 routes through `nl` and chooses: what weftd does at
/// start-up and `weftctl check` does to find the same interface.
pub fn choose_in(nl: &mut Netlink, sel: &IfaceSelect) -> Result<ExtIface, ChooseError> {
    let links = nl.links()?;
    let addrs = nl.addresses(None)?;
    // The datapath chooses again on every full pass: skip the route dump (one route per peer)
    // when no route decides.
    let by_route = sel.ifaces.is_empty() && sel.regexes.is_empty();
    let routes = if by_route {
        nl.routes(match sel.can_reach {
            Some(IpAddr::V6(_)) => Dump::V6,
            _ => Dump::V4,
        })?
    } else {
        Vec::new()
    };
    Ok(choose(sel, &links, &addrs, &routes)?)
}

pub fn choose(
    sel: &IfaceSelect,
    links: &[Link],
    addrs: &[Address],
    routes: &[Route],
) -> Result<ExtIface, IfaceError> {
    if !sel.ifaces.is_empty() {
        let mut first_err = None;
        for want in &sel.ifaces {
            let by_addr: Option<IpAddr> = want.parse().ok();
            let found = match by_addr {
                Some(ip) => addrs
                    .iter()
                    .find(|a| a.addr.addr() == ip)
                    .and_then(|a| links.iter().find(|l| l.index == a.index)),
                None => links.iter().find(|l| &l.name == want),
            };
            match found {
                Some(link) => match build(link, addrs, by_addr, sel) {
                    Ok(e) => return Ok(e),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                },
                None => {
                    first_err.get_or_insert(IfaceError::NoSuchIface(want.clone()));
                }
            }
        }
        return Err(first_err.unwrap_or(IfaceError::NoDefaultRoute));
    }
    if !sel.regexes.is_empty() {
        for pattern in &sel.regexes {
            let re = regex_lite::Regex::new(pattern)
                .map_err(|e| IfaceError::BadRegex(pattern.clone(), e.to_string()))?;
            for link in links {
                if re.is_match(&link.name) {
                    if let Ok(e) = build(link, addrs, None, sel) {
                        return Ok(e);
                    }
                }
                let own = v4_addrs(addrs, link.index).into_iter().map(IpNet::V4);
                let own = own.chain(v6_addrs(addrs, link.index).into_iter().map(IpNet::V6));
                for net in own {
                    if re.is_match(&net.addr().to_string()) {
                        return build(link, addrs, Some(net.addr()), sel);
                    }
                }
            }
        }
        return Err(IfaceError::NoRegexMatch(sel.regexes.join(", ")));
    }
    let (route, err) = match sel.can_reach {
        Some(dst) => (route_to(routes, dst), IfaceError::Unreachable(dst)),
        None => (
            routes
                .iter()
                .filter(|r| r.table == RT_TABLE_MAIN && r.dst == IpNet::V4(Ipv4Net::default()))
                .min_by_key(|r| r.metric.unwrap_or(0)),
            IfaceError::NoDefaultRoute,
        ),
    };
    let route = route.ok_or(err.clone())?;
    let link = route
        .oif
        .and_then(|i| links.iter().find(|l| l.index == i))
        .ok_or(err)?;
    build(link, addrs, None, sel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            kind: None,
            mac: None,
            mtu: 1500,
            up: true,
            master: None,
            vxlan: None,
            alias: None,
        }
    }
    fn addr(index: u32, a: &str) -> Address {
        Address {
            index,
            addr: a.parse().unwrap(),
        }
    }

    fn world() -> (Vec<Link>, Vec<Address>, Vec<Route>) {
        let links = vec![link(1, "lo"), link(2, "eth0"), link(3, "eth1")];
        let addrs = vec![
            addr(1, "127.0.0.1/8"),
            addr(2, "198.18.0.5/24"),
            addr(3, "198.18.9.5/24"),
        ];
        let mut default = Route::new("0.0.0.0/0".parse().unwrap());
        default.gateway = Some("198.18.0.1".parse().unwrap());
        default.oif = Some(2);
        let mut far = Route::new("198.18.64.0/18".parse().unwrap());
        far.oif = Some(3);
        (links, addrs, vec![default, far])
    }

    #[test]
    fn default_route_interface_is_the_default() {
        let (l, a, r) = world();
        let e = choose(&IfaceSelect::default(), &l, &a, &r).unwrap();
        assert_eq!(
            (e.name.as_str(), e.public_ip),
            ("eth0", "198.18.0.5".parse().unwrap())
        );
        assert_eq!(
            e.networks,
            vec!["198.18.0.0/24".parse::<Ipv4Net>().unwrap()]
        );
    }

    #[test]
    fn iface_by_name_address_regex_and_reach() {
        let (l, a, r) = world();
        let sel = |f: fn(&mut IfaceSelect)| {
            let mut s = IfaceSelect::default();
            f(&mut s);
            choose(&s, &l, &a, &r)
        };
        assert_eq!(
            sel(|s| s.ifaces = vec!["nope".into(), "eth1".into()])
                .unwrap()
                .index,
            3
        );
        assert_eq!(
            sel(|s| s.ifaces = vec!["198.18.9.5".into()]).unwrap().index,
            3
        );
        assert_eq!(sel(|s| s.regexes = vec!["^eth1$".into()]).unwrap().index, 3);
        assert_eq!(
            sel(|s| s.can_reach = Some("198.18.70.1".parse().unwrap()))
                .unwrap()
                .index,
            3
        );
        let e = sel(|s| s.public_ip = Some("198.18.200.1".parse().unwrap())).unwrap();
        assert_eq!(
            (e.iface_addr, e.public_ip),
            (
                "198.18.0.5".parse().unwrap(),
                "198.18.200.1".parse().unwrap()
            )
        );
        assert_eq!(
            sel(|s| s.ifaces = vec!["nope".into()]),
            Err(IfaceError::NoSuchIface("nope".into()))
        );
        assert_eq!(
            sel(|s| s.ifaces = vec!["lo".into()]),
            Err(IfaceError::NoAddress("lo".into()))
        );
        assert!(matches!(
            sel(|s| s.regexes = vec!["(".into()]),
            Err(IfaceError::BadRegex(..))
        ));
        let no_default = choose(&IfaceSelect::default(), &l, &a, &r[1..]);
        assert_eq!(no_default, Err(IfaceError::NoDefaultRoute));
    }

    #[test]
    fn ipv6_comes_from_the_chosen_interface_and_every_selector_takes_it() {
        let (l, mut a, mut r) = world();
        a.push(addr(2, "fe80::5/64"));
        a.push(addr(2, "2001:db8::5/64"));
        a.push(addr(3, "2001:db8:9::5/64"));
        a.push(addr(3, "2001:db8:9::6/64"));
        let mut far6 = Route::new("2001:db8:64::/48".parse().unwrap());
        far6.oif = Some(3);
        r.push(far6);
        let sel = |f: fn(&mut IfaceSelect)| {
            let mut s = IfaceSelect::default();
            f(&mut s);
            choose(&s, &l, &a, &r).unwrap()
        };
        // The default route's interface, its first global IPv6 address (not the link-local).
        let e = sel(|_| {});
        let v6 = e.v6.clone().unwrap();
        assert_eq!(
            v6.public_ip,
            "2001:db8::5".parse::<std::net::Ipv6Addr>().unwrap()
        );
        assert_eq!(
            v6.networks,
            vec!["2001:db8::/64".parse::<Ipv6Net>().unwrap()]
        );
        assert_eq!(e.public(Family::V6), Some("2001:db8::5".parse().unwrap()));
        // --iface by an IPv6 address, --iface-regex on one, --iface-can-reach an IPv6 one.
        let e = sel(|s| s.ifaces = vec!["2001:db8:9::6".into()]);
        assert_eq!(
            (e.index, e.v6.unwrap().iface_addr),
            (3, "2001:db8:9::6".parse().unwrap())
        );
        let e = sel(|s| s.regexes = vec!["^2001:db8:9::6$".into()]);
        assert_eq!(
            (e.index, e.v6.unwrap().iface_addr),
            (3, "2001:db8:9::6".parse().unwrap())
        );
        let e = sel(|s| s.can_reach = Some("2001:db8:64::1".parse().unwrap()));
        assert_eq!(e.index, 3);
        // --public-ipv6 is what peers are told; without any IPv6 there is none.
        let e = sel(|s| s.public_ipv6 = Some("2001:db8:ff::1".parse().unwrap()));
        let v6 = e.v6.unwrap();
        assert_eq!(
            (v6.iface_addr, v6.public_ip),
            (
                "2001:db8::5".parse().unwrap(),
                "2001:db8:ff::1".parse().unwrap()
            )
        );
        let (l, a, r) = world();
        assert_eq!(
            choose(&IfaceSelect::default(), &l, &a, &r).unwrap().v6,
            None
        );
    }
}
