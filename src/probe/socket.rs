//! The probes' sockets: one per address family, raw (weftd holds CAP_NET_RAW) with a kernel
//! filter that passes only what can answer a probe, or an unprivileged ICMP datagram socket
//! where raw is refused.

use std::io;

use surge_ping::{Client, ICMP};

/// A surge-ping client for `kind`, filtered when raw.
pub(super) fn open(kind: ICMP) -> io::Result<Client> {
    let cfg = surge_ping::Config::builder()
        .kind(kind)
        .sock_type_hint(socket2::Type::RAW)
        .build();
    let client = Client::new(&cfg)?;
    let socket = client.get_socket();
    // A datagram ICMP socket only ever sees its own replies; a raw one sees every ICMP packet
    // the host receives, including the echo requests of every peer probing this host.
    if socket.get_type() == socket2::Type::RAW {
        pass_only_replies(socket.get_native_sock(), kind)?;
    }
    Ok(client)
}

/// ICMP_FILTER and ICMP6_FILTER (linux/icmp.h, linux/icmpv6.h): option 1 at SOL_RAW and
/// IPPROTO_ICMPV6, a bit map of types in which a set bit drops the type.
const ICMP_FILTER: libc::c_int = 1;
const ICMP6_FILTER: libc::c_int = 1;

/// Lets through to a raw socket only what can answer a probe: echo replies and the errors
/// that quote a request (destination unreachable, time exceeded, parameter problem; for
/// ICMPv6 also packet too big), so the other ICMP traffic a host gets wakes nobody.
fn pass_only_replies(fd: std::os::fd::RawFd, kind: ICMP) -> io::Result<()> {
    let (level, name, map) = match kind {
        ICMP::V4 => {
            let pass = [0u8, 3, 11, 12];
            let mut map = [u32::MAX; 1];
            for t in pass {
                map[0] &= !(1 << t);
            }
            (libc::SOL_RAW, ICMP_FILTER, map.to_vec())
        }
        ICMP::V6 => {
            let pass = [1u8, 2, 3, 4, 129];
            let mut map = [u32::MAX; 8];
            for t in pass {
                map[usize::from(t >> 5)] &= !(1 << (t & 31));
            }
            (libc::IPPROTO_ICMPV6, ICMP6_FILTER, map.to_vec())
        }
    };
    // SAFETY: fd is the client's open socket; the option value is `map`, valid for its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            map.as_ptr().cast(),
            (map.len() * std::mem::size_of::<u32>()) as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
