//! The node lifecycle controller: notices lost nodes, taints them, and evicts the pods that do
//! not tolerate that (pkg/controller/nodelifecycle and its NoExecute taint manager).
//!
//! A node whose Lease (`kube-node-lease/<node>`) and Ready heartbeat have not changed for
//! `node_monitor_grace_period` (measured on this server's clock, from when the loop last saw
//! them change) gets every condition set to `Unknown`. Nodes whose Ready condition is `Unknown`
//! get the `node.kubernetes.io/unreachable` NoSchedule and NoExecute taints, nodes reporting
//! Ready=False the `node.kubernetes.io/not-ready` ones; both go away when the node is Ready
//! again. A pod on a node with a NoExecute taint it does not tolerate is deleted at once; one
//! that tolerates it for `tolerationSeconds` is deleted that long after the taint was added.
//!
//! Taints by condition (as the upstream controller's NoSchedule pass): MemoryPressure,
//! DiskPressure, PIDPressure or NetworkUnavailable `True` give the node the matching
//! `node.kubernetes.io/<…>` NoSchedule taint, `spec.unschedulable` (`kubectl cordon`) gives it
//! `node.kubernetes.io/unschedulable`; each goes away with its cause.
//!
//! Pods of deleted nodes are removed by [`super::podgc`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::resync::{self, Caches, ReconcileError};
use super::Context;

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The NoSchedule taints this controller keeps in step with node conditions, by condition type.
const CONDITION_TAINTS: [(&str, &str); 4] = [
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
    (
        "NetworkUnavailable",
        "node.kubernetes.io/network-unavailable",
    ),
];
pub const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// How often nodes are checked even when nothing changes.
const MONITOR_PERIOD: Duration = Duration::from_secs(1);

/// Starts the loop.
pub fn start(context: Context, cancel: CancellationToken) -> BoxFuture<'static, ()> {
    run(context, cancel).boxed()
}

/// When each node's heartbeat was last seen to change: (heartbeat, local time).
type Observed = Arc<Mutex<HashMap<String, (String, Instant)>>>;

async fn run(context: Context, cancel: CancellationToken) {
    let mut caches = Caches::default();
    let client = &context.client;
    let nodes = caches.cache(Api::<Node>::all(client.clone()), watcher::Config::default());
    let leases = caches.cache(
        Api::<Lease>::namespaced(client.clone(), "kube-node-lease"),
        watcher::Config::default(),
    );
    let pods = caches.cache(Api::<Pod>::all(client.clone()), watcher::Config::default());
    let observed: Observed = Arc::default();
    resync::drive(caches, cancel, MONITOR_PERIOD, || {
        let (context, nodes, leases, pods, observed) = (
            context.clone(),
            nodes.clone(),
            leases.clone(),
            pods.clone(),
            Arc::clone(&observed),
        );
        async move { reconcile(&context, &nodes, &leases, &pods, &observed).await }
    })
    .await;
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The taints a node should carry for its Ready status (besides the others it has).
pub fn lifecycle_taint(ready: Option<&str>) -> Option<&'static str> {
    match ready {
        Some("True") => None,
        Some("False") => Some(NOT_READY),
        // A node that never reported gets Unknown (and so tainted) after the grace period.
        None => None,
        Some(_) => Some(UNREACHABLE),
    }
}

/// The node's taints with the lifecycle ones set for `wanted` (keeping `timeAdded` of ones
/// already there).
pub fn with_lifecycle_taints(taints: &[Value], wanted: Option<&str>) -> Vec<Value> {
    let mut out: Vec<Value> = taints
        .iter()
        .filter(|t| {
            let key = t["key"].as_str().unwrap_or_default();
            (key != UNREACHABLE && key != NOT_READY) || Some(key) == wanted
        })
        .cloned()
        .collect();
    if let Some(key) = wanted {
        for effect in ["NoSchedule", "NoExecute"] {
            if !out.iter().any(|t| t["key"] == key && t["effect"] == effect) {
                let mut taint = json!({"key": key, "effect": effect});
                if effect == "NoExecute" {
                    taint["timeAdded"] = json!(now_rfc3339());
                }
                out.push(taint);
            }
        }
    }
    out
}

/// The condition taints (see [`CONDITION_TAINTS`] and [`UNSCHEDULABLE`]) a node should carry.
pub fn condition_taints(node: &Value) -> Vec<&'static str> {
    let conditions = node["status"]["conditions"].as_array();
    let mut keys: Vec<&'static str> = CONDITION_TAINTS
        .iter()
        .filter(|(kind, _)| {
            conditions.is_some_and(|list| {
                list.iter()
                    .any(|c| c["type"] == *kind && c["status"] == "True")
            })
        })
        .map(|(_, key)| *key)
        .collect();
    if node["spec"]["unschedulable"] == true {
        keys.push(UNSCHEDULABLE);
    }
    keys
}

/// The node's taints with exactly the condition taints in `wanted` (as NoSchedule), keeping
/// the order and the others.
pub fn with_condition_taints(taints: &[Value], wanted: &[&str]) -> Vec<Value> {
    let managed =
        |key: &str| key == UNSCHEDULABLE || CONDITION_TAINTS.iter().any(|(_, k)| *k == key);
    let mut out: Vec<Value> = taints
        .iter()
        .filter(|t| {
            let key = t["key"].as_str().unwrap_or_default();
            !managed(key) || wanted.contains(&key)
        })
        .cloned()
        .collect();
    for key in wanted {
        if !out
            .iter()
            .any(|t| t["key"] == *key && t["effect"] == "NoSchedule")
        {
            out.push(json!({"key": key, "effect": "NoSchedule"}));
        }
    }
    out
}

/// Whether `toleration` tolerates `taint` (the scheduler's matching rules).
pub fn tolerates(toleration: &Value, taint: &Value) -> bool {
    let effect = toleration["effect"].as_str().unwrap_or_default();
    if !effect.is_empty() && Some(effect) != taint["effect"].as_str() {
        return false;
    }
    let key = toleration["key"].as_str().unwrap_or_default();
    let operator = toleration["operator"].as_str().unwrap_or("Equal");
    if key.is_empty() {
        return operator == "Exists";
    }
    if Some(key) != taint["key"].as_str() {
        return false;
    }
    match operator {
        "Exists" => true,
        _ => {
            toleration["value"].as_str().unwrap_or_default()
                == taint["value"].as_str().unwrap_or_default()
        }
    }
}

/// When a pod on a node with these NoExecute taints must go: `Some(Duration::ZERO)` now,
/// `Some(d)` after `d` from the taints' time, `None` never.
pub fn eviction_delay(tolerations: &[Value], no_execute: &[Value]) -> Option<Duration> {
    let mut delay: Option<Duration> = None;
    for taint in no_execute {
        let matching: Vec<&Value> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Some(Duration::ZERO);
        }
        // The shortest toleration of those that match; none with seconds: forever.
        let seconds = matching
            .iter()
            .filter_map(|t| t["tolerationSeconds"].as_i64())
            .min();
        if let Some(s) = seconds {
            let d = Duration::from_secs(s.max(0) as u64);
            delay = Some(delay.map_or(d, |current| current.min(d)));
        }
    }
    delay
}

async fn reconcile(
    context: &Context,
    nodes: &Store<Node>,
    leases: &Store<Lease>,
    pods: &Store<Pod>,
    observed: &Observed,
) -> Result<Option<Duration>, ReconcileError> {
    let grace = context.config.node_monitor_grace_period;
    let node_api = Api::<Node>::all(context.client.clone());
    let mut first_error: Option<kube::Error> = None;
    // NoExecute taints per node (with the time they were added), after this pass.
    let mut no_execute: HashMap<String, Vec<Value>> = HashMap::new();
    let mut seen = Vec::new();
    for node in nodes.state() {
        let Some(name) = node.metadata.name.clone() else {
            continue;
        };
        seen.push(name.clone());
        let value = serde_json::to_value(node.as_ref())?;
        let conditions: Vec<Value> = value["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let ready = conditions.iter().find(|c| c["type"] == "Ready");
        let lease_renew = leases
            .state()
            .iter()
            .find(|l| l.metadata.name.as_deref() == Some(name.as_str()))
            .and_then(|l| l.spec.as_ref().and_then(|s| s.renew_time.as_ref()))
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        let heartbeat = format!(
            "{lease_renew}|{}",
            ready
                .map(|r| r["lastHeartbeatTime"].to_string())
                .unwrap_or_default()
        );
        let since = {
            let mut observed = observed.lock().unwrap_or_else(|p| p.into_inner());
            let entry = observed
                .entry(name.clone())
                .or_insert_with(|| (heartbeat.clone(), Instant::now()));
            if entry.0 != heartbeat {
                *entry = (heartbeat.clone(), Instant::now());
            }
            entry.1.elapsed()
        };
        let mut ready_status = ready.and_then(|r| r["status"].as_str()).map(String::from);
        if since > grace && ready_status.as_deref() != Some("Unknown") {
            let now = now_rfc3339();
            let mut next: Vec<Value> = conditions.clone();
            if !next.iter().any(|c| c["type"] == "Ready") {
                next.push(json!({"type": "Ready"}));
            }
            for c in &mut next {
                c["status"] = json!("Unknown");
                c["reason"] = json!("NodeStatusUnknown");
                c["message"] = json!("Kubelet stopped posting node status.");
                c["lastTransitionTime"] = json!(now);
            }
            let patch = json!({"status": {"conditions": next}});
            match node_api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    info!(node = %name, "node stopped posting status; marked Unknown");
                    ready_status = Some("Unknown".into());
                    publish(
                        context,
                        &node,
                        "NodeNotReady",
                        &format!("Node {name} status is now: NodeNotReady"),
                    )
                    .await;
                }
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        let taints: Vec<Value> = value["spec"]["taints"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let wanted = lifecycle_taint(ready_status.as_deref());
        let next = with_condition_taints(
            &with_lifecycle_taints(&taints, wanted),
            &condition_taints(&value),
        );
        if next != taints {
            let patch = json!({
                "metadata": {"resourceVersion": value["metadata"]["resourceVersion"]},
                "spec": {"taints": next},
            });
            if let Err(err) = resync::tolerate(
                node_api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await,
                true,
            ) {
                first_error.get_or_insert(err);
            }
        }
        let executing: Vec<Value> = next
            .into_iter()
            .filter(|t| t["effect"] == "NoExecute")
            .collect();
        if !executing.is_empty() {
            no_execute.insert(name, executing);
        }
    }
    observed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|name, _| seen.contains(name));
    // The taint manager.
    let mut requeue: Option<Duration> = None;
    let now = jiff::Timestamp::now();
    for pod in pods.state() {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            continue;
        };
        let Some(taints) = no_execute.get(node) else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let value = serde_json::to_value(pod.as_ref())?;
        let phase = value["status"]["phase"].as_str().unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            continue;
        }
        let tolerations: Vec<Value> = value["spec"]["tolerations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let Some(delay) = eviction_delay(&tolerations, taints) else {
            continue;
        };
        // Measured from the latest time one of the taints was added.
        let added = taints
            .iter()
            .filter_map(|t| t["timeAdded"].as_str()?.parse::<jiff::Timestamp>().ok())
            .max()
            .unwrap_or(now);
        let elapsed = now.duration_since(added).unsigned_abs();
        if elapsed < delay {
            let left = delay - elapsed;
            requeue = Some(requeue.map_or(left, |r: Duration| r.min(left)));
            continue;
        }
        let (Some(ns), Some(name)) = (
            pod.metadata.namespace.as_deref(),
            pod.metadata.name.as_deref(),
        ) else {
            continue;
        };
        info!(pod = %format!("{ns}/{name}"), node, "evicting a pod that does not tolerate its node's taints");
        publish_pod(
            context,
            &value,
            "TaintManagerEviction",
            &format!("Marking for deletion Pod {ns}/{name}"),
        )
        .await;
        let api = Api::<Pod>::namespaced(context.client.clone(), ns);
        if let Err(err) = resync::tolerate(api.delete(name, &DeleteParams::default()).await, true) {
            first_error.get_or_insert(err);
        }
    }
    match first_error {
        Some(err) => Err(err.into()),
        None => Ok(requeue.map(|r| r + Duration::from_millis(100))),
    }
}

async fn publish(context: &Context, node: &Node, reason: &str, note: &str) {
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: node.metadata.name.clone(),
        uid: node.metadata.uid.clone(),
        ..ObjectReference::default()
    };
    send(context, reference, reason, note).await;
}

async fn publish_pod(context: &Context, pod: &Value, reason: &str, note: &str) {
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: pod["metadata"]["namespace"].as_str().map(String::from),
        name: pod["metadata"]["name"].as_str().map(String::from),
        uid: pod["metadata"]["uid"].as_str().map(String::from),
        ..ObjectReference::default()
    };
    send(context, reference, reason, note).await;
}

async fn send(context: &Context, reference: ObjectReference, reason: &str, note: &str) {
    let event = Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(note.into()),
        action: reason.into(),
        secondary: None,
    };
    if let Err(err) = context.recorder.publish(&event, &reference).await {
        tracing::debug!(error = %err, "publishing an event failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_follow_readiness() {
        let other = json!({"key": "dedicated", "value": "x", "effect": "NoSchedule"});
        let tainted = with_lifecycle_taints(
            std::slice::from_ref(&other),
            lifecycle_taint(Some("Unknown")),
        );
        assert_eq!(tainted.len(), 3);
        assert!(tainted.iter().any(|t| t["key"] == UNREACHABLE
            && t["effect"] == "NoExecute"
            && t["timeAdded"].is_string()));
        // Stable once there, replaced when the status changes, gone when Ready.
        assert_eq!(with_lifecycle_taints(&tainted, Some(UNREACHABLE)), tainted);
        let not_ready = with_lifecycle_taints(&tainted, lifecycle_taint(Some("False")));
        assert!(not_ready.iter().all(|t| t["key"] != UNREACHABLE));
        assert!(not_ready.iter().any(|t| t["key"] == NOT_READY));
        assert_eq!(
            with_lifecycle_taints(&not_ready, lifecycle_taint(Some("True"))),
            vec![other]
        );
    }

    #[test]
    fn conditions_and_cordons_taint_the_node() {
        let node = json!({
            "spec": {"unschedulable": true},
            "status": {"conditions": [
                {"type": "MemoryPressure", "status": "True"},
                {"type": "DiskPressure", "status": "False"},
                {"type": "PIDPressure", "status": "True"},
                {"type": "Ready", "status": "True"},
            ]},
        });
        let wanted = condition_taints(&node);
        assert_eq!(
            wanted,
            [
                "node.kubernetes.io/memory-pressure",
                "node.kubernetes.io/pid-pressure",
                UNSCHEDULABLE
            ]
        );
        let other = json!({"key": "dedicated", "value": "x", "effect": "NoSchedule"});
        let stale = json!({"key": "node.kubernetes.io/disk-pressure", "effect": "NoSchedule"});
        let tainted = with_condition_taints(&[other.clone(), stale], &wanted);
        assert_eq!(tainted.len(), 4);
        assert_eq!(tainted[0], other);
        assert!(tainted
            .iter()
            .all(|t| t["key"] != "node.kubernetes.io/disk-pressure"));
        assert!(tainted
            .iter()
            .all(|t| t["key"] == "dedicated" || t["effect"] == "NoSchedule"));
        // Stable, and gone once the causes are.
        assert_eq!(with_condition_taints(&tainted, &wanted), tainted);
        assert_eq!(with_condition_taints(&tainted, &[]), vec![other]);
        assert!(condition_taints(&json!({})).is_empty());
    }

    #[test]
    fn eviction_delays() {
        let taint = json!({"key": UNREACHABLE, "effect": "NoExecute"});
        assert_eq!(
            eviction_delay(&[], std::slice::from_ref(&taint)),
            Some(Duration::ZERO)
        );
        let short = json!({"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2});
        let long = json!({"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300});
        assert_eq!(
            eviction_delay(&[long.clone(), short], std::slice::from_ref(&taint)),
            Some(Duration::from_secs(2))
        );
        let forever = json!({"operator": "Exists"});
        assert_eq!(
            eviction_delay(&[forever], std::slice::from_ref(&taint)),
            None
        );
        let other_key = json!({"key": "x", "operator": "Exists"});
        assert_eq!(eviction_delay(&[other_key], &[taint]), Some(Duration::ZERO));
    }
}
