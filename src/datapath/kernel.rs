//! Routes, neighbours and FDB entries: reading weft's own out of the kernel (also for
//! `weftctl check`), and applying operations with each outcome logged and counted (a drift
//! repair, a first programming, a refusal).

use std::sync::atomic::Ordering;

use ipnet::IpNet;

use super::tally::Tally;
use super::watch::Watched;
use super::{Failure, Snapshot};
use crate::backend::Host;
use crate::config::NetworkConfig;
use crate::metrics::Metrics;
use crate::netlink::{Netlink, NetlinkError, Op};
use crate::plan::{self, Actual, Desired};
use crate::subnet::Family;

/// Reads weft's objects from the kernel (the routes of the main table, the neighbours and FDB
/// of the backend's device) and keeps those [`plan::owned`] says are weft's.
pub fn read_actual(
    nl: &mut Netlink,
    cfg: &NetworkConfig,
    host: &Host,
    own_subnet: impl Into<IpNet>,
) -> Result<Actual, NetlinkError> {
    let routes = nl.routes(host.family().into())?;
    let (neigh, fdb) = match host.device {
        Some(d) => (nl.neighbours(Some(d))?, nl.fdb(Some(d))?),
        None => (Vec::new(), Vec::new()),
    };
    Ok(plan::owned(cfg, host, own_subnet, routes, neigh, fdb))
}

/// Applies `ops`, logging each and counting failures and repairs (an op that puts back what
/// `previous`, the state last applied, already had). Err if any failed.
pub(super) fn apply(
    nl: &mut Netlink,
    metrics: &Metrics,
    watched: &Watched,
    s: Option<&Snapshot>,
    ops: &[Op],
    previous: Option<&Desired>,
) -> Result<(), Failure> {
    if ops.is_empty() {
        return Ok(());
    }
    watched
        .echo
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .expect(ops);
    let results = nl.apply(ops);
    let names = device_names(s, watched);
    let dev = |i: u32| {
        (names.iter().rev())
            .find(|(index, _)| *index == i)
            .map_or_else(|| format!("#{i}"), |(_, n)| n.clone())
    };
    let mut tally = Tally::default();
    for (op, result) in ops.iter().zip(results) {
        let object = plan::describe(op, &dev);
        match result {
            Ok(()) if previous.is_some_and(|p| plan::is_repair(op, p)) => tally.repaired(object),
            Ok(()) => tracing::debug!(%object, "programmed"),
            Err(e) => {
                metrics.netlink_errors.inc();
                tally.failed(object, &e);
            }
        }
    }
    tally.log(None);
    metrics.drift_repairs.inc_by(tally.repairs());
    if tally.any_failed() {
        Err(Failure::Apply)
    } else {
        Ok(())
    }
}

/// The names of the devices ops may name by index: the external interface and each family's
/// device.
fn device_names(s: Option<&Snapshot>, watched: &Watched) -> Vec<(u32, String)> {
    let Some(s) = s else {
        return Vec::new();
    };
    let mut names = vec![(s.ext.index, s.ext.name.clone())];
    for f in Family::ALL {
        if let Some(d) = &s.devices[f] {
            let index = watched.devices[f].load(Ordering::Relaxed);
            names.push((index, d.name.clone()));
        }
    }
    names
}
