//! The wire under the typed API: a netlink socket (route, generic for WireGuard, netfilter for
//! nf_tables set elements), request
//! encoding, dumps that survive multi-part replies and interruption, and a pipeline that keeps
//! thousands of acked requests in flight without ever letting the kernel drop an
//! acknowledgement. One reply timeout and one dump retry policy for every protocol.

use std::io;
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP,
    NLMSG_OVERRUN, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
#[cfg(feature = "daemon")]
use netlink_sys::protocols::NETLINK_GENERIC;
#[cfg(feature = "policy")]
use netlink_sys::protocols::NETLINK_NETFILTER;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::Socket;

use super::NetlinkError;

/// Big enough for any datagram the kernel builds: dump skbs are capped at 32 KiB, and with
/// NETLINK_CAP_ACK error replies never echo more than a header.
const RECV_BUF: usize = 256 * 1024;
/// How many request bytes go into one sendmsg(). The kernel handles each batch synchronously in
/// our thread, so this bounds how many acks can pile up in our receive queue per send.
const SEND_CHUNK: usize = 64 * 1024;
/// Receive buffer asked for (the kernel doubles it). Room for a few thousand acks.
const RCVBUF_WANTED: usize = 4 << 20;
/// What one queued ack costs against the receive buffer (skb truesize), rounded up generously.
const ACK_COST: usize = 2048;
/// Give up on a dump interrupted by concurrent changes after this many attempts.
pub(crate) const DUMP_ATTEMPTS: u32 = 10;
/// A reply the kernel owes us never takes this long; past it the request is reported failed
/// instead of blocking the caller (the reconciler, a CNI command) forever.
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// SO_RCVBUFFORCE on the generic Linux ABIs (x86, arm, riscv); not exported by every libc.
const SO_RCVBUFFORCE: libc::c_int = 33;

const NLMSGERR_ATTR_MSG: u16 = 1;

/// A failed request as the kernel reported it, before the caller dresses it with a description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawErr {
    pub errno: i32,
    pub ext: Option<String>,
}

impl RawErr {
    pub(crate) fn into_error(self, op: String) -> NetlinkError {
        NetlinkError::kernel(op, self.errno, self.ext)
    }
}

pub(crate) struct Conn {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
    /// Requests allowed in flight at once, derived from the receive buffer we actually got.
    window: usize,
}

impl Conn {
    /// A NETLINK_ROUTE socket in the calling thread's network namespace.
    pub(crate) fn new() -> Result<Self, NetlinkError> {
        Conn::open(NETLINK_ROUTE)
    }

    /// A NETLINK_GENERIC socket (WireGuard's family) in the calling thread's namespace.
    #[cfg(feature = "daemon")]
    pub(crate) fn generic() -> Result<Self, NetlinkError> {
        Conn::open(NETLINK_GENERIC)
    }

    /// A NETLINK_NETFILTER socket (nf_tables) in the calling thread's namespace.
    #[cfg(feature = "policy")]
    pub(crate) fn netfilter() -> Result<Self, NetlinkError> {
        Conn::open(NETLINK_NETFILTER)
    }

    fn open(protocol: isize) -> Result<Self, NetlinkError> {
        let sock = open_socket(protocol, RCVBUF_WANTED)?;
        // The kernel may still exercise a plain ack, but with CAP_ACK an error reply carries only
        // the header of the failed request, which keeps 15,000 replies small.
        if let Err(e) = sock.set_cap_ack(true) {
            tracing::debug!("NETLINK_CAP_ACK unavailable: {e}");
        }
        if let Err(e) = sock.set_ext_ack(true) {
            tracing::debug!("NETLINK_EXT_ACK unavailable: {e}");
        }
        set_recv_timeout(&sock, REPLY_TIMEOUT);
        let rcvbuf = sock.get_rx_buf_sz().unwrap_or(212_992);
        let window = (rcvbuf / ACK_COST).clamp(32, 4096);
        Ok(Conn {
            sock,
            seq: initial_seq(),
            buf: vec![0; RECV_BUF],
            window,
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `n` requests, each acked, as few sendmsg() calls as possible; returns one outcome
    /// per request in order. `encode(i, seq, out)` appends request `i` with sequence `seq`.
    pub(crate) fn pipeline(
        &mut self,
        n: usize,
        mut encode: impl FnMut(usize, u32, &mut Vec<u8>),
    ) -> Vec<Result<(), RawErr>> {
        let mut results: Vec<Option<Result<(), RawErr>>> = vec![None; n];
        if n == 0 {
            return Vec::new();
        }
        let base = self.seq.wrapping_add(1);
        self.seq = self.seq.wrapping_add(n as u32);
        let mut next = 0usize;
        let mut pending = 0usize;
        let mut out = Vec::with_capacity(SEND_CHUNK + 4096);

        while next < n || pending > 0 {
            if next < n && pending < self.window {
                out.clear();
                let first = next;
                while next < n && pending + (next - first) < self.window && out.len() < SEND_CHUNK {
                    encode(next, base.wrapping_add(next as u32), &mut out);
                    next += 1;
                }
                match send_all(&self.sock, &out) {
                    Ok(()) => pending += next - first,
                    Err(e) => {
                        let errno = e.raw_os_error().unwrap_or(libc::EIO);
                        for r in &mut results[first..next] {
                            *r = Some(Err(RawErr {
                                errno,
                                ext: Some("sending the request failed".into()),
                            }));
                        }
                    }
                }
                // The kernel processed that batch inside our sendmsg(), so its acks are queued
                // already: collect them before the next batch so the queue never fills.
                let blocking = false;
                if let Err(errno) = self.collect(blocking, base, next, &mut results, &mut pending) {
                    lose_pending(&mut results[..next], &mut pending, errno);
                }
                continue;
            }
            if let Err(errno) = self.collect(true, base, next, &mut results, &mut pending) {
                lose_pending(&mut results[..next], &mut pending, errno);
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or(Err(RawErr {
                    errno: libc::EIO,
                    ext: Some("no acknowledgement".into()),
                }))
            })
            .collect()
    }

    /// Reads acks into `results`. Non-blocking mode reads until the queue is empty; blocking
    /// mode waits for at least one datagram. Err(errno) means the socket failed (e.g. ENOBUFS:
    /// acks were dropped, so what is still pending can no longer be known).
    fn collect(
        &mut self,
        blocking: bool,
        base: u32,
        sent: usize,
        results: &mut [Option<Result<(), RawErr>>],
        pending: &mut usize,
    ) -> Result<(), i32> {
        loop {
            if *pending == 0 {
                return Ok(());
            }
            let flags = if blocking { 0 } else { libc::MSG_DONTWAIT };
            let len = match recv_datagram(&self.sock, &mut self.buf, flags) {
                Ok(Some(len)) => len,
                Ok(None) if blocking => return Err(libc::ETIMEDOUT),
                Ok(None) => return Ok(()),
                Err(e) => return Err(e.raw_os_error().unwrap_or(libc::EIO)),
            };
            for m in split(&self.buf[..len]) {
                let Ok(m) = m else {
                    tracing::warn!("netlink: skipping a malformed datagram");
                    break;
                };
                if m.ty != NLMSG_ERROR {
                    continue;
                }
                let idx = m.seq.wrapping_sub(base) as usize;
                if idx >= sent || results[idx].is_some() {
                    continue;
                }
                let (code, ext) = parse_error(m.flags, m.payload);
                results[idx] = Some(if code == 0 {
                    Ok(())
                } else {
                    Err(RawErr { errno: -code, ext })
                });
                *pending -= 1;
            }
            if blocking {
                return Ok(());
            }
        }
    }

    /// One acked request.
    pub(crate) fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<(), RawErr> {
        let mut msg = Some(msg);
        let mut r = self.pipeline(1, |_, seq, out| {
            if let Some(m) = msg.take() {
                encode(m, NLM_F_REQUEST | NLM_F_ACK | flags, seq, out);
            }
        });
        r.pop().unwrap_or(Err(RawErr {
            errno: libc::EIO,
            ext: None,
        }))
    }

    /// A GET for one object: the kernel answers with the object or an error.
    pub(crate) fn get(
        &mut self,
        msg: RouteNetlinkMessage,
        op: &dyn Fn() -> String,
    ) -> Result<Result<RouteNetlinkMessage, RawErr>, NetlinkError> {
        let seq = self.next_seq();
        let mut out = Vec::new();
        encode(msg, NLM_F_REQUEST, seq, &mut out);
        send_all(&self.sock, &out).map_err(|e| NetlinkError::socket(op(), e))?;
        loop {
            let len =
                recv_reply(&self.sock, &mut self.buf).map_err(|e| NetlinkError::socket(op(), e))?;
            for m in split(&self.buf[..len]) {
                let m = m.map_err(|detail| NetlinkError::Decode { op: op(), detail })?;
                if m.seq != seq {
                    continue;
                }
                match m.ty {
                    NLMSG_ERROR => {
                        let (code, ext) = parse_error(m.flags, m.payload);
                        if code != 0 {
                            return Ok(Err(RawErr { errno: -code, ext }));
                        }
                    }
                    NLMSG_NOOP | NLMSG_DONE | NLMSG_OVERRUN => {}
                    _ => return Ok(Ok(decode(&m, op)?)),
                }
            }
        }
    }

    /// A full dump, retried from scratch when the kernel flags it as interrupted.
    pub(crate) fn dump(
        &mut self,
        msg: RouteNetlinkMessage,
        op: &dyn Fn() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        for attempt in 1..=DUMP_ATTEMPTS {
            let seq = self.next_seq();
            let mut out = Vec::new();
            encode(msg.clone(), NLM_F_REQUEST | NLM_F_DUMP, seq, &mut out);
            send_all(&self.sock, &out).map_err(|e| NetlinkError::socket(op(), e))?;
            let mut objects = Vec::new();
            let mut interrupted = false;
            let mut decode_error = None;
            'datagrams: loop {
                let len = recv_reply(&self.sock, &mut self.buf)
                    .map_err(|e| NetlinkError::socket(op(), e))?;
                for m in split(&self.buf[..len]) {
                    let m = m.map_err(|detail| NetlinkError::Decode { op: op(), detail })?;
                    if m.seq != seq {
                        continue;
                    }
                    if m.flags & NLM_F_DUMP_INTR != 0 {
                        interrupted = true;
                    }
                    match m.ty {
                        NLMSG_DONE => {
                            let (code, ext) = parse_done(m.flags, m.payload);
                            if code != 0 {
                                return Err(NetlinkError::kernel(op(), -code, ext));
                            }
                            break 'datagrams;
                        }
                        NLMSG_ERROR => {
                            let (code, ext) = parse_error(m.flags, m.payload);
                            if code != 0 {
                                return Err(NetlinkError::kernel(op(), -code, ext));
                            }
                        }
                        NLMSG_NOOP | NLMSG_OVERRUN => {}
                        _ => match decode(&m, op) {
                            Ok(obj) => objects.push(obj),
                            // Keep reading to the end so the rest of this dump does not
                            // linger in the socket.
                            Err(e) => decode_error = decode_error.or(Some(e)),
                        },
                    }
                }
            }
            if let Some(e) = decode_error {
                return Err(e);
            }
            if !interrupted {
                return Ok(objects);
            }
            tracing::debug!("{}: dump interrupted (attempt {attempt}), retrying", op());
        }
        Err(NetlinkError::DumpInterrupted {
            op: op(),
            attempts: DUMP_ATTEMPTS,
        })
    }
}

impl Conn {
    /// Sends `msg`, a request the caller encoded (its sequence number is set here), and gives
    /// every message of its answer, in order: up to the acknowledgement or error of a plain
    /// request, up to NLMSG_DONE of a dump. For protocols whose messages the typed API does
    /// not model (generic netlink).
    #[cfg(feature = "daemon")]
    pub(crate) fn exchange(&mut self, mut msg: Vec<u8>, dump: bool) -> io::Result<Vec<u8>> {
        let seq = self.next_seq();
        if let Some(h) = msg.get_mut(8..12) {
            h.copy_from_slice(&seq.to_ne_bytes());
        }
        send_all(&self.sock, &msg)?;
        let mut answer = Vec::new();
        loop {
            let len = recv_reply(&self.sock, &mut self.buf)?;
            let mut done = false;
            for m in split(&self.buf[..len]) {
                let m = m.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                // Only this request's messages (a stale answer has another sequence number).
                if m.seq != seq {
                    continue;
                }
                answer.extend_from_slice(m.whole);
                answer.resize(align4(answer.len()), 0);
                // An error or acknowledgement ends any answer, NLMSG_DONE a dump, and the one
                // reply a plain request.
                done |= m.ty == NLMSG_ERROR || m.ty == NLMSG_DONE || !dump;
            }
            if done {
                return Ok(answer);
            }
        }
    }
}

#[cfg(feature = "policy")]
impl Conn {
    /// Sends `msgs`, requests the caller encoded (their sequence numbers are set here), in one
    /// sendmsg(), as an nfnetlink batch must travel, and gives each one's answer (`None`: none
    /// came). Waits until every request flagged NLM_F_ACK is answered or any error came: the
    /// kernel answers a batch inside the sendmsg(), so what is queued then is all there is.
    pub(crate) fn batch(
        &mut self,
        mut msgs: Vec<Vec<u8>>,
    ) -> io::Result<Vec<Option<Result<(), RawErr>>>> {
        let base = self.seq.wrapping_add(1);
        let mut out = Vec::new();
        let mut awaited = 0usize;
        for (i, m) in msgs.iter_mut().enumerate() {
            if let Some(h) = m.get_mut(8..12) {
                h.copy_from_slice(&base.wrapping_add(i as u32).to_ne_bytes());
            }
            if m.get(6..8)
                .is_some_and(|f| u16::from_ne_bytes([f[0], f[1]]) & NLM_F_ACK != 0)
            {
                awaited += 1;
            }
            out.extend_from_slice(m);
            out.resize(align4(out.len()), 0);
        }
        self.seq = self.seq.wrapping_add(msgs.len() as u32);
        send_all(&self.sock, &out)?;
        let mut answers: Vec<Option<Result<(), RawErr>>> = vec![None; msgs.len()];
        let mut failed = false;
        while awaited > 0 && !failed {
            let len = recv_reply(&self.sock, &mut self.buf)?;
            let got = answer_batch(&self.buf[..len], base, &mut answers)?;
            awaited = awaited.saturating_sub(got.0);
            failed |= got.1;
        }
        // Answers the kernel queued after the first error (the batch's other messages).
        while let Some(len) = recv_datagram(&self.sock, &mut self.buf, libc::MSG_DONTWAIT)? {
            answer_batch(&self.buf[..len], base, &mut answers)?;
        }
        Ok(answers)
    }
}

/// Files the answers in one datagram by sequence number; (how many, whether any was an error).
#[cfg(feature = "policy")]
fn answer_batch(
    datagram: &[u8],
    base: u32,
    answers: &mut [Option<Result<(), RawErr>>],
) -> io::Result<(usize, bool)> {
    let (mut count, mut failed) = (0, false);
    for m in split(datagram) {
        let m = m.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let idx = m.seq.wrapping_sub(base) as usize;
        if m.ty != NLMSG_ERROR || idx >= answers.len() || answers[idx].is_some() {
            continue;
        }
        let (code, ext) = parse_error(m.flags, m.payload);
        answers[idx] = Some(if code == 0 {
            Ok(())
        } else {
            failed = true;
            Err(RawErr { errno: -code, ext })
        });
        count += 1;
    }
    Ok((count, failed))
}

fn lose_pending(results: &mut [Option<Result<(), RawErr>>], pending: &mut usize, errno: i32) {
    for r in results.iter_mut().filter(|r| r.is_none()) {
        *r = Some(Err(RawErr {
            errno,
            ext: Some("acknowledgement lost; the outcome is unknown".into()),
        }));
    }
    *pending = 0;
}

/// Opens a bound netlink socket of `protocol` with a large receive buffer.
pub(crate) fn open_socket(protocol: isize, rcvbuf: usize) -> Result<Socket, NetlinkError> {
    let mut sock =
        Socket::new(protocol).map_err(|e| NetlinkError::socket("open a netlink socket", e))?;
    sock.bind_auto()
        .map_err(|e| NetlinkError::socket("bind a netlink socket", e))?;
    set_rcvbuf(&sock, rcvbuf);
    Ok(sock)
}

/// SO_RCVBUFFORCE passes rmem_max when we hold CAP_NET_ADMIN; plain SO_RCVBUF is the fallback
/// (silently capped by rmem_max).
fn set_rcvbuf(sock: &Socket, size: usize) {
    let val = size.min(i32::MAX as usize) as libc::c_int;
    let set = |opt| {
        // SAFETY: a valid fd and a pointer to a c_int that outlives the call.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &val as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if set(SO_RCVBUFFORCE) != 0 && set(libc::SO_RCVBUF) != 0 {
        tracing::debug!(
            "netlink: could not enlarge the receive buffer: {}",
            io::Error::last_os_error()
        );
    }
}

/// A pseudo-random start so two sockets of one process never share sequence numbers.
fn initial_seq() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ std::process::id().rotate_left(16)
}

/// Appends one request, 4-byte aligned.
pub(crate) fn encode(msg: RouteNetlinkMessage, flags: u16, seq: u32, out: &mut Vec<u8>) {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    nl.finalize();
    let start = out.len();
    let len = nl.buffer_len();
    out.resize(start + align4(len), 0);
    nl.serialize(&mut out[start..start + len]);
}

fn send_all(sock: &Socket, buf: &[u8]) -> io::Result<()> {
    loop {
        match sock.send(buf, 0) {
            Ok(n) if n == buf.len() => return Ok(()),
            Ok(n) => {
                return Err(io::Error::other(format!(
                    "short netlink send: {n} of {} bytes",
                    buf.len()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Reads one datagram from the kernel. Ok(None): nothing queued (only with MSG_DONTWAIT).
/// Datagrams from other sockets (a non-zero sender port) are dropped.
pub(crate) fn recv_datagram(
    sock: &Socket,
    buf: &mut [u8],
    flags: libc::c_int,
) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: zeroed sockaddr_nl is a valid value; recvfrom writes at most buf.len() bytes
        // and at most addrlen bytes of address.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut addrlen = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        let n = unsafe {
            libc::recvfrom(
                sock.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                flags | libc::MSG_TRUNC,
                &mut addr as *mut libc::sockaddr_nl as *mut libc::sockaddr,
                &mut addrlen,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(e),
            }
        }
        let n = n as usize;
        if n > buf.len() {
            return Err(io::Error::other(format!(
                "a {n}-byte netlink datagram did not fit the {}-byte buffer",
                buf.len()
            )));
        }
        if addr.nl_pid != 0 {
            continue;
        }
        return Ok(Some(n));
    }
}

/// A blocking read that turns the receive timeout into an error.
fn recv_reply(sock: &Socket, buf: &mut [u8]) -> io::Result<usize> {
    recv_datagram(sock, buf, 0)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no reply from the kernel within {REPLY_TIMEOUT:?}"),
        )
    })
}

fn set_recv_timeout(sock: &Socket, t: std::time::Duration) {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid fd and a pointer to a timeval that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(
            "netlink: could not set a receive timeout: {}",
            io::Error::last_os_error()
        );
    }
}

/// One netlink message inside a datagram.
pub(crate) struct Raw<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
    pub whole: &'a [u8],
}

/// Splits a datagram into its messages.
pub(crate) fn split(buf: &[u8]) -> impl Iterator<Item = Result<Raw<'_>, String>> {
    let mut off = 0usize;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || off + 16 > buf.len() {
            return None;
        }
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().ok()?) as usize;
        if len < 16 || off + len > buf.len() {
            failed = true;
            return Some(Err(format!(
                "netlink message length {len} at offset {off} overruns a {}-byte datagram",
                buf.len()
            )));
        }
        let h = &buf[off..off + len];
        let raw = Raw {
            ty: u16::from_ne_bytes([h[4], h[5]]),
            flags: u16::from_ne_bytes([h[6], h[7]]),
            seq: u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
            payload: &h[16..],
            whole: h,
        };
        off += align4(len);
        Some(Ok(raw))
    })
}

fn decode(m: &Raw<'_>, op: &dyn Fn() -> String) -> Result<RouteNetlinkMessage, NetlinkError> {
    NetlinkMessage::<RouteNetlinkMessage>::deserialize(m.whole)
        .map_err(|e| NetlinkError::Decode {
            op: op(),
            detail: e.to_string(),
        })
        .and_then(|nl| match nl.payload {
            NetlinkPayload::InnerMessage(inner) => Ok(inner),
            other => Err(NetlinkError::Decode {
                op: op(),
                detail: format!("unexpected message type {}", other.message_type()),
            }),
        })
}

/// (code, extended-ack message) of an NLMSG_ERROR payload; code 0 is a plain ack.
pub(crate) fn parse_error(flags: u16, payload: &[u8]) -> (i32, Option<String>) {
    let Some(code) = payload.get(0..4) else {
        return (-libc::EIO, None);
    };
    let code = i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
    if flags & NLM_F_ACK_TLVS == 0 {
        return (code, None);
    }
    // The TLVs follow the echoed request: just its header when capped, else all of it.
    let echoed = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        payload
            .get(4..8)
            .map(|b| align4(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize))
            .unwrap_or(16)
    };
    (code, payload.get(4 + echoed..).and_then(ext_msg))
}

pub(crate) fn parse_done(flags: u16, payload: &[u8]) -> (i32, Option<String>) {
    let Some(code) = payload.get(0..4) else {
        return (0, None);
    };
    let code = i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
    let ext = if flags & NLM_F_ACK_TLVS != 0 {
        payload.get(4..).and_then(ext_msg)
    } else {
        None
    };
    (code, ext)
}

fn ext_msg(mut tlvs: &[u8]) -> Option<String> {
    while tlvs.len() >= 4 {
        let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & 0x3fff;
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let s = &tlvs[4..len];
            let s = s.split(|b| *b == 0).next().unwrap_or(s);
            return Some(String::from_utf8_lossy(s).into_owned());
        }
        tlvs = tlvs.get(align4(len)..).unwrap_or(&[]);
    }
    None
}

pub(crate) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = 16 + payload.len();
        let mut v = Vec::new();
        v.extend_from_slice(&(len as u32).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(payload);
        v.resize(align4(v.len()), 0);
        v
    }

    #[test]
    fn split_walks_aligned_messages() {
        let mut d = msg(NLMSG_ERROR, 0, 7, &[0; 20]);
        d.extend(msg(NLMSG_DONE, 0, 8, &[1, 2, 3]));
        let got: Vec<_> = split(&d).map(|m| m.unwrap()).collect();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].ty, got[0].seq), (NLMSG_ERROR, 7));
        assert_eq!(
            (got[1].ty, got[1].seq, got[1].payload),
            (NLMSG_DONE, 8, &[1u8, 2, 3][..])
        );
    }

    #[test]
    fn split_reports_a_truncated_message() {
        let mut d = msg(NLMSG_ERROR, 0, 7, &[0; 20]);
        d[0] = 200;
        assert!(split(&d).next().unwrap().is_err());
    }

    #[test]
    fn capped_error_with_extended_ack_message() {
        let mut p = (-libc::EEXIST).to_ne_bytes().to_vec();
        p.extend_from_slice(&[0u8; 16]); // echoed request header
        let text = b"Route exists\0";
        p.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        p.extend_from_slice(text);
        let (code, ext) = parse_error(NLM_F_CAPPED | NLM_F_ACK_TLVS, &p);
        assert_eq!(code, -libc::EEXIST);
        assert_eq!(ext.as_deref(), Some("Route exists"));
        assert_eq!(parse_error(0, &0i32.to_ne_bytes()), (0, None));
    }

    #[test]
    fn encoded_requests_carry_flags_and_sequence() {
        let mut out = Vec::new();
        let mut link = netlink_packet_route::link::LinkMessage::default();
        link.header.index = 3;
        encode(
            RouteNetlinkMessage::GetLink(link.clone()),
            NLM_F_REQUEST,
            41,
            &mut out,
        );
        encode(
            RouteNetlinkMessage::DelLink(link),
            NLM_F_REQUEST | NLM_F_ACK,
            42,
            &mut out,
        );
        let got: Vec<_> = split(&out).map(|m| m.unwrap()).collect();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].seq, got[0].flags), (41, NLM_F_REQUEST));
        assert_eq!((got[1].seq, got[1].flags), (42, NLM_F_REQUEST | NLM_F_ACK));
        assert_eq!(got[1].ty, libc::RTM_DELLINK);
    }
}
