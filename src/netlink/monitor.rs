//! Kernel change notifications for drift repair: a socket subscribed to the link, route,
//! neighbour and address groups, reduced to "what changed where". The reconciler re-reads the
//! state itself; a notification only tells it when and where to look.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use ipnet::IpNet;
use netlink_sys::Socket;

use super::socket::{align4, open_socket, recv_datagram, split};
use super::{run_in_netns, Change, Mac, NetlinkError};

/// Notifications can come in bursts (a device going away takes its routes and neighbours with
/// it), so the queue is made large; overflow is still reported, never hidden.
const MONITOR_RCVBUF: usize = 8 << 20;
const RTA_DST: u16 = 1;
const IFLA_ADDRESS: u16 = 1;
/// Sizes of the fixed headers before the attributes: struct rtmsg, struct ifinfomsg.
const RTMSG_LEN: usize = 12;
const IFINFOMSG_LEN: usize = 16;

/// A subscription to kernel changes in one network namespace.
pub struct Monitor {
    sock: Socket,
    buf: Vec<u8>,
}

impl Monitor {
    /// Subscribes to link, IPv4/IPv6 route, neighbour (including bridge FDB) and IPv4 address
    /// changes in the calling thread's network namespace.
    pub fn new() -> Result<Self, NetlinkError> {
        let sock = open_socket(netlink_sys::protocols::NETLINK_ROUTE, MONITOR_RCVBUF)?;
        for group in [
            libc::RTNLGRP_LINK,
            libc::RTNLGRP_IPV4_ROUTE,
            libc::RTNLGRP_IPV6_ROUTE,
            libc::RTNLGRP_NEIGH,
            libc::RTNLGRP_IPV4_IFADDR,
        ] {
            sock.add_membership(group)
                .map_err(|e| NetlinkError::socket(format!("join rtnetlink group {group}"), e))?;
        }
        Ok(Monitor {
            sock,
            buf: vec![0; 256 * 1024],
        })
    }

    /// The same, for the network namespace at `path`; the monitor works from any thread.
    pub fn in_netns(path: &Path) -> Result<Self, NetlinkError> {
        run_in_netns(path, Monitor::new)?
    }

    /// Waits for the next datagram and returns its changes (possibly none, e.g. for a message
    /// type weft does not follow). A dropped-notification overflow is `Change::Overflow`. In
    /// non-blocking mode an empty queue gives an empty vector.
    pub fn recv(&mut self) -> Result<Vec<Change>, NetlinkError> {
        match recv_datagram(&self.sock, &mut self.buf, 0) {
            Ok(Some(len)) => Ok(parse_changes(&self.buf[..len])),
            Ok(None) => Ok(Vec::new()),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(vec![Change::Overflow]),
            Err(e) => Err(NetlinkError::socket("receive kernel notifications", e)),
        }
    }

    /// Makes [`Monitor::recv`] return at once when nothing is queued (for use with a poller).
    pub fn set_nonblocking(&self, on: bool) -> Result<(), NetlinkError> {
        self.sock
            .set_non_blocking(on)
            .map_err(|e| NetlinkError::socket("set O_NONBLOCK on the monitor socket", e))
    }

    /// The socket, so an async runtime can wait for readability.
    pub fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// Reads only fixed header fields, RTA_DST and IFLA_ADDRESS, so no attribute the kernel adds in
/// the future can make a notification unreadable.
pub(crate) fn parse_changes(datagram: &[u8]) -> Vec<Change> {
    let mut out = Vec::new();
    for m in split(datagram) {
        let Ok(m) = m else { break };
        let p = m.payload;
        let u32_at = |off: usize| -> Option<u32> {
            p.get(off..off + 4)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        };
        let change = match m.ty {
            libc::RTM_NEWLINK | libc::RTM_DELLINK => u32_at(4).map(|index| Change::Link {
                index,
                deleted: m.ty == libc::RTM_DELLINK,
                mac: attribute(p, IFINFOMSG_LEN, IFLA_ADDRESS)
                    .and_then(|v| <Mac>::try_from(v).ok()),
            }),
            libc::RTM_NEWNEIGH | libc::RTM_DELNEIGH => u32_at(4).map(|index| Change::Neighbour {
                index,
                deleted: m.ty == libc::RTM_DELNEIGH,
            }),
            libc::RTM_NEWADDR | libc::RTM_DELADDR => u32_at(4).map(|index| Change::Address {
                index,
                deleted: m.ty == libc::RTM_DELADDR,
            }),
            libc::RTM_NEWROUTE | libc::RTM_DELROUTE => route_dst(p).map(|dst| Change::Route {
                dst,
                deleted: m.ty == libc::RTM_DELROUTE,
            }),
            _ => None,
        };
        out.extend(change);
    }
    out
}

/// The destination of an rtmsg: family and prefix length from the header, address from RTA_DST
/// (absent for a default route).
fn route_dst(p: &[u8]) -> Option<IpNet> {
    let (family, prefix) = (*p.first()?, *p.get(1)?);
    let width = match family as i32 {
        libc::AF_INET => 4,
        libc::AF_INET6 => 16,
        _ => return None,
    };
    let addr: IpAddr = match attribute(p, RTMSG_LEN, RTA_DST) {
        Some(v) if width == 4 => IpAddr::from(<[u8; 4]>::try_from(v).ok()?),
        Some(v) => IpAddr::from(<[u8; 16]>::try_from(v).ok()?),
        None if width == 4 => Ipv4Addr::UNSPECIFIED.into(),
        None => Ipv6Addr::UNSPECIFIED.into(),
    };
    IpNet::new(addr, prefix).ok()
}

/// The payload of the first attribute of type `kind` after a fixed header of `header` bytes;
/// None when there is none or the attributes are malformed.
fn attribute(p: &[u8], header: usize, kind: u16) -> Option<&[u8]> {
    let mut attrs = p.get(header..)?;
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            return None;
        }
        if ty == kind {
            return Some(&attrs[4..len]);
        }
        attrs = attrs.get(align4(len)..).unwrap_or(&[]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::build;
    use crate::netlink::socket::encode;
    use crate::netlink::Route;
    use netlink_packet_route::RouteNetlinkMessage;

    #[test]
    fn route_and_link_notifications_are_reduced() {
        let r = Route::new("198.19.2.0/24".parse().unwrap())
            .via("198.19.2.0".parse().unwrap())
            .dev(5)
            .onlink();
        let mut d = Vec::new();
        encode(
            RouteNetlinkMessage::DelRoute(build::route(&r, false)),
            0,
            1,
            &mut d,
        );
        encode(
            RouteNetlinkMessage::NewLink(build::link_get_by_index(9)),
            0,
            2,
            &mut d,
        );
        let dflt = Route::new("0.0.0.0/0".parse().unwrap());
        encode(
            RouteNetlinkMessage::NewRoute(build::route(&dflt, false)),
            0,
            3,
            &mut d,
        );
        assert_eq!(
            parse_changes(&d),
            vec![
                Change::Route {
                    dst: "198.19.2.0/24".parse().unwrap(),
                    deleted: true
                },
                Change::Link {
                    index: 9,
                    deleted: false,
                    mac: None
                },
                Change::Route {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    deleted: false
                },
            ]
        );
    }
}
