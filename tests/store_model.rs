//! Randomized test of the sled backend against a simple in-memory model of the store's
//! semantics: every operation's result, every past revision's contents and the watch stream
//! must match what the model says.

use std::collections::BTreeMap;

use cluster::server::store::sled::{SledOptions, SledStore};
use cluster::server::store::{EventKind, KeyValue, RangeRequest, Store, StoreError};
use futures::StreamExt;
use proptest::prelude::*;

const KEYS: &[&str] = &["/r/a/1", "/r/a/2", "/r/a/3", "/r/ab/1", "/r/b/1", "/r/b/2"];
const PREFIXES: &[&str] = &["", "/r/", "/r/a/", "/r/ab/", "/r/b/", "/r/c/"];

#[derive(Clone, Debug)]
enum Op {
    Create(usize, u8),
    /// Update with the right expected revision (true) or a stale one (false).
    Update(usize, u8, bool),
    /// Delete unguarded (None), or guarded with the right (true) or a stale (false) revision.
    Delete(usize, Option<bool>),
    /// Range over a prefix with a limit, at the revision `back` writes ago.
    Range(usize, usize, usize),
    /// Compact to the revision `back` writes ago.
    Compact(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS.len();
    prop_oneof![
        (key.clone(), any::<u8>()).prop_map(|(k, v)| Op::Create(k, v)),
        (key.clone(), any::<u8>(), any::<bool>()).prop_map(|(k, v, ok)| Op::Update(k, v, ok)),
        (key, proptest::option::of(any::<bool>())).prop_map(|(k, g)| Op::Delete(k, g)),
        (0..PREFIXES.len(), 0usize..4, 0usize..6).prop_map(|(p, l, b)| Op::Range(p, l, b)),
        (0usize..8).prop_map(Op::Compact),
    ]
}

/// The model: the state after every revision, and what was compacted.
struct Model {
    states: Vec<(i64, BTreeMap<Vec<u8>, KeyValue>)>,
    compacted: i64,
    events: Vec<(EventKind, Vec<u8>, i64)>,
}

impl Model {
    fn current(&self) -> &BTreeMap<Vec<u8>, KeyValue> {
        &self.states.last().expect("initial state").1
    }
    fn revision(&self) -> i64 {
        self.states.last().expect("initial state").0
    }
    fn commit(&mut self, state: BTreeMap<Vec<u8>, KeyValue>, kind: EventKind, key: &[u8]) {
        let revision = self.revision() + 1;
        self.events.push((kind, key.to_vec(), revision));
        self.states.push((revision, state));
    }
    fn state_at(&self, revision: i64) -> &BTreeMap<Vec<u8>, KeyValue> {
        &self
            .states
            .iter()
            .rev()
            .find(|(r, _)| *r <= revision)
            .expect("state exists")
            .1
    }
}

fn value(v: u8) -> Vec<u8> {
    vec![v; 1 + (v as usize % 7)]
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let store = SledStore::open(&dir.path().join("db"), SledOptions::default())
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let start = store.current_revision().await.expect("revision");
    let mut watch = store.watch(b"/r/a/", 0).await.expect("watch");
    let mut model = Model {
        states: vec![(start, BTreeMap::new())],
        compacted: 0,
        events: Vec::new(),
    };
    for op in ops {
        match op {
            Op::Create(k, v) => {
                let key = KEYS[k].as_bytes();
                let result = store.create(key, &value(v)).await;
                if model.current().contains_key(key) {
                    prop_assert!(
                        matches!(result, Err(StoreError::AlreadyExists { .. })),
                        "unexpected {:?}",
                        result
                    );
                } else {
                    let kv = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let expected = KeyValue {
                        key: key.to_vec(),
                        value: value(v),
                        create_revision: model.revision() + 1,
                        mod_revision: model.revision() + 1,
                        version: 1,
                    };
                    prop_assert_eq!(&kv, &expected);
                    let mut state = model.current().clone();
                    state.insert(key.to_vec(), kv);
                    model.commit(state, EventKind::Put, key);
                }
            }
            Op::Update(k, v, right) => {
                let key = KEYS[k].as_bytes();
                let existing = model.current().get(key).cloned();
                let expected_rev = match (&existing, right) {
                    (Some(kv), true) => kv.mod_revision,
                    (Some(kv), false) => kv.mod_revision - 1,
                    (None, _) => model.revision(),
                };
                let result = store.update(key, &value(v), expected_rev).await;
                match existing {
                    None => prop_assert!(
                        matches!(result, Err(StoreError::NotFound { .. })),
                        "unexpected {:?}",
                        result
                    ),
                    Some(old) if !right => match result {
                        Err(StoreError::Conflict { current, .. }) => prop_assert_eq!(*current, old),
                        other => prop_assert!(false, "expected a conflict, got {:?}", other),
                    },
                    Some(old) => {
                        let kv = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert_eq!(kv.create_revision, old.create_revision);
                        prop_assert_eq!(kv.version, old.version + 1);
                        prop_assert_eq!(kv.mod_revision, model.revision() + 1);
                        let mut state = model.current().clone();
                        state.insert(key.to_vec(), kv);
                        model.commit(state, EventKind::Put, key);
                    }
                }
            }
            Op::Delete(k, guard) => {
                let key = KEYS[k].as_bytes();
                let existing = model.current().get(key).cloned();
                let expected = match (&existing, guard) {
                    (_, None) => None,
                    (Some(kv), Some(true)) => Some(kv.mod_revision),
                    (Some(kv), Some(false)) => Some(kv.mod_revision + 1),
                    (None, Some(_)) => Some(1),
                };
                let result = store.delete(key, expected).await;
                match existing {
                    None => prop_assert!(
                        matches!(result, Err(StoreError::NotFound { .. })),
                        "unexpected {:?}",
                        result
                    ),
                    Some(_) if guard == Some(false) => {
                        prop_assert!(
                            matches!(result, Err(StoreError::Conflict { .. })),
                            "unexpected {:?}",
                            result
                        )
                    }
                    Some(old) => {
                        let (prev, revision) =
                            result.map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert_eq!(prev, old);
                        prop_assert_eq!(revision, model.revision() + 1);
                        let mut state = model.current().clone();
                        state.remove(key);
                        model.commit(state, EventKind::Delete, key);
                    }
                }
            }
            Op::Range(p, limit, back) => {
                let prefix = PREFIXES[p].as_bytes();
                // Revision 0 means "now" in the store's API, as in etcd.
                let revision = (model.revision() - back as i64).max(start);
                let asked = (revision > 0).then_some(revision);
                let revision = asked.unwrap_or(model.revision());
                let expected: Vec<KeyValue> = model
                    .state_at(revision)
                    .iter()
                    .filter(|(k, _)| k.starts_with(prefix))
                    .map(|(_, kv)| kv.clone())
                    .collect();
                // Page through the whole prefix at that revision.
                let mut got = Vec::new();
                let mut start_key = None;
                loop {
                    let result = store
                        .range(RangeRequest {
                            prefix: prefix.to_vec(),
                            start: start_key.clone(),
                            limit,
                            revision: asked,
                        })
                        .await;
                    if revision < model.compacted {
                        prop_assert!(
                            matches!(result, Err(StoreError::Compacted { .. })),
                            "range at {} after compaction at {}: {:?}",
                            revision,
                            model.compacted,
                            result
                        );
                        break;
                    }
                    let page = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
                    if limit > 0 {
                        prop_assert!(page.kvs.len() <= limit);
                    }
                    got.extend(page.kvs);
                    match page.next {
                        Some(next) => start_key = Some(next),
                        None => break,
                    }
                }
                if revision >= model.compacted {
                    prop_assert_eq!(got, expected);
                }
            }
            Op::Compact(back) => {
                let revision = model.revision() - back as i64;
                if revision <= start {
                    continue;
                }
                let result = store.compact(revision).await;
                if revision <= model.compacted {
                    prop_assert!(
                        matches!(result, Err(StoreError::Compacted { .. })),
                        "unexpected {:?}",
                        result
                    );
                } else {
                    result.map_err(|e| TestCaseError::fail(e.to_string()))?;
                    model.compacted = revision;
                }
            }
        }
    }
    // The watch opened at the start saw exactly the model's writes under its prefix.
    let expected: Vec<_> = model
        .events
        .iter()
        .filter(|(_, key, _)| key.starts_with(b"/r/a/"))
        .cloned()
        .collect();
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        let event = tokio::time::timeout(std::time::Duration::from_secs(5), watch.next())
            .await
            .map_err(|_| TestCaseError::fail("watch stalled"))?
            .ok_or_else(|| TestCaseError::fail("watch ended"))?
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        seen.push((event.kind, event.kv.key.clone(), event.revision()));
    }
    prop_assert_eq!(seen, expected);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn sled_store_matches_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        runtime.block_on(run(ops))?;
    }
}
