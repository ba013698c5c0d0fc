//! The registry on etcd v3. Every call has a deadline, so an unreachable etcd is an error
//! that names the endpoints, never a hang. Leases are created with a transaction that only
//! succeeds while the key is absent; renewal keeps the one etcd lease alive.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, LeaseTimeToLiveOptions,
    PutOptions, Txn, TxnOp,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tracing::{debug, info, warn};

use super::endpoints::EndpointHealth;
use super::{EtcdOptions, LeaseWatcher, StoreError};
use crate::config::NetworkConfig;
use crate::lease::{Lease, LeaseAttrs, LeaseError};
use crate::subnet::{lease_key_name, parse_lease_key_name, Family};

/// How long one etcd request may take before it counts as failed.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// How many lost creation races an acquisition survives.
const MAX_ATTEMPTS: u32 = 20;
/// A random subnet is drawn from this many free ones (flannel's number).
const RANDOM_POOL: usize = 100;
/// TTL lookups in flight at once when listing.
const TTL_CONCURRENCY: usize = 128;

/// The leases under `<prefix>/subnets/` at one revision.
#[derive(Debug, Clone, Default)]
pub struct LeaseList {
    /// Sorted by subnet.
    pub leases: Vec<Lease>,
    /// Keys that are not usable leases, with the reason.
    pub skipped: Vec<SkippedLease>,
    /// The etcd revision of the listing; watch from here to miss nothing.
    pub revision: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedLease {
    /// The full etcd key.
    pub key: String,
    pub reason: String,
    pub mod_revision: i64,
}

#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
    endpoints: String,
    /// Who etcd sees us as, for messages: `user "weft"`, or the client certificate's CN.
    user: String,
    op_timeout: Duration,
    /// With several endpoints: keeps requests on the members that answer.
    health: Option<Arc<EndpointHealth>>,
}

fn classify(
    endpoints: &str,
    user: &str,
    prefix: &str,
    op: String,
    source: etcd_client::Error,
) -> StoreError {
    use tonic::Code;
    if let etcd_client::Error::GRpcStatus(s) = &source {
        match s.code() {
            Code::PermissionDenied => {
                return StoreError::PermissionDenied {
                    endpoints: endpoints.to_string(),
                    user: user.to_string(),
                    op,
                    prefix: prefix.to_string(),
                }
            }
            // Wrong name or password (etcd answers InvalidArgument to Authenticate), a token
            // etcd no longer knows, or auth required and no user given.
            Code::Unauthenticated => {
                return StoreError::AuthFailed {
                    endpoints: endpoints.to_string(),
                    user: user.to_string(),
                    op,
                    why: s.message().to_string(),
                }
            }
            _ => {}
        }
    }
    StoreError::Etcd {
        endpoints: endpoints.to_string(),
        op,
        source,
    }
}

pub(super) fn is_transient(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) => true,
        E::GRpcStatus(s) => matches!(
            s.code(),
            Code::Cancelled
                | Code::Unknown
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
                | Code::Aborted
                | Code::Internal
                | Code::Unavailable
        ),
        _ => false,
    }
}

/// The gRPC status code of an etcd call's failure, if etcd answered with one.
pub(super) fn status_code(e: &StoreError) -> Option<tonic::Code> {
    match e {
        StoreError::Etcd {
            source: etcd_client::Error::GRpcStatus(s),
            ..
        } => Some(s.code()),
        _ => None,
    }
}

/// A raw entry under the subnets prefix, decoded as far as it goes.
struct Entry {
    key: String,
    kv: KeyValue,
    subnet: Option<Ipv4Net>,
    lease: Result<Lease, String>,
}

/// TLS settings from --etcd-cafile/--etcd-certfile/--etcd-keyfile; None for plain http://
/// endpoints with no files given. Unreadable files are named in the error.
fn tls_options(opts: &EtcdOptions) -> Result<Option<etcd_client::TlsOptions>, StoreError> {
    let https = opts.endpoints.iter().any(|e| e.starts_with("https://"));
    if !https && opts.cafile.is_none() && opts.certfile.is_none() && opts.keyfile.is_none() {
        return Ok(None);
    }
    if let Some(plain) = opts.endpoints.iter().find(|e| !e.starts_with("https://")) {
        return Err(StoreError::Options(format!(
            "--etcd-endpoints {plain}: TLS files are given (or another endpoint is https://), so every endpoint must be https://"
        )));
    }
    let read = |flag: &str, path: &std::path::Path| {
        crate::file::read(path, crate::file::limit::LARGE)
            .map_err(|e| StoreError::Options(format!("{flag} {e}")))
    };
    let mut tls = etcd_client::TlsOptions::new();
    if let Some(ca) = &opts.cafile {
        tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(
            "--etcd-cafile",
            ca,
        )?));
    }
    match (&opts.certfile, &opts.keyfile) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(etcd_client::Identity::from_pem(
                read("--etcd-certfile", cert)?,
                read("--etcd-keyfile", key)?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(StoreError::Options(
                "--etcd-certfile and --etcd-keyfile go together: give both or neither".into(),
            ))
        }
    }
    Ok(Some(tls))
}

/// The password from --etcd-password (or WEFTD_ETCD_PASSWORD) or --etcd-password-file; the
/// file's first line, without its line end. Errors name the file, never its content.
fn password(opts: &EtcdOptions) -> Result<Option<String>, StoreError> {
    match (&opts.password, &opts.password_file) {
        (Some(_), Some(file)) => Err(StoreError::Options(format!(
            "--etcd-password (or WEFTD_ETCD_PASSWORD) and --etcd-password-file {} are both set: give one",
            file.display()
        ))),
        (Some(p), None) => Ok(Some(p.clone())),
        (None, None) => Ok(None),
        (None, Some(file)) => {
            let text = crate::file::read_text(file, crate::file::limit::SMALL)
                .map_err(|e| StoreError::Options(format!("--etcd-password-file {e}")))?;
            let first = text.lines().next().unwrap_or_default();
            if first.is_empty() {
                return Err(StoreError::Options(format!(
                    "--etcd-password-file {}: the first line is empty",
                    file.display()
                )));
            }
            Ok(Some(first.to_string()))
        }
    }
}

/// The subject CN of the first certificate in a PEM file, which etcd with --client-cert-auth
/// takes as the user name.
fn certificate_cn(pem: &[u8]) -> Option<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// Who etcd will take us for, as messages name it.
fn user_label(opts: &EtcdOptions) -> String {
    if let Some(u) = &opts.username {
        return format!("user {u:?}");
    }
    if let Some(cert) = &opts.certfile {
        let cn = crate::file::read(cert, crate::file::limit::LARGE)
            .ok()
            .and_then(|pem| certificate_cn(&pem));
        return match cn {
            Some(cn) => format!("user {cn:?} (CN of {})", cert.display()),
            None => format!("the user named by {}", cert.display()),
        };
    }
    "an anonymous client (no --etcd-username, no client certificate)".into()
}

impl EtcdStore {
    /// Turns an etcd failure into an error naming the endpoints, the user and `op` (which
    /// names the key). Refusals are told apart by their gRPC status code alone.
    pub(super) fn etcd_error(&self, op: String, source: etcd_client::Error) -> StoreError {
        classify(&self.endpoints, &self.user, &self.prefix, op, source)
    }

    /// Connects and checks that etcd answers, within a few seconds.
    pub async fn connect(opts: &EtcdOptions) -> Result<EtcdStore, StoreError> {
        let endpoints = opts.endpoints.join(",");
        if opts.endpoints.is_empty() || opts.endpoints.iter().any(|e| e.trim().is_empty()) {
            return Err(StoreError::Options(format!(
                "--etcd-endpoints {endpoints:?}: an endpoint is empty"
            )));
        }
        let mut copts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let tls = tls_options(opts)?;
        let https = tls.is_some();
        if let Some(tls) = tls {
            copts = copts.with_tls(tls);
        }
        let password = password(opts)?;
        match (&opts.username, password) {
            (Some(u), Some(p)) => copts = copts.with_user(u, p),
            (Some(u), None) => copts = copts.with_user(u, ""),
            (None, Some(_)) => {
                return Err(StoreError::Options(
                    "an etcd password is set but --etcd-username is not".into(),
                ))
            }
            (None, None) => {}
        }
        // etcd's tokens expire (simple tokens after 5 minutes idle); weftd runs for months.
        copts = copts.with_auto_token_refresh(true);
        let prefix = opts.prefix.trim_end_matches('/').to_string();
        let user = user_label(opts);
        let config_key = format!("{prefix}/config");
        let unreachable = |why: String| StoreError::Unreachable {
            endpoints: endpoints.clone(),
            why,
        };
        // Connecting logs in when a user is given: etcd answers a wrong name or password with
        // InvalidArgument, and a server without auth with FailedPrecondition. Without a user,
        // the first read is refused with InvalidArgument when etcd wants one.
        let login_failed = |op: String, e: etcd_client::Error| {
            use tonic::Code;
            match &e {
                etcd_client::Error::GRpcStatus(s)
                    if matches!(
                        s.code(),
                        Code::InvalidArgument | Code::FailedPrecondition | Code::Unauthenticated
                    ) =>
                {
                    StoreError::AuthFailed {
                        endpoints: endpoints.clone(),
                        user: user.clone(),
                        op,
                        why: s.message().to_string(),
                    }
                }
                _ => match classify(&endpoints, &user, &prefix, op, e) {
                    e @ (StoreError::AuthFailed { .. } | StoreError::PermissionDenied { .. }) => e,
                    other => unreachable(match other {
                        StoreError::Etcd { source, .. } => source.to_string(),
                        other => other.to_string(),
                    }),
                },
            }
        };
        let probe_opts = copts.clone();
        let client = match tokio::time::timeout(
            OP_TIMEOUT,
            Client::connect(opts.endpoints.clone(), Some(copts)),
        )
        .await
        {
            Err(_) => {
                return Err(unreachable(format!(
                    "no answer within {}s",
                    OP_TIMEOUT.as_secs()
                )))
            }
            Ok(Err(e)) => return Err(login_failed(format!("get {config_key}"), e)),
            Ok(Ok(c)) => c,
        };
        let health = EndpointHealth::start(&client, &opts.endpoints, https, &probe_opts).await;
        let store = EtcdStore {
            client,
            prefix: prefix.clone(),
            endpoints: endpoints.clone(),
            user: user.clone(),
            op_timeout: OP_TIMEOUT,
            health,
        };
        // The channel connects lazily; one cheap read proves etcd is there and lets us in.
        let mut c = store.client.clone();
        match tokio::time::timeout(
            OP_TIMEOUT,
            c.get(
                config_key.clone(),
                Some(GetOptions::new().with_count_only()),
            ),
        )
        .await
        {
            Err(_) => Err(unreachable(format!(
                "no answer within {}s",
                OP_TIMEOUT.as_secs()
            ))),
            Ok(Err(e)) => Err(login_failed(format!("get {config_key}"), e)),
            Ok(Ok(_)) => Ok(store),
        }
    }

    /// The endpoints, as given, for messages.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// The key prefix without a trailing slash.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    pub(super) fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    /// The full etcd key of a lease.
    pub fn lease_key(&self, lease: &Lease) -> String {
        format!("{}{}", self.subnets_prefix(), lease.key_name())
    }

    /// True when etcd refuses this client a read of the leases (permission or
    /// authentication), as opposed to answering or being unreachable.
    pub(super) async fn may_not_read_subnets(&self) -> bool {
        let prefix = self.subnets_prefix();
        let mut c = self.client.clone();
        let read = self.timed(
            format!("count {prefix}"),
            c.get(
                prefix.clone(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            ),
        );
        // The store's errors tell refusals apart by their gRPC status code.
        matches!(
            read.await,
            Err(StoreError::PermissionDenied { .. } | StoreError::AuthFailed { .. })
        )
    }

    pub(super) fn client(&self) -> Client {
        self.client.clone()
    }

    /// Runs one etcd call under the deadline, turning failures into errors naming `op`.
    pub(super) async fn timed<T>(
        &self,
        op: impl Into<String>,
        f: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.op_timeout, f).await {
            Err(_) => Err(StoreError::Timeout {
                endpoints: self.endpoints.clone(),
                op: op.into(),
                secs: self.op_timeout.as_secs(),
            }),
            Ok(Err(source)) => Err(self.etcd_error(op.into(), source)),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// Changes each time an unreachable member is taken out of the client's set; None with
    /// a single endpoint.
    pub(super) fn member_removals(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.health.as_ref().map(|h| {
            let mut rx = h.removals();
            rx.borrow_and_update();
            rx
        })
    }

    /// Changes each time an unreachable member answers again; None with a single endpoint.
    pub(super) fn member_returns(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.health.as_ref().map(|h| {
            let mut rx = h.returns();
            rx.borrow_and_update();
            rx
        })
    }

    /// Like [`timed`](Self::timed), for a request that may safely be sent twice. With several
    /// endpoints, a request that waits on a member when it is taken out of the client's set
    /// (cut off: it would hang until the deadline), or that a failing member refuses, is sent
    /// again to the others, each attempt with the full deadline.
    pub(super) async fn timed_resent<T, F, Fut>(
        &self,
        op: impl Into<String>,
        mut f: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let op = op.into();
        let Some(mut removals) = self.member_removals() else {
            return self.timed(op, f()).await;
        };
        // Bounds the resends when every member refuses (all down): then the caller retries.
        let mut resends = 3;
        loop {
            let attempt = tokio::time::timeout(self.op_timeout, f());
            let result = tokio::select! {
                r = attempt => r,
                Ok(()) = removals.changed() => {
                    debug!(op, "an etcd member was taken out while a request waited on it; sending it again");
                    continue;
                }
            };
            match result {
                Err(_) => {
                    return Err(StoreError::Timeout {
                        endpoints: self.endpoints.clone(),
                        op,
                        secs: self.op_timeout.as_secs(),
                    })
                }
                Ok(Err(source)) if resends > 0 && is_transient(&source) => {
                    resends -= 1;
                    debug!(op, error = %source, "an etcd member refused a request; sending it again");
                    // Give the probe time to take that member out, unless it already did.
                    let _ = tokio::time::timeout(Duration::from_secs(1), removals.changed()).await;
                }
                Ok(Err(source)) => return Err(self.etcd_error(op, source)),
                Ok(Ok(v)) => return Ok(v),
            }
        }
    }

    // ---- config ----

    /// The network config; `Ok(None)` when the key does not exist.
    pub async fn get_config(&self) -> Result<Option<NetworkConfig>, StoreError> {
        let key = self.config_key();
        let mut c = self.client();
        let resp = self
            .timed(format!("get {key}"), c.get(key.clone(), None))
            .await?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(kv.value());
        NetworkConfig::parse(&text)
            .map(Some)
            .map_err(|problems| StoreError::Config { key, problems })
    }

    /// The config document exactly as stored, valid or not; `Ok(None)` when missing.
    pub async fn get_config_text(&self) -> Result<Option<String>, StoreError> {
        let key = self.config_key();
        let mut c = self.client();
        let resp = self.timed(format!("get {key}"), c.get(key, None)).await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Waits until a valid config is stored. Each distinct reason for waiting (missing,
    /// invalid, etcd unreachable) is logged once; an invalid config gets a line per problem.
    pub async fn wait_for_config(&self) -> Result<NetworkConfig, StoreError> {
        self.wait_for_config_counting(|| {}).await
    }

    /// [`wait_for_config`](Self::wait_for_config), calling `on_error` for each failed read.
    /// Refused credentials or permissions end the wait with the error: they never fix
    /// themselves.
    pub async fn wait_for_config_counting(
        &self,
        on_error: impl Fn(),
    ) -> Result<NetworkConfig, StoreError> {
        let mut last_reason: Vec<String> = Vec::new();
        loop {
            let reason = match self.get_config().await {
                Ok(Some(cfg)) => {
                    if !last_reason.is_empty() {
                        info!(key = %self.config_key(), "network config found");
                    }
                    return Ok(cfg);
                }
                Err(e) if e.is_refusal() => return Err(e),
                Ok(None) => vec![format!(
                    "no network config at {} yet; waiting for it (weftctl config set FILE)",
                    self.config_key()
                )],
                Err(StoreError::Config { key, problems }) => {
                    on_error();
                    problems
                        .problems()
                        .iter()
                        .map(|p| format!("cannot use the network config at {key}: {p}"))
                        .collect()
                }
                Err(e) => {
                    on_error();
                    vec![format!("cannot use the network config: {e}")]
                }
            };
            if reason != last_reason {
                for line in &reason {
                    warn!("{line}");
                }
                last_reason = reason;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Validates and stores a config document.
    pub async fn put_config(&self, cfg_json: &str) -> Result<(), StoreError> {
        let key = self.config_key();
        NetworkConfig::parse(cfg_json).map_err(|problems| StoreError::Config {
            key: key.clone(),
            problems,
        })?;
        let mut c = self.client();
        self.timed(format!("put {key}"), c.put(key.clone(), cfg_json, None))
            .await?;
        Ok(())
    }

    // ---- reading leases ----

    async fn entries(&self, revision: i64) -> Result<(Vec<Entry>, i64), StoreError> {
        let prefix = self.subnets_prefix();
        let mut opts = GetOptions::new().with_prefix();
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let mut c = self.client();
        let mut resp = self
            .timed(format!("list {prefix}"), c.get(prefix.clone(), Some(opts)))
            .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let entries = resp
            .take_kvs()
            .into_iter()
            .filter_map(|kv| self.entry(kv))
            .collect();
        Ok((entries, rev))
    }

    /// Decodes one key-value; `None` for keys deeper than a lease (not ours to judge).
    pub(super) fn entry_from(&self, kv: &KeyValue) -> Option<(String, Result<Lease, String>)> {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let name = key.strip_prefix(&self.subnets_prefix())?.to_string();
        if name.contains('/') {
            return None;
        }
        let lease = Lease::parse(&name, kv.value())
            .map(|mut l| {
                l.etcd_lease_id = (kv.lease() != 0).then_some(kv.lease());
                l.mod_revision = kv.mod_revision();
                l
            })
            .map_err(|e| match e {
                LeaseError::Value { why, .. } => format!("value is not a flannel lease: {why}"),
                other => other.to_string(),
            });
        Some((key, lease))
    }

    fn entry(&self, kv: KeyValue) -> Option<Entry> {
        let (key, lease) = self.entry_from(&kv)?;
        let name = &key[self.subnets_prefix().len()..];
        let subnet = parse_lease_key_name(name).ok().map(|(s, _)| s);
        Some(Entry {
            key,
            kv,
            subnet,
            lease,
        })
    }

    /// Remaining seconds of each etcd lease (-1 when gone), looked up concurrently.
    pub(super) async fn ttls(&self, ids: &[i64]) -> Result<HashMap<i64, i64>, StoreError> {
        let mut out = HashMap::new();
        let unique: Vec<i64> = ids
            .iter()
            .copied()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        // A sliding window: a new lookup starts as soon as one finishes, so a slow answer
        // never holds up the rest of a batch.
        let mut pending = unique.into_iter();
        let mut set = tokio::task::JoinSet::new();
        loop {
            while set.len() < TTL_CONCURRENCY {
                let Some(id) = pending.next() else { break };
                let mut lc = self.client.lease_client();
                let t = self.op_timeout;
                set.spawn(
                    async move { (id, tokio::time::timeout(t, lc.time_to_live(id, None)).await) },
                );
            }
            let Some(joined) = set.join_next().await else {
                break;
            };
            let Ok((id, res)) = joined else { continue };
            match res {
                Ok(Ok(r)) => {
                    out.insert(id, r.ttl());
                }
                Ok(Err(source)) => {
                    return Err(
                        self.etcd_error(format!("time-to-live of etcd lease {id:x}"), source)
                    )
                }
                Err(_) => {
                    return Err(StoreError::Timeout {
                        endpoints: self.endpoints.clone(),
                        op: format!("time-to-live of etcd lease {id:x}"),
                        secs: self.op_timeout.as_secs(),
                    })
                }
            }
        }
        Ok(out)
    }

    /// Sets `expiration` of every non-reservation from its etcd lease's remaining TTL.
    pub(super) async fn fill_expirations(&self, leases: &mut [Lease]) -> Result<(), StoreError> {
        let ids: Vec<i64> = leases.iter().filter_map(|l| l.etcd_lease_id).collect();
        if ids.is_empty() {
            return Ok(());
        }
        let ttls = self.ttls(&ids).await?;
        let now = SystemTime::now();
        for l in leases.iter_mut() {
            if let Some(id) = l.etcd_lease_id {
                let secs = ttls.get(&id).copied().unwrap_or(0).max(0) as u64;
                l.expiration = Some(now + Duration::from_secs(secs));
            }
        }
        Ok(())
    }

    /// Splits raw entries into usable leases and skipped keys; with a config, leases outside
    /// the network are skipped too.
    pub(super) fn sort_entries(
        entries: Vec<(String, Result<Lease, String>, i64)>,
        cfg: Option<&NetworkConfig>,
    ) -> (Vec<Lease>, Vec<SkippedLease>) {
        let mut leases = Vec::new();
        let mut skipped = Vec::new();
        for (key, lease, mod_revision) in entries {
            match lease {
                Ok(l) => match outside_network(&l, cfg) {
                    None => leases.push(l),
                    Some(reason) => skipped.push(SkippedLease {
                        key,
                        reason,
                        mod_revision,
                    }),
                },
                Err(reason) => skipped.push(SkippedLease {
                    key,
                    reason,
                    mod_revision,
                }),
            }
        }
        leases.sort_by_key(|l| (l.subnet.network(), l.subnet.prefix_len()));
        (leases, skipped)
    }

    /// All leases with their expirations, at the current revision (or `revision` if > 0).
    pub(super) async fn list_at(
        &self,
        cfg: Option<&NetworkConfig>,
        revision: i64,
    ) -> Result<LeaseList, StoreError> {
        let (entries, rev) = self.entries(revision).await?;
        let raw = entries
            .into_iter()
            .map(|e| (e.key, e.lease, e.kv.mod_revision()))
            .collect();
        let (mut leases, skipped) = Self::sort_entries(raw, cfg);
        self.fill_expirations(&mut leases).await?;
        Ok(LeaseList {
            leases,
            skipped,
            revision: rev,
        })
    }

    /// All leases, sorted by subnet. With a config, leases outside its network are skipped.
    pub async fn list_leases(&self, cfg: Option<&NetworkConfig>) -> Result<LeaseList, StoreError> {
        self.list_at(cfg, 0).await
    }

    /// Like [`list_leases`](Self::list_leases) but in one round trip: no TTL look-ups, so
    /// leases on an etcd lease carry no `expiration`. weftd starts from this listing: the
    /// datapath never reads a peer's expiry, and with thousands of leases one look-up per
    /// lease would dominate a cold start.
    pub async fn list_leases_untimed(
        &self,
        cfg: Option<&NetworkConfig>,
    ) -> Result<LeaseList, StoreError> {
        let (entries, revision) = self.entries(0).await?;
        let raw = entries
            .into_iter()
            .map(|e| (e.key, e.lease, e.kv.mod_revision()))
            .collect();
        let (leases, skipped) = Self::sort_entries(raw, cfg);
        Ok(LeaseList {
            leases,
            skipped,
            revision,
        })
    }

    /// The lease of one subnet, if any (a key that does not parse is an error naming it).
    pub async fn get_lease(&self, subnet: Ipv4Net) -> Result<Option<Lease>, StoreError> {
        let Some(e) = self.find_entry(subnet).await? else {
            return Ok(None);
        };
        let mut lease = e.lease.map_err(|why| LeaseError::Value {
            key: e.key.clone(),
            why,
        })?;
        self.fill_expirations(std::slice::from_mut(&mut lease))
            .await?;
        Ok(Some(lease))
    }

    /// The entry whose key names `subnet` (also a dual-stack key starting with it).
    async fn find_entry(&self, subnet: Ipv4Net) -> Result<Option<Entry>, StoreError> {
        let key = format!("{}{}", self.subnets_prefix(), lease_key_name(subnet, None));
        let mut c = self.client();
        let mut resp = self
            .timed(
                format!("get {key}"),
                c.get(key.clone(), Some(GetOptions::new().with_prefix())),
            )
            .await?;
        Ok(resp
            .take_kvs()
            .into_iter()
            .filter_map(|kv| self.entry(kv))
            .find(|e| e.subnet == Some(subnet)))
    }

    /// Starts a watch of all leases after `after_revision` (0: list first and report every
    /// current lease as added). See [`LeaseWatcher`].
    pub fn watch_leases(&self, cfg: Option<NetworkConfig>, after_revision: i64) -> LeaseWatcher {
        LeaseWatcher::new(self.clone(), cfg, after_revision)
    }

    /// Starts a watch right after a listing, whose leases the caller already knows.
    pub fn watch_from_list(&self, cfg: Option<NetworkConfig>, list: &LeaseList) -> LeaseWatcher {
        LeaseWatcher::from_list(self.clone(), cfg, list)
    }

    // ---- this host's lease ----

    pub(super) async fn grant(&self, ttl: Duration) -> Result<i64, StoreError> {
        let secs = ttl.as_secs().max(1) as i64;
        let mut c = self.client();
        let resp = self
            .timed("grant etcd lease", c.lease_grant(secs, None))
            .await?;
        Ok(resp.id())
    }

    /// Best effort: an etcd lease nobody uses expires on its own anyway.
    async fn revoke_quietly(&self, id: i64) {
        let mut c = self.client();
        if let Err(e) = self
            .timed(format!("revoke etcd lease {id:x}"), c.lease_revoke(id))
            .await
        {
            debug!("{e}");
        }
    }

    /// Writes `value` at `key` if `when` holds; returns the new revision, or `None` when the
    /// comparison failed.
    async fn put_if(
        &self,
        key: &str,
        value: &str,
        lease: Option<i64>,
        when: Vec<Compare>,
    ) -> Result<Option<i64>, StoreError> {
        let opts = lease.map(|id| PutOptions::new().with_lease(id));
        let txn = Txn::new()
            .when(when)
            .and_then(vec![TxnOp::put(key, value, opts)]);
        let mut c = self.client();
        let resp = self.timed(format!("put {key}"), c.txn(txn)).await?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map(|h| h.revision()).unwrap_or(0)))
    }

    /// Acquires this host's lease, in flannel's order: the lease already holding
    /// `attrs.public_ip` if it still fits the config (its attributes are rewritten), else
    /// `prev_subnet` if free, else a random free subnet among the first 100 free ones.
    /// With IPv6 (the network has it and `attrs` carries a `PublicIPv6`) the IPv6 subnet is
    /// chosen the same way on its own: the reused lease's when it still fits, else
    /// `prev_subnet6`, else a random free one; a reused lease whose IPv6 part must change is
    /// moved to its new key in one transaction. A lost race re-reads the leases and retries.
    pub async fn acquire_lease(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        prev: impl Into<Previous>,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let prev = prev.into();
        if cfg.network.is_none() {
            return Err(StoreError::Options(
                "the network config has EnableIPv4 false; flannel's etcd layout needs an IPv4 subnet in every lease key"
                    .into(),
            ));
        }
        let value = attrs.to_json();
        let mut granted: Option<i64> = None;
        let mut result = self
            .acquire_attempts(cfg, attrs, &value, prev, ttl, &mut granted)
            .await;
        if let Ok(lease) = result {
            result = self.unique_ipv6(cfg, lease, &value).await;
        }
        if result.is_err() {
            if let Some(id) = granted {
                self.revoke_quietly(id).await;
            }
        }
        result
    }

    /// The etcd lease to hang a new key on: the one granted by an earlier attempt, else a
    /// new one.
    async fn granted(&self, granted: &mut Option<i64>, ttl: Duration) -> Result<i64, StoreError> {
        match *granted {
            Some(id) => Ok(id),
            None => Ok(*granted.insert(self.grant(ttl).await?)),
        }
    }

    async fn acquire_attempts(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        value: &str,
        prev: Previous,
        ttl: Duration,
        granted: &mut Option<i64>,
    ) -> Result<Lease, StoreError> {
        let want6 = attrs.public_ipv6.is_some() && cfg.ipv6_network.is_some();
        for attempt in 1..=MAX_ATTEMPTS {
            let (entries, _) = self.entries(0).await?;
            let taken: HashSet<IpNet> = entries
                .iter()
                .filter_map(|e| e.lease.as_ref().ok())
                .flat_map(|l| [Some(IpNet::V4(l.subnet)), l.subnet6.map(IpNet::V6)])
                .flatten()
                .chain(entries.iter().filter_map(|e| e.subnet.map(IpNet::V4)))
                .collect();
            let mut mine: Vec<&Lease> = entries
                .iter()
                .filter_map(|e| e.lease.as_ref().ok())
                .filter(|l| l.attrs.public_ip == attrs.public_ip && cfg.subnet_in_range(l.subnet))
                .collect();
            // A reservation wins over an ordinary lease; then the newest.
            mine.sort_by_key(|l| (l.is_reservation(), l.mod_revision));

            if let Some(&old) = mine.last() {
                // The IPv6 part: a reservation's is the operator's; an ordinary lease keeps
                // its own while it fits, else gets one as a new host would.
                let subnet6 = if old.is_reservation() || !want6 {
                    old.subnet6.filter(|_| want6 || old.is_reservation())
                } else {
                    match old.subnet6.filter(|s| cfg.subnet6_in_range(*s)) {
                        Some(s) => Some(s),
                        None => Some(choose6(cfg, prev.subnet6, &taken)?),
                    }
                };
                let lease_id = if old.is_reservation() {
                    None
                } else {
                    Some(self.granted(granted, ttl).await?)
                };
                let new = Lease {
                    subnet: old.subnet,
                    subnet6,
                    attrs: attrs.clone(),
                    expiration: lease_id.map(|_| SystemTime::now() + ttl),
                    etcd_lease_id: lease_id,
                    mod_revision: 0,
                };
                if let Some(rev) = self.rewrite(old, &new, value).await? {
                    *granted = None;
                    // The key now hangs on the new etcd lease; the old one would only linger.
                    let stale: Vec<i64> = mine
                        .iter()
                        .filter_map(|l| l.etcd_lease_id)
                        .filter(|id| Some(*id) != lease_id)
                        .collect();
                    for id in stale {
                        self.revoke_quietly(id).await;
                    }
                    info!(subnet = %old.subnet, ipv6_subnet = ?new.subnet6, reserved = old.is_reservation(), "reusing the lease held by {}", attrs.public_ip);
                    return Ok(Lease {
                        mod_revision: rev,
                        ..new
                    });
                }
                debug!(attempt, subnet = %old.subnet, "own lease changed while reusing it; retrying");
                continue;
            }

            let choice = choose(cfg, Family::V4, prev.subnet.map(IpNet::V4), &taken)?;
            let IpNet::V4(choice) = choice else {
                unreachable!("an IPv4 range gives IPv4 subnets")
            };
            let choice6 = if want6 {
                Some(choose6(cfg, prev.subnet6, &taken)?)
            } else {
                None
            };
            let id = self.granted(granted, ttl).await?;
            let key = format!(
                "{}{}",
                self.subnets_prefix(),
                lease_key_name(choice, choice6)
            );
            let absent = vec![Compare::version(key.as_str(), CompareOp::Equal, 0)];
            if let Some(rev) = self.put_if(&key, value, Some(id), absent).await? {
                *granted = None;
                info!(subnet = %choice, ipv6_subnet = ?choice6, public_ip = %attrs.public_ip, "acquired a new lease");
                return Ok(Lease {
                    subnet: choice,
                    subnet6: choice6,
                    attrs: attrs.clone(),
                    expiration: Some(SystemTime::now() + ttl),
                    etcd_lease_id: Some(id),
                    mod_revision: rev,
                });
            }
            debug!(attempt, subnet = %choice, "another host took the subnet first; retrying");
        }
        Err(StoreError::Contention {
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Makes sure no older lease has this lease's IPv6 subnet. The key names both subnets,
    /// so the creation transaction guards the IPv4 one only: two hosts starting at once can
    /// pick one IPv6 subnet under two keys. Each checks after writing; the newer of the two
    /// moves to another IPv6 subnet (one transaction, see [`Self::rewrite`]), so the older
    /// keeps its own and peers, which program the older of two overlapping leases, never
    /// see a conflict for long.
    async fn unique_ipv6(
        &self,
        cfg: &NetworkConfig,
        mut lease: Lease,
        value: &str,
    ) -> Result<Lease, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(s6) = lease.subnet6 else {
                return Ok(lease);
            };
            let (entries, _) = self.entries(0).await?;
            let others = entries
                .iter()
                .filter_map(|e| e.lease.as_ref().ok())
                .filter(|l| l.subnet != lease.subnet);
            let older = others.clone().any(|l| {
                l.subnet6 == Some(s6)
                    && (l.mod_revision, l.key_name()) < (lease.mod_revision, lease.key_name())
            });
            if !older || lease.is_reservation() {
                return Ok(lease);
            }
            let taken: HashSet<IpNet> = others
                .filter_map(|l| l.subnet6.map(IpNet::V6))
                .chain(std::iter::once(IpNet::V6(s6)))
                .collect();
            let new = Lease {
                subnet6: Some(choose6(cfg, None, &taken)?),
                ..lease.clone()
            };
            warn!(subnet = %lease.subnet, taken = %s6, new = ?new.subnet6, "another host took the same IPv6 subnet first; moving to another");
            if let Some(rev) = self.rewrite(&lease, &new, value).await? {
                lease = Lease {
                    mod_revision: rev,
                    ..new
                };
            }
        }
        Err(StoreError::Contention {
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Writes `new` over `old` if `old` is unchanged since it was read: in place when the key
    /// stays, else (the IPv6 part changed) the old key deleted and the new one created in
    /// one transaction, so no moment has both or neither. The new revision, or `None` when
    /// `old` changed or the new key is taken.
    async fn rewrite(
        &self,
        old: &Lease,
        new: &Lease,
        value: &str,
    ) -> Result<Option<i64>, StoreError> {
        let (old_key, new_key) = (self.lease_key(old), self.lease_key(new));
        let opts = new.etcd_lease_id.map(|id| PutOptions::new().with_lease(id));
        let mut when = vec![Compare::mod_revision(
            old_key.as_str(),
            CompareOp::Equal,
            old.mod_revision,
        )];
        let mut ops = Vec::new();
        if old_key != new_key {
            when.push(Compare::version(new_key.as_str(), CompareOp::Equal, 0));
            // The delete goes first so a watcher sees the old key leave before the new one
            // arrives.
            ops.push(TxnOp::delete(old_key.as_str(), None));
            info!(old = %old_key, new = %new_key, "moving this host's lease to a new key (its IPv6 subnet changed)");
        }
        ops.push(TxnOp::put(new_key.as_str(), value, opts));
        let txn = Txn::new().when(when).and_then(ops);
        let mut c = self.client();
        let resp = self.timed(format!("put {new_key}"), c.txn(txn)).await?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map(|h| h.revision()).unwrap_or(0)))
    }

    /// Renews a lease by keeping its one etcd lease alive (no new etcd lease per renewal).
    /// `LeaseGone` when the key or the etcd lease has vanished: the caller re-acquires. A lease
    /// an operator turned into a reservation comes back as that reservation.
    /// The etcd lease is refreshed to the TTL it was granted with (`ttl` is logged if it
    /// differs; a new TTL takes effect at the next acquisition).
    pub async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
        let key = self.lease_key(lease);
        let gone = |why: &str| StoreError::LeaseGone {
            subnet: lease.subnet.to_string(),
            why: why.to_string(),
        };
        let mut c = self.client();
        let Some(id) = lease.etcd_lease_id else {
            let resp = self
                .timed(format!("get {key}"), c.get(key.clone(), None))
                .await?;
            let kv = resp
                .kvs()
                .first()
                .ok_or_else(|| gone("the reservation was removed"))?;
            if kv.lease() != 0 {
                return Err(gone("the reservation was replaced by an expiring lease"));
            }
            return Ok(Lease {
                mod_revision: kv.mod_revision(),
                ..lease.clone()
            });
        };
        let (alive, current, ttl_info) = tokio::join!(
            self.timed_resent(format!("keep-alive etcd lease {id:x}"), || {
                let mut c = self.client();
                async move { c.lease_keep_alive(id).await }
            }),
            self.timed_resent(format!("get {key}"), || {
                let (mut c, key) = (self.client(), key.clone());
                async move { c.get(key, None).await }
            }),
            self.timed_resent(format!("time-to-live of etcd lease {id:x}"), || {
                let mut c = self.client();
                async move { c.lease_time_to_live(id, None).await }
            }),
        );
        let current = current?;
        let kv = current.kvs().first();
        match alive {
            Ok(_) => {}
            Err(StoreError::Etcd {
                source: etcd_client::Error::LeaseKeepAliveError(_),
                ..
            }) => {
                return Err(gone("its etcd lease expired or was revoked"));
            }
            Err(e) => return Err(e),
        }
        let Some(kv) = kv else {
            self.revoke_quietly(id).await;
            return Err(gone("the key was deleted"));
        };
        if kv.lease() != id {
            let now_reserved = kv.lease() == 0
                && LeaseAttrs::from_json(&key, kv.value())
                    .is_ok_and(|a| a.public_ip == lease.attrs.public_ip);
            self.revoke_quietly(id).await;
            if now_reserved {
                info!(subnet = %lease.subnet, "the lease was turned into a reservation");
                return Ok(Lease {
                    expiration: None,
                    etcd_lease_id: None,
                    mod_revision: kv.mod_revision(),
                    ..lease.clone()
                });
            }
            return Err(gone("the key now belongs to another etcd lease"));
        }
        let granted = ttl_info?.granted_ttl().max(0) as u64;
        if granted != ttl.as_secs() {
            debug!(
                granted,
                wanted = ttl.as_secs(),
                "etcd lease keeps its granted TTL until the next acquisition"
            );
        }
        Ok(Lease {
            expiration: Some(SystemTime::now() + Duration::from_secs(granted)),
            mod_revision: kv.mod_revision(),
            ..lease.clone()
        })
    }

    /// Rewrites a lease's value, keeping its etcd lease (e.g. after the VTEP MAC changed).
    pub async fn update_lease_attrs(
        &self,
        lease: &Lease,
        attrs: &LeaseAttrs,
    ) -> Result<Lease, StoreError> {
        let key = self.lease_key(lease);
        let id = lease.etcd_lease_id.unwrap_or(0);
        let when = vec![
            Compare::version(key.as_str(), CompareOp::Greater, 0),
            Compare::lease(key.as_str(), CompareOp::Equal, id),
        ];
        match self
            .put_if(&key, &attrs.to_json(), lease.etcd_lease_id, when)
            .await?
        {
            Some(rev) => Ok(Lease {
                attrs: attrs.clone(),
                mod_revision: rev,
                ..lease.clone()
            }),
            None => Err(StoreError::LeaseGone {
                subnet: lease.subnet.to_string(),
                why: "the key was deleted or taken over".into(),
            }),
        }
    }

    // ---- operator actions ----

    /// Revokes a subnet's lease: deletes exactly its key, and only if it has not changed since
    /// it was read, so a host that re-acquired the subnet meanwhile keeps it. Other keys on the
    /// same etcd lease stay; the etcd lease itself is revoked only once nothing hangs on it.
    /// `Ok(false)` when there is no lease; reservations are refused (they are removed with
    /// `remove_reservation`).
    pub async fn revoke_lease(&self, subnet: Ipv4Net) -> Result<bool, StoreError> {
        let Some(e) = self.find_entry(subnet).await? else {
            return Ok(false);
        };
        let public_ip = e
            .lease
            .as_ref()
            .map(|l| l.attrs.public_ip.to_string())
            .unwrap_or_else(|_| "?".into());
        if e.kv.lease() == 0 {
            return Err(StoreError::IsReservation {
                subnet: subnet.to_string(),
                public_ip,
            });
        }
        self.delete_unchanged(
            subnet,
            &e.key,
            e.kv.mod_revision(),
            e.kv.lease(),
            &public_ip,
        )
        .await
    }

    /// Revokes `lease` exactly as the caller saw it (its `mod_revision`): `LeaseChanged` and
    /// nothing deleted when the key was rewritten since, `Ok(false)` when it is gone.
    pub async fn revoke_seen_lease(&self, lease: &Lease) -> Result<bool, StoreError> {
        let public_ip = lease.attrs.public_ip.to_string();
        let Some(id) = lease.etcd_lease_id else {
            return Err(StoreError::IsReservation {
                subnet: lease.subnet.to_string(),
                public_ip,
            });
        };
        let key = self.lease_key(lease);
        self.delete_unchanged(lease.subnet, &key, lease.mod_revision, id, &public_ip)
            .await
    }

    async fn delete_unchanged(
        &self,
        subnet: Ipv4Net,
        key: &str,
        mod_revision: i64,
        id: i64,
        public_ip: &str,
    ) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(
                key,
                CompareOp::Equal,
                mod_revision,
            )])
            .and_then(vec![TxnOp::delete(key, None)])
            .or_else(vec![TxnOp::get(key, None)]);
        let mut c = self.client();
        let resp = self.timed(format!("delete {key}"), c.txn(txn)).await?;
        if !resp.succeeded() {
            let still_there = resp
                .op_responses()
                .iter()
                .any(|r| matches!(r, etcd_client::TxnOpResponse::Get(g) if !g.kvs().is_empty()));
            if !still_there {
                return Ok(false);
            }
            return Err(StoreError::LeaseChanged {
                subnet: subnet.to_string(),
                key: key.to_string(),
            });
        }
        info!(%subnet, %public_ip, "lease revoked");
        self.revoke_if_unused(id).await;
        Ok(true)
    }

    /// Revokes etcd lease `id` when no key hangs on it any more: it would only linger until
    /// its TTL runs out.
    pub(super) async fn revoke_if_unused(&self, id: i64) {
        let mut c = self.client();
        let keys = self
            .timed(
                format!("keys of etcd lease {id:x}"),
                c.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys())),
            )
            .await;
        match keys {
            Ok(r) if r.ttl() > 0 && r.keys().is_empty() => self.revoke_quietly(id).await,
            Ok(_) => {}
            Err(e) => debug!("{e}"),
        }
    }

    /// Reserves `subnet` for `public_ip`: a key without an etcd lease, so it never expires.
    /// A lease already held by the same PublicIP becomes the reservation. `v6` adds an IPv6
    /// subnet and public IPv6 address to it (a dual-stack key).
    pub async fn add_reservation(
        &self,
        subnet: Ipv4Net,
        public_ip: Ipv4Addr,
        v6: Option<(Ipv6Net, Ipv6Addr)>,
    ) -> Result<(), StoreError> {
        if let Some(cfg) = self.get_config().await? {
            not_in_network(&cfg, IpNet::V4(subnet))?;
            if let Some((s6, _)) = v6 {
                not_in_network(&cfg, IpNet::V6(s6))?;
            }
        }
        let (entries, _) = self.entries(0).await?;
        let leases = || entries.iter().filter_map(|e| e.lease.as_ref().ok());
        if let Some(other) = leases()
            .find(|l| l.is_reservation() && l.attrs.public_ip == public_ip && l.subnet != subnet)
        {
            return Err(StoreError::AlreadyReserved {
                public_ip: public_ip.to_string(),
                subnet: other.subnet.to_string(),
            });
        }
        if let Some((s6, _)) = v6 {
            if let Some(other) = leases().find(|l| l.subnet6 == Some(s6) && l.subnet != subnet) {
                return Err(StoreError::SubnetTaken {
                    subnet: s6.to_string(),
                    public_ip: other.attrs.public_ip.to_string(),
                });
            }
        }
        let mut attrs = LeaseAttrs {
            public_ip,
            public_ipv6: v6.map(|(_, ip)| ip),
            backend_type: String::new(),
            backend_data: None,
            backend_v6_data: None,
        };
        let existing = entries.iter().find(|e| e.subnet == Some(subnet));
        let old = match existing.map(|e| (e, &e.lease)) {
            None => None,
            Some((_, Ok(l))) if l.attrs.public_ip == public_ip => {
                // The host's own lease: its attributes stay, the IPv6 part is the one asked.
                let keep = attrs.public_ipv6;
                attrs = l.attrs.clone();
                attrs.public_ipv6 = keep.or(attrs.public_ipv6);
                Some(l)
            }
            Some((_, Ok(l))) => {
                return Err(StoreError::SubnetTaken {
                    subnet: subnet.to_string(),
                    public_ip: l.attrs.public_ip.to_string(),
                })
            }
            Some((e, Err(why))) => {
                return Err(StoreError::Lease(LeaseError::Value {
                    key: e.key.clone(),
                    why: why.clone(),
                }))
            }
        };
        let new = Lease {
            subnet,
            subnet6: v6.map(|(s, _)| s).or(old.and_then(|l| l.subnet6)),
            attrs,
            expiration: None,
            etcd_lease_id: None,
            mod_revision: 0,
        };
        let value = new.attrs.to_json();
        let done = match old {
            Some(old) => self.rewrite(old, &new, &value).await?,
            None => {
                let key = self.lease_key(&new);
                let when = vec![Compare::version(key.as_str(), CompareOp::Equal, 0)];
                self.put_if(&key, &value, None, when).await?
            }
        };
        match done {
            Some(_) => {
                info!(%subnet, %public_ip, ipv6_subnet = ?new.subnet6, "reservation added");
                Ok(())
            }
            None => Err(StoreError::SubnetTaken {
                subnet: subnet.to_string(),
                public_ip: "another host (it changed while reserving)".into(),
            }),
        }
    }

    /// Deletes a reservation. `Ok(false)` when the subnet has no key; a lease that is not a
    /// reservation is refused and left alone.
    pub async fn remove_reservation(&self, subnet: Ipv4Net) -> Result<bool, StoreError> {
        let Some(e) = self.find_entry(subnet).await? else {
            return Ok(false);
        };
        if e.kv.lease() != 0 {
            let public_ip = e
                .lease
                .as_ref()
                .map(|l| l.attrs.public_ip.to_string())
                .unwrap_or_else(|_| "?".into());
            return Err(StoreError::NotAReservation {
                subnet: subnet.to_string(),
                public_ip,
            });
        }
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(
                e.key.as_str(),
                CompareOp::Equal,
                e.kv.mod_revision(),
            )])
            .and_then(vec![TxnOp::delete(e.key.as_str(), None)]);
        let mut c = self.client();
        let resp = self.timed(format!("delete {}", e.key), c.txn(txn)).await?;
        if !resp.succeeded() {
            return Err(StoreError::NotAReservation {
                subnet: subnet.to_string(),
                public_ip: "a host (it changed while removing)".into(),
            });
        }
        info!(%subnet, "reservation removed");
        Ok(true)
    }
}

/// Why a lease is not part of `cfg`'s network, if it is not.
pub(super) fn outside_network(l: &Lease, cfg: Option<&NetworkConfig>) -> Option<String> {
    let cfg = cfg?;
    if cfg.contains_subnet(l.subnet) {
        return None;
    }
    Some(
        LeaseError::OutsideNetwork {
            key: l.key_name(),
            subnet: l.subnet.to_string(),
            network: cfg
                .network
                .map(|n| format!("{n} (SubnetLen {})", cfg.subnet_len))
                .unwrap_or_else(|| "(none)".into()),
        }
        .to_string(),
    )
}
/// What this host held before, for the acquisition to prefer: the subnets in the previous
/// subnet.env (or the lease being re-acquired).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Previous {
    pub subnet: Option<Ipv4Net>,
    pub subnet6: Option<Ipv6Net>,
}

/// Refuses a subnet that is not one of the network's (of its family).
fn not_in_network(cfg: &NetworkConfig, subnet: IpNet) -> Result<(), StoreError> {
    if cfg.contains(subnet) {
        return Ok(());
    }
    let family = Family::of(subnet.addr());
    let len = match family {
        Family::V4 => cfg.subnet_len,
        Family::V6 => cfg.ipv6_subnet_len,
    };
    Err(StoreError::NotInNetwork {
        subnet: subnet.to_string(),
        network: cfg
            .network_of(family)
            .map(|n| n.to_string())
            .unwrap_or_default(),
        len,
    })
}

impl From<Option<Ipv4Net>> for Previous {
    fn from(subnet: Option<Ipv4Net>) -> Previous {
        Previous {
            subnet,
            subnet6: None,
        }
    }
}

/// flannel's choice of a new subnet in `family` (see [`NetworkConfig::choose_subnet`]), or
/// the error naming the exhausted range.
fn choose(
    cfg: &NetworkConfig,
    family: Family,
    prev: Option<IpNet>,
    taken: &HashSet<IpNet>,
) -> Result<IpNet, StoreError> {
    let free = |s: &IpNet| !taken.contains(s);
    let pick = |n| rand::random_range(0..n);
    if let Some(s) = cfg.choose_subnet(family, prev, free, RANDOM_POOL, pick) {
        return Ok(s);
    }
    let (min, max, len) = cfg
        .range_of(family)
        .unwrap_or((family.addr(0), family.addr(0), 0));
    let in_range = taken
        .iter()
        .filter(|s| Family::of(s.addr()) == family && cfg.in_range(**s))
        .count() as u64;
    Err(StoreError::NoFreeSubnet {
        min: min.to_string(),
        max: max.to_string(),
        len,
        taken: in_range,
        total: cfg.subnet_count_in(family),
    })
}

/// [`choose`] for IPv6.
fn choose6(
    cfg: &NetworkConfig,
    prev: Option<Ipv6Net>,
    taken: &HashSet<IpNet>,
) -> Result<Ipv6Net, StoreError> {
    match choose(cfg, Family::V6, prev.map(IpNet::V6), taken)? {
        IpNet::V6(s) => Ok(s),
        IpNet::V4(_) => unreachable!("an IPv6 range gives IPv6 subnets"),
    }
}
