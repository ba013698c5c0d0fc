//! The host's devices: the backend's device of each family with its one address (made or
//! adopted by the backend's own code, and made again when it vanishes), and the container
//! bridges whose pinned MAC moved (see [`crate::bridge`]).

use std::sync::atomic::Ordering;

use ipnet::IpNet;

use super::watch::Watched;
use super::{Failure, Snapshot};
use crate::backend::{self, Device, DeviceSpec};
use crate::bridge;
use crate::metrics::Metrics;
use crate::netlink::{format_mac, Netlink};
use crate::subnet::Family;

/// Creates or adopts the backend's device of `family`, if it needs one, and tells the
/// monitor its index.
pub(super) fn ensure_device(
    nl: &mut Netlink,
    metrics: &Metrics,
    watched: &Watched,
    s: &Snapshot,
    family: Family,
) -> Result<Option<(DeviceSpec, Device)>, Failure> {
    let Some(spec) = &s.devices[family] else {
        return Ok(None);
    };
    let mac = s.cfg.backend.backend().advertised_mac(&s.own.attrs, family);
    match spec.kind.ensure(nl, spec, mac) {
        Ok(dev) => {
            if dev.created {
                tracing::warn!(device = %spec.name, mac = ?dev.mac.map(|m| format_mac(&m)), "device was missing; recreated it");
                metrics.drift_repairs.inc();
            }
            watched.devices[family].store(dev.index, Ordering::Relaxed);
            Ok(Some((spec.clone(), dev)))
        }
        Err(e) => {
            metrics.netlink_errors.inc();
            tracing::warn!(device = %spec.name, error = %e, "cannot set up the device; will retry");
            Err(Failure::Device)
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
