//! `kubectl port-forward` against a real node: a `cluster server` with its embedded agent in a
//! network namespace the test makes, busybox `httpd` and an `nc` echo server in a pod.
//! kubectl 1.31 and newer tunnel SPDY in a WebSocket (`SPDY/3.1+portforward.k8s.io`) through
//! the API server to the kubelet; kubectl 1.30 only speaks plain SPDY and gets a clear error.
//!
//! Needs root, iproute2, nftables, nsenter, kubectl (1.30, 1.31 and 1.33 from the Cloud SDK)
//! and busybox-static: CI (`CI=true`) runs them; elsewhere they skip and say why.

mod support;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::node::{require, Node, IMAGE, LONG};
use support::registry;

const SDK: &str = "/usr/lib/google-cloud-sdk/bin";

/// The versioned kubectl, or `None` (with the reason printed) when it is missing outside CI.
fn versioned_kubectl(test: &str, version: &str) -> Option<PathBuf> {
    let path = Path::new(SDK).join(format!("kubectl.{version}"));
    if path.exists() {
        return Some(path);
    }
    if registry::in_ci() {
        panic!("{test}: needs {}, and CI=true must run it", path.display());
    }
    eprintln!("skipping {test}: needs {}", path.display());
    None
}

/// The web pod: busybox httpd on 8080 serving a small page and a ~2.6 MB file, and an echo
/// server (nc running cat per connection) on 9000; Ready once both listen.
fn web_pod() -> String {
    let script = "busybox mkdir -p /www && echo hello-from-web > /www/index.html && \
                  busybox seq 1 400000 > /www/big && busybox httpd -p 8080 -h /www && \
                  exec busybox nc -ll -p 9000 -e busybox cat";
    let listening = "busybox netstat -ltn > /tmp/listen && busybox grep -q ':8080 ' /tmp/listen \
                     && busybox grep -q ':9000 ' /tmp/listen";
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {IMAGE}\n    command: [\"/bin/sh\", \"-c\", {script:?}]\n    readinessProbe:\n      exec:\n        command: [\"/bin/sh\", \"-c\", {listening:?}]\n      periodSeconds: 1\n"
    )
}

/// Creates the web pod and waits until it is Ready (both servers listen).
fn start_web(node: &Node) {
    node.apply(&web_pod());
    node.wait_for(
        "web Ready",
        &[
            "get",
            "pod",
            "web",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ],
        |s| s == "True",
    );
}

fn big_body() -> String {
    (1..=400000).map(|i| format!("{i}\n")).collect()
}

/// A running `kubectl port-forward`, killed (by PID) when dropped.
struct PortForward {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl PortForward {
    fn start(node: &Node, kubectl: &Path, args: &[&str]) -> PortForward {
        let mut child = Command::new(kubectl)
            .arg("port-forward")
            .args(args)
            .env("KUBECONFIG", &node.server().kubeconfig)
            .env("HOME", node.server().dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl port-forward");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let collected = Arc::new(Mutex::new(String::new()));
        let sink = collected.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut all) = sink.lock() {
                    all.push_str(&line);
                    all.push('\n');
                }
            }
        });
        PortForward {
            child,
            lines,
            stderr: collected,
        }
    }

    /// The local port kubectl prints for remote `remote` ("Forwarding from 127.0.0.1:P -> R").
    fn local_port(&mut self, node: &Node, remote: u16) -> u16 {
        let deadline = Instant::now() + LONG;
        let suffix = format!(" -> {remote}");
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(500)) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                        if let Some(port) = rest.strip_suffix(&suffix) {
                            return port.parse().expect("local port");
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        node.fail(&format!(
            "kubectl port-forward printed no local port for {remote}; stderr: {}",
            self.stderr()
        ));
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits (generously) for kubectl to exit by itself.
    fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + LONG;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to kubectl");
    stream.set_read_timeout(Some(LONG)).expect("timeout");
    stream
}

/// One HTTP/1.0 GET through the forward; the body.
fn http_get(port: u16, path: &str) -> String {
    let mut stream = connect(port);
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("send");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read reply");
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP reply: {reply:?}"));
    assert!(head.contains(" 200 "), "GET {path}: {head}");
    body.to_string()
}

/// Sends `payload`, finishes writing, reads everything the echo server returns.
fn echo(port: u16, payload: &[u8]) -> Vec<u8> {
    let mut stream = connect(port);
    let writer = stream.try_clone().expect("clone");
    let payload = payload.to_vec();
    let sender = std::thread::spawn(move || {
        let mut writer = writer;
        writer.write_all(&payload).expect("send");
        writer.shutdown(Shutdown::Write).expect("half close");
    });
    let mut back = Vec::new();
    stream.read_to_end(&mut back).expect("read echo");
    sender.join().expect("sender");
    back
}

/// kubectl 1.31 and 1.33 forward to a pod through the API server: sequential and concurrent
/// HTTP requests, a large body, and an echo that needs both directions and half-close.
#[test]
fn kubectl_port_forward_over_spdy_in_websocket() {
    let test = "kubectl_port_forward_over_spdy_in_websocket";
    if !require(test) {
        return;
    }
    let kubectls: Vec<(&str, PathBuf)> = match ["1.31", "1.33"]
        .iter()
        .map(|v| versioned_kubectl(test, v).map(|k| (*v, k)))
        .collect::<Option<Vec<_>>>()
    {
        Some(k) => k,
        None => return,
    };
    let node = Node::start("pf");
    start_web(&node);
    let big = big_body();
    for (version, kubectl) in &kubectls {
        let mut forward = PortForward::start(&node, kubectl, &["pod/web", ":8080", ":9000"]);
        let web = forward.local_port(&node, 8080);
        let echo_port = forward.local_port(&node, 9000);
        eprintln!("kubectl {version}: 8080 on local port {web}, 9000 on {echo_port}");

        // Sequential requests, each its own connection (and pair of streams).
        for _ in 0..3 {
            assert_eq!(
                http_get(web, "/index.html"),
                "hello-from-web\n",
                "kubectl {version}"
            );
        }
        assert!(
            http_get(web, "/big") == big,
            "kubectl {version}: /big differs"
        );

        // Concurrent connections on the one session.
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let expect = if i % 2 == 0 {
                    big.clone()
                } else {
                    "hello-from-web\n".into()
                };
                std::thread::spawn(move || {
                    let path = if i % 2 == 0 { "/big" } else { "/index.html" };
                    (http_get(web, path) == expect, path)
                })
            })
            .collect();
        for thread in threads {
            let (same, path) = thread.join().expect("request thread");
            assert!(same, "kubectl {version}: concurrent GET {path} differs");
        }

        // Both directions: 1 MiB up, the same back once the client half-closes.
        let payload: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
        let back = echo(echo_port, &payload);
        assert!(
            back == payload,
            "kubectl {version}: echo returned {} bytes of {}",
            back.len(),
            payload.len()
        );
        assert!(
            forward.child.try_wait().expect("try_wait").is_none(),
            "kubectl {version} exited: {}",
            forward.stderr()
        );
    }
}

/// How many connections the echo server (local address 127.0.0.1:9000) has established, from
/// `netstat -tn` output.
fn echo_connections(netstat: &str) -> usize {
    netstat
        .lines()
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(3).is_some_and(|a| a.ends_with("127.0.0.1:9000"))
                && fields.get(5) == Some(&"ESTABLISHED")
        })
        .count()
}

/// Killing kubectl mid-connection ends the session and every connection it had into the pod.
#[test]
fn connections_into_the_pod_end_with_the_session() {
    let test = "connections_into_the_pod_end_with_the_session";
    if !require(test) {
        return;
    }
    let Some(kubectl) = versioned_kubectl(test, "1.33") else {
        return;
    };
    let node = Node::start("pfend");
    start_web(&node);
    let mut forward = PortForward::start(&node, &kubectl, &["pod/web", ":9000"]);
    let echo_port = forward.local_port(&node, 9000);
    let mut open = Vec::new();
    for i in 0..3 {
        let mut stream = connect(echo_port);
        let line = format!("still-open-{i}\n");
        stream.write_all(line.as_bytes()).expect("send");
        let mut back = vec![0u8; line.len()];
        stream.read_exact(&mut back).expect("echo");
        assert_eq!(back, line.as_bytes());
        open.push(stream);
    }
    let netstat = node.kubectl_ok(&["exec", "web", "--", "busybox", "netstat", "-tn"]);
    assert_eq!(
        echo_connections(&netstat),
        3,
        "echo connections in the pod:\n{netstat}"
    );
    drop(forward);
    node.wait_for(
        "echo connections closed",
        &["exec", "web", "--", "busybox", "netstat", "-tn"],
        |out| echo_connections(out) == 0,
    );
    drop(open);
}

/// A forward to a port nobody listens on: kubectl reports the kubelet's error text (and, as
/// kubectl does since it closes the session on a forwarding error, stops); the node keeps
/// serving: a new forward works.
#[test]
fn kubectl_port_forward_to_a_closed_port_reports_the_error() {
    let test = "kubectl_port_forward_to_a_closed_port_reports_the_error";
    if !require(test) {
        return;
    }
    let Some(kubectl) = versioned_kubectl(test, "1.33") else {
        return;
    };
    let node = Node::start("pfclosed");
    start_web(&node);
    let mut forward = PortForward::start(&node, &kubectl, &["pod/web", ":8080", ":9999"]);
    let web = forward.local_port(&node, 8080);
    let closed = forward.local_port(&node, 9999);
    assert_eq!(http_get(web, "/index.html"), "hello-from-web\n");
    let mut stream = connect(closed);
    let mut nothing = Vec::new();
    // kubectl closes the local connection once the remote side is done.
    let _ = stream.read_to_end(&mut nothing);
    assert!(nothing.is_empty(), "a closed port sent {nothing:?}");
    let deadline = Instant::now() + LONG;
    while !forward.stderr().contains("error forwarding port 9999") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let stderr = forward.stderr();
    eprintln!("kubectl after the closed port:\n{stderr}");
    assert!(
        stderr.contains("error forwarding port 9999 to pod default/web")
            && stderr.contains("failed to connect to localhost:9999"),
        "kubectl stderr: {stderr}"
    );
    assert!(
        forward.wait_exit().is_some(),
        "kubectl kept running: {stderr}"
    );
    drop(forward);

    let mut again = PortForward::start(&node, &kubectl, &["pod/web", ":8080"]);
    let web = again.local_port(&node, 8080);
    assert_eq!(http_get(web, "/index.html"), "hello-from-web\n");
}

/// kubectl 1.30 speaks only plain SPDY (an HTTP upgrade, then SPDY on the connection itself):
/// it forwards too. A request that upgrades to neither gets the error naming what works.
#[test]
fn kubectl_1_30_port_forward_over_plain_spdy() {
    let test = "kubectl_1_30_port_forward_over_plain_spdy";
    if !require(test) {
        return;
    }
    let Some(kubectl) = versioned_kubectl(test, "1.30") else {
        return;
    };
    let node = Node::start("pfold");
    start_web(&node);
    let mut forward = PortForward::start(&node, &kubectl, &["pod/web", ":8080", ":9000"]);
    let web = forward.local_port(&node, 8080);
    let echo_port = forward.local_port(&node, 9000);
    assert_eq!(http_get(web, "/index.html"), "hello-from-web\n");
    let big = big_body();
    let threads: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || http_get(web, "/big")))
        .collect();
    for thread in threads {
        assert!(
            thread.join().expect("request thread") == big,
            "/big differs"
        );
    }
    let payload: Vec<u8> = (0..(256 * 1024)).map(|i| (i % 253) as u8).collect();
    assert!(echo(echo_port, &payload) == payload, "echo differs");
    assert!(
        forward.child.try_wait().expect("try_wait").is_none(),
        "kubectl 1.30 exited: {}",
        forward.stderr()
    );
    drop(forward);

    let (ok, _, stderr) = node.kubectl(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/pods/web/portforward?ports=8080",
    ]);
    assert!(
        !ok && stderr.contains("port-forward is served over WebSockets"),
        "a plain GET: {stderr}"
    );
}
