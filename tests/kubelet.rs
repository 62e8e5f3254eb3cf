//! The kubelet for real: a `cluster server` with its embedded agent, inside a network namespace
//! the test makes (a veth to the host side gives the node an InternalIP and a default route),
//! driven with kubectl. Containers are real (busybox images built by
//! scripts/build-test-images.sh and imported with `cluster images import`).
//!
//! Needs root, iproute2, nftables, nsenter, kubectl and busybox-static: CI (`CI=true`) runs
//! them; elsewhere they skip and say why. A guard removes the server, every container and
//! shim, their cgroups and mounts, the pods' network namespaces and the test's namespace (with
//! the bridge, veths and nft table in it) even when a test fails.

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
    name: String,
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
            name: name.clone(),
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

fn pod_yaml(name: &str, restart: &str, command: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: {restart}\n  terminationGracePeriodSeconds: 5\n  containers:\n  - name: main\n    image: {IMAGE}\n    command: [\"/bin/sh\", \"-c\", {command:?}]\n"
    )
}

#[test]
fn the_node_registers_ready_and_runs_pods_through_their_life() {
    if !require("the_node_registers_ready_and_runs_pods_through_their_life") {
        return;
    }
    let node = Node::start("lifecycle");
    let name = node.name.clone();

    // The node: Ready, with its labels, an InternalIP and a pod CIDR.
    node.wait_for(
        "node Ready",
        &[
            "get",
            "node",
            &name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ],
        |s| s == "True",
    );
    let labels = node.kubectl_ok(&["get", "node", &name, "-o", "jsonpath={.metadata.labels}"]);
    for expected in [
        format!("\"kubernetes.io/hostname\":\"{name}\""),
        "\"kubernetes.io/os\":\"linux\"".to_string(),
        "\"node-role.kubernetes.io/control-plane\":\"true\"".to_string(),
        "\"test\":\"lifecycle\"".to_string(),
    ] {
        assert!(labels.contains(&expected), "{expected} in {labels}");
    }
    let address = node.kubectl_ok(&[
        "get",
        "node",
        &name,
        "-o",
        "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
    ]);
    assert!(address.starts_with("10.234."), "{address}");

    // kubectl run: Running with a pod IP from the node's CIDR, and output in the log.
    node.kubectl_ok(&[
        "run",
        "sleeper",
        &format!("--image={IMAGE}"),
        // The test image's entrypoint is `sh -c`: replace it.
        "--command",
        "--",
        "/bin/sh",
        "-c",
        "echo started; exec sleep 3600",
    ]);
    node.wait_for(
        "sleeper Running",
        &["get", "pod", "sleeper", "-o", "jsonpath={.status.phase}"],
        |s| s == "Running",
    );
    let ip = node.pod_field("sleeper", "{.status.podIP}");
    assert!(ip.starts_with("10.42."), "pod IP {ip:?}");
    node.wait_for(
        "sleeper Ready",
        &[
            "get",
            "pod",
            "sleeper",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ],
        |s| s == "True",
    );
    let container_id = node.pod_field("sleeper", "{.status.containerStatuses[0].containerID}");
    assert!(container_id.starts_with("cluster://"), "{container_id}");
    let uid = node.pod_field("sleeper", "{.metadata.uid}");
    let log_dir = node.logs().join(format!("default_sleeper_{uid}"));
    let log_file = log_dir.join("sleeper/0.log");
    let deadline = Instant::now() + LONG;
    while !fs::read_to_string(&log_file)
        .unwrap_or_default()
        .contains("started")
    {
        if Instant::now() > deadline {
            node.fail(&format!("{} never said started", log_file.display()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // The kubelet API through the API server: logs and exec (kubectl speaks WebSocket).
    let logs = node.kubectl_ok(&["logs", "sleeper"]);
    assert_eq!(logs.trim(), "started", "kubectl logs");
    let out = node.server().kubectl_with(
        &kubectl_binary(),
        &[
            "exec",
            "-i",
            "sleeper",
            "--",
            "sh",
            "-c",
            "read line; echo got $line; exit 3",
        ],
        Some("hello\n"),
        &[],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "got hello",
        "kubectl exec -i: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(3), "exec exit code");

    // Env from a configMap and the configMap as a volume (the inputs module, wired in).
    node.kubectl_ok(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=greeting=hi-from-configmap",
    ]);
    node.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: inputs\nspec:\n  restartPolicy: Never\n  volumes:\n  - name: config\n    configMap:\n      name: settings\n  containers:\n  - name: main\n    image: {IMAGE}\n    command: [\"/bin/sh\", \"-c\", \"echo env=$GREETING file=$(cat /config/greeting)\"]\n    env:\n    - name: GREETING\n      valueFrom:\n        configMapKeyRef: {{name: settings, key: greeting}}\n    volumeMounts:\n    - {{name: config, mountPath: /config}}\n"
    ));
    node.wait_for(
        "inputs Succeeded",
        &["get", "pod", "inputs", "-o", "jsonpath={.status.phase}"],
        |s| s == "Succeeded",
    );
    let inputs_uid = node.pod_field("inputs", "{.metadata.uid}");
    let inputs_log = node
        .logs()
        .join(format!("default_inputs_{inputs_uid}/main/0.log"));
    let text = fs::read_to_string(&inputs_log).unwrap_or_default();
    if !text.contains("env=hi-from-configmap file=hi-from-configmap") {
        node.fail(&format!("inputs log: {text:?}"));
    }

    // A failing container with restartPolicy Never: Failed, Error, exit code 1.
    node.apply(&pod_yaml("fails", "Never", "exit 1"));
    node.wait_for(
        "fails Failed",
        &["get", "pod", "fails", "-o", "jsonpath={.status.phase}"],
        |s| s == "Failed",
    );
    assert_eq!(
        node.pod_field(
            "fails",
            "{.status.containerStatuses[0].state.terminated.reason}/{.status.containerStatuses[0].state.terminated.exitCode}"
        ),
        "Error/1"
    );

    // Always restarting a crashing container: CrashLoopBackOff, as kubectl shows it.
    node.apply(&pod_yaml("crasher", "Always", "exit 2"));
    node.wait_for(
        "crasher in CrashLoopBackOff",
        &["get", "pod", "crasher", "--no-headers"],
        |s| s.contains("CrashLoopBackOff"),
    );
    let last = node.pod_field(
        "crasher",
        "{.status.containerStatuses[0].lastState.terminated.exitCode}",
    );
    assert_eq!(last, "2");

    // A Job's pod completes and the Job with it.
    node.kubectl_ok(&[
        "create",
        "job",
        "once",
        &format!("--image={IMAGE}"),
        "--",
        "/bin/sh",
        "-c",
        "echo done",
    ]);
    node.wait_for(
        "job complete",
        &["get", "job", "once", "-o", "jsonpath={.status.succeeded}"],
        |s| s == "1",
    );

    // Graceful delete: the pod goes, with its containers, network namespace and cgroup.
    assert!(!node.containers_of(&uid).is_empty());
    node.kubectl_ok(&["delete", "pod", "sleeper", "--wait=true", "--timeout=120s"]);
    let (_, out, err) = node.kubectl(&["get", "pod", "sleeper"]);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{out}{err}"
    );
    assert!(node.containers_of(&uid).is_empty(), "containers left");
    assert!(
        !Path::new(&format!("/run/netns/cluster-{uid}")).exists(),
        "the pod's network namespace is left"
    );
    let cgroup = cgroups::dir(
        cgroups::detect().expect("cgroups"),
        "memory",
        &cgroups::pod_path(QosClass::BestEffort, &uid),
    );
    assert!(!cgroup.exists(), "{} is left", cgroup.display());
    assert!(!log_dir.exists(), "the pod's logs are left");
    assert!(!node.data_dir().join("agent/pods").join(&uid).exists());
}

#[test]
fn a_server_restart_leaves_running_pods_running() {
    if !require("a_server_restart_leaves_running_pods_running") {
        return;
    }
    let mut node = Node::start("restart");
    node.kubectl_ok(&[
        "run",
        "survivor",
        &format!("--image={IMAGE}"),
        "--command",
        "--",
        "/bin/sh",
        "-c",
        "exec sleep 3600",
    ]);
    node.wait_for(
        "survivor Running",
        &["get", "pod", "survivor", "-o", "jsonpath={.status.phase}"],
        |s| s == "Running",
    );
    let before = node.pod_field(
        "survivor",
        "{.status.containerStatuses[0].containerID} {.status.podIP} {.status.containerStatuses[0].restartCount}",
    );
    let uid = node.pod_field("survivor", "{.metadata.uid}");
    node.server.as_mut().expect("server").restart();
    // The server is back, its node Ready, the pod still Running with the same container.
    node.wait_for(
        "node Ready again",
        &[
            "get",
            "node",
            &node.name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ],
        |s| s == "True",
    );
    // The agent re-posts the status it adopted; give it a heartbeat, then compare.
    std::thread::sleep(Duration::from_secs(3));
    let after = node.pod_field(
        "survivor",
        "{.status.containerStatuses[0].containerID} {.status.podIP} {.status.containerStatuses[0].restartCount}",
    );
    assert_eq!(before, after);
    assert_eq!(node.pod_field("survivor", "{.status.phase}"), "Running");
    assert_eq!(node.containers_of(&uid).len(), 1, "no second container");
    // And it is still managed: deleting it works.
    node.kubectl_ok(&["delete", "pod", "survivor", "--wait=true", "--timeout=120s"]);
    assert!(node.containers_of(&uid).is_empty());
}

/// The events of pod `pod` as `reason: note` lines (events.k8s.io/v1, as the kubelet records
/// them).
fn pod_events(node: &Node, pod: &str) -> String {
    node.kubectl(&[
        "get",
        "events.v1.events.k8s.io",
        "--field-selector",
        &format!("regarding.name={pod}"),
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.note} [{.regarding.fieldPath}] by {.reportingController}{\"\\n\"}{end}",
    ])
    .1
}

#[test]
fn probes_drive_readiness_and_restarts_and_hooks_run() {
    if !require("probes_drive_readiness_and_restarts_and_hooks_run") {
        return;
    }
    let node = Node::start("probes");
    let name = node.name.clone();
    node.wait_for(
        "node Ready",
        &[
            "get",
            "node",
            &name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ],
        |s| s == "True",
    );
    let hook_dir = node.temp.path().join("hooks");
    fs::create_dir_all(&hook_dir).expect("hook dir");
    node.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: readiness
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {IMAGE}
    command: ["/bin/sh", "-c", "exec sleep 3600"]
    readinessProbe:
      exec:
        command: ["/bin/sh", "-c", "test -e /tmp/ready"]
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Pod
metadata:
  name: liveness
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {IMAGE}
    command: ["/bin/sh", "-c", "exec sleep 3600"]
    livenessProbe:
      exec:
        command: ["/bin/sh", "-c", "test -e /tmp/never"]
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Pod
metadata:
  name: hooks
spec:
  terminationGracePeriodSeconds: 30
  volumes:
  - name: out
    hostPath:
      path: {hooks}
  containers:
  - name: main
    image: {IMAGE}
    command: ["/bin/sh", "-c", "exec sleep 3600"]
    volumeMounts:
    - name: out
      mountPath: /out
    lifecycle:
      postStart:
        exec:
          command: ["/bin/sh", "-c", "echo started > /out/post-start"]
      preStop:
        exec:
          command: ["/bin/sh", "-c", "echo stopping > /out/pre-stop"]
"#,
        hooks = hook_dir.display()
    ));

    // Readiness: running but not ready while the probe fails (kubectl shows 0/1 Running) …
    node.wait_for(
        "readiness Running",
        &["get", "pod", "readiness", "-o", "jsonpath={.status.phase}"],
        |s| s == "Running",
    );
    let deadline = Instant::now() + LONG;
    while !pod_events(&node, "readiness").contains("Readiness probe failed") {
        if Instant::now() > deadline {
            node.fail("no Unhealthy event for the failing readiness probe");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let events = pod_events(&node, "readiness");
    assert!(
        events.contains("Unhealthy: Readiness probe failed")
            && events.contains("[spec.containers{main}] by kubelet"),
        "{events}"
    );
    let row = node.kubectl_ok(&["get", "pod", "readiness", "--no-headers"]);
    assert!(row.contains("0/1") && row.contains("Running"), "{row}");
    let conditions = node.pod_field(
        "readiness",
        "{.status.conditions[?(@.type==\"Ready\")].status} {.status.conditions[?(@.type==\"ContainersReady\")].status} {.status.containerStatuses[0].ready} {.status.containerStatuses[0].started}",
    );
    assert_eq!(conditions, "False False false true");
    // … and ready once it passes.
    node.kubectl_ok(&["exec", "readiness", "--", "touch", "/tmp/ready"]);
    node.wait_for(
        "readiness Ready",
        &[
            "get",
            "pod",
            "readiness",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.status.containerStatuses[0].ready}",
        ],
        |s| s == "True true",
    );
    let row = node.kubectl_ok(&["get", "pod", "readiness", "--no-headers"]);
    assert!(row.contains("1/1") && row.contains("Running"), "{row}");

    // Liveness: the failing probe kills the container (SIGKILL after the grace period: Error,
    // 137) and it restarts.
    node.wait_for(
        "liveness restarted",
        &[
            "get",
            "pod",
            "liveness",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ],
        |s| s.parse::<i32>().is_ok_and(|n| n >= 1),
    );
    let last = node.pod_field(
        "liveness",
        "{.status.containerStatuses[0].lastState.terminated.reason} {.status.containerStatuses[0].lastState.terminated.exitCode}",
    );
    assert_eq!(last, "Error 137");
    let events = pod_events(&node, "liveness");
    for expected in [
        "Unhealthy: Liveness probe failed",
        "Killing: Container main failed liveness probe, will be restarted",
        "Created: Created container: main",
        "Started: Started container main",
    ] {
        assert!(events.contains(expected), "{expected} in\n{events}");
    }
    let describe = node.kubectl_ok(&["describe", "pod", "liveness"]);
    assert!(describe.contains("Liveness probe failed"), "{describe}");

    // Hooks: postStart ran after the start, preStop runs on delete before the container stops.
    node.wait_for(
        "hooks Running",
        &["get", "pod", "hooks", "-o", "jsonpath={.status.phase}"],
        |s| s == "Running",
    );
    let post = fs::read_to_string(hook_dir.join("post-start")).unwrap_or_default();
    assert_eq!(post.trim(), "started");
    assert!(!hook_dir.join("pre-stop").exists());
    node.kubectl_ok(&["delete", "pod", "hooks", "--wait=true", "--timeout=120s"]);
    let pre = fs::read_to_string(hook_dir.join("pre-stop")).unwrap_or_default();
    assert_eq!(pre.trim(), "stopping");
}
