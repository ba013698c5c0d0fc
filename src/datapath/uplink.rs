//! Following the external interface: every full pass chooses it again from the kernel, as
//! start-up did, so a renumbered address, a NIC made anew, another MTU or a moved default
//! route is noticed, and the agent makes a new snapshot from it.

use std::sync::atomic::Ordering;

use super::watch::Watched;
use super::Snapshot;
use crate::iface::{self, ExtIface, IfaceSelect};
use crate::netlink::Netlink;

pub(super) struct Uplink {
    pub select: IfaceSelect,
    /// Why no external interface could be chosen, while that lasts (logged once).
    missing: Option<String>,
}

impl Uplink {
    pub fn new(select: IfaceSelect) -> Uplink {
        Uplink {
            select,
            missing: None,
        }
    }

    /// Whether no external interface can be chosen now.
    pub fn is_missing(&self) -> bool {
        self.missing.is_some()
    }

    /// The external interface as chosen now, when it differs from the snapshot's. While none
    /// can be chosen the pass goes on with the snapshot's (whatever still exists stays
    /// programmed) and the monitor looks at every link and address change.
    pub fn changed(
        &mut self,
        nl: &mut Netlink,
        watched: &Watched,
        s: &Snapshot,
    ) -> Option<ExtIface> {
        match iface::choose_in(nl, &self.select) {
            Ok(ext) => {
                watched.ext_missing.store(false, Ordering::Relaxed);
                if self.missing.take().is_some() {
                    tracing::info!(iface = %ext.name, index = ext.index, "external interface is back");
                }
                if ext == s.ext {
                    return None;
                }
                watched.ext.store(ext.index, Ordering::Relaxed);
                Some(ext)
            }
            Err(e) => {
                watched.ext_missing.store(true, Ordering::Relaxed);
                let why = e.to_string();
                if self.missing.as_deref() != Some(why.as_str()) {
                    tracing::warn!(iface = %s.ext.name, error = %why, "the external interface is not usable; waiting for it");
                    self.missing = Some(why);
                }
                None
            }
        }
    }
}
