//! The bridge the CNI plugin puts containers on (`cni0`), whose first addresses are the
//! containers' gateways. Its MAC is pinned: a bridge left to the kernel takes the lowest MAC
//! among its ports and changes it as containers come and go, and containers that cached the
//! old one lose their gateway until their neighbour entry goes stale. The plugin pins it and
//! names the pinned MAC in the bridge's alias, the mark by which weftd and `weftctl check` know
//! the bridge is weft's and see when its MAC moved.

use std::fmt;
use std::net::IpAddr;

use crate::netlink::{format_mac, parse_mac, Link, Mac, Netlink, NetlinkError};

/// The start of the alias of a bridge weft pinned; the pinned MAC follows.
pub const ALIAS_PREFIX: &str = "weft: containers' gateway, MAC pinned to ";

/// The MAC of a bridge made for a host whose first gateway is `gateway`: locally administered
/// and unicast (`0a:58`), then the IPv4 gateway (or an IPv6 gateway's last four bytes), so
/// a bridge made again for the same subnet gets the same MAC.
pub fn derived_mac(gateway: IpAddr) -> Mac {
    let tail = match gateway {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => {
            let o = a.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    [0x0a, 0x58, tail[0], tail[1], tail[2], tail[3]]
}

/// The alias that marks a bridge as weft's, with the MAC pinned on it.
pub fn alias(mac: &Mac) -> String {
    format!("{ALIAS_PREFIX}{}", format_mac(mac))
}

/// The MAC weft pinned on `link`, if it is a bridge weft marked.
pub fn pinned_mac(link: &Link) -> Option<Mac> {
    if link.kind.as_deref() != Some("bridge") {
        return None;
    }
    let mac = link.alias.as_deref()?.strip_prefix(ALIAS_PREFIX)?;
    parse_mac(mac).ok()
}

/// A bridge of weft's whose MAC is not the one pinned on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub index: u32,
    pub name: String,
    pub mac: Option<Mac>,
    pub pinned: Mac,
}

impl fmt::Display for Moved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let now = self
            .mac
            .map_or_else(|| "none".to_string(), |m| format_mac(&m));
        write!(
            f,
            "bridge {} has MAC {now}, not {} pinned by weft (its containers' gateway)",
            self.name,
            format_mac(&self.pinned)
        )
    }
}

/// The bridges weft marked, with the MAC pinned on each.
pub fn owned(links: &[Link]) -> impl Iterator<Item = (&Link, Mac)> {
    links.iter().filter_map(|l| Some((l, pinned_mac(l)?)))
}

/// weft's bridges whose MAC moved: what weftd mends and `weftctl check` reports.
pub fn moved(links: &[Link]) -> Vec<Moved> {
    owned(links)
        .filter(|(l, pinned)| l.mac != Some(*pinned))
        .map(|(l, pinned)| Moved {
            index: l.index,
            name: l.name.clone(),
            mac: l.mac,
            pinned,
        })
        .collect()
}

/// Puts a moved bridge's MAC back.
pub fn mend(nl: &mut Netlink, moved: &Moved) -> Result<(), NetlinkError> {
    nl.set_mac(moved.index, moved.pinned)
}

/// Makes `bridge` (just created, or found) a pinned bridge of weft's and returns its MAC. A
/// marked bridge whose MAC moved gets the pinned one back. An unmarked one (made by an older
/// weft, or by flannel's bridge plugin) keeps the MAC its containers cached, now pinned; a
/// bridge without ports takes the MAC derived from `gateway`.
pub fn pin(nl: &mut Netlink, bridge: &Link, gateway: IpAddr) -> Result<Mac, NetlinkError> {
    if let Some(pinned) = pinned_mac(bridge) {
        if bridge.mac != Some(pinned) {
            nl.set_mac(bridge.index, pinned)?;
        }
        return Ok(pinned);
    }
    let has_ports = nl.links()?.iter().any(|l| l.master == Some(bridge.index));
    let mac = match bridge.mac {
        Some(m) if has_ports => m,
        _ => derived_mac(gateway),
    };
    // Setting the MAC, even to the one it has, is what pins it.
    nl.set_mac(bridge.index, mac)?;
    nl.set_alias(bridge.index, &alias(&mac))?;
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge(mac: Mac, alias: Option<&str>) -> Link {
        Link {
            index: 4,
            name: "cni0".into(),
            kind: Some("bridge".into()),
            mac: Some(mac),
            mtu: 1450,
            up: true,
            master: None,
            vxlan: None,
            alias: alias.map(str::to_string),
        }
    }

    #[test]
    fn the_mac_comes_from_the_gateway_and_is_local_unicast() {
        let m = derived_mac("198.19.5.1".parse().unwrap());
        assert_eq!(format_mac(&m), "0a:58:c6:13:05:01");
        assert_eq!(m[0] & 0b11, 0b10, "locally administered, unicast");
        let m6 = derived_mac("2001:db8:100:31::1".parse().unwrap());
        assert_eq!(format_mac(&m6), "0a:58:00:00:00:01");
    }

    #[test]
    fn only_a_marked_bridge_is_weft_s_and_moved_when_its_mac_differs() {
        let pinned = derived_mac("198.19.5.1".parse().unwrap());
        let marked = bridge(pinned, Some(&alias(&pinned)));
        assert_eq!(pinned_mac(&marked), Some(pinned));
        assert!(moved(std::slice::from_ref(&marked)).is_empty());

        let shifted = bridge([0x02, 0, 0, 0, 0, 1], Some(&alias(&pinned)));
        let found = moved(std::slice::from_ref(&shifted));
        assert_eq!(
            found[0].to_string(),
            "bridge cni0 has MAC 02:00:00:00:00:01, not 0a:58:c6:13:05:01 pinned by weft \
             (its containers' gateway)"
        );

        for other in [
            bridge(pinned, None),
            bridge(pinned, Some("someone else's bridge")),
            bridge(pinned, Some(&format!("{ALIAS_PREFIX}not a mac"))),
            Link {
                kind: Some("veth".into()),
                ..marked.clone()
            },
        ] {
            assert_eq!(pinned_mac(&other), None, "{other:?}");
            assert!(moved(&[other]).is_empty());
        }
    }
}
