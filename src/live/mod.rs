//! A running network's config: what a change of each key does to running hosts
//! ([`change`]), the config the network runs and any backend migration under way, kept at
//! `<prefix>/weft/config` ([`record`]), and which backends a host runs while the fleet moves
//! from one to another ([`moving`]). Pure: weftd, `weftctl config set`, `weftctl migrate`
//! and `weftctl check` all decide through these.
//!
//! Why a record of its own: `<prefix>/config` is flannel's and anyone may write it (etcdctl
//! included). weft hosts run the config in the record, which only ever moves by a change that
//! running hosts can apply, so a refused change keeps every host, restarted and new ones too,
//! on the network's running config instead of splitting the fleet.

pub mod change;
pub mod moving;
pub mod record;

pub use change::{classify, KeyChange, Verdict};
pub use moving::{
    needs_old, running, HostMove, Need, Running, Settle, Situation, DROP_AFTER, LEAD, SETTLE,
};
pub use record::{
    judge, next, Hosts, Judgement, Migration, Next, RecordError, Refusal, RunningConfig,
    RECORD_VERSION,
};
