//! flannel's choice of a new subnet, typed by family: a choice in the IPv4 range is an
//! `Ipv4Net` and one in the IPv6 range an `Ipv6Net`, so no caller has to rule out the other.

use std::collections::HashSet;
use std::fmt::Display;
use std::hash::Hash;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::config::NetworkConfig;
use crate::store::StoreError;
use crate::subnet::Family;

/// A random subnet is drawn from this many free ones (flannel's number).
const RANDOM_POOL: usize = 100;

/// A subnet of one family.
pub(super) trait FamilyNet: Copy + Eq + Hash + Display + Into<IpNet> {
    const FAMILY: Family;
    /// The subnet if it is of this family.
    fn of(net: IpNet) -> Option<Self>;
}

impl FamilyNet for Ipv4Net {
    const FAMILY: Family = Family::V4;
    fn of(net: IpNet) -> Option<Self> {
        match net {
            IpNet::V4(n) => Some(n),
            IpNet::V6(_) => None,
        }
    }
}

impl FamilyNet for Ipv6Net {
    const FAMILY: Family = Family::V6;
    fn of(net: IpNet) -> Option<Self> {
        match net {
            IpNet::V6(n) => Some(n),
            IpNet::V4(_) => None,
        }
    }
}

/// `prev` when it may still be handed out and is free, else one of the first free subnets of
/// the family's range, the one `pick` chooses (see [`NetworkConfig::choose_subnet`]); or the
/// error naming the exhausted range.
pub(super) fn choose<N: FamilyNet>(
    cfg: &NetworkConfig,
    prev: Option<N>,
    taken: &HashSet<IpNet>,
    pick: fn(usize) -> usize,
) -> Result<N, StoreError> {
    let free = |s: &IpNet| !taken.contains(s);
    let chosen = cfg.choose_subnet(N::FAMILY, prev.map(Into::into), free, RANDOM_POOL, pick);
    if let Some(s) = chosen.and_then(N::of) {
        return Ok(s);
    }
    let family = N::FAMILY;
    let (min, max, len) = cfg
        .range_of(family)
        .unwrap_or((family.addr(0), family.addr(0), 0));
    let in_range = taken
        .iter()
        .filter(|s| N::of(**s).is_some() && cfg.in_range(**s))
        .count() as u64;
    Err(StoreError::NoFreeSubnet {
        min: min.to_string(),
        max: max.to_string(),
        len,
        taken: in_range,
        total: cfg.subnet_count_in(family),
    })
}
