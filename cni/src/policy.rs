//! Network policy at ADD and DEL. weftd compiles the policies into address sets and a
//! program file next to subnet.env; the plugin records the new workload there and puts its
//! addresses into the sets the program chooses before ADD returns, under the lock weftd
//! writes the table with. So a container a policy selects refuses forbidden traffic from its
//! first packet, whether or not weftd or etcd are up; weftd publishes it to other hosts.

use std::net::IpAddr;

use weft::firewall::policy::local::{LocalError, Shared};
use weft::firewall::policy::Workload;

use crate::config::NetConf;
use crate::env::Attachment;
use crate::error::{code, CniError, Result};

/// The record's name: a container ID cannot hold '+', so it splits uniquely.
fn record_id(att: &Attachment) -> String {
    format!("{}+{}", att.container_id, att.ifname)
}

fn error(e: LocalError) -> CniError {
    let code = match e {
        LocalError::Sets(_) => code::KERNEL,
        _ => code::STORE,
    };
    CniError::new(code, format!("network policy: {e}"))
}

/// Records the workload and admits its addresses to its policy sets; on failure nothing
/// stays recorded (the caller releases the addresses).
pub fn admit(conf: &NetConf, att: &Attachment, addresses: Vec<IpAddr>) -> Result<()> {
    let shared = Shared::beside(&conf.subnet_file);
    let lock = shared.lock().map_err(error)?;
    let name = att.args.pod_name.as_deref().unwrap_or(&att.container_id);
    let w = Workload::new(
        att.args.namespace.as_deref(),
        name,
        conf.labels.clone(),
        addresses,
    );
    let id = record_id(att);
    lock.put_workload(&id, &w).map_err(error)?;
    lock.admit(&w).map_err(|e| {
        lock.remove_workload(&id);
        error(e)
    })
}

/// Forgets the workload and takes its addresses out of every policy set.
pub fn withdraw(conf: &NetConf, att: &Attachment, addresses: &[IpAddr]) -> Result<()> {
    let shared = Shared::beside(&conf.subnet_file);
    let lock = shared.lock().map_err(error)?;
    let recorded = lock.remove_workload(&record_id(att));
    let mut all: Vec<IpAddr> = addresses.to_vec();
    all.extend(recorded.iter().flat_map(|w| w.addresses.iter().copied()));
    all.sort();
    all.dedup();
    lock.evict(&all).map_err(error)
}

/// GC: forgets the records of attachments the runtime no longer has and takes their
/// addresses, and `released` (the reservations GC let go), out of every policy set.
pub fn collect(
    conf: &NetConf,
    is_valid: impl Fn(&str, &str) -> bool,
    released: &[IpAddr],
) -> Result<()> {
    let shared = Shared::beside(&conf.subnet_file);
    let lock = shared.lock().map_err(error)?;
    let mut gone: Vec<IpAddr> = released.to_vec();
    for (id, _) in lock.workloads() {
        let valid = id
            .split_once('+')
            .is_some_and(|(container, ifname)| is_valid(container, ifname));
        if !valid {
            gone.extend(
                lock.remove_workload(&id)
                    .into_iter()
                    .flat_map(|w| w.addresses),
            );
        }
    }
    gone.sort();
    gone.dedup();
    lock.evict(&gone).map_err(error)
}
