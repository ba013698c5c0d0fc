//! One file per CNI command, plus what ADD and STATUS share: reading subnet.env with the
//! errors a runtime can act on.

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod status;
pub mod version;

use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use weft::subnet_env::{SubnetEnv, SubnetEnvError};

use crate::error::{code, CniError, Result};

/// This host's share of the overlay as weftd published it.
pub struct HostSubnet {
    /// FLANNEL_NETWORK, the route the container gets through the gateway.
    pub network: Option<Ipv4Net>,
    /// The gateway address with the subnet's prefix (`198.19.3.1/24`), as the bridge holds it.
    pub gateway: Ipv4Net,
    pub mtu: u32,
}

impl HostSubnet {
    pub fn subnet(&self) -> Ipv4Net {
        self.gateway.trunc()
    }

    pub fn gateway_addr(&self) -> Ipv4Addr {
        self.gateway.addr()
    }

    /// A missing file means weftd has not come up yet: code 11, so the runtime tries again.
    pub fn read(path: &Path) -> Result<HostSubnet> {
        let env = match SubnetEnv::read(path) {
            Ok(env) => env,
            Err(SubnetEnvError::Io { error, .. }) if error.kind() == ErrorKind::NotFound => {
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
        let gateway = env.subnet.ok_or_else(|| {
            CniError::new(
                code::SUBNET_ENV,
                format!(
                    "{} has no FLANNEL_SUBNET: weft's plugin assigns IPv4 addresses only",
                    path.display()
                ),
            )
        })?;
        Ok(HostSubnet {
            network: env.network,
            gateway,
            mtu: env.mtu,
        })
    }
}
