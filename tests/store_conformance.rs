//! One behavioural suite for the `Store` trait, run against every backend: the embedded sled
//! store and a real etcd (started from `tests/support/etcd.rs`; skipped if etcd is not installed,
//! except under `CI=true`).
//!
//! Each case is an async fn over `&dyn Store` in [`cases`]; the `conformance!` macro generates
//! one `#[tokio::test]` per case and backend (`sled_backend::…`, `etcd_backend::…`), each on a
//! fresh store. Cases never assume what the first revision is: they work relative to
//! `current_revision()`.

#[path = "support/etcd.rs"]
mod etcd_support;

use std::sync::Arc;
use std::time::Duration;

use cluster::server::store::{
    Event, EventKind, KeyValue, RangeRequest, RangeResponse, Revision, Store, StoreError,
    WatchStream,
};
use futures::StreamExt;

/// A store under test and whatever keeps it alive (a temp dir, an etcd process).
struct Backend {
    store: Arc<dyn Store>,
    _keep: Box<dyn std::any::Any + Send>,
}

async fn open_sled() -> Option<Backend> {
    use cluster::server::store::sled::{SledOptions, SledStore};
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SledStore::open(&dir.path().join("db"), SledOptions::default()).expect("open sled");
    Some(Backend {
        store: Arc::new(store),
        _keep: Box::new(dir),
    })
}

async fn open_etcd() -> Option<Backend> {
    use cluster::server::store::etcd::{EtcdOptions, EtcdStore};
    let process = tokio::task::spawn_blocking(etcd_support::EtcdProcess::start_or_skip)
        .await
        .expect("etcd start task")?;
    let store = EtcdStore::connect(EtcdOptions {
        endpoints: vec![process.endpoint.clone()],
        ..EtcdOptions::default()
    })
    .await
    .expect("connect to etcd");
    Some(Backend {
        store: Arc::new(store),
        _keep: Box::new(process),
    })
}

macro_rules! conformance {
    ($backend:ident, $open:ident, [$($case:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(backend) = super::$open().await else { return };
                    super::cases::$case(&backend.store).await;
                }
            )*
        }
    };
}

macro_rules! all_backends {
    ($($case:ident),* $(,)?) => {
        conformance!(sled_backend, open_sled, [$($case),*]);
        conformance!(etcd_backend, open_etcd, [$($case),*]);
    };
}

all_backends!(
    create_get_and_already_exists,
    revision_moves_by_one_per_successful_write_only,
    key_bookkeeping_across_delete_and_recreate,
    update_is_compare_and_swap,
    concurrent_writes_to_one_key_are_decided_one_after_another,
    guarded_and_unguarded_delete,
    range_stays_inside_the_prefix,
    a_range_larger_than_4_mib_is_answered,
    paging_at_a_fixed_revision_is_a_snapshot,
    range_at_past_and_future_revisions,
    watch_replays_exactly_the_events_after_a_past_revision,
    watch_from_the_current_revision_sees_only_new_writes_and_from_zero_everything,
    watches_racing_with_writers_are_gapless_and_duplicate_free,
    delete_events_carry_the_previous_value,
    compaction_discards_history_but_keeps_current_values,
);

/// How long any single wait on the store may take before the test fails.
const WAIT: Duration = Duration::from_secs(20);

async fn next_event(stream: &mut WatchStream) -> Event {
    match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {WAIT:?}"),
    }
}

async fn events(stream: &mut WatchStream, count: usize) -> Vec<Event> {
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        events.push(next_event(stream).await);
    }
    events
}

/// Fails if the watch yields anything within a short while.
async fn assert_quiet(stream: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
        panic!("unexpected watch item: {item:?}");
    }
}

async fn revision(store: &dyn Store) -> Revision {
    store.current_revision().await.expect("current revision")
}

async fn range(store: &dyn Store, prefix: &str, revision: Option<Revision>) -> RangeResponse {
    store
        .range(RangeRequest {
            prefix: prefix.as_bytes().to_vec(),
            revision,
            ..RangeRequest::default()
        })
        .await
        .expect("range")
}

fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

/// A watch that must fail with `Compacted`: either `watch` itself or its first item.
async fn expect_compacted_watch(store: &dyn Store, prefix: &[u8], from: Revision) -> StoreError {
    match store.watch(prefix, from).await {
        Err(e) => e,
        Ok(mut stream) => match tokio::time::timeout(WAIT, stream.next()).await {
            Ok(Some(Err(e))) => e,
            other => panic!("watch from compacted revision {from} gave {other:?}"),
        },
    }
}

/// The cases, each written once for every backend. They take the store as an `Arc` so that
/// cases can spawn tasks that share it; everything else takes `&dyn Store`.
mod cases {
    use super::*;

    pub async fn create_get_and_already_exists(shared: &Arc<dyn Store>) {
        let store = shared.as_ref();
        let before = revision(store).await;
        assert_eq!(store.get(b"/a/1").await.expect("get"), None);

        let kv = store.create(b"/a/1", b"one").await.expect("create");
        assert_eq!(kv.key, b"/a/1");
        assert_eq!(kv.value, b"one");
        assert_eq!(kv.version, 1);
        assert_eq!(kv.create_revision, before + 1);
        assert_eq!(kv.mod_revision, before + 1);
        assert_eq!(store.get(b"/a/1").await.expect("get"), Some(kv.clone()));

        match store.create(b"/a/1", b"again").await {
            Err(StoreError::AlreadyExists { key }) => assert_eq!(key, "/a/1"),
            other => panic!("second create gave {other:?}"),
        }
        assert_eq!(store.get(b"/a/1").await.expect("get"), Some(kv));
        assert_eq!(store.get(b"/a/10").await.expect("get"), None);
        assert_eq!(store.get(b"/a/").await.expect("get"), None);
    }

    pub async fn revision_moves_by_one_per_successful_write_only(shared: &Arc<dyn Store>) {
        let store = shared.as_ref();
        let r0 = revision(store).await;
        let created = store.create(b"/r/k", b"v1").await.expect("create");
        assert_eq!(created.mod_revision, r0 + 1);
        assert_eq!(revision(store).await, r0 + 1);

        assert!(store.create(b"/r/k", b"v").await.is_err());
        assert!(store.update(b"/r/k", b"v", r0).await.is_err());
        assert!(store.update(b"/r/missing", b"v", r0 + 1).await.is_err());
        assert!(store.update(b"/r/missing", b"v", 0).await.is_err());
        assert!(store.delete(b"/r/k", Some(r0)).await.is_err());
        assert!(store.delete(b"/r/missing", None).await.is_err());
        assert!(store.delete(b"/r/missing", Some(0)).await.is_err());
        assert_eq!(
            revision(store).await,
            r0 + 1,
            "failed writes moved the revision"
        );
        assert_eq!(store.get(b"/r/missing").await.expect("get"), None);

        // Reads do not move it either.
        range(store, "", None).await;
        store.get(b"/r/k").await.expect("get");
        assert_eq!(revision(store).await, r0 + 1);

        let updated = store.update(b"/r/k", b"v2", r0 + 1).await.expect("update");
        assert_eq!(updated.mod_revision, r0 + 2);
        let (_, deleted_at) = store.delete(b"/r/k", None).await.expect("delete");
        assert_eq!(deleted_at, r0 + 3);
        let other = store.create(b"/r/other", b"x").await.expect("create");
        assert_eq!(other.mod_revision, r0 + 4);
        assert_eq!(revision(store).await, r0 + 4);
    }

    pub async fn key_bookkeeping_across_delete_and_recreate(shared: &Arc<dyn Store>) {
        let store = shared.as_ref();
        let v1 = store.create(b"/b/k", b"1").await.expect("create");
        let v2 = store
            .update(b"/b/k", b"2", v1.mod_revision)
            .await
            .expect("update");
        assert_eq!(
            (v2.version, v2.create_revision, v2.mod_revision),
            (2, v1.create_revision, v1.mod_revision + 1)
        );
        assert_eq!(v2.value, b"2");
        let v3 = store
            .update(b"/b/k", b"3", v2.mod_revision)
            .await
            .expect("update");
        assert_eq!(
            (v3.version, v3.create_revision, v3.mod_revision),
            (3, v1.create_revision, v2.mod_revision + 1)
        );
        assert_eq!(store.get(b"/b/k").await.expect("get"), Some(v3.clone()));

        let (previous, deleted_at) = store.delete(b"/b/k", None).await.expect("delete");
        assert_eq!(previous, v3);
        assert_eq!(deleted_at, v3.mod_revision + 1);
        assert_eq!(store.get(b"/b/k").await.expect("get"), None);

        let again = store.create(b"/b/k", b"new").await.expect("re-create");
        assert_eq!(again.version, 1);
        assert_eq!(again.create_revision, deleted_at + 1);
        assert_eq!(again.mod_revision, deleted_at + 1);
        assert_eq!(store.get(b"/b/k").await.expect("get"), Some(again));
    }

    pub async fn update_is_compare_and_swap(shared: &Arc<dyn Store>) {
        let store = shared.as_ref();
        let v1 = store.create(b"/c/k", b"1").await.expect("create");
        let v2 = store
            .update(b"/c/k", b"2", v1.mod_revision)
            .await
            .expect("update");

        // A stale expectation: Conflict carrying the key as it is now, nothing written.
        match store.update(b"/c/k", b"lost", v1.mod_revision).await {
            Err(StoreError::Conflict {
                key,
                expected,
                current,
            }) => {
                assert_eq!(key, "/c/k");
                assert_eq!(expected, v1.mod_revision);
                assert_eq!(*current, v2);
            }
            other => panic!("stale update gave {other:?}"),
        }
        assert_eq!(store.get(b"/c/k").await.expect("get"), Some(v2.clone()));

        // A key that does not exist: NotFound whatever revision is expected, also 0.
        for expected in [0, v2.mod_revision] {
            match store.update(b"/c/missing", b"x", expected).await {
                Err(StoreError::NotFound { key }) => assert_eq!(key, "/c/missing"),
                other => panic!("update of a missing key (expected {expected}) gave {other:?}"),
            }
        }
        assert_eq!(store.get(b"/c/missing").await.expect("get"), None);

        // A deleted key is gone for updates too, even with its last mod_revision.
        store.delete(b"/c/k", None).await.expect("delete");
        assert!(matches!(
            store.update(b"/c/k", b"x", v2.mod_revision).await,
            Err(StoreError::NotFound { .. })
        ));
    }

    /// Many writers racing on one key (the embedded store decides a whole group of queued
    /// writes at once): exactly one create wins, exactly one update per expected revision wins,
    /// and the losers see the winner's state.
    pub async fn concurrent_writes_to_one_key_are_decided_one_after_another(
        shared: &Arc<dyn Store>,
    ) {
        const WRITERS: usize = 32;
        let before = revision(shared.as_ref()).await;
        let creates = futures::future::join_all((0..WRITERS).map(|i| {
            let store = Arc::clone(shared);
            async move { store.create(b"/race/k", i.to_string().as_bytes()).await }
        }))
        .await;
        let created: Vec<&KeyValue> = creates.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(created.len(), 1, "exactly one create wins: {creates:?}");
        let winner = created[0].clone();
        assert_eq!(winner.mod_revision, before + 1);
        assert!(creates.iter().all(|r| match r {
            Ok(_) => true,
            Err(StoreError::AlreadyExists { key }) => key == "/race/k",
            Err(_) => false,
        }));

        // Every round: all writers update with the same expected revision; one wins and the
        // others get Conflict carrying exactly the winner's state.
        let mut current = winner;
        for round in 0..3 {
            let updates = futures::future::join_all((0..WRITERS).map(|i| {
                let store = Arc::clone(shared);
                let expected = current.mod_revision;
                let value = format!("{round}-{i}");
                async move { store.update(b"/race/k", value.as_bytes(), expected).await }
            }))
            .await;
            let won: Vec<&KeyValue> = updates.iter().filter_map(|r| r.as_ref().ok()).collect();
            assert_eq!(won.len(), 1, "round {round}: one update wins: {updates:?}");
            let next = won[0].clone();
            assert_eq!(next.mod_revision, current.mod_revision + 1);
            assert_eq!(next.version, current.version + 1);
            assert_eq!(next.create_revision, current.create_revision);
            for result in &updates {
                match result {
                    Ok(_) => {}
                    Err(StoreError::Conflict {
                        expected, current, ..
                    }) => {
                        assert_eq!(*expected, next.mod_revision - 1);
                        assert_eq!(**current, next);
                    }
                    Err(e) => panic!("round {round}: unexpected {e}"),
                }
            }
            current = next;
        }
        assert_eq!(
            shared.get(b"/race/k").await.expect("get"),
            Some(current.clone())
        );

        // Guarded deletes racing with updates: exactly one of them succeeds.
        let expected = current.mod_revision;
        let deletes = futures::future::join_all((0..WRITERS).map(|i| {
            let store = Arc::clone(shared);
            async move {
                if i % 2 == 0 {
                    store.delete(b"/race/k", Some(expected)).await.map(|_| ())
                } else {
                    store.update(b"/race/k", b"u", expected).await.map(|_| ())
                }
            }
        }))
        .await;
        assert_eq!(
            deletes.iter().filter(|r| r.is_ok()).count(),
            1,
            "{deletes:?}"
        );
        assert_eq!(revision(shared.as_ref()).await, expected + 1);
    }

    pub async fn guarded_and_unguarded_delete(shared: &Arc<dyn Store>) {
        let store = shared.as_ref();
        let v1 = store.create(b"/d/guarded", b"1").await.expect("create");
        let v2 = store
            .update(b"/d/guarded", b"2", v1.mod_revision)
            .await
            .expect("update");
        let before = revision(store).await;

        match store.delete(b"/d/guarded", Some(v1.mod_revision)).await {
            Err(StoreError::Conflict {
                key,
                expected,
                current,
            }) => {
                assert_eq!(key, "/d/guarded");
                assert_eq!(expected, v1.mod_revision);
                assert_eq!(*current, v2);
            }
            other => panic!("stale guarded delete gave {other:?}"),
        }
        assert_eq!(revision(store).await, before);
        assert_eq!(
            store.get(b"/d/guarded").await.expect("get"),
            Some(v2.clone())
        );

        let (previous, at) = store
            .delete(b"/d/guarded", Some(v2.mod_revision))
            .await
            .expect("guarded delete");
        assert_eq!(previous, v2);
        assert_eq!(at, before + 1);
        assert_eq!(store.get(b"/d/guarded").await.expect("get"), None);

        let plain = store.create(b"/d/plain", b"p").await.expect("create");
        let (previous, at) = store.delete(b"/d/plain", None).await.expect("delete");
        assert_eq!(previous, plain);
        assert_eq!(at, plain.mod_revision + 1);

        for guard in [None, Some(0), Some(plain.mod_revision)] {
            match store.delete(b"/d/plain", guard).await {
                Err(StoreError::NotFound { key }) => assert_eq!(key, "/d/plain"),
                other => panic!("delete of a deleted key (guard {guard:?}) gave {other:?}"),
            }
        }
        assert_eq!(revision(store).await, at);
    }

    pub async fn range_stays_inside_the_prefix(shared: &Arc<dyn Store>) {
        let store = shared.as_ref();
        let all = [
            "/registry/pod",
            "/registry/pods",
            "/registry/pods/default/a",
            "/registry/pods/default/b",
            "/registry/pods/kube-system/c",
            "/registry/podsx/default/d",
            "/registry/pods0",
            "/registry/services/default/e",
        ];
        // Create in a scrambled order: ranges come back sorted whatever the write order.
        for key in all.iter().rev() {
            store
                .create(key.as_bytes(), key.as_bytes())
                .await
                .expect("create");
        }
        let now = revision(store).await;

        let pods = range(store, "/registry/pods/", None).await;
        assert_eq!(
            keys(&pods.kvs),
            [
                "/registry/pods/default/a",
                "/registry/pods/default/b",
                "/registry/pods/kube-system/c"
            ]
        );
        assert_eq!(pods.next, None);
        assert_eq!(pods.revision, now);
        for kv in &pods.kvs {
            assert_eq!(kv.value, kv.key, "value of {kv:?}");
            assert_eq!(kv.version, 1);
        }

        let default = range(store, "/registry/pods/default/", None).await;
        assert_eq!(
            keys(&default.kvs),
            ["/registry/pods/default/a", "/registry/pods/default/b"]
        );
        let podsx = range(store, "/registry/podsx/", None).await;
        assert_eq!(keys(&podsx.kvs), ["/registry/podsx/default/d"]);
        assert!(range(store, "/registry/nodes/", None).await.kvs.is_empty());

        let mut sorted: Vec<String> = all.iter().map(|k| k.to_string()).collect();
        sorted.sort();
        assert_eq!(keys(&range(store, "", None).await.kvs), sorted);
        assert_eq!(keys(&range(store, "/registry/", None).await.kvs), sorted);

        // A start key is clamped to the prefix, never reads outside it.
        let page = store
            .range(RangeRequest {
                prefix: b"/registry/pods/".to_vec(),
                start: Some(b"/registry/pods/default/b".to_vec()),
                ..RangeRequest::default()
            })
            .await
            .expect("range from a start key");
        assert_eq!(
            keys(&page.kvs),
            ["/registry/pods/default/b", "/registry/pods/kube-system/c"]
        );
    }

    /// A list of many objects easily exceeds gRPC's default 4 MiB message limit; kube-apiserver
    /// (etcd's Go client) accepts it, so must we. Values of 1 MiB stay under etcd's default
    /// request limit of 1.5 MiB.
    pub async fn a_range_larger_than_4_mib_is_answered(shared: &Arc<dyn Store>) {
        let store = shared.as_ref();
        let value = vec![b'v'; 1024 * 1024];
        for i in 0..6 {
            let key = format!("/big/{i}");
            store.create(key.as_bytes(), &value).await.expect("create");
        }
        let page = range(store, "/big/", None).await;
        assert_eq!(keys(&page.kvs).len(), 6);
        assert!(page.kvs.iter().all(|kv| kv.value.len() == value.len()));
    }

    pub async fn paging_at_a_fixed_revision_is_a_snapshot(shared: &Arc<dyn Store>) {
        let store = shared.as_ref();
        let mut originals = Vec::new();
        for i in 0..25 {
            let key = format!("/p/item-{i:02}");
            originals.push(
                store
                    .create(key.as_bytes(), b"original")
                    .await
                    .expect("create"),
            );
        }
        store.create(b"/q/outside", b"x").await.expect("create");

        let mut pages = Vec::new();
        let mut request = RangeRequest {
            prefix: b"/p/".to_vec(),
            limit: 7,
            ..RangeRequest::default()
        };
        let mut snapshot = None;
        let mut writes = 0;
        loop {
            let page = store.range(request.clone()).await.expect("range page");
            assert!(page.kvs.len() <= 7);
            let at = *snapshot.get_or_insert(page.revision);
            assert_eq!(page.revision, at, "pages read at different revisions");
            pages.extend(page.kvs.clone());

            // Writes between pages, in and around the pages still to come.
            let current = store.get(b"/p/item-20").await.expect("get");
            if let Some(current) = current {
                store
                    .update(b"/p/item-20", b"changed", current.mod_revision)
                    .await
                    .expect("update");
            }
            store
                .create(format!("/p/item-1{writes}x").as_bytes(), b"new")
                .await
                .expect("create");
            store
                .delete(format!("/p/item-{:02}", 24 - writes).as_bytes(), None)
                .await
                .expect("delete");
            writes += 1;

            match page.next {
                Some(next) => {
                    request.start = Some(next);
                    request.revision = Some(at);
                }
                None => break,
            }
        }
        assert_eq!(
            pages, originals,
            "paged list differs from the state at its revision"
        );

        let now = range(store, "/p/", None).await;
        assert_eq!(now.kvs.len(), 25, "creates and deletes balance");
        assert_ne!(now.kvs, originals);

        // Limits that divide the list exactly end with no `next` after the last key.
        let mut start = None;
        let mut seen = 0;
        loop {
            let page = store
                .range(RangeRequest {
                    prefix: b"/p/".to_vec(),
                    start: start.clone(),
                    limit: 5,
                    revision: Some(now.revision),
                })
                .await
                .expect("range page");
            seen += page.kvs.len();
            match page.next {
                Some(next) => start = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, 25);
    }

    pub async fn range_at_past_and_future_revisions(shared: &Arc<dyn Store>) {
        let store = shared.as_ref();
        let a1 = store.create(b"/h/a", b"a1").await.expect("create");
        let b1 = store.create(b"/h/b", b"b1").await.expect("create");
        let past = revision(store).await;
        store
            .update(b"/h/a", b"a2", a1.mod_revision)
            .await
            .expect("update");
        store.delete(b"/h/b", None).await.expect("delete");
        let c1 = store.create(b"/h/c", b"c1").await.expect("create");

        let then = range(store, "/h/", Some(past)).await;
        assert_eq!(then.revision, past);
        assert_eq!(then.kvs, vec![a1.clone(), b1]);

        let before_b = range(store, "/h/", Some(a1.mod_revision)).await;
        assert_eq!(before_b.kvs, vec![a1]);

        let now = range(store, "/h/", None).await;
        assert_eq!(now.revision, c1.mod_revision);
        assert_eq!(keys(&now.kvs), ["/h/a", "/h/c"]);
        assert_eq!(now.kvs[0].value, b"a2");

        let current = revision(store).await;
        for ahead in [1, 1000] {
            match store
                .range(RangeRequest {
                    prefix: b"/h/".to_vec(),
                    revision: Some(current + ahead),
                    ..RangeRequest::default()
                })
                .await
            {
                Err(StoreError::FutureRevision {
                    requested,
                    current: reported,
                }) => {
                    assert_eq!(requested, current + ahead);
                    assert_eq!(reported, current);
                }
                other => panic!("range {ahead} ahead gave {other:?}"),
            }
        }
    }

    pub async fn watch_replays_exactly_the_events_after_a_past_revision(shared: &Arc<dyn Store>) {
        let store = shared.as_ref();
        store.create(b"/w/early", b"e").await.expect("create");
        let from = revision(store).await;

        let a1 = store.create(b"/w/a", b"1").await.expect("create");
        store.create(b"/elsewhere/x", b"x").await.expect("create");
        let a2 = store
            .update(b"/w/a", b"2", a1.mod_revision)
            .await
            .expect("update");
        let b1 = store.create(b"/w/b", b"1").await.expect("create");
        let (a_last, a_deleted) = store.delete(b"/w/a", None).await.expect("delete");
        store.create(b"/wx/sibling", b"x").await.expect("create");

        let mut stream = store.watch(b"/w/", from).await.expect("watch");
        let replayed = events(&mut stream, 4).await;
        let summary: Vec<_> = replayed
            .iter()
            .map(|e| {
                (
                    e.kind,
                    String::from_utf8_lossy(&e.kv.key).into_owned(),
                    e.revision(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (EventKind::Put, "/w/a".to_string(), a1.mod_revision),
                (EventKind::Put, "/w/a".to_string(), a2.mod_revision),
                (EventKind::Put, "/w/b".to_string(), b1.mod_revision),
                (EventKind::Delete, "/w/a".to_string(), a_deleted),
            ]
        );
        assert_eq!(replayed[0].kv, a1);
        assert_eq!(replayed[0].prev_kv, None);
        assert_eq!(replayed[1].kv, a2);
        assert_eq!(replayed[1].prev_kv, Some(a1));
        assert_eq!(replayed[2].kv, b1);
        assert_eq!(replayed[3].prev_kv, Some(a_last));

        // The replay runs straight into live events.
        assert_quiet(&mut stream).await;
        let b2 = store
            .update(b"/w/b", b"2", b1.mod_revision)
            .await
            .expect("update");
        store.create(b"/elsewhere/y", b"y").await.expect("create");
        let c1 = store.create(b"/w/c", b"1").await.expect("create");
        let live = events(&mut stream, 2).await;
        assert_eq!(live[0].kv, b2);
        assert_eq!(live[0].prev_kv, Some(b1));
        assert_eq!(live[1].kv, c1);
        assert_quiet(&mut stream).await;

        // From the latest revision: nothing to replay.
        let mut latest = store.watch(b"/w/", c1.mod_revision).await.expect("watch");
        assert_quiet(&mut latest).await;
    }

    pub async fn watch_from_the_current_revision_sees_only_new_writes_and_from_zero_everything(
        shared: &Arc<dyn Store>,
    ) {
        let store = shared.as_ref();
        let old = store.create(b"/z/old", b"1").await.expect("create");
        store
            .update(b"/z/old", b"2", old.mod_revision)
            .await
            .expect("update");

        // From 0: the whole history under the prefix.
        let mut all = store.watch(b"/z/", 0).await.expect("watch");
        let replayed = events(&mut all, 2).await;
        assert_eq!(replayed[0].kv, old);
        assert_eq!(replayed[1].prev_kv.as_ref(), Some(&old));

        let now = revision(store).await;
        let mut stream = store.watch(b"/z/", now).await.expect("watch");
        // A write right after `watch` returns is seen: the watch is in place by then.
        let new = store.create(b"/z/new", b"n").await.expect("create");
        let event = next_event(&mut stream).await;
        assert_eq!(event.kind, EventKind::Put);
        assert_eq!(event.kv, new);
        assert_quiet(&mut stream).await;
    }

    pub async fn watches_racing_with_writers_are_gapless_and_duplicate_free(
        shared: &Arc<dyn Store>,
    ) {
        let store = shared.as_ref();
        const WRITERS: usize = 4;
        const WRITES: usize = 40;
        let start = revision(store).await;
        let mut reference = store.watch(b"/race/", start).await.expect("watch");

        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let store = Arc::clone(shared);
                tokio::spawn(async move { write_loop(store.as_ref(), w, WRITES).await })
            })
            .collect();
        let started = start_watches_while_writing(store, start).await;
        for writer in writers {
            assert_eq!(writer.await.expect("writer task"), WRITES);
        }
        let end = revision(store).await;

        let all = events(&mut reference, WRITERS * WRITES).await;
        assert_quiet(&mut reference).await;
        let revisions: Vec<Revision> = all.iter().map(Event::revision).collect();
        assert!(
            revisions.windows(2).all(|w| w[0] < w[1]),
            "reference watch out of order"
        );
        assert!(revisions.iter().all(|r| *r > start && *r <= end));

        for (from, _asked_at, mut stream) in started {
            // `from` is literal: 0 replays everything under the prefix.
            let expected: Vec<&Event> = all.iter().filter(|e| e.revision() > from).collect();
            let got = events(&mut stream, expected.len()).await;
            assert_eq!(
                got.iter().collect::<Vec<_>>(),
                expected,
                "watch from {from}"
            );
            assert_quiet(&mut stream).await;
        }
    }

    /// One writer's share: creates, updates and deletes on its own keys, plus writes outside the
    /// watched prefix. Returns how many writes under the prefix succeeded.
    async fn write_loop(store: &dyn Store, writer: usize, writes: usize) -> usize {
        let mut done = 0;
        for i in 0..writes {
            let key = format!("/race/w{writer}/k{}", i % 3);
            let value = format!("{writer}-{i}");
            match store.get(key.as_bytes()).await.expect("get") {
                None => {
                    store
                        .create(key.as_bytes(), value.as_bytes())
                        .await
                        .expect("create");
                }
                Some(kv) if i % 4 == 0 => {
                    store
                        .delete(key.as_bytes(), Some(kv.mod_revision))
                        .await
                        .expect("delete");
                }
                Some(kv) => {
                    store
                        .update(key.as_bytes(), value.as_bytes(), kv.mod_revision)
                        .await
                        .expect("update");
                }
            }
            done += 1;
            if i % 5 == 0 {
                let other = format!("/racex/w{writer}");
                let _ = store.delete(other.as_bytes(), None).await;
                store
                    .create(other.as_bytes(), b"x")
                    .await
                    .expect("create outside");
            }
            tokio::task::yield_now().await;
        }
        done
    }

    /// Starts watches at various revisions while the writers run: at the current revision, a few
    /// revisions back, and from 0. Returns (from, revision current when it returned, stream).
    async fn start_watches_while_writing(
        store: &dyn Store,
        start: Revision,
    ) -> Vec<(Revision, Revision, WatchStream)> {
        let mut started = Vec::new();
        for round in 0..12 {
            tokio::time::sleep(Duration::from_millis(3)).await;
            let now = revision(store).await;
            let from = match round % 3 {
                0 => now,
                1 => (now - 5).max(start),
                _ => 0,
            };
            let stream = store.watch(b"/race/", from).await.expect("watch");
            let asked_at = revision(store).await;
            started.push((from, asked_at, stream));
        }
        started
    }

    pub async fn delete_events_carry_the_previous_value(shared: &Arc<dyn Store>) {
        let store = shared.as_ref();
        let from = revision(store).await;
        let v1 = store.create(b"/e/k", b"first").await.expect("create");
        let v2 = store
            .update(b"/e/k", b"second", v1.mod_revision)
            .await
            .expect("update");
        let (_, deleted_at) = store
            .delete(b"/e/k", Some(v2.mod_revision))
            .await
            .expect("delete");
        let again = store.create(b"/e/k", b"third").await.expect("re-create");

        let mut stream = store.watch(b"/e/", from).await.expect("watch");
        let seen = events(&mut stream, 4).await;
        let delete = &seen[2];
        assert_eq!(delete.kind, EventKind::Delete);
        assert_eq!(
            delete.kv,
            KeyValue {
                key: b"/e/k".to_vec(),
                value: Vec::new(),
                create_revision: 0,
                mod_revision: deleted_at,
                version: 0,
            }
        );
        assert_eq!(delete.revision(), deleted_at);
        assert_eq!(delete.prev_kv, Some(v2));
        assert_eq!(seen[3].kind, EventKind::Put);
        assert_eq!(seen[3].kv, again);
        assert_eq!(seen[3].prev_kv, None, "a re-create has no previous value");

        // The same live.
        let now = revision(store).await;
        let mut live = store.watch(b"/e/", now).await.expect("watch");
        let (_, at) = store.delete(b"/e/k", None).await.expect("delete");
        let event = next_event(&mut live).await;
        assert_eq!(event.kind, EventKind::Delete);
        assert_eq!(event.revision(), at);
        assert_eq!(event.kv.value, b"");
        assert_eq!(event.prev_kv, Some(again));
    }

    pub async fn compaction_discards_history_but_keeps_current_values(shared: &Arc<dyn Store>) {
        let store = shared.as_ref();
        let mut a = store.create(b"/k/a", b"0").await.expect("create");
        let b = store.create(b"/k/b", b"b").await.expect("create");
        let old = revision(store).await;
        for i in 1..=5 {
            let value = i.to_string();
            a = store
                .update(b"/k/a", value.as_bytes(), a.mod_revision)
                .await
                .expect("update");
        }
        let gone = store.create(b"/k/gone", b"g").await.expect("create");
        store.delete(b"/k/gone", None).await.expect("delete");
        let point = revision(store).await;
        let after = store.create(b"/k/c", b"c").await.expect("create");
        assert!(
            old < point - 2,
            "the old revision is well before the compaction point"
        );
        assert!(gone.mod_revision > old);

        // Before compaction the old revision is readable.
        assert_eq!(range(store, "/k/", Some(old)).await.kvs.len(), 2);

        store.compact(point).await.expect("compact");

        match store
            .range(RangeRequest {
                prefix: b"/k/".to_vec(),
                revision: Some(old),
                ..RangeRequest::default()
            })
            .await
        {
            Err(StoreError::Compacted {
                requested,
                compacted,
            }) => {
                assert_eq!(requested, old);
                assert_eq!(compacted, point);
            }
            other => panic!("range at compacted revision {old} gave {other:?}"),
        }
        match expect_compacted_watch(store, b"/k/", old).await {
            StoreError::Compacted {
                requested,
                compacted,
            } => {
                assert_eq!(requested, old);
                assert_eq!(compacted, point);
            }
            other => panic!("watch from compacted revision {old} gave {other}"),
        }

        // Current values survive, with their bookkeeping.
        assert_eq!(store.get(b"/k/a").await.expect("get"), Some(a.clone()));
        let now = range(store, "/k/", None).await;
        assert_eq!(now.kvs, vec![a.clone(), b, after.clone()]);
        // The compaction point itself is still readable, and watchable from.
        assert_eq!(
            keys(&range(store, "/k/", Some(point)).await.kvs),
            ["/k/a", "/k/b"]
        );
        let mut stream = store
            .watch(b"/k/", point)
            .await
            .expect("watch from the compaction point");
        assert_eq!(next_event(&mut stream).await.kv, after);

        // Writes go on as before.
        let a_next = store
            .update(b"/k/a", b"later", a.mod_revision)
            .await
            .expect("update");
        assert_eq!(a_next.version, a.version + 1);
        assert_eq!(next_event(&mut stream).await.kv, a_next);
    }
}
