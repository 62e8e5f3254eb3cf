//! The control plane: `cluster server`.
//!
//! [`run`] takes a resolved [`ServerConfig`] and a shutdown token and owns the server's
//! lifetime: it opens the store (embedded sled under `<data-dir>/server/db`, or an external
//! etcd), starts the store's background tasks, and on shutdown stops them and closes the store
//! within a bounded drain. It must not read flags or the environment (that is
//! [`crate::config`]'s job) and must not touch the data plane.
//!
//! # Caveats
//! - The store, the API server, the leader-elected controller manager and the leader-elected
//!   scheduler run, and the embedded agent unless `--disable-agent` ([`crate::agent`]: the
//!   server only starts it with an in-process client; it never touches containers itself).

pub mod apiserver;
pub mod controllers;
pub mod leader;
pub mod pki;
pub mod scheduler;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::{Datastore, ServerConfig};
use apiserver::authn::{TokenAuthenticator, UserInfo};
use apiserver::authz::SuperuserOnly;
use apiserver::ApiState;
use pki::{write_kubeconfig, Pki, PkiOptions};
use store::etcd::{EtcdOptions, EtcdStore};
use store::sled::{SledOptions, SledStore};
use store::{Store, StoreError};

/// How long background tasks get to stop once shutdown is asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the server could not start or stop cleanly. None of these is retryable by the server
/// itself; the process exits and its supervisor may restart it.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory could not be created.
    #[error("creating data directory {path}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The embedded store could not be opened.
    #[error("opening the store at {path}")]
    OpenStore {
        path: String,
        #[source]
        source: StoreError,
    },
    /// The external etcd could not be reached.
    #[error("connecting to etcd at {endpoints}")]
    ConnectEtcd {
        endpoints: String,
        #[source]
        source: StoreError,
    },
    /// A store operation failed while the server ran.
    #[error("store")]
    Store(#[source] StoreError),
    /// The store could not be flushed and closed on shutdown.
    #[error("closing the store")]
    CloseStore(#[source] StoreError),
    /// A blocking task (opening or closing the store) panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(String),
    /// The cluster's certificates could not be created or loaded.
    #[error("certificates")]
    Pki(#[source] pki::PkiError),
    /// The token file could not be read.
    #[error("token auth file")]
    Authn(#[source] apiserver::authn::AuthnError),
    /// The API server could not start.
    #[error("api server: {0}")]
    Api(apiserver::errors::ApiError),
    /// The API server's address could not be bound.
    #[error("listening on {address}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the control plane until `shutdown` is cancelled, then shuts it down cleanly.
pub async fn run(config: ServerConfig, shutdown: CancellationToken) -> Result<(), ServerError> {
    debug!(?config, "resolved configuration");
    info!(
        data_dir = %config.data_dir.root().display(),
        datastore = datastore_name(&config.datastore),
        "starting server"
    );
    create_private_dir(&config.data_dir.server()).map_err(|source| ServerError::DataDir {
        path: config.data_dir.server().display().to_string(),
        source,
    })?;
    match &config.datastore {
        Datastore::Embedded => run_embedded(&config, shutdown).await,
        Datastore::Etcd {
            endpoints,
            ca_file,
            cert_file,
            key_file,
        } => {
            let options = EtcdOptions {
                endpoints: endpoints.clone(),
                ca_file: ca_file.clone(),
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
            };
            run_etcd(&config, options, shutdown).await
        }
    }
}

fn datastore_name(datastore: &Datastore) -> &'static str {
    match datastore {
        Datastore::Embedded => "embedded",
        Datastore::Etcd { .. } => "etcd",
    }
}

async fn run_embedded(
    config: &ServerConfig,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let path = config.data_dir.server_db();
    let options = SledOptions {
        history_window: config.history.window,
        min_history_revisions: config.history.min_revisions,
        compaction_interval: config.history.compaction_interval,
        ..SledOptions::default()
    };
    let open_path = path.clone();
    let store = tokio::task::spawn_blocking(move || SledStore::open(&open_path, options))
        .await
        .map_err(|err| ServerError::Task(err.to_string()))?
        .map_err(|source| ServerError::OpenStore {
            path: path.display().to_string(),
            source,
        })?;

    let tasks = shutdown.child_token();
    let compactor = store.run_compactor(tasks.clone());
    let served = control_plane(config, Arc::new(store.clone()), shutdown.clone()).await;

    info!("shutting down");
    tasks.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, compactor)
        .await
        .is_err()
    {
        warn!(grace = ?SHUTDOWN_GRACE, "store compactor did not stop in time");
    }
    let closing = store.clone();
    tokio::task::spawn_blocking(move || closing.close())
        .await
        .map_err(|err| ServerError::Task(err.to_string()))?
        .map_err(ServerError::CloseStore)?;
    info!("store closed");
    served
}

async fn run_etcd(
    config: &ServerConfig,
    options: EtcdOptions,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let endpoints = options.endpoints.join(",");
    let store = tokio::select! {
        _ = shutdown.cancelled() => {
            info!("shut down while connecting to etcd");
            return Ok(());
        }
        connected = EtcdStore::connect(options) => {
            connected.map_err(|source| ServerError::ConnectEtcd { endpoints, source })?
        }
    };
    let served = control_plane(config, Arc::new(store), shutdown).await;
    info!("shutting down");
    served
}

/// The control plane proper, on an open store: certificates, the API server, the admin
/// kubeconfig; it returns once `shutdown` is cancelled and open connections have drained.
async fn control_plane(
    config: &ServerConfig,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let revision = store.current_revision().await.map_err(ServerError::Store)?;
    info!(revision, "store ready");
    let node_ips = if config.node_ips.is_empty() {
        default_route_address().into_iter().collect()
    } else {
        config.node_ips.clone()
    };
    let pki_options = PkiOptions {
        tls_dir: config.data_dir.server().join("tls"),
        sans: config.tls_sans.clone(),
        cluster_domain: config.cluster_domain.clone(),
        service_ip: config.kubernetes_service_ip,
        node_ips: node_ips.clone(),
        hostname: hostname(),
    };
    let pki = tokio::task::spawn_blocking(move || Pki::load_or_create(&pki_options))
        .await
        .map_err(|err| ServerError::Task(err.to_string()))?
        .map_err(ServerError::Pki)?;
    let tokens = match &config.token_auth_file {
        Some(path) => TokenAuthenticator::load(path).map_err(ServerError::Authn)?,
        None => TokenAuthenticator::empty(),
    };
    let listener = apiserver::bind(config.listen)
        .await
        .map_err(|source| ServerError::Listen {
            address: config.listen.to_string(),
            source,
        })?;
    let port = listener
        .local_addr()
        .map(|a| a.port())
        .unwrap_or(config.listen.port());
    let advertise = node_ips
        .first()
        .copied()
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    let state = ApiState::new(
        store,
        tokens,
        Box::new(SuperuserOnly),
        std::net::SocketAddr::new(advertise, port).to_string(),
    )
    .await
    .map_err(ServerError::Api)?;
    // pods/log, exec, port-forward and nodes/proxy dial kubelets with this certificate.
    state.set_kubelet_client_tls(pki.kubelet_client_tls_config().map_err(ServerError::Pki)?);
    if let Some(cidr) = apiserver::allocators::Cidr::parse(&config.service_cidr) {
        state.set_service_ranges(apiserver::allocators::ServiceRanges {
            cidr,
            node_ports: (30000, 32767),
        });
    } else {
        warn!(cidr = %config.service_cidr, "unusable service CIDR; using 10.43.0.0/16");
    }
    state
        .ensure_system_namespaces()
        .await
        .map_err(ServerError::Api)?;
    let loops = start_control_loops(config, &state, &pki, port, advertise, &shutdown);
    let scheduler = start_scheduler(&state, &shutdown);
    let agent = start_agent(config, &state, &pki, &node_ips, &shutdown);
    let tls = pki.server_tls_config().map_err(ServerError::Pki)?;
    let kubeconfig = pki.admin_kubeconfig(&format!("https://127.0.0.1:{port}"));
    write_kubeconfig(
        &config.write_kubeconfig,
        &kubeconfig,
        config.write_kubeconfig_mode,
    )
    .map_err(ServerError::Pki)?;
    info!(path = %config.write_kubeconfig.display(), "wrote the admin kubeconfig");
    apiserver::serve(state, listener, tls, shutdown).await;
    // The loops stop (and give up their leases) before the store closes.
    if tokio::time::timeout(SHUTDOWN_GRACE, loops).await.is_err() {
        warn!(grace = ?SHUTDOWN_GRACE, "control loops did not stop in time");
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, scheduler)
        .await
        .is_err()
    {
        warn!(grace = ?SHUTDOWN_GRACE, "the scheduler did not stop in time");
    }
    if let Some(agent) = agent {
        if tokio::time::timeout(SHUTDOWN_GRACE, agent).await.is_err() {
            warn!(grace = ?SHUTDOWN_GRACE, "the agent did not stop in time");
        }
    }
    Ok(())
}

/// Starts the embedded agent (unless `--disable-agent`) on an in-process client acting as the
/// node (`system:node:<name>`). An agent that cannot start is logged; the control plane keeps
/// serving.
fn start_agent(
    config: &ServerConfig,
    state: &Arc<ApiState>,
    pki: &Pki,
    node_ips: &[std::net::IpAddr],
    shutdown: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let node = config.agent.clone()?;
    // The kubelet API's serving certificate; without it the node runs pods but serves no
    // logs/exec/port-forward.
    let kubelet_tls = match pki.kubelet_server_tls_config(&node.node_name, node_ips) {
        Ok(tls) => Some(tls),
        Err(err) => {
            tracing::error!(error = %err, "no kubelet serving certificate: the kubelet API stays off");
            None
        }
    };
    let user = UserInfo {
        name: format!("system:node:{}", node.node_name),
        // RBAC does not exist yet: the node is also a superuser until the Node authorizer does.
        groups: vec![
            "system:nodes".into(),
            "system:masters".into(),
            "system:authenticated".into(),
        ],
        uid: None,
    };
    let client = apiserver::in_process_client(Arc::clone(state), user);
    let token = shutdown.child_token();
    let span = info_span!("agent", node = %node.node_name);
    Some(tokio::spawn(
        async move {
            if let Err(err) = crate::agent::run_embedded(node, client, kubelet_tls, token).await {
                tracing::error!(error = %err, "the embedded agent failed; this server runs no pods (use --disable-agent to run only the control plane)");
            }
        }
        .instrument(span),
    ))
}

/// Starts the leader-elected control loops on an in-process client of the API server.
fn start_control_loops(
    config: &ServerConfig,
    state: &Arc<ApiState>,
    pki: &Pki,
    port: u16,
    advertise: std::net::IpAddr,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let user = UserInfo {
        name: "system:kube-controller-manager".into(),
        groups: vec!["system:masters".into(), "system:authenticated".into()],
        uid: None,
    };
    let client = apiserver::in_process_client(Arc::clone(state), user);
    let identity = format!("{}_{}", hostname(), uuid::Uuid::new_v4());
    let context = controllers::Context::new(
        client.clone(),
        controllers::ControllerConfig {
            service_cidr: config.service_cidr.clone(),
            cluster_cidr: config.cluster_cidr.clone(),
            node_monitor_grace_period: config.node_monitor_grace_period,
            terminated_pod_gc_threshold: config.terminated_pod_gc_threshold,
            ca_cert_pem: pki.ca_cert_pem.clone(),
            api_server_endpoints: vec![std::net::SocketAddr::new(advertise, port)],
        },
    );
    let token = shutdown.child_token();
    tokio::spawn(async move {
        leader::run(
            client,
            "kube-controller-manager",
            &identity,
            leader::Timings::default(),
            token,
            move |leading| {
                let context = context.clone();
                async move { controllers::run(context, leading).await }
            },
        )
        .await
    })
}

/// Starts the leader-elected scheduler (Lease `kube-system/kube-scheduler`) on an in-process
/// client of the API server.
fn start_scheduler(
    state: &Arc<ApiState>,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let user = UserInfo {
        name: "system:kube-scheduler".into(),
        groups: vec!["system:masters".into(), "system:authenticated".into()],
        uid: None,
    };
    let client = apiserver::in_process_client(Arc::clone(state), user);
    let identity = format!("{}_{}", hostname(), uuid::Uuid::new_v4());
    let token = shutdown.child_token();
    tokio::spawn(async move {
        let work_client = client.clone();
        let work_identity = identity.clone();
        leader::run(
            client,
            "kube-scheduler",
            &identity,
            leader::Timings::default(),
            token,
            move |leading| {
                scheduler::run(work_client.clone(), work_identity.clone(), leading)
                    .instrument(info_span!("scheduler"))
            },
        )
        .await
    })
}

/// The host name, as the kernel knows it.
fn hostname() -> String {
    crate::config::hostname()
}

/// The source address of the default route. Connecting a UDP socket only asks the kernel for a
/// route; no packet is sent.
pub fn default_route_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let address = socket.local_addr().ok()?.ip();
    (!address.is_unspecified()).then_some(address)
}

/// Creates `path` (and its parents) readable by its owner only.
fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}
