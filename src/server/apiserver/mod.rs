//! The Kubernetes API server: HTTPS (rustls) in front of the store, speaking the API that the
//! real `kubectl` and the standard client libraries expect.
//!
//! A request goes: TLS (the client certificate, if any, is the caller's identity) →
//! authentication (certificate or bearer token) → authorization ([`authz::Authorizer`]) →
//! routing (discovery, OpenAPI, health, metrics, or a resource verb in [`rest`] / [`watch`]) →
//! admission (defaults and validation) → the store. Every error is a Kubernetes `Status`.
//!
//! The API server is the only part of `cluster` that reads or writes the store.

pub mod admission;
pub mod allocators;
pub mod authn;
pub mod authz;
pub mod builtin;
pub mod discovery;
pub mod errors;
pub mod metrics;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod proxy;
pub mod request;
pub mod resources;
pub mod rest;
pub mod selectors;
pub mod table;
pub mod watch;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use self::authn::{TokenAuthenticator, UserInfo};
use self::authz::{Attributes, Authorizer, Decision};
use self::errors::ApiError;
use self::metrics::Metrics;
use self::openapi::{OpenApi, OpenApiResource};
use self::request::{Query, ResourceRequest, Verb};
use self::resources::{resources_of_crd, Resources};
use crate::server::store::{RangeRequest, Store};

/// How long open connections (watches included) get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything request handlers share.
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub resources: Resources,
    pub metrics: Metrics,
    pub tokens: TokenAuthenticator,
    pub authorizer: Box<dyn Authorizer>,
    /// `host:port` clients should use, for `/api`'s serverAddressByClientCIDRs.
    pub server_address: String,
    /// False while starting and once shutting down (`/readyz`).
    pub ready: AtomicBool,
    /// Where Service cluster IPs and node ports come from (the defaults until set).
    service_ranges: std::sync::OnceLock<allocators::ServiceRanges>,
    /// How the API server dials kubelets (pods/log, exec, port-forward, nodes/proxy).
    kubelet_client_tls: std::sync::OnceLock<Arc<rustls::ClientConfig>>,
    openapi: Mutex<Option<(u64, Arc<OpenApi>)>>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("server_address", &self.server_address)
            .finish_non_exhaustive()
    }
}

/// The identity the TLS layer established for a connection (its client certificate).
#[derive(Clone, Debug, Default)]
pub struct Peer {
    pub user: Option<UserInfo>,
}

impl ApiState {
    pub async fn new(
        store: Arc<dyn Store>,
        tokens: TokenAuthenticator,
        authorizer: Box<dyn Authorizer>,
        server_address: String,
    ) -> Result<Arc<ApiState>, ApiError> {
        let state = Arc::new(ApiState {
            store,
            resources: Resources::new(),
            metrics: Metrics::default(),
            tokens,
            authorizer,
            server_address,
            ready: AtomicBool::new(false),
            service_ranges: std::sync::OnceLock::new(),
            kubelet_client_tls: std::sync::OnceLock::new(),
            openapi: Mutex::new(None),
        });
        state.refresh_custom_resources().await?;
        Ok(state)
    }

    /// Sets the Service IP range (`--service-cidr`) and node port range; only the first call
    /// counts, and it must come before the first Service is written.
    pub fn set_service_ranges(&self, ranges: allocators::ServiceRanges) {
        let _ = self.service_ranges.set(ranges);
    }

    /// Sets the TLS configuration for dialling kubelets (the API server's kubelet client
    /// certificate, the cluster CA); only the first call counts. Without it the kubelet proxy
    /// subresources answer 503.
    pub fn set_kubelet_client_tls(&self, tls: Arc<rustls::ClientConfig>) {
        let _ = self.kubelet_client_tls.set(tls);
    }

    /// The TLS configuration for dialling kubelets, once set.
    pub fn kubelet_client_tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.kubelet_client_tls.get().cloned()
    }

    /// The ranges Service IPs and node ports are allocated from.
    pub fn service_ranges(&self) -> allocators::ServiceRanges {
        self.service_ranges.get_or_init(Default::default).clone()
    }

    /// Creates the namespaces every cluster has (`default`, `kube-system`, `kube-public`,
    /// `kube-node-lease`) if they are missing, through the same path as any create.
    pub async fn ensure_system_namespaces(&self) -> Result<(), ApiError> {
        let Some(info) = self.resources.find("", "v1", "namespaces") else {
            return Ok(());
        };
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let request = ResourceRequest {
                info: Arc::clone(&info),
                namespace: None,
                name: None,
                subresource: None,
            };
            let namespace = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            match rest::create(self, &request, &Query::default(), namespace).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Re-derives the custom resources from the CRDs in the store.
    pub async fn refresh_custom_resources(&self) -> Result<(), ApiError> {
        let page = self
            .store
            .range(RangeRequest {
                prefix: b"/registry/apiextensions.k8s.io/customresourcedefinitions/".to_vec(),
                ..RangeRequest::default()
            })
            .await?;
        let mut custom = Vec::new();
        for kv in page.kvs {
            match serde_json::from_slice::<Value>(&kv.value) {
                Ok(crd) => custom.extend(resources_of_crd(&crd)),
                Err(err) => warn!(error = %err, "skipping an unreadable CustomResourceDefinition"),
            }
        }
        self.resources.set_custom(custom);
        Ok(())
    }

    /// The OpenAPI documents for the resources served now (rebuilt when CRDs change).
    pub fn openapi(&self) -> Arc<OpenApi> {
        let generation = self.resources.generation();
        let mut cached = self.openapi.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((built, doc)) = cached.as_ref() {
            if *built == generation {
                return Arc::clone(doc);
            }
        }
        let resources: Vec<OpenApiResource> = self
            .resources
            .all()
            .iter()
            .map(|r| OpenApiResource {
                group: r.group.clone(),
                version: r.version.clone(),
                kind: r.kind.clone(),
                plural: r.plural.clone(),
                namespaced: r.namespaced,
                verbs: r.verbs().iter().map(|v| v.to_string()).collect(),
                schema: r.custom.as_ref().and_then(|c| c.schema.clone()),
            })
            .collect();
        let doc = Arc::new(OpenApi::build(&resources));
        *cached = Some((generation, Arc::clone(&doc)));
        doc
    }
}

/// The router: one handler that authenticates, authorizes and dispatches every path.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

/// Paths anyone may read without credentials (system:public-info-viewer).
fn is_public(path: &str) -> bool {
    is_version(path)
        || matches!(path, "/healthz" | "/livez" | "/readyz")
        || path.starts_with("/healthz/")
        || path.starts_with("/livez/")
        || path.starts_with("/readyz/")
}

async fn handle(State(state): State<Arc<ApiState>>, request: Request<Body>) -> Response {
    let started = Instant::now();
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let query = Query::parse(parts.uri.query());
    let peer = parts.extensions.get::<Peer>().cloned().unwrap_or_default();
    let span = info_span!("request", method = %parts.method, path = %path);
    let (response, verb, resource) = async {
        dispatch(
            &state,
            &parts.method,
            &path,
            &query,
            &parts.headers,
            body,
            &peer,
            Stream {
                raw_query: parts.uri.query(),
                upgrade,
            },
        )
        .await
    }
    .instrument(span)
    .await;
    let response = match response {
        Ok(response) => response,
        Err(err) => {
            debug!(error = %err, code = err.code().as_u16(), "request failed");
            err.into_response()
        }
    };
    if verb != "WATCH" {
        state.metrics.observe_request(
            &verb,
            &resource,
            response.status().as_u16(),
            started.elapsed(),
        );
    }
    response
}

/// Authenticates the caller: client certificate first, then a bearer token.
fn authenticate(
    state: &ApiState,
    headers: &HeaderMap,
    peer: &Peer,
) -> Result<Option<UserInfo>, ApiError> {
    if let Some(user) = &peer.user {
        return Ok(Some(user.clone()));
    }
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(None);
    };
    match authn::bearer_token(value).and_then(|token| state.tokens.authenticate(token)) {
        Some(user) => Ok(Some(user)),
        None => Err(ApiError::Unauthorized {
            message: "Unauthorized".into(),
        }),
    }
}

fn authorize(state: &ApiState, user: &UserInfo, attributes: &Attributes) -> Result<(), ApiError> {
    match state.authorizer.authorize(user, attributes) {
        Decision::Allow => Ok(()),
        Decision::Deny(message) => Err(ApiError::forbidden(message)),
    }
}

/// What the kubelet proxy needs beyond the parsed request: the query as sent, and the client
/// connection's upgrade.
struct Stream<'a> {
    raw_query: Option<&'a str>,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// Dispatches a request; returns the response and the verb and resource for metrics.
#[allow(clippy::too_many_arguments)]
async fn dispatch(
    state: &Arc<ApiState>,
    method: &Method,
    path: &str,
    query: &Query,
    headers: &HeaderMap,
    body: Body,
    peer: &Peer,
    stream: Stream<'_>,
) -> (Result<Response, ApiError>, String, String) {
    let user = match authenticate(state, headers, peer) {
        Ok(user) => user,
        Err(err) => return (Err(err), method.to_string(), String::new()),
    };
    if is_public(path) {
        return (
            public(state, path, query).await,
            method.to_string(),
            String::new(),
        );
    }
    let Some(user) = user else {
        return (
            Err(ApiError::Unauthorized {
                message: "Unauthorized".into(),
            }),
            method.to_string(),
            String::new(),
        );
    };
    // A resource request?
    if let Some((group, version, rest)) = request::split_group_version(path) {
        if !rest.is_empty() {
            // POST namespaces/<ns>/bindings: the legacy way to bind a pod.
            if group.is_empty()
                && rest.len() == 3
                && rest[0] == "namespaces"
                && rest[2] == "bindings"
            {
                let request = match state.resources.find("", "v1", "pods") {
                    Some(info) => ResourceRequest {
                        info,
                        namespace: Some(rest[1].clone()),
                        name: None,
                        subresource: Some("binding".into()),
                    },
                    None => {
                        return (
                            Err(ApiError::no_such_route()),
                            method.to_string(),
                            String::new(),
                        )
                    }
                };
                let result = resource_request(
                    state,
                    &user,
                    method,
                    &request,
                    Verb::Create,
                    query,
                    headers,
                    body,
                )
                .await;
                return (result, "POST".into(), "bindings".into());
            }
            // nodes/{name}/proxy/{path…}: to the node's kubelet.
            if group.is_empty() && rest.len() >= 3 && rest[0] == "nodes" && rest[2] == "proxy" {
                let attributes = Attributes::Resource {
                    verb: proxy::verb_for("proxy", method).to_string(),
                    group: String::new(),
                    resource: "nodes".into(),
                    subresource: Some("proxy".into()),
                    namespace: None,
                    name: Some(rest[1].clone()),
                };
                let result = match authorize(state, &user, &attributes) {
                    Ok(()) => {
                        let proxy_request = proxy::ProxyRequest {
                            method,
                            headers,
                            raw_query: stream.raw_query,
                            upgrade: stream.upgrade,
                        };
                        proxy::node_proxy(state, &rest[1], &rest[3..].join("/"), proxy_request)
                            .await
                    }
                    Err(err) => Err(err),
                };
                return (result, method.to_string(), "nodes".into());
            }
            let request =
                match request::parse_resource_path(&state.resources, &group, &version, &rest) {
                    Ok(request) => request,
                    Err(err) => return (Err(err), method.to_string(), String::new()),
                };
            // pods/{log,exec,attach,portforward}: to the pod's kubelet.
            if request.info.group.is_empty()
                && request.info.plural == "pods"
                && request.name.is_some()
                && request
                    .subresource
                    .as_deref()
                    .is_some_and(proxy::is_pod_subresource)
            {
                let sub = request.subresource.clone().unwrap_or_default();
                let verb = proxy::verb_for(&sub, method);
                let attributes = Attributes::Resource {
                    verb: verb.to_string(),
                    group: String::new(),
                    resource: "pods".into(),
                    subresource: Some(sub),
                    namespace: request.namespace.clone(),
                    name: request.name.clone(),
                };
                let result = match authorize(state, &user, &attributes) {
                    Ok(()) => {
                        let proxy_request = proxy::ProxyRequest {
                            method,
                            headers,
                            raw_query: stream.raw_query,
                            upgrade: stream.upgrade,
                        };
                        let container = query.0.get("container").map(String::as_str);
                        proxy::pod_subresource(state, &request, container, proxy_request).await
                    }
                    Err(err) => Err(err),
                };
                return (result, verb.to_ascii_uppercase(), "pods".into());
            }
            let verb = match request::verb_of(method, &request, query) {
                Ok(verb) => verb,
                Err(err) => return (Err(err), method.to_string(), request.info.plural.clone()),
            };
            let label = verb.as_str().to_ascii_uppercase();
            let resource = request.info.plural.clone();
            let result =
                resource_request(state, &user, method, &request, verb, query, headers, body).await;
            return (result, label, resource);
        }
    }
    let attributes = Attributes::NonResource {
        verb: method.as_str().to_ascii_lowercase(),
        path: path.to_string(),
    };
    if let Err(err) = authorize(state, &user, &attributes) {
        return (Err(err), method.to_string(), String::new());
    }
    (
        non_resource(state, method, path, headers).await,
        method.to_string(),
        String::new(),
    )
}

#[allow(clippy::too_many_arguments)]
async fn resource_request(
    state: &Arc<ApiState>,
    user: &UserInfo,
    method: &Method,
    request: &ResourceRequest,
    verb: Verb,
    query: &Query,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let attributes = Attributes::Resource {
        verb: verb.as_str().to_string(),
        group: request.info.group.clone(),
        resource: request.info.plural.clone(),
        subresource: request.subresource.clone(),
        namespace: request.namespace.clone(),
        name: request.name.clone(),
    };
    authorize(state, user, &attributes)?;
    let output = match verb {
        Verb::Get | Verb::List | Verb::Watch => request::negotiate(headers, query)?,
        _ => request::Output::Json,
    };
    let subresource = request.subresource.as_deref();
    let reply = match (verb, subresource) {
        (Verb::Watch, None) => {
            return watch::watch(Arc::clone(state), request, query, output).await
        }
        (Verb::Get, Some("scale")) | (Verb::Update | Verb::Patch, Some("scale")) => {
            let content_type = request::content_type(headers);
            let bytes = request::read_bytes(body).await?;
            rest::scale(
                state,
                request,
                query,
                method.as_str(),
                &content_type,
                &bytes,
            )
            .await?
        }
        (Verb::Get, _) => rest::get(state, request, output).await?,
        (Verb::List, None) => rest::list(state, request, query, output).await?,
        (Verb::Create, Some("binding"))
            if request.info.group.is_empty() && request.info.plural == "pods" =>
        {
            let content_type = request::content_type(headers);
            let body = request::decode_object(&content_type, &request::read_bytes(body).await?)?;
            rest::bind(state, request, query, body).await?
        }
        (Verb::Create, None) => {
            let content_type = request::content_type(headers);
            let body = request::decode_object(&content_type, &request::read_bytes(body).await?)?;
            rest::create(state, request, query, body).await?
        }
        (Verb::Update, None | Some("status")) => {
            let content_type = request::content_type(headers);
            let body = request::decode_object(&content_type, &request::read_bytes(body).await?)?;
            rest::update(state, request, query, body).await?
        }
        (Verb::Update, Some("finalize"))
            if request.info.group.is_empty() && request.info.plural == "namespaces" =>
        {
            let content_type = request::content_type(headers);
            let body = request::decode_object(&content_type, &request::read_bytes(body).await?)?;
            rest::finalize_namespace(state, request, query, body).await?
        }
        (Verb::Patch, None | Some("status")) => {
            let content_type = request::content_type(headers);
            let bytes = request::read_bytes(body).await?;
            rest::patch(state, request, query, &content_type, &bytes).await?
        }
        (Verb::Delete, None) => {
            let bytes = request::read_bytes(body).await?;
            let options = delete_options(query, headers, &bytes)?;
            rest::delete(state, request, &options).await?
        }
        (Verb::DeleteCollection, None) => {
            let bytes = request::read_bytes(body).await?;
            let options = delete_options(query, headers, &bytes)?;
            rest::delete_collection(state, request, query, &options).await?
        }
        _ => return Err(ApiError::no_such_route()),
    };
    Ok(reply_response(reply))
}

fn delete_options(
    query: &Query,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<rest::DeleteOptions, ApiError> {
    let body = if bytes.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(request::decode_object(
            &request::content_type(headers),
            bytes,
        )?)
    };
    rest::DeleteOptions::parse(query, body.as_ref())
}

fn reply_response(reply: rest::Reply) -> Response {
    let mut response = (
        reply.code,
        [(header::CONTENT_TYPE, "application/json")],
        reply.body.to_string(),
    )
        .into_response();
    for warning in reply.warnings {
        let text = format!(
            "299 - \"{}\"",
            warning.replace('\\', "\\\\").replace('"', "\\\"")
        );
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

fn json_response(body: &Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Discovery, OpenAPI and metrics.
async fn non_resource(
    state: &ApiState,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::MethodNotAllowed {
            message: "the server does not allow this method on the requested resource".into(),
        });
    }
    let trimmed = path.trim_end_matches('/');
    let aggregated = discovery::aggregated_version(headers);
    let with_vary = |mut response: Response| {
        response
            .headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Accept"));
        response
    };
    match trimmed {
        "/api" | "/apis" => {
            if let Some(version) = aggregated {
                let body = discovery::aggregated(&state.resources, trimmed == "/api", version);
                let mut response = json_response(&body);
                if let Ok(ct) = HeaderValue::from_str(&discovery::aggregated_content_type(version))
                {
                    response.headers_mut().insert(header::CONTENT_TYPE, ct);
                }
                return Ok(with_vary(response));
            }
            let body = if trimmed == "/api" {
                discovery::core_versions(&state.server_address)
            } else {
                discovery::group_list(&state.resources)
            };
            return Ok(with_vary(json_response(&body)));
        }
        "/metrics" => {
            return Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                state.metrics.render(),
            )
                .into_response())
        }
        "/openapi/v2" => {
            let doc = state.openapi();
            let accept = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let (content_type, body) = doc.v2_for_accept(Some(accept));
            return Ok(openapi_response(
                content_type,
                body.to_vec(),
                doc.etag("/openapi/v2"),
            ));
        }
        "/openapi/v3" => {
            let doc = state.openapi();
            return Ok(openapi_response(
                "application/json",
                doc.v3_index_bytes().to_vec(),
                doc.etag("/openapi/v3"),
            ));
        }
        _ => {}
    }
    if let Some(gv) = trimmed.strip_prefix("/openapi/v3/") {
        let doc = state.openapi();
        return match doc.v3_group_version(gv) {
            Some(bytes) => Ok(openapi_response(
                "application/json",
                bytes.to_vec(),
                doc.etag(trimmed),
            )),
            None => Err(ApiError::no_such_route()),
        };
    }
    if let Some((group, version, rest)) = request::split_group_version(trimmed) {
        if rest.is_empty() {
            let body = discovery::resource_list(&state.resources, &group, &version)
                .ok_or_else(ApiError::no_such_route)?;
            return Ok(json_response(&body));
        }
    }
    if let Some(group) = trimmed.strip_prefix("/apis/") {
        if !group.contains('/') {
            let body =
                discovery::group(&state.resources, group).ok_or_else(ApiError::no_such_route)?;
            return Ok(json_response(&body));
        }
    }
    Err(ApiError::no_such_route())
}

fn openapi_response(content_type: &str, body: Vec<u8>, etag: Option<&str>) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    if let Ok(value) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    if let Some(value) = etag.and_then(|e| HeaderValue::from_str(&format!("\"{e}\"")).ok()) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

/// `/version`, and `/version/` as kube-apiserver also serves it (the Python client asks for that).
fn is_version(path: &str) -> bool {
    matches!(path, "/version" | "/version/")
}

/// /version and the health endpoints.
async fn public(state: &ApiState, path: &str, query: &Query) -> Result<Response, ApiError> {
    if is_version(path) {
        return Ok(json_response(&discovery::version()));
    }
    let endpoint = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    let store_ok = state.store.current_revision().await.is_ok();
    let mut checks = vec![("ping", true), ("log", true), ("etcd", store_ok)];
    if endpoint == "readyz" {
        checks.push(("shutdown", state.ready.load(Ordering::SeqCst)));
    }
    // /healthz/etcd and friends ask for one check.
    if let Some(one) = path
        .trim_start_matches('/')
        .split('/')
        .nth(1)
        .filter(|s| !s.is_empty())
    {
        let check = checks
            .iter()
            .find(|(name, _)| *name == one)
            .ok_or_else(ApiError::no_such_route)?;
        let (code, text) = if check.1 {
            (StatusCode::OK, "ok".to_string())
        } else {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("internal server error: {one} failed"),
            )
        };
        return Ok((
            code,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            text,
        )
            .into_response());
    }
    let healthy = checks.iter().all(|(_, ok)| *ok);
    let verbose = query.0.contains_key("verbose") || !healthy;
    let text = if verbose {
        let mut text: String = checks
            .iter()
            .map(|(name, ok)| {
                if *ok {
                    format!("[+]{name} ok\n")
                } else {
                    format!("[-]{name} failed: reason withheld\n")
                }
            })
            .collect();
        if healthy {
            text.push_str(&format!("{endpoint} check passed\n"));
        } else {
            text.push_str(&format!("{endpoint} check failed\n"));
        }
        text
    } else {
        "ok".to_string()
    };
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    Ok((
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response())
}

/// Serves HTTPS on `listener` until `shutdown`, then drains open connections for a bounded
/// time.
pub async fn serve(
    state: Arc<ApiState>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let app = router(Arc::clone(&state));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    state.ready.store(true, Ordering::SeqCst);
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "API server listening");
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
        // Watch events are small writes that must leave at once: without TCP_NODELAY, Nagle's
        // algorithm holds each one until the client's delayed ACK (~40 ms).
        if let Err(err) = stream.set_nodelay(true) {
            debug!(error = %err, "setting TCP_NODELAY failed");
        }
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(
            async move {
                let tls_stream =
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
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
                let peer = Peer {
                    user: authn::peer_user(tls_stream.get_ref().1),
                };
                serve_connection(app, peer, tls_stream, watcher).await;
            }
            .instrument(info_span!("connection", %remote)),
        );
    }
    state.ready.store(false, Ordering::SeqCst);
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => info!("API server connections drained"),
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => info!("API server shut down with connections still open"),
    }
}

/// Serves one connection (TLS or in-process) with the router, tagging requests with `peer`.
pub async fn serve_connection<S>(
    app: Router,
    peer: Peer,
    stream: S,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service =
        tower::ServiceExt::map_request(app, move |mut request: Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(peer.clone());
            request
        });
    let service = hyper_util::service::TowerToHyperService::new(service);
    let builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let connection =
        builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service);
    if let Err(err) = watcher.watch(connection.into_owned()).await {
        debug!(error = %err, "connection ended with an error");
    }
}

/// A `kube::Client` that calls this API server in-process, as `user`: the same handlers,
/// authorization and admission as over HTTPS, without TCP or TLS. The controllers and the
/// scheduler use it.
pub fn in_process_client(state: Arc<ApiState>, user: UserInfo) -> kube::Client {
    let peer = Peer { user: Some(user) };
    let service = tower::ServiceBuilder::new()
        .map_request(move |mut request: Request<kube::client::Body>| {
            request.extensions_mut().insert(peer.clone());
            request
        })
        .service(router(state));
    kube::Client::new(service, "default")
}

/// Binds the API server's listener.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_and_health_are_public_with_or_without_a_trailing_slash() {
        for path in [
            "/version",
            "/version/",
            "/healthz",
            "/livez/etcd",
            "/readyz",
        ] {
            assert!(is_public(path), "{path}");
        }
        assert!(is_version("/version/"));
        for path in ["/versions", "/version/x", "/api", "/metrics"] {
            assert!(!is_public(path), "{path}");
        }
    }
}
