//! STATUS: whether an ADD would succeed now. Code 50 with the reason when weftd has not
//! published this host's subnet or when every address of one of its subnets (IPv4 or IPv6)
//! is reserved.

use super::HostSubnet;
use crate::config::NetConf;
use crate::error::{code, CniError, Result};
use crate::ipam::Store;

pub fn run(conf: &NetConf) -> Result<()> {
    let unavailable = |e: CniError| CniError::new(code::NOT_AVAILABLE, e.msg);
    let host = HostSubnet::read(&conf.subnet_file).map_err(unavailable)?;
    let store = Store::lock(&conf.network_dir()).map_err(unavailable)?;
    for family in &host.families {
        let range = &family.range;
        if store.free_count(range).map_err(unavailable)? == 0 {
            return Err(CniError::new(
                code::NOT_AVAILABLE,
                format!(
                    "no free address: the pool {} is exhausted (every address is reserved in {})",
                    range.subnet,
                    store.dir().display()
                ),
            ));
        }
    }
    Ok(())
}
