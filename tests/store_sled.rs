//! Behaviour that only the embedded sled backend has: its database files, its history window,
//! its protection against slow watchers, and reopening after a clean shutdown.

use std::time::{Duration, SystemTime};

use cluster::server::store::sled::{SledOptions, SledStore};
use cluster::server::store::{RangeRequest, Store, StoreError};
use futures::StreamExt;

fn open(dir: &std::path::Path, options: SledOptions) -> SledStore {
    SledStore::open(&dir.join("db"), options).expect("open store")
}

#[tokio::test]
async fn a_slow_watcher_is_cut_off_instead_of_blocking_writers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(
        dir.path(),
        SledOptions {
            watch_buffer: 8,
            ..SledOptions::default()
        },
    );
    let from = store.current_revision().await.expect("revision");
    let mut slow = store.watch(b"/w/", from).await.expect("watch");
    // Nobody reads `slow` while 50 writes go through: none of them may block.
    let writes = async {
        for i in 0..50 {
            store
                .create(format!("/w/{i}").as_bytes(), b"v")
                .await
                .expect("create");
        }
    };
    tokio::time::timeout(Duration::from_secs(20), writes)
        .await
        .expect("writers were blocked by a slow watcher");
    let mut delivered = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), slow.next()).await {
            Ok(Some(Ok(_))) => delivered += 1,
            Ok(Some(Err(StoreError::WatcherTooSlow))) => break,
            other => panic!("expected the watcher to be cut off, got {other:?}"),
        }
    }
    assert!(
        delivered <= 8,
        "a cut-off watcher got {delivered} events past its buffer"
    );
    // It can resume from what it saw and catch up from history.
    let mut resumed = store
        .watch(b"/w/", from + delivered as i64)
        .await
        .expect("resume");
    let mut next = from + delivered as i64 + 1;
    while next <= from + 50 {
        let event = resumed.next().await.expect("event").expect("ok");
        assert_eq!(event.revision(), next);
        next += 1;
    }
}

#[tokio::test]
async fn data_survives_a_clean_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let revision = {
        let store = open(dir.path(), SledOptions::default());
        store.create(b"/a", b"1").await.expect("create");
        let kv = store.update(b"/a", b"2", 1).await.expect("update");
        store.close().expect("close");
        kv.mod_revision
    };
    let store = open(dir.path(), SledOptions::default());
    assert_eq!(store.current_revision().await.expect("revision"), revision);
    let kv = store.get(b"/a").await.expect("get").expect("present");
    assert_eq!((kv.value.as_slice(), kv.version), (&b"2"[..], 2));
    // History survives too: a watch from before the update replays it.
    let mut watch = store.watch(b"/a", 1).await.expect("watch");
    let event = watch.next().await.expect("event").expect("ok");
    assert_eq!(event.prev_kv.expect("prev").value, b"1");
}

#[tokio::test]
async fn values_sled_keeps_in_blob_files_survive_a_restart() {
    // sled stores pages larger than a quarter of its segment as separate files under
    // `blobs/`, which its own flush never syncs; the store fdatasyncs them before acknowledging.
    let dir = tempfile::tempdir().expect("tempdir");
    let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    {
        let store = open(dir.path(), SledOptions::default());
        store.create(b"/big", &big).await.expect("create");
        let blobs = dir.path().join("db").join("blobs");
        let files = std::fs::read_dir(&blobs).map(|d| d.count()).unwrap_or(0);
        assert!(files > 0, "a 1 MiB value is written as a blob file");
        store.close().expect("close");
    }
    let store = open(dir.path(), SledOptions::default());
    let kv = store.get(b"/big").await.expect("get").expect("present");
    assert!(kv.value == big, "the blob came back intact");
}

#[tokio::test]
async fn a_foreign_database_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A sled database that is not ours.
    {
        let db = sled::open(dir.path().join("db")).expect("sled");
        db.insert(b"hello", b"world").expect("insert");
        db.flush().expect("flush");
    }
    match SledStore::open(&dir.path().join("db"), SledOptions::default()) {
        Err(StoreError::Corrupt { reason, .. }) => {
            assert!(reason.contains("not a cluster database"))
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a foreign database was accepted"),
    }
}

#[tokio::test]
async fn a_corrupted_database_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path(), SledOptions::default());
        for i in 0..200 {
            store
                .create(format!("/c/{i}").as_bytes(), &[7u8; 512])
                .await
                .expect("create");
        }
        store.close().expect("close");
    }
    // Overwrite the middle of every file in the database directory with garbage.
    for entry in walk(&dir.path().join("db")) {
        let mut bytes = std::fs::read(&entry).expect("read");
        let len = bytes.len();
        if len > 64 {
            for b in &mut bytes[len / 4..len / 2] {
                *b = 0xA5;
            }
            std::fs::write(&entry, bytes).expect("write");
        }
    }
    let opened = std::panic::catch_unwind(|| {
        SledStore::open(&dir.path().join("db"), SledOptions::default())
    });
    let opened = opened.expect("opening a corrupted database panicked");
    if let Ok(store) = opened {
        // sled may recover a prefix of its log; then reads must fail cleanly or succeed.
        let result = store
            .range(RangeRequest {
                prefix: b"/c/".to_vec(),
                ..RangeRequest::default()
            })
            .await;
        if let Err(err) = result {
            assert!(
                matches!(err, StoreError::Corrupt { .. } | StoreError::Backend(_)),
                "{err}"
            );
        }
    }
}

#[tokio::test]
async fn history_older_than_the_window_is_compacted_but_recent_revisions_are_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(
        dir.path(),
        SledOptions {
            history_window: Duration::from_secs(60),
            min_history_revisions: 10,
            ..SledOptions::default()
        },
    );
    let first = store.create(b"/k", b"0").await.expect("create");
    let mut last = first.clone();
    for i in 1..50 {
        last = store
            .update(b"/k", format!("{i}").as_bytes(), last.mod_revision)
            .await
            .expect("update");
    }
    // Nothing is older than the window yet.
    let now = SystemTime::now();
    assert_eq!(
        store.compact_expired_history(now).await.expect("compact"),
        None
    );
    // Two minutes later everything is old, but the last 10 revisions are kept.
    let later = now + Duration::from_secs(120);
    let compacted = store
        .compact_expired_history(later)
        .await
        .expect("compact")
        .expect("compacted");
    assert_eq!(compacted, last.mod_revision - 10);
    assert!(matches!(
        store.watch(b"/k", first.mod_revision).await.err(),
        Some(StoreError::Compacted { .. })
    ));
    let mut watch = store
        .watch(b"/k", compacted)
        .await
        .expect("watch recent history");
    let event = watch.next().await.expect("event").expect("ok");
    assert_eq!(event.revision(), compacted + 1);
    assert_eq!(
        store.get(b"/k").await.expect("get").expect("present").value,
        b"49"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
