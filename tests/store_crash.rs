//! Crash test of the sled backend: a child process writes and prints every acknowledged
//! write; the parent kills it with SIGKILL at a random moment, reopens the store and checks
//! that every acknowledged write is there and that the store is consistent. Several rounds on
//! one database.
//!
//! The child is this very test binary, re-run with `CLUSTER_CRASH_CHILD` set (see
//! [`crash_child_writer`]).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster::server::store::sled::{SledOptions, SledStore};
use cluster::server::store::{EventKind, RangeRequest, Store};
use futures::StreamExt;
use rand::Rng;

const CHILD_ENV: &str = "CLUSTER_CRASH_CHILD";
const ROUNDS: usize = 6;
const KEYS_PER_CHILD: usize = 64;

/// The child: writes forever (creates, updates, deletes over a small key set, from several
/// concurrent tasks) and prints `ack <key> <value-or-DELETED> <revision>` after each one is
/// acknowledged. Does nothing when not started by the parent.
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let store = SledStore::open(Path::new(&dir), SledOptions::default()).expect("open");
        let round: u64 = std::env::var("CLUSTER_CRASH_ROUND")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        let mut tasks = Vec::new();
        for writer in 0..4u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                loop {
                    n += 1;
                    // Each writer owns its keys, so its view of them is authoritative.
                    let key = format!("/crash/{writer}/{}", n % KEYS_PER_CHILD as u64);
                    let value = format!("r{round}-w{writer}-n{n}");
                    let existing = store.get(key.as_bytes()).await.expect("get");
                    let line = match existing {
                        None => {
                            let kv = store
                                .create(key.as_bytes(), value.as_bytes())
                                .await
                                .expect("create");
                            format!("ack {key} {value} {}", kv.mod_revision)
                        }
                        Some(kv) if n % 5 == 0 => {
                            let (_, rev) = store
                                .delete(key.as_bytes(), Some(kv.mod_revision))
                                .await
                                .expect("delete");
                            format!("ack {key} DELETED {rev}")
                        }
                        Some(kv) => {
                            let kv = store
                                .update(key.as_bytes(), value.as_bytes(), kv.mod_revision)
                                .await
                                .expect("update");
                            format!("ack {key} {value} {}", kv.mod_revision)
                        }
                    };
                    println!("{line}");
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    });
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("db");
    let exe = std::env::current_exe().expect("current exe");
    let mut rng = rand::rng();
    // What the parent knows was acknowledged: key → (value or None for deleted, revision).
    let mut acked: BTreeMap<String, (Option<String>, i64)> = BTreeMap::new();
    let mut total_acks = 0usize;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &db)
            .env("CLUSTER_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(line) => lines.push(line),
                    Err(_) => break,
                }
            }
            lines
        });
        // Let it get going, then kill it at a random moment.
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(rng.random_range(300..1200)));
        let pid = child.id().to_string();
        let status = Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -KILL {pid} failed");
        let _ = child.wait();
        let lines = reader.join().expect("reader thread");
        let mut round_acks = 0;
        for line in lines {
            let mut parts = line.split_whitespace();
            if parts.next() != Some("ack") {
                continue;
            }
            let (Some(key), Some(value), Some(rev)) = (parts.next(), parts.next(), parts.next())
            else {
                continue; // a line cut short by the kill
            };
            let Ok(rev) = rev.parse::<i64>() else {
                continue;
            };
            let value = (value != "DELETED").then(|| value.to_string());
            let entry = acked.entry(key.to_string()).or_insert((None, 0));
            if rev > entry.1 {
                *entry = (value, rev);
            }
            round_acks += 1;
        }
        total_acks += round_acks;
        eprintln!(
            "round {round}: {round_acks} acknowledged writes in {:?}",
            started.elapsed()
        );
        verify(&db, &acked);
    }
    assert!(
        total_acks > 100,
        "the child acknowledged only {total_acks} writes"
    );
}

/// Reopens the store and checks every acknowledged write and the store's own consistency.
fn verify(db: &Path, acked: &BTreeMap<String, (Option<String>, i64)>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = SledStore::open(db, SledOptions::default()).expect("reopen after SIGKILL");
        let current = store.current_revision().await.expect("revision");
        for (key, (value, rev)) in acked {
            let got = store.get(key.as_bytes()).await.expect("get");
            assert!(
                current >= *rev,
                "current revision {current} is behind acknowledged {rev}"
            );
            match (value, got) {
                // A later, unacknowledged write may have landed too: the value may be newer.
                (Some(value), Some(kv)) => assert!(
                    kv.mod_revision > *rev || &String::from_utf8_lossy(&kv.value) == value,
                    "{key}: acknowledged {value}@{rev}, found {:?}@{}",
                    String::from_utf8_lossy(&kv.value),
                    kv.mod_revision
                ),
                (Some(value), None) => {
                    // Only a later (unacknowledged) delete may have removed it: the history
                    // still shows a delete after the acknowledged revision.
                    let mut history = store.watch(key.as_bytes(), *rev).await.expect("watch");
                    let deleted_later =
                        tokio::time::timeout(Duration::from_secs(2), history.next())
                            .await
                            .ok()
                            .flatten()
                            .and_then(Result::ok)
                            .is_some();
                    assert!(
                        deleted_later,
                        "{key}: acknowledged {value}@{rev} is missing"
                    );
                }
                (None, Some(kv)) => assert!(
                    kv.mod_revision > *rev,
                    "{key}: acknowledged delete@{rev}, but found a value from {}",
                    kv.mod_revision
                ),
                (None, None) => {}
            }
        }
        // Consistency: every live key's revisions are at most the current one, and replaying
        // the retained history from the start gives exactly the current contents.
        let all = store
            .range(RangeRequest {
                prefix: b"/crash/".to_vec(),
                ..RangeRequest::default()
            })
            .await
            .expect("range");
        for kv in &all.kvs {
            assert!(kv.mod_revision <= current && kv.create_revision <= kv.mod_revision);
        }
        let mut replayed: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        eprintln!(
            "verify: current {current}, compacted {}",
            store.compacted_revision()
        );
        let mut history = store
            .watch(b"/crash/", store.compacted_revision())
            .await
            .expect("watch");
        let mut last = store.compacted_revision();
        while last < current {
            let event = tokio::time::timeout(Duration::from_secs(5), history.next())
                .await
                .expect("history replay stalled")
                .expect("history ended")
                .expect("history event");
            assert_eq!(
                event.revision(),
                last + 1,
                "history has a gap or a duplicate after {last}"
            );
            last = event.revision();
            match event.kind {
                EventKind::Put => replayed.insert(event.kv.key, event.kv.value),
                EventKind::Delete => replayed.remove(&event.kv.key),
            };
        }
        let live: BTreeMap<Vec<u8>, Vec<u8>> =
            all.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
        assert_eq!(
            replayed, live,
            "history replay disagrees with the current values"
        );
        store.close().expect("close");
    });
}
