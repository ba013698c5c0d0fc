//! Connecting to etcd: the endpoints, TLS files and credentials from [`EtcdOptions`] become
//! the client's options, and one cheap read proves etcd is there and lets this client in
//! before anything else is asked of it.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};
use tonic::Code;

use super::call::classify;
use super::{EtcdRegistry, Layout};
use crate::store::endpoints::EndpointHealth;
use crate::store::{EtcdOptions, StoreError};

/// How long connecting, and the first read, may take.
pub(super) const OP_TIMEOUT: Duration = Duration::from_secs(5);

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

/// The client's options (and whether they speak TLS), with the credentials to log in.
fn connect_options(opts: &EtcdOptions) -> Result<(ConnectOptions, bool), StoreError> {
    let mut copts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    let tls = tls_options(opts)?;
    let https = tls.is_some();
    if let Some(tls) = tls {
        copts = copts.with_tls(tls);
    }
    match (&opts.username, password(opts)?) {
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
    Ok((copts.with_auto_token_refresh(true), https))
}

/// Who and where a connection goes, for the errors of its first two steps.
struct Dialing {
    endpoints: String,
    user: String,
    layout: Layout,
}

impl Dialing {
    fn unreachable(&self, why: String) -> StoreError {
        StoreError::Unreachable {
            endpoints: self.endpoints.clone(),
            why,
        }
    }

    /// Connecting logs in when a user is given: etcd answers a wrong name or password with
    /// InvalidArgument, and a server without auth with FailedPrecondition. Without a user,
    /// the first read is refused with InvalidArgument when etcd wants one. Anything else that
    /// is not a refusal means etcd cannot be reached.
    fn login_failed(&self, op: String, e: etcd_client::Error) -> StoreError {
        if let etcd_client::Error::GRpcStatus(s) = &e {
            if matches!(
                s.code(),
                Code::InvalidArgument | Code::FailedPrecondition | Code::Unauthenticated
            ) {
                return StoreError::AuthFailed {
                    endpoints: self.endpoints.clone(),
                    user: self.user.clone(),
                    op,
                    why: s.message().to_string(),
                };
            }
        }
        match classify(&self.endpoints, &self.user, self.layout.prefix(), op, e) {
            e @ (StoreError::AuthFailed { .. } | StoreError::PermissionDenied { .. }) => e,
            StoreError::Etcd { source, .. } => self.unreachable(source.to_string()),
            other => self.unreachable(other.to_string()),
        }
    }

    /// The outcome of one step under [`OP_TIMEOUT`].
    async fn step<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(OP_TIMEOUT, f).await {
            Err(_) => Err(self.unreachable(format!("no answer within {}s", OP_TIMEOUT.as_secs()))),
            Ok(Err(e)) => Err(self.login_failed(format!("get {}", self.layout.config_key()), e)),
            Ok(Ok(v)) => Ok(v),
        }
    }
}

impl EtcdRegistry {
    /// Connects and checks that etcd answers, within a few seconds.
    pub(in crate::store) async fn connect(opts: &EtcdOptions) -> Result<EtcdRegistry, StoreError> {
        let endpoints = opts.endpoints.join(",");
        if opts.endpoints.is_empty() || opts.endpoints.iter().any(|e| e.trim().is_empty()) {
            return Err(StoreError::Options(format!(
                "--etcd-endpoints {endpoints:?}: an endpoint is empty"
            )));
        }
        let (copts, https) = connect_options(opts)?;
        let dialing = Dialing {
            endpoints,
            user: user_label(opts),
            layout: Layout::new(&opts.prefix),
        };
        let client = dialing
            .step(Client::connect(opts.endpoints.clone(), Some(copts.clone())))
            .await?;
        let health = EndpointHealth::start(&client, &opts.endpoints, https, &copts).await;
        // The channel connects lazily; one cheap read proves etcd is there and lets us in.
        let count_only = Some(GetOptions::new().with_count_only());
        let mut c = client.clone();
        dialing
            .step(c.get(dialing.layout.config_key(), count_only))
            .await?;
        Ok(EtcdRegistry {
            client,
            layout: dialing.layout,
            endpoints: dialing.endpoints,
            user: dialing.user,
            op_timeout: OP_TIMEOUT,
            health,
        })
    }
}
