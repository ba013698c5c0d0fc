//! The host's devices: the backend's device of each family with its one address (made or
//! adopted by the backend's own code, and made again when it vanishes), and the container
//! bridges whose pinned MAC moved (see [`crate::bridge`]).

use ipnet::IpNet;

use super::watch::Watched;
use super::{Failure, Snapshot};
use crate::backend::{self, Device, DeviceSpec};
use crate::bridge;
use crate::metrics::Metrics;
use crate::netlink::{format_mac, Netlink};
use crate::subnet::Family;

/// Creates or adopts every backend's device of `family` and tells the monitor their indexes;
/// gives each with its spec. A device that cannot be made is logged and skipped (the others
/// still serve their peers), and the pass reports the failure.
pub(super) fn ensure_devices(
    nl: &mut Netlink,
    metrics: &Metrics,
    watched: &Watched,
    s: &Snapshot,
    family: Family,
) -> (Vec<(DeviceSpec, Device)>, Result<(), Failure>) {
    let mut out = Vec::new();
    let mut result = Ok(());
    for (i, spec) in s.devices_of(family) {
        let backend = s.backends[i].backend();
        let data = (s.own.attrs.speaks(backend.type_name())).and_then(|sp| sp.data(family));
        match spec.kind.ensure(nl, spec, backend.advertised_mac(data)) {
            Ok(dev) => {
                if dev.created {
                    tracing::warn!(device = %spec.name, mac = ?dev.mac.map(|m| format_mac(&m)), "device was missing; recreated it");
                    metrics.drift_repairs.inc();
                }
                watched.set_device(&spec.name, dev.index);
                out.push((spec.clone(), dev));
            }
            Err(e) => {
                metrics.netlink_errors.inc();
                tracing::warn!(device = %spec.name, error = %e, "cannot set up the device; will retry");
                result = Err(Failure::Device);
            }
        }
    }
    (out, result)
}

/// Removes the devices of backends this host no longer runs (the old one of a finished
/// migration), where they still exist. Their routes, neighbours and peers go with them.
pub(super) fn retire(nl: &mut Netlink, metrics: &Metrics, watched: &Watched, names: &[String]) {
    for name in names {
        let link = match nl.link_by_name(name) {
            Ok(Some(l)) => l,
            Ok(None) => continue,
            Err(e) => {
                metrics.netlink_errors.inc();
                tracing::warn!(device = %name, error = %e, "cannot look for a device to retire");
                continue;
            }
        };
        watched.set_device(name, 0);
        match nl.delete_link(link.index) {
            Ok(()) => {
                tracing::info!(device = %name, "device removed: no peer needs its backend any more")
            }
            Err(e) => {
                metrics.netlink_errors.inc();
                tracing::warn!(device = %name, error = %e, "cannot remove the device; will retry");
            }
        }
    }
}

/// Gives the device its one address, `<subnet address>/32` (`/128`).
pub(super) fn ensure_address(
    nl: &mut Netlink,
    metrics: &Metrics,
    spec: &DeviceSpec,
    dev: &Device,
    subnet: IpNet,
) -> Result<(), Failure> {
    match backend::ensure_address(nl, dev.index, subnet) {
        Ok(true) => {
            tracing::info!(device = %spec.name, %subnet, "device address set");
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(e) => {
            metrics.netlink_errors.inc();
            tracing::warn!(device = %spec.name, error = %e, "cannot set the device address");
            Err(Failure::Address)
        }
    }
}

/// Puts back the pinned MAC of every container bridge of weft's whose MAC moved, and tells
/// the monitor which bridges to look at.
pub(super) fn ensure_bridges(
    nl: &mut Netlink,
    metrics: &Metrics,
    watched: &Watched,
) -> Result<(), Failure> {
    let links = nl.links().map_err(|e| {
        metrics.netlink_errors.inc();
        tracing::warn!(error = %e, "cannot list the links to check the container bridges");
        Failure::Dump
    })?;
    *watched.bridges.lock().unwrap_or_else(|e| e.into_inner()) = (bridge::owned(&links))
        .map(|(l, mac)| (l.index, mac))
        .collect();
    let mut result = Ok(());
    for moved in bridge::moved(&links) {
        match bridge::mend(nl, &moved) {
            Ok(()) => {
                metrics.drift_repairs.inc();
                tracing::info!(object = %moved, "drift repaired: bridge MAC put back");
            }
            Err(e) => {
                metrics.netlink_errors.inc();
                tracing::warn!(object = %moved, error = %e, "cannot put the bridge's MAC back; will retry");
                result = Err(Failure::Apply);
            }
        }
    }
    result
}
