//! The external store: the [`Store`] trait over an etcd v3 cluster (`--datastore-endpoint`).
//!
//! This module owns the mapping from the trait to etcd's KV and Watch APIs: compare-and-swap
//! writes become transactions, prefixes become etcd key ranges, etcd's errors become
//! [`StoreError`]s. etcd keeps the revisions, the history and the watch guarantees itself.
//!
//! # Guarantees
//! - A write that fails a comparison changes nothing (one etcd transaction per write), and the
//!   error is decided inside that transaction: [`StoreError::Conflict`] carries the key as it was
//!   when the comparison failed.
//! - [`EtcdStore::watch`] returns only once etcd has registered the watch.
//!
//! # Caveats
//! - etcd allows a watch from one revision before its compaction point (`from == compact - 1`)
//!   where the embedded store may already answer [`StoreError::Compacted`].
//! - A compacted watch start is reported as the first item of the stream, not by `watch` itself.
//! - Network errors are [`StoreError::Backend`]; the client reconnects on the next call.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    KvClient, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchClient, WatchOptions,
};
use futures::StreamExt;

use super::{
    key_after, lossy, prefix_end, Event, EventKind, KeyValue, RangeRequest, RangeResponse,
    Revision, Store, StoreError, WatchStream,
};

/// How long to wait for a TCP (and TLS) connection to an endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keep-alive: a dead connection is noticed within interval + timeout.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the lookup of the compaction point (after a compacted range) may take.
const COMPACTION_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest response accepted from etcd. gRPC's default of 4 MiB is too small for a range
/// of many objects; etcd's own Go client (and so kube-apiserver) accepts up to 2 GiB.
const MAX_RESPONSE_BYTES: usize = i32::MAX as usize;

/// Where the etcd cluster is and how to authenticate to it.
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    /// Client URLs (`https://10.0.0.1:2379`, or `host:port`, which uses https when TLS files are
    /// given and http otherwise).
    pub endpoints: Vec<String>,
    /// CA bundle that signed the etcd servers' certificates (PEM).
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), together with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Client private key (PEM), together with `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// A [`Store`] backed by an external etcd cluster. Cheap to clone (clones share connections).
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
}

impl EtcdStore {
    /// Connects to etcd and checks that it answers.
    pub async fn connect(options: EtcdOptions) -> Result<EtcdStore, StoreError> {
        if options.endpoints.is_empty() {
            return Err(StoreError::Backend("no etcd endpoint given".to_string()));
        }
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT);
        if let Some(tls) = tls_options(&options).await? {
            connect = connect.with_tls(tls);
        }
        let endpoints = options.endpoints.join(",");
        let client = Client::connect(&options.endpoints, Some(connect))
            .await
            .map_err(|e| StoreError::Backend(format!("connecting to etcd at {endpoints}: {e}")))?;
        let store = EtcdStore { client };
        store.current_revision().await.map_err(|e| {
            StoreError::Backend(format!("etcd at {endpoints} does not answer: {e}"))
        })?;
        Ok(store)
    }

    /// A KV client that accepts responses up to [`MAX_RESPONSE_BYTES`].
    fn kv(&self) -> KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    /// A watch client that accepts responses up to [`MAX_RESPONSE_BYTES`].
    fn watcher(&self) -> WatchClient {
        self.client
            .watch_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    /// The revision etcd has compacted up to, learnt by opening a watch at `requested + 1`
    /// (etcd reports no compaction point with a compacted range). `None` if it cannot be learnt.
    async fn compaction_point(&self, key: &[u8], requested: Revision) -> Option<Revision> {
        let probe = async {
            let options = WatchOptions::new().with_start_revision(requested.max(0) + 1);
            let mut stream = self.watcher().watch(key, Some(options)).await.ok()?;
            while let Ok(Some(response)) = stream.message().await {
                if response.compact_revision() != 0 {
                    return Some(response.compact_revision());
                }
                if response.canceled() || !response.events().is_empty() {
                    return None;
                }
            }
            None
        };
        tokio::time::timeout(COMPACTION_PROBE_TIMEOUT, probe)
            .await
            .ok()
            .flatten()
    }

    /// Maps an error of a read or compaction at `requested` to a [`StoreError`].
    async fn revision_error(
        &self,
        error: etcd_client::Error,
        key: &[u8],
        requested: Revision,
    ) -> StoreError {
        match classify(&error) {
            ErrorClass::Compacted => StoreError::Compacted {
                requested,
                compacted: self
                    .compaction_point(key, requested)
                    .await
                    .unwrap_or(requested),
            },
            ErrorClass::FutureRevision => match self.current_revision().await {
                Ok(current) => StoreError::FutureRevision { requested, current },
                Err(e) => e,
            },
            ErrorClass::Other => backend(error),
        }
    }
}

/// TLS settings from the CA/certificate/key files, if any is given.
async fn tls_options(options: &EtcdOptions) -> Result<Option<TlsOptions>, StoreError> {
    let read = |path: PathBuf| async move {
        tokio::fs::read(&path)
            .await
            .map_err(|e| StoreError::Backend(format!("reading {}: {e}", path.display())))
    };
    let mut tls = TlsOptions::new();
    let mut any = false;
    if let Some(ca) = &options.ca_file {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca.clone()).await?));
        any = true;
    }
    match (&options.cert_file, &options.key_file) {
        (Some(cert), Some(key)) => {
            let identity = Identity::from_pem(read(cert.clone()).await?, read(key.clone()).await?);
            tls = tls.identity(identity);
            any = true;
        }
        (None, None) => {}
        _ => {
            return Err(StoreError::Backend(
                "an etcd client certificate needs both a certificate and a key file".to_string(),
            ))
        }
    }
    Ok(any.then_some(tls))
}

enum ErrorClass {
    Compacted,
    FutureRevision,
    Other,
}

/// Recognises etcd's `ErrCompacted` and `ErrFutureRev` (gRPC `OutOfRange` with fixed messages).
fn classify(error: &etcd_client::Error) -> ErrorClass {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message();
            if message.contains("required revision has been compacted") {
                ErrorClass::Compacted
            } else if message.contains("required revision is a future revision") {
                ErrorClass::FutureRevision
            } else {
                ErrorClass::Other
            }
        }
        _ => ErrorClass::Other,
    }
}

fn backend(error: etcd_client::Error) -> StoreError {
    StoreError::Backend(format!("etcd: {error}"))
}

fn convert(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key().to_vec(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision, StoreError> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| StoreError::Backend("etcd response without a header".to_string()))
}

/// The key read by the `Get` of a failed transaction's `or_else` branch.
fn failure_get(response: &etcd_client::TxnResponse) -> Result<Option<KeyValue>, StoreError> {
    match response.op_responses().first() {
        Some(TxnOpResponse::Get(get)) => Ok(get.kvs().first().map(convert)),
        _ => Err(StoreError::Backend(
            "etcd transaction response without its read".to_string(),
        )),
    }
}

/// The key is present (etcd compares a missing key's revisions and version as 0).
fn exists(key: &[u8]) -> Compare {
    Compare::version(key, CompareOp::Greater, 0)
}

fn conflict_or_missing(key: &[u8], expected: Revision, current: Option<KeyValue>) -> StoreError {
    match current {
        Some(current) => StoreError::Conflict {
            key: lossy(key),
            expected,
            current: Box::new(current),
        },
        None => StoreError::NotFound { key: lossy(key) },
    }
}

fn convert_event(event: &etcd_client::Event) -> Result<Event, StoreError> {
    let kv = event
        .kv()
        .map(convert)
        .ok_or_else(|| StoreError::Backend("etcd watch event without a key".to_string()))?;
    // `event_type` panics on a type it does not know; the kv tells the two apart safely: a put
    // leaves version >= 1, a delete reports version 0.
    let kind = if kv.version == 0 {
        EventKind::Delete
    } else {
        EventKind::Put
    };
    Ok(Event {
        kind,
        kv,
        prev_kv: event.prev_kv().map(convert),
    })
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        let response = self.kv().get(key, None).await.map_err(backend)?;
        Ok(response.kvs().first().map(convert))
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse, StoreError> {
        // etcd's WithPrefix: an empty (or all-0xff) prefix has no end; "\0" means "to the end".
        let end = prefix_end(&request.prefix).unwrap_or_else(|| vec![0]);
        // A start before the prefix would let etcd return keys outside it.
        let mut start = match request.start {
            Some(start) if start > request.prefix => start,
            _ => request.prefix.clone(),
        };
        if start.is_empty() {
            start = vec![0];
        }
        let revision = request.revision.unwrap_or(0);
        let mut options = GetOptions::new().with_range(end).with_revision(revision);
        if request.limit > 0 {
            options = options.with_limit(i64::try_from(request.limit).unwrap_or(i64::MAX));
        }
        let response = match self.kv().get(start, Some(options)).await {
            Ok(response) => response,
            Err(e) => return Err(self.revision_error(e, &request.prefix, revision).await),
        };
        let kvs: Vec<KeyValue> = response.kvs().iter().map(convert).collect();
        let next = match kvs.last() {
            Some(last) if response.more() => Some(key_after(&last.key)),
            _ => None,
        };
        let revision = if revision > 0 {
            revision
        } else {
            header_revision(response.header())?
        };
        Ok(RangeResponse {
            kvs,
            next,
            revision,
        })
    }

    async fn create(&self, key: &[u8], value: &[u8]) -> Result<KeyValue, StoreError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        let response = self.kv().txn(txn).await.map_err(backend)?;
        if !response.succeeded() {
            return Err(StoreError::AlreadyExists { key: lossy(key) });
        }
        let revision = header_revision(response.header())?;
        Ok(KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
        })
    }

    async fn update(
        &self,
        key: &[u8],
        value: &[u8],
        expected_mod_revision: Revision,
    ) -> Result<KeyValue, StoreError> {
        let txn = Txn::new()
            .when([
                exists(key),
                Compare::mod_revision(key, CompareOp::Equal, expected_mod_revision),
            ])
            .and_then([TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let response = self.kv().txn(txn).await.map_err(backend)?;
        if !response.succeeded() {
            let current = failure_get(&response)?;
            return Err(conflict_or_missing(key, expected_mod_revision, current));
        }
        let revision = header_revision(response.header())?;
        let previous = match response.op_responses().first() {
            Some(TxnOpResponse::Put(put)) => put.prev_key().map(convert),
            _ => None,
        }
        .ok_or_else(|| {
            StoreError::Backend(format!(
                "etcd did not return the previous value of {}",
                lossy(key)
            ))
        })?;
        Ok(KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: previous.create_revision,
            mod_revision: revision,
            version: previous.version + 1,
        })
    }

    async fn delete(
        &self,
        key: &[u8],
        expected_mod_revision: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError> {
        let mut compares = vec![exists(key)];
        if let Some(expected) = expected_mod_revision {
            compares.push(Compare::mod_revision(key, CompareOp::Equal, expected));
        }
        let txn = Txn::new()
            .when(compares)
            .and_then([TxnOp::delete(
                key,
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let response = self.kv().txn(txn).await.map_err(backend)?;
        if !response.succeeded() {
            let current = failure_get(&response)?;
            return Err(match expected_mod_revision {
                Some(expected) => conflict_or_missing(key, expected, current),
                None => StoreError::NotFound { key: lossy(key) },
            });
        }
        let revision = header_revision(response.header())?;
        let previous = match response.op_responses().first() {
            Some(TxnOpResponse::Delete(delete)) => delete.prev_kvs().first().map(convert),
            _ => None,
        }
        .ok_or_else(|| StoreError::NotFound { key: lossy(key) })?;
        Ok((previous, revision))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        // Any read carries the store's revision in its header; this one returns no data.
        let options = GetOptions::new().with_count_only();
        let response = self
            .kv()
            .get(vec![0], Some(options))
            .await
            .map_err(backend)?;
        header_revision(response.header())
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        match self.kv().compact(revision, None).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.revision_error(e, &[0], revision).await),
        }
    }

    async fn watch(
        &self,
        prefix: &[u8],
        from_revision: Revision,
    ) -> Result<WatchStream, StoreError> {
        let end = prefix_end(prefix).unwrap_or_else(|| vec![0]);
        let key = if prefix.is_empty() {
            vec![0]
        } else {
            prefix.to_vec()
        };
        // The trait's "after R" is etcd's "from R + 1" (inclusive); R = 0 is all history.
        let options = WatchOptions::new()
            .with_range(end)
            .with_prev_key()
            .with_start_revision(from_revision.max(0) + 1);
        let mut stream = self
            .watcher()
            .watch(key, Some(options))
            .await
            .map_err(backend)?;

        // Wait until etcd has registered the watch: only then is "from now on" well defined.
        let mut pending = std::collections::VecDeque::new();
        loop {
            let response = stream.message().await.map_err(backend)?.ok_or_else(|| {
                StoreError::Backend("etcd closed the watch before creating it".to_string())
            })?;
            let created = response.created();
            pending.extend(watch_items(&response, from_revision));
            if created || response.canceled() {
                break;
            }
        }

        let state = WatchState {
            stream,
            pending,
            from_revision,
            done: false,
        };
        let events = futures::stream::unfold(state, |mut state| async move {
            loop {
                if let Some(item) = state.pending.pop_front() {
                    if item.is_err() {
                        state.done = true;
                        state.pending.clear();
                    }
                    return Some((item, state));
                }
                if state.done {
                    return None;
                }
                match state.stream.message().await {
                    Ok(Some(response)) => {
                        state
                            .pending
                            .extend(watch_items(&response, state.from_revision));
                    }
                    Ok(None) => {
                        state.done = true;
                        let error = StoreError::Backend("etcd closed the watch".to_string());
                        return Some((Err(error), state));
                    }
                    Err(e) => {
                        state.done = true;
                        return Some((Err(backend(e)), state));
                    }
                }
            }
        });
        Ok(events.boxed())
    }
}

struct WatchState {
    /// Also holds the request side open: dropping it would end the watch.
    stream: etcd_client::WatchStream,
    pending: std::collections::VecDeque<Result<Event, StoreError>>,
    from_revision: Revision,
    done: bool,
}

/// The items one watch response yields: its events, or the error that cancelled the watch.
fn watch_items(
    response: &etcd_client::WatchResponse,
    from_revision: Revision,
) -> Vec<Result<Event, StoreError>> {
    let mut items: Vec<_> = response.events().iter().map(convert_event).collect();
    if response.compact_revision() != 0 {
        items.push(Err(StoreError::Compacted {
            requested: from_revision,
            compacted: response.compact_revision(),
        }));
    } else if response.canceled() {
        let reason = response.cancel_reason();
        let reason = if reason.is_empty() {
            "no reason given"
        } else {
            reason
        };
        items.push(Err(StoreError::Backend(format!(
            "etcd cancelled the watch: {reason}"
        ))));
    }
    items
}
