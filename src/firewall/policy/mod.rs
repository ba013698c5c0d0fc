//! Network policy: Kubernetes `networking.k8s.io/v1` NetworkPolicy for every container the
//! weft plugin attaches. [`model`] reads policy documents strictly, [`selector`] matches
//! labels, [`program`] compiles policies into named address sets, [`rules`] turns them into
//! the policy table's nftables rules (growing with policies, not workloads), [`table`]
//! compares a wanted table with one read back and says what mends it, [`local`] is
//! what weftd shares with its plugin on one host, [`workload`] the record of one container,
//! [`verdict`] explains a decision for `weftctl policy why`.

mod error;
pub mod local;
pub mod model;
pub mod program;
pub mod rules;
pub mod selector;
mod state;
pub mod table;
pub mod verdict;
pub mod workload;

pub use model::{Policy, PolicyError};
pub use program::Program;
pub use workload::Workload;
