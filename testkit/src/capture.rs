//! A packet capture on one interface of a namespace, with an AF_PACKET socket (no tcpdump
//! needed): every frame the interface sees while the capture runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::netns::Netns;

pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Vec<u8>>>>,
}

/// An IPv4 packet's addresses, protocol and (for UDP) ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Summary {
    pub src: std::net::Ipv4Addr,
    pub dst: std::net::Ipv4Addr,
    pub protocol: u8,
    pub ports: Option<(u16, u16)>,
}

impl Capture {
    /// Starts capturing on `iface` inside `ns`, or on all its interfaces when `iface` is
    /// empty (a bridge's own device does not see the frames it forwards between ports).
    pub fn start(ns: &Netns, iface: &str) -> Capture {
        let iface = std::ffi::CString::new(iface).expect("an interface name");
        let fd = weft::netlink::run_in_netns(&ns.path(), move || unsafe {
            let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let index = if iface.is_empty() {
                0
            } else {
                libc::if_nametoindex(iface.as_ptr())
            };
            assert!(index != 0 || iface.is_empty(), "no interface {iface:?}");
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto as u16;
            sll.sll_ifindex = index as i32;
            let rc = libc::bind(
                fd,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert!(
                rc == 0,
                "binding the capture: {}",
                std::io::Error::last_os_error()
            );
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
            fd
        })
        .expect("entering the namespace to capture");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65536];
            while !flag.load(Ordering::Relaxed) {
                let n =
                    unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
                if n > 0 {
                    frames.push(buf[..n as usize].to_vec());
                }
            }
            unsafe { libc::close(fd) };
            frames
        });
        Capture {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the capture and returns the frames seen.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("a capture runs")
            .join()
            .expect("the capture thread")
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The IPv4 header of an Ethernet frame (and its UDP ports), if it carries IPv4.
pub fn ipv4(frame: &[u8]) -> Option<Ipv4Summary> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let protocol = ip[9];
    let addr = |i: usize| std::net::Ipv4Addr::new(ip[i], ip[i + 1], ip[i + 2], ip[i + 3]);
    let ports = (protocol == 17 && ip.len() >= ihl + 4).then(|| {
        (
            u16::from_be_bytes([ip[ihl], ip[ihl + 1]]),
            u16::from_be_bytes([ip[ihl + 2], ip[ihl + 3]]),
        )
    });
    Some(Ipv4Summary {
        src: addr(12),
        dst: addr(16),
        protocol,
        ports,
    })
}

/// Whether `needle` appears anywhere in `frame`.
pub fn contains(frame: &[u8], needle: &[u8]) -> bool {
    frame.windows(needle.len()).any(|w| w == needle)
}
