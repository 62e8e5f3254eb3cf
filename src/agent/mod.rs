//! The data plane: the node an agent makes of this machine.
//!
//! [`run_embedded`] is the agent inside `cluster server` (on by default, off with
//! `--disable-agent`): a linear start-up — container runtime, images (airgap archives
//! imported), pod network, then the [`kubelet`] (register the node, lease, pods) — on an
//! in-process API client. The standalone `cluster agent` that joins a remote server is not
//! built yet: [`run`] says so instead of pretending.
//!
//! The data plane talks to the API like any client and must never reach the store.

pub mod kubelet;
pub mod network;
pub mod runtime;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{AgentConfig, NodeConfig};
use runtime::container::{Runtime, RuntimeConfig, RuntimeError};
use runtime::image::registries::{Registries, RegistriesError};
use runtime::image::{ImageError, ImageService, ImageServiceConfig};

/// Why the agent cannot run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Joining a remote server is not built yet.
    #[error("`cluster agent` (joining a node to a remote server) is not available in this build yet; `cluster server` runs a node of its own unless --disable-agent")]
    NotAvailable,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("container runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("images: {0}")]
    Images(#[from] ImageError),
    #[error("registries: {0}")]
    Registries(#[from] RegistriesError),
    #[error("kubelet: {0}")]
    Kubelet(#[from] kubelet::KubeletError),
    #[error("pod network: {0}")]
    Network(#[from] network::NetworkError),
}

/// Runs the standalone agent. In this build it always fails with [`AgentError::NotAvailable`].
pub fn run(config: &AgentConfig) -> Result<(), AgentError> {
    tracing::debug!(server = %config.server_url, "agent requested");
    Err(AgentError::NotAvailable)
}

fn create_dir(path: &std::path::Path) -> Result<(), AgentError> {
    std::fs::create_dir_all(path).map_err(|source| AgentError::Io {
        what: format!("creating {}", path.display()),
        source,
    })
}

/// Runs the node on `client` (an API client acting as `system:node:<name>`) until `shutdown`.
/// Containers keep running when it stops.
pub async fn run_embedded(
    config: NodeConfig,
    client: kube::Client,
    kubelet_tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    info!(node = %config.node_name, "starting agent");
    let data = &config.data_dir;
    for dir in [data.agent(), data.agent_pods(), config.pod_logs_dir.clone()] {
        create_dir(&dir)?;
    }
    let runtime_config = RuntimeConfig::new(
        config.run_dir.join("containers"),
        config.pod_logs_dir.clone(),
    )
    .map_err(|source| AgentError::Io {
        what: "finding the cluster binary for the shim".into(),
        source,
    })?;
    let runtime = Runtime::new(runtime_config)?;
    let registries = Registries::load(&config.private_registry, false)?;
    let images = ImageService::open(ImageServiceConfig::new(&data.agent_runtime(), registries))?;
    images.recover()?;
    if data.agent_images().is_dir() {
        let (imported, failures) = images.import_dir(&data.agent_images()).await?;
        info!(
            images = imported.len(),
            failed = failures.len(),
            "airgap images imported"
        );
    }
    let node_ips = if config.node_ips.is_empty() {
        crate::server::default_route_address().into_iter().collect()
    } else {
        config.node_ips.clone()
    };
    if node_ips.is_empty() {
        warn!("no --node-ip and no default route: the node has no InternalIP");
    }
    if let Some(tls) = kubelet_tls {
        let server_config = kubelet::server::KubeletServerConfig {
            listen: std::net::SocketAddr::from(([0, 0, 0, 0], config.kubelet_port)),
            tls,
        };
        let api_runtime = runtime.clone();
        let api_shutdown = shutdown.child_token();
        tokio::spawn(async move {
            if let Err(err) = kubelet::server::serve(server_config, api_runtime, api_shutdown).await
            {
                tracing::error!(error = %err, "the kubelet API stopped");
            }
        });
    }
    kubelet::image_gc::spawn(
        images.clone(),
        runtime.clone(),
        crate::agent::runtime::image::gc::GcPolicy::default(),
        kubelet::image_gc::PERIOD,
        shutdown.child_token(),
    );
    let volumes = kubelet::volumes::VolumeManager::new(client.clone(), data.agent_pods());
    let kubelet = kubelet::Kubelet {
        volumes,
        client,
        config: Arc::new(kubelet::KubeletConfig {
            node_name: config.node_name.clone(),
            node_ips,
            labels: config.labels.clone(),
            taints: config.taints.clone(),
            kubelet_port: config.kubelet_port,
            pods_root: data.agent_pods(),
            pod_logs_dir: config.pod_logs_dir.clone(),
            data_dir: data.root().to_path_buf(),
            cluster_dns: config.cluster_dns,
            cluster_domain: config.cluster_domain.clone(),
            cluster_cidr: config.cluster_cidr.clone(),
            control_plane: config.control_plane,
            eviction_hard: config.eviction_hard.clone(),
            reserved: config.reserved,
        }),
        runtime,
        images,
        network: Some(Arc::new(network::PodNetwork::new(
            network::NetworkConfig {
                state_dir: data.agent_network(),
                bridge: "cluster0".into(),
                nft_table: "cluster-nat".into(),
            },
        )?)),
        network_ready: Arc::new(AtomicBool::new(false)),
    };
    kubelet::run(kubelet, shutdown).await?;
    info!("agent stopped");
    Ok(())
}
