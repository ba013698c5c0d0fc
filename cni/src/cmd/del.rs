//! DEL: removes the container's interface and releases its addresses. Idempotent, and it
//! works without a netns or a prevResult: what to release comes from weft's own records and
//! the address files, never from the namespace.

use crate::config::NetConf;
use crate::env::Attachment;
use crate::error::Result;
use crate::ipam::Store;
use crate::link;
use crate::state::AttachmentState;

pub fn run(conf: &NetConf, att: &Attachment) -> Result<()> {
    let store = Store::lock(&conf.network_dir())?;
    // A record that cannot be read must not keep the address reserved forever.
    let state = AttachmentState::load(&store, &att.container_id, &att.ifname)
        .ok()
        .flatten();
    // Interfaces go before the addresses, under the lock, so no ADD can hand out an address
    // that an interface still carries. The host end's name is derived from the attachment;
    // removing it removes the pair, also when the runtime lost the netns path.
    let host_veth = state
        .as_ref()
        .map(|s| s.host_veth.clone())
        .unwrap_or_else(|| link::host_veth_name(&att.container_id, &att.ifname));
    let mut kernel_error = link::host()
        .and_then(|mut nl| link::delete_by_name(&mut nl, &host_veth, "the host"))
        .err();
    // The container end is touched only when weft's record says it made it: an interface of
    // that name in a netns weft never attached belongs to someone else.
    if let (Some(_), Some(netns)) = (&state, att.netns.as_deref().filter(|p| p.exists())) {
        let gone = link::in_netns(netns).and_then(|mut nl| {
            link::delete_by_name(&mut nl, &att.ifname, &format!("netns {}", netns.display()))
        });
        if let Err(e) = gone {
            kernel_error.get_or_insert(e);
        }
    }
    let addresses: Vec<std::net::IpAddr> = (state.iter())
        .flat_map(|s| s.addresses.iter().map(|a| a.addr()))
        .collect();
    if let Err(e) = crate::policy::withdraw(conf, att, &addresses) {
        kernel_error.get_or_insert(e);
    }
    store.release_attachment(&att.container_id, &att.ifname)?;
    AttachmentState::remove(&store, &att.container_id, &att.ifname)?;
    match kernel_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
