//! UDP and SCTP as a container sees them: whether a datagram sent from inside one namespace
//! to an address and port arrives inside another within a timeout. Each probe carries a
//! nonce, and a new source port each time, so nothing earlier (a reply's conntrack entry,
//! a late copy) can make it look allowed.
//!
//! SCTP: this kernel has no SCTP sockets (CONFIG_IP_SCTP is off; conntrack and nftables
//! know the protocol), so both ends are raw IP sockets of protocol 132. The packet on the
//! wire is a real SCTP INIT with its CRC-32c, which nftables matches (`sctp dport`) and
//! conntrack tracks as any SCTP packet; the receiver reads it off its raw socket.

use std::io::Read as _;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::netns::Netns;

/// How often a probe is sent again while it has not arrived (the first may wait for ARP).
const RESEND: Duration = Duration::from_millis(100);

fn nonce() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(1);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    t ^ (std::process::id() << 16) ^ N.fetch_add(0x9e37, Ordering::Relaxed)
}

/// A socket made inside `ns` (a socket stays in the namespace it was made in).
fn socket_in(
    ns: &Netns,
    make: impl FnOnce() -> std::io::Result<Socket> + Send + 'static,
) -> Socket {
    weft::netlink::run_in_netns(&ns.path(), make)
        .expect("entering the namespace")
        .unwrap_or_else(|e| panic!("a socket in {}: {e}", ns.name()))
}

/// Whether a UDP datagram from inside `from` reaches `addr:port` inside `to` in `timeout`.
pub fn udp_reaches(from: &Netns, to: &Netns, addr: IpAddr, port: u16, timeout: Duration) -> bool {
    let domain = Domain::for_address(SocketAddr::new(addr, port));
    let rx = socket_in(to, move || {
        let s = Socket::new(domain, Type::DGRAM, None)?;
        s.bind(&SocketAddr::new(addr, port).into())?;
        Ok(s)
    });
    let rx: UdpSocket = rx.into();
    let tx: UdpSocket = socket_in(from, move || Socket::new(domain, Type::DGRAM, None)).into();
    let n = nonce().to_be_bytes();
    exchange(
        timeout,
        |_| tx.send_to(&n, (addr, port)).map(drop),
        |buf| {
            rx.set_read_timeout(Some(RESEND))?;
            let got = rx.recv(buf)?;
            Ok(buf[..got] == n)
        },
    )
}

/// Whether an SCTP INIT from inside `from` reaches `addr:port` inside `to` in `timeout`.
pub fn sctp_reaches(from: &Netns, to: &Netns, addr: IpAddr, port: u16, timeout: Duration) -> bool {
    let target = SocketAddr::new(addr, 0);
    let domain = Domain::for_address(target);
    let raw = move || Socket::new(domain, Type::RAW, Some(Protocol::from(132)));
    let rx = socket_in(to, raw);
    let tx = socket_in(from, raw);
    let tag = nonce();
    let to_addr = SockAddr::from(target);
    // IPv4 raw sockets hand over the IP header too; IPv6 ones do not.
    let skip = |buf: &[u8]| match addr {
        IpAddr::V4(_) => usize::from(buf.first().map_or(0, |b| b & 0x0f)) * 4,
        IpAddr::V6(_) => 0,
    };
    exchange(
        timeout,
        |i| {
            let src = (49152 + (tag % 8000) as u16).wrapping_add(i);
            tx.send_to(&sctp_init(src, port, tag), &to_addr).map(drop)
        },
        |buf| {
            rx.set_read_timeout(Some(RESEND))?;
            let got = (&rx).read(buf)?;
            let p = &buf[skip(buf).min(got)..got];
            Ok(p.len() >= 20 && p[2..4] == port.to_be_bytes() && p[16..20] == tag.to_be_bytes())
        },
    )
}

/// Sends (`send(attempt)`) and receives (`recv` says whether what came is the probe) until
/// the probe arrived or `timeout` passed.
fn exchange(
    timeout: Duration,
    mut send: impl FnMut(u16) -> std::io::Result<()>,
    mut recv: impl FnMut(&mut [u8]) -> std::io::Result<bool>,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 2048];
    let mut attempt = 0u16;
    while Instant::now() < deadline {
        // A refused send (no route yet) is one more attempt, not an answer.
        let _ = send(attempt);
        attempt = attempt.wrapping_add(1);
        let resend_at = Instant::now() + RESEND;
        while Instant::now() < resend_at.min(deadline) {
            match recv(&mut buf) {
                Ok(true) => return true,
                Ok(false) => {}
                Err(_) => break,
            }
        }
    }
    false
}

/// An SCTP packet holding one INIT chunk whose initiate tag is `tag` (RFC 9260 3.3.2).
fn sctp_init(src: u16, dst: u16, tag: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.extend(src.to_be_bytes());
    p.extend(dst.to_be_bytes());
    p.extend(0u32.to_be_bytes()); // verification tag: 0 in an INIT
    p.extend(0u32.to_be_bytes()); // checksum, filled in below
    p.extend([1, 0]); // chunk type INIT, flags
    p.extend(20u16.to_be_bytes()); // chunk length
    p.extend(tag.to_be_bytes()); // initiate tag
    p.extend(65536u32.to_be_bytes()); // advertised receiver window
    p.extend(1u16.to_be_bytes()); // outbound streams
    p.extend(1u16.to_be_bytes()); // inbound streams
    p.extend(tag.to_be_bytes()); // initial TSN
    let sum = crc32c(&p);
    p[8..12].copy_from_slice(&sum.to_le_bytes());
    p
}

/// CRC-32C (Castagnoli), bit by bit: SCTP's checksum over 32 bytes a probe, where no crate
/// in the tree has it and a table would be longer than the loop.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82f6_3b78 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_has_the_check_value_of_its_definition() {
        // RFC 3720 B.4 and every CRC catalogue: CRC-32C of "123456789" is 0xE3069283.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        let p = sctp_init(5000, 9000, 7);
        assert_eq!(p.len(), 32);
        assert_eq!(&p[2..4], &9000u16.to_be_bytes());
    }
}
