//! Pod startup benchmark: a `cluster server` with its embedded agent inside a network
//! namespace this benchmark makes (as tests/kubelet.rs does), the busybox test image imported
//! beforehand, driven by kube-rs.
//!
//! Run as root: `cargo bench --bench pods` (release profile, as the other benches), or
//! `cargo bench --profile dev --bench pods` for a quick look without a release build; the
//! figures say which profile they come from. Without root, iproute2, nftables, nsenter or
//! busybox-static it prints why and exits.
//!
//! Workloads: pod startup latency (from the create request to the first watch event showing
//! the pod Running) p50/p99/max for batches of 1, 30 and 100 pods created at once on the one
//! node (`BENCH_PODS=1,5` to change the batches); the server's RSS (VmRSS) and CPU time over
//! an idle period (`BENCH_IDLE_SECONDS`, default 60) with 0 pods and with 30 running pods
//! (`BENCH_IDLE_PODS`), with the container shims' RSS summed separately.
//!
//! Nothing here asserts on timings: the figures are printed for BENCHMARKS.md.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};

use cluster::agent::runtime::container::cgroups::{self, QosClass};
use cluster::agent::runtime::container::state::ContainerDir;

#[path = "../tests/support/mod.rs"]
mod support;

use support::server::{AgentOptions, TestServer};

const IMAGE: &str = "docker.io/library/busybox:kubelet-test";
const NAMESPACE: &str = "default";
/// Bound for anything that converges (a batch of pods Running, deleted).
const LONG: Duration = Duration::from_secs(600);

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(s) => s
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .filter(|n| *n > 0)
            .collect(),
        Err(_) => default.to_vec(),
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `p` quantile (0..=1) of sorted `latencies`, nearest-rank.
fn quantile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn sh(command: &str) -> std::process::Output {
    Command::new("sh")
        .args(["-c", command])
        .output()
        .expect("run sh")
}

fn sh_ok(command: &str) {
    let out = sh(command);
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Why this machine cannot run the benchmark, if it cannot.
fn missing_requirements() -> Option<String> {
    let mut missing = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push("root".to_string());
    }
    for tool in ["ip", "nft", "nsenter"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            missing.push(format!("`{tool}`"));
        }
    }
    if !Path::new("/bin/busybox").exists() && !Path::new("/usr/bin/busybox").exists() {
        missing.push("busybox-static".into());
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// The node: its network namespace, the server with its agent, and the cleanup.
struct BenchNode {
    server: Option<TestServer>,
    netns: String,
    temp: tempfile::TempDir,
}

impl BenchNode {
    fn start() -> BenchNode {
        let pid = std::process::id() % 1000;
        let netns = format!("clbench-{pid}");
        let host_veth = format!("clbh{pid}");
        let node_veth = format!("clbn{pid}");
        let subnet = format!("10.235.{}", pid % 250 + 2);
        let temp = tempfile::Builder::new()
            .prefix("cluster-bench-pods-")
            .tempdir()
            .expect("tempdir");
        let mut node = BenchNode {
            server: None,
            netns: netns.clone(),
            temp,
        };
        sh_ok(&format!("ip netns add {netns}"));
        sh_ok(&format!(
            "ip link add {host_veth} type veth peer name {node_veth} && \
             ip link set {node_veth} netns {netns} && \
             ip addr add {subnet}.1/30 dev {host_veth} && ip link set {host_veth} up && \
             ip -n {netns} link set lo up && \
             ip -n {netns} addr add {subnet}.2/30 dev {node_veth} && \
             ip -n {netns} link set {node_veth} up && \
             ip -n {netns} route add default via {subnet}.1"
        ));
        let kubelet_port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
            l.local_addr().expect("addr").port()
        };
        let args = vec![
            "--node-name".to_string(),
            "bench".into(),
            "--kubelet-port".into(),
            kubelet_port.to_string(),
            "--pod-logs-dir".into(),
            node.temp.path().join("logs").display().to_string(),
            "--agent-run-dir".into(),
            node.run_dir().display().to_string(),
        ];
        node.server = Some(TestServer::start_with_agent(AgentOptions {
            address: Some(format!("{subnet}.2")),
            wrapper: vec!["nsenter".into(), format!("--net=/run/netns/{netns}")],
            args,
        }));
        node.import_image();
        node
    }

    fn server(&self) -> &TestServer {
        self.server.as_ref().expect("server")
    }

    fn run_dir(&self) -> PathBuf {
        self.temp.path().join("run")
    }

    fn data_dir(&self) -> PathBuf {
        self.server().dir.path().join("data")
    }

    fn import_image(&self) {
        let images = self.temp.path().join("images");
        support::registry::build_test_images(&images, &[("IMAGE_NAME", IMAGE)]);
        let config = self.temp.path().join("images-config.yaml");
        fs::write(&config, "{}\n").expect("config");
        let out = Command::new(env!("CARGO_BIN_EXE_cluster"))
            .args(["images", "import"])
            .arg(images.join("busybox-docker.tar"))
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--config")
            .arg(&config)
            .output()
            .expect("cluster images import");
        assert!(
            out.status.success(),
            "import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The pids of the container shims running now.
    fn shim_pids(&self) -> Vec<u32> {
        let root = self.run_dir().join("containers");
        let mut pids = Vec::new();
        for entry in fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let dir = ContainerDir::new(&root, &name);
            if let Ok(status) = dir.read_status() {
                if let Some(pid) = status.shim_pid.and_then(|p| u32::try_from(p).ok()) {
                    if Path::new(&format!("/proc/{pid}")).exists() {
                        pids.push(pid);
                    }
                }
            }
        }
        pids
    }
}

impl Drop for BenchNode {
    fn drop(&mut self) {
        let data = self.server.as_ref().map(|s| s.dir.path().join("data"));
        drop(self.server.take());
        let root = self.run_dir().join("containers");
        let mut uids = Vec::new();
        for entry in fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let dir = ContainerDir::new(&root, &name);
            if let Ok(status) = dir.read_status() {
                for pid in [status.pid, status.shim_pid].into_iter().flatten() {
                    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                    }
                }
            }
            let _ = rustix::mount::unmount(dir.rootfs(), rustix::mount::UnmountFlags::DETACH);
            if let Ok(record) = dir.read_record() {
                support::rootfs::remove_cgroup_everywhere(&record.cgroup_path);
                uids.push(record.pod_uid);
            }
        }
        if let Some(data) = &data {
            for entry in fs::read_dir(data.join("agent/pods"))
                .into_iter()
                .flatten()
                .flatten()
            {
                uids.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        for uid in &uids {
            for qos in [
                QosClass::Guaranteed,
                QosClass::Burstable,
                QosClass::BestEffort,
            ] {
                let _ = cgroups::remove_pod(qos, uid);
            }
            let _ = sh(&format!("ip netns del cluster-{uid} 2>/dev/null"));
        }
        for parent in ["besteffort", "burstable"] {
            support::rootfs::remove_cgroup_everywhere(&format!("{}/{parent}", cgroups::ROOT));
        }
        support::rootfs::remove_cgroup_everywhere(cgroups::ROOT);
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let temp = self.temp.path().display().to_string();
        for line in mountinfo.lines() {
            if let Some(target) = line.split_whitespace().nth(4) {
                if target.starts_with(&temp) {
                    let _ = rustix::mount::unmount(target, rustix::mount::UnmountFlags::DETACH);
                }
            }
        }
        let _ = sh(&format!("ip netns del {}", self.netns));
    }
}

/// VmRSS of `pid` in KiB (0 once it is gone).
fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of `pid` in clock ticks (fields 14 and 15 of /proc/<pid>/stat).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let field = |n: usize| -> u64 { fields.get(n - 3).and_then(|v| v.parse().ok()).unwrap_or(0) };
    field(14) + field(15)
}

fn clock_ticks_per_second() -> f64 {
    let out = sh("getconf CLK_TCK");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

fn bench_pod(name: &str, batch: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": batch}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": IMAGE,
                "command": ["/bin/sh", "-c", "exec sleep 3600"],
            }],
        },
    }))
    .expect("pod")
}

/// Creates `n` pods at once and returns each one's latency from its create request to the
/// first watch event showing it Running.
async fn start_batch(client: &kube::Client, batch: &str, n: usize) -> Vec<Duration> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let selector = format!("bench={batch}");
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("list");
    let version = list.metadata.resource_version.unwrap_or_default();
    let mut stream = pods
        .watch(&WatchParams::default().labels(&selector), &version)
        .await
        .expect("watch")
        .boxed();
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..n {
        let pods = pods.clone();
        let created = created.clone();
        let name = format!("{batch}-{i}");
        let pod = bench_pod(&name, batch);
        tasks.push(tokio::spawn(async move {
            created
                .lock()
                .expect("lock")
                .insert(name.clone(), Instant::now());
            pods.create(&PostParams::default(), &pod)
                .await
                .expect("create pod");
        }));
    }
    let mut running: HashMap<String, Instant> = HashMap::new();
    let deadline = tokio::time::Instant::now() + LONG;
    while running.len() < n {
        let event = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("{batch}: {} of {n} Running in time", running.len()))
            .unwrap_or_else(|| panic!("{batch}: the watch ended"))
            .expect("watch event");
        let pod = match event {
            WatchEvent::Added(pod) | WatchEvent::Modified(pod) => pod,
            WatchEvent::Error(e) => panic!("{batch}: watch error {e:?}"),
            _ => continue,
        };
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if phase == Some("Running") {
            let name = pod.metadata.name.unwrap_or_default();
            running.entry(name).or_insert_with(Instant::now);
        }
    }
    for task in tasks {
        task.await.expect("create task");
    }
    let created = created.lock().expect("lock");
    let mut latencies: Vec<Duration> = running
        .iter()
        .map(|(name, at)| at.duration_since(created[name]))
        .collect();
    latencies.sort();
    latencies
}

/// Deletes the batch and waits until its pods are gone.
async fn delete_batch(client: &kube::Client, batch: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let selector = format!("bench={batch}");
    pods.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels(&selector),
    )
    .await
    .expect("delete pods");
    let deadline = Instant::now() + LONG;
    loop {
        let left = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .expect("list")
            .items
            .len();
        if left == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{batch}: {left} pods not gone");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The server's and the shims' footprint over an idle period.
async fn idle(node: &BenchNode, pid: u32, seconds: u64, label: &str) {
    let ticks = clock_ticks_per_second();
    let cpu_before = cpu_ticks(pid);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_ticks(pid).saturating_sub(cpu_before) as f64 / ticks;
    let shims = node.shim_pids();
    let shims_rss: u64 = shims.iter().map(|p| rss_kib(*p)).sum();
    println!(
        "  idle, {label}: server RSS {:.1} MiB, CPU {:.2} s over {elapsed:.0} s ({:.2} %), \
         {} shims RSS {:.1} MiB in total ({:.2} MiB each)",
        rss_kib(pid) as f64 / 1024.0,
        cpu,
        cpu / elapsed * 100.0,
        shims.len(),
        shims_rss as f64 / 1024.0,
        if shims.is_empty() {
            0.0
        } else {
            shims_rss as f64 / 1024.0 / shims.len() as f64
        },
    );
}

#[tokio::main]
async fn main() {
    if let Some(missing) = missing_requirements() {
        println!("pod startup benchmark skipped: it needs {missing}");
        return;
    }
    let batches = env_list("BENCH_PODS", &[1, 30, 100]);
    let idle_pods = env_number("BENCH_IDLE_PODS", 30) as usize;
    let idle_seconds = env_number("BENCH_IDLE_SECONDS", 60);
    println!(
        "Pod startup benchmark: {} (profile: {})",
        env!("CARGO_BIN_EXE_cluster"),
        if cfg!(debug_assertions) {
            "dev"
        } else {
            "release"
        }
    );
    let node = BenchNode::start();
    let pid = node.server().pid().expect("server pid");
    let client = node.server().client().await;

    // The node Ready first: startup latency starts counting at a warm node.
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + LONG;
    loop {
        let ready = nodes
            .get_opt("bench")
            .await
            .ok()
            .flatten()
            .is_some_and(|n| {
                n.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "node never Ready");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    idle(&node, pid, idle_seconds, "0 pods").await;

    println!("  pod startup latency, create → Running seen by a watch:");
    for n in batches {
        let batch = format!("b{n}");
        let started = Instant::now();
        let latencies = start_batch(&client, &batch, n).await;
        let total = started.elapsed();
        println!(
            "    {n:>4} pods: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({:.1} s for the batch)",
            ms(quantile(&latencies, 0.50)),
            ms(quantile(&latencies, 0.99)),
            ms(latencies[latencies.len() - 1]),
            total.as_secs_f64(),
        );
        delete_batch(&client, &batch).await;
    }

    if idle_pods > 0 {
        let batch = "idle";
        start_batch(&client, batch, idle_pods).await;
        // Let the start-up work settle before measuring.
        tokio::time::sleep(Duration::from_secs(5)).await;
        idle(
            &node,
            pid,
            idle_seconds,
            &format!("{idle_pods} running pods"),
        )
        .await;
        delete_batch(&client, batch).await;
    }
    drop(node);
}
