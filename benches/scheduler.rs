//! Scheduler benchmark through the real server (the built `cluster` binary) with hollow nodes
//! (heartbeats and a hollow kubelet that marks bound pods Running, as kubemark does).
//!
//! Run: `cargo bench --bench scheduler` (prints Markdown). `BENCH_SCALE=0.1` shrinks every
//! workload for a quick look.
//!
//! Workloads:
//! - 100 nodes, 3000 pending pods (100m CPU, 128Mi each) created by 32 concurrent clients:
//!   pods bound per second between the first and the last binding, and the creation rate
//!   that fed it.
//! - A ReplicaSet-like burst: 1000 pods with one controller owner (a ConfigMap, so that no
//!   controller acts on them, yet the scheduler spreads them as one set), created directly;
//!   time from the first create until every pod is bound, and how evenly they spread. This is
//!   the scheduler alone, fed as fast as 32 clients can create pods.
//! - A Deployment of 1000 replicas: time from its creation until every pod is bound (the
//!   Deployment and ReplicaSet controllers create the pods), and until the Deployment reports
//!   1000 available replicas (the hollow kubelets mark the pods Ready).
//!
//! The client, the server (API, store, scheduler, controllers) and the hollow kubelets share
//! the machine.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::json;

#[allow(dead_code)]
#[path = "../tests/support/hollow.rs"]
mod hollow;
#[path = "../tests/support/server.rs"]
mod server;

fn scale(n: usize) -> usize {
    let factor: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * factor) as usize).max(1)
}

fn pod(name: &str, owner: Option<&str>) -> Pod {
    let mut value = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]},
    });
    if let Some(uid) = owner {
        // A real owner, or the garbage collector would delete the pods as dangling.
        value["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1",
            "kind": "ConfigMap", "name": "burst-owner", "uid": uid, "controller": true}]);
    }
    serde_json::from_value(value).expect("pod")
}

/// Watches pods with `prefix` and records when each is first seen bound, and where.
fn watch_bindings(
    client: kube::Client,
    namespace: &str,
    prefix: &'static str,
    want: usize,
) -> tokio::task::JoinHandle<(Vec<Instant>, BTreeMap<String, usize>)> {
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    tokio::spawn(async move {
        let mut seen = HashSet::new();
        let mut times = Vec::new();
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        let mut stream = watcher(pods, watcher::Config::default()).boxed();
        while let Some(event) = stream.next().await {
            let Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = event else {
                continue;
            };
            let name = pod.metadata.name.clone().unwrap_or_default();
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                continue;
            };
            if name.starts_with(prefix) && seen.insert(name) {
                times.push(Instant::now());
                *per_node.entry(node).or_default() += 1;
                if seen.len() == want {
                    break;
                }
            }
        }
        (times, per_node)
    })
}

/// Creates the pods with `concurrency` clients in flight; returns when all are created.
async fn create_all(pods: Api<Pod>, objects: Vec<Pod>, concurrency: usize) -> Duration {
    let start = Instant::now();
    let pods = Arc::new(pods);
    futures::stream::iter(objects)
        .for_each_concurrent(concurrency, |object| {
            let pods = Arc::clone(&pods);
            async move {
                pods.create(&PostParams::default(), &object)
                    .await
                    .expect("create pod");
            }
        })
        .await;
    start.elapsed()
}

async fn bench() -> Vec<(String, String)> {
    let mut rows = Vec::new();
    let nodes = scale(100);
    let server = server::TestServer::start();
    let client = server.client().await;
    let specs: Vec<hollow::HollowNode> = (0..nodes)
        .map(|i| hollow::HollowNode::new(&format!("hollow-{i:03}")).capacity("32", "128Gi"))
        .collect();
    let _hollow = hollow::HollowNodes::start(client.clone(), &specs).await;
    println!("  {nodes} hollow nodes registered");

    // Throughput: 3000 pending pods.
    let count = scale(3000);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let watch = watch_bindings(client.clone(), "default", "tput-", count);
    let start = Instant::now();
    let objects = (0..count)
        .map(|i| pod(&format!("tput-{i}"), None))
        .collect();
    let created_in = create_all(pods.clone(), objects, 32).await;
    let (times, _) = tokio::time::timeout(Duration::from_secs(600), watch)
        .await
        .expect("all pods bound in time")
        .expect("watch task");
    let first = times.first().copied().unwrap_or(start);
    let last = times.last().copied().unwrap_or(start);
    let span = last.duration_since(first).as_secs_f64().max(1e-3);
    record(
        &mut rows,
        (
            format!("{count} pods on {nodes} nodes: creation rate (32 clients)"),
            format!("{:.0} pods/s", count as f64 / created_in.as_secs_f64()),
        ),
    );
    record(
        &mut rows,
        (
            format!("{count} pods on {nodes} nodes: bound per second (first → last binding)"),
            format!("{:.0} pods/s", count as f64 / span),
        ),
    );
    record(
        &mut rows,
        (
            format!("{count} pods on {nodes} nodes: first create → all bound"),
            format!("{:.2} s", last.duration_since(start).as_secs_f64()),
        ),
    );

    // Burst: a ReplicaSet-like set of 1000 pods.
    let burst = scale(1000);
    let owners: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let owner = owners
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "burst-owner"}}))
                .expect("configmap"),
        )
        .await
        .expect("create owner");
    let owner_uid = owner.metadata.uid.expect("owner uid");
    let watch = watch_bindings(client.clone(), "default", "burst-", burst);
    let start = Instant::now();
    let objects = (0..burst)
        .map(|i| pod(&format!("burst-{i}"), Some(&owner_uid)))
        .collect();
    let created_in = create_all(pods, objects, 32).await;
    let (times, per_node) = tokio::time::timeout(Duration::from_secs(600), watch)
        .await
        .expect("all pods bound in time")
        .expect("watch task");
    let last = times.last().copied().unwrap_or(start);
    let min = per_node.values().min().copied().unwrap_or(0);
    let max = per_node.values().max().copied().unwrap_or(0);
    record(
        &mut rows,
        (
            format!("{burst}-pod burst: created in"),
            format!("{:.2} s", created_in.as_secs_f64()),
        ),
    );
    record(
        &mut rows,
        (
            format!("{burst}-pod burst: first create → all bound"),
            format!("{:.2} s", last.duration_since(start).as_secs_f64()),
        ),
    );
    record(
        &mut rows,
        (
            format!(
                "{burst}-pod burst: pods per node (min/max over {} nodes)",
                per_node.len()
            ),
            format!("{min}/{max}"),
        ),
    );

    // A Deployment: the controllers create the pods, the scheduler binds them.
    let replicas = scale(1000);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let watch = watch_bindings(client.clone(), "default", "deploy-", replicas);
    let start = Instant::now();
    deployments
        .create(&PostParams::default(), &deployment("deploy", replicas))
        .await
        .expect("create deployment");
    let (times, per_node) = tokio::time::timeout(Duration::from_secs(600), watch)
        .await
        .expect("all pods bound in time")
        .expect("watch task");
    let last = times.last().copied().unwrap_or(start);
    // Available needs the hollow kubelets to report every pod Ready and the ReplicaSet and
    // Deployment controllers to count them: reported as it stands after 600 s if not reached.
    let available = loop {
        let current = deployments.get("deploy").await.expect("get deployment");
        let ready = current
            .status
            .and_then(|s| s.available_replicas)
            .unwrap_or(0);
        if ready >= replicas as i32 {
            break format!("{:.2} s", start.elapsed().as_secs_f64());
        }
        if start.elapsed() >= Duration::from_secs(600) {
            break format!("not reached: {ready} available after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let min = per_node.values().min().copied().unwrap_or(0);
    let max = per_node.values().max().copied().unwrap_or(0);
    record(
        &mut rows,
        (
            format!("Deployment of {replicas}: create → all pods bound"),
            format!("{:.2} s", last.duration_since(start).as_secs_f64()),
        ),
    );
    record(
        &mut rows,
        (
            format!(
                "Deployment of {replicas}: create → {replicas} available (polled every 100 ms)"
            ),
            available,
        ),
    );
    record(
        &mut rows,
        (
            format!(
                "Deployment of {replicas}: pods per node (min/max over {} nodes)",
                per_node.len()
            ),
            format!("{min}/{max}"),
        ),
    );
    rows
}

/// Prints a row at once (a later failure must not lose the figures) and keeps it.
fn record(rows: &mut Vec<(String, String)>, row: (String, String)) {
    println!("  {:<60} {}", row.0, row.1);
    rows.push(row);
}

fn deployment(name: &str, replicas: usize) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "busybox",
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]},
            },
        },
    }))
    .expect("deployment")
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!("scheduler benchmark");
    let rows = runtime.block_on(bench());
    println!();
    println!("| workload | result |");
    println!("|---|---|");
    for (name, value) in rows {
        println!("| {name} | {value} |");
    }
}
