//! STATUS: whether an ADD would succeed now. Code 50 with the reason when weftd has not
//! published this host's subnet or when every address of it is reserved.

use super::HostSubnet;
use crate::config::NetConf;
use crate::error::{code, CniError, Result};
use crate::ipam::Store;

pub fn run(conf: &NetConf) -> Result<()> {
    let unavailable = |e: CniError| CniError::new(code::NOT_AVAILABLE, e.msg);
    let host = HostSubnet::read(&conf.subnet_file).map_err(unavailable)?;
    let store = Store::lock(&conf.network_dir()).map_err(unavailable)?;
    let free = store
        .free_count(host.subnet(), host.gateway_addr())
        .map_err(unavailable)?;
    if free == 0 {
        return Err(CniError::new(
            code::NOT_AVAILABLE,
            format!(
                "no free address: the pool {} is exhausted (every address is reserved in {})",
                host.subnet(),
                store.dir().display()
            ),
        ));
    }
    Ok(())
}
