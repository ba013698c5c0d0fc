//! The store: the network config and the hosts' subnet leases, kept in etcd in flannel's
//! layout. [`EtcdStore`] has the operations weftd and weftctl need (acquire, renew, list,
//! reserve, revoke); [`LeaseWatcher`] turns etcd's watch into typed lease events.
//!
//! Inside, `registry` is the etcd I/O (connecting, the key layout, timed calls, guarded
//! writes) behind a small trait, `alloc` makes the decisions about leases against that trait
//! (unit-tested on an in-memory registry), and `decode` and `read` turn keys into leases.

mod alloc;
mod decode;
mod endpoints;
mod etcd;
mod policy;
mod read;
mod registry;
mod running;
mod status;
mod watch;

use std::path::PathBuf;

pub use alloc::Previous;
pub use decode::{LeaseList, SkippedLease};
pub use etcd::EtcdStore;
pub use policy::{PolicyKey, PolicyKeys};
pub use running::ConfigKeys;
pub use status::{Reclaimed, WeftKeys};
pub use watch::LeaseWatcher;

use crate::json::ConfigErrors;
use crate::lease::LeaseError;

/// How to reach etcd. weftd and weftctl both flatten this, so one environment file
/// (`WEFTD_ETCD_*`) serves both.
#[derive(clap::Args, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// etcd endpoints, comma-separated.
    #[arg(
        long = "etcd-endpoints",
        env = "WEFTD_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Key prefix of the network: config at <prefix>/config, leases under <prefix>/subnets/.
    #[arg(
        long = "etcd-prefix",
        env = "WEFTD_ETCD_PREFIX",
        default_value = "/coreos.com/network"
    )]
    pub prefix: String,
    /// CA certificate to verify etcd's server certificate.
    #[arg(long = "etcd-cafile", env = "WEFTD_ETCD_CAFILE")]
    pub cafile: Option<PathBuf>,
    /// Client certificate for etcd. With etcd's --client-cert-auth and no --etcd-username,
    /// etcd takes the certificate's CN as the user.
    #[arg(long = "etcd-certfile", env = "WEFTD_ETCD_CERTFILE")]
    pub certfile: Option<PathBuf>,
    /// Key of the client certificate.
    #[arg(long = "etcd-keyfile", env = "WEFTD_ETCD_KEYFILE")]
    pub keyfile: Option<PathBuf>,
    /// User name for etcd authentication.
    #[arg(long = "etcd-username", env = "WEFTD_ETCD_USERNAME")]
    pub username: Option<String>,
    /// Password for etcd authentication. A password given as this flag is visible to every
    /// local user in the process list (ps, /proc/PID/cmdline): use --etcd-password-file or
    /// the environment variable instead.
    #[arg(
        long = "etcd-password",
        env = "WEFTD_ETCD_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// File whose first line is the password for etcd authentication (keep it mode 0600).
    #[arg(long = "etcd-password-file", env = "WEFTD_ETCD_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
}

/// The password never reaches a log line or a panic message through `{:?}`.
impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("cafile", &self.cafile)
            .field("certfile", &self.certfile)
            .field("keyfile", &self.keyfile)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "(hidden)"))
            .field("password_file", &self.password_file)
            .finish()
    }
}

impl EtcdOptions {
    /// Options for plain-HTTP endpoints and a prefix, everything else unset.
    pub fn new(endpoints: &[&str], prefix: &str) -> EtcdOptions {
        EtcdOptions {
            endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            prefix: prefix.to_string(),
            cafile: None,
            certfile: None,
            keyfile: None,
            username: None,
            password: None,
            password_file: None,
        }
    }
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions::new(&["http://127.0.0.1:2379"], "/coreos.com/network")
    }
}

/// A refused config's problems after its key: one on the same line, several each on a line
/// of their own.
fn config_problems(problems: &ConfigErrors) -> String {
    match problems.problems() {
        [one] => format!(": {one}"),
        all => {
            let mut s = format!(" has {} problems:", all.len());
            for p in all {
                s.push_str("\n  ");
                s.push_str(&p.to_string());
            }
            s
        }
    }
}

/// What went wrong talking to the registry. Each message names the endpoints, key or subnet.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot reach etcd at {endpoints}: {why}")]
    Unreachable { endpoints: String, why: String },
    #[error("etcd at {endpoints}: {op}: no answer within {secs}s")]
    Timeout {
        endpoints: String,
        op: String,
        secs: u64,
    },
    #[error("etcd at {endpoints}: {op}: {source}")]
    Etcd {
        endpoints: String,
        op: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("invalid etcd options: {0}")]
    Options(String),
    // The problems are part of the message, not a `source`: a report that prints the chain
    // would otherwise say them twice.
    #[error("network config at {key}{}", config_problems(.problems))]
    Config { key: String, problems: ConfigErrors },
    #[error("no network config at {key}")]
    NoConfig { key: String },
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("lease {subnet} is gone from etcd: {why}")]
    LeaseGone { subnet: String, why: String },
    #[error("no free subnet in {min}..{max} (/{len}): all {taken} of {total} subnets are taken")]
    NoFreeSubnet {
        min: String,
        max: String,
        len: u8,
        taken: u64,
        total: u128,
    },
    #[error("no lease after {attempts} attempts: other hosts took each chosen subnet first")]
    Contention { attempts: u32 },
    #[error("{subnet} is not a subnet of the network {network} (SubnetLen {len})")]
    NotInNetwork {
        subnet: String,
        network: String,
        len: u8,
    },
    #[error("{subnet} is leased to {public_ip}")]
    SubnetTaken { subnet: String, public_ip: String },
    #[error("{public_ip} already has a reservation: {subnet}")]
    AlreadyReserved { public_ip: String, subnet: String },
    #[error("{subnet} is not a reservation (it is leased to {public_ip}); revoke it instead")]
    NotAReservation { subnet: String, public_ip: String },
    #[error("{subnet} is a reservation for {public_ip}; remove it with `reservations remove`")]
    IsReservation { subnet: String, public_ip: String },
    #[error("lease {subnet} ({key}) changed while revoking it (renewed with new attributes or taken by another host); nothing was deleted, look again")]
    LeaseChanged { subnet: String, key: String },
    #[error("etcd at {endpoints}: {user} cannot log in (to {op}): {why}")]
    AuthFailed {
        endpoints: String,
        /// Who weft tried to be, e.g. `user "weft"`.
        user: String,
        op: String,
        why: String,
    },
    #[error("etcd at {endpoints}: {user} may not {op}: permission denied (the user's role needs readwrite on {prefix}/)")]
    PermissionDenied {
        endpoints: String,
        user: String,
        op: String,
        prefix: String,
    },
    #[error("etcd at {endpoints}: watch refused: {why}")]
    WatchRefused { endpoints: String, why: String },
}

impl StoreError {
    /// etcd refused this client's credentials or permissions: trying again cannot help until
    /// an operator changes them.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            StoreError::AuthFailed { .. } | StoreError::PermissionDenied { .. }
        )
    }

    /// Whether trying again later may help (etcd down, slow or restarting).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unreachable { .. } | StoreError::Timeout { .. } => true,
            StoreError::Etcd { source, .. } => registry::is_transient(source),
            _ => false,
        }
    }
}
