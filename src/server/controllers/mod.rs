//! The controller manager: every control loop of the cluster, one module per loop, each an
//! ordinary API client (a `kube::Client`, in-process inside `cluster server`) that never reads
//! the store.
//!
//! Owns starting the loops (while this server is the elected leader) and what they share: the
//! client, the cluster settings and an event recorder. Each loop is a tokio task with a
//! cancellation token and a tracing span, and reconciles level-triggered and idempotently.

pub mod endpoints;
pub mod endpointslice;
pub mod garbage_collector;
pub mod kubernetes_service;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod podgc;
pub mod resync;
pub mod serviceaccount;

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::events::{Recorder, Reporter};
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
    ]
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
