//! Container probes: one attempt ([`probe_once`]: exec, httpGet, tcpSocket, gRPC health) and the
//! per-container worker ([`spawn_worker`]) that runs it every period and applies the thresholds,
//! as kubelet's prober worker does.
//!
//! Owns probing only; must not restart containers or write pod status: the worker reports
//! changes of its thresholded result on a channel and the pod worker acts on them.
//!
//! # Guarantees
//! - Readiness starts as failing and liveness as passing; only changes are sent. A startup probe
//!   starts unknown: its first thresholded result is always sent, then the worker stops when it
//!   passed (the container has started).
//! - After a liveness or startup failure is reported the worker stops: the container is about to
//!   be restarted and gets a new worker, as kubelet holds its worker until the container changes.
//! - httpGet: 200–399 pass (3xx answers that are not followed pass as well), redirects are
//!   followed only to the same host (at most 10), certificates are not verified, the body is
//!   read up to 10 KiB, `User-Agent: kube-probe/<version>` unless a header says otherwise.
//!
//! # Caveats
//! Named ports must be resolved first with [`resolve_named_ports`] (the target does not carry the
//! container's ports).

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::agent::runtime::container::Runtime;

/// Kubernetes minor version the `User-Agent` names.
const KUBE_PROBE_USER_AGENT: &str = "kube-probe/1.33";
/// kubelet reads at most this much of an httpGet answer.
const MAX_BODY: usize = 10 * 1024;
const MAX_REDIRECTS: usize = 10;

/// Which probe a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

impl std::fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Startup => "Startup",
        })
    }
}

/// The result of one attempt; a failure carries the message kubelet would put in its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    Success,
    Failure(String),
}

/// Where a probe goes.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub pod_ip: Option<IpAddr>,
    pub host_ip: IpAddr,
    pub container_id: String,
}

/// A named probe port that the container does not declare.
#[derive(Debug, thiserror::Error)]
#[error("port {port:?} not found in container {container:?}")]
pub struct NamedPortError {
    pub port: String,
    pub container: String,
}

/// The probe with named httpGet/tcpSocket ports replaced by the container's port numbers (and
/// numeric strings by their numbers), as kubelet's `findPortByName` does.
pub fn resolve_named_ports(probe: &Probe, container: &Container) -> Result<Probe, NamedPortError> {
    let resolve = |port: &IntOrString| -> Result<IntOrString, NamedPortError> {
        match port {
            IntOrString::Int(n) => Ok(IntOrString::Int(*n)),
            IntOrString::String(name) => {
                if let Ok(n) = name.parse::<i32>() {
                    return Ok(IntOrString::Int(n));
                }
                container
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .map(|p| IntOrString::Int(p.container_port))
                    .ok_or_else(|| NamedPortError {
                        port: name.clone(),
                        container: container.name.clone(),
                    })
            }
        }
    };
    let mut probe = probe.clone();
    if let Some(http) = probe.http_get.as_mut() {
        http.port = resolve(&http.port)?;
    }
    if let Some(tcp) = probe.tcp_socket.as_mut() {
        tcp.port = resolve(&tcp.port)?;
    }
    Ok(probe)
}

fn timeout_of(probe: &Probe) -> Duration {
    Duration::from_secs(u64::try_from(probe.timeout_seconds.unwrap_or(1).max(1)).unwrap_or(1))
}

fn port_number(port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("invalid port number: {n}")),
        IntOrString::String(s) => s
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("named port {s:?} was not resolved to a number")),
    }
}

/// One probe attempt (exec through `Runtime::exec`, httpGet, tcpSocket, gRPC health) with its
/// timeout.
pub async fn probe_once(runtime: &Runtime, probe: &Probe, target: &ProbeTarget) -> ProbeOutcome {
    let timeout = timeout_of(probe);
    if let Some(exec) = &probe.exec {
        let command = exec.command.clone().unwrap_or_default();
        return exec_probe(runtime, &target.container_id, &command, timeout).await;
    }
    if let Some(http) = &probe.http_get {
        let host = match http.host.as_deref().filter(|h| !h.is_empty()) {
            Some(h) => h.to_string(),
            None => match target.pod_ip {
                Some(ip) => ip.to_string(),
                None => return ProbeOutcome::Failure("the pod has no IP to probe".into()),
            },
        };
        let port = match port_number(&http.port) {
            Ok(p) => p,
            Err(e) => return ProbeOutcome::Failure(e),
        };
        let scheme = http.scheme.as_deref().unwrap_or("HTTP").to_lowercase();
        let headers: Vec<(String, String)> = http
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        let url = probe_url(&scheme, &host, port, http.path.as_deref().unwrap_or(""));
        return http_probe(&url, &headers, timeout).await;
    }
    if let Some(tcp) = &probe.tcp_socket {
        let host = tcp
            .host
            .as_deref()
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .or_else(|| target.pod_ip.map(|ip| ip.to_string()));
        let Some(host) = host else {
            return ProbeOutcome::Failure("the pod has no IP to probe".into());
        };
        let port = match port_number(&tcp.port) {
            Ok(p) => p,
            Err(e) => return ProbeOutcome::Failure(e),
        };
        return tcp_probe(&host, port, timeout).await;
    }
    if let Some(grpc) = &probe.grpc {
        let Some(ip) = target.pod_ip else {
            return ProbeOutcome::Failure("the pod has no IP to probe".into());
        };
        let port = match port_number(&IntOrString::Int(grpc.port)) {
            Ok(p) => p,
            Err(e) => return ProbeOutcome::Failure(e),
        };
        let service = grpc.service.clone().unwrap_or_default();
        return grpc_probe(SocketAddr::new(ip, port), &service, timeout).await;
    }
    ProbeOutcome::Failure("missing probe handler".into())
}

/// `scheme://host:port/path` with IPv6 hosts bracketed and the path given a leading `/`.
pub fn probe_url(scheme: &str, host: &str, port: u16, path: &str) -> String {
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    format!("{scheme}://{host}:{port}{path}")
}

async fn exec_probe(
    runtime: &Runtime,
    container_id: &str,
    command: &[String],
    timeout: Duration,
) -> ProbeOutcome {
    let started = std::time::Instant::now();
    let process = match runtime.exec(container_id, command, false).await {
        Ok(p) => p,
        Err(e) => return ProbeOutcome::Failure(format!("exec failed: {e}")),
    };
    match process.output(timeout).await {
        Ok(output) if output.exit_code == 0 => ProbeOutcome::Success,
        Ok(output) if output.exit_code == 137 && started.elapsed() >= timeout => {
            ProbeOutcome::Failure(format!(
                "command {command:?} timed out after {}s",
                timeout.as_secs()
            ))
        }
        Ok(output) => {
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            text.truncate(MAX_BODY);
            ProbeOutcome::Failure(format!(
                "command {command:?} exited with {}: {}",
                output.exit_code,
                text.trim_end()
            ))
        }
        Err(e) => ProbeOutcome::Failure(format!("exec failed: {e}")),
    }
}

/// One HTTP client for all probes: no proxy, no pooled connections (kubelet disables
/// keep-alive), no certificate verification, redirects only within the first URL's host.
fn http_client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let policy = reqwest::redirect::Policy::custom(|attempt| {
                if attempt.previous().len() > MAX_REDIRECTS {
                    return attempt.error("stopped after 10 redirects");
                }
                let original = attempt.previous().first().and_then(|u| u.host_str());
                if original.is_some() && attempt.url().host_str() != original {
                    // A redirect to another host is not followed; its 3xx answer counts.
                    attempt.stop()
                } else {
                    attempt.follow()
                }
            });
            reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .danger_accept_invalid_certs(true)
                .redirect(policy)
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// An httpGet attempt against `url`.
pub async fn http_probe(
    url: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> ProbeOutcome {
    let client = match http_client() {
        Ok(c) => c,
        Err(e) => return ProbeOutcome::Failure(format!("HTTP probe client: {e}")),
    };
    let mut request = client.get(url).timeout(timeout);
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if !has("user-agent") {
        request = request.header(reqwest::header::USER_AGENT, KUBE_PROBE_USER_AGENT);
    }
    if !has("accept") {
        request = request.header(reqwest::header::ACCEPT, "*/*");
    }
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let attempt = async {
        let mut response = request.send().await?;
        let status = response.status();
        let mut body = Vec::new();
        while body.len() < MAX_BODY {
            match response.chunk().await? {
                Some(chunk) => body.extend_from_slice(&chunk),
                None => break,
            }
        }
        body.truncate(MAX_BODY);
        Ok::<_, reqwest::Error>((status, body))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => ProbeOutcome::Failure(format!(
            "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
        Ok(Err(e)) => ProbeOutcome::Failure(format!("Get \"{url}\": {}", error_chain(&e))),
        Ok(Ok((status, body))) => {
            let code = status.as_u16();
            if (200..400).contains(&code) {
                ProbeOutcome::Success
            } else {
                tracing::debug!(%url, code, body = %String::from_utf8_lossy(&body), "HTTP probe failed");
                ProbeOutcome::Failure(format!("HTTP probe failed with statuscode: {code}"))
            }
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A tcpSocket attempt: the connection opens within the timeout.
pub async fn tcp_probe(host: &str, port: u16, timeout: Duration) -> ProbeOutcome {
    let address = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&address)).await {
        Ok(Ok(_stream)) => ProbeOutcome::Success,
        Ok(Err(e)) => ProbeOutcome::Failure(format!("dial tcp {address}: connect: {e}")),
        Err(_) => ProbeOutcome::Failure(format!("dial tcp {address}: i/o timeout")),
    }
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse` (status: 0 UNKNOWN, 1 SERVING, 2 NOT_SERVING,
/// 3 SERVICE_UNKNOWN).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    pub status: i32,
}

fn serving_status_name(status: i32) -> &'static str {
    match status {
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "UNKNOWN",
    }
}

/// A gRPC attempt: `grpc.health.v1.Health/Check` over plain HTTP/2 answers SERVING.
pub async fn grpc_probe(address: SocketAddr, service: &str, timeout: Duration) -> ProbeOutcome {
    let uri = format!("http://{address}");
    let attempt = async {
        let endpoint = tonic::transport::Endpoint::from_shared(uri.clone())
            .map_err(|e| format!("invalid address {uri}: {e}"))?
            .connect_timeout(timeout)
            .timeout(timeout);
        let channel = endpoint.connect().await.map_err(|e| {
            format!(
                "failed to connect service {address:?} within {}s: {}",
                timeout.as_secs(),
                error_chain(&e)
            )
        })?;
        let mut client = tonic::client::Grpc::new(channel);
        client
            .ready()
            .await
            .map_err(|e| format!("failed to connect service {address:?}: {e}"))?;
        let path =
            tonic::codegen::http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check");
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: service.to_string(),
        });
        request.metadata_mut().insert(
            "user-agent",
            tonic::metadata::MetadataValue::from_static(KUBE_PROBE_USER_AGENT),
        );
        let response: tonic::Response<HealthCheckResponse> = client
            .unary(
                request,
                path,
                tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default(),
            )
            .await
            .map_err(|status| match status.code() {
                tonic::Code::Unimplemented => format!(
                    "this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
                    status.message()
                ),
                tonic::Code::DeadlineExceeded => format!(
                    "timeout: health rpc did not complete within {}s",
                    timeout.as_secs()
                ),
                code => format!("health rpc probe failed: {code:?}: {}", status.message()),
            })?;
        Ok::<i32, String>(response.into_inner().status)
    };
    match tokio::time::timeout(timeout + Duration::from_millis(500), attempt).await {
        Err(_) => ProbeOutcome::Failure(format!(
            "timeout: health rpc did not complete within {}s",
            timeout.as_secs()
        )),
        Ok(Err(message)) => ProbeOutcome::Failure(message),
        Ok(Ok(1)) => ProbeOutcome::Success,
        Ok(Ok(status)) => ProbeOutcome::Failure(format!(
            "service unhealthy (responded with \"{}\")",
            serving_status_name(status)
        )),
    }
}

/// The thresholds of kubelet's prober worker as a state machine: a result becomes the reported
/// one after `successThreshold` successes or `failureThreshold` failures in a row.
#[derive(Debug, Clone)]
pub struct Thresholds {
    success_threshold: u32,
    failure_threshold: u32,
    last: Option<bool>,
    run: u32,
    reported: Option<bool>,
}

impl Thresholds {
    /// `initial` is the reported result before any attempt (`None` = unknown).
    pub fn new(probe: &Probe, initial: Option<bool>) -> Thresholds {
        let positive = |v: Option<i32>, default: u32| {
            v.and_then(|v| u32::try_from(v).ok())
                .filter(|v| *v > 0)
                .unwrap_or(default)
        };
        Thresholds {
            success_threshold: positive(probe.success_threshold, 1),
            failure_threshold: positive(probe.failure_threshold, 3),
            last: None,
            run: 0,
            reported: initial,
        }
    }

    /// Records one attempt; returns the new reported result when it changed.
    pub fn observe(&mut self, passed: bool) -> Option<bool> {
        if self.last == Some(passed) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(passed);
            self.run = 1;
        }
        let threshold = if passed {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        if self.run < threshold {
            return None;
        }
        if !passed {
            // As kubelet: after a failure reaches its threshold the count starts over.
            self.run = 0;
        }
        if self.reported == Some(passed) {
            return None;
        }
        self.reported = Some(passed);
        Some(passed)
    }

    pub fn reported(&self) -> Option<bool> {
        self.reported
    }
}

/// The result a probe kind reports before any attempt: readiness fails, liveness passes,
/// startup is unknown.
pub fn initial_result(kind: ProbeKind) -> Option<bool> {
    match kind {
        ProbeKind::Readiness => Some(false),
        ProbeKind::Liveness => Some(true),
        ProbeKind::Startup => None,
    }
}

/// What a probe worker tells the pod worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeEvent {
    /// The thresholded result changed (true = passing).
    Changed(bool),
    /// One attempt failed, with kubelet's message (for the `Unhealthy` event).
    AttemptFailed(String),
}

/// One report of a probe worker, naming the container (by name and id) it probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    pub kind: ProbeKind,
    pub container: String,
    pub container_id: String,
    pub event: ProbeEvent,
}

/// A worker honouring initialDelaySeconds, periodSeconds, timeoutSeconds,
/// success/failureThreshold; sends each change of the thresholded result (true = passing) and,
/// without waiting, each failed attempt on `results`; stops on `cancel`.
pub fn spawn_worker(
    runtime: Runtime,
    kind: ProbeKind,
    probe: Probe,
    target: ProbeTarget,
    results: tokio::sync::mpsc::Sender<ProbeReport>,
    container_name: String,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let span = tracing::info_span!(
        "probe",
        kind = %kind,
        container = %container_name,
        container_id = %target.container_id
    );
    tokio::spawn(
        async move {
            let secs = |v: Option<i32>, default: i32| {
                Duration::from_secs(u64::try_from(v.unwrap_or(default).max(0)).unwrap_or(0))
            };
            let initial_delay = secs(probe.initial_delay_seconds, 0);
            let period = secs(probe.period_seconds, 10).max(Duration::from_secs(1));
            let mut thresholds = Thresholds::new(&probe, initial_result(kind));
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(initial_delay) => {}
            }
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                let outcome = tokio::select! {
                    () = cancel.cancelled() => return,
                    outcome = probe_once(&runtime, &probe, &target) => outcome,
                };
                let report = |event: ProbeEvent| ProbeReport {
                    kind,
                    container: container_name.clone(),
                    container_id: target.container_id.clone(),
                    event,
                };
                let passed = match &outcome {
                    ProbeOutcome::Success => true,
                    ProbeOutcome::Failure(message) => {
                        tracing::debug!(%message, "probe failed");
                        // Events are best effort: a full channel drops one, never blocks.
                        let _ =
                            results.try_send(report(ProbeEvent::AttemptFailed(message.clone())));
                        false
                    }
                };
                // A startup probe starts unknown, so its first thresholded result is a change.
                let changed = thresholds.observe(passed);
                if let Some(result) = changed {
                    if let ProbeOutcome::Failure(message) = &outcome {
                        tracing::info!(%message, "probe failed past its threshold");
                    }
                    if results
                        .send(report(ProbeEvent::Changed(result)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let done = match kind {
                        ProbeKind::Readiness => false,
                        ProbeKind::Liveness => !result,
                        ProbeKind::Startup => true,
                    };
                    if done {
                        return;
                    }
                }
            }
        }
        .instrument(span),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, HTTPGetAction, TCPSocketAction};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn probe(success: i32, failure: i32) -> Probe {
        Probe {
            success_threshold: Some(success),
            failure_threshold: Some(failure),
            ..Default::default()
        }
    }

    #[test]
    fn readiness_needs_success_threshold_successes_in_a_row() {
        let mut t = Thresholds::new(&probe(2, 3), initial_result(ProbeKind::Readiness));
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(true));
        assert_eq!(t.observe(true), None, "no change, nothing reported");
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(false));
        assert_eq!(t.observe(false), None);
    }

    #[test]
    fn liveness_starts_passing_and_fails_after_failure_threshold() {
        let mut t = Thresholds::new(&probe(1, 3), initial_result(ProbeKind::Liveness));
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None, "a success breaks the run");
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(false));
    }

    #[test]
    fn startup_reports_its_first_thresholded_result() {
        let mut t = Thresholds::new(&probe(1, 2), initial_result(ProbeKind::Startup));
        assert_eq!(t.observe(true), Some(true));
        let mut t = Thresholds::new(&probe(1, 2), initial_result(ProbeKind::Startup));
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(false));
    }

    #[test]
    fn zero_or_missing_thresholds_take_kubernetes_defaults() {
        let mut t = Thresholds::new(&Probe::default(), Some(true));
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(false));
        assert_eq!(t.observe(true), Some(true));
    }

    #[test]
    fn named_ports_resolve_from_the_container() {
        let container = Container {
            name: "web".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        };
        let p = Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::String("http".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let resolved = resolve_named_ports(&p, &container).expect("resolved");
        assert_eq!(
            resolved.http_get.map(|h| h.port),
            Some(IntOrString::Int(8080))
        );
        let missing = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("nope".into()),
                host: None,
            }),
            ..Default::default()
        };
        assert!(resolve_named_ports(&missing, &container).is_err());
    }

    #[test]
    fn urls_are_built_like_kubelet() {
        assert_eq!(
            probe_url("http", "10.0.0.1", 80, "healthz"),
            "http://10.0.0.1:80/healthz"
        );
        assert_eq!(
            probe_url("https", "::1", 443, "/x?y=1"),
            "https://[::1]:443/x?y=1"
        );
        assert_eq!(probe_url("http", "h", 1, ""), "http://h:1/");
    }

    /// A tiny HTTP server on 127.0.0.1: answers each request by its path, recording the request
    /// head it saw.
    async fn http_server() -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let _ = tx.send(head);
                    let response = match path.as_str() {
                        "/ok" => "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_string(),
                        "/redirect-local" => {
                            "HTTP/1.1 302 Found\r\nlocation: /fail\r\ncontent-length: 0\r\n\r\n"
                                .to_string()
                        }
                        "/redirect-away" => "HTTP/1.1 302 Found\r\nlocation: http://elsewhere.invalid/fail\r\ncontent-length: 0\r\n\r\n".to_string(),
                        "/slow" => {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_string()
                        }
                        _ => "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\nfail"
                            .to_string(),
                    };
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        (port, rx)
    }

    #[tokio::test]
    async fn http_probe_status_codes_headers_and_redirects() {
        let (port, mut heads) = http_server().await;
        let url = |p: &str| probe_url("http", "127.0.0.1", port, p);
        let second = Duration::from_secs(2);
        let headers = vec![("X-Custom".to_string(), "yes".to_string())];
        assert_eq!(
            http_probe(&url("/ok"), &headers, second).await,
            ProbeOutcome::Success
        );
        let head = heads.recv().await.expect("request seen").to_lowercase();
        assert!(head.contains("x-custom: yes"), "{head}");
        assert!(head.contains("user-agent: kube-probe/"), "{head}");

        assert_eq!(
            http_probe(&url("/fail"), &[], second).await,
            ProbeOutcome::Failure("HTTP probe failed with statuscode: 500".into())
        );
        // Same-host redirect is followed (to a failing page).
        assert_eq!(
            http_probe(&url("/redirect-local"), &[], second).await,
            ProbeOutcome::Failure("HTTP probe failed with statuscode: 500".into())
        );
        // A redirect to another host is not followed and its 3xx counts as passing.
        assert_eq!(
            http_probe(&url("/redirect-away"), &[], second).await,
            ProbeOutcome::Success
        );
        let slow = http_probe(&url("/slow"), &[], Duration::from_secs(1)).await;
        assert!(matches!(slow, ProbeOutcome::Failure(_)), "{slow:?}");
    }

    #[tokio::test]
    async fn tcp_probe_passes_on_an_open_port_and_fails_on_a_closed_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert_eq!(
            tcp_probe("127.0.0.1", port, Duration::from_secs(2)).await,
            ProbeOutcome::Success
        );
        drop(listener);
        let closed = tcp_probe("127.0.0.1", port, Duration::from_secs(2)).await;
        assert!(matches!(closed, ProbeOutcome::Failure(_)), "{closed:?}");
    }

    /// A plain HTTP/2 gRPC server on 127.0.0.1 answering `grpc.health.v1.Health/Check`:
    /// service "" is SERVING, "down" is NOT_SERVING.
    async fn grpc_health_server() -> u16 {
        use http_body_util::BodyExt as _;
        use prost::Message as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        |request: hyper::Request<hyper::body::Incoming>| async move {
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let asked =
                                HealthCheckRequest::decode(body.get(5..).unwrap_or_default())
                                    .unwrap_or_default();
                            let status = if asked.service == "down" { 2 } else { 1 };
                            let message = HealthCheckResponse { status }.encode_to_vec();
                            let mut frame = vec![0u8];
                            frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
                            frame.extend_from_slice(&message);
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            let frames = vec![
                                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
                                    hyper::body::Bytes::from(frame),
                                )),
                                Ok(hyper::body::Frame::trailers(trailers)),
                            ];
                            let body =
                                http_body_util::StreamBody::new(futures::stream::iter(frames));
                            hyper::Response::builder()
                                .header("content-type", "application/grpc")
                                .body(body)
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn grpc_probe_checks_the_health_service() {
        let port = grpc_health_server().await;
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let second = Duration::from_secs(2);
        assert_eq!(grpc_probe(address, "", second).await, ProbeOutcome::Success);
        assert_eq!(
            grpc_probe(address, "down", second).await,
            ProbeOutcome::Failure("service unhealthy (responded with \"NOT_SERVING\")".into())
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let closed = listener.local_addr().expect("addr");
        drop(listener);
        let outcome = grpc_probe(closed, "", second).await;
        assert!(matches!(outcome, ProbeOutcome::Failure(_)), "{outcome:?}");
    }
}
