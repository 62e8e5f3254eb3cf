//! API server benchmark: a release-built `cluster server` on loopback, driven by kube-rs.
//!
//! Run: `cargo bench --bench api` (prints a Markdown table); cargo builds the server binary in
//! the same (release) profile. `BENCH_SCALE=0.1` shrinks every workload for a quick look.
//!
//! Workloads: 64 clients (each its own connection) creating 10k small ConfigMaps; 10k gets from
//! 64 clients; a list of all 10k objects; 1k concurrent watches receiving one update (latency
//! from the start of the update request to each watcher's receipt of the event); the server's
//! VmRSS and VmHWM from /proc/<pid>/status at 10k objects and at the end.
//!
//! Nothing here asserts on timings: the figures are printed for BENCHMARKS.md.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::core::ObjectMeta;

#[path = "../tests/support/server.rs"]
mod server;

const NAMESPACE: &str = "default";

fn scale(n: usize) -> usize {
    let factor: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * factor) as usize).max(1)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `p` quantile (0..=1) of sorted `latencies`, nearest-rank.
fn quantile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn percentiles(mut latencies: Vec<Duration>) -> (Duration, Duration, Duration) {
    latencies.sort();
    (
        quantile(&latencies, 0.50),
        quantile(&latencies, 0.99),
        latencies[latencies.len() - 1],
    )
}

struct Table {
    rows: Vec<(String, String)>,
}

impl Table {
    fn add(&mut self, name: &str, value: String) {
        println!("  {name:<44} {value}");
        self.rows.push((name.to_string(), value));
    }

    fn print(&self) {
        println!();
        println!("| Workload | Result |");
        println!("|---|---|");
        for (name, value) in &self.rows {
            println!("| {name} | {value} |");
        }
    }
}

/// VmRSS and VmHWM of a process, in KiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn config_map(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some([("bench".to_string(), "api".to_string())].into()),
            ..ObjectMeta::default()
        },
        data: Some([("key".to_string(), format!("value of {name}"))].into()),
        ..ConfigMap::default()
    }
}

/// Runs `n` requests numbered 0..n from `clients` concurrent clients, each working through
/// its own share in order; returns each request's latency and the wall time.
async fn run_clients<F, Fut>(
    clients: &[kube::Client],
    n: usize,
    request: F,
) -> (Vec<Duration>, Duration)
where
    F: Fn(kube::Client, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        let client = client.clone();
        let request = request.clone();
        let count = clients.len();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for i in (c..n).step_by(count) {
                let t = Instant::now();
                request(client.clone(), i).await;
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

#[tokio::main]
async fn main() {
    let objects = scale(10_000);
    let clients_n = 64;
    let watchers = scale(1_000);
    println!("API server benchmark: {}", env!("CARGO_BIN_EXE_cluster"));
    let server = server::TestServer::start();
    let pid = server.pid().expect("server pid");
    let mut table = Table { rows: Vec::new() };

    let (rss, hwm) = memory(pid);
    table.add(
        "server RSS, idle (VmRSS / VmHWM)",
        format!("{} / {}", mib(rss), mib(hwm)),
    );

    let mut clients = Vec::new();
    for _ in 0..clients_n {
        clients.push(server.client().await);
    }
    // Open each client's connection (TLS handshake) before timing.
    for client in &clients {
        client.apiserver_version().await.expect("version");
    }

    // Creates.
    let (latencies, elapsed) = run_clients(&clients, objects, |client, i| async move {
        let api: Api<ConfigMap> = Api::namespaced(client, NAMESPACE);
        api.create(&PostParams::default(), &config_map(&format!("cm-{i:05}")))
            .await
            .expect("create");
    })
    .await;
    let (p50, p99, max) = percentiles(latencies);
    table.add(
        &format!("create, {clients_n} clients, {objects} ConfigMaps"),
        format!(
            "{:.0} creates/s; p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
            objects as f64 / elapsed.as_secs_f64(),
            ms(p50),
            ms(p99),
            ms(max)
        ),
    );
    let (rss, hwm) = memory(pid);
    table.add(
        &format!("server RSS at {objects} objects (VmRSS / VmHWM)"),
        format!("{} / {}", mib(rss), mib(hwm)),
    );

    // Gets.
    let (latencies, elapsed) = run_clients(&clients, objects, move |client, i| async move {
        let api: Api<ConfigMap> = Api::namespaced(client, NAMESPACE);
        // Spread the reads over the key space rather than in creation order.
        let j = (i * 7919) % objects;
        api.get(&format!("cm-{j:05}")).await.expect("get");
    })
    .await;
    let (p50, p99, max) = percentiles(latencies);
    table.add(
        &format!("get, {clients_n} clients, {objects} gets"),
        format!(
            "{:.0} gets/s; p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
            objects as f64 / elapsed.as_secs_f64(),
            ms(p50),
            ms(p99),
            ms(max)
        ),
    );

    // Lists of everything, one client at a time (a relist by an informer).
    let api: Api<ConfigMap> = Api::namespaced(clients[0].clone(), NAMESPACE);
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let list = api.list(&ListParams::default()).await.expect("list");
        times.push(t.elapsed());
        // The namespace also holds kube-root-ca.crt, published by the controller manager.
        let ours = list
            .items
            .iter()
            .filter(|cm| cm.metadata.name.as_deref() != Some("kube-root-ca.crt"))
            .count();
        assert_eq!(ours, objects, "list returned every object");
        bytes = serde_json::to_vec(&list).map(|v| v.len()).unwrap_or(0);
    }
    let (p50, _, max) = percentiles(times.clone());
    let min = times.iter().min().copied().unwrap_or_default();
    table.add(
        &format!("list of {objects} objects (5 runs, decoded by kube-rs)"),
        format!(
            "median {:.0} ms, min {:.0} ms, max {:.0} ms; {:.1} MiB of JSON",
            ms(p50),
            ms(min),
            ms(max),
            bytes as f64 / (1 << 20) as f64
        ),
    );
    let (rss, hwm) = memory(pid);
    table.add(
        "server RSS after gets and lists (VmRSS / VmHWM)",
        format!("{} / {}", mib(rss), mib(hwm)),
    );

    // Watch fan-out: `watchers` watches from the current revision, one update, and the time from
    // the start of the update request to each watcher's receipt of the MODIFIED event.
    let rv = api
        .list_metadata(&ListParams::default().limit(1))
        .await
        .expect("list for rv")
        .metadata
        .resource_version
        .expect("list resourceVersion");
    let watch_clients: Vec<kube::Client> = clients.iter().take(16).cloned().collect();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watchers);
    let mut tasks = Vec::new();
    let opened = Instant::now();
    for w in 0..watchers {
        let api: Api<ConfigMap> =
            Api::namespaced(watch_clients[w % watch_clients.len()].clone(), NAMESPACE);
        let rv = rv.clone();
        let ready = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let params = WatchParams::default()
                .timeout(120)
                .fields("metadata.name=cm-00000");
            let began = Instant::now();
            let mut seen: Vec<String> = Vec::new();
            let mut stream = api.watch(&params, &rv).await.expect("watch").boxed();
            // Dropped at once: the opener counts senders, not this task's lifetime.
            let _ = ready.send(()).await;
            drop(ready);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(WatchEvent::Modified(_)) => return Ok(Instant::now()),
                    Ok(WatchEvent::Error(status)) => {
                        return Err(format!("error event: {status:?}"))
                    }
                    Ok(other) => {
                        seen.push(format!("{other:?}").chars().take(120).collect::<String>())
                    }
                    Err(err) => return Err(format!("stream error: {err}")),
                }
            }
            Err(format!(
                "the watch ended without the update after {:?}; saw {seen:?}",
                began.elapsed()
            ))
        }));
    }
    drop(ready_tx);
    let mut open = 0;
    while ready_rx.recv().await.is_some() {
        open += 1;
    }
    let open_time = opened.elapsed();
    let (rss_watching, hwm_watching) = memory(pid);

    let mut cm = api.get("cm-00000").await.expect("get for update");
    cm.data = Some([("key".to_string(), "updated".to_string())].into());
    let start = Instant::now();
    api.replace("cm-00000", &PostParams::default(), &cm)
        .await
        .expect("update");
    let update_latency = start.elapsed();
    let mut latencies = Vec::new();
    let mut missed = 0;
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(60), task).await {
            Ok(Ok(Ok(received))) => latencies.push(received.saturating_duration_since(start)),
            Ok(Ok(Err(why))) => {
                if missed == 0 {
                    println!("  a watch missed the update: {why}");
                }
                missed += 1;
            }
            _ => missed += 1,
        }
    }
    assert!(!latencies.is_empty(), "no watch received the update");
    let (p50, p99, max) = percentiles(latencies.clone());
    table.add(
        &format!("{watchers} watches: open ({} clients)", watch_clients.len()),
        format!("{open} open in {:.0} ms", ms(open_time)),
    );
    table.add(
        &format!("{watchers} watches: fan-out of one update"),
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} received, {missed} missed; \
             the update itself {:.2} ms",
            ms(p50),
            ms(p99),
            ms(max),
            latencies.len(),
            ms(update_latency)
        ),
    );
    table.add(
        &format!("server RSS with {watchers} watches open (VmRSS / VmHWM)"),
        format!("{} / {}", mib(rss_watching), mib(hwm_watching)),
    );
    let (rss, hwm) = memory(pid);
    table.add(
        "server RSS at the end (VmRSS / VmHWM)",
        format!("{} / {}", mib(rss), mib(hwm)),
    );
    table.print();
    drop(clients);
    drop(server);
}
