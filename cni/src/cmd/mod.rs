//! One file per CNI command, plus what ADD and STATUS share: reading subnet.env with the
//! errors a runtime can act on.

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod status;
pub mod version;

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use weft::subnet_env::{SubnetEnv, SubnetEnvError};

use crate::error::{code, CniError, Result};
use crate::ipam::Range;

/// This host's share of the overlay as weftd published it: one subnet per address family,
/// IPv4 first, in the order flannel's own plugin hands them to host-local as ranges.
pub struct HostSubnet {
    pub families: Vec<FamilySubnet>,
    pub mtu: u32,
}

/// One family's part of subnet.env.
pub struct FamilySubnet {
    /// FLANNEL_NETWORK or FLANNEL_IPV6_NETWORK, the route the container gets through the
    /// gateway.
    pub network: Option<IpNet>,
    /// FLANNEL_SUBNET or FLANNEL_IPV6_SUBNET: the gateway address with the subnet's prefix
    /// (`198.19.3.1/24`, `2001:db8:3::1/64`), as the bridge holds it.
    pub gateway: IpNet,
    /// Where the containers' addresses come from.
    pub range: Range,
}

impl HostSubnet {
    /// A missing file means weftd has not come up yet: code 11, so the runtime tries again.
    /// IPv6 alone (flannel's Kubernetes mode can write that) is served as well as IPv4 alone
    /// or both; a file with neither subnet is refused by the parser, naming FLANNEL_SUBNET.
    pub fn read(path: &Path) -> Result<HostSubnet> {
        let env = match SubnetEnv::read(path) {
            Ok(env) => env,
            Err(SubnetEnvError::Read(e)) if e.is_not_found() => {
                return Err(CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!(
                        "{} does not exist: weftd is not ready (it has not written this host's \
                         subnet yet); try again later",
                        path.display()
                    ),
                ))
            }
            Err(e) => return Err(CniError::new(code::SUBNET_ENV, e.to_string())),
        };
        let pairs = [
            (env.subnet.map(IpNet::V4), env.network.map(IpNet::V4)),
            (
                env.ipv6_subnet.map(IpNet::V6),
                env.ipv6_network.map(IpNet::V6),
            ),
        ];
        let families = pairs
            .into_iter()
            .filter_map(|(gateway, network)| Some((gateway?, network)))
            .enumerate()
            .map(|(index, (gateway, network))| FamilySubnet {
                network,
                gateway,
                range: Range {
                    subnet: gateway.trunc(),
                    gateway: gateway.addr(),
                    index,
                },
            })
            .collect();
        Ok(HostSubnet {
            families,
            mtu: env.mtu,
        })
    }

    /// The subnet of `ip`'s family, if this host has one.
    pub fn family_of(&self, ip: IpAddr) -> Option<usize> {
        self.families
            .iter()
            .position(|f| f.gateway.addr().is_ipv4() == ip.is_ipv4())
    }
}
