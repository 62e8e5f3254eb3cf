//! Store benchmark: the embedded sled backend and a real local etcd, side by side in one run.
//! Both write to disk before acknowledging: etcd fdatasyncs its WAL; sled writes its log with
//! `sync_file_range`, which waits until the data reaches the device but, unlike fdatasync,
//! neither flushes the device's write cache nor syncs file metadata (weaker against power
//! loss; both survive `kill -9` of the process).
//!
//! Run: `cargo bench --bench store` (prints a Markdown table). `BENCH_SCALE=0.1` shrinks every
//! workload for a quick look; `BENCH_ONLY=sled` or `BENCH_ONLY=etcd` runs one backend;
//! `BENCH_CHURN=1000000` sets the number of churn updates (default 100 000, to keep the run
//! within minutes).
//!
//! Workloads: sequential creates of 2 KiB values from one client; creates from 64 concurrent
//! clients; updates of 1k keys in a loop; a range of 10k keys; 100 watchers on one prefix
//! (latency from the start of a write to its delivery to each watcher); peak RSS; size on disk
//! after 100k objects and after the churn updates with periodic compaction.
//!
//! The sled store runs inside this process, so its RSS includes the benchmark's own clients;
//! etcd's RSS is the etcd process alone.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::server::store::etcd::{EtcdOptions, EtcdStore};
use cluster::server::store::sled::{SledOptions, SledStore};
use cluster::server::store::{RangeRequest, Store};
use futures::StreamExt;

#[path = "../tests/support/etcd.rs"]
mod etcd_process;

const VALUE_2K: usize = 2048;

struct Figures {
    rows: Vec<(String, String)>,
}

impl Figures {
    fn add(&mut self, name: &str, value: String) {
        println!("  {name:<48} {value}");
        self.rows.push((name.to_string(), value));
    }
}

fn scale(n: usize) -> usize {
    let factor: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * factor) as usize).max(1)
}

/// How many churn updates: `BENCH_CHURN`, else 100 000 scaled by `BENCH_SCALE`.
fn churn_updates() -> usize {
    std::env::var("BENCH_CHURN")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| scale(100_000))
}

fn summary(mut latencies: Vec<Duration>, elapsed: Duration) -> String {
    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i]
    };
    format!(
        "{:>9.0} ops/s  p50 {:>8.3} ms  p99 {:>8.3} ms  (n={})",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.len()
    )
}

fn latency_summary(mut latencies: Vec<Duration>) -> String {
    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1e3
    };
    format!(
        "p50 {:>8.3} ms  p99 {:>8.3} ms  (n={})",
        pct(0.5),
        pct(0.99),
        latencies.len()
    )
}

/// `n` creates under `prefix` from `clients` concurrent clients; returns (latencies, elapsed).
async fn creates(
    store: Arc<dyn Store>,
    prefix: &str,
    n: usize,
    clients: usize,
    size: usize,
) -> (Vec<Duration>, Duration) {
    let value = Arc::new(vec![b'x'; size]);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let store = Arc::clone(&store);
        let value = Arc::clone(&value);
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for i in (client..n).step_by(clients) {
                let key = format!("{prefix}{i:08}");
                let t = Instant::now();
                store.create(key.as_bytes(), &value).await.expect("create");
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    for task in tasks {
        latencies.extend(task.await.expect("client task"));
    }
    (latencies, start.elapsed())
}

/// `n` updates spread over the keys `prefix{0..keys}` from `clients` clients.
async fn updates(
    store: Arc<dyn Store>,
    prefix: &str,
    keys: usize,
    n: usize,
    clients: usize,
    size: usize,
    compact_every: Option<usize>,
) -> (Vec<Duration>, Duration) {
    let value = Arc::new(vec![b'u'; size]);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let store = Arc::clone(&store);
        let value = Arc::clone(&value);
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            // Each client owns the keys with index ≡ client (mod clients): no conflicts.
            let own: Vec<String> = (client..keys)
                .step_by(clients)
                .map(|i| format!("{prefix}{i:08}"))
                .collect();
            let mut revisions: Vec<i64> = Vec::with_capacity(own.len());
            for key in &own {
                let kv = store
                    .get(key.as_bytes())
                    .await
                    .expect("get")
                    .expect("key exists");
                revisions.push(kv.mod_revision);
            }
            let mut done = 0;
            let mut i = client;
            while i < n {
                let slot = done % own.len().max(1);
                let t = Instant::now();
                let kv = store
                    .update(own[slot].as_bytes(), &value, revisions[slot])
                    .await
                    .expect("update");
                latencies.push(t.elapsed());
                revisions[slot] = kv.mod_revision;
                if let Some(every) = compact_every {
                    // One client drives compaction, keeping the last `every` revisions, as the
                    // API server's compactor does for etcd.
                    if client == 0 && done > 0 && done % (every / clients).max(1) == 0 {
                        let target = kv.mod_revision - every as i64;
                        if target > 0 {
                            let _ = store.compact(target).await;
                        }
                    }
                }
                done += 1;
                i += clients;
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    for task in tasks {
        latencies.extend(task.await.expect("client task"));
    }
    (latencies, start.elapsed())
}

async fn watch_fanout(store: Arc<dyn Store>, watchers: usize, writes: usize) -> Vec<Duration> {
    let from = store.current_revision().await.expect("revision");
    let mut streams = Vec::new();
    for _ in 0..watchers {
        streams.push(store.watch(b"/bench/watch/", from).await.expect("watch"));
    }
    let started: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
    let mut receivers = Vec::new();
    for mut stream in streams {
        receivers.push(tokio::spawn(async move {
            let mut arrivals = Vec::with_capacity(writes);
            while arrivals.len() < writes {
                match stream.next().await {
                    Some(Ok(event)) => arrivals.push((event.revision(), Instant::now())),
                    other => panic!("watch ended: {other:?}"),
                }
            }
            arrivals
        }));
    }
    let mut revisions = Vec::with_capacity(writes);
    for i in 0..writes {
        let t = Instant::now();
        let key = format!("/bench/watch/{i}");
        let kv = store.create(key.as_bytes(), b"w").await.expect("create");
        started.lock().expect("lock").push(t);
        revisions.push(kv.mod_revision);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let started = started.lock().expect("lock").clone();
    let mut latencies = Vec::new();
    for receiver in receivers {
        for (revision, at) in receiver.await.expect("watcher") {
            let i = revisions
                .iter()
                .position(|r| *r == revision)
                .expect("known revision");
            latencies.push(at.duration_since(started[i]));
        }
    }
    latencies
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

fn status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with(field))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

/// Resets the peak RSS of a process (Linux: writing 5 to clear_refs).
fn reset_peak_rss(pid: &str) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Runs every workload against one backend. `pid` is the process holding the data (for RSS),
/// `data_dir` where it keeps it (for the size on disk).
async fn run(name: &str, store: Arc<dyn Store>, pid: &str, data_dir: &Path) -> Figures {
    println!("\n## {name}");
    let mut f = Figures { rows: Vec::new() };
    reset_peak_rss(pid);

    let (lat, el) = creates(Arc::clone(&store), "/bench/seq/", scale(2000), 1, VALUE_2K).await;
    f.add("create 2 KiB, 1 client", summary(lat, el));

    let (lat, el) = creates(
        Arc::clone(&store),
        "/bench/par/",
        scale(20_000),
        64,
        VALUE_2K,
    )
    .await;
    f.add("create 2 KiB, 64 clients", summary(lat, el));

    let (lat, el) = creates(Arc::clone(&store), "/bench/upd/", 1000, 64, VALUE_2K).await;
    let _ = (lat, el);
    let (lat, el) = updates(
        Arc::clone(&store),
        "/bench/upd/",
        1000,
        scale(5000),
        1,
        VALUE_2K,
        None,
    )
    .await;
    f.add("update 1k keys in a loop, 1 client", summary(lat, el));

    let (_, _) = creates(Arc::clone(&store), "/bench/range/", 10_000, 64, 512).await;
    let mut lat = Vec::new();
    let start = Instant::now();
    for _ in 0..10 {
        let t = Instant::now();
        let page = store
            .range(RangeRequest {
                prefix: b"/bench/range/".to_vec(),
                ..RangeRequest::default()
            })
            .await
            .expect("range");
        assert_eq!(page.kvs.len(), 10_000);
        lat.push(t.elapsed());
    }
    f.add(
        "range of 10k keys (512 B values)",
        summary(lat, start.elapsed()),
    );

    let lat = watch_fanout(Arc::clone(&store), 100, scale(200)).await;
    f.add("100 watchers: write start → delivery", latency_summary(lat));

    f.add(
        "peak RSS during the above",
        mib(status_kib(pid, "VmHWM:") * 1024),
    );

    // Bring the store to 100k objects of 2 KiB.
    let existing = 2000 + 20_000 + 1000 + 10_000 + 200;
    let more = scale(100_000).saturating_sub(scale(existing));
    let (_, el) = creates(Arc::clone(&store), "/bench/bulk/", more, 64, VALUE_2K).await;
    println!(
        "  (filled to ~{} objects in {:.1} s)",
        scale(100_000),
        el.as_secs_f64()
    );
    f.add("size on disk, ~100k objects", mib(dir_size(data_dir)));

    // Churn: updates of 1k keys with compaction that keeps the last 10k revisions.
    let churn = churn_updates();
    let (_, _) = creates(Arc::clone(&store), "/bench/churn/", 1000, 64, 1024).await;
    let (lat, el) = updates(
        Arc::clone(&store),
        "/bench/churn/",
        1000,
        churn,
        64,
        1024,
        Some(10_000),
    )
    .await;
    f.add(
        &format!("{churn} updates of 1 KiB, 64 clients (churn)"),
        summary(lat, el),
    );
    f.add(
        "size on disk after churn with compaction",
        mib(dir_size(data_dir)),
    );
    f.add("peak RSS overall", mib(status_kib(pid, "VmHWM:") * 1024));
    f
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let mut results: Vec<(String, Figures)> = Vec::new();
    runtime.block_on(async {
        if only.is_empty() || only == "sled" {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = SledStore::open(&dir.path().join("db"), SledOptions::default())
                .expect("open sled store");
            let pid = std::process::id().to_string();
            let figures = run("sled (embedded)", Arc::new(store.clone()), &pid, dir.path()).await;
            store.close().expect("close");
            results.push(("sled".into(), figures));
        }
        if only.is_empty() || only == "etcd" {
            match etcd_process::EtcdProcess::start() {
                None => println!("\netcd is not installed: the etcd column is left out"),
                Some(Err(e)) => println!("\netcd did not start ({e}): the etcd column is left out"),
                Some(Ok(etcd)) => {
                    let store = EtcdStore::connect(EtcdOptions {
                        endpoints: vec![etcd.endpoint.clone()],
                        ca_file: None,
                        cert_file: None,
                        key_file: None,
                    })
                    .await
                    .expect("connect to etcd");
                    let pid = etcd.pid().to_string();
                    let figures = run("etcd", Arc::new(store), &pid, etcd.data_dir()).await;
                    results.push(("etcd".into(), figures));
                }
            }
        }
    });
    println!(
        "\n| workload | {} |",
        results
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---|".repeat(results.len()));
    if let Some((_, first)) = results.first() {
        for (i, (name, _)) in first.rows.iter().enumerate() {
            let cells: Vec<&str> = results.iter().map(|(_, f)| f.rows[i].1.as_str()).collect();
            println!("| {name} | {} |", cells.join(" | "));
        }
    }
}
