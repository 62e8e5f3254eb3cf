//! Port forwarding over SPDY/3.1: tunnelled in a WebSocket (subprotocol
//! `SPDY/3.1+portforward.k8s.io`), what `kubectl port-forward` 1.31 and newer speaks, where the
//! WebSocket's binary messages carry one SPDY session as a byte stream ([`super::spdy`]); or
//! on the raw connection after an HTTP `Upgrade: SPDY/3.1` (kubectl 1.30 and older).
//!
//! As the kubelet's SPDY port forwarding does, the client opens a pair of streams per
//! connection, both with headers `port` and `requestID`, one with `streamType: error` and one
//! with `streamType: data`. Every stream is answered with a SYN_REPLY at once; once both of a
//! pair are there, one TCP connection to `127.0.0.1:<port>` inside the pod's network namespace
//! carries the data stream's bytes both ways. A failed connection is reported as text on the
//! error stream. When the pod ends its side, both streams are finished (FIN); when the client
//! finishes the data stream the pod's side is shut for writing; a reset stream drops the
//! connection. Many pairs share one session; the session (and every connection) ends when the
//! WebSocket closes, on GOAWAY, on a protocol error, or when the server shuts down.
//!
//! Owns the session and its TCP connections; must not change the namespace (connecting is
//! [`super::connect_in_netns`]'s job).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket};
use futures::stream::{BoxStream, SplitSink};
use futures::{SinkExt as _, StreamExt as _};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument as _};

use super::connect_in_netns;
use super::spdy::{self, header, Decoder, Encoder, Frame, Headers, FLAG_FIN};

/// The WebSocket subprotocol: SPDY tunnelled in WebSocket, carrying `portforward.k8s.io`.
pub const PROTOCOL_SPDY_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

/// How long a stream may wait for its partner (the kubelet's default stream creation timeout).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How much is read from the pod for one DATA frame.
const READ_CHUNK: usize = 32 * 1024;
/// Frames queued for the client before the connections wait.
const OUT_QUEUE: usize = 64;
/// Chunks queued for one connection into the pod before the session waits.
const IN_QUEUE: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Error,
    Data,
}

/// One connection's pair of streams.
struct Pair {
    error: Option<u32>,
    data: Option<u32>,
    port: u16,
    /// The data stream's bytes towards the pod; `None` once the client finished it.
    to_pod: Option<mpsc::Sender<Bytes>>,
    from_client: Option<mpsc::Receiver<Bytes>>,
    cancel: CancellationToken,
    started: bool,
    opened: Instant,
}

struct Session {
    out: mpsc::Sender<Frame>,
    netns: PathBuf,
    /// Who is forwarded to, for error messages ("pod default/web, uid …").
    target: String,
    cancel: CancellationToken,
    streams: HashMap<u32, (String, Kind)>,
    pairs: HashMap<String, Pair>,
    tasks: JoinSet<String>,
    last_stream_id: u32,
}

/// Whether the session goes on after a frame.
enum Next {
    Continue,
    End,
}

/// What carries the session's bytes.
pub(super) enum Transport {
    /// The binary messages of a WebSocket (`SPDY/3.1+portforward.k8s.io`).
    WebSocket(Box<WebSocket>),
    /// The connection itself, after `Upgrade: SPDY/3.1`.
    Upgraded(Upgraded),
}

/// Where the encoded frames go.
enum Outgoing {
    WebSocket(SplitSink<WebSocket, Message>),
    Upgraded(tokio::io::WriteHalf<TokioIo<Upgraded>>),
}

impl Outgoing {
    async fn send(&mut self, bytes: Vec<u8>) -> bool {
        match self {
            Outgoing::WebSocket(sink) => {
                sink.send(Message::Binary(Bytes::from(bytes))).await.is_ok()
            }
            Outgoing::Upgraded(write) => write.write_all(&bytes).await.is_ok(),
        }
    }

    async fn close(&mut self) {
        match self {
            Outgoing::WebSocket(sink) => {
                let _ = sink.send(Message::Close(None)).await;
            }
            Outgoing::Upgraded(write) => {
                let _ = write.shutdown().await;
            }
        }
    }
}

/// The transport's incoming bytes, in order, until the client closes or fails; and where
/// frames go.
fn split(transport: Transport) -> (BoxStream<'static, Bytes>, Outgoing) {
    match transport {
        Transport::WebSocket(socket) => {
            let (sink, stream) = (*socket).split();
            let incoming = futures::stream::unfold(stream, |mut stream| async move {
                loop {
                    match stream.next().await {
                        Some(Ok(Message::Binary(bytes))) => return Some((bytes, stream)),
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                        Some(Ok(_)) => continue,
                    }
                }
            });
            (incoming.boxed(), Outgoing::WebSocket(sink))
        }
        Transport::Upgraded(upgraded) => {
            let (read, write) = tokio::io::split(TokioIo::new(upgraded));
            let incoming = futures::stream::unfold(read, |mut read| async move {
                let mut buf = vec![0u8; READ_CHUNK];
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Bytes::from(buf), read))
                    }
                }
            });
            (incoming.boxed(), Outgoing::Upgraded(write))
        }
    }
}

/// Serves one SPDY session until the client or the server ends it.
pub(super) async fn run(
    shutdown: CancellationToken,
    netns: PathBuf,
    target: String,
    transport: Transport,
) {
    let (mut incoming, outgoing) = split(transport);
    let (out, out_rx) = mpsc::channel::<Frame>(OUT_QUEUE);
    let writer = tokio::spawn(write_frames(outgoing, out_rx).in_current_span());
    let cancel = shutdown.child_token();
    let mut session = Session {
        out,
        netns,
        target,
        cancel: cancel.clone(),
        streams: HashMap::new(),
        pairs: HashMap::new(),
        tasks: JoinSet::new(),
        last_stream_id: 0,
    };
    let mut decoder = Decoder::new();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    'session: loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(done) = session.tasks.join_next(), if !session.tasks.is_empty() => {
                if let Ok(key) = done {
                    session.forget(&key);
                }
            }
            _ = tick.tick() => session.expire_incomplete().await,
            bytes = incoming.next() => {
                let Some(bytes) = bytes else {
                    break;
                };
                decoder.push(&bytes);
                loop {
                    match decoder.next_frame() {
                        Ok(Some(frame)) => {
                            if let Next::End = session.handle(frame).await {
                                break 'session;
                            }
                        }
                        Ok(None) => break,
                        Err(err) => {
                            debug!(error = %err, "port-forward: bad SPDY frame, ending the session");
                            let _ = session
                                .out
                                .send(Frame::GoAway {
                                    last_good_stream_id: session.last_stream_id,
                                    status: spdy::goaway::PROTOCOL_ERROR,
                                })
                                .await;
                            break 'session;
                        }
                    }
                }
            }
        }
    }
    // Every connection into the pod ends with the session.
    cancel.cancel();
    session.tasks.shutdown().await;
    drop(session);
    // The writer ends once every sender is gone; a client that stopped reading cannot hold it.
    let abort = writer.abort_handle();
    if tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .is_err()
    {
        abort.abort();
    }
}

/// Encodes frames in order (the header compression is one stream) and sends them, several
/// queued frames per message.
async fn write_frames(mut sink: Outgoing, mut frames: mpsc::Receiver<Frame>) {
    let mut encoder = match Encoder::new() {
        Ok(encoder) => encoder,
        Err(err) => {
            debug!(error = %err, "port-forward: no header compressor");
            return;
        }
    };
    while let Some(frame) = frames.recv().await {
        let mut bytes = Vec::new();
        let mut next = Some(frame);
        while let Some(frame) = next.take() {
            if let Err(err) = encoder.encode(&frame, &mut bytes) {
                debug!(error = %err, "port-forward: cannot encode a frame");
                return;
            }
            if bytes.len() < READ_CHUNK {
                next = frames.try_recv().ok();
            }
        }
        if !sink.send(bytes).await {
            return;
        }
    }
    sink.close().await;
}

/// The request a stream belongs to: its `requestID`, or for clients that send none, derived
/// from the stream ids as the kubelet does (the data stream follows its error stream).
fn request_key(headers: &Headers, stream_id: u32, kind: Kind) -> String {
    match header(headers, "requestid") {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => match kind {
            Kind::Error => stream_id.to_string(),
            Kind::Data => stream_id.saturating_sub(2).to_string(),
        },
    }
}

/// The stream's kind and port, or why it is refused (as the kubelet checks them).
fn validate(headers: &Headers) -> Result<(Kind, u16), String> {
    let port = header(headers, "port").ok_or("\"port\" header is required")?;
    let port = match port.parse::<u16>() {
        Ok(0) => return Err(format!("port {port:?} must be > 0")),
        Ok(port) => port,
        Err(err) => return Err(format!("unable to parse {port:?} as a port: {err}")),
    };
    let kind = match header(headers, "streamtype") {
        Some("error") => Kind::Error,
        Some("data") => Kind::Data,
        Some(other) => return Err(format!("invalid stream type {other:?}")),
        None => return Err("\"streamType\" header is required".into()),
    };
    Ok((kind, port))
}

fn fin(stream_id: u32) -> Frame {
    Frame::Data {
        stream_id,
        flags: FLAG_FIN,
        data: Bytes::new(),
    }
}

impl Session {
    async fn send(&self, frame: Frame) {
        // The writer is gone only when the session is ending anyway.
        let _ = self.out.send(frame).await;
    }

    async fn handle(&mut self, frame: Frame) -> Next {
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => self.open(stream_id, flags, &headers).await,
            Frame::Data {
                stream_id,
                flags,
                data,
            } => self.data(stream_id, flags, data).await,
            Frame::RstStream { stream_id, status } => {
                debug!(
                    stream_id,
                    status, "port-forward: stream reset by the client"
                );
                self.reset(stream_id);
            }
            // Answer the client's pings (odd ids); a server's own would be even.
            Frame::Ping { id } if id % 2 == 1 => self.send(Frame::Ping { id }).await,
            Frame::GoAway { .. } => return Next::End,
            Frame::Ping { .. }
            | Frame::SynReply { .. }
            | Frame::Headers { .. }
            | Frame::Settings { .. }
            | Frame::WindowUpdate { .. } => {}
        }
        Next::Continue
    }

    async fn open(&mut self, stream_id: u32, flags: u8, headers: &Headers) {
        // Client streams have odd, increasing ids.
        if stream_id % 2 == 0 || stream_id <= self.last_stream_id {
            self.send(Frame::RstStream {
                stream_id,
                status: spdy::rst::PROTOCOL_ERROR,
            })
            .await;
            return;
        }
        self.last_stream_id = stream_id;
        let (kind, port) = match validate(headers) {
            Ok(ok) => ok,
            Err(reason) => {
                debug!(stream_id, %reason, "port-forward: stream refused");
                self.send(Frame::RstStream {
                    stream_id,
                    status: spdy::rst::CANCEL,
                })
                .await;
                return;
            }
        };
        let key = request_key(headers, stream_id, kind);
        let pair = self.pairs.entry(key.clone()).or_insert_with(|| Pair {
            error: None,
            data: None,
            port,
            to_pod: None,
            from_client: None,
            cancel: self.cancel.child_token(),
            started: false,
            opened: Instant::now(),
        });
        let slot = match kind {
            Kind::Error => &mut pair.error,
            Kind::Data => &mut pair.data,
        };
        if slot.is_some() || pair.started {
            debug!(stream_id, request = %key, "port-forward: duplicate stream");
            self.send(Frame::RstStream {
                stream_id,
                status: spdy::rst::PROTOCOL_ERROR,
            })
            .await;
            return;
        }
        *slot = Some(stream_id);
        if kind == Kind::Data {
            let (tx, rx) = mpsc::channel(IN_QUEUE);
            pair.port = port;
            pair.to_pod = (flags & FLAG_FIN == 0).then_some(tx);
            pair.from_client = Some(rx);
        }
        self.streams.insert(stream_id, (key.clone(), kind));
        self.send(Frame::SynReply {
            stream_id,
            flags: 0,
            headers: Headers::new(),
        })
        .await;
        self.start_if_paired(&key);
    }

    fn start_if_paired(&mut self, key: &str) {
        let Some(pair) = self.pairs.get_mut(key) else {
            return;
        };
        let (Some(error), Some(data), Some(from_client)) =
            (pair.error, pair.data, pair.from_client.take())
        else {
            return;
        };
        pair.started = true;
        let connection = Connection {
            netns: self.netns.clone(),
            target: self.target.clone(),
            port: pair.port,
            error,
            data,
            out: self.out.clone(),
        };
        let cancel = pair.cancel.clone();
        let key = key.to_string();
        let span = tracing::debug_span!("connection", request = %key, port = pair.port);
        self.tasks.spawn(
            async move {
                connection.run(from_client, cancel).await;
                key
            }
            .instrument(span),
        );
    }

    async fn data(&mut self, stream_id: u32, flags: u8, data: Bytes) {
        let Some((key, Kind::Data)) = self.streams.get(&stream_id) else {
            // The error stream only carries the client's FIN; unknown streams are gone.
            return;
        };
        let Some(pair) = self.pairs.get_mut(key) else {
            return;
        };
        if !data.is_empty() {
            if let Some(tx) = pair.to_pod.clone() {
                let sent = if pair.started {
                    tx.send(data).await.is_ok()
                } else {
                    tx.try_send(data).is_ok()
                };
                if !sent {
                    if let Some(pair) = self.pairs.get_mut(key) {
                        pair.to_pod = None;
                    }
                }
            }
        }
        if flags & FLAG_FIN != 0 {
            if let Some(pair) = self.pairs.get_mut(key) {
                pair.to_pod = None;
            }
        }
    }

    /// The client reset a stream: its connection ends (the task finishes the error stream).
    fn reset(&mut self, stream_id: u32) {
        let Some((key, _)) = self.streams.get(&stream_id) else {
            return;
        };
        let key = key.clone();
        let started = match self.pairs.get(&key) {
            Some(pair) => {
                pair.cancel.cancel();
                pair.started
            }
            None => false,
        };
        if !started {
            self.forget(&key);
        }
    }

    fn forget(&mut self, key: &str) {
        if let Some(pair) = self.pairs.remove(key) {
            for id in [pair.error, pair.data].into_iter().flatten() {
                self.streams.remove(&id);
            }
        }
    }

    /// Pairs still missing a stream after the creation timeout are given up, as the kubelet
    /// does, with the reason on the error stream.
    async fn expire_incomplete(&mut self) {
        let expired: Vec<String> = self
            .pairs
            .iter()
            .filter(|(_, p)| !p.started && p.opened.elapsed() > STREAM_CREATION_TIMEOUT)
            .map(|(key, _)| key.clone())
            .collect();
        for key in expired {
            let Some(pair) = self.pairs.get(&key) else {
                continue;
            };
            let (error, data) = (pair.error, pair.data);
            if let Some(error) = error {
                let message = format!("timed out waiting for the data stream of request {key}");
                self.send(Frame::Data {
                    stream_id: error,
                    flags: 0,
                    data: Bytes::from(message),
                })
                .await;
                self.send(fin(error)).await;
            }
            if let Some(data) = data {
                self.send(fin(data)).await;
            }
            self.forget(&key);
        }
    }
}

/// One forwarded connection's streams and where it goes.
struct Connection {
    netns: PathBuf,
    target: String,
    port: u16,
    error: u32,
    data: u32,
    out: mpsc::Sender<Frame>,
}

impl Connection {
    async fn run(self, from_client: mpsc::Receiver<Bytes>, cancel: CancellationToken) {
        tokio::select! {
            _ = cancel.cancelled() => {
                // The client reset a stream (or the session ends): the data stream is gone,
                // the error stream ends without a message.
                let _ = self.out.send(fin(self.error)).await;
            }
            _ = self.forward(from_client) => {
                let _ = self.out.send(fin(self.error)).await;
                let _ = self.out.send(fin(self.data)).await;
            }
        }
    }

    async fn forward(&self, mut from_client: mpsc::Receiver<Bytes>) {
        let stream = match connect_in_netns(self.netns.clone(), self.port).await {
            Ok(stream) => stream,
            Err(err) => {
                debug!(error = %err, "port-forward connect failed");
                let message = format!(
                    "error forwarding port {} to {}: {err}",
                    self.port, self.target
                );
                let _ = self
                    .out
                    .send(Frame::Data {
                        stream_id: self.error,
                        flags: 0,
                        data: Bytes::from(message),
                    })
                    .await;
                return;
            }
        };
        let (mut read, mut write) = stream.into_split();
        let upstream = async {
            while let Some(bytes) = from_client.recv().await {
                if write.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            let _ = write.shutdown().await;
        };
        let downstream = async {
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let frame = Frame::Data {
                            stream_id: self.data,
                            flags: 0,
                            data: Bytes::copy_from_slice(&buf[..n]),
                        };
                        if self.out.send(frame).await.is_err() {
                            break;
                        }
                    }
                }
            }
        };
        // As the kubelet's forwarder: done once the pod has ended its side.
        tokio::select! {
            _ = downstream => {}
            _ = async { upstream.await; std::future::pending::<()>().await } => {}
        }
    }
}
