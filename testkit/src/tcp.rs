//! TCP as a container sees it: a listener inside a namespace (the kernel completes the
//! handshake from its backlog, so nothing needs to accept), and a connect from another
//! namespace that says whether the connection was made within a timeout. A namespace is a
//! [`Netns`] or any namespace file (a container's `/proc/PID/ns/net`).

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use crate::netns::Netns;

/// Listens on `addr:port` inside `ns` until dropped.
pub fn listen(ns: &Netns, addr: IpAddr, port: u16) -> TcpListener {
    listen_at(&ns.path(), addr, port)
}

/// [`listen`] inside the namespace of the file `netns`.
pub fn listen_at(netns: &Path, addr: IpAddr, port: u16) -> TcpListener {
    weft::netlink::run_in_netns(netns, move || TcpListener::bind((addr, port)))
        .expect("entering the namespace")
        .unwrap_or_else(|e| panic!("listening on {addr}:{port} in {}: {e}", netns.display()))
}

/// Whether a TCP connection from inside `ns` to `addr:port` is made within `timeout`.
pub fn connects(ns: &Netns, addr: IpAddr, port: u16, timeout: Duration) -> bool {
    let to = SocketAddr::new(addr, port);
    weft::netlink::run_in_netns(&ns.path(), move || TcpStream::connect_timeout(&to, timeout))
        .expect("entering the namespace")
        .is_ok()
}
