//! The scheduler: assigns every pending pod of `spec.schedulerName: default-scheduler` to a
//! node, as kube-scheduler does — queue → filter → score → bind.
//!
//! Reflectors on nodes, pods and PriorityClasses feed an incremental [`snapshot::Snapshot`];
//! pending pods wait in a priority [`queue::SchedulingQueue`]; for each, the pure
//! [`plan::schedule`] picks a node, the pod is *assumed* on it in the snapshot at once, and one
//! `pods/binding` call is made in the background. A pod that fits nowhere gets
//! `PodScheduled=False` (reason `Unschedulable`) with kube-scheduler's message and a
//! `FailedScheduling` event, and is retried with backoff when nodes or pods change. A pod that
//! fits only if lower-priority pods go preempts them (they are deleted and the pod's
//! `status.nominatedNodeName` is set).
//!
//! # Guarantees
//! - A pod being bound counts on its node before the API confirms the binding, so a burst of
//!   pods never overcommits a node; a failed binding is forgotten and the pod retried.
//! - Only runs while it holds the `kube-system/kube-scheduler` Lease (see [`start`] callers).
//!
//! # Caveats
//! - A nominated node is not reserved: another pod may take the room preemption made.
//! - Volumes are not considered (no VolumeBinding, VolumeZone or volume limits).

pub mod filter;
pub mod plan;
pub mod queue;
pub mod score;
pub mod snapshot;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use queue::{ClusterEvent, SchedulingQueue};
use snapshot::{is_terminal, PodInfo, Snapshot};

/// The scheduler's name, matched against `spec.schedulerName`.
pub const SCHEDULER_NAME: &str = "default-scheduler";
/// Bindings in flight at once.
const MAX_BINDINGS: usize = 64;
/// Pods planned before looking at new watch events again.
const BATCH: usize = 256;

enum Change {
    Pod(Box<watcher::Event<Pod>>),
    Node(Box<watcher::Event<Node>>),
    Other,
    Error(watcher::Error),
}

enum Outcome {
    Bound { key: String },
    BindFailed { key: String, node: String },
}

/// Runs the scheduler until `cancel`.
pub async fn run(client: kube::Client, identity: String, cancel: CancellationToken) {
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (nodes, node_writer) = reflector::store::<Node>();
    let (classes, class_writer) = reflector::store::<PriorityClass>();
    let pod_stream = reflector::reflector(
        pod_writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .map(|e| e.map_or_else(Change::Error, |e| Change::Pod(Box::new(e))))
    .boxed();
    let node_stream = reflector::reflector(
        node_writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .map(|e| e.map_or_else(Change::Error, |e| Change::Node(Box::new(e))))
    .boxed();
    let class_stream = reflector::reflector(
        class_writer,
        watcher(
            Api::<PriorityClass>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .map(|e| e.map_or_else(Change::Error, |_| Change::Other))
    .boxed();
    let mut changes = futures::stream::select_all([pod_stream, node_stream, class_stream]);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: SCHEDULER_NAME.into(),
            instance: Some(identity),
        },
    );
    let (outcomes_tx, mut outcomes) = mpsc::unbounded_channel();
    let mut scheduler = Scheduler {
        client,
        recorder,
        pods,
        nodes,
        classes,
        snapshot: Snapshot::default(),
        queue: SchedulingQueue::default(),
        assumed: HashMap::new(),
        pods_synced: false,
        nodes_synced: false,
        bindings: Arc::new(Semaphore::new(MAX_BINDINGS)),
        outcomes: outcomes_tx,
    };
    info!("scheduler started");
    let mut wake: Option<Instant> = None;
    loop {
        // Take in everything that already happened before planning.
        loop {
            match changes.next().now_or_never() {
                Some(Some(change)) => scheduler.on_change(change),
                Some(None) => return,
                None => break,
            }
        }
        while let Ok(outcome) = outcomes.try_recv() {
            scheduler.on_outcome(outcome);
        }
        if wake.is_none_or(|w| w <= Instant::now()) {
            wake = scheduler.queue.flush(Instant::now());
        }
        let mut planned = 0;
        if scheduler.pods_synced && scheduler.nodes_synced {
            while planned < BATCH {
                let Some(key) = scheduler.queue.pop() else {
                    break;
                };
                scheduler.schedule_one(&key);
                planned += 1;
            }
        }
        if planned > 0 {
            tokio::task::yield_now().await;
            continue;
        }
        let sleep = wake.map_or(Duration::from_secs(1), |w| {
            w.saturating_duration_since(Instant::now())
        });
        tokio::select! {
            _ = cancel.cancelled() => return,
            change = changes.next() => match change {
                Some(change) => scheduler.on_change(change),
                None => return,
            },
            Some(outcome) = outcomes.recv() => scheduler.on_outcome(outcome),
            _ = tokio::time::sleep(sleep) => wake = None,
        }
        // Events may have released parked pods.
        wake = wake.map(|w| w.min(Instant::now()));
    }
}

struct Scheduler {
    client: kube::Client,
    recorder: Recorder,
    pods: Store<Pod>,
    nodes: Store<Node>,
    classes: Store<PriorityClass>,
    snapshot: Snapshot,
    queue: SchedulingQueue,
    /// Pods placed in the snapshot whose binding the watch has not shown yet → their node.
    assumed: HashMap<String, String>,
    pods_synced: bool,
    nodes_synced: bool,
    bindings: Arc<Semaphore>,
    outcomes: mpsc::UnboundedSender<Outcome>,
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// The fields of a node that decide where pods fit.
fn node_fingerprint(info: Option<&snapshot::NodeInfo>) -> Option<String> {
    let info = info?;
    info.node.as_ref()?;
    Some(format!(
        "{:?}{:?}{}{:?}",
        info.labels, info.taints, info.unschedulable, info.allocatable
    ))
}

impl Scheduler {
    /// The pod's priority: `spec.priority`, else its PriorityClass's value, else the global
    /// default class's, else 0.
    fn priority(&self, pod: &Pod) -> i32 {
        let spec = pod.spec.as_ref();
        if let Some(priority) = spec.and_then(|s| s.priority) {
            return priority;
        }
        let class = spec.and_then(|s| s.priority_class_name.as_deref());
        if let Some(name) = class.filter(|n| !n.is_empty()) {
            if let Some(class) = self.classes.get(&ObjectRef::new(name)) {
                return class.value;
            }
        }
        self.classes
            .state()
            .iter()
            .find(|c| c.global_default == Some(true))
            .map_or(0, |c| c.value)
    }

    fn on_change(&mut self, change: Change) {
        match change {
            Change::Pod(event) => match *event {
                watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => self.on_pod(pod),
                watcher::Event::Delete(pod) => self.on_pod_gone(&pod_key(&pod)),
                watcher::Event::Init => {}
                watcher::Event::InitDone => {
                    self.pods_synced = true;
                    self.resync_pods();
                }
            },
            Change::Node(event) => match *event {
                watcher::Event::Apply(node) | watcher::Event::InitApply(node) => {
                    let name = node.metadata.name.clone().unwrap_or_default();
                    let before = node_fingerprint(self.snapshot.nodes.get(&name));
                    self.snapshot.set_node(Arc::new(node));
                    if before != node_fingerprint(self.snapshot.nodes.get(&name)) {
                        self.queue.on_event(ClusterEvent::Node);
                    }
                }
                watcher::Event::Delete(node) => {
                    self.snapshot
                        .remove_node(node.metadata.name.as_deref().unwrap_or(""));
                }
                watcher::Event::Init => {}
                watcher::Event::InitDone => {
                    self.nodes_synced = true;
                    let names: Vec<String> = self.snapshot.nodes.keys().cloned().collect();
                    for name in names {
                        if !self.is_listed_node(&name) {
                            self.snapshot.remove_node(&name);
                        }
                    }
                    self.queue.on_event(ClusterEvent::Node);
                }
            },
            Change::Other => {}
            Change::Error(err) => warn!(error = %err, "watch failed; retrying"),
        }
    }

    /// Whether a node is in the node reflector's store (nodes deleted while the watch was
    /// down are not, after a relist).
    fn is_listed_node(&self, name: &str) -> bool {
        self.nodes.get(&ObjectRef::new(name)).is_some()
    }

    fn on_pod(&mut self, pod: Pod) {
        let key = pod_key(&pod);
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        if let Some(node) = node {
            self.assumed.remove(&key);
            self.queue.remove(&key);
            let was_on = self.snapshot.pod_node.get(&key).cloned();
            let terminal = is_terminal(&pod);
            let priority = self.priority(&pod);
            self.snapshot
                .set_pod(Arc::new(PodInfo::new(Arc::new(pod), priority)));
            if terminal && was_on.is_some() {
                self.queue.on_event(ClusterEvent::PodGone);
            } else if !terminal && was_on.as_deref() != Some(node.as_str()) {
                self.queue.on_event(ClusterEvent::PodBound);
            }
            return;
        }
        if self.assumed.contains_key(&key) {
            // A stale view of a pod being bound.
            return;
        }
        let ours =
            pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()) == Some(SCHEDULER_NAME);
        if ours && pod.metadata.deletion_timestamp.is_none() && !is_terminal(&pod) {
            let created = pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default();
            let priority = self.priority(&pod);
            self.queue.add(&key, priority, created);
        } else {
            self.queue.remove(&key);
        }
    }

    fn on_pod_gone(&mut self, key: &str) {
        self.assumed.remove(key);
        self.queue.remove(key);
        if self.snapshot.remove_pod(key).is_some() {
            self.queue.on_event(ClusterEvent::PodGone);
        }
    }

    /// After a (re)list: forget pods that are no longer there.
    fn resync_pods(&mut self) {
        let stale: Vec<String> = self
            .snapshot
            .pod_node
            .keys()
            .filter(|key| !self.assumed.contains_key(*key) && self.lookup(key).is_none())
            .cloned()
            .collect();
        for key in stale {
            self.on_pod_gone(&key);
        }
    }

    fn lookup(&self, key: &str) -> Option<Arc<Pod>> {
        let (namespace, name) = key.split_once('/')?;
        self.pods.get(&ObjectRef::new(name).within(namespace))
    }

    fn on_outcome(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Bound { key } => self.queue.done(&key),
            Outcome::BindFailed { key, node } => {
                if self.assumed.get(&key) == Some(&node) {
                    self.assumed.remove(&key);
                    self.snapshot.remove_pod(&key);
                }
                self.queue.failed(&key, Vec::new(), Instant::now());
            }
        }
    }

    fn schedule_one(&mut self, key: &str) {
        let Some(pod) = self.lookup(key) else {
            self.queue.done(key);
            return;
        };
        let pending = pod
            .spec
            .as_ref()
            .is_some_and(|s| s.node_name.as_deref().unwrap_or("").is_empty());
        if !pending || pod.metadata.deletion_timestamp.is_some() || self.assumed.contains_key(key) {
            self.queue.done(key);
            return;
        }
        let info = Arc::new(PodInfo::new(Arc::clone(&pod), self.priority(&pod)));
        let span = info_span!("schedule", pod = key);
        let _entered = span.enter();
        match plan::schedule(&info, &self.snapshot) {
            Ok(node) => {
                debug!(node, "assumed");
                self.snapshot.place(info, &node);
                self.assumed.insert(key.to_string(), node.clone());
                tokio::spawn(
                    bind(
                        self.client.clone(),
                        self.recorder.clone(),
                        Arc::clone(&self.bindings),
                        pod,
                        node,
                        self.outcomes.clone(),
                    )
                    .instrument(span.clone()),
                );
            }
            Err(mut error) => {
                let preemption = plan::preempt(&info, &self.snapshot, &mut error);
                let message = error.to_string();
                debug!(%message, "unschedulable");
                self.queue
                    .failed(key, error.plugins(), tokio::time::Instant::now());
                tokio::spawn(
                    report_unschedulable(
                        self.client.clone(),
                        self.recorder.clone(),
                        pod,
                        message,
                        preemption,
                    )
                    .instrument(span.clone()),
                );
            }
        }
    }
}

/// Binds a pod through `pods/<name>/binding` and records the Scheduled event.
async fn bind(
    client: kube::Client,
    recorder: Recorder,
    permits: Arc<Semaphore>,
    pod: Arc<Pod>,
    node: String,
    outcomes: mpsc::UnboundedSender<Outcome>,
) {
    let key = pod_key(&pod);
    let Ok(_permit) = permits.acquire().await else {
        return;
    };
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client, &namespace);
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": namespace, "uid": pod.metadata.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    let result = api
        .create_subresource::<_, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &binding,
        )
        .await;
    match result {
        Ok(_) => {
            let _ = outcomes.send(Outcome::Bound { key: key.clone() });
            let event = KubeEvent {
                type_: EventType::Normal,
                reason: "Scheduled".into(),
                note: Some(format!("Successfully assigned {key} to {node}")),
                action: "Binding".into(),
                secondary: None,
            };
            if let Err(err) = recorder.publish(&event, &pod.object_ref(&())).await {
                debug!(error = %err, "recording the Scheduled event");
            }
        }
        Err(err) => {
            warn!(error = %err, node, "binding failed");
            let _ = outcomes.send(Outcome::BindFailed { key, node });
        }
    }
}

/// Sets `PodScheduled=False` with the reason and records FailedScheduling; carries out a
/// preemption plan (deletes the victims, nominates the node).
async fn report_unschedulable(
    client: kube::Client,
    recorder: Recorder,
    pod: Arc<Pod>,
    message: String,
    preemption: Option<plan::Preemption>,
) {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let current = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
    let unchanged = current.is_some_and(|c| {
        c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
            && c.message.as_deref() == Some(message.as_str())
    });
    let nominated = preemption.as_ref().map(|p| p.node.clone());
    if !unchanged || nominated.is_some() {
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let mut status = json!({"status": {"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": message, "lastProbeTime": null, "lastTransitionTime": now,
        }]}});
        if let Some(node) = &nominated {
            status["status"]["nominatedNodeName"] = json!(node);
        }
        if let Err(err) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(status))
            .await
        {
            debug!(error = %err, "setting PodScheduled=False");
        }
    }
    let event = KubeEvent {
        type_: EventType::Warning,
        reason: "FailedScheduling".into(),
        note: Some(message),
        action: "Scheduling".into(),
        secondary: None,
    };
    if let Err(err) = recorder.publish(&event, &pod.object_ref(&())).await {
        debug!(error = %err, "recording the FailedScheduling event");
    }
    let Some(plan) = preemption else {
        return;
    };
    for victim in &plan.victims {
        let Some((namespace, name)) = victim.split_once('/') else {
            continue;
        };
        let victims: Api<Pod> = Api::namespaced(client.clone(), namespace);
        info!(victim, node = plan.node, "preempting");
        if let Ok(victim_pod) = victims.get(name).await {
            let event = KubeEvent {
                type_: EventType::Normal,
                reason: "Preempted".into(),
                note: Some(format!(
                    "Preempted by pod {} on node {}",
                    pod.metadata.uid.as_deref().unwrap_or(""),
                    plan.node
                )),
                action: "Preempting".into(),
                secondary: None,
            };
            let _ = recorder.publish(&event, &victim_pod.object_ref(&())).await;
        }
        if let Err(err) = victims.delete(name, &DeleteParams::default()).await {
            warn!(error = %err, victim, "deleting a preemption victim");
        }
    }
}
