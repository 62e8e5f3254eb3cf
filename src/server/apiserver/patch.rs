//! The PATCH engine: JSON patch, JSON merge patch and strategic merge patch applied to stored objects.
//!
//! This module owns the three patch formats `kubectl` sends (`application/json-patch+json`,
//! `application/merge-patch+json`, `application/strategic-merge-patch+json`) as pure functions
//! over [`serde_json::Value`], and the patch metadata (`patchStrategy` / `patchMergeKey`) of the
//! built-in kinds that strategic merge patch needs. It does not decode, default or validate the
//! result: the caller does that as it does for an update.
//!
//! The strategic merge patch follows `k8s.io/apimachinery/pkg/util/strategicpatch` as the API
//! server runs it (`StrategicMergeMapPatch`: parallel lists merged, unmatched nulls ignored):
//! maps merge recursively and `null` deletes a key; lists whose Go field carries
//! `patchStrategy:"merge"` merge by their `patchMergeKey` (or as a set for lists of primitives);
//! every other list, and every map tagged `patchStrategy:"replace"`, is replaced; the directives
//! `$patch: replace|delete` (maps and list elements), `$retainKeys`, `$setElementOrder/<list>`
//! and `$deleteFromPrimitiveList/<list>` are honoured, with the same ordering rules.
//!
//! The field types come from the k8s-openapi schemas (generated with schemars) of the kinds in
//! [`for_each_builtin!`](crate::for_each_builtin); the strategies come from [`PATCH_META`], a table
//! transcribed from the Go struct tags of `k8s.io/api` and `k8s.io/apimachinery`, because
//! k8s-openapi does not carry them.
//!
//! # Guarantees
//! - The result never contains a patch directive key.
//! - Errors keep the HTTP meaning the API server gives them: [`PatchError::Malformed`] (400) for
//!   undecodable patches and the directive format errors kube-apiserver answers with 400,
//!   [`PatchError::Invalid`] (422) for patches that decode but cannot be applied,
//!   [`PatchError::Unsupported`] (415) for strategic merge patch on a kind without Go types.
//!
//! # Caveats
//! - Where a patch adds a map or merge list that the original lacks, the value is merged into an
//!   empty one (so its directives and nulls are resolved) rather than copied raw as Go does;
//!   `$deleteFromPrimitiveList/<list>` on a missing list is a no-op (Go would create the list
//!   from the deletion list).
//! - Merge failures the API server reports as 500 (missing merge key, unknown `$patch` value,
//!   mismatched `$setElementOrder`) are reported as [`PatchError::Invalid`].
//! - Fields of the schemas that are unknown (no schema, or not a built-in type) merge as plain
//!   maps and replace as plain lists, as JSON merge patch would.

use std::collections::HashMap;
use std::sync::OnceLock;

use kube::core::GroupVersionKind;
use serde_json::{Map, Value};

/// The most operations kube-apiserver accepts in one JSON patch (`maxJSONPatchOperations`).
const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

const DIRECTIVE_MARKER: &str = "$patch";
const RETAIN_KEYS_DIRECTIVE: &str = "$retainKeys";
const SET_ELEMENT_ORDER_PREFIX: &str = "$setElementOrder";
const DELETE_FROM_PRIMITIVE_LIST_PREFIX: &str = "$deleteFromPrimitiveList";

/// The patch formats the API server accepts on PATCH (server-side apply is not one of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// RFC 6902 JSON patch, `application/json-patch+json`.
    Json,
    /// RFC 7386 JSON merge patch, `application/merge-patch+json`.
    Merge,
    /// Kubernetes strategic merge patch, `application/strategic-merge-patch+json`.
    StrategicMerge,
}

impl PatchType {
    /// The patch type named by a request's `Content-Type`, parameters and case ignored.
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        let media_type = ct.split(';').next().unwrap_or_default().trim();
        if media_type.eq_ignore_ascii_case("application/json-patch+json") {
            Some(PatchType::Json)
        } else if media_type.eq_ignore_ascii_case("application/merge-patch+json") {
            Some(PatchType::Merge)
        } else if media_type.eq_ignore_ascii_case("application/strategic-merge-patch+json") {
            Some(PatchType::StrategicMerge)
        } else {
            None
        }
    }

    /// The media type of this patch type.
    pub fn content_type(self) -> &'static str {
        match self {
            PatchType::Json => "application/json-patch+json",
            PatchType::Merge => "application/merge-patch+json",
            PatchType::StrategicMerge => "application/strategic-merge-patch+json",
        }
    }
}

/// Why a patch could not be applied. None of these is retryable: the same patch fails again.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The patch cannot be decoded or breaks the directive format (HTTP 400, `BadRequest`).
    #[error("{0}")]
    Malformed(String),
    /// The patch decodes but cannot be applied to this object (HTTP 422, `Invalid`).
    #[error("{0}")]
    Invalid(String),
    /// The patch type is not supported for this kind (HTTP 415, `UnsupportedMediaType`).
    #[error("{0}")]
    Unsupported(String),
}

impl PatchError {
    /// The HTTP status code kube-apiserver answers this error with.
    pub fn status_code(&self) -> u16 {
        match self {
            PatchError::Malformed(_) => 400,
            PatchError::Invalid(_) => 422,
            PatchError::Unsupported(_) => 415,
        }
    }
}

type Result<T, E = PatchError> = std::result::Result<T, E>;

/// Applies `patch` (the request body) of `patch_type` to `original` and returns the new object.
///
/// `gvk` is the kind of the object (it selects the Go types strategic merge patch follows) and
/// `builtin` says whether it is served from compiled-in types; custom resources only accept
/// JSON and merge patches, as in kube-apiserver.
pub fn apply_patch(
    patch_type: PatchType,
    original: &Value,
    patch: &[u8],
    gvk: &GroupVersionKind,
    builtin: bool,
) -> Result<Value> {
    match patch_type {
        PatchType::Json => apply_json_patch(original, patch),
        PatchType::Merge => apply_merge_patch(original, patch),
        PatchType::StrategicMerge => {
            if !builtin {
                return Err(PatchError::Unsupported(format!(
                    "the body of the request was in an unknown format - accepted media types include: \
                     application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml \
                     (strategic merge patch is not supported for {})",
                    gvk_string(gvk)
                )));
            }
            apply_strategic_merge_patch(original, patch, gvk)
        }
    }
}

fn gvk_string(gvk: &GroupVersionKind) -> String {
    if gvk.group.is_empty() {
        format!("{}, Kind={}", gvk.version, gvk.kind)
    } else {
        format!("{}/{}, Kind={}", gvk.group, gvk.version, gvk.kind)
    }
}

fn apply_json_patch(original: &Value, patch: &[u8]) -> Result<Value> {
    let operations: json_patch::Patch = serde_json::from_slice(patch)
        .map_err(|e| PatchError::Malformed(format!("error decoding json patch: {e}")))?;
    if operations.0.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(PatchError::Malformed(format!(
            "the allowed maximum operations in a json patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
            operations.0.len()
        )));
    }
    let mut doc = original.clone();
    json_patch::patch(&mut doc, &operations.0).map_err(|e| PatchError::Invalid(e.to_string()))?;
    require_object(doc)
}

fn apply_merge_patch(original: &Value, patch: &[u8]) -> Result<Value> {
    let patch: Value = serde_json::from_slice(patch)
        .map_err(|e| PatchError::Malformed(format!("error decoding merge patch: {e}")))?;
    if patch.is_null() {
        return Err(PatchError::Malformed(
            "invalid json patch: the patch is null".to_owned(),
        ));
    }
    let mut doc = original.clone();
    json_patch::merge(&mut doc, &patch);
    require_object(doc)
}

/// The patched document must still be an object, or it cannot be decoded as one.
fn require_object(doc: Value) -> Result<Value> {
    if doc.is_object() {
        Ok(doc)
    } else {
        Err(PatchError::Invalid(format!(
            "the patched document is not an object: {doc}"
        )))
    }
}

fn apply_strategic_merge_patch(
    original: &Value,
    patch: &[u8],
    gvk: &GroupVersionKind,
) -> Result<Value> {
    let root = SchemaIndex::get().root(gvk).ok_or_else(|| {
        PatchError::Unsupported(format!(
            "strategic merge patch is not supported for {}: no built-in type",
            gvk_string(gvk)
        ))
    })?;
    let patch: Value = serde_json::from_slice(patch)
        .map_err(|e| PatchError::Malformed(format!("invalid JSON document: {e}")))?;
    let patch = match patch {
        Value::Object(map) => map,
        // Go decodes `null` into an empty map: nothing to do.
        Value::Null => Map::new(),
        other => {
            return Err(PatchError::Malformed(format!(
                "invalid JSON document: a strategic merge patch must be an object, got {other}"
            )))
        }
    };
    let Value::Object(original) = original.clone() else {
        return Err(PatchError::Invalid(
            "the object to patch is not a JSON object".to_owned(),
        ));
    };
    let mut merged = Value::Object(merge_map(original, patch, root)?);
    strip_directives(&mut merged);
    Ok(merged)
}

// ---------------------------------------------------------------------------------------------
// Patch metadata
// ---------------------------------------------------------------------------------------------

/// `(schema type, JSON field, patchStrategy, patchMergeKey)` for every field of the built-in
/// kinds' types whose Go struct tag carries a `patchStrategy`, transcribed from
/// `k8s.io/api/*/v1/types.go` and `k8s.io/apimachinery/pkg/apis/meta/v1/types.go`.
///
/// Fields absent here have no strategy: maps merge, lists are replaced. Among the lists that
/// look mergeable but are *not* tagged (and so are replaced): `PodSpec.tolerations`,
/// `PodSpec.readinessGates`, `Container.envFrom`, `Container.resizePolicy`, `NodeSpec.taints`,
/// `Endpoints.subsets`, `EndpointSlice.endpoints`, `ObjectMeta.managedFields`,
/// `LabelSelector.matchExpressions`, `StatefulSetSpec.volumeClaimTemplates`, every list of RBAC,
/// networking and CustomResourceDefinition (including its `status.conditions`).
pub const PATCH_META: &[(&str, &str, &str, &str)] = &[
    // k8s.io/apimachinery/pkg/apis/meta/v1
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        "merge",
        "uid",
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        "merge",
        "",
    ),
    // k8s.io/api/core/v1
    (
        "io.k8s.api.core.v1.Container",
        "ports",
        "merge",
        "containerPort",
    ),
    ("io.k8s.api.core.v1.Container", "env", "merge", "name"),
    (
        "io.k8s.api.core.v1.Container",
        "volumeMounts",
        "merge",
        "mountPath",
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeDevices",
        "merge",
        "devicePath",
    ),
    // EphemeralContainer inlines EphemeralContainerCommon, whose tags are the Container ones.
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "ports",
        "merge",
        "containerPort",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "env",
        "merge",
        "name",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeMounts",
        "merge",
        "mountPath",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeDevices",
        "merge",
        "devicePath",
    ),
    (
        "io.k8s.api.core.v1.ContainerStatus",
        "volumeMounts",
        "merge",
        "mountPath",
    ),
    (
        "io.k8s.api.core.v1.ContainerStatus",
        "allocatedResourcesStatus",
        "merge",
        "name",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "volumes",
        "merge,retainKeys",
        "name",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "initContainers",
        "merge",
        "name",
    ),
    ("io.k8s.api.core.v1.PodSpec", "containers", "merge", "name"),
    (
        "io.k8s.api.core.v1.PodSpec",
        "ephemeralContainers",
        "merge",
        "name",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "imagePullSecrets",
        "merge",
        "name",
    ),
    ("io.k8s.api.core.v1.PodSpec", "hostAliases", "merge", "ip"),
    (
        "io.k8s.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        "merge",
        "topologyKey",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "schedulingGates",
        "merge",
        "name",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "resourceClaims",
        "merge,retainKeys",
        "name",
    ),
    (
        "io.k8s.api.core.v1.PodStatus",
        "conditions",
        "merge",
        "type",
    ),
    ("io.k8s.api.core.v1.PodStatus", "hostIPs", "merge", "ip"),
    ("io.k8s.api.core.v1.PodStatus", "podIPs", "merge", "ip"),
    (
        "io.k8s.api.core.v1.PodStatus",
        "resourceClaimStatuses",
        "merge,retainKeys",
        "name",
    ),
    (
        "io.k8s.api.core.v1.PersistentVolumeClaimStatus",
        "conditions",
        "merge",
        "type",
    ),
    (
        "io.k8s.api.core.v1.ReplicationControllerStatus",
        "conditions",
        "merge",
        "type",
    ),
    ("io.k8s.api.core.v1.ServiceSpec", "ports", "merge", "port"),
    (
        "io.k8s.api.core.v1.ServiceStatus",
        "conditions",
        "merge",
        "type",
    ),
    (
        "io.k8s.api.core.v1.ServiceAccount",
        "secrets",
        "merge",
        "name",
    ),
    ("io.k8s.api.core.v1.NodeSpec", "podCIDRs", "merge", ""),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "conditions",
        "merge",
        "type",
    ),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "addresses",
        "merge",
        "type",
    ),
    (
        "io.k8s.api.core.v1.NamespaceStatus",
        "conditions",
        "merge",
        "type",
    ),
    (
        "io.k8s.api.core.v1.ComponentStatus",
        "conditions",
        "merge",
        "type",
    ),
    // k8s.io/api/apps/v1
    (
        "io.k8s.api.apps.v1.DeploymentSpec",
        "strategy",
        "retainKeys",
        "",
    ),
    (
        "io.k8s.api.apps.v1.DeploymentStatus",
        "conditions",
        "merge",
        "type",
    ),
    (
        "io.k8s.api.apps.v1.ReplicaSetStatus",
        "conditions",
        "merge",
        "type",
    ),
    (
        "io.k8s.api.apps.v1.DaemonSetStatus",
        "conditions",
        "merge",
        "type",
    ),
    (
        "io.k8s.api.apps.v1.StatefulSetStatus",
        "conditions",
        "merge",
        "type",
    ),
    // k8s.io/api/batch/v1
    (
        "io.k8s.api.batch.v1.JobStatus",
        "conditions",
        "merge",
        "type",
    ),
    // k8s.io/api/networking/v1
    (
        "io.k8s.api.networking.v1.ServiceCIDRStatus",
        "conditions",
        "merge",
        "type",
    ),
    // k8s.io/api/policy/v1
    (
        "io.k8s.api.policy.v1.PodDisruptionBudgetSpec",
        "selector",
        "replace",
        "",
    ),
    (
        "io.k8s.api.policy.v1.PodDisruptionBudgetStatus",
        "conditions",
        "merge",
        "type",
    ),
    // k8s.io/api/storage/v1
    (
        "io.k8s.api.storage.v1.CSINodeSpec",
        "drivers",
        "merge",
        "name",
    ),
];

/// What the server does with a field when both the original and the patch hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    /// Maps merge key by key; lists are replaced.
    Default,
    /// Lists merge by merge key (maps) or as sets (primitives).
    Merge,
    /// Maps are replaced whole.
    Replace,
}

/// The server-side meaning of a Go `patchStrategy` tag; `retainKeys` only matters to the client
/// that builds the `$retainKeys` directive, which the server honours wherever it appears.
fn parse_strategy(tag: &str) -> Strategy {
    let mut strategy = Strategy::Default;
    for part in tag.split(',') {
        match part {
            "merge" => strategy = Strategy::Merge,
            "replace" => strategy = Strategy::Replace,
            _ => {}
        }
    }
    strategy
}

/// Definitions of the schemas of every built-in kind, and the root schema of each kind.
struct SchemaIndex {
    definitions: Map<String, Value>,
    roots: HashMap<(String, String, String), Value>,
    meta: HashMap<(&'static str, &'static str), (Strategy, Option<&'static str>)>,
}

impl SchemaIndex {
    fn get() -> &'static SchemaIndex {
        static INDEX: OnceLock<SchemaIndex> = OnceLock::new();
        INDEX.get_or_init(SchemaIndex::build)
    }

    fn build() -> SchemaIndex {
        let mut generator = schemars::generate::SchemaSettings::draft07().into_generator();
        let mut roots = HashMap::new();
        macro_rules! add_kind {
            ($ty:ty, [$($short:literal),*], [$($category:literal),*], [$($sub:literal),*]) => {
                add_kind!($ty);
            };
            ($ty:ty) => {{
                let root = generator.subschema_for::<$ty>();
                roots.insert(
                    (
                        <$ty as k8s_openapi::Resource>::GROUP.to_owned(),
                        <$ty as k8s_openapi::Resource>::VERSION.to_owned(),
                        <$ty as k8s_openapi::Resource>::KIND.to_owned(),
                    ),
                    root.to_value(),
                );
            }};
        }
        crate::for_each_builtin!(add_kind);
        // The scale subresource is patched as autoscaling/v1 Scale.
        add_kind!(k8s_openapi::api::autoscaling::v1::Scale);
        let definitions = generator.take_definitions(true);
        let meta = PATCH_META
            .iter()
            .map(|&(ty, field, strategy, key)| {
                (
                    (ty, field),
                    (parse_strategy(strategy), (!key.is_empty()).then_some(key)),
                )
            })
            .collect();
        SchemaIndex {
            definitions,
            roots,
            meta,
        }
    }

    fn root(&'static self, gvk: &GroupVersionKind) -> Option<Ty> {
        let key = (gvk.group.clone(), gvk.version.clone(), gvk.kind.clone());
        self.roots.get(&key).map(|schema| self.resolve(schema))
    }

    /// The type a schema stands for, following a `$ref` into the definitions.
    fn resolve(&'static self, schema: &'static Value) -> Ty {
        let Some(object) = schema.as_object() else {
            return Ty::UNKNOWN;
        };
        if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
            let name = reference.rsplit('/').next().unwrap_or(reference);
            return match self.definitions.get(name) {
                Some(definition) => Ty {
                    name: Some(name),
                    schema: definition.as_object(),
                },
                None => Ty {
                    name: Some(name),
                    schema: None,
                },
            };
        }
        // draft-07 cannot put siblings next to `$ref`, so a described reference is `allOf: [$ref]`.
        if let Some([only]) = object
            .get("allOf")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
        {
            return self.resolve(only);
        }
        Ty {
            name: None,
            schema: Some(object),
        }
    }
}

/// A position in the schema: the named type (for the metadata table) and its schema.
#[derive(Debug, Clone, Copy)]
struct Ty {
    name: Option<&'static str>,
    schema: Option<&'static Map<String, Value>>,
}

/// The patch metadata of one field, and the type of its values (of its elements, for a list).
#[derive(Debug, Clone, Copy)]
struct Field {
    strategy: Strategy,
    merge_key: Option<&'static str>,
    ty: Ty,
}

impl Ty {
    const UNKNOWN: Ty = Ty {
        name: None,
        schema: None,
    };

    fn field(self, key: &str) -> Field {
        let index = SchemaIndex::get();
        let (strategy, merge_key) = self
            .name
            .and_then(|name| index.meta.get(&(name, key)).copied())
            .unwrap_or((Strategy::Default, None));
        let ty = self
            .schema
            .and_then(|schema| {
                schema
                    .get("properties")
                    .and_then(|properties| properties.get(key))
                    .or_else(|| schema.get("additionalProperties").filter(|v| v.is_object()))
            })
            .map(|field_schema| {
                let is_array = field_schema.get("type").and_then(Value::as_str) == Some("array");
                match field_schema.get("items") {
                    Some(items) if is_array => index.resolve(items),
                    _ => index.resolve(field_schema),
                }
            })
            .unwrap_or(Ty::UNKNOWN);
        Field {
            strategy,
            merge_key,
            ty,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Strategic merge
// ---------------------------------------------------------------------------------------------

fn is_directive_key(key: &str) -> bool {
    key == DIRECTIVE_MARKER
        || key == RETAIN_KEYS_DIRECTIVE
        || key.starts_with("$setElementOrder/")
        || key.starts_with("$deleteFromPrimitiveList/")
}

/// Removes directive keys left in values the patch set whole (replaced maps and lists).
fn strip_directives(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|key, _| !is_directive_key(key));
            map.values_mut().for_each(strip_directives);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

/// `prefix/key` → `key`, with the error kube-apiserver gives for a malformed directive key.
fn directive_field<'k>(key: &'k str, prefix: &str) -> Result<&'k str> {
    match key.split_once('/') {
        Some((head, field)) if head == prefix => Ok(field),
        _ if prefix == DELETE_FROM_PRIMITIVE_LIST_PREFIX => Err(PatchError::Malformed(
            "invalid patch format of primitive list".to_owned(),
        )),
        _ => Err(PatchError::Malformed(
            "invalid patch format of setElementOrder list".to_owned(),
        )),
    }
}

fn no_merge_key(item: &Value, merge_key: &str) -> PatchError {
    PatchError::Invalid(format!(
        "map: {item} does not contain declared merge key: {merge_key}"
    ))
}

fn bad_arg_type(expected: &str, got: &Value) -> PatchError {
    PatchError::Invalid(format!("expected a {expected}, but received {got}"))
}

/// Merges `patch` into `original` (Go `mergeMap`).
fn merge_map(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    ty: Ty,
) -> Result<Map<String, Value>> {
    if let Some(directive) = patch.get(DIRECTIVE_MARKER) {
        return match directive.as_str() {
            Some("replace") => {
                patch.remove(DIRECTIVE_MARKER);
                Ok(patch)
            }
            Some("delete") => Ok(Map::new()),
            _ => Err(PatchError::Invalid(format!(
                "unknown patch type: {directive} in map: {}",
                Value::Object(patch.clone())
            ))),
        };
    }
    apply_retain_keys(&mut original, &mut patch)?;
    merge_set_element_order(&mut original, &mut patch, ty)?;

    for (key, patch_value) in patch {
        let (key, is_delete_list) = if key.starts_with(DELETE_FROM_PRIMITIVE_LIST_PREFIX) {
            (
                directive_field(&key, DELETE_FROM_PRIMITIVE_LIST_PREFIX)?.to_owned(),
                true,
            )
        } else {
            (key, false)
        };
        if patch_value.is_null() {
            original.remove(&key);
            continue;
        }
        let field = ty.field(&key);
        let Some(original_value) = original.get_mut(&key) else {
            if !is_delete_list {
                let value = merge_into_absent(patch_value, field)?;
                original.insert(key, value);
            }
            continue;
        };
        let merged = match (original_value.take(), patch_value) {
            (Value::Object(original_map), Value::Object(patch_map)) => {
                if field.strategy == Strategy::Replace {
                    Value::Object(patch_map)
                } else {
                    Value::Object(merge_map(original_map, patch_map, field.ty)?)
                }
            }
            (Value::Array(original_list), Value::Array(patch_list)) => {
                if field.strategy == Strategy::Merge {
                    Value::Array(merge_list(
                        original_list,
                        patch_list,
                        field,
                        is_delete_list,
                    )?)
                } else {
                    Value::Array(patch_list)
                }
            }
            (_, patch_value) => patch_value,
        };
        *original_value = merged;
    }
    Ok(original)
}

/// The value a patch sets on a key the original lacks: merged into an empty map or list so that
/// its own directives and nulls are resolved.
fn merge_into_absent(patch_value: Value, field: Field) -> Result<Value> {
    Ok(match patch_value {
        Value::Object(patch_map) if field.strategy != Strategy::Replace => {
            Value::Object(merge_map(Map::new(), patch_map, field.ty)?)
        }
        Value::Array(patch_list)
            if field.strategy == Strategy::Merge && patch_list.iter().any(Value::is_object) =>
        {
            Value::Array(merge_list(Vec::new(), patch_list, field, false)?)
        }
        other => other,
    })
}

/// Applies a `$retainKeys` directive: clears keys of `original` missing from the list, after
/// checking that every key the patch sets is in it.
fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
) -> Result<()> {
    let Some(retain) = patch.remove(RETAIN_KEYS_DIRECTIVE) else {
        return Ok(());
    };
    let Value::Array(retain) = retain else {
        return Err(PatchError::Malformed(
            "invalid patch format of retainKeys".to_owned(),
        ));
    };
    let retained = |key: &str| retain.iter().any(|k| k.as_str() == Some(key));
    for (key, value) in patch.iter() {
        if value.is_null()
            || key.starts_with(DELETE_FROM_PRIMITIVE_LIST_PREFIX)
            || key.starts_with(SET_ELEMENT_ORDER_PREFIX)
        {
            continue;
        }
        if !retained(key) {
            return Err(PatchError::Malformed(format!(
                "invalid patch format of retainKeys: {key:?} is set but not retained"
            )));
        }
    }
    original.retain(|key, _| retained(key));
    Ok(())
}

/// Processes every `$setElementOrder/<list>` of `patch` together with `<list>` (Go
/// `mergePatchIntoOriginal`): merges the list, then orders it by the directive, then by the
/// patch, then by the original. Both keys are removed from `patch`.
fn merge_set_element_order(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    ty: Ty,
) -> Result<()> {
    let keys: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with(SET_ELEMENT_ORDER_PREFIX))
        .cloned()
        .collect();
    for key in keys {
        let Some(order) = patch.remove(&key) else {
            continue;
        };
        let Value::Array(order) = order else {
            return Err(bad_arg_type("list for $setElementOrder", &order));
        };
        let list_key = directive_field(&key, SET_ELEMENT_ORDER_PREFIX)?.to_owned();
        let original_list = match original.get(&list_key) {
            Some(Value::Array(list)) => Some(list.clone()),
            None | Some(Value::Null) => None,
            Some(other) => return Err(bad_arg_type("list", other)),
        };
        let patch_list = match patch.remove(&list_key) {
            Some(Value::Array(list)) => Some(list),
            None => None,
            Some(other) => return Err(bad_arg_type("list", &other)),
        };
        let field = ty.field(&list_key);
        let merge_key = field.merge_key;
        validate_patch_with_set_order(
            patch_list.as_deref().unwrap_or_default(),
            &order,
            merge_key,
        )?;

        let kind = element_kind(&[
            original_list.as_deref().unwrap_or_default(),
            patch_list.as_deref().unwrap_or_default(),
        ])?;
        let merged = match (original_list.clone(), patch_list) {
            (Some(original_list), None) => original_list,
            (None, Some(patch_list)) => match merge_into_absent(Value::Array(patch_list), field)? {
                Value::Array(list) => list,
                other => vec![other],
            },
            (Some(original_list), Some(patch_list)) => {
                if field.strategy == Strategy::Merge {
                    merge_list(original_list, patch_list, field, false)?
                } else {
                    patch_list
                }
            }
            (None, None) => continue,
        };
        let (patch_items, server_only) = match merge_key {
            Some(merge_key) => partition_maps(merged, &order, merge_key)?,
            None => partition_primitives(merged, &order),
        };
        let by_key = if kind == Some(Kind::List) {
            return Err(no_list_of_lists());
        } else if kind == Some(Kind::Map) || kind.is_none() {
            merge_key
        } else {
            None
        };
        let ordered = normalize_element_order(
            patch_items,
            server_only,
            &order,
            original_list.as_deref().unwrap_or_default(),
            by_key,
        )?;
        original.insert(list_key, Value::Array(ordered));
    }
    Ok(())
}

/// Checks that the items of the patch list appear in the `$setElementOrder` list, in its order.
fn validate_patch_with_set_order(
    patch_list: &[Value],
    order: &[Value],
    merge_key: Option<&str>,
) -> Result<()> {
    if order.is_empty() || patch_list.is_empty() {
        return Ok(());
    }
    let non_delete: Vec<&Value> = match merge_key {
        Some(_) => {
            let mut kept = Vec::with_capacity(patch_list.len());
            for item in patch_list {
                let Some(map) = item.as_object() else {
                    return Err(bad_arg_type("map", item));
                };
                if map.get(DIRECTIVE_MARKER).and_then(Value::as_str) != Some("delete") {
                    kept.push(item);
                }
            }
            kept
        }
        None => patch_list.iter().collect(),
    };
    let (mut patch_index, mut order_index) = (0, 0);
    while patch_index < non_delete.len() && order_index < order.len() {
        let item = non_delete[patch_index];
        if item.get(DIRECTIVE_MARKER).is_some() {
            patch_index += 1;
            continue;
        }
        if merge_key_value_equal(item, &order[order_index], merge_key)? {
            patch_index += 1;
        }
        order_index += 1;
    }
    if patch_index < non_delete.len() {
        return Err(PatchError::Invalid(format!(
            "the order in patch list {} doesn't match $setElementOrder list {}",
            Value::Array(patch_list.to_vec()),
            Value::Array(order.to_vec())
        )));
    }
    Ok(())
}

fn merge_key_value_equal(left: &Value, right: &Value, merge_key: Option<&str>) -> Result<bool> {
    let Some(merge_key) = merge_key else {
        return Ok(left == right);
    };
    let left_value = left.as_object().ok_or_else(|| bad_arg_type("map", left))?;
    let right_value = right
        .as_object()
        .ok_or_else(|| bad_arg_type("map", right))?;
    let left_key = left_value
        .get(merge_key)
        .ok_or_else(|| no_merge_key(left, merge_key))?;
    let right_key = right_value
        .get(merge_key)
        .ok_or_else(|| no_merge_key(right, merge_key))?;
    Ok(left_key == right_key)
}

/// The JSON type of list elements, as Go's decoded types tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    Bool,
    Int,
    Float,
    String,
    Map,
    List,
}

fn kind_of(value: &Value) -> Kind {
    match value {
        Value::Null => Kind::Null,
        Value::Bool(_) => Kind::Bool,
        Value::Number(n) if n.is_i64() || n.is_u64() => Kind::Int,
        Value::Number(_) => Kind::Float,
        Value::String(_) => Kind::String,
        Value::Array(_) => Kind::List,
        Value::Object(_) => Kind::Map,
    }
}

fn no_list_of_lists() -> PatchError {
    PatchError::Invalid("lists of lists are not supported".to_owned())
}

/// The common kind of the elements of `lists`, `None` when they are all empty.
fn element_kind(lists: &[&[Value]]) -> Result<Option<Kind>> {
    let mut kind = None;
    for value in lists.iter().flat_map(|list| list.iter()) {
        let this = kind_of(value);
        match kind {
            None if this == Kind::List => return Err(no_list_of_lists()),
            None => kind = Some(this),
            Some(previous) if previous != this => {
                return Err(PatchError::Invalid(format!(
                    "list element types are not identical: {}",
                    lists
                        .iter()
                        .map(|l| Value::Array(l.to_vec()).to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                )))
            }
            Some(_) => {}
        }
    }
    Ok(kind)
}

/// Merges two lists of a `patchStrategy:"merge"` field (Go `mergeSlice`).
fn merge_list(
    original: Vec<Value>,
    patch: Vec<Value>,
    field: Field,
    is_delete_list: bool,
) -> Result<Vec<Value>> {
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    match element_kind(&[&original, &patch])? {
        Some(Kind::Map) => {}
        _ => {
            if is_delete_list {
                return Ok(original
                    .into_iter()
                    .filter(|item| !patch.contains(item))
                    .collect());
            }
            let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
            for item in original.iter().chain(patch.iter()) {
                if !merged.contains(item) {
                    merged.push(item.clone());
                }
            }
            let (patch_items, server_only) = partition_primitives(merged, &patch);
            return normalize_element_order(patch_items, server_only, &patch, &original, None);
        }
    }
    let merge_key = field.merge_key.ok_or_else(|| {
        PatchError::Invalid("cannot merge lists without merge key for type map".to_owned())
    })?;

    // Elements carrying `$patch` act on the original list and are not merged themselves.
    let mut original = original;
    let mut plain = Vec::with_capacity(patch.len());
    let mut replace = false;
    for item in patch {
        let Some(directive) = item.get(DIRECTIVE_MARKER) else {
            plain.push(item);
            continue;
        };
        match directive.as_str() {
            Some("delete") => {
                let value = item
                    .get(merge_key)
                    .ok_or_else(|| no_merge_key(&item, merge_key))?;
                original.retain(|o| o.get(merge_key) != Some(value));
            }
            Some("replace") => replace = true,
            Some("merge") => {
                return Err(PatchError::Invalid(
                    "merging lists cannot yet be specified in the patch".to_owned(),
                ))
            }
            _ => {
                return Err(PatchError::Invalid(format!(
                    "unknown patch type: {directive} in map: {item}"
                )))
            }
        }
    }
    let (original, patch) = if replace {
        (plain, Vec::new())
    } else {
        (original, plain)
    };

    let mut merged = original.clone();
    for item in &patch {
        let value = item
            .get(merge_key)
            .ok_or_else(|| no_merge_key(item, merge_key))?;
        let position = merged.iter().position(|o| o.get(merge_key) == Some(value));
        match (position, item) {
            (Some(position), Value::Object(patch_map)) => {
                let Value::Object(original_map) = merged[position].take() else {
                    return Err(bad_arg_type("map", &merged[position]));
                };
                merged[position] =
                    Value::Object(merge_map(original_map, patch_map.clone(), field.ty)?);
            }
            (None, Value::Object(patch_map)) => {
                merged.push(Value::Object(merge_map(
                    Map::new(),
                    patch_map.clone(),
                    field.ty,
                )?));
            }
            (_, other) => return Err(bad_arg_type("map", other)),
        }
    }
    let (patch_items, server_only) = partition_maps(merged, &patch, merge_key)?;
    normalize_element_order(patch_items, server_only, &patch, &original, Some(merge_key))
}

/// Splits `merged` into the items present in `by` and the others.
fn partition_primitives(merged: Vec<Value>, by: &[Value]) -> (Vec<Value>, Vec<Value>) {
    merged.into_iter().partition(|item| by.contains(item))
}

/// Splits `merged` into the maps whose merge key value appears in `by` and the others.
fn partition_maps(
    merged: Vec<Value>,
    by: &[Value],
    merge_key: &str,
) -> Result<(Vec<Value>, Vec<Value>)> {
    let (mut in_by, mut others) = (Vec::new(), Vec::new());
    for item in merged {
        if !item.is_object() {
            return Err(bad_arg_type("map", &item));
        }
        let value = item
            .get(merge_key)
            .ok_or_else(|| no_merge_key(&item, merge_key))?;
        let mut found = false;
        for candidate in by {
            if !candidate.is_object() {
                return Err(bad_arg_type("map", candidate));
            }
            if candidate.get(merge_key) == Some(value) {
                found = true;
                break;
            }
        }
        if found {
            in_by.push(item);
        } else {
            others.push(item);
        }
    }
    Ok((in_by, others))
}

/// Position of `item` in `list`, comparing merge key values for maps and whole values otherwise.
fn index_of(list: &[Value], item: &Value, merge_key: Option<&str>) -> Option<usize> {
    match merge_key {
        Some(merge_key) => {
            let key_of = |v: &Value| v.get(merge_key).cloned().unwrap_or(Value::Null);
            let wanted = key_of(item);
            list.iter().position(|v| key_of(v) == wanted)
        }
        None => list.iter().position(|v| v == item),
    }
}

/// Sorts `to_sort` by position in `order` (stable); `$patch: delete` maps go last.
fn normalize_list_order(
    to_sort: Vec<Value>,
    order: &[Value],
    merge_key: Option<&str>,
) -> Result<Vec<Value>> {
    let mut to_sort = to_sort;
    let mut to_delete = Vec::new();
    if let Some(merge_key) = merge_key {
        for item in to_sort.iter().chain(order.iter()) {
            if !item.is_object() {
                return Err(bad_arg_type("map", item));
            }
            if item.get(merge_key).is_none() {
                return Err(no_merge_key(item, merge_key));
            }
        }
        let (deletes, kept): (Vec<Value>, Vec<Value>) = to_sort
            .into_iter()
            .partition(|item| item.get(DIRECTIVE_MARKER).and_then(Value::as_str) == Some("delete"));
        to_sort = kept;
        to_delete = deletes;
    }
    to_sort.sort_by_key(|item| index_of(order, item, merge_key).unwrap_or(usize::MAX));
    to_sort.extend(to_delete);
    Ok(to_sort)
}

/// Orders the patch items by `patch_order` and the server-only items by `server_order`, then
/// interleaves them (Go `normalizeElementOrder` and `mergeSortedSlice`): a server-only item goes
/// before a patch item only when both are in the original and it came first there.
fn normalize_element_order(
    patch_items: Vec<Value>,
    server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    merge_key: Option<&str>,
) -> Result<Vec<Value>> {
    let patch_items = normalize_list_order(patch_items, patch_order, merge_key)?;
    let server_only = normalize_list_order(server_only, server_order, merge_key)?;
    let mut result = Vec::with_capacity(patch_items.len() + server_only.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = patch_items.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => matches!(
                (index_of(server_order, l, merge_key), index_of(server_order, r, merge_key)),
                (Some(li), Some(ri)) if li < ri
            ),
        };
        let next = if take_left { left.next() } else { right.next() };
        result.extend(next);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gvk(group: &str, version: &str, kind: &str) -> GroupVersionKind {
        GroupVersionKind {
            group: group.to_owned(),
            version: version.to_owned(),
            kind: kind.to_owned(),
        }
    }

    fn pod_gvk() -> GroupVersionKind {
        gvk("", "v1", "Pod")
    }

    fn deployment_gvk() -> GroupVersionKind {
        gvk("apps", "v1", "Deployment")
    }

    fn smp(original: Value, patch: Value, gvk: &GroupVersionKind) -> Result<Value> {
        apply_patch(
            PatchType::StrategicMerge,
            &original,
            patch.to_string().as_bytes(),
            gvk,
            true,
        )
    }

    fn smp_ok(original: Value, patch: Value, gvk: &GroupVersionKind) -> Value {
        match smp(original, patch, gvk) {
            Ok(v) => v,
            Err(e) => panic!("patch failed: {e}"),
        }
    }

    fn pod(containers: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": containers}})
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/json-patch+json"),
            Some(PatchType::Json)
        );
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchType::Merge)
        );
        assert_eq!(
            PatchType::from_content_type("Application/Strategic-Merge-Patch+JSON"),
            Some(PatchType::StrategicMerge)
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml"),
            None
        );
        assert_eq!(PatchType::from_content_type("application/json"), None);
    }

    #[test]
    fn metadata_table_names_real_list_fields() {
        // Every table entry must name a field of the schema of its type, and merge entries must
        // be lists. Kinds we do not serve are generated here to check their entries too.
        let mut generator = schemars::generate::SchemaSettings::draft07().into_generator();
        generator.subschema_for::<k8s_openapi::api::core::v1::ComponentStatus>();
        generator.subschema_for::<k8s_openapi::api::core::v1::ReplicationController>();
        generator.subschema_for::<k8s_openapi::api::networking::v1::ServiceCIDR>();
        generator.subschema_for::<k8s_openapi::api::storage::v1::CSINode>();
        let mut definitions = generator.take_definitions(true);
        definitions.extend(SchemaIndex::get().definitions.clone());
        for &(ty, field, strategy, merge_key) in PATCH_META {
            let schema = definitions
                .get(ty)
                .unwrap_or_else(|| panic!("no schema for {ty}"));
            let field_schema = schema
                .get("properties")
                .and_then(|p| p.get(field))
                .unwrap_or_else(|| panic!("{ty} has no field {field}"));
            if strategy.starts_with("merge") {
                assert_eq!(
                    field_schema.get("type"),
                    Some(&json!("array")),
                    "{ty}.{field} is not a list"
                );
                let items = &field_schema["items"];
                if merge_key.is_empty() {
                    assert_eq!(
                        items.get("type"),
                        Some(&json!("string")),
                        "{ty}.{field} is not a primitive list"
                    );
                } else {
                    let item_ty = SchemaIndex::get().resolve(Box::leak(Box::new(items.clone())));
                    let item_schema = item_ty
                        .schema
                        .or_else(|| {
                            item_ty
                                .name
                                .and_then(|n| definitions.get(n))
                                .and_then(Value::as_object)
                        })
                        .unwrap_or_else(|| panic!("{ty}.{field} has no element schema"));
                    assert!(
                        item_schema
                            .get("properties")
                            .and_then(|p| p.get(merge_key))
                            .is_some(),
                        "{ty}.{field} elements have no {merge_key}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_builtin_kind_has_a_schema() {
        let index = SchemaIndex::get();
        for (group, version, kind) in index.roots.keys() {
            let ty = index
                .root(&gvk(group, version, kind))
                .unwrap_or(Ty::UNKNOWN);
            assert!(
                ty.schema.is_some(),
                "{group}/{version} {kind} has no schema"
            );
        }
        let spec = index
            .root(&deployment_gvk())
            .map(|t| t.field("spec").ty.field("template").ty.field("spec").ty);
        assert_eq!(
            spec.and_then(|t| t.name),
            Some("io.k8s.api.core.v1.PodSpec")
        );
    }

    #[test]
    fn container_image_change_by_name() {
        let original = pod(json!([
            {"name": "a", "image": "a:1"},
            {"name": "b", "image": "b:1", "args": ["x"]}
        ]));
        let patched = smp_ok(
            original,
            json!({"spec": {"containers": [{"name": "b", "image": "b:2"}]}}),
            &pod_gvk(),
        );
        assert_eq!(
            patched["spec"]["containers"],
            json!([{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:2", "args": ["x"]}])
        );
    }

    #[test]
    fn adding_env_merges_by_name() {
        let original =
            pod(json!([{"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]}]));
        let patch = json!({"spec": {"containers": [{"name": "a", "env": [
            {"name": "Y", "value": "2"}, {"name": "X", "value": "3"}
        ]}]}});
        let patched = smp_ok(original, patch, &pod_gvk());
        assert_eq!(
            patched["spec"]["containers"][0]["env"],
            json!([{"name": "Y", "value": "2"}, {"name": "X", "value": "3"}])
        );
        assert_eq!(patched["spec"]["containers"][0]["image"], "a:1");
    }

    #[test]
    fn new_items_without_order_directive_go_first() {
        // mergeSortedSlice: an item only in the patch is placed before the server-only items.
        let original =
            pod(json!([{"name": "a", "image": "a", "env": [{"name": "X", "value": "1"}]}]));
        let patch =
            json!({"spec": {"containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}]}]}});
        let patched = smp_ok(original, patch, &pod_gvk());
        assert_eq!(
            patched["spec"]["containers"][0]["env"],
            json!([{"name": "Y", "value": "2"}, {"name": "X", "value": "1"}])
        );
    }

    #[test]
    fn delete_container_with_patch_delete() {
        let original = pod(json!([{"name": "a", "image": "a"}, {"name": "b", "image": "b"}]));
        let patch = json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}});
        let patched = smp_ok(original, patch, &pod_gvk());
        assert_eq!(
            patched["spec"]["containers"],
            json!([{"name": "b", "image": "b"}])
        );
    }

    #[test]
    fn delete_removes_every_duplicate() {
        let original = pod(json!([{"name": "a"}, {"name": "a"}, {"name": "b", "image": "b"}]));
        let patch = json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}});
        let patched = smp_ok(original, patch, &pod_gvk());
        assert_eq!(
            patched["spec"]["containers"],
            json!([{"name": "b", "image": "b"}])
        );
    }

    #[test]
    fn replace_directive_in_list_replaces_it() {
        let original = pod(json!([{"name": "a", "image": "a"}, {"name": "b", "image": "b"}]));
        let patch =
            json!({"spec": {"containers": [{"name": "c", "image": "c"}, {"$patch": "replace"}]}});
        let patched = smp_ok(original, patch, &pod_gvk());
        assert_eq!(
            patched["spec"]["containers"],
            json!([{"name": "c", "image": "c"}])
        );

        let emptied = smp_ok(
            pod(json!([{"name": "a"}])),
            json!({"spec": {"containers": [{"$patch": "replace"}]}}),
            &pod_gvk(),
        );
        assert_eq!(emptied["spec"]["containers"], json!([]));
    }

    #[test]
    fn replace_and_delete_directives_in_maps() {
        let original = json!({"metadata": {"name": "p", "labels": {"a": "1", "b": "2"}}});
        let replaced = smp_ok(
            original.clone(),
            json!({"metadata": {"labels": {"c": "3", "$patch": "replace"}}}),
            &pod_gvk(),
        );
        assert_eq!(replaced["metadata"]["labels"], json!({"c": "3"}));
        let deleted = smp_ok(
            original,
            json!({"metadata": {"labels": {"$patch": "delete"}}}),
            &pod_gvk(),
        );
        assert_eq!(deleted["metadata"]["labels"], json!({}));
    }

    #[test]
    fn unknown_directive_is_invalid() {
        let err = smp(
            pod(json!([])),
            json!({"spec": {"$patch": "bogus"}}),
            &pod_gvk(),
        );
        assert!(matches!(err, Err(PatchError::Invalid(_))), "{err:?}");
        let err = smp(
            pod(json!([{"name": "a"}])),
            json!({"spec": {"containers": [{"name": "a", "$patch": "merge"}]}}),
            &pod_gvk(),
        );
        assert!(matches!(err, Err(PatchError::Invalid(_))), "{err:?}");
    }

    #[test]
    fn set_element_order_orders_the_merged_list() {
        let original = pod(
            json!([{"name": "a", "image": "a"}, {"name": "b", "image": "b"}, {"name": "c", "image": "c"}]),
        );
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}, {"name": "b"}],
            "containers": [{"name": "a", "image": "a2"}]
        }});
        let patched = smp_ok(original, patch, &pod_gvk());
        assert_eq!(
            patched["spec"]["containers"],
            json!([{"name": "c", "image": "c"}, {"name": "a", "image": "a2"}, {"name": "b", "image": "b"}])
        );
        assert!(patched["spec"].get("$setElementOrder/containers").is_none());
    }

    #[test]
    fn set_element_order_keeps_server_only_items_in_place() {
        // From patch_test.go: "$setElementOrder contains item that is not present in the list to be merged".
        let original = pod(json!([{"name": "1"}, {"name": "3"}]));
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "3"}, {"name": "2"}, {"name": "1"}],
            "containers": [{"name": "3", "image": "3"}, {"name": "1", "image": "1"}]
        }});
        let patched = smp_ok(original, patch, &pod_gvk());
        assert_eq!(
            patched["spec"]["containers"],
            json!([{"name": "3", "image": "3"}, {"name": "1", "image": "1"}])
        );
    }

    #[test]
    fn set_element_order_on_primitive_list() {
        let original = json!({"metadata": {"name": "p", "finalizers": ["1", "3"]}});
        let patch = json!({"metadata": {"$setElementOrder/finalizers": ["3", "2", "1"]}});
        let patched = smp_ok(original, patch, &pod_gvk());
        assert_eq!(patched["metadata"]["finalizers"], json!(["3", "1"]));
    }

    #[test]
    fn set_element_order_mismatch_is_rejected() {
        let original = pod(json!([{"name": "a"}, {"name": "b"}]));
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "b", "image": "b"}, {"name": "a", "image": "a"}]
        }});
        assert!(matches!(
            smp(original, patch, &pod_gvk()),
            Err(PatchError::Invalid(_))
        ));
    }

    #[test]
    fn preserve_patch_order_in_merge_lists() {
        // From patch_test.go: "preserve the order from the patch in a merging list 2".
        let original = pod(json!([{"name": "1"}, {"name": "2", "image": "b"}, {"name": "3"}]));
        let patch = json!({"spec": {"containers": [{"name": "3", "image": "c"}, {"name": "1", "image": "a"}]}});
        let patched = smp_ok(original, patch, &pod_gvk());
        assert_eq!(
            patched["spec"]["containers"],
            json!([{"name": "2", "image": "b"}, {"name": "3", "image": "c"}, {"name": "1", "image": "a"}])
        );
    }

    #[test]
    fn retain_keys_clears_other_fields() {
        let original = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
        let patched = smp_ok(original, patch, &deployment_gvk());
        assert_eq!(patched["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn retain_keys_in_volumes() {
        let original = pod(json!([]));
        let mut original = original;
        original["spec"]["volumes"] = json!([{"name": "v", "emptyDir": {}}]);
        let patch = json!({"spec": {"volumes": [{"name": "v", "$retainKeys": ["hostPath", "name"], "hostPath": {"path": "/x"}}]}});
        let patched = smp_ok(original, patch, &pod_gvk());
        assert_eq!(
            patched["spec"]["volumes"],
            json!([{"name": "v", "hostPath": {"path": "/x"}}])
        );
    }

    #[test]
    fn retain_keys_must_cover_the_patch() {
        let original = json!({"spec": {"strategy": {"type": "RollingUpdate"}}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {"maxSurge": 1}}}});
        assert!(matches!(
            smp(original.clone(), patch, &deployment_gvk()),
            Err(PatchError::Malformed(_))
        ));
        let patch = json!({"spec": {"strategy": {"$retainKeys": "type"}}});
        assert!(matches!(
            smp(original, patch, &deployment_gvk()),
            Err(PatchError::Malformed(_))
        ));
    }

    #[test]
    fn delete_from_primitive_list_on_finalizers() {
        let original = json!({"metadata": {"name": "p", "finalizers": ["a", "b", "c"]}});
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b"]}});
        let patched = smp_ok(original, patch, &pod_gvk());
        assert_eq!(patched["metadata"]["finalizers"], json!(["a", "c"]));

        let absent = smp_ok(
            json!({"metadata": {"name": "p"}}),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b"]}}),
            &pod_gvk(),
        );
        assert_eq!(absent, json!({"metadata": {"name": "p"}}));

        let bad = smp(
            json!({"metadata": {"finalizers": ["a"]}}),
            json!({"metadata": {"$deleteFromPrimitiveListfinalizers": ["a"]}}),
            &pod_gvk(),
        );
        assert!(matches!(bad, Err(PatchError::Malformed(_))), "{bad:?}");
    }

    #[test]
    fn kubectl_finalizer_removal_and_addition() {
        // What kubectl's three-way diff sends when one finalizer replaces another.
        let original = json!({"metadata": {"name": "p", "finalizers": ["a", "b"]}});
        let patch = json!({"metadata": {
            "$deleteFromPrimitiveList/finalizers": ["a"],
            "$setElementOrder/finalizers": ["b", "c"],
            "finalizers": ["c"]
        }});
        let patched = smp_ok(original, patch, &pod_gvk());
        assert_eq!(patched["metadata"]["finalizers"], json!(["b", "c"]));
    }

    #[test]
    fn finalizers_merge_as_a_set() {
        let original = json!({"metadata": {"name": "p", "finalizers": ["a", "b"]}});
        let patched = smp_ok(
            original,
            json!({"metadata": {"finalizers": ["b", "c"]}}),
            &pod_gvk(),
        );
        // From patch_test.go "unique scalars when merging lists": no duplicates.
        assert_eq!(patched["metadata"]["finalizers"], json!(["a", "b", "c"]));
    }

    #[test]
    fn owner_references_merge_by_uid() {
        let original = json!({"metadata": {"ownerReferences": [
            {"uid": "1", "name": "one", "kind": "ReplicaSet", "apiVersion": "apps/v1"}
        ]}});
        let patch = json!({"metadata": {"ownerReferences": [{"uid": "1", "controller": true}]}});
        let patched = smp_ok(original, patch, &pod_gvk());
        assert_eq!(
            patched["metadata"]["ownerReferences"],
            json!([{"uid": "1", "name": "one", "kind": "ReplicaSet", "apiVersion": "apps/v1", "controller": true}])
        );
    }

    #[test]
    fn null_deletes_a_map_key_and_labels_merge() {
        let original = json!({"metadata": {"name": "p", "labels": {"a": "1", "b": "2"}, "annotations": {"x": "y"}}});
        let patch = json!({"metadata": {"labels": {"a": null, "c": "3"}, "annotations": null, "missing": null}});
        let patched = smp_ok(original, patch, &pod_gvk());
        assert_eq!(
            patched["metadata"],
            json!({"name": "p", "labels": {"b": "2", "c": "3"}})
        );
    }

    #[test]
    fn ports_merge_by_container_port() {
        let original = pod(
            json!([{"name": "a", "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 443}]}]),
        );
        let patch = json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80, "protocol": "TCP"}]}]}});
        let patched = smp_ok(original, patch, &pod_gvk());
        assert_eq!(
            patched["spec"]["containers"][0]["ports"],
            json!([{"containerPort": 80, "name": "http", "protocol": "TCP"}, {"containerPort": 443}])
        );
    }

    #[test]
    fn service_ports_merge_by_port() {
        let original =
            json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}});
        let patch = json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}});
        let patched = smp_ok(original, patch, &gvk("", "v1", "Service"));
        assert_eq!(
            patched["spec"]["ports"],
            json!([{"port": 80, "targetPort": 9090}, {"port": 443}])
        );
    }

    #[test]
    fn non_merge_lists_are_replaced() {
        let original = pod(json!([{"name": "a", "args": ["1", "2"], "command": ["sh"]}]));
        let mut original = original;
        original["spec"]["tolerations"] = json!([{"key": "k", "operator": "Exists"}]);
        let patch = json!({"spec": {
            "containers": [{"name": "a", "args": ["3"]}],
            "tolerations": [{"key": "other", "operator": "Exists"}]
        }});
        let patched = smp_ok(original, patch, &pod_gvk());
        assert_eq!(patched["spec"]["containers"][0]["args"], json!(["3"]));
        assert_eq!(patched["spec"]["containers"][0]["command"], json!(["sh"]));
        assert_eq!(
            patched["spec"]["tolerations"],
            json!([{"key": "other", "operator": "Exists"}])
        );
    }

    #[test]
    fn status_conditions_merge_by_type() {
        let original = json!({"status": {"conditions": [
            {"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}
        ]}});
        let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let patched = smp_ok(original, patch, &pod_gvk());
        assert_eq!(
            patched["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}])
        );
        let nodes = smp_ok(
            json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
            json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            &gvk("", "v1", "Node"),
        );
        assert_eq!(
            nodes["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}])
        );
    }

    #[test]
    fn pdb_selector_is_replaced_whole() {
        let original =
            json!({"spec": {"selector": {"matchLabels": {"a": "1"}}, "minAvailable": 1}});
        let patch = json!({"spec": {"selector": {"matchLabels": {"b": "2"}}}});
        let patched = smp_ok(original, patch, &gvk("policy", "v1", "PodDisruptionBudget"));
        assert_eq!(
            patched["spec"],
            json!({"selector": {"matchLabels": {"b": "2"}}, "minAvailable": 1})
        );
    }

    #[test]
    fn added_values_are_cleaned_of_directives_and_nulls() {
        let original = json!({"metadata": {"name": "d"}});
        let patch = json!({"metadata": {"labels": {"a": "1", "b": null}}, "spec": {"template": {"spec": {
            "containers": [{"name": "a", "image": "a", "resources": {"$retainKeys": ["limits"], "limits": {"cpu": "1"}}},
                           {"$patch": "replace"}]
        }}}});
        let patched = smp_ok(original, patch, &deployment_gvk());
        assert_eq!(patched["metadata"]["labels"], json!({"a": "1"}));
        assert_eq!(
            patched["spec"]["template"]["spec"]["containers"],
            json!([{"name": "a", "image": "a", "resources": {"limits": {"cpu": "1"}}}])
        );
    }

    #[test]
    fn type_change_replaces() {
        let original = json!({"metadata": {"name": "p", "labels": {"a": "1"}}});
        let patched = smp_ok(original, json!({"metadata": {"labels": "x"}}), &pod_gvk());
        assert_eq!(patched["metadata"]["labels"], json!("x"));
    }

    #[test]
    fn list_of_mixed_types_is_invalid() {
        let original = json!({"metadata": {"finalizers": ["a"]}});
        let err = smp(
            original,
            json!({"metadata": {"finalizers": [1]}}),
            &pod_gvk(),
        );
        assert!(matches!(err, Err(PatchError::Invalid(_))), "{err:?}");
    }

    #[test]
    fn merge_list_item_without_merge_key_is_invalid() {
        let err = smp(
            pod(json!([{"name": "a"}])),
            json!({"spec": {"containers": [{"image": "x"}]}}),
            &pod_gvk(),
        );
        assert!(matches!(err, Err(PatchError::Invalid(_))), "{err:?}");
    }

    #[test]
    fn kubectl_client_side_apply_patch() {
        // The patch `kubectl apply` computes after a Deployment's image changed in the manifest.
        let last_applied_old = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"annotations":{},"name":"web","namespace":"default"},"spec":{"selector":{"matchLabels":{"app":"web"}},"template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"image":"nginx:1.25","name":"nginx"}]}}}}"#;
        let last_applied_new = last_applied_old.replace("nginx:1.25", "nginx:1.26");
        let original = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "uid": "u1", "resourceVersion": "7",
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": format!("{last_applied_old}\n"),
                                "deployment.kubernetes.io/revision": "1"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                    "containers": [{"name": "nginx", "image": "nginx:1.25", "imagePullPolicy": "IfNotPresent",
                                    "terminationMessagePath": "/dev/termination-log"}],
                    "restartPolicy": "Always", "dnsPolicy": "ClusterFirst"}}},
            "status": {"conditions": [{"type": "Available", "status": "True"}]}
        });
        let patch = json!({
            "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": format!("{last_applied_new}\n")}},
            "spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "nginx"}],
                "containers": [{"image": "nginx:1.26", "name": "nginx"}]
            }}}
        });
        let patched = smp_ok(original.clone(), patch, &deployment_gvk());
        let mut expected = original;
        expected["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
            json!(format!("{last_applied_new}\n"));
        expected["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.26");
        assert_eq!(patched, expected);
    }

    #[test]
    fn kubectl_apply_first_time_adds_annotation_and_sidecar() {
        // kubectl apply on an object created with `kubectl create`: no annotations yet, one container added.
        let original = json!({"metadata": {"name": "web"}, "spec": {"template": {"spec": {
            "containers": [{"name": "nginx", "image": "nginx:1.25"}]}}}});
        let patch = json!({
            "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}\n"}},
            "spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "nginx"}, {"name": "sidecar"}],
                "containers": [{"name": "sidecar", "image": "busybox"}]
            }}}
        });
        let patched = smp_ok(original, patch, &deployment_gvk());
        assert_eq!(
            patched["metadata"]["annotations"],
            json!({"kubectl.kubernetes.io/last-applied-configuration": "{}\n"})
        );
        assert_eq!(
            patched["spec"]["template"]["spec"]["containers"],
            json!([{"name": "nginx", "image": "nginx:1.25"}, {"name": "sidecar", "image": "busybox"}])
        );
    }

    #[test]
    fn kubectl_apply_removes_a_container_and_an_env_var() {
        // kubectl apply after a container and an env var were dropped from the manifest.
        let original = pod(json!([
            {"name": "app", "image": "app", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
            {"name": "sidecar", "image": "busybox"}
        ]));
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "app"}],
            "containers": [
                {"name": "app", "$setElementOrder/env": [{"name": "A"}], "env": [{"$patch": "delete", "name": "B"}]},
                {"$patch": "delete", "name": "sidecar"}
            ]
        }});
        let patched = smp_ok(original, patch, &pod_gvk());
        assert_eq!(
            patched["spec"]["containers"],
            json!([{"name": "app", "image": "app", "env": [{"name": "A", "value": "1"}]}])
        );
    }

    #[test]
    fn strategic_merge_patch_errors() {
        let original = pod(json!([]));
        let malformed = apply_patch(
            PatchType::StrategicMerge,
            &original,
            b"{not json",
            &pod_gvk(),
            true,
        );
        assert!(
            matches!(malformed, Err(PatchError::Malformed(_))),
            "{malformed:?}"
        );
        let list = apply_patch(
            PatchType::StrategicMerge,
            &original,
            b"[]",
            &pod_gvk(),
            true,
        );
        assert!(matches!(list, Err(PatchError::Malformed(_))), "{list:?}");
        let null = apply_patch(
            PatchType::StrategicMerge,
            &original,
            b"null",
            &pod_gvk(),
            true,
        );
        assert_eq!(null.ok(), Some(original.clone()));

        let crd = gvk("example.com", "v1", "Widget");
        let custom = apply_patch(PatchType::StrategicMerge, &original, b"{}", &crd, false);
        assert!(
            matches!(custom, Err(PatchError::Unsupported(_))),
            "{custom:?}"
        );
        let unknown = apply_patch(PatchType::StrategicMerge, &original, b"{}", &crd, true);
        assert!(
            matches!(unknown, Err(PatchError::Unsupported(_))),
            "{unknown:?}"
        );
        assert_eq!(PatchError::Unsupported(String::new()).status_code(), 415);
    }

    #[test]
    fn merge_patch_basics() {
        let original = json!({"metadata": {"name": "w", "labels": {"a": "1"}}, "spec": {"items": [1, 2], "x": 1}});
        let patch = br#"{"metadata": {"labels": {"a": null, "b": "2"}}, "spec": {"items": [3]}}"#;
        let crd = gvk("example.com", "v1", "Widget");
        let patched = apply_patch(PatchType::Merge, &original, patch, &crd, false);
        assert_eq!(
            patched.ok(),
            Some(
                json!({"metadata": {"name": "w", "labels": {"b": "2"}}, "spec": {"items": [3], "x": 1}})
            )
        );
        let malformed = apply_patch(PatchType::Merge, &original, b"{", &crd, false);
        assert!(matches!(malformed, Err(PatchError::Malformed(_))));
        let not_object = apply_patch(PatchType::Merge, &original, b"[1]", &crd, false);
        assert!(matches!(not_object, Err(PatchError::Invalid(_))));
    }

    #[test]
    fn json_patch_basics() {
        let original = json!({"metadata": {"name": "p", "labels": {"a": "1"}}, "spec": {"containers": [{"name": "c", "image": "a"}]}});
        let patch = br#"[
            {"op": "test", "path": "/metadata/labels/a", "value": "1"},
            {"op": "replace", "path": "/spec/containers/0/image", "value": "b"},
            {"op": "add", "path": "/metadata/labels/b", "value": "2"},
            {"op": "remove", "path": "/metadata/labels/a"}
        ]"#;
        let patched = apply_patch(PatchType::Json, &original, patch, &pod_gvk(), true);
        assert_eq!(
            patched.ok(),
            Some(
                json!({"metadata": {"name": "p", "labels": {"b": "2"}}, "spec": {"containers": [{"name": "c", "image": "b"}]}})
            )
        );

        let failed_test = br#"[{"op": "test", "path": "/metadata/name", "value": "q"}]"#;
        let err = apply_patch(PatchType::Json, &original, failed_test, &pod_gvk(), true);
        assert!(matches!(err, Err(PatchError::Invalid(_))), "{err:?}");
        let missing = br#"[{"op": "remove", "path": "/spec/nothing"}]"#;
        let err = apply_patch(PatchType::Json, &original, missing, &pod_gvk(), true);
        assert!(matches!(err, Err(PatchError::Invalid(_))), "{err:?}");
        let malformed = apply_patch(
            PatchType::Json,
            &original,
            br#"{"op": "add"}"#,
            &pod_gvk(),
            true,
        );
        assert!(
            matches!(malformed, Err(PatchError::Malformed(_))),
            "{malformed:?}"
        );
        let bad_op = apply_patch(
            PatchType::Json,
            &original,
            br#"[{"op": "frobnicate", "path": "/a"}]"#,
            &pod_gvk(),
            true,
        );
        assert!(
            matches!(bad_op, Err(PatchError::Malformed(_))),
            "{bad_op:?}"
        );
    }
}
