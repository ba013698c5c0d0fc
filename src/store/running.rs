//! The config the network runs, next to flannel's document: reading both at one revision,
//! writing the record over the one that was read (so hosts that decide at once decide once),
//! writing a document and its record in one transaction (weftctl), and watching both keys.

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream};

use super::registry::Registry as _;
use super::{EtcdStore, StoreError};

/// `<prefix>/config` and `<prefix>/weft/config` as read together: each value with its mod
/// revision, and the revision of the read.
#[derive(Debug, Clone, Default)]
pub struct ConfigKeys {
    pub config: Option<(String, i64)>,
    pub running: Option<(Vec<u8>, i64)>,
    pub revision: i64,
}

/// A guard on a key: it is at this mod revision, or (`None`) it does not exist.
fn unchanged(key: &str, guard: Option<i64>) -> Compare {
    match guard {
        Some(rev) => Compare::mod_revision(key, CompareOp::Equal, rev),
        None => Compare::version(key, CompareOp::Equal, 0),
    }
}

impl EtcdStore {
    pub fn running_key(&self) -> String {
        self.registry().layout().running_key()
    }

    /// Both keys in one transaction, so they are of one revision.
    pub async fn config_keys(&self) -> Result<ConfigKeys, StoreError> {
        let (config, running) = (self.config_key(), self.running_key());
        let txn = Txn::new().and_then(vec![
            TxnOp::get(config.as_str(), None),
            TxnOp::get(running.as_str(), None),
        ]);
        let mut c = self.registry().client();
        let resp = (self.registry())
            .timed(format!("get {config} and {running}"), c.txn(txn))
            .await?;
        let mut keys = ConfigKeys {
            revision: resp.header().map_or(0, |h| h.revision()),
            ..ConfigKeys::default()
        };
        for (i, op) in resp.op_responses().into_iter().enumerate() {
            let TxnOpResponse::Get(g) = op else { continue };
            let Some(kv) = g.kvs().first() else { continue };
            let rev = kv.mod_revision();
            match i {
                0 => keys.config = Some((String::from_utf8_lossy(kv.value()).into_owned(), rev)),
                _ => keys.running = Some((kv.value().to_vec(), rev)),
            }
        }
        Ok(keys)
    }

    /// Writes the running-config record over the one that was read (`guard`: its mod revision;
    /// `None`: there is none). `Ok(false)` when another writer got there first.
    pub async fn put_running(&self, json: &str, guard: Option<i64>) -> Result<bool, StoreError> {
        self.put_guarded(&[(self.running_key(), json, guard)]).await
    }

    /// Writes a config document and its running-config record in one transaction, if both
    /// are still as read (`None`: absent). `Ok(false)` when either changed meanwhile.
    pub async fn put_config_with_running(
        &self,
        doc: &str,
        config_guard: Option<i64>,
        record: &str,
        running_guard: Option<i64>,
    ) -> Result<bool, StoreError> {
        self.put_guarded(&[
            (self.config_key(), doc, config_guard),
            (self.running_key(), record, running_guard),
        ])
        .await
    }

    /// Puts every `(key, value, guard)` in one transaction if every key is still as read.
    /// The request is named after the first key: a refusal names the key an operator knows.
    async fn put_guarded(&self, puts: &[(String, &str, Option<i64>)]) -> Result<bool, StoreError> {
        let when: Vec<Compare> = puts.iter().map(|(k, _, g)| unchanged(k, *g)).collect();
        let then: Vec<TxnOp> = (puts.iter())
            .map(|(k, v, _)| TxnOp::put(k.as_str(), *v, None))
            .collect();
        let name = puts
            .first()
            .map_or_else(String::new, |(k, _, _)| format!("put {k}"));
        let mut c = self.registry().client();
        let txn = Txn::new().when(when).and_then(then);
        let resp = self.registry().timed(name, c.txn(txn)).await?;
        Ok(resp.succeeded())
    }

    /// Watches `<prefix>/config` and `<prefix>/weft/config` (one range holding nothing else
    /// would need both keys adjacent; they are not) after `revision`: two streams.
    pub async fn watch_config_keys(
        &self,
        revision: i64,
    ) -> Result<(WatchStream, WatchStream), StoreError> {
        let mut out = Vec::new();
        for key in [self.config_key(), self.running_key()] {
            let opts = WatchOptions::new().with_start_revision(revision + 1);
            let mut c = self.registry().client();
            let stream = (self.registry())
                .timed(format!("watch {key}"), c.watch(key.as_str(), Some(opts)))
                .await?;
            out.push(stream);
        }
        let second = out.pop().expect("two watches");
        let first = out.pop().expect("two watches");
        Ok((first, second))
    }
}
