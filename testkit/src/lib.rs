//! weft's test harness, shared by the integration tests of both crates and by the benches:
//! real etcd processes, network namespaces, labs of hosts running weftd, container runtimes
//! and systemd machines. Each lives behind a guard whose `Drop` removes what it made, also
//! when a test fails. A missing tool or binary fails the test with a message that names it.
//!
//! - [`netns`]: namespaces and the veths between them; [`cmd`]: running tools.
//! - [`etcd`], [`etcd_cluster`]: one etcd, or three members in namespaces; [`fleet`]: light
//!   hosts that do to etcd what weftd does, to count what an event costs it.
//! - [`lab`] (and [`lab6`], [`wg`]): an underlay, etcd on it and hosts running weftd; [`ping`]
//!   measures loss across what a test does to them; [`capture`] reads their frames.
//! - [`cni`] (the plugin on a lab host), [`plugin`] (the plugin's own tests), [`podman`],
//!   [`docker`], [`machines`] (systemd machines booted with nspawn).
//! - [`bare_weftd`]: weftd outside any namespace, for tests that never get past etcd.
//! - [`tcp`], [`datagram`]: TCP, UDP and SCTP between namespaces, allowed or not.
//! - [`prometheus`]: a real Prometheus scraping a lab and evaluating weft's shipped rules.
//! - [`live`]: weftctl against a lab, as an operator changes a running network.
//! - [`bins`]: where weftd, weftctl and the plugin were built; [`wait`]: polling instead of
//!   sleeping.

pub mod bare_weftd;
pub mod bins;
pub mod capture;
pub mod cmd;
pub mod cni;
pub mod datagram;
pub mod docker;
pub mod etcd;
pub mod etcd_cluster;
pub mod fleet;
pub mod http;
pub mod lab;
pub mod lab6;
pub mod leases;
pub mod live;
pub mod machines;
pub mod netns;
pub mod ping;
pub mod plugin;
pub mod podman;
pub mod prometheus;
pub mod tcp;
pub mod wait;
pub mod wg;
