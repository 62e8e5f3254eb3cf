//! `/portForward/{namespace}/{pod}`: the kubelet's port forwarding, in the three protocols
//! that reach it through the API server's `pods/portforward`:
//! - `SPDY/3.1+portforward.k8s.io`, SPDY tunnelled in a WebSocket, as `kubectl port-forward`
//!   1.31 and newer speaks it ([`tunnel`], framing in [`spdy`]): the client opens a pair of
//!   streams per connection and names the port in their headers.
//! - plain SPDY: an HTTP `Upgrade: SPDY/3.1` with `X-Stream-Protocol-Version:
//!   portforward.k8s.io` (kubectl 1.30 and older), then the same SPDY session on the
//!   connection itself.
//! - `v4.channel.k8s.io`, the kubelet's WebSocket port forwarding, with `?port=P[&port=Q…]`
//!   (or `ports=`): for the i-th requested port, channel `2i` carries data and `2i+1` errors;
//!   the kubelet first sends the port (2 bytes, little endian) on both channels. Each port gets
//!   one TCP connection; the session ends when the client closes, or once every connection to
//!   the pod has ended.
//!
//! Anything else gets a 400 `Status` naming what works ([`PORT_FORWARD_UNSUPPORTED`]).
//!
//! Connections go to `127.0.0.1:<port>` inside the pod's network namespace
//! ([`crate::agent::network::netns_path`]): the socket is created by a short-lived std thread
//! that has joined that namespace, then handed to tokio.
//!
//! Owns only the sessions and their TCP connections; must not change the namespace.
//!
//! # Caveats
//! SPDY flow control is not enforced (the Go clients neither send nor honour WINDOW_UPDATE),
//! so one connection whose pod does not read stalls the others of its session, as with the
//! kubelet's spdystream. UDP is not forwarded, as in Kubernetes.

pub mod spdy;
mod tunnel;

use std::net::{Ipv4Addr, SocketAddr, TcpStream as StdTcpStream};
use std::os::fd::AsFd as _;
use std::path::PathBuf;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts as _, Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use futures::{SinkExt as _, StreamExt as _};
use hyper::upgrade::OnUpgrade;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tracing::{debug, info_span, Instrument};

use super::exec::{negotiate, PROTOCOL_V4};
use super::{status_response, LookupError, ServerState};
use crate::agent::network::netns_path;

/// How long connecting to a port inside the pod may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The message for clients that do not speak the WebSocket port-forward protocol.
pub const PORT_FORWARD_UNSUPPORTED: &str = "port-forward is served over WebSockets (subprotocols SPDY/3.1+portforward.k8s.io and v4.channel.k8s.io, kubectl 1.31 and newer) or an HTTP upgrade to SPDY/3.1 with X-Stream-Protocol-Version portforward.k8s.io (kubectl 1.30 and older)";

pub use tunnel::PROTOCOL_SPDY_TUNNEL;

/// The `Upgrade` token of plain SPDY.
const SPDY_UPGRADE: &str = "SPDY/3.1";
/// The stream protocol of SPDY port forwarding.
const PROTOCOL_SPDY_V1: &str = "portforward.k8s.io";
/// The header a SPDY client offers stream protocols in, and the server names its choice.
const STREAM_PROTOCOL_HEADER: &str = "x-stream-protocol-version";

/// Why a connection into the pod failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("open network namespace {path}: {source}")]
    Namespace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("enter network namespace {path}: {source}")]
    Enter {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to connect to localhost:{port} inside namespace {path}: {source}")]
    Connect {
        port: u16,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("connect thread failed")]
    Thread,
}

/// Connects to `127.0.0.1:port` inside the network namespace at `netns`.
pub async fn connect_in_netns(
    netns: PathBuf,
    port: u16,
) -> Result<tokio::net::TcpStream, ConnectError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("portforward-connect".into())
        .spawn(move || {
            let result = (|| {
                let ns = std::fs::File::open(&netns).map_err(|source| ConnectError::Namespace {
                    path: netns.clone(),
                    source,
                })?;
                // Only this thread moves; it ends right after connecting.
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(|e| ConnectError::Enter {
                    path: netns.clone(),
                    source: e.into(),
                })?;
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                let stream =
                    StdTcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|source| {
                        ConnectError::Connect {
                            port,
                            path: netns.clone(),
                            source,
                        }
                    })?;
                stream
                    .set_nonblocking(true)
                    .map_err(|source| ConnectError::Connect {
                        port,
                        path: netns.clone(),
                        source,
                    })?;
                Ok(stream)
            })();
            let _ = tx.send(result);
        })
        .map_err(|_| ConnectError::Thread)?;
    let stream = rx.await.map_err(|_| ConnectError::Thread)??;
    tokio::net::TcpStream::from_std(stream).map_err(|source| ConnectError::Connect {
        port,
        path: PathBuf::new(),
        source,
    })
}

/// The handler.
pub(crate) async fn port_forward(
    State(state): State<ServerState>,
    UrlPath((namespace, pod)): UrlPath<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
    request: Request,
) -> Response {
    let (mut parts, _body) = request.into_parts();
    if is_spdy_upgrade(&parts.headers) {
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return status_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the connection cannot be upgraded",
            );
        };
        return spdy_upgrade(state, namespace, pod, &parts.headers, on_upgrade).await;
    }
    let ws = WebSocketUpgrade::from_request_parts(&mut parts, &state).await;
    let (ws, protocol) = match negotiate(
        ws,
        &[PROTOCOL_SPDY_TUNNEL, PROTOCOL_V4],
        PORT_FORWARD_UNSUPPORTED,
    ) {
        Ok(ok) => ok,
        Err(response) => return *response,
    };
    if protocol == PROTOCOL_SPDY_TUNNEL {
        // The ports are named per stream; a `ports` query is only informative.
        let uid = match pod_uid(&state, &namespace, &pod).await {
            Ok(uid) => uid,
            Err(err) => return err.into_response(),
        };
        let span = info_span!("port_forward", %namespace, %pod, protocol = PROTOCOL_SPDY_TUNNEL);
        let target = format!("pod {namespace}/{pod}, uid {uid}");
        let shutdown = state.shutdown.clone();
        return ws.on_upgrade(move |socket| {
            tunnel::run(
                shutdown,
                netns_path(&uid),
                target,
                tunnel::Transport::WebSocket(Box::new(socket)),
            )
            .instrument(span)
        });
    }
    let mut ports = Vec::new();
    // The kubelet reads `port`; the API server's pods/portforward takes `ports` (a list, as
    // kubectl sends it): both are accepted, comma-separated values too.
    for (key, value) in &query {
        if key != "port" && key != "ports" {
            continue;
        }
        for value in value.split(',') {
            match value.trim().parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => {
                    return status_response(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &format!("invalid port {value:?}"),
                    )
                }
            }
        }
    }
    if ports.is_empty() {
        return status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "query parameter \"port\" is required",
        );
    }
    let uid = match pod_uid(&state, &namespace, &pod).await {
        Ok(uid) => uid,
        Err(err) => return err.into_response(),
    };
    let span = info_span!("port_forward", %namespace, %pod, ?ports);
    ws.on_upgrade(move |socket| {
        async move { run(state, netns_path(&uid), ports, socket).await }.instrument(span)
    })
}

/// An HTTP `Upgrade: SPDY/3.1` (what kubectl 1.30 and older send).
fn is_spdy_upgrade(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    has(header::UPGRADE, SPDY_UPGRADE) && has(header::CONNECTION, "upgrade")
}

/// Serves port forwarding on the upgraded connection itself, as the kubelet's SPDY port
/// forwarding: the client must offer `X-Stream-Protocol-Version: portforward.k8s.io`.
async fn spdy_upgrade(
    state: ServerState,
    namespace: String,
    pod: String,
    headers: &HeaderMap,
    on_upgrade: OnUpgrade,
) -> Response {
    let offered = headers
        .get_all(STREAM_PROTOCOL_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == PROTOCOL_SPDY_V1);
    if !offered {
        return status_response(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!("unable to upgrade: the client must offer {STREAM_PROTOCOL_HEADER}: {PROTOCOL_SPDY_V1}"),
        );
    }
    let uid = match pod_uid(&state, &namespace, &pod).await {
        Ok(uid) => uid,
        Err(err) => return err.into_response(),
    };
    let span = info_span!("port_forward", %namespace, %pod, protocol = SPDY_UPGRADE);
    let target = format!("pod {namespace}/{pod}, uid {uid}");
    let shutdown = state.shutdown.clone();
    tokio::spawn(
        async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    tunnel::run(
                        shutdown,
                        netns_path(&uid),
                        target,
                        tunnel::Transport::Upgraded(upgraded),
                    )
                    .await
                }
                Err(err) => debug!(error = %err, "port-forward: SPDY upgrade failed"),
            }
        }
        .instrument(span),
    );
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(SPDY_UPGRADE));
    headers.insert(
        STREAM_PROTOCOL_HEADER,
        HeaderValue::from_static(PROTOCOL_SPDY_V1),
    );
    response
}

async fn pod_uid(state: &ServerState, namespace: &str, pod: &str) -> Result<String, LookupError> {
    let all = state.runtime.list().await?;
    all.iter()
        .filter(|c| c.pod.namespace == namespace && c.pod.name == pod)
        .max_by(|a, b| a.created_at.cmp(&b.created_at))
        .map(|c| c.pod.uid.clone())
        .ok_or_else(|| LookupError::PodNotFound {
            namespace: namespace.into(),
            pod: pod.into(),
        })
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(channel);
    out.extend_from_slice(data);
    Message::Binary(Bytes::from(out))
}

async fn run(state: ServerState, netns: PathBuf, ports: Vec<u16>, socket: WebSocket) {
    let (mut sink, mut incoming) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(32);
    let mut to_pod: Vec<Option<mpsc::Sender<Bytes>>> = Vec::new();
    let mut relays = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let data = (2 * i) as u8;
        let error = data + 1;
        let prefix = port.to_le_bytes();
        if out_tx.send(frame(data, &prefix)).await.is_err()
            || out_tx.send(frame(error, &prefix)).await.is_err()
        {
            return;
        }
        let (in_tx, mut in_rx) = mpsc::channel::<Bytes>(32);
        to_pod.push(Some(in_tx));
        let tx = out_tx.clone();
        let netns = netns.clone();
        relays.push(tokio::spawn(async move {
            let stream = match connect_in_netns(netns, port).await {
                Ok(stream) => stream,
                Err(err) => {
                    debug!(port, error = %err, "port-forward connect failed");
                    let _ = tx
                        .send(frame(
                            error,
                            format!("error forwarding port {port} to pod: {err}").as_bytes(),
                        ))
                        .await;
                    return;
                }
            };
            let (mut read, mut write) = stream.into_split();
            let upstream = async {
                while let Some(bytes) = in_rx.recv().await {
                    if write.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                let _ = write.shutdown().await;
            };
            let downstream = async {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tx.send(frame(data, &buf[..n])).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            };
            // The pod closing its side ends the stream for this port.
            tokio::select! {
                _ = downstream => {}
                _ = async { upstream.await; std::future::pending::<()>().await } => {}
            }
        }));
    }
    drop(out_tx);
    let writer = tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            if sink.send(message).await.is_err() {
                break;
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    });
    let shutdown = state.shutdown.clone();
    let reader = tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => break,
                message = incoming.next() => message,
            };
            let data = match message {
                Some(Ok(Message::Binary(data))) => data,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => continue,
            };
            let Some((&channel, payload)) = data.split_first() else {
                continue;
            };
            if channel % 2 != 0 {
                continue;
            }
            let index = usize::from(channel / 2);
            if let Some(Some(tx)) = to_pod.get(index) {
                if tx.send(Bytes::copy_from_slice(payload)).await.is_err() {
                    to_pod[index] = None;
                }
            }
        }
    });
    let all_relays = futures::future::join_all(relays);
    tokio::pin!(all_relays);
    tokio::select! {
        _ = &mut all_relays => {}
        _ = state.shutdown.cancelled() => {}
    }
    reader.abort();
    let _ = writer.await;
}
