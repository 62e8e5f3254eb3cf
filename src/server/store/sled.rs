//! The embedded store: our MVCC layout on one sled tree, the default backend of `cluster server`.
//!
//! Owns the database directory `<data-dir>/server/db` and nothing else. Knows nothing of
//! Kubernetes objects.
//!
//! # Layout
//! One sled tree, three key spaces told apart by their first byte:
//! - `m<name>`: metadata — `mformat` (the format marker), `mrev` (current revision),
//!   `mcompact` (the revision history has been compacted up to).
//! - `k<key>`: the current value of every live key (revisions, version, value).
//! - `h<revision as 8 big-endian bytes>`: one history record per write: the key, its new state
//!   and its previous state, and the wall-clock time of the write.
//!
//! Every group of writes (see below) is one atomic sled batch that updates the keys, appends
//! their history records and bumps the revision, so a crash can never leave half a write
//! behind.
//!
//! # Guarantees
//! - Writes are acknowledged only after a flush to disk. They all go through one committer
//!   thread, which stages the writes queued so far in arrival order (one global revision
//!   anyway) into one batch, applies it, flushes once, then publishes and acknowledges them:
//!   the writes that arrive meanwhile form the next group (group commit).
//! - "Flushed" means fdatasync'ed, as etcd's WAL is: sled's own flush ends its log writes with
//!   `sync_file_range`, which neither flushes the drive's cache nor the file's size, and does
//!   not sync the files it keeps large pages in (`blobs/`) at all. So after sled's flush the
//!   committer fdatasyncs the log file `db`, every blob file it has not synced yet and the
//!   blobs directory ([`Shared::flush`]).
//! - Async tasks never wait for a flush on a runtime thread. (sled's flush holds its global
//!   concurrency lock for the whole sync and a batch needs that lock exclusively, so a batch
//!   applied beside a flush waits for the disk; the committer applies and flushes in turn.)
//! - Watch events are published only once they are durable, in revision order. A new watch
//!   registers with the publisher and learns the durable revision `D` in one critical section,
//!   then replays history up to `D` from disk and receives everything after `D` live: no gap,
//!   no duplicate.
//! - A range (now or at a past revision) reads the current values and undoes the history
//!   written after the wanted revision; it retries when a write to the same range races with
//!   it, and takes the writer lock if it keeps losing.
//!
//! # Caveats
//! - History is kept for [`SledOptions::history_window`] and at least
//!   [`SledOptions::min_history_revisions`] revisions, then compacted by
//!   [`SledStore::run_compactor`]; a history record holds the previous value too, so history
//!   costs about twice the size of the values written in the window.

use std::collections::{BTreeMap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

use super::{
    key_after, lossy, prefix_end, Event, EventKind, KeyValue, RangeRequest, RangeResponse,
    Revision, Store, StoreError, WatchStream,
};

const FORMAT_KEY: &[u8] = b"mformat";
const FORMAT: &[u8] = b"cluster-store/v1";
const REVISION_KEY: &[u8] = b"mrev";
const COMPACT_KEY: &[u8] = b"mcompact";
const CURRENT: u8 = b'k';
const HISTORY: u8 = b'h';
/// How many history records one compaction batch removes.
const COMPACTION_BATCH: usize = 1000;
/// How often a range retries before it takes the writer lock.
const RANGE_OPTIMISTIC_ATTEMPTS: usize = 4;
/// Writes waiting for the committer before writers wait to queue theirs.
const WRITE_QUEUE: usize = 1024;
/// The most writes one flush covers.
const MAX_GROUP: usize = 1024;
/// A group takes no more writes once their values add up to this many bytes.
const MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;

/// Tuning of the embedded store; [`SledOptions::default`] is what `cluster server` uses.
#[derive(Clone, Debug)]
pub struct SledOptions {
    /// History younger than this is kept for watches and past-revision ranges (default 5 min).
    pub history_window: Duration,
    /// At least this many of the latest revisions are kept whatever their age (default 1000).
    pub min_history_revisions: i64,
    /// How often the automatic compaction runs (default 30 s).
    pub compaction_interval: Duration,
    /// Events a watcher may have pending before it is cut off (default 10 000).
    pub watch_buffer: usize,
    /// Upper bound of sled's page cache in bytes (default 32 MiB).
    pub cache_capacity: u64,
}

impl Default for SledOptions {
    fn default() -> Self {
        SledOptions {
            history_window: Duration::from_secs(300),
            min_history_revisions: 1000,
            compaction_interval: Duration::from_secs(30),
            watch_buffer: 10_000,
            cache_capacity: 32 * 1024 * 1024,
        }
    }
}

/// The embedded MVCC store. Cheap to clone: all clones share one database, and the database
/// is flushed and its flusher thread stopped when the last clone is dropped.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

/// What the clones share. Dropping it stops the committer thread (which flushes one last
/// time) and waits for it, so that the database is closed when the last clone is gone.
struct Inner {
    shared: Arc<Shared>,
    requests: Option<mpsc::Sender<WriteRequest>>,
    committer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(committer) = self.committer.take() {
            if committer.join().is_err() {
                error!("the store's committer thread panicked");
            }
        }
    }
}

/// One write handed to the committer thread; the reply comes once it is durable.
struct WriteRequest {
    key: Vec<u8>,
    op: WriteOp,
    reply: oneshot::Sender<Result<Event, StoreError>>,
}

/// What a write does to its key, and under which condition.
enum WriteOp {
    Create(Vec<u8>),
    Update {
        value: Vec<u8>,
        expected_mod_revision: Revision,
    },
    Delete {
        expected_mod_revision: Option<Revision>,
    },
}

impl WriteOp {
    fn value_len(&self) -> usize {
        match self {
            WriteOp::Create(value) | WriteOp::Update { value, .. } => value.len(),
            WriteOp::Delete { .. } => 0,
        }
    }

    /// What the key becomes given its `current` state: Some(value) for a put, None for a
    /// delete; or why the write may not happen.
    fn decide(self, key: &[u8], current: Option<&KeyValue>) -> Result<Option<Vec<u8>>, StoreError> {
        let conflict = |expected: Revision, kv: &KeyValue| StoreError::Conflict {
            key: lossy(key),
            expected,
            current: Box::new(kv.clone()),
        };
        match (self, current) {
            (WriteOp::Create(_), Some(_)) => Err(StoreError::AlreadyExists { key: lossy(key) }),
            (WriteOp::Create(value), None) => Ok(Some(value)),
            (WriteOp::Update { .. } | WriteOp::Delete { .. }, None) => {
                Err(StoreError::NotFound { key: lossy(key) })
            }
            (
                WriteOp::Update {
                    value,
                    expected_mod_revision,
                },
                Some(kv),
            ) => {
                if kv.mod_revision != expected_mod_revision {
                    return Err(conflict(expected_mod_revision, kv));
                }
                Ok(Some(value))
            }
            (
                WriteOp::Delete {
                    expected_mod_revision,
                },
                Some(kv),
            ) => match expected_mod_revision {
                Some(expected) if kv.mod_revision != expected => Err(conflict(expected, kv)),
                _ => Ok(None),
            },
        }
    }
}

/// What the committer thread shares with the store.
struct Shared {
    path: PathBuf,
    db: sled::Db,
    options: SledOptions,
    writer: Mutex<Writer>,
    /// The last revision applied to the tree (it may not be durable yet).
    applied: AtomicI64,
    compacted: AtomicI64,
    hub: Mutex<Hub>,
    closed: AtomicBool,
    /// sled's log file, for fdatasync.
    log_file: std::fs::File,
    /// The blob files already fdatasync'ed (sled never rewrites a blob file; it removes it).
    synced_blobs: Mutex<std::collections::HashSet<std::ffi::OsString>>,
}

/// State guarded by the writer lock.
struct Writer {
    revision: Revision,
}

/// The watch fan-out.
struct Hub {
    /// Every event up to this revision is durable and has been published.
    durable: Revision,
    subscribers: Vec<Subscriber>,
}

struct Subscriber {
    prefix: Vec<u8>,
    sender: mpsc::Sender<Event>,
    cut_off: Arc<AtomicBool>,
}

impl SledStore {
    /// Opens (or creates) the database in directory `path`. A corrupted or foreign database is
    /// an error, never a panic.
    pub fn open(path: &Path, options: SledOptions) -> Result<SledStore, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.display().to_string(),
            reason,
        };
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(options.cache_capacity)
            .flush_every_ms(None);
        let db = match catch_unwind(AssertUnwindSafe(|| config.open())) {
            Ok(Ok(db)) => db,
            Ok(Err(err)) => return Err(corrupt(err.to_string())),
            Err(_) => return Err(corrupt("the database engine failed reading it".into())),
        };
        let read = |key: &[u8]| db.get(key).map_err(|err| corrupt(err.to_string()));
        match read(FORMAT_KEY)? {
            Some(format) if format.as_ref() == FORMAT => {}
            Some(format) => {
                return Err(corrupt(format!(
                    "unsupported format {:?}",
                    String::from_utf8_lossy(&format)
                )))
            }
            None => {
                if !db.is_empty() {
                    return Err(corrupt("not a cluster database".into()));
                }
                db.insert(FORMAT_KEY, FORMAT)
                    .and_then(|_| db.flush())
                    .map_err(|err| corrupt(err.to_string()))?;
            }
        }
        let revision = match read(REVISION_KEY)? {
            Some(bytes) => decode_i64(&bytes).ok_or_else(|| corrupt("bad revision".into()))?,
            None => 0,
        };
        let compacted = match read(COMPACT_KEY)? {
            Some(bytes) => decode_i64(&bytes).ok_or_else(|| corrupt("bad compaction".into()))?,
            None => 0,
        };
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            db,
            options,
            writer: Mutex::new(Writer { revision }),
            applied: AtomicI64::new(revision),
            compacted: AtomicI64::new(compacted),
            hub: Mutex::new(Hub {
                durable: revision,
                subscribers: Vec::new(),
            }),
            closed: AtomicBool::new(false),
            log_file: std::fs::File::open(path.join("db"))
                .map_err(|err| corrupt(format!("opening the log file db: {err}")))?,
            synced_blobs: Mutex::new(std::collections::HashSet::new()),
        });
        // What sled wrote before this process (a crash may have left it unsynced) is made
        // durable before anything is acknowledged.
        shared.flush().map_err(StoreError::Backend)?;
        let (requests, queued) = mpsc::channel(WRITE_QUEUE);
        let committer_shared = Arc::clone(&shared);
        let committer = std::thread::Builder::new()
            .name("store-committer".into())
            .spawn(move || committer(committer_shared, queued))
            .map_err(|err| StoreError::Backend(format!("starting the committer thread: {err}")))?;
        info!(path = %path.display(), revision, compacted, "store opened");
        Ok(SledStore {
            inner: Arc::new(Inner {
                shared,
                requests: Some(requests),
                committer: Some(committer),
            }),
        })
    }

    /// Flushes everything to disk and refuses further writes and watches; open watches end
    /// with [`StoreError::Closed`].
    pub fn close(&self) -> Result<(), StoreError> {
        let shared = &self.inner.shared;
        shared.closed.store(true, Ordering::SeqCst);
        // Take the writer lock so that no write is half-way through while we flush.
        let _writer = shared.lock_writer();
        shared.flush().map_err(StoreError::Backend)?;
        lock(&shared.hub).subscribers.clear();
        Ok(())
    }

    /// The revision history has been compacted up to.
    pub fn compacted_revision(&self) -> Revision {
        self.inner.shared.compacted.load(Ordering::SeqCst)
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.inner.shared.db.size_on_disk().map_err(backend)
    }

    /// Runs the automatic compaction every [`SledOptions::compaction_interval`] until `cancel`.
    pub fn run_compactor(&self, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        let interval = self.inner.shared.options.compaction_interval;
        let span = info_span!("store_compactor", path = %self.inner.shared.path.display());
        tokio::spawn(
            async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = ticker.tick() => {}
                    }
                    match store.compact_expired_history(SystemTime::now()).await {
                        Ok(Some(revision)) => debug!(revision, "history compacted"),
                        Ok(None) => {}
                        Err(err) => warn!(error = %err, "automatic compaction failed"),
                    }
                }
            }
            .instrument(span),
        )
    }

    /// Compacts the history that is both older than the window at `now` and beyond the
    /// minimum number of revisions kept. Returns the revision compacted to, if any.
    pub async fn compact_expired_history(
        &self,
        now: SystemTime,
    ) -> Result<Option<Revision>, StoreError> {
        let shared = &self.inner.shared;
        let cutoff = now
            .checked_sub(shared.options.history_window)
            .map(unix_millis)
            .unwrap_or(0);
        let newest_allowed =
            shared.applied.load(Ordering::SeqCst) - shared.options.min_history_revisions;
        let mut target = None;
        for item in shared
            .db
            .range(history_key(0)..history_key(newest_allowed.max(0) + 1))
        {
            let (key, value) = item.map_err(backend)?;
            let revision =
                decode_history_key(&key).ok_or_else(|| shared.corrupt("bad history key"))?;
            let record = HistoryRecord::decode(&value)
                .ok_or_else(|| shared.corrupt("bad history record"))?;
            if record.time_ms >= cutoff {
                break;
            }
            target = Some(revision);
        }
        match target {
            Some(revision) if revision > shared.compacted.load(Ordering::SeqCst) => {
                self.compact(revision).await?;
                Ok(Some(revision))
            }
            _ => Ok(None),
        }
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// Hands one write to the committer thread and waits until it is durable.
    async fn write(&self, key: &[u8], op: WriteOp) -> Result<Event, StoreError> {
        if self.shared().closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        let requests = self.inner.requests.as_ref().ok_or(StoreError::Closed)?;
        let (reply, durable) = oneshot::channel();
        let request = WriteRequest {
            key: key.to_vec(),
            op,
            reply,
        };
        requests
            .send(request)
            .await
            .map_err(|_| StoreError::Closed)?;
        durable.await.map_err(|_| StoreError::Closed)?
    }

    /// One attempt at reading `[lower, upper)` as of `revision`; `None` if a concurrent write
    /// to the range made the attempt inconsistent.
    fn range_attempt(
        &self,
        lower: &[u8],
        upper: Option<&[u8]>,
        limit: usize,
        revision: Revision,
    ) -> Result<Option<(Vec<KeyValue>, bool)>, StoreError> {
        let shared = self.shared();
        let in_range = |key: &[u8]| key >= lower && upper.is_none_or(|upper| key < upper);
        // The state at `revision` of every key written after it: the previous state recorded
        // by the oldest write after `revision`.
        let mut undo: BTreeMap<Vec<u8>, Option<KeyValue>> = BTreeMap::new();
        let mut last_seen = revision;
        for record in shared.history_after(revision) {
            let (record_revision, record) = record?;
            last_seen = record_revision;
            let key = &record.event.kv.key;
            if in_range(key) && !undo.contains_key(key) {
                undo.insert(key.clone(), record.event.prev_kv);
            }
        }
        let mut kvs = Vec::new();
        let want = if limit == 0 { usize::MAX } else { limit + 1 };
        let start = current_key(lower);
        let end = match upper {
            Some(upper) => current_key(upper),
            None => vec![CURRENT + 1],
        };
        let mut undo_iter = undo.iter().peekable();
        let mut current_iter = shared.db.range(start..end).peekable();
        while kvs.len() < want {
            let next_current = match current_iter.peek() {
                Some(Ok((key, _))) => Some(key[1..].to_vec()),
                Some(Err(_)) => {
                    if let Some(Err(err)) = current_iter.next() {
                        return Err(backend(err));
                    }
                    continue;
                }
                None => None,
            };
            let next_undo = undo_iter.peek().map(|(key, _)| key.to_vec());
            let take_undo = match (&next_current, &next_undo) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(current), Some(undone)) => undone <= current,
            };
            if take_undo {
                let (key, state) = undo_iter.next().ok_or_else(|| shared.corrupt("range"))?;
                if next_current.as_deref() == Some(key.as_slice()) {
                    current_iter.next();
                }
                if let Some(kv) = state {
                    kvs.push(kv.clone());
                }
            } else if let Some(Ok((key, value))) = current_iter.next() {
                let kv = decode_current(&key[1..], &value)
                    .ok_or_else(|| shared.corrupt("bad current record"))?;
                kvs.push(kv);
            }
        }
        // Every write that the scan could have seen has its history record in the tree by now;
        // if one touched the range after our history read, the scan may have mixed states.
        for record in shared.history_after(last_seen) {
            let (_, record) = record?;
            if in_range(&record.event.kv.key) {
                return Ok(None);
            }
        }
        let more = limit != 0 && kvs.len() > limit;
        kvs.truncate(if limit == 0 { kvs.len() } else { limit });
        Ok(Some((kvs, more)))
    }

    fn check_readable(&self, revision: Revision) -> Result<(), StoreError> {
        let compacted = self.compacted_revision();
        if revision < compacted {
            return Err(StoreError::Compacted {
                requested: revision,
                compacted,
            });
        }
        Ok(())
    }
}

impl Shared {
    /// sled's flush, then fdatasync of what it leaves unsynced (see the module's guarantees).
    fn flush(&self) -> Result<(), String> {
        self.db.flush().map_err(|err| err.to_string())?;
        self.log_file
            .sync_data()
            .map_err(|err| format!("fdatasync of the log file: {err}"))?;
        let blobs = self.path.join("blobs");
        let entries = match std::fs::read_dir(&blobs) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(format!("reading {}: {err}", blobs.display())),
        };
        let mut synced = lock(&self.synced_blobs);
        let mut present = std::collections::HashSet::new();
        let mut new_files = false;
        for entry in entries {
            let entry = entry.map_err(|err| format!("reading {}: {err}", blobs.display()))?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                match std::fs::File::open(entry.path()) {
                    Ok(file) => file
                        .sync_data()
                        .map_err(|err| format!("fdatasync of blob {name:?}: {err}"))?,
                    // Removed by sled's blob collection meanwhile.
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(err) => return Err(format!("opening blob {name:?}: {err}")),
                }
                new_files = true;
            }
            present.insert(name);
        }
        if new_files {
            std::fs::File::open(&blobs)
                .and_then(|dir| dir.sync_all())
                .map_err(|err| format!("fsync of {}: {err}", blobs.display()))?;
        }
        *synced = present;
        Ok(())
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        lock(&self.writer)
    }

    fn corrupt(&self, reason: &str) -> StoreError {
        StoreError::Corrupt {
            path: self.path.display().to_string(),
            reason: reason.to_string(),
        }
    }

    fn read_current(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        match self.db.get(current_key(key)).map_err(backend)? {
            Some(value) => decode_current(key, &value)
                .map(Some)
                .ok_or_else(|| self.corrupt("bad current record")),
            None => Ok(None),
        }
    }

    /// History records with a revision greater than `revision`, oldest first.
    fn history_after(
        &self,
        revision: Revision,
    ) -> impl Iterator<Item = Result<(Revision, HistoryRecord), StoreError>> + '_ {
        self.db
            .range(history_key(revision.saturating_add(1).max(0)).to_vec()..vec![HISTORY + 1])
            .map(move |item| {
                let (key, value) = item.map_err(backend)?;
                let revision =
                    decode_history_key(&key).ok_or_else(|| self.corrupt("bad history key"))?;
                let record = HistoryRecord::decode(&value)
                    .ok_or_else(|| self.corrupt("bad history record"))?;
                Ok((revision, record))
            })
    }

    /// Stages one write into `group` as the next revision: the key's new state and its history
    /// record. Nothing reaches the tree until the group's batch is applied.
    fn stage(&self, group: &mut Group, key: &[u8], op: WriteOp) -> Result<Event, StoreError> {
        let current = match group.staged.get(key) {
            Some(state) => state.clone(),
            None => self.read_current(key)?,
        };
        let revision = group.revision + 1;
        let event = match op.decide(key, current.as_ref())? {
            Some(value) => {
                let (create_revision, version) = match &current {
                    Some(kv) => (kv.create_revision, kv.version + 1),
                    None => (revision, 1),
                };
                Event {
                    kind: EventKind::Put,
                    kv: KeyValue {
                        key: key.to_vec(),
                        value,
                        create_revision,
                        mod_revision: revision,
                        version,
                    },
                    prev_kv: current,
                }
            }
            None => Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: key.to_vec(),
                    value: Vec::new(),
                    create_revision: 0,
                    mod_revision: revision,
                    version: 0,
                },
                prev_kv: current,
            },
        };
        let state = match event.kind {
            EventKind::Put => {
                group
                    .batch
                    .insert(current_key(key), encode_current(&event.kv));
                Some(event.kv.clone())
            }
            EventKind::Delete => {
                group.batch.remove(current_key(key));
                None
            }
        };
        let record = HistoryRecord {
            time_ms: unix_millis(SystemTime::now()),
            event,
        };
        group
            .batch
            .insert(&history_key(revision)[..], record.encode());
        group.staged.insert(key.to_vec(), state);
        group.revision = revision;
        Ok(record.event)
    }

    /// Publishes durable events to the watchers, in order, and advances the durable revision.
    fn publish(&self, events: &[Event], revision: Revision) {
        let mut hub = lock(&self.hub);
        for event in events {
            hub.subscribers.retain(|subscriber| {
                if !event.kv.key.starts_with(&subscriber.prefix) {
                    return !subscriber.sender.is_closed();
                }
                match subscriber.sender.try_send(event.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        subscriber.cut_off.store(true, Ordering::SeqCst);
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
        }
        hub.durable = revision;
    }
}

/// The flusher thread: one flush covers every write applied before it started.
/// Writes staged into one sled batch by the committer.
struct Group {
    batch: sled::Batch,
    /// The state each key written in this group will have (`None`: deleted).
    staged: HashMap<Vec<u8>, Option<KeyValue>>,
    /// The revision of the last staged write.
    revision: Revision,
}

/// The committer thread: takes every write queued so far (at least one), stages them in order
/// into one atomic sled batch, applies it, flushes, then publishes the events and acknowledges
/// the writes. One batch per group matters: sled writes out and syncs its log for every batch.
/// After a failed flush it refuses every write: what is on disk is then unknown. Ends, with a
/// last flush, when the store is dropped.
fn committer(shared: Arc<Shared>, mut queued: mpsc::Receiver<WriteRequest>) {
    let _span = info_span!("store_committer", path = %shared.path.display()).entered();
    let mut failure: Option<String> = None;
    while let Some(first) = queued.blocking_recv() {
        let mut bytes = first.op.value_len();
        let mut requests = vec![first];
        while requests.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
            match queued.try_recv() {
                Ok(request) => {
                    bytes += request.op.value_len();
                    requests.push(request);
                }
                Err(_) => break,
            }
        }
        let mut staged = Vec::with_capacity(requests.len());
        let revision = {
            let mut writer = shared.lock_writer();
            let mut group = Group {
                batch: sled::Batch::default(),
                staged: HashMap::new(),
                revision: writer.revision,
            };
            for request in requests {
                let result = if let Some(err) = &failure {
                    Err(flush_failed(err))
                } else if shared.closed.load(Ordering::SeqCst) {
                    Err(StoreError::Closed)
                } else {
                    shared.stage(&mut group, &request.key, request.op)
                };
                match result {
                    Ok(event) => staged.push((event, request.reply)),
                    Err(err) => {
                        let _ = request.reply.send(Err(err));
                    }
                }
            }
            if staged.is_empty() {
                continue;
            }
            let mut batch = group.batch;
            batch.insert(REVISION_KEY, &group.revision.to_be_bytes()[..]);
            if let Err(err) = shared.db.apply_batch(batch) {
                let message = err.to_string();
                for (_, reply) in staged {
                    let _ = reply.send(Err(StoreError::Backend(message.clone())));
                }
                continue;
            }
            writer.revision = group.revision;
            shared.applied.store(group.revision, Ordering::SeqCst);
            group.revision
        };
        match shared.flush() {
            Ok(()) => {
                let (events, replies): (Vec<Event>, Vec<_>) = staged.into_iter().unzip();
                shared.publish(&events, revision);
                for (event, reply) in events.into_iter().zip(replies) {
                    let _ = reply.send(Ok(event));
                }
            }
            Err(message) => {
                error!(error = %message, "flushing the store to disk failed");
                for (_, reply) in staged {
                    let _ = reply.send(Err(flush_failed(&message)));
                }
                failure = Some(message);
            }
        }
    }
    if let Err(err) = shared.flush() {
        error!(error = %err, "the last flush of the store failed");
    }
    lock(&shared.hub).subscribers.clear();
}

fn flush_failed(message: &str) -> StoreError {
    StoreError::Backend(format!("flushing to disk failed: {message}"))
}

#[async_trait]
impl Store for SledStore {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        self.shared().read_current(key)
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse, StoreError> {
        let current = self.shared().applied.load(Ordering::SeqCst);
        let revision = match request.revision {
            Some(revision) if revision > 0 => revision,
            _ => current,
        };
        if revision > current {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current,
            });
        }
        self.check_readable(revision)?;
        let lower = match &request.start {
            Some(start) if start.as_slice() > request.prefix.as_slice() => start.clone(),
            _ => request.prefix.clone(),
        };
        let upper = prefix_end(&request.prefix);
        let mut result = None;
        for _ in 0..RANGE_OPTIMISTIC_ATTEMPTS {
            result = self.range_attempt(&lower, upper.as_deref(), request.limit, revision)?;
            if result.is_some() {
                break;
            }
        }
        let (kvs, more) = match result {
            Some(found) => found,
            None => {
                let _writer = self.shared().lock_writer();
                self.range_attempt(&lower, upper.as_deref(), request.limit, revision)?
                    .ok_or_else(|| StoreError::Backend("range raced with a write".into()))?
            }
        };
        // Compaction may have removed history we needed while we read.
        self.check_readable(revision)?;
        let next = match (more, kvs.last()) {
            (true, Some(last)) => Some(key_after(&last.key)),
            _ => None,
        };
        Ok(RangeResponse {
            kvs,
            next,
            revision,
        })
    }

    async fn create(&self, key: &[u8], value: &[u8]) -> Result<KeyValue, StoreError> {
        let event = self.write(key, WriteOp::Create(value.to_vec())).await?;
        Ok(event.kv)
    }

    async fn update(
        &self,
        key: &[u8],
        value: &[u8],
        expected_mod_revision: Revision,
    ) -> Result<KeyValue, StoreError> {
        let op = WriteOp::Update {
            value: value.to_vec(),
            expected_mod_revision,
        };
        let event = self.write(key, op).await?;
        Ok(event.kv)
    }

    async fn delete(
        &self,
        key: &[u8],
        expected_mod_revision: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError> {
        let op = WriteOp::Delete {
            expected_mod_revision,
        };
        let event = self.write(key, op).await?;
        let revision = event.revision();
        let prev = event
            .prev_kv
            .ok_or_else(|| StoreError::Backend("delete without a previous value".into()))?;
        Ok((prev, revision))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.shared().applied.load(Ordering::SeqCst))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let shared = self.shared();
        let current = shared.applied.load(Ordering::SeqCst);
        if revision > current {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current,
            });
        }
        {
            // Publish the new compaction point first so that no new reader relies on history
            // that is about to go; the marker is durable before any record is removed.
            let _writer = shared.lock_writer();
            let compacted = shared.compacted.load(Ordering::SeqCst);
            if revision <= compacted {
                return Err(StoreError::Compacted {
                    requested: revision,
                    compacted,
                });
            }
            shared
                .db
                .insert(COMPACT_KEY, &revision.to_be_bytes()[..])
                .map_err(backend)?;
            shared.compacted.store(revision, Ordering::SeqCst);
        }
        shared.db.flush_async().await.map_err(backend)?;
        loop {
            let mut batch = sled::Batch::default();
            let mut count = 0;
            for item in shared
                .db
                .range(history_key(0)..history_key(revision + 1))
                .keys()
                .take(COMPACTION_BATCH)
            {
                batch.remove(item.map_err(backend)?);
                count += 1;
            }
            if count == 0 {
                break;
            }
            shared.db.apply_batch(batch).map_err(backend)?;
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    async fn watch(
        &self,
        prefix: &[u8],
        from_revision: Revision,
    ) -> Result<WatchStream, StoreError> {
        let shared = self.shared();
        let (sender, receiver) = mpsc::channel(shared.options.watch_buffer.max(1));
        let cut_off = Arc::new(AtomicBool::new(false));
        let durable = {
            let mut hub = lock(&shared.hub);
            if shared.closed.load(Ordering::SeqCst) {
                return Err(StoreError::Closed);
            }
            hub.subscribers.push(Subscriber {
                prefix: prefix.to_vec(),
                sender,
                cut_off: Arc::clone(&cut_off),
            });
            hub.durable
        };
        let from = from_revision.max(0);
        self.check_readable(from)?;
        let mut replay = Vec::new();
        if from < durable {
            for record in shared.history_after(from) {
                let (revision, record) = record?;
                if revision > durable {
                    break;
                }
                if record.event.kv.key.starts_with(prefix) {
                    replay.push(Ok(record.event));
                }
            }
        }
        self.check_readable(from)?;
        let live = futures::stream::unfold(
            (receiver, cut_off, false),
            |(mut receiver, cut_off, ended)| async move {
                if ended {
                    return None;
                }
                match receiver.recv().await {
                    Some(event) => Some((Ok(event), (receiver, cut_off, false))),
                    None => {
                        let err = if cut_off.load(Ordering::SeqCst) {
                            StoreError::WatcherTooSlow
                        } else {
                            StoreError::Closed
                        };
                        Some((Err(err), (receiver, cut_off, true)))
                    }
                }
            },
        )
        // A watch from a future revision must not see the events up to it.
        .filter(move |item| {
            let keep = match item {
                Ok(event) => event.revision() > from,
                Err(_) => true,
            };
            futures::future::ready(keep)
        });
        Ok(Box::pin(futures::stream::iter(replay).chain(live)))
    }
}

/// A history record: the event of one write and when it happened.
#[derive(Debug)]
struct HistoryRecord {
    time_ms: i64,
    event: Event,
}

impl HistoryRecord {
    // kind(1) time(8) key_len(4) key new_kv(create 8, mod 8, version 8, len 4, value)
    // has_prev(1) [prev: create 8, mod 8, version 8, value to the end]
    fn encode(&self) -> Vec<u8> {
        let kv = &self.event.kv;
        let prev_len = self
            .event
            .prev_kv
            .as_ref()
            .map_or(0, |kv| 24 + kv.value.len());
        let mut out =
            Vec::with_capacity(1 + 8 + 4 + kv.key.len() + 28 + kv.value.len() + 1 + prev_len);
        out.push(match self.event.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        });
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        put_bytes(&mut out, &kv.key);
        out.extend_from_slice(&kv.create_revision.to_be_bytes());
        out.extend_from_slice(&kv.mod_revision.to_be_bytes());
        out.extend_from_slice(&kv.version.to_be_bytes());
        put_bytes(&mut out, &kv.value);
        match &self.event.prev_kv {
            None => out.push(0),
            Some(prev) => {
                out.push(1);
                out.extend_from_slice(&prev.create_revision.to_be_bytes());
                out.extend_from_slice(&prev.mod_revision.to_be_bytes());
                out.extend_from_slice(&prev.version.to_be_bytes());
                out.extend_from_slice(&prev.value);
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<HistoryRecord> {
        let mut reader = Reader(bytes);
        let kind = match reader.u8()? {
            0 => EventKind::Put,
            1 => EventKind::Delete,
            _ => return None,
        };
        let time_ms = reader.i64()?;
        let key = reader.bytes()?.to_vec();
        let create_revision = reader.i64()?;
        let mod_revision = reader.i64()?;
        let version = reader.i64()?;
        let value = reader.bytes()?.to_vec();
        let prev_kv = match reader.u8()? {
            0 => None,
            1 => Some(KeyValue {
                key: key.clone(),
                create_revision: reader.i64()?,
                mod_revision: reader.i64()?,
                version: reader.i64()?,
                value: reader.rest().to_vec(),
            }),
            _ => return None,
        };
        Some(HistoryRecord {
            time_ms,
            event: Event {
                kind,
                kv: KeyValue {
                    key,
                    value,
                    create_revision,
                    mod_revision,
                    version,
                },
                prev_kv,
            },
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn i64(&mut self) -> Option<i64> {
        decode_i64(self.take(8)?)
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_be_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(len)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

// create(8) mod(8) version(8) value
fn encode_current(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + kv.value.len());
    out.extend_from_slice(&kv.create_revision.to_be_bytes());
    out.extend_from_slice(&kv.mod_revision.to_be_bytes());
    out.extend_from_slice(&kv.version.to_be_bytes());
    out.extend_from_slice(&kv.value);
    out
}

fn decode_current(key: &[u8], bytes: &[u8]) -> Option<KeyValue> {
    let mut reader = Reader(bytes);
    Some(KeyValue {
        key: key.to_vec(),
        create_revision: reader.i64()?,
        mod_revision: reader.i64()?,
        version: reader.i64()?,
        value: reader.rest().to_vec(),
    })
}

fn decode_i64(bytes: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(bytes.try_into().ok()?))
}

fn current_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(CURRENT);
    out.extend_from_slice(key);
    out
}

fn history_key(revision: Revision) -> [u8; 9] {
    let mut out = [0u8; 9];
    out[0] = HISTORY;
    out[1..].copy_from_slice(&revision.to_be_bytes());
    out
}

fn decode_history_key(key: &[u8]) -> Option<Revision> {
    match key.split_first() {
        Some((&HISTORY, rest)) => decode_i64(rest),
        _ => None,
    }
}

fn unix_millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn backend(err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(err.to_string())
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it: every critical
/// section here leaves the state consistent before anything that could panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: EventKind, prev: bool) -> HistoryRecord {
        let kv = KeyValue {
            key: b"/registry/pods/default/a".to_vec(),
            value: b"{\"x\":1}".to_vec(),
            create_revision: 3,
            mod_revision: 7,
            version: 2,
        };
        HistoryRecord {
            time_ms: 1_700_000_000_000,
            event: Event {
                kind,
                kv: kv.clone(),
                prev_kv: prev.then(|| KeyValue {
                    value: b"old".to_vec(),
                    mod_revision: 5,
                    version: 1,
                    ..kv
                }),
            },
        }
    }

    #[test]
    fn history_records_round_trip() {
        for (kind, prev) in [
            (EventKind::Put, false),
            (EventKind::Put, true),
            (EventKind::Delete, true),
        ] {
            let original = record(kind, prev);
            let decoded = HistoryRecord::decode(&original.encode()).expect("decodes");
            assert_eq!(decoded.time_ms, original.time_ms);
            assert_eq!(decoded.event, original.event);
        }
    }

    #[test]
    fn truncated_records_are_rejected_not_panicked_on() {
        let bytes = record(EventKind::Put, true).encode();
        for cut in 0..30 {
            assert!(
                HistoryRecord::decode(&bytes[..cut]).is_none(),
                "cut at {cut}"
            );
        }
        assert!(decode_current(b"k", &[0; 10]).is_none());
    }

    #[test]
    fn history_keys_sort_by_revision() {
        assert!(history_key(9) < history_key(10));
        assert!(history_key(255) < history_key(256));
        assert_eq!(decode_history_key(&history_key(42)), Some(42));
    }
}
