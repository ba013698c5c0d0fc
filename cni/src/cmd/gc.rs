//! GC: releases every reservation and record of an attachment the runtime no longer lists in
//! `cni.dev/valid-attachments`, including reservations host-local made before the move to
//! weft, and takes their addresses out of the network policy sets. It goes on past errors
//! and reports the first.

use crate::config::NetConf;
use crate::error::{CniError, Result};
use crate::ipam::Store;
use crate::link;
use crate::state::AttachmentState;

pub fn run(conf: &NetConf) -> Result<()> {
    // Without the list every attachment would look stale; releasing them all is never right.
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::config("GC needs cni.dev/valid-attachments in the network config")
    })?;
    let is_valid = |id: &str, ifname: Option<&str>| match ifname {
        Some(i) => valid.contains(&(id.to_string(), i.to_string())),
        None => valid.iter().any(|(v, _)| v == id),
    };
    let store = Store::lock(&conf.network_dir())?;
    let mut first_error = None;
    let mut released = Vec::new();
    for r in store.reservations()? {
        if !is_valid(&r.container_id, r.ifname.as_deref()) {
            match store.release(r.ip) {
                Ok(_) => released.push(r.ip),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    let mut host_nl = None;
    for s in AttachmentState::all(&store)? {
        if is_valid(&s.container_id, Some(&s.ifname)) {
            continue;
        }
        // The namespace is usually gone, and the pair with it; when it is not, the host end
        // is the handle left to remove the pair.
        let nl = match &mut host_nl {
            Some(nl) => nl,
            None => host_nl.insert(link::host()?),
        };
        if let Err(e) = link::delete_by_name(nl, &s.host_veth, "the host") {
            first_error.get_or_insert(e);
        }
        if let Err(e) = AttachmentState::remove(&store, &s.container_id, &s.ifname) {
            first_error.get_or_insert(e);
        }
    }
    // A released address must not stay in the policy sets: a remote host would go on
    // treating whoever gets it next as the container that had it.
    let valid_record = |id: &str, ifname: &str| is_valid(id, Some(ifname));
    if let Err(e) = crate::policy::collect(conf, valid_record, &released) {
        first_error.get_or_insert(e);
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
