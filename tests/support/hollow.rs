//! Hollow nodes: Node objects with capacity, a Lease kept fresh and a loop that plays the
//! kubelet for the pods bound to them (marks them Running and Ready, completes them, finishes
//! their graceful deletion), all through the API. They let the control loops be tested end to
//! end without root or containers.
//!
//! A pod's containers behave according to annotations on the pod:
//! - `hollow.cluster.dev/exit-code: "<n>"`: the pod runs for
//!   `hollow.cluster.dev/run-seconds` (default 1) and then terminates with that exit code
//!   (phase Succeeded for 0, Failed otherwise, when restartPolicy is Never or OnFailure).
//! - `hollow.cluster.dev/not-ready: "true"`: the pod runs but never becomes Ready.
//!
//! Without annotations a pod runs and is Ready until deleted.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// One hollow node.
#[derive(Clone, Debug)]
pub struct HollowNode {
    pub name: String,
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Value>,
}

impl HollowNode {
    pub fn new(name: &str) -> HollowNode {
        HollowNode {
            name: name.to_string(),
            cpu: "4".into(),
            memory: "8Gi".into(),
            pods: 110,
            labels: BTreeMap::new(),
            taints: Vec::new(),
        }
    }

    pub fn label(mut self, key: &str, value: &str) -> HollowNode {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> HollowNode {
        self.taints
            .push(json!({"key": key, "value": value, "effect": effect}));
        self
    }

    pub fn capacity(mut self, cpu: &str, memory: &str) -> HollowNode {
        self.cpu = cpu.into();
        self.memory = memory.into();
        self
    }
}

/// Running hollow nodes; stops on drop.
pub struct HollowNodes {
    client: kube::Client,
    cancel: CancellationToken,
    /// Nodes whose heartbeat is paused (simulating a lost node).
    silent: Arc<Mutex<HashSet<String>>>,
    names: Arc<Mutex<Vec<String>>>,
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn node_object(node: &HollowNode, index: usize) -> Value {
    let mut labels = node.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), node.name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), "amd64".into());
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": labels},
        "spec": {"taints": node.taints},
        "status": {
            "capacity": {"cpu": node.cpu, "memory": node.memory, "pods": node.pods.to_string()},
            "allocatable": {"cpu": node.cpu, "memory": node.memory, "pods": node.pods.to_string()},
            "conditions": ready_conditions("True"),
            "addresses": [
                {"type": "InternalIP", "address": format!("192.0.2.{}", 10 + index)},
                {"type": "Hostname", "address": node.name},
            ],
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "hollow",
                "osImage": "hollow", "containerRuntimeVersion": "hollow://1", "kubeletVersion": "v1.33.0-hollow",
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"
            }
        }
    })
}

fn ready_conditions(ready: &str) -> Value {
    let now = now();
    json!([
        {"type": "Ready", "status": ready, "reason": "KubeletReady", "message": "hollow kubelet", "lastHeartbeatTime": now, "lastTransitionTime": now},
        {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "lastHeartbeatTime": now, "lastTransitionTime": now},
        {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", "lastHeartbeatTime": now, "lastTransitionTime": now},
        {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID", "lastHeartbeatTime": now, "lastTransitionTime": now},
    ])
}

impl HollowNodes {
    /// Registers the nodes and starts their heartbeats and their hollow kubelet.
    pub async fn start(client: kube::Client, nodes: &[HollowNode]) -> HollowNodes {
        let hollow = HollowNodes {
            client: client.clone(),
            cancel: CancellationToken::new(),
            silent: Arc::default(),
            names: Arc::default(),
        };
        for node in nodes {
            hollow.add(node).await;
        }
        tokio::spawn(heartbeats(
            client.clone(),
            Arc::clone(&hollow.names),
            Arc::clone(&hollow.silent),
            hollow.cancel.clone(),
        ));
        tokio::spawn(kubelet(
            client,
            Arc::clone(&hollow.names),
            Arc::clone(&hollow.silent),
            hollow.cancel.clone(),
        ));
        hollow
    }

    /// Registers one more node.
    pub async fn add(&self, node: &HollowNode) {
        // The kubelet must own the node before the Node exists: a pod may be bound to it (and
        // its one bound event seen) as soon as it does.
        let index = {
            let mut names = self.names.lock().expect("names");
            names.push(node.name.clone());
            names.len() - 1
        };
        let nodes: Api<Node> = Api::all(self.client.clone());
        let object: Node = serde_json::from_value(node_object(node, index)).expect("node");
        nodes
            .create(&PostParams::default(), &object)
            .await
            .expect("register hollow node");
        renew_lease(&self.client, &node.name).await;
    }

    /// Stops a node's heartbeat and kubelet, as if the machine was lost.
    pub fn silence(&self, name: &str) {
        self.silent.lock().expect("silent").insert(name.to_string());
    }

    /// Deletes a node object (and stops simulating it).
    pub async fn remove(&self, name: &str) {
        self.silence(name);
        self.names.lock().expect("names").retain(|n| n != name);
        let nodes: Api<Node> = Api::all(self.client.clone());
        let _ = nodes.delete(name, &DeleteParams::default()).await;
    }
}

impl Drop for HollowNodes {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn renew_lease(client: &kube::Client, node: &str) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now}
    });
    let params = PatchParams::default();
    if leases
        .patch(node, &params, &Patch::Merge(&lease))
        .await
        .is_err()
    {
        let object: Lease = serde_json::from_value(lease).expect("lease");
        let _ = leases.create(&PostParams::default(), &object).await;
    }
}

async fn heartbeats(
    client: kube::Client,
    names: Arc<Mutex<Vec<String>>>,
    silent: Arc<Mutex<HashSet<String>>>,
    cancel: CancellationToken,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    loop {
        let live: Vec<String> = {
            let silent = silent.lock().expect("silent");
            names
                .lock()
                .expect("names")
                .iter()
                .filter(|n| !silent.contains(*n))
                .cloned()
                .collect()
        };
        for name in live {
            renew_lease(&client, &name).await;
            let status = json!({"status": {"conditions": ready_conditions("True")}});
            let _ = nodes
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(status))
                .await;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// The hollow kubelet: watches all pods and acts for those bound to live hollow nodes.
async fn kubelet(
    client: kube::Client,
    names: Arc<Mutex<Vec<String>>>,
    silent: Arc<Mutex<HashSet<String>>>,
    cancel: CancellationToken,
) {
    let pods: Api<Pod> = Api::all(client.clone());
    let mut events = watcher(pods.clone(), watcher::Config::default()).boxed();
    let started: Arc<Mutex<HashSet<String>>> = Arc::default();
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            event = events.next() => event,
        };
        let Some(Ok(event)) = event else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let pods_seen: Vec<Pod> = match event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => vec![pod],
            _ => continue,
        };
        for pod in pods_seen {
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                continue;
            };
            let mine = names.lock().expect("names").contains(&node)
                && !silent.lock().expect("silent").contains(&node);
            if !mine {
                continue;
            }
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            if pod.metadata.deletion_timestamp.is_some() {
                let _ = api
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await;
                continue;
            }
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if phase != "Pending" || !started.lock().expect("started").insert(uid.clone()) {
                continue;
            }
            let annotations = pod.metadata.annotations.clone().unwrap_or_default();
            let not_ready = annotations
                .get("hollow.cluster.dev/not-ready")
                .is_some_and(|v| v == "true");
            let exit_code: Option<i32> = annotations
                .get("hollow.cluster.dev/exit-code")
                .and_then(|v| v.parse().ok());
            let run_seconds: u64 = annotations
                .get("hollow.cluster.dev/run-seconds")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            let containers: Vec<String> = pod
                .spec
                .as_ref()
                .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
                .unwrap_or_default();
            let images: BTreeMap<String, String> = pod
                .spec
                .as_ref()
                .map(|s| {
                    s.containers
                        .iter()
                        .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default();
            let index = names
                .lock()
                .expect("names")
                .iter()
                .position(|n| *n == node)
                .unwrap_or(0);
            let pod_ip = format!(
                "10.42.{index}.{}",
                2 + (uid.bytes().map(u32::from).sum::<u32>() % 250)
            );
            let running = |ready: bool| {
                let now = now();
                json!({"status": {
                    "phase": "Running",
                    "hostIP": format!("192.0.2.{}", 10 + index),
                    "podIP": pod_ip, "podIPs": [{"ip": pod_ip}],
                    "startTime": now,
                    "conditions": [
                        {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": now},
                        {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                        {"type": "ContainersReady", "status": if ready { "True" } else { "False" }, "lastTransitionTime": now},
                        {"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": now},
                        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    ],
                    "containerStatuses": containers.iter().map(|c| json!({
                        "name": c, "ready": ready, "started": true, "restartCount": 0,
                        "image": images.get(c).cloned().unwrap_or_default(), "imageID": "", "containerID": format!("hollow://{c}"),
                        "state": {"running": {"startedAt": now}},
                    })).collect::<Vec<_>>(),
                }})
            };
            let _ = api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(running(!not_ready)),
                )
                .await;
            if let Some(code) = exit_code {
                let api = api.clone();
                let containers = containers.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(run_seconds)).await;
                    let now = now();
                    let reason = if code == 0 { "Completed" } else { "Error" };
                    let status = json!({"status": {
                        "phase": if code == 0 { "Succeeded" } else { "Failed" },
                        "conditions": [
                            {"type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
                            {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
                        ],
                        "containerStatuses": containers.iter().map(|c| json!({
                            "name": c, "ready": false, "started": false, "restartCount": 0, "image": "", "imageID": "",
                            "state": {"terminated": {"exitCode": code, "reason": reason, "startedAt": now, "finishedAt": now}},
                        })).collect::<Vec<_>>(),
                    }});
                    let _ = api
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                        .await;
                });
            }
        }
    }
}
