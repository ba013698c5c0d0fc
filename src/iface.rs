//! Choosing the external interface and the public IP, as flanneld does: `--iface` (a name or
//! an address, first match wins), then `--iface-regex`, then `--iface-can-reach`, then the
//! interface holding the default route. Pure over the kernel's links, addresses and routes.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};

use crate::netlink::{Address, Family, Link, Netlink, NetlinkError, Route, RT_TABLE_MAIN};

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

    /// Use the interface the kernel would route this address through. Used when neither
    /// --iface nor --iface-regex is given. Default: none.
    #[arg(
        long = "iface-can-reach",
        value_name = "IFACE_CAN_REACH",
        env = "WEFTD_IFACE_CAN_REACH"
    )]
    pub can_reach: Option<Ipv4Addr>,

    /// The address other hosts reach this one at. Default: the external interface's address.
    #[arg(long = "public-ip", env = "WEFTD_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,
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
    Unreachable(Ipv4Addr),
    #[error("no default route, so no interface to use: pass --iface, --iface-regex or --iface-can-reach")]
    NoDefaultRoute,
    #[error("--public-ip {0} is not usable: {1}")]
    BadPublicIp(Ipv4Addr, &'static str),
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

fn build(
    link: &Link,
    addrs: &[Address],
    prefer: Option<Ipv4Addr>,
    sel: &IfaceSelect,
) -> Result<ExtIface, IfaceError> {
    let networks = v4_addrs(addrs, link.index);
    let iface_addr = match prefer {
        Some(p) => p,
        None => networks
            .first()
            .map(|n| n.addr())
            .ok_or_else(|| IfaceError::NoAddress(link.name.clone()))?,
    };
    let public_ip = sel.public_ip.unwrap_or(iface_addr);
    if public_ip.is_unspecified() || public_ip.is_loopback() {
        return Err(IfaceError::BadPublicIp(
            public_ip,
            "it is unspecified or loopback",
        ));
    }
    if public_ip.is_multicast() || public_ip.is_broadcast() {
        return Err(IfaceError::BadPublicIp(
            public_ip,
            "it is multicast or broadcast",
        ));
    }
    Ok(ExtIface {
        index: link.index,
        name: link.name.clone(),
        mtu: link.mtu,
        iface_addr,
        public_ip,
        addresses: networks.iter().map(|n| n.addr()).collect(),
        networks: networks.iter().map(|n| n.trunc()).collect(),
    })
}

/// Longest-prefix match over the main table's IPv4 routes.
fn route_to(routes: &[Route], dst: Ipv4Addr) -> Option<&Route> {
    routes
        .iter()
        .filter(|r| r.table == RT_TABLE_MAIN)
        .filter(|r| matches!(r.dst, IpNet::V4(n) if n.contains(&dst)))
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
        nl.routes(Family::V4)?
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
            let by_addr: Option<Ipv4Addr> = want.parse().ok();
            let found = match by_addr {
                Some(ip) => addrs
                    .iter()
                    .find(|a| a.addr.addr() == IpAddr::V4(ip))
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
                for net in v4_addrs(addrs, link.index) {
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
}
