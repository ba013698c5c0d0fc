//! Timed etcd calls. Every request has a deadline, so an unreachable etcd is an error that
//! names the endpoints, never a hang; etcd's failures become errors that name the endpoints,
//! the user and the operation, with refusals told apart by their gRPC status code.

use std::future::Future;
use std::time::Duration;

use tonic::Code;
use tracing::debug;

use super::EtcdRegistry;
use crate::store::StoreError;

/// Turns an etcd failure into an error naming the endpoints, the user and `op`.
pub(super) fn classify(
    endpoints: &str,
    user: &str,
    prefix: &str,
    op: String,
    source: etcd_client::Error,
) -> StoreError {
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

/// Whether trying again later may help with this etcd failure.
pub(in crate::store) fn is_transient(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
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
pub(in crate::store) fn status_code(e: &StoreError) -> Option<Code> {
    match e {
        StoreError::Etcd {
            source: etcd_client::Error::GRpcStatus(s),
            ..
        } => Some(s.code()),
        _ => None,
    }
}

impl EtcdRegistry {
    /// Turns an etcd failure into an error naming the endpoints, the user and `op` (which
    /// names the key).
    pub(in crate::store) fn etcd_error(
        &self,
        op: String,
        source: etcd_client::Error,
    ) -> StoreError {
        classify(
            &self.endpoints,
            &self.user,
            self.layout.prefix(),
            op,
            source,
        )
    }

    fn timeout(&self, op: String) -> StoreError {
        StoreError::Timeout {
            endpoints: self.endpoints.clone(),
            op,
            secs: self.op_timeout.as_secs(),
        }
    }

    /// Runs one etcd call under the deadline, turning failures into errors naming `op`.
    pub(in crate::store) async fn timed<T>(
        &self,
        op: impl Into<String>,
        f: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.op_timeout, f).await {
            Err(_) => Err(self.timeout(op.into())),
            Ok(Err(source)) => Err(self.etcd_error(op.into(), source)),
            Ok(Ok(v)) => Ok(v),
        }
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
                Err(_) => return Err(self.timeout(op)),
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

    /// Changes each time an unreachable member is taken out of the client's set; None with
    /// a single endpoint.
    pub(in crate::store) fn member_removals(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.health.as_ref().map(|h| {
            let mut rx = h.removals();
            rx.borrow_and_update();
            rx
        })
    }

    /// Changes each time an unreachable member answers again; None with a single endpoint.
    pub(in crate::store) fn member_returns(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.health.as_ref().map(|h| {
            let mut rx = h.returns();
            rx.borrow_and_update();
            rx
        })
    }
}
