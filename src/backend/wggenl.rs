//! The kernel's WireGuard devices, configured over generic netlink (the "wireguard" family):
//! read a device's key, port and peers and change them, with the same [`DeviceState`] and
//! [`Change`] as the userspace client in [`super::uapi`], so callers need not know which
//! implementation runs the device. Messages are built and read by pure functions (tested byte
//! for byte against the kernel's layout); [`get`] and [`set`] only move them over a socket.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd as _;
use std::time::Duration;

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
};
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};

use super::uapi::{Change, DeviceState};
use super::wireguard::{Key, WgPeer};

/// The largest SET_DEVICE message built, in bytes. The kernel would take bigger ones (up to
/// the socket's send buffer), but the `wg` tool builds each message in one page (at most
/// 8 KiB) and starts a new one when a peer does not fit; 4 KiB keeps every request within a
/// page on any common system and still carries ~25 IPv4 peers, so 1,000 peers are ~40 small
/// messages, each applied (and acknowledged) before the next.
pub const MESSAGE_BUDGET: usize = 4096;

/// How long the kernel may take to answer one request before it counts as failed.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// A GET whose dump the kernel flagged as interrupted (the peers changed meanwhile) is redone
/// up to this many times.
const DUMP_ATTEMPTS: u32 = 5;

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
/// whole message).
fn split(buf: &[u8]) -> impl Iterator<Item = Result<(u16, u16, u32, &[u8]), String>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() < NLMSG_HDRLEN {
            rest = &[];
            return Some(Err("a truncated netlink header".into()));
        }
        let u32_at = |b: &[u8], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let len = u32_at(rest, 0) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            rest = &[];
            return Some(Err(format!("a netlink message of impossible length {len}")));
        }
        let ty = u16::from_ne_bytes([rest[4], rest[5]]);
        let flags = u16::from_ne_bytes([rest[6], rest[7]]);
        let seq = u32_at(rest, 8);
        let msg = &rest[..len];
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        Some(Ok((ty, flags, seq, msg)))
    })
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
    for a in attrs {
        match a {
            WireguardPeerAttribute::PublicKey(k) => {
                peer = Some(WgPeer {
                    public_key: k,
                    endpoint: None,
                    allowed_ips: Vec::new(),
                    psk: None,
                    keepalive: 0,
                })
            }
            WireguardPeerAttribute::PresharedKey(k) => psk = Some(k).filter(|k| *k != [0; 32]),
            WireguardPeerAttribute::Endpoint(e) => endpoint = Some(e),
            WireguardPeerAttribute::PersistentKeepalive(k) => keepalive = k,
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
            // Handshake time, counters, protocol version: not weft's concern.
            _ => {}
        }
    }
    let mut peer =
        peer.ok_or_else(|| AnswerError::Garbled("a peer without a public key".into()))?;
    peer.allowed_ips = ips;
    peer.psk = psk;
    peer.endpoint = endpoint;
    peer.keepalive = keepalive;
    Ok(peer)
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

// ---- the socket ----

struct Conn {
    sock: Socket,
    seq: u32,
}

impl Conn {
    fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_GENERIC)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        let tv = libc::timeval {
            tv_sec: REPLY_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: a valid timeval of the size given, on a socket this Conn owns.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Conn { sock, seq: 0 })
    }

    /// Sends `msg` (stamped with a fresh sequence number) and returns every message received
    /// up to the end of its answer.
    fn exchange(&mut self, mut msg: Vec<u8>, dump: bool) -> io::Result<Vec<u8>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        msg[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.sock.send(&msg, 0)?;
        let mut answer = Vec::new();
        loop {
            let (datagram, _) = self.sock.recv_from_full()?;
            let mut done = false;
            for m in split(&datagram) {
                let (ty, _, s, m) = m.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                // Only this request's messages (a stale answer has another sequence number).
                if s != seq {
                    continue;
                }
                answer.extend_from_slice(m);
                answer.resize(answer.len().next_multiple_of(4), 0);
                // An error or acknowledgement ends any answer, NLMSG_DONE a dump, and the one
                // reply a plain request.
                done |= ty == NLMSG_ERROR || ty == NLMSG_DONE || !dump;
            }
            if done {
                return Ok(answer);
            }
        }
    }

    fn family(&mut self, dev: &str) -> Result<u16, GenlError> {
        let answer = self
            .exchange(family_request(), false)
            .map_err(|error| io_error(dev, error))?;
        parse_family(&answer).map_err(|e| match e {
            AnswerError::Errno(libc::ENOENT) => GenlError::NoFamily { dev: dev.into() },
            e => answer_error(dev, "look up the family of", e),
        })
    }
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
    let mut conn = Conn::open().map_err(|error| io_error(dev, error))?;
    let family = conn.family(dev)?;
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
    let mut conn = Conn::open().map_err(|error| io_error(dev, error))?;
    let family = conn.family(dev)?;
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
