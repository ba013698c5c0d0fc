//! IPv6 in the multi-host lab: underlay addresses 2001:db8::N/64 beside 198.18.0.N, each host's
//! IPv6 subnet and container address, and the IPv6 views of routes, neighbours and FDB.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use ipnet::Ipv6Net;
use weft::subnet_env::SubnetEnv;

use crate::lab::{Host, Lab};
use crate::ping::Pinger;
use crate::wait::wait_for;

/// A dual-stack VXLAN network: IPv4 198.19.0.0/16 and IPv6 2001:db8:100::/48 (/64 subnets).
pub const DUAL_CONFIG: &str = r#"{"Network":"198.19.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:100::/48","Backend":{"Type":"vxlan"}}"#;
/// The IPv6 VXLAN device weftd makes for DUAL_CONFIG (VNI 1).
pub const VXLAN6_DEVICE: &str = "flannel-v6.1";

impl Lab {
    /// [`Lab::new`] with every host given its IPv6 underlay address.
    pub fn dual(n: usize, config: &str) -> Lab {
        let lab = Lab::new(n, config);
        for h in &lab.hosts {
            h.add_ipv6();
        }
        lab
    }

    /// Gives every host its IPv4 and IPv6 container addresses (see [`Host::add_container6`]).
    pub fn add_containers6(&self) {
        for h in &self.hosts {
            h.add_container6();
        }
    }

    /// Waits (5 s) until every dual-stack host routes to every other one's IPv6 subnet.
    pub fn wait_converged6(&self, hosts: &[usize]) {
        for &i in hosts {
            for &j in hosts {
                if i == j {
                    continue;
                }
                let s = self.hosts[j].subnet6();
                let h = &self.hosts[i];
                let ok = wait_for(Duration::from_secs(5), || {
                    (!h.route6_to(s).is_empty()).then_some(())
                });
                assert!(
                    ok.is_some(),
                    "host {} has no route to {s} after 5 s:\n{}",
                    i + 1,
                    h.logs()
                );
            }
        }
    }
}

impl Host {
    /// The host's IPv6 underlay address: 2001:db8::N for 198.18.0.N (2001:db8:1::N for the far
    /// segment 198.18.1.N).
    pub fn ip6(&self) -> Ipv6Addr {
        let octets: Vec<u16> = self.ip.split('.').map(|o| o.parse().unwrap()).collect();
        Ipv6Addr::new(0x2001, 0xdb8, octets[2], 0, 0, 0, 0, octets[3])
    }

    /// Gives `eth0` its IPv6 underlay address, without duplicate address detection so it is
    /// usable at once.
    pub fn add_ipv6(&self) {
        let addr = format!("{}/64", self.ip6());
        self.ns.ip(&["addr", "add", &addr, "dev", "eth0", "nodad"]);
    }

    /// Whether `eth0` has its IPv6 underlay address (see [`Host::add_ipv6`]).
    pub fn has_ipv6(&self) -> bool {
        let want = format!("{}/64", self.ip6());
        self.ns
            .ip(&["-6", "-o", "addr", "show", "dev", "eth0"])
            .contains(&want)
    }

    /// This host's IPv6 subnet, from its subnet.env.
    pub fn subnet6(&self) -> Ipv6Net {
        SubnetEnv::read(&self.subnet_file)
            .expect("reading subnet.env")
            .subnet6_network()
            .unwrap_or_else(|| panic!("subnet.env has no FLANNEL_IPV6_SUBNET:\n{}", self.logs()))
    }

    /// The IPv6 address a "container" on this host has: the subnet's first address on `cni0`.
    pub fn container_ip6(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.subnet6().network()) + 1)
    }

    /// Gives the host its IPv4 and IPv6 container addresses (idempotent).
    pub fn add_container6(&self) {
        self.add_container();
        let addr = format!("{}/{}", self.container_ip6(), self.subnet6().prefix_len());
        self.ns
            .ip(&["addr", "replace", &addr, "dev", "cni0", "nodad"]);
    }

    /// One ping from this host's IPv6 container address to `dst`, 1 s timeout.
    pub fn ping6_from_container(&self, dst: Ipv6Addr) -> bool {
        self.ping_sized(dst.into(), None)
    }

    /// A ping from this host's container address of `dst`'s family, of `size` payload bytes
    /// that must not be fragmented (or an ordinary one).
    pub fn ping_sized(&self, dst: IpAddr, size: Option<u32>) -> bool {
        let src = match dst {
            IpAddr::V4(_) => self.container_ip().to_string(),
            IpAddr::V6(_) => self.container_ip6().to_string(),
        };
        let size = size.map(|s| s.to_string());
        let mut args = vec!["ping", "-c1", "-W1", "-I", &src];
        if let Some(s) = &size {
            args.extend(["-M", "do", "-s", s]);
        }
        let dst = dst.to_string();
        args.push(&dst);
        self.ns.exec(&args).status.success()
    }

    /// Pings `dst` from this host's IPv6 container address every 10 ms until finished.
    pub fn start_pinging6(&self, dst: Ipv6Addr) -> Pinger {
        Pinger::in_netns(&self.ns, self.container_ip6(), dst)
    }

    /// `ip -6 route show` for one destination.
    pub fn route6_to(&self, subnet: Ipv6Net) -> String {
        self.ns
            .ip(&["-6", "route", "show", &subnet.to_string()])
            .trim()
            .to_string()
    }

    /// `ip -6 neigh show` for the gateway address of `subnet` on the IPv6 VXLAN device.
    pub fn neighbour6_to(&self, subnet: Ipv6Net) -> String {
        let gw = subnet.network().to_string();
        let out = self
            .ns
            .try_ip(&["-6", "neigh", "show", &gw, "dev", VXLAN6_DEVICE]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The IPv6 VXLAN device's FDB entries that send to `dst`, one a line.
    pub fn fdb6_to(&self, dst: Ipv6Addr) -> String {
        let out = self
            .ns
            .exec(&["bridge", "fdb", "show", "dev", VXLAN6_DEVICE]);
        let want = format!("dst {dst} ");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| format!("{l} ").contains(&want))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
