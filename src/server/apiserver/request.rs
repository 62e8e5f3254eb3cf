//! What a request asks for: the resource path (`/api/v1/namespaces/default/pods/web/status`),
//! the verb, the query parameters, the representation the client accepts and the body it sent.
//!
//! Pure parsing; no store access and no decisions about whether the request may proceed.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method};
use serde_json::Value;

use super::errors::ApiError;
use super::resources::{ResourceInfo, Resources};
use super::table::IncludeObject;

/// Bodies larger than this are refused with 413, as kube-apiserver does (3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// A request for a resource, a collection of it, or a subresource of one object.
#[derive(Clone, Debug)]
pub struct ResourceRequest {
    pub info: Arc<ResourceInfo>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// The verbs of Kubernetes' authorization attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }
}

/// Splits `/api/v1/...` or `/apis/<group>/<version>/...` into group, version and the rest.
pub fn split_group_version(path: &str) -> Option<(String, String, Vec<String>)> {
    let segments: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    match segments.first().map(String::as_str) {
        Some("api") if segments.len() >= 2 => {
            Some((String::new(), segments[1].clone(), segments[2..].to_vec()))
        }
        Some("apis") if segments.len() >= 3 => Some((
            segments[1].clone(),
            segments[2].clone(),
            segments[3..].to_vec(),
        )),
        _ => None,
    }
}

/// Resolves the rest of a resource path against the served resources.
pub fn parse_resource_path(
    resources: &Resources,
    group: &str,
    version: &str,
    rest: &[String],
) -> Result<ResourceRequest, ApiError> {
    let find = |plural: &str| {
        resources
            .find(group, version, plural)
            .ok_or_else(ApiError::no_such_route)
    };
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    // `namespaces/<ns>/<plural>/...` is a namespaced request when <plural> is a namespaced
    // resource; otherwise it is the namespace object itself (e.g. namespaces/x/status).
    if rest.len() >= 3 && rest[0] == "namespaces" {
        if let Some(info) = resources.find(group, version, rest[2]) {
            if info.namespaced {
                if rest.len() > 5 {
                    return Err(ApiError::no_such_route());
                }
                return Ok(ResourceRequest {
                    info,
                    namespace: Some(rest[1].to_string()),
                    name: rest.get(3).map(|s| s.to_string()),
                    subresource: rest.get(4).map(|s| s.to_string()),
                });
            }
        }
    }
    match rest.as_slice() {
        [plural] => Ok(ResourceRequest {
            info: find(plural)?,
            namespace: None,
            name: None,
            subresource: None,
        }),
        [plural, name] => Ok(ResourceRequest {
            info: find(plural)?,
            namespace: None,
            name: Some(name.to_string()),
            subresource: None,
        }),
        [plural, name, sub] => Ok(ResourceRequest {
            info: find(plural)?,
            namespace: None,
            name: Some(name.to_string()),
            subresource: Some(sub.to_string()),
        }),
        _ => Err(ApiError::no_such_route()),
    }
}

/// The verb of a resource request.
pub fn verb_of(
    method: &Method,
    request: &ResourceRequest,
    query: &Query,
) -> Result<Verb, ApiError> {
    let item = request.name.is_some();
    let verb = match (method.as_str(), item) {
        ("GET" | "HEAD", true) if query.flag("watch") => Verb::Watch,
        ("GET" | "HEAD", true) => Verb::Get,
        ("GET" | "HEAD", false) if query.flag("watch") => Verb::Watch,
        ("GET" | "HEAD", false) => Verb::List,
        ("POST", false) => Verb::Create,
        // POST to a subresource (pods/x/binding) creates it.
        ("POST", true) if request.subresource.is_some() => Verb::Create,
        ("PUT", true) => Verb::Update,
        ("PATCH", true) => Verb::Patch,
        ("DELETE", true) => Verb::Delete,
        ("DELETE", false) => Verb::DeleteCollection,
        _ => {
            return Err(ApiError::MethodNotAllowed {
                message: "the server does not allow this method on the requested resource"
                    .to_string(),
            })
        }
    };
    Ok(verb)
}

/// Query parameters, decoded.
#[derive(Clone, Debug, Default)]
pub struct Query(pub HashMap<String, String>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        let mut map = HashMap::new();
        for pair in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.insert(query_decode(k), query_decode(v));
        }
        Query(map)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// `true`, `1` (and a bare `?watch`) are true, as Kubernetes parses booleans.
    pub fn flag(&self, key: &str) -> bool {
        matches!(
            self.0.get(key).map(String::as_str),
            Some("true" | "1" | "True" | "TRUE")
        )
    }

    pub fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
                ApiError::bad_request(format!("invalid value for {key}: {v:?}: not an integer"))
            }),
        }
    }

    /// `dryRun=All` (the only value Kubernetes accepts).
    pub fn dry_run(&self) -> Result<bool, ApiError> {
        match self.get("dryRun") {
            None => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "invalid dry run option: {other:?}: only \"All\" is supported"
            ))),
        }
    }
}

/// How unknown fields in a write are treated (`fieldValidation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn from_query(query: &Query) -> Result<FieldValidation, ApiError> {
        match query.get("fieldValidation") {
            None | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation parameter unsupported: {other:?}. Supported values are Ignore, Warn, Strict"
            ))),
        }
    }
}

/// The representation a client asked for in `Accept`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Json,
    Table(IncludeObject),
    /// `PartialObjectMetadata` / `PartialObjectMetadataList` (metadata-only clients).
    Metadata,
}

/// Picks the first acceptable representation from `Accept`.
pub fn negotiate(headers: &HeaderMap, query: &Query) -> Result<Output, ApiError> {
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.trim().is_empty() {
        return Ok(Output::Json);
    }
    for media in accept.split(',') {
        let mut parts = media.split(';').map(str::trim);
        let mime = parts.next().unwrap_or("").to_ascii_lowercase();
        let params: HashMap<String, String> = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let json_like = matches!(mime.as_str(), "application/json" | "*/*" | "application/*");
        if !json_like {
            continue;
        }
        match (
            params.get("as").map(String::as_str),
            params.get("g").map(String::as_str),
        ) {
            (None, _) => return Ok(Output::Json),
            (Some("Table"), Some("meta.k8s.io")) => {
                let include = match query.get("includeObject") {
                    Some("None") => IncludeObject::None,
                    Some("Object") => IncludeObject::Object,
                    _ => IncludeObject::Metadata,
                };
                return Ok(Output::Table(include));
            }
            (Some("PartialObjectMetadata" | "PartialObjectMetadataList"), Some("meta.k8s.io")) => {
                return Ok(Output::Metadata)
            }
            _ => continue,
        }
    }
    Err(ApiError::NotAcceptable {
        message: "only the following media types are accepted: application/json, application/json;as=Table;v=v1;g=meta.k8s.io, application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io".into(),
    })
}

/// Bodies are read (and dropped) up to this size before a 413 is sent, so that the client,
/// still uploading, gets to read the answer instead of a reset connection.
const DRAIN_LIMIT_BYTES: usize = 32 * 1024 * 1024;

/// Reads a body of at most [`MAX_BODY_BYTES`].
pub async fn read_bytes(body: Body) -> Result<Vec<u8>, ApiError> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|err| ApiError::bad_request(format!("reading the request body: {err}")))?;
        seen += chunk.len();
        if seen <= MAX_BODY_BYTES {
            bytes.extend_from_slice(&chunk);
        } else if seen > DRAIN_LIMIT_BYTES {
            break;
        }
    }
    if seen > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge {
            message: format!("Request entity too large: limit is {MAX_BODY_BYTES}"),
        });
    }
    Ok(bytes)
}

/// The media type of the body (without parameters), lower case; JSON when absent.
pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "application/json".into())
}

/// Decodes an object body: JSON, or YAML for clients that send it.
pub fn decode_object(content_type: &str, bytes: &[u8]) -> Result<Value, ApiError> {
    let value: Value = match content_type {
        "application/json" | "*/*" => serde_json::from_slice(bytes).map_err(|err| {
            ApiError::bad_request(format!("the request body is not valid JSON: {err}"))
        })?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => serde_yaml::from_slice(bytes)
            .map_err(|err| {
                ApiError::bad_request(format!("the request body is not valid YAML: {err}"))
            })?,
        super::protobuf::CONTENT_TYPE => match super::protobuf::decode(bytes) {
            Ok(value) => value,
            Err(err @ super::protobuf::DecodeError::UnknownKind { .. }) => {
                return Err(ApiError::UnsupportedMediaType {
                    message: format!("{err}; send it as application/json"),
                })
            }
            Err(err) => return Err(ApiError::bad_request(err.to_string())),
        },
        other => {
            return Err(ApiError::UnsupportedMediaType {
                message: format!(
                    "the body of the request was in an unknown format ({other}) - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf"
                ),
            })
        }
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(value)
}

/// Decodes `%XX` escapes (path segments).
pub fn percent_decode(s: &str) -> String {
    decode_escapes(s, false)
}

/// Decodes `%XX` escapes and `+` as a space (query keys and values).
pub fn query_decode(s: &str) -> String {
    decode_escapes(s, true)
}

fn decode_escapes(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(path: &str) -> Result<ResourceRequest, ApiError> {
        let resources = Resources::new();
        let (group, version, rest) =
            split_group_version(path).ok_or_else(ApiError::no_such_route)?;
        parse_resource_path(&resources, &group, &version, &rest)
    }

    #[test]
    fn resource_paths_resolve() {
        let r = parse("/api/v1/namespaces/default/pods/web/status").expect("parses");
        assert_eq!(r.info.plural, "pods");
        assert_eq!(r.namespace.as_deref(), Some("default"));
        assert_eq!(r.name.as_deref(), Some("web"));
        assert_eq!(r.subresource.as_deref(), Some("status"));
        let r = parse("/api/v1/namespaces/kube-system").expect("parses");
        assert_eq!(r.info.plural, "namespaces");
        assert_eq!(r.name.as_deref(), Some("kube-system"));
        let r = parse("/api/v1/namespaces/x/status").expect("parses");
        assert_eq!(
            (r.info.plural.as_str(), r.subresource.as_deref()),
            ("namespaces", Some("status"))
        );
        let r = parse("/apis/apps/v1/deployments").expect("parses");
        assert!(r.namespace.is_none() && r.name.is_none());
        assert!(parse("/apis/apps/v1/nothings").is_err());
        assert!(parse("/api/v1/namespaces/a/pods/b/c/d").is_err());
    }

    #[test]
    fn accept_picks_table_or_json() {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::ACCEPT,
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
                .parse()
                .expect("header"),
        );
        assert_eq!(
            negotiate(&headers, &Query::default()).expect("ok"),
            Output::Table(IncludeObject::Metadata)
        );
        headers.insert(
            axum::http::header::ACCEPT,
            "application/vnd.kubernetes.protobuf"
                .parse()
                .expect("header"),
        );
        assert!(negotiate(&headers, &Query::default()).is_err());
        headers.insert(
            axum::http::header::ACCEPT,
            "application/vnd.kubernetes.protobuf, */*"
                .parse()
                .expect("header"),
        );
        assert_eq!(
            negotiate(&headers, &Query::default()).expect("ok"),
            Output::Json
        );
    }

    #[test]
    fn query_values_are_decoded() {
        let q = Query::parse(Some(
            "labelSelector=app%3Dweb%2Ctier+in+%28a%29&watch=1&limit=5",
        ));
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert!(q.flag("watch"));
        assert_eq!(q.int("limit").expect("int"), Some(5));
        assert!(Query::parse(Some("limit=x")).int("limit").is_err());
    }

    #[test]
    fn bodies_in_json_and_yaml_decode_and_others_are_refused() {
        assert!(decode_object("application/json", b"{\"a\":1}").is_ok());
        assert!(decode_object("application/yaml", b"a: 1\n").is_ok());
        assert_eq!(
            decode_object("application/json", b"{")
                .expect_err("bad")
                .reason(),
            "BadRequest"
        );
        assert_eq!(
            decode_object("text/plain", b"{}")
                .expect_err("bad")
                .reason(),
            "UnsupportedMediaType"
        );
        assert_eq!(
            decode_object("application/json", b"[1]")
                .expect_err("bad")
                .reason(),
            "BadRequest"
        );
    }
}
