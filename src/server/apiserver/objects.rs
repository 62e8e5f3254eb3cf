//! Objects as the API server keeps them in the store: where they live (keys), how they are
//! encoded (JSON without `resourceVersion`, which is the store's `mod_revision` and is put back
//! on every read), typed normalisation of built-in kinds, and list continuation tokens.
//!
//! Owns the key layout `/registry/<group>/<plural>/<namespace>/<name>` (cluster-scoped
//! resources leave out the namespace). Does not decide what a request may do.

use base64::Engine;
use serde_json::{json, Map, Value};

use super::errors::ApiError;
use super::resources::ResourceInfo;
use crate::server::store::{KeyValue, Revision};

/// The store key of one object.
pub fn key(info: &ResourceInfo, namespace: Option<&str>, name: &str) -> Vec<u8> {
    match (info.namespaced, namespace) {
        (true, Some(ns)) => format!(
            "/registry/{}/{}/{ns}/{name}",
            info.storage_group(),
            info.plural
        ),
        _ => format!("/registry/{}/{}/{name}", info.storage_group(), info.plural),
    }
    .into_bytes()
}

/// The key prefix of a collection: all objects of a resource, or those in one namespace.
pub fn prefix(info: &ResourceInfo, namespace: Option<&str>) -> Vec<u8> {
    match (info.namespaced, namespace) {
        (true, Some(ns)) => format!("/registry/{}/{}/{ns}/", info.storage_group(), info.plural),
        _ => format!("/registry/{}/{}/", info.storage_group(), info.plural),
    }
    .into_bytes()
}

/// Decodes a stored object and gives it its `resourceVersion` and the `apiVersion` it is served
/// at (custom resources are stored in one version and served in several).
pub fn decode(info: &ResourceInfo, kv: &KeyValue) -> Result<Value, ApiError> {
    let mut obj: Value = serde_json::from_slice(&kv.value).map_err(|err| {
        ApiError::internal(format!(
            "stored object {} is not valid JSON: {err}",
            String::from_utf8_lossy(&kv.key)
        ))
    })?;
    if info.is_events_v1() {
        obj = events_v1_from_core(obj);
    }
    set_resource_version(&mut obj, kv.mod_revision);
    if let Some(map) = obj.as_object_mut() {
        map.insert("apiVersion".into(), json!(info.api_version()));
        map.insert("kind".into(), json!(info.kind));
    }
    Ok(obj)
}

/// Encodes an object for the store: `resourceVersion` is the store's business.
pub fn encode(info: &ResourceInfo, obj: &Value) -> Vec<u8> {
    let mut obj = if info.is_events_v1() {
        core_event_from_v1(obj.clone())
    } else {
        obj.clone()
    };
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        meta.remove("selfLink");
    }
    // Serialising a Value cannot fail: its keys are strings.
    serde_json::to_vec(&obj).unwrap_or_default()
}

/// core/v1 field name <-> events.k8s.io/v1 field name (the fields not listed keep their names:
/// metadata, eventTime, series, reportingInstance, action, reason, related, type).
const EVENT_RENAMES: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

/// An events.k8s.io/v1 Event in its stored (core/v1) shape.
pub fn core_event_from_v1(event: Value) -> Value {
    rename_fields(event, |(core, v1)| (v1, core), "v1")
}

/// A stored (core/v1) Event as events.k8s.io/v1 serves it.
pub fn events_v1_from_core(event: Value) -> Value {
    rename_fields(event, |(core, v1)| (core, v1), "events.k8s.io/v1")
}

fn rename_fields(
    event: Value,
    direction: impl Fn((&'static str, &'static str)) -> (&'static str, &'static str),
    api_version: &str,
) -> Value {
    let Value::Object(mut map) = event else {
        return event;
    };
    for pair in EVENT_RENAMES {
        let (from, to) = direction(*pair);
        if let Some(value) = map.remove(from) {
            map.insert(to.to_string(), value);
        }
    }
    if map.contains_key("apiVersion") {
        map.insert("apiVersion".into(), json!(api_version));
    }
    Value::Object(map)
}

pub fn set_resource_version(obj: &mut Value, revision: Revision) {
    if let Some(meta) = metadata_mut(obj) {
        meta.insert("resourceVersion".into(), json!(revision.to_string()));
    }
}

/// `metadata` as a map, created if missing (only on objects).
pub fn metadata_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    let map = obj.as_object_mut()?;
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut()
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

pub fn name_of(obj: &Value) -> &str {
    meta_str(obj, "name").unwrap_or_default()
}

pub fn labels_of(obj: &Value) -> std::collections::BTreeMap<String, String> {
    obj.get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

pub fn finalizers_of(obj: &Value) -> Vec<String> {
    obj.get("metadata")
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Parses a `resourceVersion` given by a client.
pub fn parse_resource_version(rv: &str) -> Result<Revision, ApiError> {
    rv.parse::<Revision>()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| ApiError::bad_request(format!("invalid resource version: {rv:?}")))
}

/// Now, as Kubernetes writes timestamps (RFC 3339, whole seconds, UTC).
pub fn now_rfc3339() -> String {
    timestamp_rfc3339(jiff::Timestamp::now())
}

pub fn timestamp_rfc3339(ts: jiff::Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Decodes a built-in object into its k8s-openapi type and encodes it again: this rejects
/// values of the wrong type (as Go's decoder does, with a message naming the field) and drops
/// unknown fields. Custom resources are returned as they are.
pub fn normalize(info: &ResourceInfo, obj: Value) -> Result<Value, ApiError> {
    if !info.is_builtin() {
        return Ok(obj);
    }
    let group = info.group.as_str();
    let kind = info.kind.as_str();
    macro_rules! try_kind {
        ($ty:ty, [$($short:expr),*], [$($cat:expr),*], [$($sub:expr),*]) => {
            if <$ty as k8s_openapi::Resource>::GROUP == group
                && <$ty as k8s_openapi::Resource>::KIND == kind
            {
                let typed: $ty = serde_path_to_error::deserialize(&obj).map_err(|err| {
                    ApiError::bad_request(format!(
                        "{kind} in version \"{}\" cannot be handled as a {kind}: {}: {}",
                        info.version,
                        err.path(),
                        err.inner()
                    ))
                })?;
                return serde_json::to_value(&typed)
                    .map_err(|err| ApiError::internal(format!("encoding {kind}: {err}")));
            }
        };
    }
    crate::for_each_builtin!(try_kind);
    Ok(obj)
}

/// A list continuation: where the next page starts and the revision the list is read at.
#[derive(Debug, PartialEq, Eq)]
pub struct Continue {
    pub revision: Revision,
    pub start: Vec<u8>,
}

impl Continue {
    pub fn encode(&self) -> String {
        let body = json!({
            "v": "meta.k8s.io/v1",
            "rv": self.revision,
            "start": base64::engine::general_purpose::STANDARD.encode(&self.start),
        });
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body.to_string())
    }

    pub fn decode(token: &str) -> Result<Continue, ApiError> {
        let bad = || {
            ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
        };
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.trim_end_matches('='))
            .map_err(|_| bad())?;
        let body: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
        let revision = body["rv"].as_i64().filter(|r| *r > 0).ok_or_else(bad)?;
        let start = body["start"]
            .as_str()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .ok_or_else(bad)?;
        Ok(Continue { revision, start })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::apiserver::resources::Resources;

    #[test]
    fn events_v1_are_stored_as_core_events() {
        let resources = Resources::new();
        let v1 = resources
            .find("events.k8s.io", "v1", "events")
            .expect("events.k8s.io");
        assert_eq!(
            key(&v1, Some("d"), "e"),
            b"/registry/core/events/d/e".to_vec()
        );
        let event = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e"}, "note": "hi", "regarding": {"name": "p"},
            "deprecatedCount": 3, "reason": "Started"
        });
        let stored: Value = serde_json::from_slice(&encode(&v1, &event)).expect("json");
        assert_eq!(stored["message"], "hi");
        assert_eq!(stored["involvedObject"]["name"], "p");
        assert_eq!(stored["count"], 3);
        assert_eq!(stored["reason"], "Started");
        assert!(stored.get("note").is_none());
        let kv = KeyValue {
            key: b"/registry/core/events/d/e".to_vec(),
            value: serde_json::to_vec(&stored).expect("json"),
            create_revision: 5,
            mod_revision: 5,
            version: 1,
        };
        let served = decode(&v1, &kv).expect("decode");
        assert_eq!(served["note"], "hi");
        assert_eq!(served["regarding"]["name"], "p");
        assert_eq!(served["apiVersion"], "events.k8s.io/v1");
        assert!(served.get("message").is_none());
    }

    #[test]
    fn keys_follow_the_registry_layout() {
        let resources = Resources::new();
        let pods = resources.find("", "v1", "pods").expect("pods");
        assert_eq!(
            key(&pods, Some("default"), "web"),
            b"/registry/core/pods/default/web".to_vec()
        );
        assert_eq!(
            prefix(&pods, Some("default")),
            b"/registry/core/pods/default/".to_vec()
        );
        assert_eq!(prefix(&pods, None), b"/registry/core/pods/".to_vec());
        let nodes = resources.find("", "v1", "nodes").expect("nodes");
        assert_eq!(
            key(&nodes, Some("ignored"), "n1"),
            b"/registry/core/nodes/n1".to_vec()
        );
        let deploy = resources
            .find("apps", "v1", "deployments")
            .expect("deployments");
        assert_eq!(
            key(&deploy, Some("a"), "b"),
            b"/registry/apps/deployments/a/b".to_vec()
        );
    }

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let token = Continue {
            revision: 42,
            start: b"/registry/core/pods/default/b\0".to_vec(),
        };
        assert_eq!(Continue::decode(&token.encode()).expect("decodes"), token);
        assert!(Continue::decode("not-a-token").is_err());
        assert!(Continue::decode("").is_err());
    }

    #[test]
    fn normalize_drops_unknown_fields_and_rejects_wrong_types() {
        let resources = Resources::new();
        let cms = resources.find("", "v1", "configmaps").expect("configmaps");
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}, "bogus": 1});
        let normal = normalize(&cms, obj).expect("valid");
        assert!(normal.get("bogus").is_none());
        assert_eq!(normal["data"]["k"], "v");
        let deploy = resources
            .find("apps", "v1", "deployments")
            .expect("deployments");
        let bad = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "a"}, "spec": {"replicas": "three"}});
        let err = normalize(&deploy, bad).expect_err("wrong type");
        assert_eq!(err.reason(), "BadRequest");
        assert!(err.to_string().contains("spec.replicas"), "{err}");
    }

    #[test]
    fn encode_leaves_out_the_resource_version() {
        let resources = Resources::new();
        let cms = resources.find("", "v1", "configmaps").expect("configmaps");
        let obj = json!({"metadata": {"name": "a", "resourceVersion": "7"}});
        let stored: Value = serde_json::from_slice(&encode(&cms, &obj)).expect("json");
        assert!(stored["metadata"].get("resourceVersion").is_none());
    }
}
