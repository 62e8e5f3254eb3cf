//! The kubelet: makes this machine a Node and runs the pods bound to it.
//!
//! [`run`] is a linear sequence, as the kubelet's start-up is: register the Node ([`node`]),
//! start the Lease heartbeat ([`lease`]) and the node status loop, wait for the node's
//! `spec.podCIDR` and configure the pod network with it, then watch the pods bound to this node
//! ([`pods`]), one worker per pod ([`pod_worker`]). A pod worker builds the pod's sandbox
//! ([`sandbox`]: cgroup, network, generated `/etc` files), runs its containers through the
//! runtime with restart back-off ([`backoff`]) and writes `pods/status` ([`status`]).
//! [`server`] is the kubelet API on `--kubelet-port` (logs, exec, port-forward, stats) that
//! the API server proxies to; the agent starts it beside [`run`].
//!
//! The kubelet talks to the API only through its `kube::Client` (never the store), and to
//! containers only through [`crate::agent::runtime`]. It must not touch the pod network's
//! internals (bridge, veths, IPAM): those belong to [`crate::agent::network`], called through
//! [`sandbox::PodNetworking`].
//!
//! # Guarantees
//! - Stopping the kubelet (agent shutdown) leaves containers running; a new kubelet on the same
//!   run directory adopts them ([`pods`] lists the runtime's containers at start).
//! - Every loop runs under the shutdown token it was given and a span naming what it works on.

pub mod backoff;
pub mod env;
pub mod eviction;
pub mod hooks;
pub mod image_gc;
pub mod lease;
pub mod node;
pub mod pod_worker;
pub mod pods;
pub mod probes;
pub mod sandbox;
pub mod server;
pub mod status;
pub mod volumes;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument as _};

use crate::agent::runtime::container::Runtime;
use crate::agent::runtime::image::ImageService;
use crate::config::NodeTaint;

/// What the kubelet needs to know about its node (resolved by the agent).
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    pub node_name: String,
    /// The node's addresses; the first is its InternalIP.
    pub node_ips: Vec<IpAddr>,
    pub labels: Vec<(String, String)>,
    pub taints: Vec<NodeTaint>,
    pub kubelet_port: u16,
    /// `<data-dir>/agent/pods`: one directory per pod uid.
    pub pods_root: PathBuf,
    /// `--pod-logs-dir`: `<namespace>_<pod>_<uid>/` per pod.
    pub pod_logs_dir: PathBuf,
    /// The directory whose file system is the node's ephemeral storage.
    pub data_dir: PathBuf,
    pub cluster_dns: IpAddr,
    pub cluster_domain: String,
    pub cluster_cidr: String,
    pub control_plane: bool,
    /// `--eviction-hard`: the pressure conditions and the part of capacity kept from pods.
    pub eviction_hard: Vec<eviction::Threshold>,
    /// `--kube-reserved` plus `--system-reserved`.
    pub reserved: eviction::Reserved,
}

/// Why the kubelet failed. API and runtime errors inside loops are logged and retried; these
/// end [`run`].
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("registering node {node}: {source}")]
    Register {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("runtime: {0}")]
    Runtime(#[from] crate::agent::runtime::container::RuntimeError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Everything a kubelet loop needs; cheap to clone.
#[derive(Clone)]
pub struct Kubelet {
    pub client: kube::Client,
    pub config: Arc<KubeletConfig>,
    pub runtime: Runtime,
    pub images: ImageService,
    /// The pods' volumes (configMaps, secrets, emptyDirs, …).
    pub volumes: volumes::VolumeManager,
    /// The pod network; `None` runs every pod without one (only hostNetwork pods get a network).
    pub network: Option<Arc<dyn sandbox::PodNetworking>>,
    /// Set once the pod network is configured: the node is Ready from then on.
    pub network_ready: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet")
            .field("node", &self.config.node_name)
            .finish_non_exhaustive()
    }
}

impl Kubelet {
    /// The node's InternalIP (the pods' hostIP).
    pub fn host_ip(&self) -> IpAddr {
        self.config
            .node_ips
            .first()
            .copied()
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
    }
}

/// Runs the kubelet until `shutdown` is cancelled.
pub async fn run(kubelet: Kubelet, shutdown: CancellationToken) -> Result<(), KubeletError> {
    let node_name = kubelet.config.node_name.clone();
    info!(node = %node_name, "registering node");
    node::register(&kubelet, &shutdown).await?;
    if shutdown.is_cancelled() {
        return Ok(());
    }
    let tasks = shutdown.child_token();
    let lease = tokio::spawn(
        lease::run(kubelet.client.clone(), node_name.clone(), tasks.clone())
            .instrument(tracing::info_span!("node_lease", node = %node_name)),
    );
    let status = tokio::spawn(
        node::status_loop(kubelet.clone(), tasks.clone())
            .instrument(tracing::info_span!("node_status", node = %node_name)),
    );
    let network = tokio::spawn(
        configure_network(kubelet.clone(), tasks.clone())
            .instrument(tracing::info_span!("pod_network", node = %node_name)),
    );
    pods::run(kubelet.clone(), tasks.clone())
        .instrument(tracing::info_span!("pods", node = %node_name))
        .await;
    tasks.cancel();
    for (name, task) in [
        ("lease", lease),
        ("node status", status),
        ("network", network),
    ] {
        if let Err(err) = task.await {
            warn!(task = name, error = %err, "kubelet task failed");
        }
    }
    Ok(())
}

/// Waits for `spec.podCIDR` and configures the pod network with it; the node turns Ready then.
async fn configure_network(kubelet: Kubelet, shutdown: CancellationToken) {
    let Some(cidr) = node::wait_for_pod_cidr(&kubelet, &shutdown).await else {
        return;
    };
    let Some(network) = kubelet.network.clone() else {
        info!(pod_cidr = %cidr, "no pod network in this build; pods without hostNetwork get no IP");
        kubelet
            .network_ready
            .store(true, std::sync::atomic::Ordering::SeqCst);
        return;
    };
    let mut delay = std::time::Duration::from_secs(1);
    loop {
        match network.configure(&cidr, &kubelet.config.cluster_cidr).await {
            Ok(()) => {
                info!(pod_cidr = %cidr, "pod network configured");
                kubelet
                    .network_ready
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                return;
            }
            Err(err) => warn!(pod_cidr = %cidr, error = %err, "configuring the pod network"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(30));
    }
}
