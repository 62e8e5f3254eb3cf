//! The kubelet API (:10250) for real: the server runs in-process over a real container runtime
//! with busybox containers, and is called over TLS with the API server's kubelet client
//! certificate. Container tests need root (CI runs them; elsewhere they skip and say why).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cluster::agent::kubelet::server::serve_on;
use cluster::agent::runtime::container::{Runtime, RuntimeConfig};
use cluster::server::pki::{Pki, PkiOptions};
use futures::{SinkExt as _, StreamExt as _};
use http_body_util::BodyExt as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::rootfs::{require_root, TestRuntime};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const LONG: Duration = Duration::from_secs(60);

/// A kubelet API server on 127.0.0.1 and the cluster's certificates.
struct Kubelet {
    addr: SocketAddr,
    pki: Pki,
    stop: CancellationToken,
    _tls_dir: tempfile::TempDir,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start_kubelet(runtime: Runtime) -> Kubelet {
    let tls_dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::load_or_create(&PkiOptions {
        tls_dir: tls_dir.path().join("tls"),
        sans: Vec::new(),
        cluster_domain: "cluster.local".into(),
        service_ip: "10.43.0.1".parse().expect("ip"),
        node_ips: vec!["127.0.0.1".parse().expect("ip")],
        hostname: "test-node".into(),
    })
    .expect("pki");
    let tls = pki
        .kubelet_server_tls_config("test-node", &["127.0.0.1".parse().expect("ip")])
        .expect("kubelet tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    tokio::spawn(serve_on(listener, tls, runtime, stop.clone()));
    Kubelet {
        addr,
        pki,
        stop,
        _tls_dir: tls_dir,
    }
}

/// Who calls.
enum As {
    ApiServer,
    Nobody,
    Node,
}

impl Kubelet {
    fn client_config(&self, who: As) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        if let As::ApiServer = who {
            return self.pki.kubelet_client_tls_config().expect("client tls");
        }
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.pki.ca_cert_pem.as_bytes()).expect("ca"))
            .expect("root");
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let mut config = match who {
            As::Node => {
                let (cert, key) = self
                    .pki
                    .issue_client_cert("system:node:other", &["system:nodes"], 1)
                    .expect("node cert");
                builder
                    .with_client_auth_cert(
                        vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert")],
                        PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
                    )
                    .expect("client auth")
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    async fn tls(&self, who: As) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        tokio_rustls::TlsConnector::from(self.client_config(who))
            .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
            .await
            .expect("tls handshake (the kubelet certificate verifies against the cluster CA)")
    }

    /// GET `path`; returns the status and the body receiver.
    async fn get(&self, who: As, path: &str) -> (u16, hyper::body::Incoming) {
        let stream = self.tls(who).await;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("http handshake");
        tokio::spawn(conn);
        let request = http::Request::get(path)
            .header("host", "127.0.0.1")
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        let status = response.status().as_u16();
        (status, response.into_body())
    }

    async fn get_text(&self, who: As, path: &str) -> (u16, String) {
        let (status, body) = self.get(who, path).await;
        let bytes = tokio::time::timeout(LONG, body.collect())
            .await
            .expect("body in time")
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Opens a WebSocket on `path` offering `protocols`.
    async fn websocket(
        &self,
        path: &str,
        protocols: &str,
    ) -> (
        tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        String,
    ) {
        self.websocket_to(self.addr, path, protocols).await
    }

    /// Opens a WebSocket to `addr` (the kubelet, or the API server) with the API server's
    /// kubelet client certificate (`system:masters`, so the API server accepts it too).
    async fn websocket_to(
        &self,
        addr: SocketAddr,
        path: &str,
        protocols: &str,
    ) -> (
        tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        String,
    ) {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let stream = tokio_rustls::TlsConnector::from(self.client_config(As::ApiServer))
            .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
            .await
            .expect("tls handshake");
        let mut request = format!("wss://127.0.0.1:{}{path}", addr.port())
            .into_client_request()
            .expect("ws request");
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.parse().expect("header"));
        let (ws, response) = tokio_tungstenite::client_async(request, stream)
            .await
            .expect("websocket upgrade");
        let protocol = response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (ws, protocol)
    }
}

/// Everything an exec session sent, per channel, until the kubelet closed it.
#[derive(Default, Debug)]
struct Session {
    stdout: String,
    stderr: String,
    error: String,
}

async fn collect_session<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Session
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut session = Session::default();
    loop {
        let message = tokio::time::timeout(LONG, ws.next())
            .await
            .expect("exec session ends in time");
        let data = match message {
            Some(Ok(Message::Binary(data))) => data,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        };
        let Some((&channel, payload)) = data.split_first() else {
            continue;
        };
        let text = String::from_utf8_lossy(payload);
        match channel {
            1 => session.stdout.push_str(&text),
            2 => session.stderr.push_str(&text),
            3 => session.error.push_str(&text),
            other => panic!("unexpected channel {other}"),
        }
    }
    session
}

fn query_command(command: &[&str]) -> String {
    command
        .iter()
        .map(|c| {
            let encoded: String = c
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            format!("command={encoded}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[tokio::test]
async fn only_the_api_server_and_masters_may_call_the_kubelet() {
    let temp = tempfile::tempdir().expect("tempdir");
    let runtime = Runtime::new(RuntimeConfig {
        root: temp.path().join("containers"),
        log_root: temp.path().join("logs"),
        shim_binary: env!("CARGO_BIN_EXE_cluster").into(),
        log_max_size: 0,
        log_max_files: 1,
    })
    .expect("runtime");
    let kubelet = start_kubelet(runtime).await;

    let (status, body) = kubelet.get_text(As::ApiServer, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok"));

    let (status, body) = kubelet.get_text(As::Nobody, "/healthz").await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = kubelet
        .get_text(As::Node, "/containerLogs/default/x/y")
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("system:node:other"), "{body}");

    let (status, body) = kubelet
        .get_text(As::ApiServer, "/containerLogs/default/x/y")
        .await;
    assert_eq!(status, 404, "{body}");

    // A client that does not upgrade to a WebSocket is told which kubectl works.
    let (status, body) = kubelet
        .get_text(As::ApiServer, "/exec/default/x/y?command=true&stdout=1")
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("kubectl 1.30"), "{body}");

    let (status, body) = kubelet.get_text(As::ApiServer, "/stats/summary").await;
    assert_eq!(status, 200, "{body}");
    let summary: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(
        summary["node"]["memory"]["workingSetBytes"]
            .as_u64()
            .is_some(),
        "{summary}"
    );
    assert_eq!(summary["pods"], serde_json::json!([]));
}

#[tokio::test]
async fn container_logs_tail_timestamps_previous_and_follow() {
    if !require_root("container_logs_tail_timestamps_previous_and_follow") {
        return;
    }
    let t = TestRuntime::new();
    // Attempt 0 prints three lines and exits.
    let first = t.request("app", &["/bin/sh", "-c", "echo one; echo two; echo three"]);
    let id = t.runtime.create(&first).await.expect("create");
    t.runtime.start(&id).await.expect("start");
    tokio::time::timeout(LONG, t.runtime.wait(&id))
        .await
        .expect("exits")
        .expect("wait");
    // Attempt 1 prints a line a second, three times, then exits.
    let mut second = t.request(
        "app",
        &[
            "/bin/sh",
            "-c",
            "for i in 1 2 3; do echo run2-$i; sleep 1; done",
        ],
    );
    second.attempt = 1;
    let id2 = t.runtime.create(&second).await.expect("create 2");
    t.runtime.start(&id2).await.expect("start 2");
    let kubelet = start_kubelet(t.runtime.clone()).await;
    let base = format!("/containerLogs/{}/{}/app", t.pod.namespace, t.pod.name);

    // follow: everything the running container writes, ending when it exits.
    let (status, body) = kubelet
        .get_text(As::ApiServer, &format!("{base}?follow=true"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "run2-1\nrun2-2\nrun2-3\n");

    let (status, body) = kubelet
        .get_text(As::ApiServer, &format!("{base}?previous=true"))
        .await;
    assert_eq!((status, body.as_str()), (200, "one\ntwo\nthree\n"));

    let (_, body) = kubelet
        .get_text(As::ApiServer, &format!("{base}?previous=true&tailLines=2"))
        .await;
    assert_eq!(body, "two\nthree\n");

    let (_, body) = kubelet
        .get_text(
            As::ApiServer,
            &format!("{base}?timestamps=true&tailLines=1"),
        )
        .await;
    let (stamp, text) = body.split_once(' ').expect("timestamp then text");
    stamp
        .parse::<jiff::Timestamp>()
        .unwrap_or_else(|e| panic!("{stamp:?} is not RFC 3339: {e}"));
    assert_eq!(text, "run2-3\n");

    let (_, body) = kubelet
        .get_text(As::ApiServer, &format!("{base}?limitBytes=4"))
        .await;
    assert_eq!(body, "run2");

    let (status, body) = kubelet
        .get_text(
            As::ApiServer,
            &format!("/containerLogs/{}/{}/nope", t.pod.namespace, t.pod.name),
        )
        .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn exec_over_websocket_with_and_without_tty_reports_the_exit_code() {
    if !require_root("exec_over_websocket_with_and_without_tty_reports_the_exit_code") {
        return;
    }
    let t = TestRuntime::new();
    let request = t.request("app", &["/bin/sleep", "1000"]);
    let id = t.runtime.create(&request).await.expect("create");
    t.runtime.start(&id).await.expect("start");
    let kubelet = start_kubelet(t.runtime.clone()).await;
    let base = format!("/exec/{}/{}/app", t.pod.namespace, t.pod.name);

    // stdout, stderr and a non-zero exit code (v5, preferred when offered first).
    let command = query_command(&["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]);
    let (mut ws, protocol) = kubelet
        .websocket(
            &format!("{base}?{command}&stdout=true&stderr=true"),
            "v5.channel.k8s.io, v4.channel.k8s.io",
        )
        .await;
    assert_eq!(protocol, "v5.channel.k8s.io");
    let session = collect_session(&mut ws).await;
    assert_eq!(session.stdout, "out\n", "{session:?}");
    assert_eq!(session.stderr, "err\n", "{session:?}");
    let status: serde_json::Value = serde_json::from_str(&session.error).expect("status json");
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
    assert_eq!(status["details"]["causes"][0]["message"], "3", "{status}");

    // stdin, closed with v5's close channel.
    let command = query_command(&["/bin/cat"]);
    let (mut ws, _) = kubelet
        .websocket(
            &format!("{base}?{command}&stdin=true&stdout=true&stderr=true"),
            "v5.channel.k8s.io",
        )
        .await;
    ws.send(Message::Binary(Bytes::from_static(b"\x00piped through\n")))
        .await
        .expect("send stdin");
    ws.send(Message::Binary(Bytes::from_static(b"\xff\x00")))
        .await
        .expect("close stdin");
    let session = collect_session(&mut ws).await;
    assert_eq!(session.stdout, "piped through\n", "{session:?}");
    let status: serde_json::Value = serde_json::from_str(&session.error).expect("status json");
    assert_eq!(status["status"], "Success", "{status}");

    // A terminal, over v4.
    let command = query_command(&["/bin/tty"]);
    let (mut ws, protocol) = kubelet
        .websocket(
            &format!("{base}?{command}&stdout=true&tty=true"),
            "v4.channel.k8s.io",
        )
        .await;
    assert_eq!(protocol, "v4.channel.k8s.io");
    let session = collect_session(&mut ws).await;
    assert!(session.stdout.starts_with("/dev/pts/"), "{session:?}");
    let status: serde_json::Value = serde_json::from_str(&session.error).expect("status json");
    assert_eq!(status["status"], "Success", "{status}");

    // Resize: the size sent on channel 4 is the terminal's when the command reads it (the
    // command waits for a line on stdin, which is sent after the resize).
    let command = query_command(&["/bin/sh", "-c", "read line; stty size"]);
    let (mut ws, _) = kubelet
        .websocket(
            &format!("{base}?{command}&stdin=true&stdout=true&tty=true"),
            "v5.channel.k8s.io",
        )
        .await;
    ws.send(Message::Binary(Bytes::from_static(
        b"\x04{\"Width\":123,\"Height\":45}",
    )))
    .await
    .expect("resize");
    ws.send(Message::Binary(Bytes::from_static(b"\x00go\r")))
        .await
        .expect("stdin");
    let session = collect_session(&mut ws).await;
    assert!(session.stdout.contains("45 123"), "{session:?}");
    let status: serde_json::Value = serde_json::from_str(&session.error).expect("status json");
    assert_eq!(status["status"], "Success", "{status}");
}

/// A network namespace at /run/netns/cluster-<uid>, removed on drop.
struct Netns(String);

impl Netns {
    fn create(uid: &str) -> Netns {
        let name = format!("cluster-{uid}");
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add")
            .success();
        assert!(ok, "ip netns add {name}");
        let netns = Netns(name);
        let ok = std::process::Command::new("ip")
            .args(["netns", "exec", &netns.0, "ip", "link", "set", "lo", "up"])
            .status()
            .expect("ip link set lo up")
            .success();
        assert!(ok, "loopback up in {}", netns.0);
        netns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

#[tokio::test]
async fn port_forward_reaches_a_listener_in_the_pods_network_namespace() {
    if !require_root("port_forward_reaches_a_listener_in_the_pods_network_namespace") {
        return;
    }
    let t = TestRuntime::new();
    let netns = Netns::create(&t.pod.uid);
    start_web_pod(&t, &netns).await;
    let kubelet = start_kubelet(t.runtime.clone()).await;
    let path = format!("/portForward/{}/{}?port=8080", t.pod.namespace, t.pod.name);

    // Nothing listens on the host's 8080 for this test: the answer can only come from the pod.
    let reply = fetch_through_port_forward(&kubelet, kubelet.addr, &path).await;
    assert!(reply.starts_with("HTTP/1."), "{reply}");
    drop(kubelet);
    drop(t);
    drop(netns);
}

/// Copies the TLS directory of a running server, so that the test can issue kubelet
/// certificates from its CA without touching the server's own files.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read tls dir").flatten() {
        if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

/// A kubelet for `server`'s cluster on 127.0.0.1, registered as Node `node`.
async fn kubelet_for_server(
    server: &support::server::TestServer,
    runtime: Runtime,
    node: &str,
) -> (Kubelet, kube::Client) {
    let tls_dir = tempfile::tempdir().expect("tempdir");
    copy_dir(
        &server.dir.path().join("data/server/tls"),
        &tls_dir.path().join("tls"),
    );
    let pki = Pki::load_or_create(&PkiOptions {
        tls_dir: tls_dir.path().join("tls"),
        sans: Vec::new(),
        cluster_domain: "cluster.local".into(),
        service_ip: "10.43.0.1".parse().expect("ip"),
        node_ips: vec!["127.0.0.1".parse().expect("ip")],
        hostname: node.into(),
    })
    .expect("pki from the server's CA");
    let tls = pki
        .kubelet_server_tls_config(node, &["127.0.0.1".parse().expect("ip")])
        .expect("kubelet tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    tokio::spawn(serve_on(listener, tls, runtime, stop.clone()));
    let client = server.client().await;
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let object: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
    }))
    .expect("node");
    nodes
        .create(&Default::default(), &object)
        .await
        .expect("create node");
    let status = serde_json::json!({"status": {
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": addr.port()}},
    }});
    nodes
        .patch_status(
            node,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&status),
        )
        .await
        .expect("node status");
    (
        Kubelet {
            addr,
            pki,
            stop,
            _tls_dir: tls_dir,
        },
        client,
    )
}

async fn create_pod(client: &kube::Client, name: &str, containers: &[&str], node: &str) {
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), "default");
    let containers: Vec<serde_json::Value> = containers
        .iter()
        .map(|c| serde_json::json!({"name": c, "image": "busybox"}))
        .collect();
    let pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": containers},
    }))
    .expect("pod");
    pods.create(&Default::default(), &pod)
        .await
        .expect("create pod");
}

// Multi-threaded: kubectl runs as a blocking child process while the kubelet serves in-process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_and_exec_reach_the_kubelet_through_the_api_server() {
    if !require_root("kubectl_logs_and_exec_reach_the_kubelet_through_the_api_server") {
        return;
    }
    let kubectls = support::server::kubectls(&[29, 33]);
    let t = TestRuntime::new();
    // The runtime's pod is default/test: the Pod object below has the same name.
    let request = t.request(
        "app",
        &["/bin/sh", "-c", "echo hello-from-app; exec sleep 1000"],
    );
    let id = t.runtime.create(&request).await.expect("create");
    t.runtime.start(&id).await.expect("start");
    let server = support::server::TestServer::start();
    let (kubelet, client) = kubelet_for_server(&server, t.runtime.clone(), "kubelet-node").await;
    create_pod(&client, &t.pod.name, &["app"], "kubelet-node").await;
    create_pod(&client, "two", &["a", "b"], "kubelet-node").await;

    // kubectl picks a container itself; the API's own answer when none is named:
    let request = http::Request::get("/api/v1/namespaces/default/pods/two/log")
        .body(Vec::new())
        .expect("request");
    match client.request_text(request).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 400, "{status:?}");
            assert_eq!(
                status.message,
                "a container name must be specified for pod two, choose one of: [a b]"
            );
        }
        other => panic!("expected a 400 naming the containers, got {other:?}"),
    }
    for kubectl in kubectls.iter().filter(|k| k.ends_with("kubectl.1.33")) {
        // The log is there once the shim has written the first line.
        let deadline = tokio::time::Instant::now() + LONG;
        loop {
            let out = server.kubectl(kubectl, &["logs", "test"]);
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && stdout == "hello-from-app\n" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "kubectl logs: {stdout:?} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let out = server.kubectl(
            kubectl,
            &["logs", "test", "-c", "app", "--tail=1", "--timestamps"],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.ends_with(" hello-from-app\n"), "{stdout:?}");

        let out = server.kubectl(
            kubectl,
            &["exec", "test", "--", "sh", "-c", "echo out; exit 4"],
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
        assert_eq!(
            out.status.code(),
            Some(4),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        let out = server.kubectl_with(
            kubectl,
            &["exec", "-i", "test", "--", "cat"],
            Some("piped in\n"),
            &[],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "piped in\n");
    }
    // kubectl 1.29 speaks only SPDY to exec: it is told which versions work.
    for kubectl in kubectls.iter().filter(|k| k.ends_with("kubectl.1.29")) {
        let out = server.kubectl(kubectl, &["exec", "test", "--", "true"]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("kubectl 1.30"), "{stderr}");
    }
    drop(kubelet);
}

/// Sends an HTTP request through a WebSocket port-forward of port 8080 at `addr` + `path`
/// until the pod's web server answers; returns the answer.
async fn fetch_through_port_forward(kubelet: &Kubelet, addr: SocketAddr, path: &str) -> String {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let (mut ws, protocol) = kubelet.websocket_to(addr, path, "v4.channel.k8s.io").await;
        assert_eq!(protocol, "v4.channel.k8s.io");
        ws.send(Message::Binary(Bytes::from_static(
            b"\x00GET /index.html HTTP/1.0\r\n\r\n",
        )))
        .await
        .expect("send request");
        let mut data = Vec::new();
        let mut error = Vec::new();
        let mut prefixes = 0;
        while let Ok(Some(Ok(message))) = tokio::time::timeout(LONG, ws.next()).await {
            let Message::Binary(bytes) = message else {
                if let Message::Close(_) = message {
                    break;
                }
                continue;
            };
            let Some((&channel, payload)) = bytes.split_first() else {
                continue;
            };
            // The first message of each channel is the port, little endian.
            if prefixes < 2 {
                assert_eq!(payload, 8080u16.to_le_bytes(), "channel {channel}");
                prefixes += 1;
                continue;
            }
            match channel {
                0 => data.extend_from_slice(payload),
                1 => error.extend_from_slice(payload),
                other => panic!("unexpected channel {other}"),
            }
        }
        let text = String::from_utf8_lossy(&data).into_owned();
        if text.contains("hello-from-the-pod") {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no answer from the pod: data {text:?}, error {:?}",
            String::from_utf8_lossy(&error)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn start_web_pod(t: &TestRuntime, netns: &Netns) {
    let mut request = t.request(
        "web",
        &[
            "/bin/sh",
            "-c",
            "mkdir -p /tmp/www && echo hello-from-the-pod > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www",
        ],
    );
    request.spec.namespaces.network = Some(format!("/run/netns/{}", netns.0).into());
    let id = t.runtime.create(&request).await.expect("create");
    t.runtime.start(&id).await.expect("start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_through_the_api_server_is_relayed_to_the_kubelet() {
    if !require_root("port_forward_through_the_api_server_is_relayed_to_the_kubelet") {
        return;
    }
    let t = TestRuntime::new();
    let netns = Netns::create(&t.pod.uid);
    start_web_pod(&t, &netns).await;
    let server = support::server::TestServer::start();
    let (kubelet, client) = kubelet_for_server(&server, t.runtime.clone(), "pf-node").await;
    create_pod(&client, &t.pod.name, &["web"], "pf-node").await;
    let api: SocketAddr = ([127, 0, 0, 1], server.port).into();
    // As kubectl names it: `ports`.
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}/portforward?ports=8080",
        t.pod.namespace, t.pod.name
    );
    let reply = fetch_through_port_forward(&kubelet, api, &path).await;
    assert!(reply.starts_with("HTTP/1."), "{reply}");
    drop(kubelet);
    drop(server);
    drop(t);
    drop(netns);
}
