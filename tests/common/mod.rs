//! Test harness shared by the integration tests: real etcd processes and network namespaces,
//! each removed when its guard drops, also when a test fails.
#![allow(dead_code)]

pub mod bare_weftd;
pub mod capture;
pub mod cni;
pub mod docker;
pub mod etcd;
pub mod etcd_cluster;
pub mod lab;
pub mod lab6;
pub mod machines;
pub mod netns;
pub mod podman;
pub mod wg;
