//! `/exec/{namespace}/{pod}/{container}` and `/attach/…` over WebSocket, with the channel
//! protocols of Kubernetes' remotecommand: `v5.channel.k8s.io` and `v4.channel.k8s.io`.
//!
//! Every binary message starts with its channel byte: 0 stdin (client → kubelet), 1 stdout,
//! 2 stderr, 3 error (one `Status` JSON at the end: `Success`, or `Failure` with reason
//! `NonZeroExitCode` and the exit code as the `ExitCode` cause, as the kubelet writes it),
//! 4 resize (terminal size JSON), and in v5 255 close (its payload is the channel closed; 0
//! closes stdin). A client that does not upgrade to one of those protocols (SPDY-only kubectl
//! before 1.30) gets a 400 `Status` naming the kubectl versions that work.
//!
//! Owns the WebSocket sessions and the relays to [`Runtime::exec`] and [`Runtime::attach`];
//! must not touch the container otherwise.
//!
//! `/attach` joins the container's own stdio through its shim (the container's output from
//! then on; input only when the container has `stdin: true`, else the session is output
//! only, as with containerd). The session ends with a `Success` status when the container's
//! output ends, or when the client's stdin ends and the container keeps its stdin (no
//! `stdinOnce`, or a terminal); with `stdinOnce` and no terminal the end of the client's
//! stdin closes the container's stdin and the output continues until the container ends.
//!
//! Resize messages (`{"Width":…,"Height":…}`) are applied to the exec's terminal through the
//! runtime's [`ResizeHandle`](crate::agent::runtime::container::exec::ResizeHandle), and to an
//! attached container's terminal through its shim.
//!
//! # Caveats
//! - Attach starts with the output produced from then on: earlier output is only in the log
//!   (as with containerd; `kubectl run -i` says so).
//! - An attach client that falls more than 1 MiB behind the container's output is detached
//!   by the shim rather than slowing the container.
//!
//! [`Runtime::exec`]: crate::agent::runtime::container::Runtime::exec
//! [`Runtime::attach`]: crate::agent::runtime::container::Runtime::attach

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, Instrument};

use super::{current_container, status_response, ServerState};
use crate::agent::runtime::container::logs::Stream;
use crate::agent::runtime::container::{AttachOptions, ContainerStatus, State as ContainerState};

/// The channel protocols served, preferred first.
pub const PROTOCOL_V5: &str = "v5.channel.k8s.io";
pub const PROTOCOL_V4: &str = "v4.channel.k8s.io";

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
pub const CLOSE: u8 = 255;

/// The message a client that cannot speak WebSocket streaming gets.
pub const SPDY_UNSUPPORTED: &str = "this cluster serves exec and attach only over WebSockets (subprotocols v5.channel.k8s.io / v4.channel.k8s.io): use kubectl 1.30 or newer; SPDY is not supported for exec and attach (port-forward accepts it)";

/// A resize message (channel 4), as kubectl sends it.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
struct TerminalSize {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

/// What an exec asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOptions {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecOptions {
    pub fn parse(query: &[(String, String)]) -> ExecOptions {
        let flag = |name: &str| {
            query
                .iter()
                .any(|(k, v)| k == name && matches!(v.as_str(), "" | "1" | "true" | "True"))
        };
        ExecOptions {
            command: query
                .iter()
                .filter(|(k, _)| k == "command")
                .map(|(_, v)| v.clone())
                .collect(),
            stdin: flag("stdin"),
            stdout: flag("stdout"),
            stderr: flag("stderr"),
            tty: flag("tty"),
        }
    }
}

/// A WebSocket upgrade to one of the channel protocols, or the error response for anything
/// else (a SPDY upgrade, a plain request).
pub(crate) fn negotiate(
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    protocols: &'static [&'static str],
    unsupported: &str,
) -> Result<(WebSocketUpgrade, String), Box<Response>> {
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) => {
            return Err(Box::new(status_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                unsupported,
            )))
        }
    };
    let ws = ws.protocols(protocols.iter().copied());
    let Some(selected) = ws
        .selected_protocol()
        .and_then(|p| p.to_str().ok())
        .map(str::to_owned)
    else {
        return Err(Box::new(status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            unsupported,
        )));
    };
    Ok((ws, selected))
}

/// The current instance of a container that exec and attach can reach: running, else the
/// answer to give (404 when unknown, 400 when not running).
async fn running_container(
    state: &ServerState,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<ContainerStatus, Box<Response>> {
    let target = current_container(&state.runtime, namespace, pod, container)
        .await
        .map_err(|err| Box::new(err.into_response()))?;
    if target.state != ContainerState::Running {
        return Err(Box::new(status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("container {container} is not running"),
        )));
    }
    Ok(target)
}

/// The next channel frame a client sent, as (channel, frame with the channel byte first);
/// `None` once the client closed or went away or the node shuts down. Text frames count as
/// binary, as the kubelet reads them; other messages and empty frames are skipped.
async fn next_frame(
    incoming: &mut SplitStream<WebSocket>,
    shutdown: &CancellationToken,
) -> Option<(u8, Bytes)> {
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return None,
            message = incoming.next() => message,
        };
        let data = match message {
            Some(Ok(Message::Binary(data))) => data,
            Some(Ok(Message::Text(text))) => Bytes::from(text.as_str().as_bytes().to_vec()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        };
        if let Some(&channel) = data.first() {
            return Some((channel, data));
        }
    }
}

/// `/exec/{namespace}/{pod}/{container}`.
pub(crate) async fn exec(
    State(state): State<ServerState>,
    UrlPath((namespace, pod, container)): UrlPath<(String, String, String)>,
    Query(query): Query<Vec<(String, String)>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let (ws, protocol) = match negotiate(ws, &[PROTOCOL_V5, PROTOCOL_V4], SPDY_UNSUPPORTED) {
        Ok(ok) => ok,
        Err(response) => return *response,
    };
    let options = ExecOptions::parse(&query);
    if options.command.is_empty() {
        return status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "you must specify at least 1 command",
        );
    }
    if !options.stdin && !options.stdout && !options.stderr {
        return status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "you must specify at least 1 of stdin, stdout, stderr",
        );
    }
    let target = match running_container(&state, &namespace, &pod, &container).await {
        Ok(c) => c,
        Err(response) => return *response,
    };
    let span = info_span!("exec", %namespace, %pod, %container, %protocol);
    ws.on_upgrade(move |socket| {
        async move {
            run_exec(state, target.id, options, protocol, socket).await;
        }
        .instrument(span)
    })
}

/// `/attach/{namespace}/{pod}/{container}`: the container's own stdio, through its shim.
pub(crate) async fn attach(
    State(state): State<ServerState>,
    UrlPath((namespace, pod, container)): UrlPath<(String, String, String)>,
    Query(query): Query<Vec<(String, String)>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let (ws, protocol) = match negotiate(ws, &[PROTOCOL_V5, PROTOCOL_V4], SPDY_UNSUPPORTED) {
        Ok(ok) => ok,
        Err(response) => return *response,
    };
    let mut options = ExecOptions::parse(&query);
    if !options.stdin && !options.stdout && !options.stderr {
        return status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "you must specify at least 1 of stdin, stdout, stderr",
        );
    }
    // As the kubelet: a terminal has no separate stderr.
    if options.tty {
        options.stderr = false;
    }
    let target = match running_container(&state, &namespace, &pod, &container).await {
        Ok(c) => c,
        Err(response) => return *response,
    };
    let span = info_span!("attach", %namespace, %pod, %container, %protocol);
    ws.on_upgrade(move |socket| {
        async move {
            run_attach(state, target.id, options, protocol, socket).await;
        }
        .instrument(span)
    })
}

/// The error channel's final `Status`, as the kubelet writes it.
pub fn exit_status(command: &[String], exit_code: i32) -> serde_json::Value {
    if exit_code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {exit_code}",
            command.join(" ")
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": exit_code.to_string()}]},
    })
}

fn internal_error(message: &str) -> serde_json::Value {
    json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError", "code": 500})
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(channel);
    out.extend_from_slice(data);
    Message::Binary(Bytes::from(out))
}

async fn run_exec(
    state: ServerState,
    container_id: String,
    options: ExecOptions,
    protocol: String,
    socket: WebSocket,
) {
    let (mut sink, mut incoming) = socket.split();
    let mut process = match state
        .runtime
        .exec(&container_id, &options.command, options.tty)
        .await
    {
        Ok(process) => process,
        Err(err) => {
            let status = internal_error(&err.to_string());
            let _ = sink.send(frame(ERROR, status.to_string().as_bytes())).await;
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
    };
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(16);
    let mut pumps = Vec::new();
    let stdout = process.stdout.take();
    let stderr = process.stderr.take();
    for (channel, wanted, reader) in [
        (
            STDOUT,
            options.stdout,
            stdout.map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ),
        (
            STDERR,
            options.stderr,
            stderr.map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ),
    ] {
        let Some(mut reader) = reader else { continue };
        let tx = out_tx.clone();
        pumps.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        // Drained even when not wanted, so the process never blocks on a pipe.
                        if wanted && tx.send(frame(channel, &buf[..n])).await.is_err() {
                            break;
                        }
                    }
                }
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
        sink
    });
    let mut stdin = if options.stdin {
        process.stdin.take()
    } else {
        drop(process.stdin.take());
        None
    };
    let v5 = protocol == PROTOCOL_V5;
    let resizer = process.resizer();
    let shutdown = state.shutdown.clone();
    let reader = tokio::spawn(async move {
        loop {
            let Some((channel, data)) = next_frame(&mut incoming, &shutdown).await else {
                break;
            };
            let payload = &data[1..];
            match channel {
                STDIN => {
                    if let Some(pipe) = stdin.as_mut() {
                        if pipe.write_all(payload).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                RESIZE => {
                    let size: Result<TerminalSize, _> = serde_json::from_slice(payload);
                    match (size, resizer.as_ref()) {
                        (Ok(size), Some(resizer)) => {
                            if let Err(err) = resizer.resize(size.width, size.height).await {
                                debug!(error = %err, "terminal resize failed");
                            }
                        }
                        (Err(err), _) => debug!(error = %err, "bad resize message"),
                        (Ok(_), None) => {}
                    }
                }
                CLOSE if v5 && payload.first() == Some(&STDIN) => {
                    stdin = None;
                }
                _ => {}
            }
        }
    });
    for pump in pumps {
        let _ = pump.await;
    }
    let status = match process.wait().await {
        Ok(code) => exit_status(&options.command, code),
        Err(err) => internal_error(&err.to_string()),
    };
    end_session(writer, status, reader).await;
}

/// Relays one attach session between the WebSocket and the container's shim until the shim
/// ends it (the container's output ended, or the client's stdin did and the container keeps
/// its stdin), then sends the final `Status`; or until the client goes away.
async fn run_attach(
    state: ServerState,
    container_id: String,
    options: ExecOptions,
    protocol: String,
    socket: WebSocket,
) {
    let (mut sink, mut incoming) = socket.split();
    let attach_options = AttachOptions {
        stdin: options.stdin,
        stdout: options.stdout,
        stderr: options.stderr,
    };
    let (mut output, mut input) = match state.runtime.attach(&container_id, attach_options).await {
        Ok(session) => session,
        Err(err) => {
            let status = internal_error(&err.to_string());
            let _ = sink.send(frame(ERROR, status.to_string().as_bytes())).await;
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
    };
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            if sink.send(message).await.is_err() {
                break;
            }
        }
        sink
    });
    let v5 = protocol == PROTOCOL_V5;
    let mut stdin_open = options.stdin;
    let shutdown = state.shutdown.clone();
    // Client → shim; ends when the client goes away (dropping `input` tells the shim).
    let mut reader = tokio::spawn(async move {
        let mut shim_open = true;
        loop {
            let Some((channel, data)) = next_frame(&mut incoming, &shutdown).await else {
                break;
            };
            let payload = &data[1..];
            if !shim_open {
                continue;
            }
            let sent = match channel {
                STDIN if stdin_open => input.stdin(payload).await,
                RESIZE => match serde_json::from_slice::<TerminalSize>(payload) {
                    Ok(size) => input.resize(size.width, size.height).await,
                    Err(err) => {
                        debug!(error = %err, "bad resize message");
                        Ok(())
                    }
                },
                CLOSE if v5 && payload.first() == Some(&STDIN) && stdin_open => {
                    stdin_open = false;
                    input.close_stdin().await
                }
                _ => Ok(()),
            };
            if let Err(err) = sent {
                // The shim ended the session: keep reading until the client closes.
                debug!(error = %err, "the shim ended the attach session");
                stdin_open = false;
                shim_open = false;
            }
        }
    });
    // Shim → client, until the shim ends the session or the client is gone.
    let ended = loop {
        tokio::select! {
            next = output.next() => match next {
                Ok(Some((stream, data))) => {
                    let channel = match stream {
                        Stream::Stdout => STDOUT,
                        Stream::Stderr => STDERR,
                    };
                    if out_tx.send(frame(channel, &data)).await.is_err() {
                        break None;
                    }
                }
                Ok(None) => break Some(json!({"metadata": {}, "status": "Success"})),
                Err(err) => break Some(internal_error(&err.to_string())),
            },
            _ = &mut reader => break None,
        }
    };
    drop(output);
    drop(out_tx);
    match ended {
        Some(status) => end_session(writer, status, reader).await,
        // The client is gone (or cannot be written to): nothing more to tell it.
        None => {
            reader.abort();
            if let Ok(mut sink) = writer.await {
                let _ = sink.send(Message::Close(None)).await;
            }
        }
    }
}

/// How long a session waits for the client's close after its own.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Sends the final `Status` and a close frame, then keeps reading until the client
/// closes too (boundedly): a socket closed with the client's last input unread (a terminal's
/// answer to a cursor query, say) is reset, and the client would lose the status.
async fn end_session(
    writer: JoinHandle<SplitSink<WebSocket, Message>>,
    status: serde_json::Value,
    mut reader: JoinHandle<()>,
) {
    if let Ok(mut sink) = writer.await {
        let _ = sink.send(frame(ERROR, status.to_string().as_bytes())).await;
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "".into(),
            })))
            .await;
        let _ = tokio::time::timeout(CLOSE_WAIT, &mut reader).await;
    }
    reader.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_collect_repeated_commands() {
        let q: Vec<(String, String)> = [
            ("command", "sh"),
            ("command", "-c"),
            ("command", "echo hi"),
            ("stdout", "true"),
            ("tty", "1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let o = ExecOptions::parse(&q);
        assert_eq!(o.command, ["sh", "-c", "echo hi"]);
        assert!(o.stdout && o.tty && !o.stdin && !o.stderr);
    }

    #[test]
    fn exit_status_carries_the_code_as_kubelet_does() {
        let ok = exit_status(&["true".into()], 0);
        assert_eq!(ok["status"], "Success");
        let failed = exit_status(&["sh".into(), "-c".into(), "exit 3".into()], 3);
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
    }
}
