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
use std::path::Path;
use std::time::{Duration, Instant};

use cluster::agent::runtime::container::cgroups::{self, QosClass};
use support::node::{kubectl_binary, require, Node, IMAGE, LONG};

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
    // Allocatable is capacity less the hard eviction threshold for memory (100Mi); the
    // imported test image is listed in status.images.
    let memory = |field: &str| -> u64 {
        let text = node.kubectl_ok(&[
            "get",
            "node",
            &name,
            "-o",
            &format!("jsonpath={{.status.{field}.memory}}"),
        ]);
        text.trim_end_matches("Ki").parse().expect("memory in Ki")
    };
    assert_eq!(memory("capacity") - memory("allocatable"), 100 * 1024);
    node.wait_for(
        "the test image in status.images",
        &[
            "get",
            "node",
            &name,
            "-o",
            "jsonpath={.status.images[*].names}",
        ],
        |s| s.contains(IMAGE),
    );

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

#[test]
fn reservations_shrink_allocatable_and_pressure_taints_the_node() {
    if !require("reservations_shrink_allocatable_and_pressure_taints_the_node") {
        return;
    }
    // pid.available below 100% of pid_max is always true: the node is under PID pressure.
    let node = Node::start_with(
        "pressure",
        &[
            "--system-reserved",
            "cpu=250m",
            "--kube-reserved",
            "memory=64Mi",
            "--eviction-hard",
            "pid.available<100%",
        ],
    );
    let name = node.name.clone();
    let field = |path: &str| {
        node.kubectl_ok(&["get", "node", &name, "-o", &format!("jsonpath={{{path}}}")])
    };
    node.wait_for(
        "PIDPressure True",
        &[
            "get",
            "node",
            &name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"PIDPressure\")].reason}",
        ],
        |s| s == "KubeletHasInsufficientPID",
    );
    let cpus: u64 = field(".status.capacity.cpu").parse().expect("cpu");
    assert_eq!(
        field(".status.allocatable.cpu"),
        format!("{}m", cpus * 1000 - 250)
    );
    let memory = |which: &str| -> u64 {
        field(&format!(".status.{which}.memory"))
            .trim_end_matches("Ki")
            .parse()
            .expect("memory in Ki")
    };
    assert_eq!(
        memory("capacity") - memory("allocatable"),
        (64 + 100) * 1024
    );
    // The node lifecycle controller taints it; a pod without the toleration stays Pending
    // with the scheduler's reason.
    node.wait_for(
        "the pid-pressure taint",
        &["get", "node", &name, "-o", "jsonpath={.spec.taints[*].key}"],
        |s| s.contains("node.kubernetes.io/pid-pressure"),
    );
    node.kubectl_ok(&[
        "run",
        "kept-off",
        &format!("--image={IMAGE}"),
        "--command",
        "--",
        "sleep",
        "3600",
    ]);
    node.wait_for(
        "kept-off unschedulable",
        &[
            "get",
            "pod",
            "kept-off",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].message}",
        ],
        |s| s.contains("node.kubernetes.io/pid-pressure"),
    );
    // Cordoning adds the unschedulable taint too; uncordoning removes it.
    node.kubectl_ok(&["cordon", &name]);
    node.wait_for(
        "the unschedulable taint",
        &["get", "node", &name, "-o", "jsonpath={.spec.taints[*].key}"],
        |s| s.contains("node.kubernetes.io/unschedulable"),
    );
    node.kubectl_ok(&["uncordon", &name]);
    node.wait_for(
        "the unschedulable taint gone",
        &["get", "node", &name, "-o", "jsonpath={.spec.taints[*].key}"],
        |s| !s.contains("node.kubernetes.io/unschedulable"),
    );
    node.kubectl_ok(&["delete", "pod", "kept-off", "--wait=false"]);
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
