//! The OpenAPI documents the API server serves (`/openapi/v2`, `/openapi/v3`, `/openapi/v3/<gv>`),
//! generated at start from k8s-openapi's schemas and the custom resources' schemas.
//!
//! This module owns the documents only: it builds them once per set of resources (CRDs change
//! the set at runtime) and hands out bytes; routing, content negotiation and the HTTP caching
//! headers are the API server's.
//!
//! # What kubectl reads (1.27 – 1.33)
//!
//! - `GET /openapi/v2` with `Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf`
//!   **only** (client-go `discovery.OpenAPISchema` unmarshals the body as the gnostic protobuf
//!   `openapi.v2.Document`; JSON is never asked for). Used by `kubectl explain` when
//!   `KUBECTL_EXPLAIN_OPENAPIV3=false`, by client-side validation when the server does not
//!   advertise `fieldValidation`, and by `kubectl apply` to find the PATCH `consumes` and the
//!   `x-kubernetes-patch-merge-key` / `x-kubernetes-patch-strategy` of each field. Serve
//!   [`OpenApi::v2_protobuf`] for it ([`OpenApi::v2_for_accept`] negotiates).
//! - `GET /openapi/v3` (JSON index), then `GET /openapi/v3/<gv>?hash=<etag>` with
//!   `Accept: application/json`. `kubectl explain` finds the kind through the GVK on the
//!   operations of `/<prefix>/<version>[/namespaces/{namespace}]/<plural>[/{name}]`, then the
//!   schema whose `x-kubernetes-group-version-kind` list contains it. `kubectl apply` uses the
//!   PATCH operation's `requestBody` content types (strategic merge patch only when
//!   `application/strategic-merge-patch+json` is listed) and the schemas' patch extensions;
//!   `--validate` looks for a `fieldValidation` query parameter on the PATCH operation and, when
//!   present, leaves validation to the server (`?fieldValidation=Strict`).
//!
//! # Guarantees
//!
//! - Definitions are named as upstream (`io.k8s.api.core.v1.Pod`, `com.example.stable.v1.CronTab`),
//!   every `$ref` resolves inside its document, and every served kind carries
//!   `x-kubernetes-group-version-kind`.
//! - Documents are deterministic: the same resources give the same bytes and ETags.
//!
//! # Caveats
//!
//! - Only the operations kubectl looks at are described (list/get/create/update/patch/delete
//!   with their common parameters); no watch, subresource or proxy paths.
//! - Patch metadata is transcribed from the k8s.io/api struct tags for the fields that have it;
//!   `x-kubernetes-list-type`/`-map-keys` (server-side apply) are not published.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

/// The media type client-go asks `/openapi/v2` for.
pub const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
/// The `Content-Type` to answer it with, as upstream does: Go's `mime.ParseMediaType` (which
/// client-go runs on responses) rejects the `@` of the requested form.
pub const V2_PROTOBUF_CONTENT_TYPE: &str =
    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";
const STATUS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Status";
const PATCH: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch";
const QUANTITY: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";
const INT_OR_STRING: &str = "io.k8s.apimachinery.pkg.util.intstr.IntOrString";
const GVK_EXT: &str = "x-kubernetes-group-version-kind";
const INFO_VERSION: &str = "v1.33.0";

/// One resource to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenApiResource {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
    pub verbs: Vec<String>,
    /// The CRD's `openAPIV3Schema` for custom resources; `None` for built-ins (generated here).
    pub schema: Option<Value>,
}

/// What `build_with` publishes besides the resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildOptions {
    /// Advertise the `fieldValidation` query parameter on create/update/patch. kubectl then
    /// skips client-side validation and sends `?fieldValidation=Strict|Warn`, so the server must
    /// honour it; without it kubectl validates against `/openapi/v2` itself.
    pub field_validation: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            field_validation: true,
        }
    }
}

/// The built documents, ready to serve.
#[derive(Debug, Clone)]
pub struct OpenApi {
    v2_json: Vec<u8>,
    v2_proto: Vec<u8>,
    v2_etag: String,
    v3: BTreeMap<String, Served>,
    v3_index: Vec<u8>,
    v3_index_etag: String,
}

#[derive(Debug, Clone)]
struct Served {
    json: Vec<u8>,
    etag: String,
}

impl OpenApi {
    /// Builds every document for these resources, advertising server-side field validation.
    pub fn build(resources: &[OpenApiResource]) -> OpenApi {
        Self::build_with(resources, BuildOptions::default())
    }

    pub fn build_with(resources: &[OpenApiResource], options: BuildOptions) -> OpenApi {
        let builtins = builtins();
        let mut defs = builtins.definitions.clone();
        let mut paths: BTreeMap<String, (String, PathItem)> = BTreeMap::new();

        let mut seen = BTreeSet::new();
        for r in resources {
            if r.plural.contains('/') || !seen.insert((&r.group, &r.version, &r.plural)) {
                continue;
            }
            let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
            let name = match &r.schema {
                Some(schema) => {
                    let name = custom_definition_name(&r.group, &r.version, &r.kind);
                    defs.insert(name.clone(), custom_schema(schema));
                    name
                }
                None => {
                    match builtins
                        .by_gvk
                        .get(&(r.group.clone(), r.version.clone(), r.kind.clone()))
                    {
                        Some(name) => name.clone(),
                        None => continue, // a built-in without a k8s-openapi type: nothing to describe
                    }
                }
            };
            if let Some(Value::Object(def)) = defs.get_mut(&name) {
                add_gvk(def, &gvk);
            }
            let list_name = format!("{name}List");
            defs.insert(list_name.clone(), list_schema(&name, &r.kind, &gvk));
            for (path, item) in resource_paths(r, &name, &list_name, r.schema.is_none(), options) {
                paths.insert(path, (group_version_path(&r.group, &r.version), item));
            }
        }

        // /openapi/v2
        let v2_defs: Map<String, Value> =
            defs.iter().map(|(k, v)| (k.clone(), to_v2(k, v))).collect();
        let v2_paths: Map<String, Value> = paths
            .iter()
            .map(|(p, (_, item))| (p.clone(), item.v2.clone()))
            .collect();
        let v2 = json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": INFO_VERSION},
            "paths": v2_paths,
            "definitions": v2_defs,
        });
        let v2_json = serde_json::to_vec(&v2).unwrap_or_default();
        let v2_proto = protobuf::document(&v2);
        let v2_etag = etag_of(&v2_json);

        // /openapi/v3/<gv>
        let mut by_gv: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
        for (path, (gv, item)) in &paths {
            by_gv
                .entry(gv)
                .or_default()
                .insert(path.clone(), item.v3.clone());
        }
        let refs: BTreeMap<&str, BTreeSet<String>> = defs
            .iter()
            .map(|(name, def)| {
                let mut out = BTreeSet::new();
                collect_refs(def, &mut out);
                (name.as_str(), out)
            })
            .collect();
        let v3_defs: Map<String, Value> =
            defs.iter().map(|(k, v)| (k.clone(), to_v3(k, v))).collect();
        let mut v3 = BTreeMap::new();
        for (gv, gv_paths) in by_gv {
            let mut wanted = BTreeSet::new();
            collect_refs(&Value::Object(gv_paths.clone()), &mut wanted);
            let names = closure(&refs, wanted);
            let schemas: Map<String, Value> = names
                .iter()
                .filter_map(|n| v3_defs.get(n).map(|d| (n.clone(), d.clone())))
                .collect();
            let doc = json!({
                "openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": INFO_VERSION},
                "paths": gv_paths,
                "components": {"schemas": schemas},
            });
            let json = serde_json::to_vec(&doc).unwrap_or_default();
            let etag = etag_of(&json);
            v3.insert(gv.to_string(), Served { json, etag });
        }
        let index: Map<String, Value> = v3
            .iter()
            .map(|(gv, s)| {
                let url = format!("/openapi/v3/{gv}?hash={}", s.etag);
                (gv.clone(), json!({ "serverRelativeURL": url }))
            })
            .collect();
        let v3_index = serde_json::to_vec(&json!({ "paths": index })).unwrap_or_default();
        let v3_index_etag = etag_of(&v3_index);

        OpenApi {
            v2_json,
            v2_proto,
            v2_etag,
            v3,
            v3_index,
            v3_index_etag,
        }
    }

    /// `GET /openapi/v2` as JSON (swagger 2.0).
    pub fn v2(&self) -> &[u8] {
        &self.v2_json
    }

    /// `GET /openapi/v2` as the gnostic `openapi.v2.Document` protobuf, which is what kubectl asks for.
    pub fn v2_protobuf(&self) -> &[u8] {
        &self.v2_proto
    }

    /// Picks the `/openapi/v2` body for an `Accept` header: the protobuf when it is named,
    /// JSON otherwise. Returns the `Content-Type` to send with it.
    pub fn v2_for_accept(&self, accept: Option<&str>) -> (&'static str, &[u8]) {
        let wants_proto = accept.is_some_and(|a| {
            a.split(',').any(|clause| {
                let media = clause.split(';').next().unwrap_or("").trim();
                media == V2_PROTOBUF || media == V2_PROTOBUF_CONTENT_TYPE
            })
        });
        if wants_proto {
            (V2_PROTOBUF_CONTENT_TYPE, &self.v2_proto)
        } else {
            ("application/json", &self.v2_json)
        }
    }

    /// `GET /openapi/v3`: `{"paths": {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=…"}}}`.
    pub fn v3_index(&self) -> Value {
        serde_json::from_slice(&self.v3_index).unwrap_or(Value::Null)
    }

    /// [`OpenApi::v3_index`] serialized.
    pub fn v3_index_bytes(&self) -> &[u8] {
        &self.v3_index
    }

    /// `GET /openapi/v3/<path>` with `path` as `api/v1` or `apis/apps/v1`: an OpenAPI 3.0
    /// document (JSON) with the group-version's paths and every schema they reference.
    pub fn v3_group_version(&self, path: &str) -> Option<&[u8]> {
        self.v3
            .get(path.trim_matches('/'))
            .map(|s| s.json.as_slice())
    }

    /// The group-version paths `/openapi/v3` lists.
    pub fn v3_paths(&self) -> impl Iterator<Item = &str> {
        self.v3.keys().map(String::as_str)
    }

    /// The ETag (unquoted) of a document, by request path: `/openapi/v2`, `/openapi/v3`, or
    /// `/openapi/v3/<gv>`; the latter is also the `hash` its index entry carries. When a request
    /// names another `hash`, upstream answers 301 to the current URL.
    pub fn etag(&self, path: &str) -> Option<&str> {
        let path = path.split('?').next().unwrap_or(path).trim_end_matches('/');
        match path {
            "/openapi/v2" => Some(&self.v2_etag),
            "/openapi/v3" => Some(&self.v3_index_etag),
            _ => path
                .strip_prefix("/openapi/v3/")
                .and_then(|gv| self.v3.get(gv))
                .map(|s| s.etag.as_str()),
        }
    }
}

// ---- built-in definitions ---------------------------------------------------------------

struct Builtins {
    /// Upstream-named definitions in neutral form (`#/definitions/` refs, patch metadata added).
    definitions: Map<String, Value>,
    by_gvk: BTreeMap<(String, String, String), String>,
}

/// k8s-openapi's schemas never change at run time: generate them once.
/// The JSON property names of a built-in definition (`io.k8s.api.apps.v1.Deployment`), as
/// k8s-openapi spells them; None for a name k8s-openapi does not define.
pub fn builtin_property_names(definition: &str) -> Option<Vec<&'static str>> {
    let properties = builtins()
        .definitions
        .get(definition)?
        .get("properties")?
        .as_object()?;
    Some(properties.keys().map(String::as_str).collect())
}

fn builtins() -> &'static Builtins {
    static BUILTINS: OnceLock<Builtins> = OnceLock::new();
    BUILTINS.get_or_init(|| {
        let mut generator = SchemaSettings::draft07()
            .with(|s| {
                s.definitions_path = "/definitions".into();
                s.meta_schema = None;
                s.transforms = Vec::new();
            })
            .into_generator();
        let mut by_gvk = BTreeMap::new();
        macro_rules! builtin_schema {
            ($ty:ty, [$($short:expr),*], [$($cat:expr),*], [$($sub:expr),*]) => {
                generator.subschema_for::<$ty>();
                by_gvk.insert(
                    (
                        <$ty as k8s_openapi::Resource>::GROUP.to_string(),
                        <$ty as k8s_openapi::Resource>::VERSION.to_string(),
                        <$ty as k8s_openapi::Resource>::KIND.to_string(),
                    ),
                    <$ty as schemars::JsonSchema>::schema_name().into_owned(),
                );
            };
        }
        crate::for_each_builtin!(builtin_schema);
        generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>();
        generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta>();
        generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>();
        let mut definitions = generator.take_definitions(false);
        definitions.insert(
            PATCH.to_string(),
            json!({
                "description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.",
                "type": "object",
            }),
        );
        if let Some(Value::Object(status)) = definitions.get_mut(STATUS) {
            add_gvk(status, &json!({"group": "", "version": "v1", "kind": "Status"}));
        }
        for (def, field, strategy, key) in PATCH_METADATA {
            let Some(prop) = definitions
                .get_mut(*def)
                .and_then(|d| d.get_mut("properties"))
                .and_then(|p| p.get_mut(*field))
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            prop.insert("x-kubernetes-patch-strategy".into(), json!(strategy));
            if let Some(key) = key {
                prop.insert("x-kubernetes-patch-merge-key".into(), json!(key));
            }
        }
        Builtins { definitions, by_gvk }
    })
}

/// `(definition, field, x-kubernetes-patch-strategy, x-kubernetes-patch-merge-key)`, transcribed
/// from the `patchStrategy`/`patchMergeKey` struct tags of k8s.io/api and k8s.io/apimachinery.
#[rustfmt::skip]
const PATCH_METADATA: &[(&str, &str, &str, Option<&str>)] = &[
    (OBJECT_META, "finalizers", "merge", None),
    (OBJECT_META, "ownerReferences", "merge", Some("uid")),
    // core/v1
    ("io.k8s.api.core.v1.PodSpec", "containers", "merge", Some("name")),
    ("io.k8s.api.core.v1.PodSpec", "initContainers", "merge", Some("name")),
    ("io.k8s.api.core.v1.PodSpec", "ephemeralContainers", "merge", Some("name")),
    ("io.k8s.api.core.v1.PodSpec", "volumes", "merge,retainKeys", Some("name")),
    ("io.k8s.api.core.v1.PodSpec", "imagePullSecrets", "merge", Some("name")),
    ("io.k8s.api.core.v1.PodSpec", "hostAliases", "merge", Some("ip")),
    ("io.k8s.api.core.v1.PodSpec", "topologySpreadConstraints", "merge", Some("topologyKey")),
    ("io.k8s.api.core.v1.PodSpec", "schedulingGates", "merge", Some("name")),
    ("io.k8s.api.core.v1.PodSpec", "resourceClaims", "merge,retainKeys", Some("name")),
    ("io.k8s.api.core.v1.Container", "ports", "merge", Some("containerPort")),
    ("io.k8s.api.core.v1.Container", "env", "merge", Some("name")),
    ("io.k8s.api.core.v1.Container", "volumeMounts", "merge", Some("mountPath")),
    ("io.k8s.api.core.v1.Container", "volumeDevices", "merge", Some("devicePath")),
    ("io.k8s.api.core.v1.EphemeralContainer", "ports", "merge", Some("containerPort")),
    ("io.k8s.api.core.v1.EphemeralContainer", "env", "merge", Some("name")),
    ("io.k8s.api.core.v1.EphemeralContainer", "volumeMounts", "merge", Some("mountPath")),
    ("io.k8s.api.core.v1.EphemeralContainer", "volumeDevices", "merge", Some("devicePath")),
    ("io.k8s.api.core.v1.ContainerStatus", "volumeMounts", "merge", Some("mountPath")),
    ("io.k8s.api.core.v1.ContainerStatus", "allocatedResourcesStatus", "merge", Some("name")),
    ("io.k8s.api.core.v1.PodStatus", "conditions", "merge", Some("type")),
    ("io.k8s.api.core.v1.PodStatus", "hostIPs", "merge", Some("ip")),
    ("io.k8s.api.core.v1.PodStatus", "podIPs", "merge", Some("ip")),
    ("io.k8s.api.core.v1.PodStatus", "resourceClaimStatuses", "merge,retainKeys", Some("name")),
    ("io.k8s.api.core.v1.ServiceSpec", "ports", "merge", Some("port")),
    ("io.k8s.api.core.v1.ServiceStatus", "conditions", "merge", Some("type")),
    ("io.k8s.api.core.v1.ServiceAccount", "secrets", "merge", Some("name")),
    ("io.k8s.api.core.v1.NodeSpec", "podCIDRs", "merge", None),
    ("io.k8s.api.core.v1.NodeStatus", "conditions", "merge", Some("type")),
    ("io.k8s.api.core.v1.NodeStatus", "addresses", "merge", Some("type")),
    ("io.k8s.api.core.v1.NamespaceStatus", "conditions", "merge", Some("type")),
    ("io.k8s.api.core.v1.PersistentVolumeClaimStatus", "conditions", "merge", Some("type")),
    ("io.k8s.api.core.v1.ReplicationControllerStatus", "conditions", "merge", Some("type")),
    ("io.k8s.api.core.v1.ComponentStatus", "conditions", "merge", Some("type")),
    // apps/v1
    ("io.k8s.api.apps.v1.DeploymentSpec", "strategy", "retainKeys", None,),
    ("io.k8s.api.apps.v1.DeploymentStatus", "conditions", "merge", Some("type")),
    ("io.k8s.api.apps.v1.StatefulSetStatus", "conditions", "merge", Some("type")),
    ("io.k8s.api.apps.v1.DaemonSetStatus", "conditions", "merge", Some("type")),
    ("io.k8s.api.apps.v1.ReplicaSetStatus", "conditions", "merge", Some("type")),
    // batch/v1, policy/v1, storage/v1
    ("io.k8s.api.batch.v1.JobStatus", "conditions", "merge", Some("type")),
    ("io.k8s.api.policy.v1.PodDisruptionBudgetSpec", "selector", "replace", None,),
    ("io.k8s.api.policy.v1.PodDisruptionBudgetStatus", "conditions", "merge", Some("type")),
    ("io.k8s.api.storage.v1.CSINodeSpec", "drivers", "merge", Some("name")),
];

// ---- resources ----------------------------------------------------------------------------

/// `stable.example.com`, `v1`, `CronTab` → `com.example.stable.v1.CronTab`, as upstream names
/// custom resources' definitions.
fn custom_definition_name(group: &str, version: &str, kind: &str) -> String {
    let mut parts: Vec<&str> = group.split('.').filter(|p| !p.is_empty()).collect();
    parts.reverse();
    parts.push(version);
    parts.push(kind);
    parts.join(".")
}

/// A CRD's `openAPIV3Schema` as a definition: an object whose `metadata` is `ObjectMeta`, with
/// `apiVersion` and `kind` described as on built-ins.
fn custom_schema(schema: &Value) -> Value {
    let mut def = match schema {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    def.entry("type").or_insert_with(|| json!("object"));
    if !def.contains_key("properties") && !def.contains_key("x-kubernetes-preserve-unknown-fields")
    {
        def.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
    }
    let props = def.entry("properties").or_insert_with(|| json!({}));
    if let Value::Object(props) = props {
        props
            .entry("apiVersion")
            .or_insert_with(|| json!({"type": "string", "description": API_VERSION_DOC}));
        props
            .entry("kind")
            .or_insert_with(|| json!({"type": "string", "description": KIND_DOC}));
        props.insert(
            "metadata".into(),
            json!({"$ref": def_ref(OBJECT_META), "description": METADATA_DOC}),
        );
    }
    Value::Object(def)
}

fn list_schema(item: &str, kind: &str, gvk: &Value) -> Value {
    let mut list_gvk = gvk.clone();
    list_gvk["kind"] = json!(format!("{kind}List"));
    json!({
        "description": format!("{kind}List is a list of {kind}."),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string", "description": API_VERSION_DOC},
            "items": {"type": "array", "description": format!("List of {kind}."), "items": {"$ref": def_ref(item)}},
            "kind": {"type": "string", "description": KIND_DOC},
            "metadata": {"$ref": def_ref(LIST_META), "description": "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"},
        },
        GVK_EXT: [list_gvk],
    })
}

const API_VERSION_DOC: &str = "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";
const KIND_DOC: &str = "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";
const METADATA_DOC: &str = "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

/// Marks a definition as a kind and drops `metadata` from `required` (k8s-openapi marks it so
/// because the Rust field is not optional; upstream does not require it).
fn add_gvk(def: &mut Map<String, Value>, gvk: &Value) {
    let list = def.entry(GVK_EXT).or_insert_with(|| json!([]));
    if let Value::Array(list) = list {
        if !list.contains(gvk) {
            list.push(gvk.clone());
        }
    }
    if let Some(Value::Array(required)) = def.get_mut("required") {
        required.retain(|r| r != "metadata");
        if required.is_empty() {
            def.remove("required");
        }
    }
}

fn group_version_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn def_ref(name: &str) -> String {
    format!("#/definitions/{name}")
}

/// One operation, rendered into both documents.
struct Op {
    action: &'static str,
    description: String,
    params: Vec<Param>,
    body: Option<String>,
    consumes: Vec<&'static str>,
    response: (&'static str, String),
    gvk: Value,
}

#[derive(Clone)]
struct Param {
    name: &'static str,
    location: &'static str,
    ty: &'static str,
    description: &'static str,
}

const fn query(name: &'static str, ty: &'static str, description: &'static str) -> Param {
    Param {
        name,
        location: "query",
        ty,
        description,
    }
}

const DRY_RUN: Param = query("dryRun", "string", "When present, indicates that modifications should not be persisted. Valid values are: - All: all dry run stages will be processed");
const FIELD_MANAGER: Param = query(
    "fieldManager",
    "string",
    "fieldManager is a name associated with the actor or entity that is making these changes.",
);
const FIELD_VALIDATION: Param = query("fieldValidation", "string", "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: - Ignore - Warn - Strict");
const LIST_PARAMS: [Param; 7] = [
    query("labelSelector", "string", "A selector to restrict the list of returned objects by their labels. Defaults to everything."),
    query("fieldSelector", "string", "A selector to restrict the list of returned objects by their fields. Defaults to everything."),
    query("limit", "integer", "limit is a maximum number of responses to return for a list call."),
    query("continue", "string", "The continue option should be set when retrieving more results from the server."),
    query("resourceVersion", "string", "resourceVersion sets a constraint on what resource versions a request may be served from."),
    query("timeoutSeconds", "integer", "Timeout for the list/watch call."),
    query("watch", "boolean", "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications."),
];

/// The collection and item paths of one resource with the operations its verbs allow (get and
/// list always, so that clients find the kind).
fn resource_paths(
    r: &OpenApiResource,
    def: &str,
    list_def: &str,
    builtin: bool,
    options: BuildOptions,
) -> Vec<(String, PathItem)> {
    let prefix = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let has = |verb: &str| r.verbs.iter().any(|v| v == verb);
    let write_params = |extra: &mut Vec<Param>| {
        extra.push(DRY_RUN);
        extra.push(FIELD_MANAGER);
        if options.field_validation {
            extra.push(FIELD_VALIDATION);
        }
    };
    let op = |action: &'static str,
              description: String,
              params: Vec<Param>,
              body: Option<&str>,
              consumes: Vec<&'static str>,
              response: (&'static str, &str)| Op {
        action,
        description,
        params,
        body: body.map(str::to_string),
        consumes,
        response: (response.0, response.1.to_string()),
        gvk: gvk.clone(),
    };
    let kind = &r.kind;

    let mut collection = Vec::new();
    collection.push((
        "get",
        op(
            "list",
            format!("list or watch objects of kind {kind}"),
            LIST_PARAMS.to_vec(),
            None,
            vec![],
            ("200", list_def),
        ),
    ));
    if has("create") {
        let mut params = Vec::new();
        write_params(&mut params);
        collection.push((
            "post",
            op(
                "post",
                format!("create a {kind}"),
                params,
                Some(def),
                vec![],
                ("201", def),
            ),
        ));
    }
    let mut item = Vec::new();
    item.push((
        "get",
        op(
            "get",
            format!("read the specified {kind}"),
            vec![],
            None,
            vec![],
            ("200", def),
        ),
    ));
    if has("update") {
        let mut params = Vec::new();
        write_params(&mut params);
        item.push((
            "put",
            op(
                "put",
                format!("replace the specified {kind}"),
                params,
                Some(def),
                vec![],
                ("200", def),
            ),
        ));
    }
    if has("patch") {
        let mut params = Vec::new();
        write_params(&mut params);
        params.push(query(
            "force",
            "boolean",
            "Force is going to \"force\" Apply requests.",
        ));
        let mut consumes = vec![
            "application/json-patch+json",
            "application/merge-patch+json",
        ];
        if builtin {
            consumes.push("application/strategic-merge-patch+json");
        }
        consumes.push("application/apply-patch+yaml");
        item.push((
            "patch",
            op(
                "patch",
                format!("partially update the specified {kind}"),
                params,
                Some(PATCH),
                consumes,
                ("200", def),
            ),
        ));
    }
    if has("delete") {
        let params = vec![
            DRY_RUN,
            query(
                "gracePeriodSeconds",
                "integer",
                "The duration in seconds before the object should be deleted.",
            ),
            query(
                "propagationPolicy",
                "string",
                "Whether and how garbage collection will be performed.",
            ),
        ];
        item.push((
            "delete",
            op(
                "delete",
                format!("delete a {kind}"),
                params,
                None,
                vec![],
                ("200", STATUS),
            ),
        ));
    }

    let name_param = Param {
        name: "name",
        location: "path",
        ty: "string",
        description: "name of the resource",
    };
    let ns_param = Param {
        name: "namespace",
        location: "path",
        ty: "string",
        description: "object name and auth scope, such as for teams and projects",
    };
    let mut out = Vec::new();
    let plural = &r.plural;
    if r.namespaced {
        let all = vec![(
            "get",
            op(
                "list",
                format!("list or watch objects of kind {kind}"),
                LIST_PARAMS.to_vec(),
                None,
                vec![],
                ("200", list_def),
            ),
        )];
        out.push((format!("{prefix}/{plural}"), path_item(all, vec![])));
        out.push((
            format!("{prefix}/namespaces/{{namespace}}/{plural}"),
            path_item(collection, vec![ns_param.clone()]),
        ));
        out.push((
            format!("{prefix}/namespaces/{{namespace}}/{plural}/{{name}}"),
            path_item(item, vec![name_param, ns_param]),
        ));
    } else {
        out.push((format!("{prefix}/{plural}"), path_item(collection, vec![])));
        out.push((
            format!("{prefix}/{plural}/{{name}}"),
            path_item(item, vec![name_param]),
        ));
    }
    out
}

/// One path's item, rendered for both documents.
struct PathItem {
    v2: Value,
    v3: Value,
}

fn path_item(ops: Vec<(&'static str, Op)>, params: Vec<Param>) -> PathItem {
    PathItem {
        v2: render_ops(&ops, &params, false),
        v3: render_ops(&ops, &params, true),
    }
}

fn render_param(p: &Param, v3: bool) -> Value {
    let mut out = json!({
        "name": p.name,
        "in": p.location,
        "description": p.description,
        "uniqueItems": true,
    });
    if p.location == "path" {
        out["required"] = json!(true);
    }
    if v3 {
        out["schema"] = json!({"type": p.ty, "uniqueItems": true});
        if let Some(o) = out.as_object_mut() {
            o.remove("uniqueItems");
        }
    } else {
        out["type"] = json!(p.ty);
    }
    out
}

fn render_ops(ops: &[(&'static str, Op)], params: &[Param], v3: bool) -> Value {
    let mut item = Map::new();
    for (method, op) in ops {
        let mut o = Map::new();
        o.insert("description".into(), json!(op.description));
        o.insert(
            "operationId".into(),
            json!(format!(
                "{}{}",
                op.action,
                op.gvk["kind"].as_str().unwrap_or("")
            )),
        );
        let mut parameters: Vec<Value> = op.params.iter().map(|p| render_param(p, v3)).collect();
        let schema_ref = |name: &str| {
            if v3 {
                json!({"$ref": format!("#/components/schemas/{name}")})
            } else {
                json!({"$ref": def_ref(name)})
            }
        };
        let consumes: Vec<&str> = if op.consumes.is_empty() {
            vec!["application/json"]
        } else {
            op.consumes.clone()
        };
        if let Some(body) = &op.body {
            if v3 {
                let content: Map<String, Value> = consumes
                    .iter()
                    .map(|c| (c.to_string(), json!({"schema": schema_ref(body)})))
                    .collect();
                o.insert(
                    "requestBody".into(),
                    json!({"content": content, "required": true}),
                );
            } else {
                parameters.insert(0, json!({"name": "body", "in": "body", "required": true, "schema": schema_ref(body)}));
            }
        }
        if !parameters.is_empty() {
            o.insert("parameters".into(), Value::Array(parameters));
        }
        let (code, def) = &op.response;
        let response = if v3 {
            json!({"description": "OK", "content": {"application/json": {"schema": schema_ref(def)}}})
        } else {
            json!({"description": "OK", "schema": schema_ref(def)})
        };
        o.insert(
            "responses".into(),
            json!({ *code: response, "401": {"description": "Unauthorized"} }),
        );
        if !v3 {
            o.insert(
                "consumes".into(),
                json!(if op.body.is_some() {
                    consumes
                } else {
                    vec!["*/*"]
                }),
            );
            o.insert("produces".into(), json!(["application/json"]));
            o.insert("schemes".into(), json!(["https"]));
        }
        o.insert("x-kubernetes-action".into(), json!(op.action));
        o.insert(GVK_EXT.into(), op.gvk.clone());
        item.insert(method.to_string(), Value::Object(o));
    }
    if !params.is_empty() {
        item.insert(
            "parameters".into(),
            params.iter().map(|p| render_param(p, v3)).collect(),
        );
    }
    Value::Object(item)
}

// ---- v2 / v3 renderings of a definition ---------------------------------------------------

/// Calls `f` on `schema` and every schema nested in it (properties, items, maps, combinators).
fn walk(schema: &mut Value, f: &mut impl FnMut(&mut Map<String, Value>)) {
    let Value::Object(map) = schema else { return };
    f(map);
    for key in ["properties", "patternProperties", "definitions"] {
        if let Some(Value::Object(props)) = map.get_mut(key) {
            props.values_mut().for_each(|v| walk(v, f));
        }
    }
    for key in ["items", "additionalProperties", "not"] {
        match map.get_mut(key) {
            Some(v @ Value::Object(_)) => walk(v, f),
            Some(Value::Array(items)) => items.iter_mut().for_each(|v| walk(v, f)),
            _ => {}
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(items)) = map.get_mut(key) {
            items.iter_mut().for_each(|v| walk(v, f));
        }
    }
}

/// Swagger 2.0 as kube-openapi's `proto` package parses it: Quantity and IntOrString as
/// strings, no combinators, arrays always with one item schema, one type per schema.
fn to_v2(name: &str, def: &Value) -> Value {
    match name {
        QUANTITY => return json!({"description": def["description"], "type": "string"}),
        INT_OR_STRING => {
            return json!({"description": def["description"], "type": "string", "format": "int-or-string"})
        }
        _ => {}
    }
    let mut def = def.clone();
    walk(&mut def, &mut |m| {
        for key in [
            "oneOf",
            "anyOf",
            "not",
            "nullable",
            "x-kubernetes-int-or-string",
        ] {
            m.remove(key);
        }
        if m.contains_key("$ref") {
            m.remove("type");
            m.remove("properties");
        }
        let array_without_item = m.get("type") == Some(&json!("array"))
            && !matches!(m.get("items"), Some(Value::Object(_)));
        if array_without_item || matches!(m.get("type"), Some(Value::Array(_))) {
            m.remove("type");
            m.remove("items");
        }
        if matches!(m.get("additionalProperties"), Some(Value::Bool(_))) {
            m.remove("additionalProperties");
        }
    });
    def
}

/// OpenAPI 3.0: refs under `#/components/schemas/`, `$ref` with siblings wrapped in `allOf`
/// (as upstream publishes), Quantity and IntOrString as `oneOf`.
fn to_v3(name: &str, def: &Value) -> Value {
    match name {
        QUANTITY => {
            return json!({"description": def["description"], "oneOf": [{"type": "string"}, {"type": "number"}]})
        }
        INT_OR_STRING => {
            return json!({"description": def["description"], "format": "int-or-string", "oneOf": [{"type": "integer"}, {"type": "string"}]})
        }
        _ => {}
    }
    let mut def = def.clone();
    walk(&mut def, &mut |m| {
        let Some(Value::String(r)) = m.remove("$ref") else {
            return;
        };
        let r = match r.strip_prefix("#/definitions/") {
            Some(name) => format!("#/components/schemas/{name}"),
            None => r,
        };
        if m.is_empty() {
            m.insert("$ref".into(), json!(r));
        } else {
            m.insert("allOf".into(), json!([{ "$ref": r }]));
        }
    });
    def
}

fn collect_refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "$ref" {
                    if let Some(r) = v.as_str() {
                        let name = r.rsplit('/').next().unwrap_or(r);
                        out.insert(name.to_string());
                    }
                } else {
                    collect_refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// `roots` and every definition they reach, given each definition's direct references.
fn closure(refs: &BTreeMap<&str, BTreeSet<String>>, roots: BTreeSet<String>) -> BTreeSet<String> {
    let mut done = BTreeSet::new();
    let mut todo: Vec<String> = roots.into_iter().collect();
    while let Some(name) = todo.pop() {
        if let Some(next) = refs.get(name.as_str()) {
            todo.extend(next.iter().filter(|r| !done.contains(*r)).cloned());
        }
        done.insert(name);
    }
    done
}

/// Upstream sends the SHA-512 of the document; any stable digest works for `?hash=` and
/// `ETag`. FNV-1a 128 over the bytes, in upper-case hex.
fn etag_of(bytes: &[u8]) -> String {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let hash = bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u128::from(*b)).wrapping_mul(PRIME));
    format!("{hash:032X}")
}

/// The gnostic `openapi.v2.Document` protobuf (github.com/google/gnostic-models
/// openapiv2/OpenAPIv2.proto), encoded from the swagger JSON this module builds. Only the
/// fields that JSON uses are written; vendor extensions carry their value as YAML (JSON is YAML).
mod protobuf {
    use serde_json::{Map, Value};

    fn varint(buf: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        buf.push(v as u8);
    }

    fn tag(buf: &mut Vec<u8>, field: u32, wire: u8) {
        varint(buf, (u64::from(field) << 3) | u64::from(wire));
    }

    fn bytes(buf: &mut Vec<u8>, field: u32, data: &[u8]) {
        tag(buf, field, 2);
        varint(buf, data.len() as u64);
        buf.extend_from_slice(data);
    }

    fn string(buf: &mut Vec<u8>, field: u32, v: Option<&Value>) {
        if let Some(s) = v.and_then(Value::as_str) {
            bytes(buf, field, s.as_bytes());
        }
    }

    fn strings(buf: &mut Vec<u8>, field: u32, v: Option<&Value>) {
        match v {
            Some(Value::Array(items)) => items.iter().for_each(|s| string(buf, field, Some(s))),
            Some(s @ Value::String(_)) => string(buf, field, Some(s)),
            _ => {}
        }
    }

    fn boolean(buf: &mut Vec<u8>, field: u32, v: Option<&Value>) {
        if let Some(b) = v.and_then(Value::as_bool) {
            tag(buf, field, 0);
            varint(buf, u64::from(b));
        }
    }

    fn int64(buf: &mut Vec<u8>, field: u32, v: Option<&Value>) {
        if let Some(n) = v.and_then(Value::as_i64) {
            tag(buf, field, 0);
            varint(buf, n as u64);
        }
    }

    fn double(buf: &mut Vec<u8>, field: u32, v: Option<&Value>) {
        if let Some(n) = v.and_then(Value::as_f64) {
            tag(buf, field, 1);
            buf.extend_from_slice(&n.to_le_bytes());
        }
    }

    /// `Any { string yaml = 2; }`
    fn any(v: &Value) -> Vec<u8> {
        let mut buf = Vec::new();
        bytes(&mut buf, 2, v.to_string().as_bytes());
        buf
    }

    /// `repeated NamedAny vendor_extension` for the `x-` keys of `m`.
    fn extensions(buf: &mut Vec<u8>, field: u32, m: &Map<String, Value>) {
        for (k, v) in m.iter().filter(|(k, _)| k.starts_with("x-")) {
            let mut named = Vec::new();
            bytes(&mut named, 1, k.as_bytes());
            bytes(&mut named, 2, &any(v));
            bytes(buf, field, &named);
        }
    }

    fn named(name: &str, value: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        bytes(&mut buf, 1, name.as_bytes());
        bytes(&mut buf, 2, value);
        buf
    }

    fn schema(v: &Value) -> Vec<u8> {
        let mut buf = Vec::new();
        let Value::Object(m) = v else { return buf };
        string(&mut buf, 1, m.get("$ref"));
        string(&mut buf, 2, m.get("format"));
        string(&mut buf, 3, m.get("title"));
        string(&mut buf, 4, m.get("description"));
        if let Some(d) = m.get("default") {
            bytes(&mut buf, 5, &any(d));
        }
        double(&mut buf, 6, m.get("multipleOf"));
        double(&mut buf, 7, m.get("maximum"));
        boolean(&mut buf, 8, m.get("exclusiveMaximum"));
        double(&mut buf, 9, m.get("minimum"));
        boolean(&mut buf, 10, m.get("exclusiveMinimum"));
        int64(&mut buf, 11, m.get("maxLength"));
        int64(&mut buf, 12, m.get("minLength"));
        string(&mut buf, 13, m.get("pattern"));
        int64(&mut buf, 14, m.get("maxItems"));
        int64(&mut buf, 15, m.get("minItems"));
        boolean(&mut buf, 16, m.get("uniqueItems"));
        int64(&mut buf, 17, m.get("maxProperties"));
        int64(&mut buf, 18, m.get("minProperties"));
        strings(&mut buf, 19, m.get("required"));
        if let Some(Value::Array(values)) = m.get("enum") {
            values.iter().for_each(|e| bytes(&mut buf, 20, &any(e)));
        }
        match m.get("additionalProperties") {
            Some(s @ Value::Object(_)) => {
                let mut item = Vec::new();
                bytes(&mut item, 1, &schema(s));
                bytes(&mut buf, 21, &item);
            }
            Some(b @ Value::Bool(_)) => {
                let mut item = Vec::new();
                boolean(&mut item, 2, Some(b));
                bytes(&mut buf, 21, &item);
            }
            _ => {}
        }
        if let Some(t) = m.get("type") {
            let mut item = Vec::new();
            strings(&mut item, 1, Some(t));
            bytes(&mut buf, 22, &item);
        }
        match m.get("items") {
            Some(s @ Value::Object(_)) => {
                let mut item = Vec::new();
                bytes(&mut item, 1, &schema(s));
                bytes(&mut buf, 23, &item);
            }
            Some(Value::Array(list)) => {
                let mut item = Vec::new();
                list.iter().for_each(|s| bytes(&mut item, 1, &schema(s)));
                bytes(&mut buf, 23, &item);
            }
            _ => {}
        }
        if let Some(Value::Array(list)) = m.get("allOf") {
            list.iter().for_each(|s| bytes(&mut buf, 24, &schema(s)));
        }
        if let Some(Value::Object(props)) = m.get("properties") {
            let mut item = Vec::new();
            for (name, s) in props {
                bytes(&mut item, 1, &named(name, &schema(s)));
            }
            bytes(&mut buf, 25, &item);
        }
        boolean(&mut buf, 27, m.get("readOnly"));
        if let Some(Value::Object(docs)) = m.get("externalDocs") {
            let mut item = Vec::new();
            string(&mut item, 1, docs.get("description"));
            string(&mut item, 2, docs.get("url"));
            bytes(&mut buf, 29, &item);
        }
        if let Some(e) = m.get("example") {
            bytes(&mut buf, 30, &any(e));
        }
        extensions(&mut buf, 31, m);
        buf
    }

    /// `ParametersItem { Parameter parameter = 1; }` with a body or a query/path parameter.
    fn parameter(v: &Value) -> Vec<u8> {
        let mut p = Vec::new();
        match v.get("in").and_then(Value::as_str) {
            Some("body") => {
                let mut body = Vec::new();
                string(&mut body, 1, v.get("description"));
                string(&mut body, 2, v.get("name"));
                string(&mut body, 3, v.get("in"));
                boolean(&mut body, 4, v.get("required"));
                if let Some(s) = v.get("schema") {
                    bytes(&mut body, 5, &schema(s));
                }
                bytes(&mut p, 1, &body);
            }
            location => {
                // QueryParameterSubSchema and PathParameterSubSchema share 1..4; type is 6 / 5.
                let (which, type_field, unique_field) = if location == Some("path") {
                    (4, 5, 19)
                } else {
                    (3, 6, 20)
                };
                let mut sub = Vec::new();
                boolean(&mut sub, 1, v.get("required"));
                string(&mut sub, 2, v.get("in"));
                string(&mut sub, 3, v.get("description"));
                string(&mut sub, 4, v.get("name"));
                string(&mut sub, type_field, v.get("type"));
                boolean(&mut sub, unique_field, v.get("uniqueItems"));
                let mut non_body = Vec::new();
                bytes(&mut non_body, which, &sub);
                bytes(&mut p, 2, &non_body);
            }
        }
        let mut item = Vec::new();
        bytes(&mut item, 1, &p);
        item
    }

    fn operation(v: &Value) -> Vec<u8> {
        let mut buf = Vec::new();
        let Value::Object(m) = v else { return buf };
        strings(&mut buf, 1, m.get("tags"));
        string(&mut buf, 3, m.get("description"));
        string(&mut buf, 5, m.get("operationId"));
        strings(&mut buf, 6, m.get("produces"));
        strings(&mut buf, 7, m.get("consumes"));
        if let Some(Value::Array(params)) = m.get("parameters") {
            params
                .iter()
                .for_each(|p| bytes(&mut buf, 8, &parameter(p)));
        }
        if let Some(Value::Object(responses)) = m.get("responses") {
            let mut item = Vec::new();
            for (code, r) in responses {
                let mut response = Vec::new();
                string(&mut response, 1, r.get("description"));
                if let Some(s) = r.get("schema") {
                    let mut schema_item = Vec::new();
                    bytes(&mut schema_item, 1, &schema(s));
                    bytes(&mut response, 2, &schema_item);
                }
                let mut value = Vec::new();
                bytes(&mut value, 1, &response);
                bytes(&mut item, 1, &named(code, &value));
            }
            bytes(&mut buf, 9, &item);
        }
        strings(&mut buf, 10, m.get("schemes"));
        extensions(&mut buf, 13, m);
        buf
    }

    fn path_item(v: &Value) -> Vec<u8> {
        let mut buf = Vec::new();
        let Value::Object(m) = v else { return buf };
        for (method, field) in [
            ("get", 2),
            ("put", 3),
            ("post", 4),
            ("delete", 5),
            ("options", 6),
            ("head", 7),
            ("patch", 8),
        ] {
            if let Some(op) = m.get(method) {
                bytes(&mut buf, field, &operation(op));
            }
        }
        if let Some(Value::Array(params)) = m.get("parameters") {
            params
                .iter()
                .for_each(|p| bytes(&mut buf, 9, &parameter(p)));
        }
        extensions(&mut buf, 10, m);
        buf
    }

    pub(super) fn document(doc: &Value) -> Vec<u8> {
        let mut buf = Vec::new();
        string(&mut buf, 1, doc.get("swagger"));
        if let Some(info) = doc.get("info") {
            let mut item = Vec::new();
            string(&mut item, 1, info.get("title"));
            string(&mut item, 2, info.get("version"));
            bytes(&mut buf, 2, &item);
        }
        if let Some(Value::Object(paths)) = doc.get("paths") {
            let mut item = Vec::new();
            for (path, v) in paths {
                bytes(&mut item, 2, &named(path, &path_item(v)));
            }
            bytes(&mut buf, 8, &item);
        }
        if let Some(Value::Object(defs)) = doc.get("definitions") {
            let mut item = Vec::new();
            for (name, v) in defs {
                bytes(&mut item, 1, &named(name, &schema(v)));
            }
            bytes(&mut buf, 9, &item);
        }
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin(
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        namespaced: bool,
    ) -> OpenApiResource {
        OpenApiResource {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced,
            verbs: [
                "create", "delete", "get", "list", "patch", "update", "watch",
            ]
            .map(String::from)
            .to_vec(),
            schema: None,
        }
    }

    fn crontab() -> OpenApiResource {
        OpenApiResource {
            schema: Some(json!({
                "type": "object",
                "properties": {
                    "spec": {"type": "object", "properties": {
                        "cronSpec": {"type": "string", "description": "when to run"},
                        "replicas": {"type": "integer"},
                        "tags": {"type": "array"},
                        "anything": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                    }},
                },
            })),
            ..builtin("stable.example.com", "v1", "CronTab", "crontabs", true)
        }
    }

    fn sample() -> OpenApi {
        OpenApi::build(&[
            builtin("", "v1", "Pod", "pods", true),
            builtin("", "v1", "Namespace", "namespaces", false),
            builtin("", "v1", "Service", "services", true),
            builtin("apps", "v1", "Deployment", "deployments", true),
            builtin(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
                "customresourcedefinitions",
                false,
            ),
            builtin("", "v1", "Pod", "pods/status", true),
            crontab(),
        ])
    }

    fn assert_refs_resolve(v: &Value, prefix: &str, defs: &Map<String, Value>) {
        let mut refs = BTreeSet::new();
        collect_refs(v, &mut refs);
        assert!(!refs.is_empty());
        let text = v.to_string();
        for name in refs {
            assert!(defs.contains_key(&name), "dangling $ref {name}");
            assert!(
                text.contains(&format!("\"{prefix}{name}\"")),
                "$ref to {name} not under {prefix}"
            );
        }
    }

    #[test]
    fn v2_has_kinds_with_gvk_and_resolving_refs() {
        let api = sample();
        let v2: Value = serde_json::from_slice(api.v2()).expect("v2 parses");
        assert_eq!(v2["swagger"], "2.0");
        let defs = v2["definitions"].as_object().expect("definitions");
        let pod = &defs["io.k8s.api.core.v1.Pod"];
        assert_eq!(
            pod[GVK_EXT],
            json!([{"group": "", "version": "v1", "kind": "Pod"}])
        );
        assert!(
            pod.get("required").is_none(),
            "metadata is not required upstream"
        );
        assert_eq!(
            defs["io.k8s.api.apps.v1.Deployment"][GVK_EXT][0]["group"],
            "apps"
        );
        assert_eq!(
            defs["io.k8s.api.core.v1.PodList"][GVK_EXT][0]["kind"],
            "PodList"
        );
        assert_refs_resolve(&v2, "#/definitions/", defs);
        assert!(!v2.to_string().contains("#/components/"));
        assert_eq!(defs[QUANTITY]["type"], "string");
        assert_eq!(defs[INT_OR_STRING]["format"], "int-or-string");
        assert!(
            v2["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"]["consumes"]
                .as_array()
                .is_some_and(|c| c.contains(&json!("application/strategic-merge-patch+json")))
        );
        assert!(v2["paths"]
            .get("/api/v1/namespaces/{namespace}/pods/status")
            .is_none());
    }

    #[test]
    fn patch_metadata_is_transcribed() {
        let v2: Value = serde_json::from_slice(sample().v2()).expect("v2 parses");
        let containers =
            &v2["definitions"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        let volumes = &v2["definitions"]["io.k8s.api.core.v1.PodSpec"]["properties"]["volumes"];
        assert_eq!(volumes["x-kubernetes-patch-strategy"], "merge,retainKeys");
        let ports = &v2["definitions"]["io.k8s.api.core.v1.Container"]["properties"]["ports"];
        assert_eq!(ports["x-kubernetes-patch-merge-key"], "containerPort");
        let owners = &v2["definitions"][OBJECT_META]["properties"]["ownerReferences"];
        assert_eq!(owners["x-kubernetes-patch-merge-key"], "uid");
        // every entry of the table names a field k8s-openapi knows, unless it is newer than v1.33
        for (def, field, _, _) in PATCH_METADATA {
            if let Some(d) = builtins().definitions.get(*def) {
                assert!(d["properties"].get(*field).is_some(), "{def}.{field}");
            }
        }
    }

    #[test]
    fn v3_index_and_group_versions() {
        let api = sample();
        let index = api.v3_index();
        for gv in ["api/v1", "apis/apps/v1", "apis/stable.example.com/v1"] {
            let url = index["paths"][gv]["serverRelativeURL"].as_str().expect(gv);
            let etag = api.etag(&format!("/openapi/v3/{gv}")).expect("etag");
            assert_eq!(url, format!("/openapi/v3/{gv}?hash={etag}"));
        }
        let core: Value = serde_json::from_slice(api.v3_group_version("api/v1").expect("api/v1"))
            .expect("parses");
        assert_eq!(core["openapi"], "3.0.0");
        let schemas = core["components"]["schemas"].as_object().expect("schemas");
        let image = &schemas["io.k8s.api.core.v1.Container"]["properties"]["image"];
        assert!(image["description"].as_str().is_some_and(|d| !d.is_empty()));
        assert!(schemas.get("io.k8s.api.apps.v1.Deployment").is_none());
        assert_refs_resolve(&core, "#/components/schemas/", schemas);
        let metadata = &schemas["io.k8s.api.core.v1.Pod"]["properties"]["metadata"];
        assert_eq!(
            metadata["allOf"][0]["$ref"],
            format!("#/components/schemas/{OBJECT_META}")
        );
        let op = &core["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(
            op[GVK_EXT],
            json!({"group": "", "version": "v1", "kind": "Pod"})
        );
        assert!(op["requestBody"]["content"]
            .get("application/strategic-merge-patch+json")
            .is_some());
        assert!(op["parameters"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == "fieldValidation")));

        let apps: Value =
            serde_json::from_slice(api.v3_group_version("apis/apps/v1").expect("apps"))
                .expect("parses");
        let apps_schemas = apps["components"]["schemas"].as_object().expect("schemas");
        assert!(apps_schemas.contains_key("io.k8s.api.core.v1.PodSpec"));
        assert_refs_resolve(&apps, "#/components/schemas/", apps_schemas);
        assert!(api.v3_group_version("apis/nope/v1").is_none());
    }

    #[test]
    fn custom_resources_are_published() {
        let api = sample();
        let v2: Value = serde_json::from_slice(api.v2()).expect("v2 parses");
        let crontab = &v2["definitions"]["com.example.stable.v1.CronTab"];
        assert_eq!(crontab[GVK_EXT][0]["kind"], "CronTab");
        assert_eq!(
            crontab["properties"]["metadata"]["$ref"],
            def_ref(OBJECT_META)
        );
        assert!(
            crontab["properties"]["spec"]["properties"]["tags"]
                .get("type")
                .is_none(),
            "v2 arrays need items"
        );
        let patch = &v2["paths"]
            ["/apis/stable.example.com/v1/namespaces/{namespace}/crontabs/{name}"]["patch"];
        assert!(!patch["consumes"].to_string().contains("strategic"));

        let doc: Value = serde_json::from_slice(
            api.v3_group_version("apis/stable.example.com/v1")
                .expect("crd gv"),
        )
        .expect("parses");
        let schema = &doc["components"]["schemas"]["com.example.stable.v1.CronTab"];
        assert_eq!(
            schema["properties"]["spec"]["properties"]["cronSpec"]["description"],
            "when to run"
        );
        assert!(doc["components"]["schemas"].get(OBJECT_META).is_some());
        assert_eq!(
            custom_definition_name("stable.example.com", "v1", "CronTab"),
            "com.example.stable.v1.CronTab"
        );
    }

    #[test]
    fn documents_are_deterministic_and_etags_track_content() {
        let a = sample();
        let b = sample();
        assert_eq!(a.v2(), b.v2());
        assert_eq!(a.etag("/openapi/v2"), b.etag("/openapi/v2"));
        let without_crd = OpenApi::build(&[builtin("", "v1", "Pod", "pods", true)]);
        assert_ne!(a.etag("/openapi/v3"), without_crd.etag("/openapi/v3"));
        assert!(a.etag("/openapi/v3/api/v1?hash=x").is_some());
        assert_eq!(
            a.v2_for_accept(Some(V2_PROTOBUF)).0,
            V2_PROTOBUF_CONTENT_TYPE
        );
        assert_eq!(
            a.v2_for_accept(Some("application/json")).0,
            "application/json"
        );
    }

    #[test]
    fn protobuf_starts_with_the_swagger_version() {
        let api = sample();
        let pb = api.v2_protobuf();
        assert_eq!(&pb[..5], b"\x0a\x032.0");
        assert!(pb.len() > 100_000);
    }
}
