//! The OCI distribution client: resolves a reference to a manifest through the endpoints
//! [`super::registries`] plans, and downloads blobs into the content store, verifying each.
//!
//! # Why not oci-client
//! oci-client was the first choice. It has no client certificates (`configs.*.tls.cert_file`
//! and `key_file` of registries.yaml), takes no endpoint with an API path prefix, and keeps one
//! TLS configuration per client rather than per registry. Mirrors with per-host TLS and
//! credentials are the heart of registries.yaml, so this module speaks the (small) distribution
//! API itself over reqwest (rustls), which supports all of that.
//!
//! # Guarantees
//! - Authentication as Docker does it: a request is sent anonymously (or with a token already
//!   obtained for that repository); on `401` with `WWW-Authenticate: Bearer realm=…,service=…`
//!   a token is asked from the realm for `repository:<name>:pull`, with HTTP basic credentials
//!   when registries.yaml has some (else anonymously), and the request is retried once;
//!   on `401` with `Basic`, the configured credentials are sent.
//! - Endpoints are tried in order until one returns the manifest; the blobs come from that one.
//! - A manifest fetched by digest must hash to it; one fetched by tag must hash to the
//!   `Docker-Content-Digest` the registry announces (when it announces one). Blobs are verified
//!   by the content store while they stream to disk.
//! - Manifests and configs are limited to 4 MiB.
//!
//! Owns HTTP to registries; writes only through [`ContentStore`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt as _;
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::StatusCode;

use super::content::{ContentError, ContentStore};
use super::digest::Digest;
use super::manifest::{self, Descriptor, Document, ManifestError, Platform};
use super::reference::Reference;
use super::registries::{Endpoint, Registries};

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{url}: registry answered {status}{detail}")]
    Status {
        url: String,
        status: StatusCode,
        detail: String,
    },
    #[error("{url}: authentication failed: {message}")]
    Auth { url: String, message: String },
    #[error("TLS settings for {host}: {message}")]
    Tls { host: String, message: String },
    #[error("manifest {reference}: content hashes to {actual}, expected {expected}")]
    ManifestDigest {
        reference: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what} larger than {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error("pulling {reference}: every endpoint failed: {}", errors.join("; "))]
    AllEndpointsFailed {
        reference: String,
        errors: Vec<String>,
    },
}

/// A manifest resolved for one platform.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub endpoint: Endpoint,
    /// The digest the reference resolved to: the index's when there was one (what `docker
    /// images --digests` and the kubelet's `imageID` report), else the manifest's.
    pub top_digest: Digest,
    /// The index document (digest, bytes), when the reference named one.
    pub index: Option<(Digest, Vec<u8>)>,
    pub manifest_digest: Digest,
    pub manifest_bytes: Vec<u8>,
    pub manifest: manifest::Manifest,
}

/// Talks to registries.
#[derive(Debug)]
pub struct RegistryClient {
    registries: Registries,
    platform: Platform,
    clients: Mutex<HashMap<String, reqwest::Client>>,
    /// Authorization header values by `host/repository`.
    tokens: Mutex<HashMap<String, String>>,
}

impl RegistryClient {
    pub fn new(registries: Registries, platform: Platform) -> RegistryClient {
        RegistryClient {
            registries,
            platform,
            clients: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// Finds the manifest of `reference` for our platform, trying each endpoint in turn.
    pub async fn resolve(&self, reference: &Reference) -> Result<Resolved, PullError> {
        let mut errors = Vec::new();
        for endpoint in self.registries.endpoints(reference) {
            match self.resolve_at(&endpoint, reference).await {
                Ok(resolved) => return Ok(resolved),
                // A document we cannot use will not get better elsewhere.
                Err(err @ (PullError::Manifest(_) | PullError::ManifestDigest { .. })) => {
                    return Err(err)
                }
                Err(err) => {
                    tracing::debug!(endpoint = %endpoint.base_url(), %err, "endpoint failed");
                    errors.push(err.to_string());
                }
            }
        }
        Err(PullError::AllEndpointsFailed {
            reference: reference.to_string(),
            errors,
        })
    }

    async fn resolve_at(
        &self,
        endpoint: &Endpoint,
        reference: &Reference,
    ) -> Result<Resolved, PullError> {
        let wanted = reference.manifest_reference();
        let (content_type, bytes, digest) = self
            .fetch_manifest(endpoint, &wanted, reference.digest())
            .await?;
        match Document::parse(content_type.as_deref(), &bytes)? {
            Document::Manifest(manifest) => Ok(Resolved {
                endpoint: endpoint.clone(),
                top_digest: digest.clone(),
                index: None,
                manifest_digest: digest,
                manifest_bytes: bytes,
                manifest,
            }),
            Document::Index(index) => {
                let chosen = index.select(&self.platform)?.clone();
                let (content_type, manifest_bytes, manifest_digest) = self
                    .fetch_manifest(endpoint, &chosen.digest.to_string(), Some(&chosen.digest))
                    .await?;
                match Document::parse(content_type.as_deref(), &manifest_bytes)? {
                    Document::Manifest(manifest) => Ok(Resolved {
                        endpoint: endpoint.clone(),
                        top_digest: digest.clone(),
                        index: Some((digest, bytes)),
                        manifest_digest,
                        manifest_bytes,
                        manifest,
                    }),
                    Document::Index(_) => Err(PullError::Manifest(
                        ManifestError::UnsupportedMediaType("an index inside an index".to_string()),
                    )),
                }
            }
        }
    }

    async fn fetch_manifest(
        &self,
        endpoint: &Endpoint,
        wanted: &str,
        expected: Option<&Digest>,
    ) -> Result<(Option<String>, Vec<u8>, Digest), PullError> {
        let url = format!(
            "{}/{}/manifests/{}",
            endpoint.base_url(),
            endpoint.repository,
            wanted
        );
        let response = self.get(endpoint, &url, manifest::MANIFEST_ACCEPT).await?;
        let content_type = header_text(response.headers(), CONTENT_TYPE);
        let announced = header_text(response.headers(), "docker-content-digest")
            .and_then(|d| d.parse::<Digest>().ok());
        let bytes = read_limited(response, &url, manifest::MAX_DOCUMENT_SIZE).await?;
        let actual = Digest::of(&bytes);
        if let Some(expected) = expected.or(announced.as_ref()) {
            if *expected != actual {
                return Err(PullError::ManifestDigest {
                    reference: url,
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        Ok((content_type, bytes, actual))
    }

    /// Downloads a blob into the store (verified there). `on_chunk` sees the byte count of
    /// each chunk (for progress and statistics).
    pub async fn fetch_blob(
        &self,
        endpoint: &Endpoint,
        descriptor: &Descriptor,
        store: &ContentStore,
    ) -> Result<u64, PullError> {
        let url = format!(
            "{}/{}/blobs/{}",
            endpoint.base_url(),
            endpoint.repository,
            descriptor.digest
        );
        let response = self.get(endpoint, &url, "*/*").await?;
        let mut writer = store.writer(&descriptor.digest, Some(descriptor.size))?;
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|err| PullError::Http {
                url: url.clone(),
                message: error_chain(&err),
            })?;
            // Page-cache writes of one chunk: short enough not to need a blocking thread.
            writer.write_chunk(&chunk)?;
        }
        let written = writer.written();
        writer.commit()?;
        Ok(written)
    }

    /// GET with authentication as the registry asks for it.
    async fn get(
        &self,
        endpoint: &Endpoint,
        url: &str,
        accept: &str,
    ) -> Result<reqwest::Response, PullError> {
        let client = self.client(endpoint)?;
        let scope_key = format!("{}/{}", endpoint.host, endpoint.repository);
        let cached = self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&scope_key)
            .cloned();
        let send = |authorization: Option<String>| {
            let mut request = client.get(url).header(ACCEPT, accept);
            if let Some(value) = authorization {
                request = request.header(AUTHORIZATION, value);
            }
            async move {
                request.send().await.map_err(|err| PullError::Http {
                    url: url.to_string(),
                    message: error_chain(&err),
                })
            }
        };
        let mut response = send(cached.clone()).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            let challenge = header_text(response.headers(), WWW_AUTHENTICATE).unwrap_or_default();
            let authorization = self.authorize(endpoint, &client, &challenge, url).await?;
            self.tokens
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(scope_key, authorization.clone());
            response = send(Some(authorization)).await?;
        }
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let detail = registry_error_detail(&body);
            return Err(if status == StatusCode::UNAUTHORIZED {
                PullError::Auth {
                    url: url.to_string(),
                    message: format!("still unauthorized{detail}"),
                }
            } else {
                PullError::Status {
                    url: url.to_string(),
                    status,
                    detail,
                }
            });
        }
        Ok(response)
    }

    /// Answers a `WWW-Authenticate` challenge with the value of an `Authorization` header.
    async fn authorize(
        &self,
        endpoint: &Endpoint,
        client: &reqwest::Client,
        challenge: &str,
        url: &str,
    ) -> Result<String, PullError> {
        let auth_failed = |message: String| PullError::Auth {
            url: url.to_string(),
            message,
        };
        let credentials = endpoint
            .config
            .auth
            .as_ref()
            .and_then(|auth| auth.credentials());
        let (scheme, params) = parse_challenge(challenge);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                let (user, password) = credentials.ok_or_else(|| {
                    auth_failed(
                        "the registry wants a username and password; set them in registries.yaml"
                            .to_string(),
                    )
                })?;
                use base64::Engine as _;
                Ok(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
                ))
            }
            "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| auth_failed("bearer challenge without realm".to_string()))?;
                let scope = params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{}:pull", endpoint.repository));
                let mut query = vec![("scope", scope)];
                if let Some(service) = params.get("service") {
                    query.push(("service", service.clone()));
                }
                let mut request = client.get(realm).query(&query);
                if let Some((user, password)) = &credentials {
                    request = request.basic_auth(user, Some(password));
                }
                let response = request.send().await.map_err(|err| PullError::Http {
                    url: realm.clone(),
                    message: error_chain(&err),
                })?;
                if !response.status().is_success() {
                    return Err(auth_failed(format!(
                        "token service {realm} answered {}",
                        response.status()
                    )));
                }
                #[derive(serde::Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let body = read_limited(response, realm, 1 << 20).await?;
                let token: Token = serde_json::from_slice(&body)
                    .map_err(|err| auth_failed(format!("token service {realm}: {err}")))?;
                let token = token
                    .token
                    .or(token.access_token)
                    .ok_or_else(|| auth_failed(format!("token service {realm} sent no token")))?;
                Ok(format!("Bearer {token}"))
            }
            _ => Err(auth_failed(format!(
                "unsupported authentication challenge {challenge:?}"
            ))),
        }
    }

    /// One HTTP client per scheme and host, with that host's TLS settings.
    fn client(&self, endpoint: &Endpoint) -> Result<reqwest::Client, PullError> {
        let key = format!("{}://{}", endpoint.scheme, endpoint.host);
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let tls_err = |message: String| PullError::Tls {
            host: endpoint.host.clone(),
            message,
        };
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120))
            .user_agent(concat!("cluster/", env!("CARGO_PKG_VERSION")));
        if let Some(tls) = &endpoint.config.tls {
            if let Some(ca_file) = &tls.ca_file {
                let pem = std::fs::read(ca_file)
                    .map_err(|err| tls_err(format!("ca_file {}: {err}", ca_file.display())))?;
                for cert in reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|err| tls_err(format!("ca_file {}: {err}", ca_file.display())))?
                {
                    builder = builder.add_root_certificate(cert);
                }
            }
            match (&tls.cert_file, &tls.key_file) {
                (Some(cert_file), Some(key_file)) => {
                    let mut pem = std::fs::read(cert_file).map_err(|err| {
                        tls_err(format!("cert_file {}: {err}", cert_file.display()))
                    })?;
                    pem.push(b'\n');
                    pem.extend(std::fs::read(key_file).map_err(|err| {
                        tls_err(format!("key_file {}: {err}", key_file.display()))
                    })?);
                    let identity = reqwest::Identity::from_pem(&pem)
                        .map_err(|err| tls_err(format!("client certificate: {err}")))?;
                    builder = builder.identity(identity);
                }
                (None, None) => {}
                _ => {
                    return Err(tls_err(
                        "cert_file and key_file must be given together".to_string(),
                    ))
                }
            }
            if tls.insecure_skip_verify {
                builder = builder.danger_accept_invalid_certs(true);
            }
        }
        let client = builder.build().map_err(|err| tls_err(error_chain(&err)))?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

fn header_text(headers: &HeaderMap, name: impl reqwest::header::AsHeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn read_limited(
    response: reqwest::Response,
    url: &str,
    limit: u64,
) -> Result<Vec<u8>, PullError> {
    if response.content_length().is_some_and(|len| len > limit) {
        return Err(PullError::TooLarge {
            what: url.to_string(),
            limit,
        });
    }
    let mut bytes = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|err| PullError::Http {
            url: url.to_string(),
            message: error_chain(&err),
        })?;
        if bytes.len() as u64 + chunk.len() as u64 > limit {
            return Err(PullError::TooLarge {
                what: url.to_string(),
                limit,
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// `Bearer realm="https://auth.docker.io/token",service="registry.docker.io"` →
/// ("Bearer", {realm, service}).
fn parse_challenge(challenge: &str) -> (String, HashMap<String, String>) {
    let challenge = challenge.trim();
    let (scheme, rest) = challenge
        .split_once(char::is_whitespace)
        .unwrap_or((challenge, ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, next)) = chars.next() {
                            value.push(next);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    other => value.push(other),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.insert(key, value);
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    (scheme.to_string(), params)
}

/// The registry's own error message, if its body is a distribution error document.
fn registry_error_detail(body: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        code: Option<String>,
        message: Option<String>,
    }
    match serde_json::from_str::<Errors>(body) {
        Ok(errors) if !errors.errors.is_empty() => {
            let items: Vec<String> = errors
                .errors
                .iter()
                .map(|e| {
                    format!(
                        "{} {}",
                        e.code.as_deref().unwrap_or(""),
                        e.message.as_deref().unwrap_or("")
                    )
                    .trim()
                    .to_string()
                })
                .collect();
            format!(": {}", items.join(", "))
        }
        _ => String::new(),
    }
}

/// reqwest's error with its causes (the useful part is usually at the bottom).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_parsed() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(params["realm"], "https://auth.docker.io/token");
        assert_eq!(params["service"], "registry.docker.io");
        assert_eq!(params["scope"], "repository:library/busybox:pull");
        let (scheme, params) = parse_challenge(r#"Basic realm="basic-realm""#);
        assert_eq!(scheme, "Basic");
        assert_eq!(params["realm"], "basic-realm");
        let (_, params) = parse_challenge(r#"Bearer realm="a\"b", service=plain"#);
        assert_eq!(params["realm"], "a\"b");
        assert_eq!(params["service"], "plain");
    }

    #[test]
    fn registry_errors_are_summarised() {
        let body =
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(
            registry_error_detail(body),
            ": MANIFEST_UNKNOWN manifest unknown"
        );
        assert_eq!(registry_error_detail("not json"), "");
    }
}
