//! Everything weft puts in nftables and iptables, from one [`FirewallSpec`]: weft's own
//! tables (`ip weft`, `ip6 weft`: masquerade, forward accepts) written as one typed batch and
//! read back, and weft's accepts in iptables' FORWARD chain. What is no longer wanted goes.
//!
//! Ownership: the tables named `weft` are weft's entirely; in iptables only rules of exactly
//! weft's shape and comment are. Nothing else, in any table or chain, is read for a decision
//! or touched. Network policy ([`policy`]) lives in tables of its own (`weft_policy`), whose
//! sets the CNI plugin writes too; [`enforce`] keeps them.

#[cfg(feature = "daemon")]
pub mod enforce;
pub(crate) mod nft;
pub mod policy;
pub mod tables;
pub mod xtables;

use std::fmt;
use std::process::ExitStatus;

use ipnet::IpNet;
use nftables::batch::Batch;
use nftables::schema::NfListObject;

use crate::subnet::{Family, PerFamily};
use nft::Listing;
pub use xtables::Accept;

/// The overlay of one family on this host: the network N and this host's subnet P in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overlay {
    pub network: IpNet,
    pub subnet: IpNet,
}

/// What weft wants of the host's firewall; everything weft writes is derived from it, and
/// whatever it no longer implies is removed. Network policy (a later change) adds its part
/// here and its sets, maps and chains in [`tables::table`]; writing, reading back and
/// removing stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirewallSpec {
    /// The families this host runs an overlay in; a family without one has no weft rules.
    pub overlay: PerFamily<Option<Overlay>>,
    /// flannel's masquerade rules (--ip-masq); the forward accepts are always wanted.
    pub masquerade: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("cannot run {program} (is it installed? weft needs nftables): {error}")]
    Spawn {
        program: &'static str,
        error: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("cannot read the output of `{command}`: {error}")]
    Listing { command: String, error: String },
    #[error("cannot write the nftables batch as JSON: {0}")]
    Encode(serde_json::Error),
}

/// What one pass changed; the datapath logs each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// weft's table of a family (re)written, and what was there before.
    TableWritten(Family, Before),
    /// weft's table of a family removed: no overlay in that family any more.
    TableRemoved(Family),
    AcceptAdded(Accept),
    /// An accept for a network weft no longer runs (or a duplicate) deleted.
    AcceptRemoved(Accept),
}

/// The state of weft's table before it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Before {
    /// No table: a first start, or someone deleted it or flushed the ruleset.
    Absent,
    /// Other contents: the spec changed, or someone edited the table.
    Different,
    /// A listing that does not parse as nft's JSON: not something weft wrote.
    Unreadable,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table = |family| format!("nftables table {} {}", nft_name(family), tables::TABLE);
        match self {
            Change::TableWritten(family, before) => {
                let was = match before {
                    Before::Absent => "was missing",
                    Before::Different => "differed",
                    Before::Unreadable => "was unreadable",
                };
                write!(f, "{} written ({was})", table(*family))
            }
            Change::TableRemoved(family) => write!(f, "{} removed", table(*family)),
            Change::AcceptAdded(a) => write!(f, "{} FORWARD accept added: {a}", a.tool()),
            Change::AcceptRemoved(a) => write!(f, "{} FORWARD accept removed: {a}", a.tool()),
        }
    }
}

fn nft_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

/// The outcome of one pass: what changed, and what could not be done (each part is tried
/// even when another fails).
#[derive(Debug, Default)]
pub struct Applied {
    pub changes: Vec<Change>,
    pub errors: Vec<FirewallError>,
}

/// A table as weft wants it and as nft listed it right after writing, both normalized.
type Written = (Vec<NfListObject<'static>>, Vec<NfListObject<'static>>);

/// Keeps the host's firewall equal to a [`FirewallSpec`]. Every pass reads weft's state back
/// from the kernel, so a change by anyone (a flush, dockerd's restart) is repaired.
#[derive(Debug, Default)]
pub struct Firewall {
    /// Per family, the last table written and its listing: should a future nft list an
    /// object differently from how weft writes it, that listing still counts as weft's own,
    /// and the table is not rewritten on every pass.
    written: PerFamily<Option<Written>>,
}

/// What to do with weft's table of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Keep,
    Write(Before),
    Remove,
}

impl Firewall {
    pub fn new() -> Firewall {
        Firewall::default()
    }

    /// Makes nftables and iptables hold exactly what `spec` asks of weft.
    pub fn ensure(&mut self, spec: &FirewallSpec) -> Applied {
        let mut applied = Applied::default();
        if let Err(e) = self.ensure_tables(spec, &mut applied.changes) {
            applied.errors.push(e);
        }
        if let Err(e) = xtables::ensure(spec, &mut applied.changes) {
            applied.errors.push(e);
        }
        applied
    }

    /// weft's nftables tables: read back, compared, and every difference written in one
    /// batch (one transaction), then read again to remember what the kernel made of it.
    fn ensure_tables(
        &mut self,
        spec: &FirewallSpec,
        changes: &mut Vec<Change>,
    ) -> Result<(), FirewallError> {
        let present = nft::families_with_table()?;
        let mut batch = Batch::new();
        let mut written = Vec::new();
        let mut steps = Vec::new();
        for family in Family::ALL {
            let want = tables::table(spec, family);
            let have = match present.contains(&family) {
                true => Some(nft::list(family)?),
                false => None,
            };
            let want_norm = want.as_deref().map(tables::normalize);
            let step = decide(want_norm.as_deref(), have.as_ref(), &self.written[family]);
            let table = || NfListObject::Table(tables::table_object(family));
            match (step, want) {
                (Step::Write(before), Some(objects)) => {
                    // Declared, deleted, declared again: one transaction that replaces the
                    // table whether or not it exists, with no moment without rules.
                    batch.add(table());
                    batch.delete(table());
                    objects.into_iter().for_each(|o| batch.add(o));
                    written.push((family, want_norm.unwrap_or_default()));
                    steps.push(Change::TableWritten(family, before));
                }
                (Step::Remove, _) => {
                    batch.delete(table());
                    self.written[family] = None;
                    steps.push(Change::TableRemoved(family));
                }
                _ => {}
            }
        }
        if steps.is_empty() {
            return Ok(());
        }
        nft::apply(batch)?;
        changes.extend(steps);
        for (family, want) in written {
            let listed = match nft::list(family)? {
                Listing::Objects(objects) => tables::normalize(&objects),
                Listing::Unreadable(_) => Vec::new(),
            };
            self.written[family] = Some((want, listed));
        }
        Ok(())
    }
}

/// Whether weft's table of a family is as wanted: equal to the wanted objects, or to what
/// the kernel listed right after weft wrote these same objects.
fn decide(
    want: Option<&[NfListObject<'static>]>,
    have: Option<&Listing>,
    written: &Option<Written>,
) -> Step {
    match (want, have) {
        (None, None) => Step::Keep,
        (None, Some(_)) => Step::Remove,
        (Some(_), None) => Step::Write(Before::Absent),
        (Some(_), Some(Listing::Unreadable(_))) => Step::Write(Before::Unreadable),
        (Some(want), Some(Listing::Objects(listed))) => {
            let listed = tables::normalize(listed);
            let as_written = written
                .as_ref()
                .is_some_and(|(w, l)| w.as_slice() == want && *l == listed);
            if listed == want || as_written {
                Step::Keep
            } else {
                Step::Write(Before::Different)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(network: &str, subnet: &str) -> FirewallSpec {
        FirewallSpec {
            overlay: PerFamily {
                v4: Some(Overlay {
                    network: network.parse().unwrap(),
                    subnet: subnet.parse().unwrap(),
                }),
                v6: None,
            },
            masquerade: true,
        }
    }

    fn want(s: &FirewallSpec) -> Vec<NfListObject<'static>> {
        tables::normalize(&tables::table(s, Family::V4).unwrap())
    }

    #[test]
    fn a_table_is_kept_written_or_removed_from_what_is_listed() {
        let s = spec("198.19.0.0/16", "198.19.7.0/24");
        let w = want(&s);
        let listed = Listing::Objects(tables::table(&s, Family::V4).unwrap());
        assert_eq!(decide(None, None, &None), Step::Keep);
        assert_eq!(decide(None, Some(&listed), &None), Step::Remove);
        assert_eq!(decide(Some(&w), None, &None), Step::Write(Before::Absent));
        assert_eq!(decide(Some(&w), Some(&listed), &None), Step::Keep);
        let other = want(&spec("198.18.64.0/18", "198.18.65.0/24"));
        assert_eq!(
            decide(Some(&other), Some(&listed), &None),
            Step::Write(Before::Different)
        );
        let unreadable = Listing::Unreadable("bad".into());
        assert_eq!(
            decide(Some(&w), Some(&unreadable), &None),
            Step::Write(Before::Unreadable)
        );
    }

    #[test]
    fn a_listing_that_differs_only_in_how_nft_shows_it_is_weft_s_own_once_written() {
        let s = spec("198.19.0.0/16", "198.19.7.0/24");
        let w = want(&s);
        // As if nft listed one rule in another form than the one written.
        let mut shown = tables::table(&s, Family::V4).unwrap();
        shown.pop();
        let listed = Listing::Objects(shown.clone());
        assert_eq!(
            decide(Some(&w), Some(&listed), &None),
            Step::Write(Before::Different)
        );
        let written = Some((w.clone(), tables::normalize(&shown)));
        assert_eq!(decide(Some(&w), Some(&listed), &written), Step::Keep);
        // ...but not once the spec changed.
        let other = want(&spec("198.18.64.0/18", "198.18.65.0/24"));
        assert_ne!(decide(Some(&other), Some(&listed), &written), Step::Keep);
    }

    #[test]
    fn changes_read_as_log_lines() {
        assert_eq!(
            Change::TableWritten(Family::V6, Before::Absent).to_string(),
            "nftables table ip6 weft written (was missing)"
        );
        let a = Accept {
            direction: xtables::Direction::To,
            network: "198.19.0.0/16".parse().unwrap(),
        };
        assert_eq!(
            Change::AcceptRemoved(a).to_string(),
            "iptables FORWARD accept removed: \
             -d 198.19.0.0/16 -m comment --comment \"weft overlay\" -j ACCEPT"
        );
    }
}
