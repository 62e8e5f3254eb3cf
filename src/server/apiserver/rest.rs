//! The REST verbs on resources: get, list, create, update, patch, delete, deletecollection, and
//! the status, scale and binding subresources, with Kubernetes' semantics for system metadata,
//! optimistic concurrency, generation, graceful deletion and finalizers.
//!
//! Owns what a write does to an object before it reaches the store. Watches live in
//! [`super::watch`]; authentication and authorization happened before these functions run.

use axum::http::StatusCode;
use serde_json::{json, Map, Value};

use super::admission;
use super::allocators;
use super::errors::{ApiError, Cause};
use super::objects::{self, meta_str, metadata_mut, Continue};
use super::patch::{self, PatchType};
use super::request::{FieldValidation, Output, Query, ResourceRequest};
use super::resources::{resources_of_crd, ResourceInfo};
use super::selectors::{self, FieldSelector, LabelSelector};
use super::table;
use super::ApiState;
use crate::server::store::{key_after, RangeRequest, StoreError};

/// How often a write is retried when another writer got there first (and the client gave no
/// resourceVersion precondition).
const WRITE_ATTEMPTS: usize = 16;
/// Characters of generated name suffixes (no vowels, as Kubernetes does).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A successful answer: status code, body, and `Warning` headers.
#[derive(Debug)]
pub struct Reply {
    pub code: StatusCode,
    pub body: Value,
    pub warnings: Vec<String>,
}

impl Reply {
    fn ok(body: Value) -> Reply {
        Reply {
            code: StatusCode::OK,
            body,
            warnings: Vec::new(),
        }
    }
}

/// Which part of an object an update may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// Everything but `status` (for kinds with a status subresource).
    Main,
    /// Only `status`.
    Status,
    /// A pod's binding to a node: a main-resource write that may set `spec.nodeName`, which
    /// ordinary updates may not change.
    Binding,
}

fn part_of(request: &ResourceRequest) -> Result<Part, ApiError> {
    match request.subresource.as_deref() {
        None => Ok(Part::Main),
        Some("status") if request.info.has_subresource("status") => Ok(Part::Status),
        _ => Err(ApiError::no_such_route()),
    }
}

fn name_required(request: &ResourceRequest) -> Result<&str, ApiError> {
    request
        .name
        .as_deref()
        .ok_or_else(|| ApiError::bad_request("a name is required for this request"))
}

fn namespace_for(request: &ResourceRequest) -> Result<Option<&str>, ApiError> {
    match (request.info.namespaced, request.namespace.as_deref()) {
        (true, Some(ns)) => Ok(Some(ns)),
        (true, None) => Err(ApiError::no_such_route()),
        (false, _) => Ok(None),
    }
}

/// GET of one object (also `/status`).
pub async fn get(
    state: &ApiState,
    request: &ResourceRequest,
    output: Output,
) -> Result<Reply, ApiError> {
    let info = &request.info;
    let name = name_required(request)?;
    part_of(request)?;
    let obj = read(state, info, request.namespace.as_deref(), name)
        .await?
        .0;
    Ok(Reply::ok(render_one(info, obj, output)))
}

/// Reads one object with its revision; 404 when missing.
async fn read(
    state: &ApiState,
    info: &ResourceInfo,
    namespace: Option<&str>,
    name: &str,
) -> Result<(Value, i64), ApiError> {
    let key = objects::key(info, namespace, name);
    let started = std::time::Instant::now();
    let kv = state.store.get(&key).await;
    state.metrics.observe_store("get", started.elapsed());
    let kv = kv?.ok_or_else(|| ApiError::not_found(&info.group, &info.plural, name))?;
    Ok((objects::decode(info, &kv)?, kv.mod_revision))
}

fn render_one(info: &ResourceInfo, obj: Value, output: Output) -> Value {
    match output {
        Output::Json => obj,
        Output::Table(include) => table::to_table(
            &info.gvk(),
            std::slice::from_ref(&obj),
            jiff::Timestamp::now(),
            include,
            info.custom.as_ref().map(|c| c.printer_columns.as_slice()),
        ),
        Output::Metadata => partial_metadata(&obj),
    }
}

fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// Label and field selectors of a list or watch, checked against what the resource supports.
pub struct Filter {
    labels: Option<LabelSelector>,
    fields: Option<FieldSelector>,
    /// A watch on one object's path sees only that object.
    name: Option<String>,
    group: String,
    plural: String,
}

impl Filter {
    pub fn from_query(info: &ResourceInfo, query: &Query) -> Result<Filter, ApiError> {
        let labels = match query.get("labelSelector") {
            Some(s) => {
                Some(LabelSelector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?)
            }
            None => None,
        };
        let fields = match query.get("fieldSelector") {
            Some(s) => Some(
                FieldSelector::parse(s)
                    .and_then(|selector| selector.validate_for(&info.group, &info.plural))
                    .map_err(|e| ApiError::bad_request(e.to_string()))?,
            ),
            None => None,
        };
        Ok(Filter {
            labels,
            fields,
            name: None,
            group: info.group.clone(),
            plural: info.plural.clone(),
        })
    }

    pub fn with_name(mut self, name: &str) -> Filter {
        self.name = Some(name.to_string());
        self
    }

    pub fn matches(&self, obj: &Value) -> bool {
        if let Some(name) = &self.name {
            if objects::name_of(obj) != name {
                return false;
            }
        }
        if let Some(labels) = &self.labels {
            if !labels.matches(&objects::labels_of(obj)) {
                return false;
            }
        }
        if let Some(fields) = &self.fields {
            let lookup =
                |field: &str| selectors::field_value(&self.group, &self.plural, obj, field);
            if !fields.matches(&lookup) {
                return false;
            }
        }
        true
    }
}

/// The revision a list reads at, from `resourceVersion` and `resourceVersionMatch`.
async fn list_revision(state: &ApiState, query: &Query) -> Result<Option<i64>, ApiError> {
    let rv = query.get("resourceVersion");
    let matching = query.get("resourceVersionMatch");
    match (rv, matching) {
        (None, Some(_)) => Err(ApiError::bad_request(
            "resourceVersionMatch is forbidden unless resourceVersion is provided",
        )),
        (None, None) | (Some("0"), None | Some("NotOlderThan")) => Ok(None),
        (Some(rv), Some("Exact")) => Ok(Some(objects::parse_resource_version(rv)?)),
        (Some(rv), None | Some("NotOlderThan")) => {
            let wanted = objects::parse_resource_version(rv)?;
            let current = state.store.current_revision().await?;
            if wanted > current {
                return Err(ApiError::Timeout {
                    message: format!("Too large resource version: {wanted}, current: {current}"),
                });
            }
            Ok(None)
        }
        (Some(_), Some(other)) => Err(ApiError::bad_request(format!(
            "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
        ))),
    }
}

/// Lists matching objects under a prefix at a revision (`None`: now), at most `limit` (0: all),
/// starting at `start`. Returns the objects, the revision read and where the next page starts.
pub async fn collect(
    state: &ApiState,
    info: &ResourceInfo,
    prefix: Vec<u8>,
    mut start: Option<Vec<u8>>,
    revision: Option<i64>,
    limit: usize,
    filter: &Filter,
) -> Result<(Vec<Value>, i64, Option<Vec<u8>>), ApiError> {
    let mut items = Vec::new();
    let mut revision = revision;
    let page = if limit == 0 { 0 } else { limit.max(100) };
    loop {
        let started = std::time::Instant::now();
        let response = state
            .store
            .range(RangeRequest {
                prefix: prefix.clone(),
                start: start.clone(),
                limit: page,
                revision,
            })
            .await;
        state.metrics.observe_store("range", started.elapsed());
        let response = response?;
        revision = Some(response.revision);
        let last = response.kvs.len().saturating_sub(1);
        for (i, kv) in response.kvs.iter().enumerate() {
            let obj = objects::decode(info, kv)?;
            if filter.matches(&obj) {
                items.push(obj);
                if limit != 0 && items.len() == limit {
                    // More may follow: the next page starts right after this key.
                    let more = i < last || response.next.is_some();
                    let next = more.then(|| key_after(&kv.key));
                    return Ok((items, response.revision, next));
                }
            }
        }
        match response.next {
            Some(next) => start = Some(next),
            None => return Ok((items, response.revision, None)),
        }
    }
}

/// GET of a collection.
pub async fn list(
    state: &ApiState,
    request: &ResourceRequest,
    query: &Query,
    output: Output,
) -> Result<Reply, ApiError> {
    let info = &request.info;
    let filter = Filter::from_query(info, query)?;
    let limit = query.int("limit")?.unwrap_or(0).max(0) as usize;
    let prefix = objects::prefix(info, request.namespace.as_deref());
    let (start, revision) = match query.get("continue") {
        Some(token) => {
            let token = Continue::decode(token)?;
            (Some(token.start), Some(token.revision))
        }
        None => (None, list_revision(state, query).await?),
    };
    let (items, revision, next) = collect(state, info, prefix, start, revision, limit, &filter)
        .await
        .map_err(|err| match (err, query.get("continue")) {
            (ApiError::Expired { .. }, Some(_)) => ApiError::Expired {
                message: "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.".into(),
            },
            (err, _) => err,
        })?;
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if let Some(next) = next {
        metadata["continue"] = json!(Continue {
            revision,
            start: next
        }
        .encode());
    }
    let body = match output {
        Output::Json => json!({
            "kind": info.list_kind,
            "apiVersion": info.api_version(),
            "metadata": metadata,
            "items": items,
        }),
        Output::Table(include) => {
            let mut t = table::to_table(
                &info.gvk(),
                &items,
                jiff::Timestamp::now(),
                include,
                info.custom.as_ref().map(|c| c.printer_columns.as_slice()),
            );
            t["metadata"] = metadata;
            t
        }
        Output::Metadata => json!({
            "kind": "PartialObjectMetadataList",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": metadata,
            "items": items.iter().map(partial_metadata).collect::<Vec<_>>(),
        }),
    };
    Ok(Reply::ok(body))
}

/// Checks `apiVersion`/`kind` of a body against the resource, and fills them in when absent.
fn check_type(info: &ResourceInfo, obj: &mut Value) -> Result<(), ApiError> {
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
    let expected_version = info.api_version();
    match map.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v != expected_version => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({expected_version})"
            )))
        }
        _ => {}
    }
    match map.get("kind").and_then(Value::as_str) {
        Some(k) if k != info.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                info.kind
            )))
        }
        _ => {}
    }
    map.insert("apiVersion".into(), json!(expected_version));
    map.insert("kind".into(), json!(info.kind));
    Ok(())
}

fn check_namespace(
    info: &ResourceInfo,
    namespace: Option<&str>,
    obj: &mut Value,
) -> Result<(), ApiError> {
    let meta =
        metadata_mut(obj).ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
    if info.namespaced {
        let ns = namespace.unwrap_or_default();
        match meta.get("namespace").and_then(Value::as_str) {
            Some(given) if !given.is_empty() && given != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            _ => {}
        }
        meta.insert("namespace".into(), json!(ns));
    } else {
        meta.remove("namespace");
    }
    Ok(())
}

/// Unknown fields, handled as `fieldValidation` says: an error, warnings, or nothing.
fn unknown_field_warnings(
    info: &ResourceInfo,
    obj: &Value,
    validation: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    if validation == FieldValidation::Ignore || !info.is_builtin() {
        return Ok(Vec::new());
    }
    let unknown = admission::unknown_fields(&info.gvk(), obj);
    if unknown.is_empty() {
        return Ok(Vec::new());
    }
    let messages: Vec<String> = unknown
        .iter()
        .map(|path| format!("unknown field \"{}\"", path.trim_start_matches('.')))
        .collect();
    match validation {
        FieldValidation::Strict => Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            messages.join(", ")
        ))),
        _ => Ok(messages),
    }
}

/// Defaults, type checks and validation; the object comes back normalised.
fn admit(info: &ResourceInfo, mut obj: Value, old: Option<&Value>) -> Result<Value, ApiError> {
    let gvk = info.gvk();
    obj = objects::normalize(info, obj)?;
    if let Some(old) = old {
        // Values the server allocated (cluster IPs, node ports, a job's selector) carry over
        // when the client leaves them out.
        admission::prepare_update(&gvk, &mut obj, old);
    }
    admission::apply_defaults(&gvk, &mut obj);
    let mut causes: Vec<Cause> = admission::validate(&gvk, &obj, old)
        .into_iter()
        .map(|e| Cause {
            reason: e.reason.to_string(),
            message: e.message,
            field: e.field,
        })
        .collect();
    if info.custom.is_some() {
        causes.extend(validate_custom_metadata(&obj));
    }
    if !causes.is_empty() {
        let name = objects::name_of(&obj).to_string();
        return Err(ApiError::invalid(
            &info.group,
            &info.kind,
            &info.plural,
            &name,
            causes,
        ));
    }
    Ok(obj)
}

/// Custom resources get the metadata checks every object gets (their schema is the CRD's).
fn validate_custom_metadata(obj: &Value) -> Vec<Cause> {
    let name = objects::name_of(obj);
    if name.is_empty() {
        return vec![Cause {
            reason: "FieldValueRequired".into(),
            message: "Required value: name or generateName is required".into(),
            field: "metadata.name".into(),
        }];
    }
    Vec::new()
}

/// A fresh generated name: `generateName` plus five random characters.
fn generated_name(base: &str) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let base: String = base.chars().take(63 - 5).collect();
    let suffix: String = (0..5)
        .map(|_| NAME_ALPHABET[rng.random_range(0..NAME_ALPHABET.len())] as char)
        .collect();
    format!("{base}{suffix}")
}

/// Checks that a namespace exists and is not being deleted, before creating content in it.
async fn check_namespace_open(state: &ApiState, namespace: &str) -> Result<(), ApiError> {
    let Some(info) = state.resources.find("", "v1", "namespaces") else {
        return Ok(());
    };
    let kv = state
        .store
        .get(&objects::key(&info, None, namespace))
        .await?;
    let Some(kv) = kv else {
        return Err(ApiError::not_found("", "namespaces", namespace));
    };
    let ns = objects::decode(&info, &kv)?;
    if ns["metadata"].get("deletionTimestamp").is_some() || ns["status"]["phase"] == "Terminating" {
        return Err(ApiError::forbidden(format!(
            "unable to create new content in namespace {namespace} because it is being terminated"
        )));
    }
    Ok(())
}

/// The QoS class of a pod, as the kubelet and API server compute it.
pub fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|f| pod["spec"][f].as_array())
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for container in &containers {
        let requests = container["resources"]["requests"].as_object();
        let limits = container["resources"]["limits"].as_object();
        let relevant = |m: Option<&Map<String, Value>>| {
            m.map(|m| m.keys().filter(|k| *k == "cpu" || *k == "memory").count())
                .unwrap_or(0)
        };
        if relevant(requests) > 0 || relevant(limits) > 0 {
            any = true;
        }
        for resource in ["cpu", "memory"] {
            let limit = limits.and_then(|l| l.get(resource));
            let request = requests.and_then(|r| r.get(resource)).or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// What the API server sets on create besides what the client sent.
fn initial_status(info: &ResourceInfo, obj: &mut Value) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    match (info.group.as_str(), info.plural.as_str()) {
        ("", "nodes") => {}
        ("", "pods") => {
            let qos = qos_class(&Value::Object(map.clone()));
            map.insert(
                "status".into(),
                json!({"phase": "Pending", "qosClass": qos}),
            );
        }
        ("", "namespaces") => {
            map.insert("status".into(), json!({"phase": "Active"}));
        }
        ("", "persistentvolumes") | ("", "persistentvolumeclaims") => {
            map.insert("status".into(), json!({"phase": "Pending"}));
        }
        ("", "services") => {
            map.insert("status".into(), json!({"loadBalancer": {}}));
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            let names = map
                .get("spec")
                .and_then(|s| s.get("names"))
                .cloned()
                .unwrap_or_else(|| json!({}));
            map.insert("status".into(), crd_status(&names));
        }
        _ if info.has_subresource("status") => {
            map.remove("status");
        }
        _ => {}
    }
}

fn crd_status(names: &Value) -> Value {
    let now = objects::now_rfc3339();
    let mut accepted = names.clone();
    if accepted.get("listKind").is_none() {
        if let Some(kind) = names["kind"].as_str() {
            accepted["listKind"] = json!(format!("{kind}List"));
        }
    }
    if accepted.get("singular").is_none() {
        if let Some(kind) = names["kind"].as_str() {
            accepted["singular"] = json!(kind.to_ascii_lowercase());
        }
    }
    json!({
        "acceptedNames": accepted,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
        "storedVersions": [],
    })
}

/// POST of a new object.
pub async fn create(
    state: &ApiState,
    request: &ResourceRequest,
    query: &Query,
    mut obj: Value,
) -> Result<Reply, ApiError> {
    if request.subresource.is_some() || request.name.is_some() {
        return Err(ApiError::MethodNotAllowed {
            message: "the server does not allow this method on the requested resource".into(),
        });
    }
    let info = &request.info;
    let dry_run = query.dry_run()?;
    let validation = FieldValidation::from_query(query)?;
    let namespace = namespace_for(request)?;
    check_type(info, &mut obj)?;
    check_namespace(info, namespace, &mut obj)?;
    let warnings = unknown_field_warnings(info, &obj, validation)?;
    if let Some(ns) = namespace {
        check_namespace_open(state, ns).await?;
    }
    let generate = meta_str(&obj, "generateName").map(String::from);
    let given_name = meta_str(&obj, "name")
        .map(String::from)
        .filter(|n| !n.is_empty());
    {
        let meta = metadata_mut(&mut obj)
            .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(objects::now_rfc3339()));
        for field in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "managedFields",
        ] {
            meta.remove(field);
        }
        if info.tracks_generation() {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
    }
    initial_status(info, &mut obj);
    for attempt in 0..5 {
        let name = match (&given_name, &generate) {
            (Some(name), _) => name.clone(),
            (None, Some(base)) if !base.is_empty() => generated_name(base),
            _ => String::new(),
        };
        if let Some(meta) = metadata_mut(&mut obj) {
            meta.insert("name".into(), json!(name));
        }
        let mut admitted = admit(info, obj.clone(), None)?;
        if dry_run {
            return Ok(Reply {
                code: StatusCode::CREATED,
                body: admitted,
                warnings,
            });
        }
        let reserved = if allocators::is_service(&info.group, &info.plural) {
            Some(allocators::allocate(state, &mut admitted, None).await?)
        } else {
            None
        };
        let key = objects::key(info, namespace, &name);
        let started = std::time::Instant::now();
        let result = state
            .store
            .create(&key, &objects::encode(info, &admitted))
            .await;
        state.metrics.observe_store("create", started.elapsed());
        if let (Err(_), Some(reserved)) = (&result, reserved) {
            allocators::rollback(state, reserved).await;
        }
        match result {
            Ok(kv) => {
                let created = objects::decode(info, &kv)?;
                after_write(state, info).await;
                return Ok(Reply {
                    code: StatusCode::CREATED,
                    body: created,
                    warnings,
                });
            }
            Err(StoreError::AlreadyExists { .. }) if given_name.is_none() && attempt < 4 => {
                continue
            }
            Err(err) => return Err(ApiError::from_store(err, &info.group, &info.plural, &name)),
        }
    }
    Err(ApiError::internal("could not generate a unique name"))
}

/// Housekeeping after a successful write: CRD changes update the served resources.
async fn after_write(state: &ApiState, info: &ResourceInfo) {
    if info.group == "apiextensions.k8s.io" && info.plural == "customresourcedefinitions" {
        if let Err(err) = state.refresh_custom_resources().await {
            tracing::warn!(error = %err, "refreshing custom resources failed");
        }
    }
}

/// Everything of an object but metadata and status: what `generation` tracks.
fn spec_part(obj: &Value) -> Value {
    let mut copy = obj.clone();
    if let Some(map) = copy.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
        map.remove("apiVersion");
        map.remove("kind");
    }
    copy
}

/// Applies the rules of an update to `new` given the stored `old`.
fn prepare_update(
    info: &ResourceInfo,
    old: &Value,
    new: Value,
    part: Part,
) -> Result<Value, ApiError> {
    let mut new = match part {
        Part::Status => {
            // Only status changes through /status; everything else stays as stored.
            let mut merged = old.clone();
            match new.get("status") {
                Some(status) => merged["status"] = status.clone(),
                None => {
                    if let Some(map) = merged.as_object_mut() {
                        map.remove("status");
                    }
                }
            }
            merged
        }
        Part::Main | Part::Binding => {
            let mut new = new;
            if info.status_is_subresource() && info.plural != "customresourcedefinitions" {
                match old.get("status") {
                    Some(status) => new["status"] = status.clone(),
                    None => {
                        if let Some(map) = new.as_object_mut() {
                            map.remove("status");
                        }
                    }
                }
            }
            new
        }
    };
    let old_meta = old.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let spec_changed = spec_part(old) != spec_part(&new);
    let meta = metadata_mut(&mut new)
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
    if let (Some(given), Some(stored)) = (
        meta.get("uid").and_then(Value::as_str),
        old_meta["uid"].as_str(),
    ) {
        if !given.is_empty() && given != stored {
            return Err(ApiError::conflict(
                &info.group,
                &info.plural,
                old_meta["name"].as_str().unwrap_or_default(),
                &format!("Precondition failed: UID in precondition: {given}, UID in object meta: {stored}"),
            ));
        }
    }
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        match old_meta.get(field) {
            Some(value) => {
                meta.insert(field.into(), value.clone());
            }
            None => {
                meta.remove(field);
            }
        }
    }
    meta.remove("managedFields");
    meta.remove("selfLink");
    if info.tracks_generation() && spec_changed && part != Part::Status {
        let generation = old_meta["generation"].as_i64().unwrap_or(0) + 1;
        meta.insert("generation".into(), json!(generation));
    }
    Ok(new)
}

/// The shared update loop: read, compute the new object, write with compare-and-swap, retry
/// when someone else wrote first (unless the client pinned a resourceVersion).
async fn update_with<F>(
    state: &ApiState,
    request: &ResourceRequest,
    query: &Query,
    part: Part,
    mut compute: F,
) -> Result<Reply, ApiError>
where
    F: FnMut(&Value) -> Result<(Value, bool), ApiError>,
{
    let info = &request.info;
    let name = name_required(request)?;
    let namespace = namespace_for(request)?;
    let dry_run = query.dry_run()?;
    let validation = FieldValidation::from_query(query)?;
    let key = objects::key(info, namespace, name);
    for _ in 0..WRITE_ATTEMPTS {
        let (current, revision) = read(state, info, namespace, name).await?;
        // `compute` says whether the client pinned a resourceVersion.
        let (mut wanted, pinned) = compute(&current)?;
        check_type(info, &mut wanted)?;
        check_namespace(info, namespace, &mut wanted)?;
        if meta_str(&wanted, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta_str(&wanted, "name").unwrap_or_default()
            )));
        }
        if let Some(meta) = metadata_mut(&mut wanted) {
            meta.insert("name".into(), json!(name));
        }
        if let Some(rv) = meta_str(&wanted, "resourceVersion") {
            if !rv.is_empty() && objects::parse_resource_version(rv)? != revision {
                return Err(ApiError::modified(&info.group, &info.plural, name));
            }
        }
        let warnings = unknown_field_warnings(info, &wanted, validation)?;
        let prepared = prepare_update(info, &current, wanted, part)?;
        let old = (part != Part::Binding).then_some(&current);
        let mut admitted = admit(info, prepared, old)?;
        let service = allocators::is_service(&info.group, &info.plural) && !dry_run;
        let reserved = if service && part != Part::Status {
            Some(allocators::allocate(state, &mut admitted, Some(&current)).await?)
        } else {
            None
        };
        let unchanged = {
            let mut a = admitted.clone();
            let mut b = current.clone();
            for o in [&mut a, &mut b] {
                if let Some(meta) = metadata_mut(o) {
                    meta.remove("resourceVersion");
                }
            }
            a == b
        };
        if unchanged {
            return Ok(Reply {
                code: StatusCode::OK,
                body: current,
                warnings,
            });
        }
        // As upstream's shouldDeleteDuringUpdate: an update deletes an object only when a
        // delete was requested, no finalizer is left and the deletion is not graceful (a pod
        // the kubelet is still stopping keeps taking status updates until its final delete).
        let finalized = current["metadata"].get("deletionTimestamp").is_some()
            && current["metadata"]["deletionGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(0)
                == 0
            && objects::finalizers_of(&admitted).is_empty()
            && !namespace_held(info, &admitted);
        if dry_run {
            return Ok(Reply {
                code: StatusCode::OK,
                body: admitted,
                warnings,
            });
        }
        let started = std::time::Instant::now();
        let result = if finalized {
            // The last finalizer is gone from an object being deleted: it goes now.
            state
                .store
                .delete(&key, Some(revision))
                .await
                .map(|(_, rev)| (admitted.clone(), rev))
        } else {
            match state
                .store
                .update(&key, &objects::encode(info, &admitted), revision)
                .await
            {
                Ok(kv) => objects::decode(info, &kv)
                    .map(|obj| (obj, kv.mod_revision))
                    .map_err(|e| StoreError::Backend(e.to_string())),
                Err(err) => Err(err),
            }
        };
        state.metrics.observe_store("update", started.elapsed());
        if service {
            match (&result, reserved) {
                (Ok(_), _) => {
                    let kept = (!finalized).then_some(&admitted);
                    allocators::release(state, &current, kept).await;
                }
                (Err(_), Some(reserved)) => allocators::rollback(state, reserved).await,
                (Err(_), None) => {}
            }
        }
        match result {
            Ok((mut obj, rev)) => {
                objects::set_resource_version(&mut obj, rev);
                after_write(state, info).await;
                return Ok(Reply {
                    code: StatusCode::OK,
                    body: obj,
                    warnings,
                });
            }
            Err(StoreError::Conflict { .. }) if !pinned => continue,
            Err(err) => return Err(ApiError::from_store(err, &info.group, &info.plural, name)),
        }
    }
    Err(ApiError::modified(&info.group, &info.plural, name))
}

/// PUT of an object (or of its status).
pub async fn update(
    state: &ApiState,
    request: &ResourceRequest,
    query: &Query,
    body: Value,
) -> Result<Reply, ApiError> {
    let part = part_of(request)?;
    let pinned = meta_str(&body, "resourceVersion").is_some_and(|rv| !rv.is_empty());
    update_with(state, request, query, part, |_| Ok((body.clone(), pinned))).await
}

/// A namespace being deleted is held by its `spec.finalizers` too, until the namespace
/// controller finalizes it.
fn namespace_held(info: &ResourceInfo, obj: &Value) -> bool {
    info.group.is_empty()
        && info.plural == "namespaces"
        && obj["spec"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
}

/// PUT namespaces/<name>/finalize: changes only `spec.finalizers`. A namespace being deleted
/// whose finalizers are all gone is removed.
pub async fn finalize_namespace(
    state: &ApiState,
    request: &ResourceRequest,
    query: &Query,
    body: Value,
) -> Result<Reply, ApiError> {
    let main = ResourceRequest {
        subresource: None,
        ..request.clone()
    };
    let pinned = meta_str(&body, "resourceVersion").is_some_and(|rv| !rv.is_empty());
    let finalizers = body["spec"]["finalizers"].clone();
    update_with(state, &main, query, Part::Main, |current| {
        let mut next = current.clone();
        next["spec"]["finalizers"] = if finalizers.is_null() {
            json!([])
        } else {
            finalizers.clone()
        };
        if pinned {
            if let (Some(meta), Some(rv)) =
                (metadata_mut(&mut next), meta_str(&body, "resourceVersion"))
            {
                meta.insert("resourceVersion".into(), json!(rv));
            }
        }
        Ok((next, pinned))
    })
    .await
}

/// PATCH of an object (or of its status).
pub async fn patch(
    state: &ApiState,
    request: &ResourceRequest,
    query: &Query,
    content_type: &str,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let part = part_of(request)?;
    let patch_type = PatchType::from_content_type(content_type).ok_or_else(|| ApiError::UnsupportedMediaType {
        message: format!(
            "the body of the request was in an unknown format ({content_type}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json"
        ),
    })?;
    let info = request.info.clone();
    let pinned = patch_pins_resource_version(body);
    update_with(state, request, query, part, |current| {
        let patched = patch::apply_patch(patch_type, current, body, &info.gvk(), info.is_builtin())
            .map_err(patch_error)?;
        Ok((patched, pinned))
    })
    .await
}

fn patch_pins_resource_version(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .map(|v| match &v {
            Value::Object(_) => v["metadata"]["resourceVersion"].is_string(),
            Value::Array(ops) => ops.iter().any(|op| {
                op["path"].as_str() == Some("/metadata/resourceVersion") && op["op"] != "remove"
            }),
            _ => false,
        })
        .unwrap_or(false)
}

/// A patch that cannot be applied is answered as kube-apiserver does
/// (`NewGenericServerResponse(422, …)`): a generic message, no object in the details, and the
/// patch error as an `UnexpectedServerResponse` cause, which is what kubectl prints.
fn patch_error(err: patch::PatchError) -> ApiError {
    match err {
        patch::PatchError::Malformed(message) => ApiError::bad_request(message),
        patch::PatchError::Unsupported(message) => ApiError::UnsupportedMediaType { message },
        patch::PatchError::Invalid(message) => ApiError::Invalid {
            message: "the server rejected our request due to an error in our request".into(),
            details: Box::default(),
            causes: vec![Cause {
                reason: "UnexpectedServerResponse".into(),
                message,
                field: String::new(),
            }],
        },
    }
}

/// DeleteOptions from the body (if any) and the query.
#[derive(Debug, Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

impl DeleteOptions {
    pub fn parse(query: &Query, body: Option<&Value>) -> Result<DeleteOptions, ApiError> {
        let mut options = DeleteOptions {
            grace_period_seconds: query.int("gracePeriodSeconds")?,
            propagation: query.get("propagationPolicy").map(String::from),
            dry_run: query.dry_run()?,
            ..DeleteOptions::default()
        };
        if let Some(body) = body {
            if let Some(g) = body.get("gracePeriodSeconds").and_then(Value::as_i64) {
                options.grace_period_seconds = Some(g);
            }
            if let Some(p) = body.get("propagationPolicy").and_then(Value::as_str) {
                options.propagation = Some(p.to_string());
            }
            if body.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
                options.propagation = Some("Orphan".into());
            }
            if let Some(pre) = body.get("preconditions") {
                options.precondition_uid = pre.get("uid").and_then(Value::as_str).map(String::from);
                options.precondition_rv = pre
                    .get("resourceVersion")
                    .and_then(Value::as_str)
                    .map(String::from);
            }
            if let Some(dry) = body.get("dryRun").and_then(Value::as_array) {
                options.dry_run |= dry.iter().any(|d| d == "All");
            }
        }
        match options.propagation.as_deref() {
            None | Some("Background" | "Foreground" | "Orphan") => Ok(options),
            Some(other) => Err(ApiError::bad_request(format!(
                "propagationPolicy: Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
            ))),
        }
    }
}

/// DELETE of one object: immediate, graceful (pods), or held by finalizers.
pub async fn delete(
    state: &ApiState,
    request: &ResourceRequest,
    options: &DeleteOptions,
) -> Result<Reply, ApiError> {
    let info = &request.info;
    let name = name_required(request)?;
    if request.subresource.is_some() {
        return Err(ApiError::no_such_route());
    }
    let namespace = namespace_for(request)?;
    let key = objects::key(info, namespace, name);
    for _ in 0..WRITE_ATTEMPTS {
        let (current, revision) = read(state, info, namespace, name).await?;
        if let Some(uid) = &options.precondition_uid {
            let stored = meta_str(&current, "uid").unwrap_or_default();
            if uid != stored {
                return Err(ApiError::conflict(
                    &info.group,
                    &info.plural,
                    name,
                    &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {stored}"
                ),
                ));
            }
        }
        if let Some(rv) = &options.precondition_rv {
            if objects::parse_resource_version(rv)? != revision {
                return Err(ApiError::conflict(&info.group, &info.plural, name, &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {revision}"
                )));
            }
        }
        let plan = plan_deletion(info, &current, options);
        if options.dry_run {
            return Ok(Reply::ok(match plan {
                Deletion::Now => current,
                Deletion::Mark(obj) => obj,
            }));
        }
        let result = match &plan {
            Deletion::Now => state.store.delete(&key, Some(revision)).await.map(|_| None),
            Deletion::Mark(obj) => {
                if *obj == current {
                    return Ok(Reply::ok(current));
                }
                state
                    .store
                    .update(&key, &objects::encode(info, obj), revision)
                    .await
                    .map(Some)
            }
        };
        match result {
            Ok(None) => {
                after_write(state, info).await;
                if allocators::is_service(&info.group, &info.plural) {
                    allocators::release(state, &current, None).await;
                }
                if info.plural == "customresourcedefinitions" {
                    delete_custom_objects(state, &current).await?;
                }
                return Ok(Reply::ok(deleted_reply(info, &current)));
            }
            Ok(Some(kv)) => return Ok(Reply::ok(objects::decode(info, &kv)?)),
            Err(StoreError::Conflict { .. }) => continue,
            Err(err) => return Err(ApiError::from_store(err, &info.group, &info.plural, name)),
        }
    }
    Err(ApiError::modified(&info.group, &info.plural, name))
}

enum Deletion {
    Now,
    /// Keep the object, marked for deletion (deletionTimestamp, finalizers).
    Mark(Value),
}

fn plan_deletion(info: &ResourceInfo, current: &Value, options: &DeleteOptions) -> Deletion {
    let now = jiff::Timestamp::now();
    let mut obj = current.clone();
    let already = current["metadata"].get("deletionTimestamp").is_some();
    let is_pod = info.group.is_empty() && info.plural == "pods";
    // Pods: graceful deletion while a kubelet may still be running them.
    if is_pod {
        let phase = current["status"]["phase"].as_str().unwrap_or_default();
        let scheduled = current["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        let grace = options
            .grace_period_seconds
            .or_else(|| current["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30)
            .max(0);
        let terminal = phase == "Succeeded" || phase == "Failed";
        if grace > 0 && scheduled && !terminal {
            let current_grace = current["metadata"]["deletionGracePeriodSeconds"].as_i64();
            if already && current_grace.is_some_and(|g| g <= grace) {
                return Deletion::Mark(obj);
            }
            if let Some(meta) = metadata_mut(&mut obj) {
                let at = now
                    .checked_add(jiff::SignedDuration::from_secs(grace))
                    .unwrap_or(now);
                meta.insert(
                    "deletionTimestamp".into(),
                    json!(objects::timestamp_rfc3339(at)),
                );
                meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
            }
            add_propagation_finalizer(&mut obj, options);
            return Deletion::Mark(obj);
        }
    }
    let namespace_finalizers = info.group.is_empty()
        && info.plural == "namespaces"
        && current["spec"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
    add_propagation_finalizer(&mut obj, options);
    if objects::finalizers_of(&obj).is_empty() && !namespace_finalizers {
        if already && is_pod && options.grace_period_seconds == Some(0) {
            return Deletion::Now;
        }
        return Deletion::Now;
    }
    if let Some(meta) = metadata_mut(&mut obj) {
        if !already {
            meta.insert(
                "deletionTimestamp".into(),
                json!(objects::timestamp_rfc3339(now)),
            );
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
        }
    }
    if namespace_finalizers {
        obj["status"]["phase"] = json!("Terminating");
    }
    Deletion::Mark(obj)
}

fn add_propagation_finalizer(obj: &mut Value, options: &DeleteOptions) {
    let finalizer = match options.propagation.as_deref() {
        Some("Foreground") => "foregroundDeletion",
        Some("Orphan") => "orphan",
        _ => return,
    };
    let Some(meta) = metadata_mut(obj) else {
        return;
    };
    let list = meta.entry("finalizers").or_insert_with(|| json!([]));
    if let Some(list) = list.as_array_mut() {
        if !list.iter().any(|f| f == finalizer) {
            list.push(json!(finalizer));
        }
    }
}

/// What DELETE returns when the object is gone: the object for kinds whose REST storage
/// returns it (pods, services, custom resources), a Success status otherwise.
fn deleted_reply(info: &ResourceInfo, deleted: &Value) -> Value {
    if !info.is_builtin()
        || (info.group.is_empty() && matches!(info.plural.as_str(), "pods" | "services"))
    {
        return deleted.clone();
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {
            "name": objects::name_of(deleted),
            "group": info.group,
            "kind": info.plural,
            "uid": meta_str(deleted, "uid").unwrap_or_default(),
        }
    })
}

/// Removes every object of a deleted CRD.
async fn delete_custom_objects(state: &ApiState, crd: &Value) -> Result<(), ApiError> {
    for info in resources_of_crd(crd).into_iter().take(1) {
        let prefix = objects::prefix(&info, None);
        let page = state
            .store
            .range(RangeRequest {
                prefix,
                ..RangeRequest::default()
            })
            .await?;
        for kv in page.kvs {
            match state.store.delete(&kv.key, None).await {
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(err) => return Err(err.into()),
            }
        }
    }
    Ok(())
}

/// DELETE of a collection: every matching object, with the same options.
pub async fn delete_collection(
    state: &ApiState,
    request: &ResourceRequest,
    query: &Query,
    options: &DeleteOptions,
) -> Result<Reply, ApiError> {
    let info = &request.info;
    let filter = Filter::from_query(info, query)?;
    let prefix = objects::prefix(info, request.namespace.as_deref());
    let (items, _, _) = collect(state, info, prefix, None, None, 0, &filter).await?;
    let mut deleted = Vec::new();
    for item in items {
        let one = ResourceRequest {
            info: info.clone(),
            namespace: meta_str(&item, "namespace").map(String::from),
            name: Some(objects::name_of(&item).to_string()),
            subresource: None,
        };
        match delete(state, &one, options).await {
            // The list holds objects: the one as listed when it is gone, as marked when held.
            Ok(reply) if reply.body["kind"] == "Status" => deleted.push(item),
            Ok(reply) => deleted.push(reply.body),
            Err(ApiError::NotFound { .. }) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(Reply::ok(json!({
        "kind": info.list_kind,
        "apiVersion": info.api_version(),
        "metadata": {},
        "items": deleted,
    })))
}

/// POST pods/<name>/binding (or namespaces/<ns>/bindings): assigns a pod to a node.
pub async fn bind(
    state: &ApiState,
    request: &ResourceRequest,
    query: &Query,
    binding: Value,
) -> Result<Reply, ApiError> {
    let name = request
        .name
        .clone()
        .or_else(|| meta_str(&binding, "name").map(String::from))
        .ok_or_else(|| ApiError::bad_request("a binding needs the pod's name"))?;
    let target = binding["target"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "",
                "Binding",
                "bindings",
                &name,
                vec![Cause {
                    reason: "FieldValueRequired".into(),
                    message: "Required value".into(),
                    field: "target.name".into(),
                }],
            )
        })?
        .to_string();
    let pod_request = ResourceRequest {
        info: request.info.clone(),
        namespace: request.namespace.clone(),
        name: Some(name.clone()),
        subresource: None,
    };
    let precondition_uid = meta_str(&binding, "uid").map(String::from);
    update_with(state, &pod_request, query, Part::Binding, |current| {
        if let Some(uid) = &precondition_uid {
            if meta_str(current, "uid") != Some(uid.as_str()) {
                return Err(ApiError::conflict(
                    "",
                    "pods",
                    &name,
                    "the UID in the binding does not match the pod",
                ));
            }
        }
        if current["metadata"].get("deletionTimestamp").is_some() {
            return Err(ApiError::conflict(
                "",
                "pods",
                &name,
                "pod is being deleted, cannot be assigned to a host",
            ));
        }
        if let Some(node) = current["spec"]["nodeName"]
            .as_str()
            .filter(|n| !n.is_empty())
        {
            return Err(ApiError::conflict(
                "",
                "pods",
                &name,
                &format!("pod {name} is already assigned to node \"{node}\""),
            ));
        }
        let mut pod = current.clone();
        pod["spec"]["nodeName"] = json!(target);
        Ok((pod, false))
    })
    .await?;
    // The PodScheduled condition goes through status, as kube-scheduler's binding does. It is
    // set on the pod as it is now: a kubelet may already have reported on the bound pod, and
    // its status must not be replaced by the one from before.
    let status_request = ResourceRequest {
        subresource: Some("status".into()),
        ..pod_request
    };
    update_with(state, &status_request, query, Part::Status, |current| {
        let mut next = current.clone();
        let conditions = current["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if conditions
            .iter()
            .any(|c| c["type"] == "PodScheduled" && c["status"] == "True")
        {
            return Ok((next, false));
        }
        let mut conditions: Vec<Value> = conditions
            .into_iter()
            .filter(|c| c["type"] != "PodScheduled")
            .collect();
        conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": objects::now_rfc3339()}));
        next["status"]["conditions"] = json!(conditions);
        Ok((next, false))
    })
    .await?;
    Ok(Reply {
        code: StatusCode::CREATED,
        body: json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        warnings: Vec::new(),
    })
}

/// Reads a dotted JSON path such as `.spec.replicas`.
fn json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    path.trim_start_matches('.')
        .split('.')
        .filter(|s| !s.is_empty())
        .try_fold(obj, |v, segment| v.get(segment))
}

fn set_json_path(obj: &mut Value, path: &str, value: Value) {
    let segments: Vec<&str> = path
        .trim_start_matches('.')
        .split('.')
        .filter(|s| !s.is_empty())
        .collect();
    let mut cursor = obj;
    for (i, segment) in segments.iter().enumerate() {
        if !cursor.is_object() {
            *cursor = json!({});
        }
        if i == segments.len() - 1 {
            cursor[*segment] = value;
            return;
        }
        cursor = &mut cursor[*segment];
    }
}

/// The Scale object (autoscaling/v1) of a scalable object.
fn scale_of(info: &ResourceInfo, obj: &Value) -> Value {
    let (spec_path, status_path, selector) =
        match info.custom.as_ref().and_then(|c| c.scale.as_ref()) {
            Some(paths) => (
                paths.spec_replicas.clone(),
                paths.status_replicas.clone(),
                paths
                    .label_selector
                    .as_ref()
                    .and_then(|p| json_path(obj, p))
                    .and_then(Value::as_str)
                    .map(String::from),
            ),
            None => (
                ".spec.replicas".to_string(),
                ".status.replicas".to_string(),
                obj["spec"].get("selector").map(selector_string),
            ),
        };
    let mut metadata = Map::new();
    for field in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = obj["metadata"].get(field) {
            metadata.insert(field.into(), v.clone());
        }
    }
    let mut status =
        json!({"replicas": json_path(obj, &status_path).and_then(Value::as_i64).unwrap_or(0)});
    if let Some(selector) = selector.filter(|s| !s.is_empty()) {
        status["selector"] = json!(selector);
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": metadata,
        "spec": {"replicas": json_path(obj, &spec_path).and_then(Value::as_i64).unwrap_or(0)},
        "status": status,
    })
}

/// A metav1.LabelSelector rendered as a selector string, as kube-apiserver prints it.
fn selector_string(selector: &Value) -> String {
    LabelSelector::from_label_selector(selector)
        .map(|s| s.to_string())
        .unwrap_or_default()
}

fn scale_paths(info: &ResourceInfo) -> Result<String, ApiError> {
    if !info.has_subresource("scale") {
        return Err(ApiError::no_such_route());
    }
    Ok(info
        .custom
        .as_ref()
        .and_then(|c| c.scale.as_ref())
        .map(|p| p.spec_replicas.clone())
        .unwrap_or_else(|| ".spec.replicas".into()))
}

/// GET, PUT or PATCH of `/scale`.
pub async fn scale(
    state: &ApiState,
    request: &ResourceRequest,
    query: &Query,
    method: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let info = request.info.clone();
    let spec_path = scale_paths(&info)?;
    let name = name_required(request)?.to_string();
    let main = ResourceRequest {
        subresource: None,
        ..request.clone()
    };
    if method == "GET" {
        let (obj, _) = read(state, &info, request.namespace.as_deref(), &name).await?;
        return Ok(Reply::ok(scale_of(&info, &obj)));
    }
    let reply = update_with(state, &main, query, Part::Main, |current| {
        let scale = scale_of(&info, current);
        let wanted = if method == "PATCH" {
            let patch_type = PatchType::from_content_type(content_type).ok_or_else(|| {
                ApiError::UnsupportedMediaType {
                    message: format!("unsupported patch type {content_type}"),
                }
            })?;
            // Scale is a built-in type for patching purposes.
            let gvk = kube::core::GroupVersionKind::gvk("autoscaling", "v1", "Scale");
            patch::apply_patch(patch_type, &scale, body, &gvk, true).map_err(patch_error)?
        } else {
            serde_json::from_slice::<Value>(body).map_err(|e| {
                ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
            })?
        };
        let replicas = wanted["spec"]["replicas"].as_i64().unwrap_or(0);
        if replicas < 0 {
            return Err(ApiError::invalid(
                "autoscaling",
                "Scale",
                "scale",
                &name,
                vec![Cause {
                    reason: "FieldValueInvalid".into(),
                    message: format!(
                        "Invalid value: {replicas}: must be greater than or equal to 0"
                    ),
                    field: "spec.replicas".into(),
                }],
            ));
        }
        // A PUT names the version it read; a patch starts from the current Scale, so only a
        // resourceVersion the patch itself changed pins it (otherwise a concurrent write, e.g.
        // the controller's status update, is retried rather than returned as a conflict).
        let wanted_rv = wanted["metadata"]["resourceVersion"].as_str().unwrap_or("");
        let current_rv = scale["metadata"]["resourceVersion"].as_str().unwrap_or("");
        let pinned = !wanted_rv.is_empty() && (method != "PATCH" || wanted_rv != current_rv);
        let mut next = current.clone();
        if let Some(rv) = wanted["metadata"]["resourceVersion"].as_str() {
            if let Some(meta) = metadata_mut(&mut next) {
                meta.insert("resourceVersion".into(), json!(rv));
            }
        }
        set_json_path(&mut next, &spec_path, json!(replicas));
        Ok((next, pinned))
    })
    .await?;
    Ok(Reply::ok(scale_of(&info, &reply.body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unappliable_patches_are_422_without_an_object() {
        let err = patch_error(patch::PatchError::Invalid(
            "testing value /spec/replicas failed".into(),
        ));
        let status = err.to_status();
        assert_eq!(
            (status["code"].as_u64(), status["reason"].as_str()),
            (Some(422), Some("Invalid"))
        );
        assert_eq!(
            status["message"],
            "the server rejected our request due to an error in our request"
        );
        assert_eq!(
            status["details"],
            json!({"causes": [{"reason": "UnexpectedServerResponse", "message": "testing value /spec/replicas failed"}]})
        );
    }

    #[test]
    fn qos_classes() {
        let best = json!({"spec": {"containers": [{"name": "a"}]}});
        assert_eq!(qos_class(&best), "BestEffort");
        let guaranteed = json!({"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}});
        assert_eq!(qos_class(&guaranteed), "Guaranteed");
        let burstable = json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "100m"}}}]}});
        assert_eq!(qos_class(&burstable), "Burstable");
    }

    #[test]
    fn selectors_render_like_kubectl() {
        let sel = json!({"matchLabels": {"b": "2", "a": "1"}, "matchExpressions": [{"key": "t", "operator": "In", "values": ["x", "y"]}]});
        assert_eq!(selector_string(&sel), "a=1,b=2,t in (x,y)");
        assert_eq!(
            selector_string(
                &json!({"matchLabels": {"z": "1"}, "matchExpressions": [{"key": "a", "operator": "Exists"}]})
            ),
            "a,z=1"
        );
    }

    #[test]
    fn generated_names_have_a_five_character_suffix() {
        let name = generated_name("web-");
        assert!(name.starts_with("web-") && name.len() == 9);
        assert!(name[4..].bytes().all(|b| NAME_ALPHABET.contains(&b)));
    }

    #[test]
    fn generation_bumps_only_on_spec_changes() {
        let resources = super::super::resources::Resources::new();
        let info = resources
            .find("apps", "v1", "deployments")
            .expect("deployments");
        let old = json!({"metadata": {"name": "a", "uid": "u", "generation": 1}, "spec": {"replicas": 1}, "status": {"replicas": 1}});
        let relabel =
            json!({"metadata": {"name": "a", "labels": {"x": "y"}}, "spec": {"replicas": 1}});
        let next = prepare_update(&info, &old, relabel, Part::Main).expect("ok");
        assert_eq!(next["metadata"]["generation"], 1);
        assert_eq!(
            next["status"]["replicas"], 1,
            "status is kept on the main resource"
        );
        let rescale =
            json!({"metadata": {"name": "a"}, "spec": {"replicas": 3}, "status": {"replicas": 9}});
        let next = prepare_update(&info, &old, rescale, Part::Main).expect("ok");
        assert_eq!(next["metadata"]["generation"], 2);
        assert_eq!(next["status"]["replicas"], 1);
        let status =
            json!({"metadata": {"name": "a"}, "spec": {"replicas": 7}, "status": {"replicas": 5}});
        let next = prepare_update(&info, &old, status, Part::Status).expect("ok");
        assert_eq!(
            (
                next["spec"]["replicas"].as_i64(),
                next["status"]["replicas"].as_i64()
            ),
            (Some(1), Some(5))
        );
    }
}
