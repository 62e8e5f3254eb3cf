//! The MVCC key-value store the API server keeps every object in: the semantics Kubernetes
//! relies on from etcd v3, behind one trait, with two backends.
//!
//! - [`sled::SledStore`] (embedded, the default) keeps its data under `<data-dir>/server/db`.
//! - [`etcd::EtcdStore`] speaks the etcd v3 API to an external etcd (`--datastore-endpoint`).
//!
//! This module owns the key space and the revision model; it knows nothing of Kubernetes
//! objects (values are opaque bytes) and must not be reached by the data plane.
//!
//! # Guarantees
//! - One global revision (`i64`); every successful write (create, update, delete) increments it
//!   by exactly one. A failed write changes nothing.
//! - Each key carries `create_revision`, `mod_revision` and `version` (1 on creation, +1 on each
//!   update; a deleted and re-created key starts again at 1).
//! - A watch from revision `R` yields every event with a revision greater than `R` whose key
//!   starts with the watched prefix, in revision order, with no gap and no duplicate, including
//!   writes that race with the watch being set up.
//! - A watch or a range at a revision older than the retained history fails with
//!   [`StoreError::Compacted`] (the API server turns it into `410 Gone`).
//!
//! # Caveats
//! - A watcher that does not keep up is cut off with [`StoreError::WatcherTooSlow`] rather than
//!   allowed to block writers or buffer without bound; it should resume from the last revision
//!   it saw.

pub mod etcd;
pub mod sled;

use std::fmt;
use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;

/// The store's logical clock; Kubernetes calls it `resourceVersion`.
pub type Revision = i64;

/// One key with its value and the revisions that describe its history.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Revision of the write that created the key (its current incarnation).
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    /// Number of writes since the key was created, starting at 1.
    pub version: i64,
}

impl fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyValue")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("value_len", &self.value.len())
            .field("create_revision", &self.create_revision)
            .field("mod_revision", &self.mod_revision)
            .field("version", &self.version)
            .finish()
    }
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change, as a watch delivers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// The key after the change. For a delete: the key, an empty value, `mod_revision` set to
    /// the revision of the delete, `create_revision` and `version` zero (as etcd reports it).
    pub kv: KeyValue,
    /// The key before the change; `None` for a create.
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    /// The revision of the write that produced this event.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// A read of the keys under a prefix, one page at a time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    /// Every returned key starts with this prefix (an empty prefix means all keys).
    pub prefix: Vec<u8>,
    /// Start at this key (inclusive) instead of at the prefix: the `next` of a previous page.
    pub start: Option<Vec<u8>>,
    /// At most this many keys; 0 means no limit.
    pub limit: usize,
    /// Read as of this revision; `None` (or a revision of 0 or less) reads the current state. Paging through a list at one
    /// revision gives a consistent snapshot.
    pub revision: Option<Revision>,
}

/// One page of a range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeResponse {
    /// Keys in ascending byte order.
    pub kvs: Vec<KeyValue>,
    /// Where the next page starts, if there are more keys (pass it as [`RangeRequest::start`],
    /// together with [`RangeResponse::revision`] for a consistent snapshot).
    pub next: Option<Vec<u8>>,
    /// The revision the page was read at.
    pub revision: Revision,
}

/// An ordered stream of changes; it ends only with an error (or when the store shuts down).
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Event, StoreError>> + Send>>;

/// Everything that can go wrong with a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `create` of a key that exists.
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    /// `update`/`delete` of a key that does not exist.
    #[error("key {key} not found")]
    NotFound { key: String },
    /// `update`/`delete` whose expected `mod_revision` is not the key's current one. `current`
    /// is the key as it is now, so callers can report or retry.
    #[error("key {key} was modified: expected mod_revision {expected}, found {}", current.mod_revision)]
    Conflict {
        key: String,
        expected: Revision,
        current: Box<KeyValue>,
    },
    /// A revision older than the retained history was asked for. Retryable by re-reading the
    /// current state.
    #[error("revision {requested} has been compacted (oldest available after {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    /// A revision newer than the store's current one was asked for.
    #[error("revision {requested} is in the future (current revision is {current})")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    /// The watcher fell too far behind and was cut off; resume from the last revision seen.
    #[error("watcher fell behind and was cut off")]
    WatcherTooSlow,
    /// The database on disk is not a valid store (corrupted, foreign or from a newer version).
    #[error("the database at {path} is not usable: {reason}")]
    Corrupt { path: String, reason: String },
    /// The store is shutting down or has shut down.
    #[error("the store is closed")]
    Closed,
    /// An error from the backend (I/O, network); usually retryable.
    #[error("store backend: {0}")]
    Backend(String),
}

impl StoreError {
    /// True for errors that may go away if the same call is made again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Backend(_) | StoreError::WatcherTooSlow)
    }
}

/// The semantics Kubernetes needs from etcd v3. Both backends pass one behavioural suite
/// (`tests/store_conformance.rs`).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current value of `key`, if it exists.
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError>;

    /// Keys under a prefix in byte order, a page at a time, now or at a past revision still in
    /// history.
    async fn range(&self, request: RangeRequest) -> Result<RangeResponse, StoreError>;

    /// Creates `key`; fails with [`StoreError::AlreadyExists`] if it exists. Returns the new key.
    async fn create(&self, key: &[u8], value: &[u8]) -> Result<KeyValue, StoreError>;

    /// Replaces the value of `key` if its `mod_revision` is still `expected_mod_revision`
    /// (compare-and-swap). Returns the new key.
    async fn update(
        &self,
        key: &[u8],
        value: &[u8],
        expected_mod_revision: Revision,
    ) -> Result<KeyValue, StoreError>;

    /// Deletes `key`, guarded by its expected `mod_revision` when one is given. Returns the key
    /// as it was before the delete, and the revision of the delete.
    async fn delete(
        &self,
        key: &[u8],
        expected_mod_revision: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError>;

    /// The revision of the last successful write.
    async fn current_revision(&self) -> Result<Revision, StoreError>;

    /// Discards the history before `revision`: afterwards, ranges at a lower revision and watches
    /// from a lower revision fail with [`StoreError::Compacted`] (etcd still serves a watch from
    /// `revision - 1`; do not rely on it). The state at `revision` and everything after stay
    /// readable. Compacting to a revision at or below the current compaction point fails with
    /// [`StoreError::Compacted`]; beyond the current revision, with
    /// [`StoreError::FutureRevision`].
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// Every change under `prefix` with a revision greater than `from_revision` (0: the whole
    /// retained history). To watch "from now on", pass [`Store::current_revision`]: nothing
    /// written after it is missed. A compacted `from_revision` fails either here or as the
    /// stream's first item, depending on the backend.
    async fn watch(
        &self,
        prefix: &[u8],
        from_revision: Revision,
    ) -> Result<WatchStream, StoreError>;
}

/// The smallest key greater than every key that starts with `prefix`, or `None` if there is
/// none (an empty prefix, or one made only of 0xff bytes). etcd calls it the range end.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The key right after `key` in byte order: where the page after one ending at `key` starts.
pub fn key_after(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

fn lossy(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_0xff() {
        assert_eq!(
            prefix_end(b"/registry/pods/"),
            Some(b"/registry/pods0".to_vec())
        );
        assert_eq!(prefix_end(&[1, 0xff, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn key_after_is_the_immediate_successor() {
        assert_eq!(key_after(b"a"), b"a\0".to_vec());
        assert!(key_after(b"a").as_slice() > b"a".as_slice());
        assert!(key_after(b"a").as_slice() < b"a\x01".as_slice());
    }
}
