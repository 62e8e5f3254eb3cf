//! Pod lifecycle through kubectl on a real node: a `cluster server` with its embedded agent in
//! a network namespace the test makes (the fixture is a minimal copy of tests/kubelet.rs's).
//! Covers what users see: OOMKilled, graceful deletion honouring the grace period, pod-to-pod
//! traffic and the masquerade rule, `kubectl logs -f` / `--previous`, and `kubectl cp`.
//!
//! Needs root, iproute2, nftables, nsenter, kubectl and busybox-static: CI (`CI=true`) runs
//! them; elsewhere they skip and say why. The guard cleans up as tests/kubelet.rs's does.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cluster::agent::runtime::container::cgroups::{self, QosClass};
use cluster::agent::runtime::container::state::ContainerDir;
use support::server::{AgentOptions, TestServer};
use support::{registry, rootfs};

/// Generous bound for anything that converges.
const LONG: Duration = Duration::from_secs(120);
/// The test image's name (not `latest`: the default pull policy is IfNotPresent).
const IMAGE: &str = "docker.io/library/busybox:kubelet-test";

fn kubectl_binary() -> PathBuf {
    PathBuf::from("/usr/bin/kubectl")
}

/// True when the test can run; under `CI=true` a missing requirement fails it.
fn require(test: &str) -> bool {
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
    if !kubectl_binary().exists() {
        missing.push("kubectl".into());
    }
    if !Path::new("/bin/busybox").exists() && !Path::new("/usr/bin/busybox").exists() {
        missing.push("busybox-static".into());
    }
    if missing.is_empty() {
        return true;
    }
    let reason = format!("kubelet tests need {}", missing.join(", "));
    if registry::in_ci() {
        panic!("{test}: {reason}, and CI=true must run them");
    }
    eprintln!("skipping {test}: {reason}");
    false
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

/// A node: the network namespace, the server with its agent, and everything to clean up.
struct Node {
    server: Option<TestServer>,
    netns: String,
    temp: tempfile::TempDir,
}

impl Node {
    fn start(test: &str) -> Node {
        let n: u16 = rand_byte();
        let netns = format!("clkt-{n}-{}", std::process::id() % 10000);
        let host_veth = format!("clkh{n}x{}", std::process::id() % 1000);
        let node_veth = format!("clkn{n}x{}", std::process::id() % 1000);
        let subnet = format!("10.234.{n}");
        let temp = tempfile::Builder::new()
            .prefix("cluster-kubelet-")
            .tempdir()
            .expect("tempdir");
        let name = format!("kt-{n}");
        let mut node = Node {
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
            name,
            "--node-label".into(),
            format!("test={test}"),
            "--kubelet-port".into(),
            kubelet_port.to_string(),
            "--pod-logs-dir".into(),
            node.logs().display().to_string(),
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

    fn logs(&self) -> PathBuf {
        self.temp.path().join("logs")
    }

    fn run_dir(&self) -> PathBuf {
        self.temp.path().join("run")
    }

    fn data_dir(&self) -> PathBuf {
        self.server().dir.path().join("data")
    }

    /// Builds the test image and imports it into the node's image store (the agent's store,
    /// shared with `cluster images`).
    fn import_image(&self) {
        let images = self.temp.path().join("images");
        registry::build_test_images(&images, &[("IMAGE_NAME", IMAGE)]);
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

    fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.server().kubectl(&kubectl_binary(), args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args);
        assert!(ok, "kubectl {args:?}: {err}\n{out}");
        out
    }

    fn apply(&self, yaml: &str) {
        let out =
            self.server()
                .kubectl_with(&kubectl_binary(), &["apply", "-f", "-"], Some(yaml), &[]);
        assert!(
            out.status.success(),
            "apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Polls `kubectl get … -o jsonpath` until `check` accepts the output.
    fn wait_for(&self, what: &str, args: &[&str], check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LONG;
        let mut last = String::new();
        while Instant::now() < deadline {
            let (ok, out, err) = self.kubectl(args);
            last = if ok { out } else { err };
            if ok && check(&last) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        self.fail(&format!("{what}: still {last:?} after {LONG:?}"));
    }

    /// Fails the test with what the node shows: pods, shim logs, the server's log.
    fn fail(&self, what: &str) -> ! {
        let pods = self.kubectl(&["get", "pods", "-A", "-o", "yaml"]).1;
        let shims = sh(&format!(
            "tail -n 5 {}/containers/*/shim.log",
            self.run_dir().display()
        ));
        panic!(
            "{what}\npods:\n{pods}\nshim logs:\n{}\nserver log (tail):\n{}",
            String::from_utf8_lossy(&shims.stdout),
            tail(&self.server().log(), 80)
        );
    }

    fn pod_field(&self, pod: &str, path: &str) -> String {
        self.kubectl(&["get", "pod", pod, "-o", &format!("jsonpath={path}")])
            .1
    }

    /// The runtime's containers of pod `uid` (their directories under the run dir).
    fn containers_of(&self, uid: &str) -> Vec<String> {
        let mut ids = Vec::new();
        let root = self.run_dir().join("containers");
        for entry in fs::read_dir(&root).into_iter().flatten().flatten() {
            let dir = ContainerDir::new(&root, &entry.file_name().to_string_lossy());
            if dir.read_record().is_ok_and(|r| r.pod_uid == uid) {
                ids.push(dir.id());
            }
        }
        ids
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn rand_byte() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u16::try_from((nanos / 1000 + std::process::id()) % 250).unwrap_or(0) + 2
}

impl Drop for Node {
    fn drop(&mut self) {
        let data = self.server.as_ref().map(|s| s.dir.path().join("data"));
        // The server first (containers outlive it by design), then what it left running.
        drop(self.server.take());
        let root = self.run_dir().join("containers");
        let mut shims = Vec::new();
        for entry in fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let dir = ContainerDir::new(&root, &name);
            if let Ok(status) = dir.read_status() {
                if let Some(pid) = status.pid.and_then(rustix::process::Pid::from_raw) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
                if let Some(pid) = status.shim_pid.and_then(rustix::process::Pid::from_raw) {
                    shims.push((dir.clone(), pid));
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for (dir, pid) in &shims {
            while dir.socket().exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if dir.socket().exists() {
                let _ = rustix::process::kill_process(*pid, rustix::process::Signal::KILL);
            }
            let _ = rustix::mount::unmount(dir.rootfs(), rustix::mount::UnmountFlags::DETACH);
            if let Ok(record) = dir.read_record() {
                rootfs::remove_cgroup_everywhere(&record.cgroup_path);
            }
        }
        let mut uids = Vec::new();
        if let Some(data) = &data {
            for entry in fs::read_dir(data.join("agent/pods"))
                .into_iter()
                .flatten()
                .flatten()
            {
                uids.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        for entry in fs::read_dir(&root).into_iter().flatten().flatten() {
            let dir = ContainerDir::new(&root, &entry.file_name().to_string_lossy());
            if let Ok(record) = dir.read_record() {
                uids.push(record.pod_uid);
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
            rootfs::remove_cgroup_everywhere(&format!("{}/{parent}", cgroups::ROOT));
        }
        rootfs::remove_cgroup_everywhere(cgroups::ROOT);
        // Anything still mounted under the temp dirs (overlays of killed shims).
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let temp = self.temp.path().display().to_string();
        for line in mountinfo.lines() {
            if let Some(target) = line.split_whitespace().nth(4) {
                if target.starts_with(&temp) {
                    let _ = rustix::mount::unmount(target, rustix::mount::UnmountFlags::DETACH);
                }
            }
        }
        // The namespace takes the bridge, the veths and the nft table with it.
        let _ = sh(&format!("ip netns del {}", self.netns));
    }
}

/// A pod manifest with one busybox container running `command` under `sh -c`, plus `extra`
/// lines indented under the container (resources, volumeMounts…) and `volumes` under the spec.
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
