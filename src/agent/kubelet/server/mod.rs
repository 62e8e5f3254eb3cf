//! The kubelet API (`:10250`, TLS): what the API server calls to reach a node's pods.
//!
//! Owns the HTTPS listener and its endpoints: `/healthz`, `/containerLogs/{ns}/{pod}/{container}`
//! ([`logs`]), `/exec/…` and `/attach/…` over WebSocket ([`exec`]), `/portForward/{ns}/{pod}`
//! over WebSocket ([`portforward`]) and `/stats/summary` ([`stats`]).
//!
//! Who may call it: only clients presenting a certificate from the cluster CA (the TLS layer
//! verifies the chain) whose subject is the API server's kubelet client
//! (`CN=kube-apiserver-kubelet-client`) or a member of `system:masters`. No certificate is 401,
//! another identity 403, as the kubelet's webhook authorizer would answer for an unbound user.
//!
//! It finds containers only through [`Runtime::list`] (pod namespace, name and container name;
//! the highest attempt is the current container) and pod network namespaces only through
//! [`crate::agent::network::netns_path`]. It must not create, start or stop containers, and it
//! never talks to the API server.

pub mod exec;
pub mod logs;
pub mod portforward;
pub mod stats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::agent::runtime::container::{ContainerStatus, Runtime, RuntimeError};
use crate::server::apiserver::authn::{peer_user, UserInfo};

/// User name of the API server's client certificate (as kubeadm issues it).
pub const APISERVER_CLIENT_USER: &str = "kube-apiserver-kubelet-client";
/// Group whose members may call the kubelet API.
pub const MASTERS_GROUP: &str = "system:masters";

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections (log follows, exec sessions) get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Where the kubelet API listens and with which certificates.
#[derive(Debug, Clone)]
pub struct KubeletServerConfig {
    /// `0.0.0.0:<--kubelet-port>`, 10250 by default.
    pub listen: SocketAddr,
    /// Serving certificate + client-certificate verification against the cluster CA
    /// ([`crate::server::pki::Pki::kubelet_server_tls_config`]).
    pub tls: Arc<rustls::ServerConfig>,
}

/// Why the kubelet API could not serve.
#[derive(Debug, thiserror::Error)]
pub enum KubeletServerError {
    /// The listening socket could not be bound.
    #[error("bind the kubelet API on {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Everything handlers share.
#[derive(Clone)]
pub(crate) struct ServerState {
    pub runtime: Runtime,
    pub shutdown: CancellationToken,
}

/// The identity the TLS layer established for a connection.
#[derive(Clone, Debug, Default)]
struct Caller(Option<UserInfo>);

/// Serves the kubelet API on `config.listen` until `shutdown`.
pub async fn serve(
    config: KubeletServerConfig,
    runtime: Runtime,
    shutdown: CancellationToken,
) -> Result<(), KubeletServerError> {
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| KubeletServerError::Bind {
                address: config.listen,
                source,
            })?;
    serve_on(listener, config.tls, runtime, shutdown).await;
    Ok(())
}

/// Serves the kubelet API on an already bound listener (tests bind port 0) until `shutdown`.
pub async fn serve_on(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    runtime: Runtime,
    shutdown: CancellationToken,
) {
    let span = info_span!("kubelet_api");
    async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let app = router(ServerState {
            runtime,
            shutdown: shutdown.clone(),
        });
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "kubelet API listening");
        }
        loop {
            let (stream, remote) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        warn!(error = %err, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            let watcher = graceful.watcher();
            tokio::spawn(
                async move {
                    let tls_stream =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                        {
                            Ok(Ok(tls_stream)) => tls_stream,
                            Ok(Err(err)) => {
                                debug!(error = %err, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                debug!("TLS handshake timed out");
                                return;
                            }
                        };
                    let caller = Caller(peer_user(tls_stream.get_ref().1));
                    let service = tower::ServiceExt::map_request(
                        app,
                        move |mut request: axum::http::Request<hyper::body::Incoming>| {
                            request.extensions_mut().insert(caller.clone());
                            request
                        },
                    );
                    let service = hyper_util::service::TowerToHyperService::new(service);
                    let builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    let connection = builder.serve_connection_with_upgrades(
                        hyper_util::rt::TokioIo::new(tls_stream),
                        service,
                    );
                    if let Err(err) = watcher.watch(connection.into_owned()).await {
                        debug!(error = %err, "connection ended with an error");
                    }
                }
                .instrument(info_span!("connection", %remote)),
            );
        }
        drop(listener);
        tokio::select! {
            _ = graceful.shutdown() => info!("kubelet API connections drained"),
            _ = tokio::time::sleep(SHUTDOWN_GRACE) => info!("kubelet API shut down with connections still open"),
        }
    }
    .instrument(span)
    .await
}

fn router(state: ServerState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(logs::container_logs),
        )
        .route(
            "/exec/{namespace}/{pod}/{container}",
            get(exec::exec).post(exec::exec),
        )
        .route(
            "/attach/{namespace}/{pod}/{container}",
            get(exec::attach).post(exec::attach),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            get(portforward::port_forward).post(portforward::port_forward),
        )
        .route("/stats/summary", get(stats::summary))
        .fallback(not_found)
        .layer(middleware::from_fn(authorize))
        .with_state(state)
}

/// Lets only the API server and `system:masters` through.
async fn authorize(request: Request, next: Next) -> Response {
    let caller = request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_default();
    match caller.0 {
        None => status_response(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized"),
        Some(user) if user.name == APISERVER_CLIENT_USER || user.in_group(MASTERS_GROUP) => {
            next.run(request).await
        }
        Some(user) => {
            let path = request.uri().path().to_string();
            status_response(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!(
                    "Forbidden (user={}, verb={}, path={path})",
                    user.name,
                    request.method().as_str().to_ascii_lowercase()
                ),
            )
        }
    }
}

async fn healthz() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "ok",
    )
        .into_response()
}

async fn not_found() -> Response {
    status_response(StatusCode::NOT_FOUND, "NotFound", "404 page not found")
}

/// A Kubernetes `Status` body with `code`.
pub(crate) fn status_response(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body.to_string()),
    )
        .into_response()
}

/// Errors of finding a pod's containers.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LookupError {
    #[error("container {container:?} in pod {namespace}/{pod} not found")]
    NotFound {
        namespace: String,
        pod: String,
        container: String,
    },
    #[error("previous terminated container {container:?} in pod {pod:?} not found")]
    NoPrevious { pod: String, container: String },
    #[error("pod {namespace}/{pod} not found")]
    PodNotFound { namespace: String, pod: String },
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
}

impl LookupError {
    pub(crate) fn into_response(self) -> Response {
        match &self {
            LookupError::Runtime(_) => status_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                &self.to_string(),
            ),
            LookupError::NoPrevious { .. } => {
                status_response(StatusCode::BAD_REQUEST, "BadRequest", &self.to_string())
            }
            _ => status_response(StatusCode::NOT_FOUND, "NotFound", &self.to_string()),
        }
    }
}

/// The instances of one container of a pod, newest pod incarnation only, oldest attempt first.
pub(crate) async fn container_instances(
    runtime: &Runtime,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<Vec<ContainerStatus>, LookupError> {
    let all = runtime.list().await?;
    let mut mine: Vec<ContainerStatus> = all
        .into_iter()
        .filter(|c| c.pod.namespace == namespace && c.pod.name == pod && c.name == container)
        .collect();
    // A pod deleted and created again under the same name has a new uid: keep the newest.
    let newest_uid = mine
        .iter()
        .max_by(|a, b| a.created_at.cmp(&b.created_at))
        .map(|c| c.pod.uid.clone());
    mine.retain(|c| Some(&c.pod.uid) == newest_uid.as_ref());
    mine.sort_by(|a, b| {
        a.attempt
            .cmp(&b.attempt)
            .then(a.created_at.cmp(&b.created_at))
    });
    if mine.is_empty() {
        return Err(LookupError::NotFound {
            namespace: namespace.into(),
            pod: pod.into(),
            container: container.into(),
        });
    }
    Ok(mine)
}

/// The current (highest attempt) instance of a container.
pub(crate) async fn current_container(
    runtime: &Runtime,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<ContainerStatus, LookupError> {
    let mut instances = container_instances(runtime, namespace, pod, container).await?;
    instances.pop().ok_or_else(|| LookupError::NotFound {
        namespace: namespace.into(),
        pod: pod.into(),
        container: container.into(),
    })
}
