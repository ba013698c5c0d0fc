//! A policy table's shape: its sets with their addresses, its counters and its chains with
//! their rules, as weft wants it or as nft listed it (see `table` for the difference).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use nftables::schema::Chain;
use nftables::stmt::Statement;

/// A policy table: each set with its addresses, the named counters, each chain with its
/// declaration and rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableState {
    pub sets: BTreeMap<String, BTreeSet<IpAddr>>,
    pub counters: BTreeSet<String>,
    pub chains: BTreeMap<String, ChainState>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChainState {
    /// The chain as declared (type, hook, priority and policy of a base chain), no handle.
    pub def: Chain<'static>,
    pub rules: Vec<RuleState>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuleState {
    pub expr: Vec<Statement<'static>>,
    /// The policy the rule belongs to (`namespace/name`).
    pub comment: Option<String>,
}

/// Counter values as listed: packets by counter name.
pub type Counts = BTreeMap<String, u64>;
