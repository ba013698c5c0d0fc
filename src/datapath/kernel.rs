//! Routes, neighbours and FDB entries: reading weft's own out of the kernel (also for
//! `weftctl check`), and applying operations with each outcome logged and counted (a drift
//! repair, a first programming, a refusal).

use ipnet::IpNet;

use super::tally::Tally;
use super::watch::Watched;
use super::{Failure, Snapshot};
use crate::config::NetworkConfig;
use crate::metrics::Metrics;
use crate::netlink::{Netlink, NetlinkError, Op};
use crate::plan::{self, Actual, Desired, Speakers};

/// Reads weft's objects from the kernel (the routes of the main table, the neighbours and FDB
/// of the backends' devices) and keeps those [`plan::owned`] says are weft's.
pub fn read_actual(
    nl: &mut Netlink,
    cfg: &NetworkConfig,
    run: &Speakers,
    own_subnet: impl Into<IpNet>,
) -> Result<Actual, NetlinkError> {
    let routes = nl.routes(run.family().into())?;
    let (mut neigh, mut fdb) = (Vec::new(), Vec::new());
    for d in run.devices() {
        neigh.extend(nl.neighbours(Some(d))?);
        fdb.extend(nl.fdb(Some(d))?);
    }
    Ok(plan::owned(cfg, run, own_subnet, routes, neigh, fdb))
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

/// The names of the devices ops may name by index: the external interface and weft's
/// devices.
fn device_names(s: Option<&Snapshot>, watched: &Watched) -> Vec<(u32, String)> {
    let Some(s) = s else {
        return Vec::new();
    };
    let mut names = vec![(s.ext.index, s.ext.name.clone())];
    let devices = watched.devices.lock().unwrap_or_else(|e| e.into_inner());
    names.extend(devices.iter().map(|(n, i)| (*i, n.clone())));
    names
}
