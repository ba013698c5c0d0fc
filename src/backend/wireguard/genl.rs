//! The kernel's WireGuard devices, configured over generic netlink (the "wireguard" family):
//! read a device's key, port and peers and change them, with the same [`DeviceState`] and
//! [`Change`] as the userspace client in [`super::uapi`], so callers need not know which
//! implementation runs the device. Messages are built and read by pure functions (tested byte
//! for byte against the kernel's layout); [`get`] and [`set`] only move them over the socket
//! layer weft's route netlink uses too.

use std::io;
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
    WireguardTimeSpec,
};

use crate::netlink::socket::{self, Conn, DUMP_ATTEMPTS};

use super::uapi::{Change, DeviceState};
use super::{Key, WgPeer};

/// The largest SET_DEVICE message built, in bytes. The kernel would take bigger ones (up to
/// the socket's send buffer), but the `wg` tool builds each message in one page (at most
/// 8 KiB) and starts a new one when a peer does not fit; 4 KiB keeps every request within a
/// page on any common system and still carries ~25 IPv4 peers, so 1,000 peers are ~40 small
/// messages, each applied (and acknowledged) before the next.
pub const MESSAGE_BUDGET: usize = 4096;

const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;
const NLA_HDRLEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum GenlError {
    #[error("cannot talk to the kernel about WireGuard device {dev}: {error}")]
    Io { dev: String, error: io::Error },
    #[error("the kernel has no WireGuard (no generic netlink family \"wireguard\") for {dev}")]
    NoFamily { dev: String },
    #[error("the kernel refused to {op} WireGuard device {dev}: {}", io::Error::from_raw_os_error(*.errno))]
    Refused {
        dev: String,
        op: &'static str,
        errno: i32,
    },
    #[error("the kernel's answer about WireGuard device {dev} is unreadable: {detail}")]
    Garbled { dev: String, detail: String },
}

impl GenlError {
    /// The errno the kernel or a system call gave, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            GenlError::Io { error, .. } => error.raw_os_error(),
            GenlError::NoFamily { .. } => Some(libc::ENOENT),
            GenlError::Refused { errno, .. } => Some(*errno),
            GenlError::Garbled { .. } => None,
        }
    }
}

/// What reading an answer found instead of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerError {
    /// The kernel answered with this (positive) errno.
    Errno(i32),
    /// The dump was flagged as interrupted: its parts may not agree, ask again.
    Interrupted,
    /// Not a valid answer.
    Garbled(String),
}

// ---- building requests ----

/// One netlink message: `payload` for generic netlink family `family`, sequence number 0
/// (the socket layer stamps its own).
fn emit<F>(family: u16, payload: F, flags: u16) -> Vec<u8>
where
    F: netlink_packet_generic::GenlFamily + netlink_packet_core::Emitable + std::fmt::Debug,
{
    let mut genl = GenlMessage::from_payload(payload);
    genl.set_resolved_family_id(family);
    let mut msg = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(genl));
    msg.header.flags = flags;
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// CTRL_CMD_GETFAMILY for "wireguard", to the controller's fixed id.
pub fn family_request() -> Vec<u8> {
    let ctrl = GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName("wireguard".into())],
    };
    // The controller has a static id, which the payload reports itself. Its answer is the
    // family or an error, so no acknowledgement is asked for.
    emit(0, ctrl, NLM_F_REQUEST)
}

/// WG_CMD_GET_DEVICE for `dev`: the kernel only answers it as a dump.
pub fn get_message(family: u16, dev: &str) -> Vec<u8> {
    let msg = WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::IfName(dev.into())],
    };
    emit(family, msg, NLM_F_REQUEST | NLM_F_DUMP)
}

fn allowed_ip(net: &IpNet) -> WireguardAllowedIp {
    let family = match net.addr() {
        IpAddr::V4(_) => WireguardAddressFamily::Ipv4,
        IpAddr::V6(_) => WireguardAddressFamily::Ipv6,
    };
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(family),
        WireguardAllowedIpAttr::IpAddr(net.addr()),
        WireguardAllowedIpAttr::Cidr(net.prefix_len()),
    ])
}

/// Packs device attributes and peers into messages of at most [`MESSAGE_BUDGET`] bytes. The
/// first message carries `first` (key, port); every message names the device. A peer whose
/// allowed IPs do not fit goes on in the next message as its public key and the rest of its
/// IPs, which the kernel appends (the replace flag was in the first part only).
struct Packer<'a> {
    family: u16,
    dev: &'a str,
    cmd: WireguardCmd,
    flags: u16,
    device: Vec<WireguardAttribute>,
    peers: Vec<WireguardPeer>,
    out: Vec<Vec<u8>>,
}

impl<'a> Packer<'a> {
    fn new(family: u16, dev: &'a str, cmd: WireguardCmd, flags: u16) -> Self {
        Packer {
            family,
            dev,
            cmd,
            flags,
            device: vec![WireguardAttribute::IfName(dev.into())],
            peers: Vec::new(),
            out: Vec::new(),
        }
    }

    fn used(&self) -> usize {
        use netlink_packet_core::Emitable as _;
        NLMSG_HDRLEN
            + GENL_HDRLEN
            + self.device.as_slice().buffer_len()
            + NLA_HDRLEN
            + self.peers.as_slice().buffer_len()
    }

    fn flush(&mut self) {
        let mut attributes = std::mem::replace(
            &mut self.device,
            vec![WireguardAttribute::IfName(self.dev.into())],
        );
        if !self.peers.is_empty() {
            attributes.push(WireguardAttribute::Peers(std::mem::take(&mut self.peers)));
        }
        let msg = WireguardMessage {
            cmd: self.cmd,
            attributes,
        };
        self.out.push(emit(self.family, msg, self.flags));
    }

    /// Adds a peer: `head` (its key first) and then its allowed IPs.
    fn peer(&mut self, key: Key, mut head: Vec<WireguardPeerAttribute>, ips: &[IpNet]) {
        use netlink_packet_core::Emitable as _;
        let mut rest = ips;
        loop {
            let room = MESSAGE_BUDGET.saturating_sub(self.used());
            let mut len = NLA_HDRLEN + head.as_slice().buffer_len();
            if !rest.is_empty() {
                len += NLA_HDRLEN;
            }
            let mut n = 0;
            while n < rest.len() {
                let more = allowed_ip(&rest[n]).buffer_len();
                if len + more > room {
                    break;
                }
                len += more;
                n += 1;
            }
            let fits = len <= room && (n > 0 || rest.is_empty());
            if !fits && !self.peers.is_empty() {
                self.flush();
                continue;
            }
            // A message with no peer yet takes this one (and one IP) whatever the budget
            // says: it cannot be split further.
            if !fits {
                n = n.max(1).min(rest.len());
            }
            let mut entry = head;
            if n > 0 {
                entry.push(WireguardPeerAttribute::AllowedIps(
                    rest[..n].iter().map(allowed_ip).collect(),
                ));
            }
            self.peers.push(WireguardPeer(entry));
            rest = &rest[n..];
            if rest.is_empty() {
                return;
            }
            self.flush();
            head = vec![WireguardPeerAttribute::PublicKey(key)];
        }
    }

    fn finish(mut self) -> Vec<Vec<u8>> {
        if self.out.is_empty() || !self.peers.is_empty() {
            self.flush();
        }
        self.out
    }
}

/// The attributes of a peer as set or reported, before its allowed IPs; `flags` only in a
/// request.
fn peer_head(p: &WgPeer, flags: Option<WireguardPeerFlags>) -> Vec<WireguardPeerAttribute> {
    let mut head = vec![
        WireguardPeerAttribute::PublicKey(p.public_key),
        // All zeros removes a PSK the peer had.
        WireguardPeerAttribute::PresharedKey(p.psk.unwrap_or([0; 32])),
    ];
    if let Some(f) = flags {
        head.push(WireguardPeerAttribute::Flags(f));
    }
    if let Some(e) = p.endpoint {
        head.push(WireguardPeerAttribute::Endpoint(e));
    }
    head.push(WireguardPeerAttribute::PersistentKeepalive(p.keepalive));
    head
}

/// The WG_CMD_SET_DEVICE messages for `change` on `dev`, in order, each within
/// [`MESSAGE_BUDGET`]: key and port in the first, then the peers set (replacing their allowed
/// IPs) and removed.
pub fn set_messages(family: u16, dev: &str, change: &Change) -> Vec<Vec<u8>> {
    let mut p = Packer::new(
        family,
        dev,
        WireguardCmd::SetDevice,
        NLM_F_REQUEST | NLM_F_ACK,
    );
    if let Some(k) = change.private_key {
        p.device.push(WireguardAttribute::PrivateKey(k));
    }
    if let Some(port) = change.listen_port {
        p.device.push(WireguardAttribute::ListenPort(port));
    }
    for peer in &change.set {
        let head = peer_head(peer, Some(WireguardPeerFlags::ReplaceAllowedIps));
        p.peer(peer.public_key, head, &peer.allowed_ips);
    }
    for key in &change.remove {
        let head = vec![
            WireguardPeerAttribute::PublicKey(*key),
            WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
        ];
        p.peer(*key, head, &[]);
    }
    p.finish()
}

// ---- reading answers ----

/// The netlink messages in `buf` (one or more datagrams' worth): (type, flags, sequence,
/// whole message), read by the socket layer's one splitter.
fn split(buf: &[u8]) -> impl Iterator<Item = Result<(u16, u16, u32, &[u8]), String>> {
    socket::split(buf).map(|m| m.map(|m| (m.ty, m.flags, m.seq, m.whole)))
}

/// The errno of an NLMSG_ERROR or NLMSG_DONE message (0: success or end).
fn code(msg: &[u8]) -> i32 {
    msg.get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4)
        .map(|b| -i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

/// The family id in the controller's answer to [`family_request`].
pub fn parse_family(answer: &[u8]) -> Result<u16, AnswerError> {
    for m in split(answer) {
        let (ty, _, _, msg) = m.map_err(AnswerError::Garbled)?;
        if ty == NLMSG_ERROR || ty == NLMSG_DONE {
            match code(msg) {
                0 => continue,
                e => return Err(AnswerError::Errno(e)),
            }
        }
        let parsed = NetlinkMessage::<GenlMessage<GenlCtrl>>::deserialize(msg)
            .map_err(|e| AnswerError::Garbled(e.to_string()))?;
        if let NetlinkPayload::InnerMessage(genl) = parsed.payload {
            for nla in genl.payload.nlas {
                if let GenlCtrlAttrs::FamilyId(id) = nla {
                    return Ok(id);
                }
            }
        }
    }
    Err(AnswerError::Garbled("no family id in the answer".into()))
}

fn read_peer(attrs: Vec<WireguardPeerAttribute>) -> Result<WgPeer, AnswerError> {
    let mut peer: Option<WgPeer> = None;
    let mut ips = Vec::new();
    let mut psk = None;
    let mut endpoint = None;
    let mut keepalive = 0;
    let mut last_handshake = None;
    for a in attrs {
        match a {
            WireguardPeerAttribute::PublicKey(k) => {
                peer = Some(WgPeer {
                    public_key: k,
                    endpoint: None,
                    allowed_ips: Vec::new(),
                    psk: None,
                    keepalive: 0,
                    last_handshake: None,
                })
            }
            WireguardPeerAttribute::PresharedKey(k) => psk = Some(k).filter(|k| *k != [0; 32]),
            WireguardPeerAttribute::Endpoint(e) => endpoint = Some(e),
            WireguardPeerAttribute::PersistentKeepalive(k) => keepalive = k,
            WireguardPeerAttribute::LastHandshake(t) => last_handshake = handshake_time(t),
            WireguardPeerAttribute::AllowedIps(list) => {
                for ip in list {
                    let mut addr = None;
                    let mut cidr = None;
                    for a in ip.0 {
                        match a {
                            WireguardAllowedIpAttr::IpAddr(a) => addr = Some(a),
                            WireguardAllowedIpAttr::Cidr(c) => cidr = Some(c),
                            _ => {}
                        }
                    }
                    let (Some(addr), Some(cidr)) = (addr, cidr) else {
                        return Err(AnswerError::Garbled(
                            "an allowed IP without address or prefix length".into(),
                        ));
                    };
                    let net = IpNet::new(addr, cidr)
                        .map_err(|_| AnswerError::Garbled(format!("allowed IP {addr}/{cidr}")))?;
                    ips.push(net);
                }
            }
            // Counters, protocol version: not weft's concern.
            _ => {}
        }
    }
    let mut peer =
        peer.ok_or_else(|| AnswerError::Garbled("a peer without a public key".into()))?;
    peer.allowed_ips = ips;
    peer.psk = psk;
    peer.endpoint = endpoint;
    peer.keepalive = keepalive;
    peer.last_handshake = last_handshake;
    Ok(peer)
}

/// The kernel's handshake time (wall clock); zero means none yet.
fn handshake_time(t: WireguardTimeSpec) -> Option<std::time::SystemTime> {
    let (secs, nanos) = (
        u64::try_from(t.seconds).ok()?,
        u32::try_from(t.nano_seconds).ok()?,
    );
    if secs == 0 && nanos == 0 {
        return None;
    }
    let since = std::time::Duration::new(secs, nanos.min(999_999_999));
    std::time::SystemTime::UNIX_EPOCH.checked_add(since)
}

/// The device in a GET_DEVICE dump (all its messages, up to NLMSG_DONE). A device with many
/// peers comes in several messages, and a peer with many allowed IPs may go on in the next
/// message under its public key again: those parts are merged.
pub fn parse_device(answer: &[u8]) -> Result<DeviceState, AnswerError> {
    let mut dev = DeviceState::default();
    for m in split(answer) {
        let (ty, flags, _, msg) = m.map_err(AnswerError::Garbled)?;
        if flags & NLM_F_DUMP_INTR != 0 {
            return Err(AnswerError::Interrupted);
        }
        if ty == NLMSG_ERROR || ty == NLMSG_DONE {
            match code(msg) {
                0 if ty == NLMSG_DONE => break,
                0 => continue,
                e => return Err(AnswerError::Errno(e)),
            }
        }
        let parsed = NetlinkMessage::<GenlMessage<WireguardMessage>>::deserialize(msg)
            .map_err(|e| AnswerError::Garbled(e.to_string()))?;
        let NetlinkPayload::InnerMessage(genl) = parsed.payload else {
            continue;
        };
        for a in genl.payload.attributes {
            match a {
                WireguardAttribute::PrivateKey(k) => dev.private_key = Some(k),
                WireguardAttribute::ListenPort(p) => dev.listen_port = p,
                WireguardAttribute::Peers(peers) => {
                    for p in peers {
                        let p = read_peer(p.0)?;
                        match dev.peers.last_mut() {
                            Some(last) if last.public_key == p.public_key => {
                                last.allowed_ips.extend(p.allowed_ips);
                            }
                            _ => dev.peers.push(p),
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(dev)
}

// ---- over the socket ----

/// A generic netlink socket with the "wireguard" family's id looked up.
fn connect(dev: &str) -> Result<(Conn, u16), GenlError> {
    let mut conn = Conn::generic().map_err(|e| GenlError::Io {
        dev: dev.into(),
        error: io::Error::other(e.to_string()),
    })?;
    let answer = conn
        .exchange(family_request(), false)
        .map_err(|error| io_error(dev, error))?;
    let family = parse_family(&answer).map_err(|e| match e {
        AnswerError::Errno(libc::ENOENT) => GenlError::NoFamily { dev: dev.into() },
        e => answer_error(dev, "look up the family of", e),
    })?;
    Ok((conn, family))
}

fn io_error(dev: &str, error: io::Error) -> GenlError {
    GenlError::Io {
        dev: dev.into(),
        error,
    }
}

fn answer_error(dev: &str, op: &'static str, e: AnswerError) -> GenlError {
    match e {
        AnswerError::Errno(errno) => GenlError::Refused {
            dev: dev.into(),
            op,
            errno,
        },
        AnswerError::Interrupted => GenlError::Garbled {
            dev: dev.into(),
            detail: format!("the dump was interrupted {DUMP_ATTEMPTS} times"),
        },
        AnswerError::Garbled(detail) => GenlError::Garbled {
            dev: dev.into(),
            detail,
        },
    }
}

/// The device's key, port and peers.
pub fn get(dev: &str) -> Result<DeviceState, GenlError> {
    let (mut conn, family) = connect(dev)?;
    let mut last = AnswerError::Interrupted;
    for _ in 0..DUMP_ATTEMPTS {
        let answer = conn
            .exchange(get_message(family, dev), true)
            .map_err(|error| io_error(dev, error))?;
        match parse_device(&answer) {
            Ok(state) => return Ok(state),
            Err(AnswerError::Interrupted) => continue,
            Err(e) => {
                last = e;
                break;
            }
        }
    }
    Err(answer_error(dev, "read", last))
}

/// Applies a change, one message after the other (see [`set_messages`]). A failure stops at
/// the message refused: the ones before it are applied.
pub fn set(dev: &str, change: &Change) -> Result<(), GenlError> {
    let (mut conn, family) = connect(dev)?;
    for msg in set_messages(family, dev, change) {
        let answer = conn
            .exchange(msg, false)
            .map_err(|error| io_error(dev, error))?;
        for m in split(&answer) {
            let (ty, _, _, msg) = m.map_err(|detail| GenlError::Garbled {
                dev: dev.into(),
                detail,
            })?;
            if ty == NLMSG_ERROR && code(msg) != 0 {
                return Err(answer_error(dev, "change", AnswerError::Errno(code(msg))));
            }
        }
    }
    Ok(())
}

// The expected bytes are written out as a little-endian host lays them: netlink lengths,
// types and most values are in host order (ports and addresses in network order).
#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

    /// A family id as the kernel would hand out for "wireguard".
    const FAMILY: u16 = 0x15;

    fn v4_peer() -> WgPeer {
        WgPeer {
            public_key: [0xab; 32],
            endpoint: Some("198.18.0.2:51820".parse().unwrap()),
            allowed_ips: vec!["198.19.2.0/24".parse().unwrap()],
            psk: Some([1; 32]),
            keepalive: 25,
            last_handshake: None,
        }
    }

    fn v6_peer() -> WgPeer {
        WgPeer {
            public_key: [0x66; 32],
            endpoint: Some("[2001:db8::2]:51821".parse().unwrap()),
            allowed_ips: vec!["2001:db8:100:2::/64".parse().unwrap()],
            psk: None,
            keepalive: 0,
            last_handshake: None,
        }
    }

    /// A netlink attribute written out independently of the builder: length, type, payload,
    /// padding to 4 bytes.
    fn nla(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
        v.extend(ty.to_ne_bytes());
        v.extend(payload);
        v.resize(v.len().next_multiple_of(4), 0);
        v
    }

    /// A netlink message of type `ty` with the given flags and payload (sequence 0, port 0).
    fn nlmsg(ty: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = ((16 + payload.len()) as u32).to_ne_bytes().to_vec();
        v.extend(ty.to_ne_bytes());
        v.extend(flags.to_ne_bytes());
        v.extend([0; 8]);
        v.extend(payload);
        v
    }

    /// The end of a dump, with `errno` (0: all went well).
    fn done(errno: i32) -> Vec<u8> {
        nlmsg(NLMSG_DONE, 2, &(-errno).to_ne_bytes())
    }

    #[test]
    fn a_set_with_key_port_and_an_ipv4_peer_is_laid_out_as_the_kernel_reads_it() {
        let c = Change {
            private_key: Some([0x11; 32]),
            listen_port: Some(51820),
            set: vec![v4_peer()],
            remove: vec![],
        };
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            // nlmsghdr: length 228, type the family's id, flags REQUEST|ACK, sequence, port
            &[228, 0, 0, 0, 0x15, 0, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
            // genlmsghdr: WG_CMD_SET_DEVICE, version 1, reserved
            &[1, 1, 0, 0],
            // WGDEVICE_A_IFNAME: length 15, type 2, "flannel-wg\0", 1 byte of padding
            &[15, 0, 2, 0], b"flannel-wg\0", &[0],
            // WGDEVICE_A_PRIVATE_KEY: length 36, type 3, the key
            &[36, 0, 3, 0], &[0x11; 32],
            // WGDEVICE_A_LISTEN_PORT: length 6, type 6, 51820 (0xca6c) in host order, padding
            &[6, 0, 6, 0], &[0x6c, 0xca], &[0, 0],
            // WGDEVICE_A_PEERS: length 148, type 8 | NLA_F_NESTED
            &[148, 0, 8, 0x80],
            //   a peer: length 144, type 0 | NLA_F_NESTED
            &[144, 0, 0, 0x80],
            //     WGPEER_A_PUBLIC_KEY: length 36, type 1
            &[36, 0, 1, 0], &[0xab; 32],
            //     WGPEER_A_PRESHARED_KEY: length 36, type 2
            &[36, 0, 2, 0], &[1; 32],
            //     WGPEER_A_FLAGS: length 8, type 3, WGPEER_F_REPLACE_ALLOWEDIPS (2)
            &[8, 0, 3, 0], &[2, 0, 0, 0],
            //     WGPEER_A_ENDPOINT: length 20, type 4, sockaddr_in: AF_INET (2) in host
            //     order, port 51820 big-endian, 198.18.0.2, 8 bytes of zero
            &[20, 0, 4, 0], &[2, 0], &[0xca, 0x6c], &[198, 18, 0, 2], &[0; 8],
            //     WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: length 6, type 5, 25, padding
            &[6, 0, 5, 0], &[25, 0], &[0, 0],
            //     WGPEER_A_ALLOWEDIPS: length 32, type 9 | NLA_F_NESTED
            &[32, 0, 9, 0x80],
            //       an allowed IP: length 28, type 0 | NLA_F_NESTED
            &[28, 0, 0, 0x80],
            //         WGALLOWEDIP_A_FAMILY: length 6, type 1, AF_INET, padding
            &[6, 0, 1, 0], &[2, 0], &[0, 0],
            //         WGALLOWEDIP_A_IPADDR: length 8, type 2, 198.19.2.0
            &[8, 0, 2, 0], &[198, 19, 2, 0],
            //         WGALLOWEDIP_A_CIDR_MASK: length 5, type 3, 24, 3 bytes of padding
            &[5, 0, 3, 0], &[24], &[0, 0, 0],
        ]
        .concat();
        assert_eq!(set_messages(FAMILY, "flannel-wg", &c), vec![expected]);
    }

    #[test]
    fn an_ipv6_peer_has_a_sockaddr_in6_endpoint_and_a_zero_psk_clears_its_psk() {
        let c = Change {
            set: vec![v6_peer()],
            ..Change::default()
        };
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            // nlmsghdr: length 212, family, REQUEST|ACK, sequence, port
            &[212, 0, 0, 0, 0x15, 0, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
            // genlmsghdr: WG_CMD_SET_DEVICE, version 1, reserved
            &[1, 1, 0, 0],
            // WGDEVICE_A_IFNAME: length 18, type 2, "flannel-wg-v6\0", 2 bytes of padding
            &[18, 0, 2, 0], b"flannel-wg-v6\0", &[0, 0],
            // no key, no port: WGDEVICE_A_PEERS: length 172, type 8 | NLA_F_NESTED
            &[172, 0, 8, 0x80],
            //   a peer: length 168, type 0 | NLA_F_NESTED
            &[168, 0, 0, 0x80],
            //     WGPEER_A_PUBLIC_KEY: length 36, type 1
            &[36, 0, 1, 0], &[0x66; 32],
            //     WGPEER_A_PRESHARED_KEY: length 36, type 2, all zero (no PSK)
            &[36, 0, 2, 0], &[0; 32],
            //     WGPEER_A_FLAGS: length 8, type 3, WGPEER_F_REPLACE_ALLOWEDIPS
            &[8, 0, 3, 0], &[2, 0, 0, 0],
            //     WGPEER_A_ENDPOINT: length 32, type 4, sockaddr_in6: AF_INET6 (10) in host
            //     order, port 51821 big-endian, flowinfo, 2001:db8::2, scope id
            &[32, 0, 4, 0], &[10, 0], &[0xca, 0x6d], &[0; 4],
            &[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2], &[0; 4],
            //     WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: length 6, type 5, 0 (off), padding
            &[6, 0, 5, 0], &[0, 0], &[0, 0],
            //     WGPEER_A_ALLOWEDIPS: length 44, type 9 | NLA_F_NESTED
            &[44, 0, 9, 0x80],
            //       an allowed IP: length 40, type 0 | NLA_F_NESTED
            &[40, 0, 0, 0x80],
            //         WGALLOWEDIP_A_FAMILY: length 6, type 1, AF_INET6, padding
            &[6, 0, 1, 0], &[10, 0], &[0, 0],
            //         WGALLOWEDIP_A_IPADDR: length 20, type 2, 2001:db8:100:2::
            &[20, 0, 2, 0], &[0x20, 0x01, 0x0d, 0xb8, 0x01, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0],
            //         WGALLOWEDIP_A_CIDR_MASK: length 5, type 3, 64, 3 bytes of padding
            &[5, 0, 3, 0], &[64], &[0, 0, 0],
        ]
        .concat();
        assert_eq!(set_messages(FAMILY, "flannel-wg-v6", &c), vec![expected]);
    }

    #[test]
    fn a_removed_peer_is_its_key_and_the_remove_flag() {
        let c = Change {
            remove: vec![[0xcd; 32]],
            ..Change::default()
        };
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            // nlmsghdr: length 88, family, REQUEST|ACK, sequence, port
            &[88, 0, 0, 0, 0x15, 0, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
            // genlmsghdr: WG_CMD_SET_DEVICE, version 1, reserved
            &[1, 1, 0, 0],
            // WGDEVICE_A_IFNAME: length 15, type 2, "flannel-wg\0", 1 byte of padding
            &[15, 0, 2, 0], b"flannel-wg\0", &[0],
            // WGDEVICE_A_PEERS: length 52, type 8 | NLA_F_NESTED
            &[52, 0, 8, 0x80],
            //   a peer: length 48, type 0 | NLA_F_NESTED
            &[48, 0, 0, 0x80],
            //     WGPEER_A_PUBLIC_KEY: length 36, type 1
            &[36, 0, 1, 0], &[0xcd; 32],
            //     WGPEER_A_FLAGS: length 8, type 3, WGPEER_F_REMOVE_ME (1)
            &[8, 0, 3, 0], &[1, 0, 0, 0],
        ]
        .concat();
        assert_eq!(set_messages(FAMILY, "flannel-wg", &c), vec![expected]);
    }

    #[test]
    fn a_get_asks_for_a_dump_by_name_and_the_family_by_its_name() {
        #[rustfmt::skip]
        let get: Vec<u8> = [
            // nlmsghdr: length 36, family, flags REQUEST|DUMP (0x301), sequence, port
            &[36, 0, 0, 0, 0x15, 0, 0x01, 0x03, 0, 0, 0, 0, 0, 0, 0, 0][..],
            // genlmsghdr: WG_CMD_GET_DEVICE, version 1, reserved
            &[0, 1, 0, 0],
            // WGDEVICE_A_IFNAME: length 15, type 2, "flannel-wg\0", 1 byte of padding
            &[15, 0, 2, 0], b"flannel-wg\0", &[0],
        ]
        .concat();
        assert_eq!(get_message(FAMILY, "flannel-wg"), get);
        #[rustfmt::skip]
        let family: Vec<u8> = [
            // nlmsghdr: length 36, type GENL_ID_CTRL (0x10), flags REQUEST, sequence, port
            &[36, 0, 0, 0, 0x10, 0, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
            // genlmsghdr: CTRL_CMD_GETFAMILY (3), version 2, reserved
            &[3, 2, 0, 0],
            // CTRL_ATTR_FAMILY_NAME: length 14, type 2, "wireguard\0", 2 bytes of padding
            &[14, 0, 2, 0], b"wireguard\0", &[0, 0],
        ]
        .concat();
        assert_eq!(family_request(), family);
        // The controller's answer: CTRL_CMD_NEWFAMILY with the name and the id.
        let mut answer = vec![1, 2, 0, 0];
        answer.extend(nla(2, b"wireguard\0"));
        answer.extend(nla(1, &0x15u16.to_ne_bytes()));
        assert_eq!(parse_family(&nlmsg(0x10, 0, &answer)), Ok(0x15));
        // No module: ENOENT in an NLMSG_ERROR.
        let mut err = (-libc::ENOENT).to_ne_bytes().to_vec();
        err.extend(&family[..16]);
        assert_eq!(
            parse_family(&nlmsg(NLMSG_ERROR, 0, &err)),
            Err(AnswerError::Errno(libc::ENOENT))
        );
    }

    /// The messages decoded back with the crate: (device attributes, peers) of each.
    fn decode(msgs: &[Vec<u8>]) -> Vec<(Vec<WireguardAttribute>, Vec<WireguardPeer>)> {
        msgs.iter()
            .map(|m| {
                assert_eq!(
                    m.len(),
                    u32::from_ne_bytes(m[..4].try_into().unwrap()) as usize
                );
                let msg = NetlinkMessage::<GenlMessage<WireguardMessage>>::deserialize(m).unwrap();
                let NetlinkPayload::InnerMessage(genl) = msg.payload else {
                    panic!("not a WireGuard message");
                };
                assert_eq!(genl.payload.cmd, WireguardCmd::SetDevice);
                let mut device = Vec::new();
                let mut peers = Vec::new();
                for a in genl.payload.attributes {
                    match a {
                        WireguardAttribute::Peers(p) => peers = p,
                        a => device.push(a),
                    }
                }
                (device, peers)
            })
            .collect()
    }

    fn key_of(p: &WireguardPeer) -> Key {
        match p.0.first() {
            Some(WireguardPeerAttribute::PublicKey(k)) => *k,
            other => panic!("a peer that does not start with its key: {other:?}"),
        }
    }

    #[test]
    fn a_thousand_peers_are_split_into_messages_within_the_budget() {
        let peers: Vec<WgPeer> = (0..1000u32)
            .map(|i| {
                let mut key = [0x5a; 32];
                key[..4].copy_from_slice(&i.to_be_bytes());
                WgPeer {
                    public_key: key,
                    endpoint: Some(SocketAddr::from((Ipv4Addr::from(0xc612_0000 + i), 51820))),
                    allowed_ips: vec![IpNet::new(
                        Ipv4Addr::from(0x0a00_0000 + (i << 8)).into(),
                        24,
                    )
                    .unwrap()],
                    psk: Some([7; 32]),
                    keepalive: 25,
                    last_handshake: None,
                }
            })
            .collect();
        let c = Change {
            private_key: Some([0x11; 32]),
            listen_port: Some(51820),
            set: peers.clone(),
            remove: vec![[0xcd; 32]],
        };
        let msgs = set_messages(FAMILY, "flannel-wg", &c);
        // 148 bytes a peer: about 27 a message.
        assert!(msgs.len() >= 1000 * 148 / MESSAGE_BUDGET, "{}", msgs.len());
        assert!(msgs.iter().all(|m| m.len() <= MESSAGE_BUDGET));
        let decoded = decode(&msgs);
        for (i, (device, peers)) in decoded.iter().enumerate() {
            assert!(!peers.is_empty(), "message {i} has no peer");
            let mut want = vec![WireguardAttribute::IfName("flannel-wg".into())];
            if i == 0 {
                want.push(WireguardAttribute::PrivateKey([0x11; 32]));
                want.push(WireguardAttribute::ListenPort(51820));
            }
            assert_eq!(device, &want, "message {i}");
        }
        let all: Vec<&WireguardPeer> = decoded.iter().flat_map(|(_, p)| p).collect();
        let keys: Vec<Key> = all.iter().map(|p| key_of(p)).collect();
        let mut want: Vec<Key> = peers.iter().map(|p| p.public_key).collect();
        want.push([0xcd; 32]);
        assert_eq!(keys, want, "every peer once, in order");
        assert!(all[..1000]
            .iter()
            .all(|p| p.0.contains(&WireguardPeerAttribute::Flags(
                WireguardPeerFlags::ReplaceAllowedIps
            ))));
        assert_eq!(
            all[1000].0,
            vec![
                WireguardPeerAttribute::PublicKey([0xcd; 32]),
                WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe)
            ]
        );
        // Read back as a device, the messages hold the peers set, in order.
        let dev = parse_device(&msgs.concat()).unwrap();
        assert_eq!(dev.peers[..1000], peers[..]);
    }

    #[test]
    fn a_peer_with_more_allowed_ips_than_a_message_holds_goes_on_in_the_next() {
        let mut p = v6_peer();
        p.allowed_ips = (0..300u16)
            .map(|i| IpNet::new(Ipv6Addr::new(0x2001, 0xdb8, i, 0, 0, 0, 0, 0).into(), 64).unwrap())
            .collect();
        let c = Change {
            set: vec![v4_peer(), p.clone()],
            ..Change::default()
        };
        let msgs = set_messages(FAMILY, "flannel-wg-v6", &c);
        assert!(msgs.len() >= 3, "{}", msgs.len());
        assert!(msgs.iter().all(|m| m.len() <= MESSAGE_BUDGET));
        let decoded = decode(&msgs);
        // The first part replaces the peer's allowed IPs; the others only add to them.
        let parts: Vec<&WireguardPeer> = decoded
            .iter()
            .flat_map(|(_, p)| p)
            .filter(|q| key_of(q) == p.public_key)
            .collect();
        assert_eq!(parts.len(), msgs.len());
        assert!(parts[0].0.contains(&WireguardPeerAttribute::Flags(
            WireguardPeerFlags::ReplaceAllowedIps
        )));
        for part in &parts[1..] {
            assert_eq!(part.0.len(), 2, "key and allowed IPs only: {part:?}");
            assert!(matches!(part.0[1], WireguardPeerAttribute::AllowedIps(_)));
        }
        let dev = parse_device(&msgs.concat()).unwrap();
        assert_eq!(dev.peers, vec![v4_peer(), p]);
    }

    /// A dump in two parts as the kernel sends one: the device and a first peer with one
    /// allowed IP, then the same peer again (its key) with another IP and a second peer.
    fn two_part_answer() -> Vec<u8> {
        let mut sockaddr_in = vec![2, 0, 0xca, 0x6c, 198, 18, 0, 2];
        sockaddr_in.extend([0; 8]);
        let mut sockaddr_in6 = vec![10, 0, 0xca, 0x6d, 0, 0, 0, 0];
        sockaddr_in6.extend(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2).octets());
        sockaddr_in6.extend([0; 4]);
        let ip = |family: u16, addr: &[u8], cidr: u8| {
            nla(
                0x8000,
                &[nla(1, &family.to_ne_bytes()), nla(2, addr), nla(3, &[cidr])].concat(),
            )
        };
        let peer_a = nla(
            0x8000,
            &[
                nla(1, &[0xab; 32]),
                nla(2, &[1; 32]),
                nla(4, &sockaddr_in),
                nla(5, &25u16.to_ne_bytes()),
                nla(6, &[0; 16]),               // last handshake
                nla(7, &1234u64.to_ne_bytes()), // rx bytes
                nla(8, &5678u64.to_ne_bytes()), // tx bytes
                nla(0x8009, &ip(2, &[198, 19, 2, 0], 24)),
                nla(10, &1u32.to_ne_bytes()), // protocol version
            ]
            .concat(),
        );
        let peer_a_again = nla(
            0x8000,
            &[
                nla(1, &[0xab; 32]),
                nla(0x8009, &ip(2, &[198, 19, 3, 0], 24)),
            ]
            .concat(),
        );
        let v6: Ipv6Addr = "2001:db8:100:2::".parse().unwrap();
        let peer_b = nla(
            0x8000,
            &[
                nla(1, &[0x66; 32]),
                nla(2, &[0; 32]),
                nla(4, &sockaddr_in6),
                nla(5, &0u16.to_ne_bytes()),
                nla(0x8009, &ip(10, &v6.octets(), 64)),
            ]
            .concat(),
        );
        let first = [
            &[0u8, 1, 0, 0][..],
            &nla(1, &7u32.to_ne_bytes()), // ifindex
            &nla(2, b"flannel-wg\0"),
            &nla(3, &[2; 32]),
            &nla(4, &[3; 32]), // public key
            &nla(6, &51820u16.to_ne_bytes()),
            &nla(7, &0u32.to_ne_bytes()), // fwmark
            &nla(0x8008, &peer_a),
        ]
        .concat();
        let second = [
            &[0u8, 1, 0, 0][..],
            &nla(1, &7u32.to_ne_bytes()),
            &nla(2, b"flannel-wg\0"),
            &nla(0x8008, &[peer_a_again, peer_b].concat()),
        ]
        .concat();
        [nlmsg(FAMILY, 2, &first), nlmsg(FAMILY, 2, &second), done(0)].concat()
    }

    #[test]
    fn a_dump_in_parts_is_read_back_into_one_device() {
        let mut a = v4_peer();
        a.allowed_ips.push("198.19.3.0/24".parse().unwrap());
        assert_eq!(
            parse_device(&two_part_answer()),
            Ok(DeviceState {
                private_key: Some([2; 32]),
                listen_port: 51820,
                peers: vec![a, v6_peer()],
            })
        );
    }

    #[test]
    fn errors_interruptions_and_garbage_are_told_apart() {
        assert_eq!(
            parse_device(&done(libc::ENODEV)),
            Err(AnswerError::Errno(libc::ENODEV))
        );
        let mut err = (-libc::EPERM).to_ne_bytes().to_vec();
        err.extend(get_message(FAMILY, "flannel-wg"));
        assert_eq!(
            parse_device(&nlmsg(NLMSG_ERROR, 0, &err)),
            Err(AnswerError::Errno(libc::EPERM))
        );
        let mut interrupted = two_part_answer();
        interrupted[6] |= NLM_F_DUMP_INTR as u8;
        assert_eq!(parse_device(&interrupted), Err(AnswerError::Interrupted));
        let answer = two_part_answer();
        assert!(matches!(
            parse_device(&answer[..answer.len() - 30]),
            Err(AnswerError::Garbled(_))
        ));
        let e = answer_error("flannel-wg", "read", AnswerError::Errno(libc::ENODEV));
        assert_eq!(e.errno(), Some(libc::ENODEV));
        assert!(e.to_string().contains("flannel-wg"), "{e}");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn net() -> impl Strategy<Value = IpNet> {
            prop_oneof![
                (any::<u32>(), 0u8..=32)
                    .prop_map(|(a, l)| IpNet::new(Ipv4Addr::from(a).into(), l).unwrap()),
                (any::<u128>(), 0u8..=128).prop_map(|(a, l)| IpNet::new(
                    Ipv6Addr::from(a).into(),
                    l
                )
                .unwrap()),
            ]
        }

        fn endpoint() -> impl Strategy<Value = Option<SocketAddr>> {
            prop_oneof![
                Just(None),
                (any::<u32>(), any::<u16>())
                    .prop_map(|(a, p)| Some(SocketAddr::from((Ipv4Addr::from(a), p)))),
                (any::<u128>(), any::<u16>())
                    .prop_map(|(a, p)| Some(SocketAddr::from((Ipv6Addr::from(a), p)))),
            ]
        }

        fn peers() -> impl Strategy<Value = Vec<WgPeer>> {
            prop::collection::vec(
                (
                    endpoint(),
                    prop::collection::vec(net(), 0..60),
                    prop::option::of(1u8..),
                    any::<u16>(),
                ),
                0..30,
            )
            .prop_map(|v| {
                v.into_iter()
                    .enumerate()
                    .map(|(i, (endpoint, allowed_ips, psk, keepalive))| WgPeer {
                        // Distinct keys, as a device's peers have.
                        public_key: [i as u8; 32],
                        endpoint,
                        allowed_ips,
                        psk: psk.map(|b| [b; 32]),
                        keepalive,
                        last_handshake: None,
                    })
                    .collect()
            })
        }

        /// What the kernel answers for a device with these peers, laid out by the same packer
        /// (peers without flags, parts marked multi-part, then the end of the dump).
        fn answer(state: &DeviceState) -> Vec<u8> {
            let mut p = Packer::new(FAMILY, "flannel-wg", WireguardCmd::GetDevice, 2);
            if let Some(k) = state.private_key {
                p.device.push(WireguardAttribute::PrivateKey(k));
            }
            p.device
                .push(WireguardAttribute::ListenPort(state.listen_port));
            for peer in &state.peers {
                p.peer(peer.public_key, peer_head(peer, None), &peer.allowed_ips);
            }
            [p.finish().concat(), done(0)].concat()
        }

        proptest! {
            #[test]
            fn a_device_reads_back_as_it_was_written(
                private_key in prop::option::of(any::<[u8; 32]>()),
                listen_port in any::<u16>(),
                peers in peers(),
            ) {
                let state = DeviceState { private_key, listen_port, peers };
                prop_assert_eq!(parse_device(&answer(&state)), Ok(state));
            }

            /// Whatever arrives (or something truncated), reading it never panics.
            #[test]
            fn parse_device_never_panics(cut in 0usize..2000, junk in prop::collection::vec(any::<u8>(), 0..64)) {
                let mut a = two_part_answer();
                a.truncate(cut);
                a.extend(junk);
                let _ = parse_device(&a);
            }
        }
    }
}
