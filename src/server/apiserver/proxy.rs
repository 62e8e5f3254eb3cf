//! The API server's proxy to kubelets: `pods/log`, `pods/exec`, `pods/attach`,
//! `pods/portforward` and `nodes/proxy`.
//!
//! The pod's node comes from `spec.nodeName`; the kubelet is dialled at the node's
//! `InternalIP` (else its first address) and `status.daemonEndpoints.kubeletEndpoint.Port`
//! (10250 when unset), over TLS with the API server's kubelet client certificate, and the
//! kubelet's certificate is verified against the cluster CA. Plain requests (logs, node proxy)
//! stream the kubelet's answer back; upgrade requests (WebSocket exec/attach/port-forward) are
//! answered with the kubelet's `101` and the two connections are then relayed byte for byte,
//! so whatever the kubelet speaks (or refuses, such as SPDY) reaches the client unchanged.
//!
//! Reads pods and nodes through [`rest::get`] only; must not write anything.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, Method, Request, StatusCode};
use axum::response::Response;
use serde_json::Value;
use tracing::{debug, info_span, Instrument};

use super::errors::ApiError;
use super::request::{Output, ResourceRequest};
use super::{rest, ApiState};

/// How long dialling a kubelet (TCP + TLS) may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// The kubelet port when the node does not say.
const DEFAULT_KUBELET_PORT: u16 = 10250;

/// Request headers passed on to the kubelet (the upgrade handshake and content negotiation).
const FORWARDED_HEADERS: &[&str] = &[
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
    "accept",
];

/// The pod subresources proxied to the kubelet.
pub fn is_pod_subresource(name: &str) -> bool {
    matches!(name, "log" | "exec" | "attach" | "portforward")
}

/// The kubelet verb of a pod subresource request (kube-apiserver authorizes exec, attach and
/// port-forward as `create`, also for WebSocket upgrades that arrive as GET).
pub fn verb_for(subresource: &str, method: &Method) -> &'static str {
    match subresource {
        "log" => "get",
        "exec" | "attach" | "portforward" => "create",
        _ => match *method {
            Method::GET | Method::HEAD => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "get",
        },
    }
}

/// Which container a log, exec or attach request is for: the `container` parameter, else the
/// only container, else the error kube-apiserver gives.
pub fn pick_container(pod: &Value, requested: Option<&str>) -> Result<String, ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let names = |key: &str| -> Vec<String> {
        pod["spec"][key]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let containers = names("containers");
    let init = names("initContainers");
    let ephemeral = names("ephemeralContainers");
    match requested.filter(|c| !c.is_empty()) {
        Some(container) => {
            if containers
                .iter()
                .chain(&init)
                .chain(&ephemeral)
                .any(|c| c == container)
            {
                Ok(container.to_string())
            } else {
                Err(ApiError::bad_request(format!(
                    "container {container} is not valid for pod {name}"
                )))
            }
        }
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => {
            let mut message = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !init.is_empty() {
                message.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            if !ephemeral.is_empty() {
                message.push_str(&format!(
                    " or one of the ephemeral containers: [{}]",
                    ephemeral.join(" ")
                ));
            }
            Err(ApiError::bad_request(message))
        }
    }
}

/// Where a node's kubelet listens: its InternalIP (else first address) and kubelet port.
pub fn kubelet_address(node: &Value) -> Result<(IpAddr, u16), ApiError> {
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    let addresses = node["status"]["addresses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let parse = |a: &Value| a["address"].as_str().and_then(|s| s.parse::<IpAddr>().ok());
    let ip = addresses
        .iter()
        .filter(|a| a["type"] == "InternalIP")
        .find_map(parse)
        .or_else(|| addresses.iter().find_map(parse))
        .ok_or_else(|| {
            ApiError::bad_request(format!("node {name} has no address to reach its kubelet"))
        })?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Ok((ip, port))
}

/// What one proxied request needs.
#[derive(Debug)]
pub struct ProxyRequest<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    /// The raw query string, passed on unchanged.
    pub raw_query: Option<&'a str>,
    /// The client connection's upgrade, for WebSocket requests.
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// `pods/{log,exec,attach,portforward}`.
pub async fn pod_subresource(
    state: &Arc<ApiState>,
    request: &ResourceRequest,
    query_container: Option<&str>,
    proxy: ProxyRequest<'_>,
) -> Result<Response, ApiError> {
    let (Some(namespace), Some(name), Some(sub)) = (
        request.namespace.as_deref(),
        request.name.as_deref(),
        request.subresource.as_deref(),
    ) else {
        return Err(ApiError::no_such_route());
    };
    let pod = get_object(state, request, Some(namespace), name).await?;
    let path = match sub {
        "log" | "exec" | "attach" => {
            let container = pick_container(&pod, query_container)?;
            let endpoint = match sub {
                "log" => "containerLogs",
                other => other,
            };
            format!("/{endpoint}/{namespace}/{name}/{container}")
        }
        "portforward" => format!("/portForward/{namespace}/{name}"),
        _ => return Err(ApiError::no_such_route()),
    };
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or_default();
    if node_name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let (ip, port) = node_endpoint(state, node_name).await?;
    forward(state, ip, port, &path, proxy)
        .instrument(info_span!("kubelet_proxy", node = %node_name, %path))
        .await
}

/// `nodes/{name}/proxy/{path…}`.
pub async fn node_proxy(
    state: &Arc<ApiState>,
    node_name: &str,
    rest_path: &str,
    proxy: ProxyRequest<'_>,
) -> Result<Response, ApiError> {
    let (ip, port) = node_endpoint(state, node_name).await?;
    let path = format!("/{}", rest_path.trim_start_matches('/'));
    forward(state, ip, port, &path, proxy)
        .instrument(info_span!("kubelet_proxy", node = %node_name, %path))
        .await
}

async fn get_object(
    state: &Arc<ApiState>,
    request: &ResourceRequest,
    namespace: Option<&str>,
    name: &str,
) -> Result<Value, ApiError> {
    let plain = ResourceRequest {
        info: Arc::clone(&request.info),
        namespace: namespace.map(str::to_owned),
        name: Some(name.to_owned()),
        subresource: None,
    };
    Ok(rest::get(state, &plain, Output::Json).await?.body)
}

async fn node_endpoint(state: &Arc<ApiState>, node_name: &str) -> Result<(IpAddr, u16), ApiError> {
    let info = state
        .resources
        .find("", "v1", "nodes")
        .ok_or_else(ApiError::no_such_route)?;
    let request = ResourceRequest {
        info,
        namespace: None,
        name: Some(node_name.to_owned()),
        subresource: None,
    };
    let node = get_object(state, &request, None, node_name).await?;
    kubelet_address(&node)
}

/// Sends the request to the kubelet and streams (or relays, after an upgrade) the answer.
async fn forward(
    state: &Arc<ApiState>,
    ip: IpAddr,
    port: u16,
    path: &str,
    proxy: ProxyRequest<'_>,
) -> Result<Response, ApiError> {
    let tls = state
        .kubelet_client_tls()
        .ok_or_else(|| ApiError::ServiceUnavailable {
            message: "the API server has no kubelet client certificate configured".into(),
        })?;
    let unavailable = |what: String| ApiError::ServiceUnavailable { message: what };
    let stream = tokio::time::timeout(DIAL_TIMEOUT, async {
        let tcp = tokio::net::TcpStream::connect((ip, port))
            .await
            .map_err(|e| unavailable(format!("dial kubelet {ip}:{port}: {e}")))?;
        tokio_rustls::TlsConnector::from(tls)
            .connect(rustls::pki_types::ServerName::IpAddress(ip.into()), tcp)
            .await
            .map_err(|e| unavailable(format!("TLS to kubelet {ip}:{port}: {e}")))
    })
    .await
    .map_err(|_| unavailable(format!("dial kubelet {ip}:{port}: timed out")))??;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| unavailable(format!("kubelet {ip}:{port}: {e}")))?;
    tokio::spawn(async move {
        if let Err(err) = connection.with_upgrades().await {
            debug!(error = %err, "kubelet connection ended with an error");
        }
    });
    let uri = match proxy.raw_query.filter(|q| !q.is_empty()) {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    let mut builder = Request::builder()
        .method(proxy.method.clone())
        .uri(&uri)
        .header(header::HOST, format!("{ip}:{port}"));
    for name in FORWARDED_HEADERS {
        for value in proxy.headers.get_all(HeaderName::from_static(name)) {
            builder = builder.header(*name, value);
        }
    }
    let upstream_request = builder
        .body(Body::empty())
        .map_err(|e| ApiError::internal(format!("build kubelet request: {e}")))?;
    let mut upstream = sender
        .send_request(upstream_request)
        .await
        .map_err(|e| unavailable(format!("kubelet {ip}:{port}: {e}")))?;
    if upstream.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = proxy.upgrade else {
            return Err(ApiError::bad_request(
                "the kubelet switched protocols but the client connection cannot be upgraded",
            ));
        };
        let kubelet_upgrade = hyper::upgrade::on(&mut upstream);
        tokio::spawn(
            async move {
                let (client, kubelet) = match tokio::join!(client_upgrade, kubelet_upgrade) {
                    (Ok(client), Ok(kubelet)) => (client, kubelet),
                    (client, kubelet) => {
                        debug!(
                            client_ok = client.is_ok(),
                            kubelet_ok = kubelet.is_ok(),
                            "upgrade failed"
                        );
                        return;
                    }
                };
                let mut client = hyper_util::rt::TokioIo::new(client);
                let mut kubelet = hyper_util::rt::TokioIo::new(kubelet);
                match tokio::io::copy_bidirectional(&mut client, &mut kubelet).await {
                    Ok((up, down)) => debug!(up, down, "stream relay ended"),
                    Err(err) => debug!(error = %err, "stream relay ended with an error"),
                }
            }
            .in_current_span(),
        );
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *response.headers_mut() = upstream.headers().clone();
        return Ok(response);
    }
    let (parts, body) = upstream.into_parts();
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = parts.status;
    for name in [header::CONTENT_TYPE, header::CONTENT_LENGTH] {
        if let Some(value) = parts.headers.get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn container_defaults_to_the_only_one_and_names_the_choices_otherwise() {
        let one = json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "app"}]}});
        assert_eq!(pick_container(&one, None).ok().as_deref(), Some("app"));
        let two = json!({"metadata": {"name": "x"}, "spec": {
            "containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "init"}]}});
        let err = pick_container(&two, None).expect_err("ambiguous");
        assert_eq!(
            err.to_status()["message"],
            "a container name must be specified for pod x, choose one of: [a b] or one of the init containers: [init]"
        );
        assert_eq!(
            pick_container(&two, Some("init")).ok().as_deref(),
            Some("init")
        );
        let err = pick_container(&two, Some("c")).expect_err("unknown");
        assert_eq!(
            err.to_status()["message"],
            "container c is not valid for pod x"
        );
    }

    #[test]
    fn kubelet_address_prefers_the_internal_ip_and_the_advertised_port() {
        let node = json!({"metadata": {"name": "n"}, "status": {
            "addresses": [{"type": "Hostname", "address": "n"}, {"type": "ExternalIP", "address": "203.0.113.1"},
                          {"type": "InternalIP", "address": "10.0.0.5"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10260}}}});
        let (ip, port) = kubelet_address(&node).expect("address");
        assert_eq!((ip.to_string().as_str(), port), ("10.0.0.5", 10260));
        let bare = json!({"metadata": {"name": "n"}, "status": {"addresses": [{"type": "Hostname", "address": "n"}]}});
        assert!(kubelet_address(&bare).is_err());
    }
}
