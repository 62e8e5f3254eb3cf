//! Container life cycle benchmark: our runtime (shim + libcontainer) beside runc and crun on the
//! same busybox bundle, and the resident memory of a shim.
//!
//! Run as root: `cargo bench --bench containers` (prints Markdown). `BENCH_SCALE=0.2` shrinks
//! the sequential count. runc and crun are Debian's packages; a missing one is reported and
//! skipped.
//!
//! Workloads, each running `/bin/true`:
//! - one at a time: create + start + wait + delete, mean per container;
//! - 50 at once: the same 50 times concurrently, wall time for all.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cluster::agent::runtime::container::spec;

#[allow(dead_code)]
#[path = "../tests/support/rootfs.rs"]
mod rootfs;

const PARALLEL: usize = 50;

fn sequential_count() -> usize {
    let factor: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((50.0 * factor) as usize).max(1)
}

fn main() {
    if !rustix::process::geteuid().is_root() {
        println!("containers benchmark skipped: it needs root");
        return;
    }
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let t = rootfs::TestRuntime::new();
    let n = sequential_count();
    println!("## Containers (issue 5)\n");
    println!("`/bin/true` in a busybox root filesystem; create + start + wait + delete.\n");
    println!("| runtime | one at a time (mean) | {PARALLEL} in parallel (wall) |");
    println!("|---|---|---|");

    let ours_seq = tokio.block_on(async {
        let start = Instant::now();
        for i in 0..n {
            run_ours(&t, &format!("seq{i}")).await;
        }
        start.elapsed() / n as u32
    });
    let ours_par = tokio.block_on(async {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..PARALLEL {
            let request = t.request(&format!("par{i}"), &["/bin/true"]);
            let runtime = t.runtime.clone();
            tasks.push(tokio::spawn(async move {
                let id = runtime.create(&request).await.expect("create");
                runtime.start(&id).await.expect("start");
                let status = runtime.wait(&id).await.expect("wait");
                assert_eq!(status.exit_code, Some(0));
                runtime.remove(&id).await.expect("remove");
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        start.elapsed()
    });
    println!(
        "| cluster (shim + libcontainer) | {} | {} |",
        ms(ours_seq),
        ms(ours_par)
    );

    // The same spec for runc and crun, without our cgroup parent.
    let bundle = t.temp.path().join("bundle");
    std::fs::create_dir_all(&bundle).expect("bundle");
    let request = t.request("oci", &["/bin/true"]);
    let layout = spec::RootfsLayout {
        root: t.rootfs.clone(),
        lookup: vec![t.rootfs.clone()],
    };
    let mut oci = spec::build(
        &request.image_config,
        &request.spec,
        &layout,
        &format!("{}/bench", t.pod_cgroup),
    )
    .expect("spec");
    if let Some(linux) = oci["linux"].as_object_mut() {
        linux.remove("cgroupsPath");
    }
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&oci).expect("json"),
    )
    .expect("config.json");
    for binary in ["runc", "crun"] {
        if Command::new(binary).arg("--version").output().is_err() {
            println!("| {binary} | not installed | not installed |");
            continue;
        }
        let state = t.temp.path().join(format!("{binary}-state"));
        if let Err(err) = run_oci(binary, &state, &bundle, &format!("{binary}-probe")) {
            println!("| {binary} | fails here: {err} | – |");
            continue;
        }
        let start = Instant::now();
        for i in 0..n {
            run_oci(binary, &state, &bundle, &format!("{binary}-seq{i}")).expect("run");
        }
        let seq = start.elapsed() / n as u32;
        let start = Instant::now();
        let children: Vec<_> = (0..PARALLEL)
            .map(|i| {
                let state = state.clone();
                let bundle = bundle.clone();
                std::thread::spawn(move || {
                    run_oci(binary, &state, &bundle, &format!("{binary}-par{i}")).expect("run")
                })
            })
            .collect();
        for child in children {
            child.join().expect("thread");
        }
        let par = start.elapsed();
        println!("| {binary} | {} | {} |", ms(seq), ms(par));
    }

    // Resident memory of one shim with a running container.
    let rss = tokio.block_on(async {
        let id = t
            .runtime
            .create(&t.request("rss", &["/bin/sleep", "1000"]))
            .await
            .expect("create");
        t.runtime.start(&id).await.expect("start");
        let shim = t.config.root.join(&id).join("status.json");
        let status: serde_json::Value =
            serde_json::from_slice(&std::fs::read(shim).expect("status")).expect("json");
        let pid = status["shimPid"].as_i64().unwrap_or(0);
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .map(|l| l.trim_start_matches("VmRSS:").trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        t.runtime.stop(&id, Duration::ZERO).await.expect("stop");
        t.runtime.remove(&id).await.expect("remove");
        rss
    });
    println!("\nShim resident memory with a running container: {rss}.");
}

async fn run_ours(t: &rootfs::TestRuntime, name: &str) {
    let id = t
        .runtime
        .create(&t.request(name, &["/bin/true"]))
        .await
        .expect("create");
    t.runtime.start(&id).await.expect("start");
    let status = t.runtime.wait(&id).await.expect("wait");
    assert_eq!(status.exit_code, Some(0));
    t.runtime.remove(&id).await.expect("remove");
}

/// `<runtime> run` creates, starts, waits and deletes (no `--keep`).
fn run_oci(binary: &str, state: &Path, bundle: &Path, id: &str) -> Result<(), String> {
    let output = Command::new(binary)
        .arg("--root")
        .arg(state)
        .arg("run")
        .arg("--bundle")
        .arg(bundle)
        .arg(id)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|err| err.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(stderr.lines().last().unwrap_or("failed").trim().to_string())
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
