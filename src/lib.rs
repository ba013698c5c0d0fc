//! weft: an overlay network for containers, compatible with flannel's etcd mode.
//!
//! The pure core (no I/O, unit-tested without root): [`config`] parses the network config,
//! [`subnet`] does subnet arithmetic for either family and lease-key names, [`lease`] holds a
//! lease and its flannel-format attributes, [`subnet_env`] reads and writes `subnet.env`,
//! [`docker`] turns it into dockerd's settings, and [`backend`] registers the backends and
//! reads their config.
//!
//! The edges, each tested against the real thing: [`netlink`] is a synchronous, pipelined
//! netlink client shared by `weftd` and the CNI plugin; with the `daemon` feature, [`store`]
//! keeps leases in etcd, each [`backend`] says what a lease becomes in the kernel, and
//! [`reconcile`] turns leases into that desired state, diffs it against the kernel and the
//! last applied state (one path for weftd's datapath and `weftctl check`); [`firewall`] owns
//! everything weft puts in nftables and iptables (masquerade, forward accepts, and the accepts
//! in iptables' FORWARD chain where Docker's drop would otherwise win), written as one typed
//! batch, read back, and removed when no longer wanted; [`agent`] runs the host's life cycle
//! and [`http`] serves health and metrics; [`probe`] sends ICMP echo to every peer's overlay
//! address and keeps each peer's reachability; [`status`] keeps the host's status record in
//! etcd and computes the cluster view `weftctl status` prints.

pub mod backend;
pub mod config;
pub mod docker;
#[cfg(feature = "daemon")]
pub mod duration;
pub mod file;
pub mod json;
pub mod lease;
pub mod show;
pub mod subnet;
pub mod subnet_env;

#[cfg(feature = "netlink")]
pub mod bridge;
#[cfg(feature = "netlink")]
pub mod netlink;

#[cfg(feature = "daemon")]
pub mod store;

#[cfg(feature = "daemon")]
pub mod agent;
#[cfg(feature = "daemon")]
pub mod check;
#[cfg(feature = "daemon")]
pub mod datapath;
#[cfg(feature = "daemon")]
pub mod environ;
#[cfg(feature = "daemon")]
pub mod firewall;
#[cfg(feature = "daemon")]
pub mod http;
#[cfg(feature = "daemon")]
pub mod iface;
#[cfg(feature = "daemon")]
pub mod logging;
#[cfg(feature = "daemon")]
pub mod metrics;
#[cfg(feature = "daemon")]
pub mod plan;
#[cfg(feature = "daemon")]
pub mod probe;
#[cfg(feature = "daemon")]
pub mod status;
