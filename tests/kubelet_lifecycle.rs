//! Pod lifecycle through kubectl on a real node: a `cluster server` with its embedded agent in
//! a network namespace the test makes.
//! Covers what users see: OOMKilled, graceful deletion honouring the grace period, pod-to-pod
//! traffic and the masquerade rule, `kubectl logs -f` / `--previous`, and `kubectl cp`.
//!
//! Needs root, iproute2, nftables, nsenter, kubectl and busybox-static: CI (`CI=true`) runs
//! them; elsewhere they skip and say why. The guard cleans up as tests/kubelet.rs's does.

mod support;

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use support::node::{kubectl_binary, require, sh, Node, IMAGE, LONG};

fn pod(name: &str, restart: &str, grace: u32, command: &str, extra: &str, volumes: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: {restart}\n  terminationGracePeriodSeconds: {grace}\n{volumes}  containers:\n  - name: main\n    image: {IMAGE}\n    command: [\"/bin/sh\", \"-c\", {command:?}]\n{extra}"
    )
}

fn wait_phase(node: &Node, pod: &str, phase: &str) {
    node.wait_for(
        &format!("{pod} {phase}"),
        &["get", "pod", pod, "-o", "jsonpath={.status.phase}"],
        |s| s == phase,
    );
}

/// A container allocating past its memory limit is killed by the kernel and reported as
/// OOMKilled (exit code 137), as `kubectl get pod` users expect.
#[test]
fn a_memory_hog_is_reported_oom_killed() {
    if !require("a_memory_hog_is_reported_oom_killed") {
        return;
    }
    let node = Node::start("oom");
    // 64 MiB of 'a' held in a shell variable, against a 16 MiB limit (swap is off in the
    // container cgroup or not present; either way the hog cannot fit).
    node.apply(&pod(
        "hog",
        "Never",
        5,
        "x=$(busybox head -c 67108864 /dev/zero | busybox tr '\\0' a); echo survived ${#x}",
        "    resources:\n      limits: {memory: 16Mi}\n",
        "",
    ));
    wait_phase(&node, "hog", "Failed");
    let state = node.pod_field(
        "hog",
        "{.status.containerStatuses[0].state.terminated.reason}/{.status.containerStatuses[0].state.terminated.exitCode}",
    );
    if state != "OOMKilled/137" {
        node.fail(&format!("hog terminated as {state:?}, not OOMKilled/137"));
    }
    let logs = node.kubectl_ok(&["logs", "hog"]);
    assert!(!logs.contains("survived"), "the hog survived: {logs}");
}

/// Deleting a pod sends TERM and waits for the container up to terminationGracePeriodSeconds:
/// one that handles TERM finishes its handler before the pod disappears; one that ignores TERM
/// keeps running after the delete until the grace period ends, then is killed.
#[test]
fn graceful_delete_honours_the_grace_period() {
    if !require("graceful_delete_honours_the_grace_period") {
        return;
    }
    let node = Node::start("graceful");
    let shared = node.temp.path().join("shared");
    fs::create_dir_all(&shared).expect("shared dir");
    let volume = format!(
        "  volumes:\n  - name: shared\n    hostPath: {{path: {}}}\n",
        shared.display()
    );
    let mount = "    volumeMounts:\n    - {name: shared, mountPath: /shared}\n";

    // The TERM handler takes a while (2 s of sleeps) before it writes its marker and exits.
    node.apply(&pod(
        "trapper",
        "Always",
        60,
        "trap 'sleep 2; echo handled > /shared/marker; exit 0' TERM; echo ready > /shared/trapper-ready; while true; do sleep 1; done",
        mount,
        &volume,
    ));
    // This one ignores TERM and ticks into a file until it is killed.
    node.apply(&pod(
        "stubborn",
        "Always",
        4,
        "trap '' TERM; while true; do echo tick >> /shared/ticks; sleep 0.2; done",
        mount,
        &volume,
    ));
    wait_phase(&node, "trapper", "Running");
    wait_phase(&node, "stubborn", "Running");
    let deadline = Instant::now() + LONG;
    while !shared.join("trapper-ready").exists() {
        if Instant::now() > deadline {
            node.fail("trapper never installed its TERM handler");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // The trapper: while the pod still exists the marker may or may not be there, but once the
    // pod is gone the handler must have run to its end.
    let trapper_uid = node.pod_field("trapper", "{.metadata.uid}");
    node.kubectl_ok(&["delete", "pod", "trapper", "--wait=false"]);
    loop {
        let (_, out, err) = node.kubectl(&["get", "pod", "trapper", "-o", "name"]);
        if err.contains("NotFound") || err.contains("not found") {
            break;
        }
        // Still there: the deletion is graceful, not immediate.
        assert!(out.contains("trapper"), "{out}{err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let marker = fs::read_to_string(shared.join("marker")).unwrap_or_default();
    assert_eq!(
        marker.trim(),
        "handled",
        "the pod was gone before its TERM handler finished"
    );
    assert!(node.containers_of(&trapper_uid).is_empty());

    // The stubborn one: ticks continue after the delete (TERM ignored), then stop for good.
    let stubborn_uid = node.pod_field("stubborn", "{.metadata.uid}");
    let ticks = || {
        fs::read_to_string(shared.join("ticks"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    node.kubectl_ok(&["delete", "pod", "stubborn", "--wait=false"]);
    let at_delete = ticks();
    node.kubectl_ok(&["wait", "--for=delete", "pod/stubborn", "--timeout=120s"]);
    let at_gone = ticks();
    assert!(
        at_gone > at_delete + 1,
        "the TERM-ignoring container stopped at the delete ({at_delete} ticks, {at_gone} when gone): \
         it was not given its grace period"
    );
    assert!(node.containers_of(&stubborn_uid).is_empty());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        ticks(),
        at_gone,
        "the container still runs after its pod is gone"
    );
}

/// Pod-to-pod traffic on the node (busybox wget against busybox httpd in another pod) and the
/// masquerade rule for traffic leaving the cluster; then `kubectl logs -f` follows new lines,
/// `kubectl logs --previous` shows the previous container's output, and `kubectl cp` works
/// both ways.
#[test]
fn pods_talk_and_kubectl_logs_follow_previous_and_cp() {
    if !require("pods_talk_and_kubectl_logs_follow_previous_and_cp") {
        return;
    }
    let node = Node::start("talk");

    // Pod to pod.
    node.apply(&pod(
        "web",
        "Always",
        1,
        "busybox mkdir -p /www && echo hello-from-web > /www/index.html && exec busybox httpd -f -p 8080 -h /www",
        "",
        "",
    ));
    wait_phase(&node, "web", "Running");
    let web_ip = node.pod_field("web", "{.status.podIP}");
    assert!(web_ip.starts_with("10.42."), "web IP {web_ip:?}");
    node.apply(&pod(
        "client",
        "OnFailure",
        1,
        // Not `busybox wget`: Debian's static busybox crashes in glibc's resolver setup
        // as soon as /etc/hosts or /etc/resolv.conf exist; nc does not resolve.
        &format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 5 {web_ip} 8080"),
        "",
        "",
    ));
    wait_phase(&node, "client", "Succeeded");
    let fetched = node.kubectl_ok(&["logs", "client"]);
    assert!(
        fetched.starts_with("HTTP/1.")
            && fetched.contains(" 200 ")
            && fetched.ends_with("hello-from-web\n"),
        "client got {fetched:?}"
    );
    let nat = sh(&format!(
        "ip netns exec {} nft list table ip cluster-nat",
        node.netns
    ));
    let ruleset = String::from_utf8_lossy(&nat.stdout);
    assert!(
        nat.status.success() && ruleset.contains("masquerade") && ruleset.contains("10.42."),
        "cluster-nat: {ruleset}{}",
        String::from_utf8_lossy(&nat.stderr)
    );

    // logs -f: lines written after kubectl started arrive on its stdout.
    node.apply(&pod(
        "counter",
        "Always",
        1,
        "i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.5; done",
        "",
        "",
    ));
    wait_phase(&node, "counter", "Running");
    let mut follow = Command::new(kubectl_binary())
        .args(["logs", "-f", "counter"])
        .env("KUBECONFIG", &node.server().kubeconfig)
        .env("HOME", node.server().dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kubectl logs -f");
    let stdout = follow.stdout.take().expect("stdout");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = lines_rx.recv_timeout(LONG).expect("a first followed line");
    let first_n: u64 = first
        .strip_prefix("line-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line {first:?}"));
    // Read until a line the container wrote well after kubectl had printed the first one.
    let mut seen = first_n;
    while seen < first_n + 4 {
        let line = lines_rx
            .recv_timeout(LONG)
            .unwrap_or_else(|_| node.fail(&format!("logs -f stopped after line-{seen}")));
        let n: u64 = line
            .strip_prefix("line-")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        assert_eq!(n, seen + 1, "lines out of order or missing");
        seen = n;
    }
    let _ = follow.kill();
    let _ = follow.wait();

    // logs --previous: the first container exits, the second one stays; emptyDir survives
    // container restarts and counts the runs.
    node.apply(&pod(
        "restarter",
        "Always",
        1,
        "n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n; echo run-$n; if [ $n = 1 ]; then exit 1; fi; exec sleep 3600",
        "    volumeMounts:\n    - {name: data, mountPath: /data}\n",
        "  volumes:\n  - name: data\n    emptyDir: {}\n",
    ));
    node.wait_for(
        "restarter restarted and running",
        &[
            "get",
            "pod",
            "restarter",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}/{.status.containerStatuses[0].state.running.startedAt}",
        ],
        |s| s.starts_with("1/") && s.len() > 2,
    );
    let previous = node.kubectl_ok(&["logs", "restarter", "--previous"]);
    assert_eq!(previous.trim(), "run-1", "logs --previous");
    node.wait_for("restarter current log", &["logs", "restarter"], |s| {
        s.trim() == "run-2"
    });

    // kubectl cp both ways (kubectl runs tar in the container: give busybox's tar a name).
    node.kubectl_ok(&[
        "exec",
        "web",
        "--",
        "busybox",
        "ln",
        "-s",
        "/bin/busybox",
        "/bin/tar",
    ]);
    let local = node.temp.path().join("to-pod.txt");
    fs::write(&local, "copied in\n").expect("write local");
    node.kubectl_ok(&["cp", &local.display().to_string(), "web:/tmp/in.txt"]);
    let inside = node.kubectl_ok(&["exec", "web", "--", "cat", "/tmp/in.txt"]);
    assert_eq!(inside, "copied in\n");
    let back = node.temp.path().join("from-pod.txt");
    node.kubectl_ok(&["cp", "web:/www/index.html", &back.display().to_string()]);
    assert_eq!(
        fs::read_to_string(&back).unwrap_or_default(),
        "hello-from-web\n"
    );
}
