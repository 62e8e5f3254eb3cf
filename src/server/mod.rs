//! The control plane: `cluster server`.
//!
//! [`run`] takes a resolved [`ServerConfig`] and a shutdown token and owns the server's
//! lifetime: it opens the store (embedded sled under `<data-dir>/server/db`, or an external
//! etcd), starts the store's background tasks, and on shutdown stops them and closes the store
//! within a bounded drain. It must not read flags or the environment (that is
//! [`crate::config`]'s job) and must not touch the data plane.
//!
//! # Caveats
//! - Only the store runs so far; the API server, controllers and scheduler are not wired in yet.

pub mod store;

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{Datastore, ServerConfig};
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
}

/// Runs the control plane until `shutdown` is cancelled, then shuts it down cleanly.
pub async fn run(config: ServerConfig, shutdown: CancellationToken) -> Result<(), ServerError> {
    debug!(?config, "resolved configuration");
    info!(
        data_dir = %config.data_dir.root().display(),
        datastore = datastore_name(&config.datastore),
        "starting server"
    );
    match config.datastore {
        Datastore::Embedded => run_embedded(config.data_dir.server_db(), shutdown).await,
        Datastore::Etcd {
            endpoints,
            ca_file,
            cert_file,
            key_file,
        } => {
            let options = EtcdOptions {
                endpoints,
                ca_file,
                cert_file,
                key_file,
            };
            run_etcd(options, shutdown).await
        }
    }
}

fn datastore_name(datastore: &Datastore) -> &'static str {
    match datastore {
        Datastore::Embedded => "embedded",
        Datastore::Etcd { .. } => "etcd",
    }
}

async fn run_embedded(path: PathBuf, shutdown: CancellationToken) -> Result<(), ServerError> {
    if let Some(parent) = path.parent() {
        create_private_dir(parent).map_err(|source| ServerError::DataDir {
            path: parent.display().to_string(),
            source,
        })?;
    }
    let open_path = path.clone();
    let store =
        tokio::task::spawn_blocking(move || SledStore::open(&open_path, SledOptions::default()))
            .await
            .map_err(|err| ServerError::Task(err.to_string()))?
            .map_err(|source| ServerError::OpenStore {
                path: path.display().to_string(),
                source,
            })?;

    let tasks = shutdown.child_token();
    let compactor = store.run_compactor(tasks.clone());
    let served = serve(&store, &shutdown).await;

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

async fn run_etcd(options: EtcdOptions, shutdown: CancellationToken) -> Result<(), ServerError> {
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
    let served = serve(&store, &shutdown).await;
    info!("shutting down");
    served
}

/// What the server does while it runs: for now, report the store's state and wait.
async fn serve(store: &dyn Store, shutdown: &CancellationToken) -> Result<(), ServerError> {
    let revision = store.current_revision().await.map_err(ServerError::Store)?;
    info!(revision, "server running");
    shutdown.cancelled().await;
    Ok(())
}

/// Creates `path` (and its parents) readable by its owner only.
fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}
