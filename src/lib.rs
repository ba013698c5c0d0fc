//! weft: an overlay network for containers, compatible with flannel's etcd mode.
//!
//! The pure core (no I/O, unit-tested without root): [`config`] parses the network config,
//! [`subnet`] does subnet arithmetic for either family and lease-key names, [`lease`] holds a
//! lease with its backend data opaque, [`subnet_env`] reads and writes `subnet.env`,
//! [`docker`] turns it into dockerd's settings, [`backend`] registers the backends (each one
//! folder or file: its config, its lease data, its plan, its devices), and [`plan`] turns
//! leases into the desired kernel state and diffs it against the kernel (one path for weftd's
//! datapath and `weftctl check`).
//!
//! The edges, each tested against the real thing: [`netlink`] is a synchronous, pipelined
//! netlink client (route and generic) shared by `weftd` and the CNI plugin; with the `daemon`
//! feature, [`store`] keeps leases in etcd (its registry does the I/O, its allocator the
//! decisions), [`datapath`] keeps the kernel equal to the plan, [`firewall`] owns everything
//! weft puts in nftables and iptables, [`agent`] runs the host's life cycle, [`metrics`]
//! holds what the datapath and prober count and [`http`] serves it with health, status and
//! peers; [`probe`] keeps each peer's reachability; [`status`] keeps the host's status record
//! in etcd and computes the cluster view `weftctl status` prints; [`live`] decides what a
//! config change does to a running network and which backends a host runs while the fleet
//! moves from one to another.

// No function over 80 lines (clippy.toml); CI runs clippy with -D warnings.
#![warn(clippy::too_many_lines)]

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
#[cfg(feature = "policy")]
pub mod environ;
#[cfg(feature = "policy")]
pub mod firewall;
#[cfg(feature = "daemon")]
pub mod http;
#[cfg(feature = "daemon")]
pub mod iface;
#[cfg(feature = "daemon")]
pub mod live;
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
