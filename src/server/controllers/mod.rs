//! The controller manager: every control loop of the cluster, one module per loop, each an
//! ordinary API client (a `kube::Client`, in-process inside `cluster server`) that never reads
//! the store.
//!
//! Owns starting the loops (while this server is the elected leader) and what they share: the
//! client, the cluster settings and an event recorder. Each loop is a tokio task with a
//! cancellation token and a tracing span, and reconciles level-triggered and idempotently.

pub mod controller_ref;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
pub mod garbage_collector;
pub mod history;
pub mod job;
pub mod kubernetes_service;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod podgc;
pub mod replicaset;
pub mod resync;
pub mod serviceaccount;
pub mod statefulset;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::runtime::events::{Recorder, Reporter};
use kube::Resource;
use tokio_util::sync::CancellationToken;
use tracing::{info_span, Instrument};

/// Cluster settings the loops need.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Range of Service cluster IPs, e.g. 10.43.0.0/16.
    pub service_cidr: String,
    /// Range the nodes' pod CIDRs are cut from, e.g. 10.42.0.0/16.
    pub cluster_cidr: String,
    /// How long a node's Lease may go unrenewed before the node is Unknown.
    pub node_monitor_grace_period: Duration,
    /// Terminated pods kept before pod GC deletes the oldest.
    pub terminated_pod_gc_threshold: usize,
    /// The cluster CA in PEM, published as the `kube-root-ca.crt` ConfigMap.
    pub ca_cert_pem: String,
    /// Addresses clients reach the API servers at (the `kubernetes` Service's endpoints).
    pub api_server_endpoints: Vec<std::net::SocketAddr>,
}

/// What every loop gets.
#[derive(Clone)]
pub struct Context {
    pub client: kube::Client,
    pub config: Arc<ControllerConfig>,
    /// Records Events the way Kubernetes' recorder does (series for repeats).
    pub recorder: Recorder,
}

impl Context {
    pub fn new(client: kube::Client, config: ControllerConfig) -> Context {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "kube-controller-manager".into(),
                instance: None,
            },
        );
        Context {
            client,
            config: Arc::new(config),
            recorder,
        }
    }
}

/// A control loop's entry point: runs until the token is cancelled.
pub type Loop = fn(Context, CancellationToken) -> futures::future::BoxFuture<'static, ()>;

/// Every loop, by name. Adding a controller is one line here.
pub fn loops() -> Vec<(&'static str, Loop)> {
    vec![
        ("kubernetes-service", kubernetes_service::start),
        ("endpoints", endpoints::start),
        ("endpointslice", endpointslice::start),
        ("serviceaccount", serviceaccount::start),
        ("namespace", namespace::start),
        ("garbage-collector", garbage_collector::start),
        ("node-lifecycle", node_lifecycle::start),
        ("node-ipam", node_ipam::start),
        ("podgc", podgc::start),
        ("job", job::run),
        ("cronjob", cronjob::run),
        ("replicaset", replicaset::run),
        ("deployment", deployment::run),
        ("daemonset", daemonset::run),
        ("statefulset", statefulset::run),
    ]
}

/// The controller reference a loop puts on the objects it creates for `owner`
/// (`controller: true`, `blockOwnerDeletion: true`).
pub fn controller_reference<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether `object` is controlled by the object with `uid`.
pub fn controlled_by(object: &impl Resource, uid: &str) -> bool {
    object
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// Renders a `matchLabels` map as a label selector string (`k=v,k2=v2`).
pub fn label_selector(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs every loop until `cancel`; returns when all have stopped.
pub async fn run(context: Context, cancel: CancellationToken) {
    let mut tasks = Vec::new();
    for (name, start) in loops() {
        let span = info_span!("controller", name);
        tasks.push(tokio::spawn(
            start(context.clone(), cancel.child_token()).instrument(span),
        ));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// Whether an API error is NotFound (the object is already gone).
pub fn not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

/// Records an Event about `object`; a failure to record is logged, never fatal.
pub async fn publish<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    object: &K,
    type_: kube::runtime::events::EventType,
    reason: &str,
    note: String,
) {
    let event = kube::runtime::events::Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: reason.into(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
        tracing::debug!(error = %err, "recording event");
    }
}

/// Whether a pod is available — Ready for at least `min_ready_seconds` at `now`
/// (`podutil.IsPodAvailable`) — and, when it is Ready but not yet available, how long until it is.
pub fn pod_available(
    pod: &k8s_openapi::api::core::v1::Pod,
    min_ready_seconds: i32,
    now: jiff::Timestamp,
) -> (bool, Option<Duration>) {
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready" && c.status == "True"));
    let Some(ready) = ready else {
        return (false, None);
    };
    if min_ready_seconds <= 0 {
        return (true, None);
    }
    let Some(since) = ready.last_transition_time.as_ref() else {
        return (false, None);
    };
    let wait = Duration::from_secs(u64::try_from(min_ready_seconds).unwrap_or(0));
    let elapsed = now
        .duration_since(since.0)
        .try_into()
        .unwrap_or(Duration::ZERO);
    if elapsed >= wait {
        (true, None)
    } else {
        (false, Some(wait - elapsed))
    }
}
