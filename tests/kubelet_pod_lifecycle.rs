//! A pod's life on a real node, end to end through kubectl: many pods deleted at once all go
//! away with nothing left behind (containers, cgroups, network namespaces, pod directories);
//! activeDeadlineSeconds; termination messages (file, custom path, fallback to logs); sidecars
//! (init containers with restartPolicy Always) starting in order, restarting, ending a Job-style
//! pod and stopping after the containers.
//!
//! Needs root, iproute2, nftables, nsenter, kubectl and busybox-static: CI (`CI=true`) runs
//! them; elsewhere they skip and say why. The Node fixture cleans up even when a test fails.

mod support;

use std::fs;
use std::path::Path;

use cluster::agent::runtime::container::cgroups::{self, QosClass};
use cluster::agent::runtime::container::state::ContainerDir;
use rustix::process::{kill_process, Pid, Signal};
use support::node::{require, Node, IMAGE};

/// A container as YAML (indented for a pod's container list), running `script` in sh.
fn container(name: &str, script: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    image: {IMAGE}\n    command: [\"/bin/sh\", \"-c\", {script:?}]\n{extra}"
    )
}

fn wait_phase(node: &Node, pod: &str, phase: &str) {
    node.wait_for(
        &format!("{pod} {phase}"),
        &["get", "pod", pod, "-o", "jsonpath={.status.phase}"],
        |s| s == phase,
    );
}

/// The pod as JSON.
fn pod_json(node: &Node, pod: &str) -> serde_json::Value {
    let out = node.kubectl_ok(&["get", "pod", pod, "-o", "json"]);
    serde_json::from_str(&out).expect("pod json")
}

/// The status of container `name` in status.containerStatuses or initContainerStatuses.
fn container_status(pod: &serde_json::Value, name: &str) -> serde_json::Value {
    let status = &pod["status"];
    status["containerStatuses"]
        .as_array()
        .into_iter()
        .chain(status["initContainerStatuses"].as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no status for container {name}: {status}"))
}

fn sleeper(name: &str, grace: u32) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: sleeper}}\nspec:\n  terminationGracePeriodSeconds: {grace}\n  containers:\n  - name: main\n    image: {IMAGE}\n    command: [\"sleep\", \"3600\"]\n"
    )
}

/// The process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("State:"))
        .is_some_and(|l| !l.contains('Z'))
}

/// What the node still holds of pod `uid`: containers, cgroups, network namespace, pod dir.
fn leftovers(node: &Node, uid: &str) -> Vec<String> {
    let mut left = Vec::new();
    for id in node.containers_of(uid) {
        left.push(format!("container {id}"));
    }
    let version = cgroups::detect().expect("cgroup version");
    let controllers: Vec<String> = match version {
        cgroups::Version::V2 => vec![String::new()],
        cgroups::Version::V1 => ["cpu", "memory", "pids", "freezer"]
            .iter()
            .map(|c| c.to_string())
            .collect(),
    };
    for qos in [
        QosClass::Guaranteed,
        QosClass::Burstable,
        QosClass::BestEffort,
    ] {
        for controller in &controllers {
            let dir = cgroups::dir(version, controller, &cgroups::pod_path(qos, uid));
            if dir.exists() {
                left.push(format!("cgroup {}", dir.display()));
            }
        }
    }
    let netns = format!("/run/netns/cluster-{uid}");
    if Path::new(&netns).exists() {
        left.push(format!("netns {netns}"));
    }
    let pod_dir = node.data_dir().join("agent/pods").join(uid);
    if pod_dir.exists() {
        left.push(format!("pod dir {}", pod_dir.display()));
    }
    left
}

/// Forty pods whose container ignores SIGTERM (sleep as PID 1), three of them with their shim
/// killed, deleted with one `kubectl delete pods --all --wait`: every one is gone after its
/// grace period, and the node keeps nothing of them, not even the orphaned processes.
#[test]
fn mass_delete_leaves_nothing_behind() {
    if !require("mass_delete_leaves_nothing_behind") {
        return;
    }
    let node = Node::start("massdelete");
    const PODS: usize = 40;
    let manifest: Vec<String> = (0..PODS)
        .map(|i| sleeper(&format!("sleeper-{i}"), 2))
        .collect();
    node.apply(&manifest.join("---\n"));
    node.wait_for(
        "all sleepers Running",
        &[
            "get",
            "pods",
            "-l",
            "app=sleeper",
            "-o",
            "jsonpath={.items[*].status.phase}",
        ],
        |s| s.split_whitespace().filter(|p| *p == "Running").count() == PODS,
    );
    let uids = node.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=sleeper",
        "-o",
        "jsonpath={.items[*].metadata.uid}",
    ]);
    let uids: Vec<&str> = uids.split_whitespace().collect();
    assert_eq!(uids.len(), PODS);

    // Three pods lose their shims (SIGKILL): their containers keep running, orphaned, in
    // their cgroups; the kubelet must still get rid of them.
    let root = node.run_dir().join("containers");
    let mut orphans = Vec::new();
    for uid in &uids[..3] {
        for id in node.containers_of(uid) {
            let status = ContainerDir::new(&root, &id)
                .read_status()
                .expect("status.json");
            let (Some(pid), Some(shim)) = (status.pid, status.shim_pid) else {
                node.fail(&format!(
                    "container {id} has no pid or shim pid: {status:?}"
                ));
            };
            let shim = Pid::from_raw(shim).expect("shim pid");
            kill_process(shim, Signal::KILL).expect("kill the shim");
            orphans.push(pid);
        }
    }
    assert_eq!(orphans.len(), 3);

    let (ok, out, err) = node.kubectl(&["delete", "pods", "--all", "--wait", "--timeout=300s"]);
    if !ok {
        node.fail(&format!("kubectl delete pods --all: {err}\n{out}"));
    }
    let remaining = node.kubectl_ok(&["get", "pods", "-o", "name"]);
    if !remaining.trim().is_empty() {
        node.fail(&format!("pods left after the delete: {remaining}"));
    }
    let mut left: Vec<String> = uids.iter().flat_map(|uid| leftovers(&node, uid)).collect();
    for pid in orphans {
        if alive(pid) {
            left.push(format!("process {pid} of a container whose shim died"));
        }
    }
    if !left.is_empty() {
        node.fail(&format!("the deleted pods left {left:#?}"));
    }
}

/// The node reports its images; activeDeadlineSeconds fails a running pod with the kubelet's reason, message and event; a
/// container's termination message comes from /dev/termination-log (its last 4096 bytes), from
/// a custom terminationMessagePath, or with FallbackToLogsOnError from the end of its log when
/// it failed without writing one.
#[test]
fn deadline_and_termination_messages() {
    if !require("deadline_and_termination_messages") {
        return;
    }
    let node = Node::start("deadline");
    // The node lists its images (the imported test image) with their sizes.
    node.wait_for(
        "the test image in the node's status.images",
        &[
            "get",
            "node",
            &node.name,
            "-o",
            "jsonpath={.status.images[*].names}",
        ],
        |s| s.contains(IMAGE),
    );
    let sizes = node.kubectl_ok(&[
        "get",
        "node",
        &node.name,
        "-o",
        "jsonpath={.status.images[*].sizeBytes}",
    ]);
    assert!(
        sizes
            .split_whitespace()
            .all(|s| s.parse::<u64>().is_ok_and(|n| n > 0)),
        "image sizes {sizes:?}"
    );
    let pod = |name: &str, policy: &str, extra_spec: &str, containers: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: {policy}\n  terminationGracePeriodSeconds: 1\n{extra_spec}  containers:\n{containers}"
        )
    };
    let manifests = [
        pod(
            "deadline",
            "Always",
            "  activeDeadlineSeconds: 4\n",
            &container("main", "exec sleep 3600", ""),
        ),
        pod(
            "msg-file",
            "Never",
            "",
            &container(
                "main",
                "busybox head -c 5000 /dev/zero | busybox tr '\\0' x > /dev/termination-log; printf END >> /dev/termination-log; exit 3",
                "",
            ),
        ),
        pod(
            "msg-path",
            "Never",
            "",
            &container(
                "main",
                "printf 'custom path' > /tmp/message",
                "    terminationMessagePath: /tmp/message\n",
            ),
        ),
        pod(
            "msg-fallback",
            "Never",
            "",
            &container(
                "main",
                "i=1; while [ $i -le 100 ]; do echo line $i; i=$((i+1)); done; exit 1",
                "    terminationMessagePolicy: FallbackToLogsOnError\n",
            ),
        ),
        pod(
            "msg-fallback-ok",
            "Never",
            "",
            &container(
                "main",
                "echo all fine",
                "    terminationMessagePolicy: FallbackToLogsOnError\n",
            ),
        ),
    ];
    node.apply(&manifests.join("---\n"));

    // The deadline: Running first, then Failed with the kubelet's reason and message.
    wait_phase(&node, "deadline", "Failed");
    let deadline = pod_json(&node, "deadline");
    assert_eq!(
        deadline["status"]["reason"], "DeadlineExceeded",
        "{deadline}"
    );
    assert_eq!(
        deadline["status"]["message"],
        "Pod was active on the node longer than the specified deadline"
    );
    let main = container_status(&deadline, "main");
    assert!(
        main["state"]["terminated"].is_object(),
        "the container still runs after the deadline: {main}"
    );
    node.wait_for(
        "the DeadlineExceeded event",
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=deadline,reason=DeadlineExceeded",
            "-o",
            "jsonpath={.items[*].type}/{.items[*].source.component}{.items[*].reportingComponent}",
        ],
        |s| s.starts_with("Normal/") && s.contains("kubelet"),
    );

    wait_phase(&node, "msg-file", "Failed");
    let message = container_status(&pod_json(&node, "msg-file"), "main")["state"]["terminated"]
        ["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(message.len(), 4096, "{message:?}");
    assert!(message.ends_with("xxxEND"), "{message:?}");

    wait_phase(&node, "msg-path", "Succeeded");
    let terminated =
        container_status(&pod_json(&node, "msg-path"), "main")["state"]["terminated"].clone();
    assert_eq!(terminated["message"], "custom path", "{terminated}");

    wait_phase(&node, "msg-fallback", "Failed");
    let terminated =
        container_status(&pod_json(&node, "msg-fallback"), "main")["state"]["terminated"].clone();
    let expected: String = (21..=100).map(|i| format!("line {i}\n")).collect();
    assert_eq!(terminated["message"].as_str(), Some(expected.as_str()));
    // A finished pod keeps its container (record and log) until it is deleted; only its
    // processes are gone.
    let uid = node.pod_field("msg-fallback", "{.metadata.uid}");
    let kept = node.containers_of(&uid);
    assert_eq!(kept.len(), 1, "containers of the finished pod: {kept:?}");
    let logs = node.kubectl_ok(&["logs", "msg-fallback"]);
    assert!(
        logs.starts_with("line 1\n") && logs.ends_with("line 100\n"),
        "{logs}"
    );

    wait_phase(&node, "msg-fallback-ok", "Succeeded");
    let terminated = container_status(&pod_json(&node, "msg-fallback-ok"), "main")["state"]
        ["terminated"]
        .clone();
    assert!(
        terminated.get("message").is_none(),
        "a successful container got its log as message: {terminated}"
    );
}

/// Sidecars: an init container with restartPolicy Always starts before the next init container
/// (which sees it running), runs beside the containers with started/ready in
/// initContainerStatuses, and on deletion stops after the containers, last sidecar first. In a
/// restartPolicy Never pod a crashing sidecar is restarted anyway, and the pod is Succeeded
/// once its container completed, its sidecars then stopped.
#[test]
fn sidecars_run_beside_containers_and_stop_after_them() {
    if !require("sidecars_run_beside_containers_and_stop_after_them") {
        return;
    }
    let node = Node::start("sidecars");
    let shared = node.temp.path().join("shared");
    fs::create_dir_all(&shared).expect("shared dir");
    let volume = format!(
        "  volumes:\n  - name: shared\n    hostPath: {{path: {}}}\n",
        shared.display()
    );
    let mount = "    volumeMounts:\n    - {name: shared, mountPath: /shared}\n";
    let sidecar = |name: &str, script: &str| {
        container(name, script, &format!("    restartPolicy: Always\n{mount}"))
    };
    // Each writes its name into /shared/order when told to stop.
    let stops_in_order = |name: &str| {
        format!(
            "trap 'echo {name} >> /shared/order; exit 0' TERM; touch /shared/{name}-up; while true; do sleep 0.2; done"
        )
    };
    // s1 is started only once its startup probe passes (2 s after it runs): the check init
    // container, which must not start before, fails unless s1 reported itself up.
    let s1 = sidecar("s1", &format!("sleep 2; {}", stops_in_order("s1"))).replace(
        "    restartPolicy: Always\n",
        "    restartPolicy: Always\n    startupProbe:\n      exec: {command: [/bin/sh, -c, \"test -f /shared/s1-up\"]}\n      periodSeconds: 1\n      failureThreshold: 30\n",
    );
    let server = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: server\nspec:\n  terminationGracePeriodSeconds: 20\n{volume}  initContainers:\n{}{}{}  containers:\n{}",
        s1,
        container("check", "test -f /shared/s1-up", mount),
        sidecar("s2", &stops_in_order("s2")),
        container("main", &stops_in_order("main"), mount),
    );
    node.apply(&server);
    wait_phase(&node, "server", "Running");
    node.wait_for(
        "server Ready",
        &[
            "get",
            "pod",
            "server",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ],
        |s| s == "True",
    );
    let server_pod = pod_json(&node, "server");
    for name in ["s1", "s2"] {
        let status = container_status(&server_pod, name);
        assert!(status["state"]["running"].is_object(), "{status}");
        assert_eq!(status["started"], true, "{status}");
        assert_eq!(status["ready"], true, "{status}");
    }
    let check = container_status(&server_pod, "check");
    assert_eq!(check["state"]["terminated"]["exitCode"], 0, "{check}");
    assert_eq!(
        check["restartCount"], 0,
        "check ran before s1 started: {check}"
    );
    let initialized = server_pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Initialized")
        .cloned();
    assert_eq!(
        initialized.map(|c| c["status"].clone()),
        Some("True".into())
    );

    // A Job-style pod: the crashing sidecar restarts although restartPolicy is Never, and the
    // pod completes with its container, the steady sidecar stopped after it.
    let job = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: job\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 20\n{volume}  initContainers:\n{}{}  containers:\n{}",
        sidecar("crashy", "sleep 1; exit 1"),
        sidecar(
            "steady",
            "trap 'echo steady-stopped >> /shared/job; exit 0' TERM; while true; do sleep 0.2; done"
        ),
        container("work", "sleep 6; echo work-done >> /shared/job", mount),
    );
    node.apply(&job);
    wait_phase(&node, "job", "Succeeded");
    let job_pod = pod_json(&node, "job");
    let crashy = container_status(&job_pod, "crashy");
    assert!(
        crashy["restartCount"].as_i64().unwrap_or(0) >= 1,
        "the sidecar was not restarted: {crashy}"
    );
    let steady = container_status(&job_pod, "steady");
    assert_eq!(steady["state"]["terminated"]["exitCode"], 0, "{steady}");
    let work = container_status(&job_pod, "work");
    assert_eq!(work["state"]["terminated"]["exitCode"], 0, "{work}");
    let log = fs::read_to_string(shared.join("job")).unwrap_or_default();
    assert_eq!(log, "work-done\nsteady-stopped\n");

    // Deleting the server: the container stops first, then the sidecars, last one first.
    node.kubectl_ok(&["delete", "pod", "server", "--wait", "--timeout=120s"]);
    let order = fs::read_to_string(shared.join("order")).unwrap_or_default();
    assert_eq!(order, "main\ns2\ns1\n");
}
