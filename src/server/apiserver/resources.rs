//! The resources the API server serves: the built-in kinds (from [`for_each_builtin!`]) and the
//! custom resources that registered CustomResourceDefinitions define, kept up to date as CRDs
//! come and go.
//!
//! Owns the facts discovery, OpenAPI and the REST handlers need about a resource (group,
//! version, kind, plural, scope, verbs, subresources). It does not touch the store.

use std::any::TypeId;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use kube::core::GroupVersionKind;
use serde_json::Value;

/// Where a custom resource's scale subresource reads and writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalePaths {
    /// JSON path of the desired replicas, e.g. `.spec.replicas`.
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// What a CRD says about one served version of its resource.
#[derive(Clone, Debug, PartialEq)]
pub struct CustomInfo {
    /// The version objects are stored in.
    pub storage_version: String,
    pub scale: Option<ScalePaths>,
    pub printer_columns: Vec<Value>,
    pub schema: Option<Value>,
    /// The CRD's name, `<plural>.<group>`.
    pub crd_name: String,
}

/// One resource in one group-version.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceInfo {
    /// API group; empty for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    pub list_kind: String,
    /// The URL segment, e.g. `deployments`.
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Implemented subresources: `status`, `scale`, `binding`.
    pub subresources: Vec<String>,
    /// `None` for built-in kinds.
    pub custom: Option<CustomInfo>,
}

impl ResourceInfo {
    /// `apps/v1`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn gvk(&self) -> GroupVersionKind {
        GroupVersionKind::gvk(&self.group, &self.version, &self.kind)
    }

    pub fn is_builtin(&self) -> bool {
        self.custom.is_none()
    }

    pub fn has_subresource(&self, name: &str) -> bool {
        self.subresources.iter().any(|s| s == name)
    }

    /// The verbs discovery advertises.
    pub fn verbs(&self) -> Vec<&'static str> {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }

    /// The group's segment in store keys (`core` for the core group).
    pub fn storage_group(&self) -> &str {
        if self.group.is_empty() || self.is_events_v1() {
            // events.k8s.io/v1 Events are a view of the core Events, as in Kubernetes: both
            // APIs read and write the same objects (see objects::encode/decode).
            "core"
        } else {
            &self.group
        }
    }

    /// `events.k8s.io` Events, stored as core/v1 Events.
    pub fn is_events_v1(&self) -> bool {
        self.group == "events.k8s.io" && self.plural == "events"
    }

    /// Whether `metadata.generation` is maintained (it is for kinds whose spec a controller
    /// acts on, and for every custom resource), as Kubernetes' registry strategies do.
    pub fn tracks_generation(&self) -> bool {
        if self.custom.is_some() {
            return true;
        }
        matches!(
            (self.group.as_str(), self.plural.as_str()),
            ("apps", _)
                | ("batch", _)
                | ("networking.k8s.io", "ingresses" | "networkpolicies")
                | ("policy", "poddisruptionbudgets")
                | ("apiextensions.k8s.io", _)
                | ("", "services" | "replicationcontrollers")
        )
    }

    /// Whether the main resource ignores changes to `status` (they go through `/status`).
    pub fn status_is_subresource(&self) -> bool {
        self.has_subresource("status")
    }
}

fn is_namespaced<S: 'static>() -> bool {
    TypeId::of::<S>() == TypeId::of::<k8s_openapi::NamespaceResourceScope>()
}

fn builtin<K>(short: &[&str], categories: &[&str], subresources: &[&str]) -> ResourceInfo
where
    K: k8s_openapi::Resource,
    K::Scope: 'static,
{
    ResourceInfo {
        group: K::GROUP.to_string(),
        version: K::VERSION.to_string(),
        kind: K::KIND.to_string(),
        list_kind: format!("{}List", K::KIND),
        plural: K::URL_PATH_SEGMENT.to_string(),
        singular: K::KIND.to_ascii_lowercase(),
        namespaced: is_namespaced::<K::Scope>(),
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: categories.iter().map(|s| s.to_string()).collect(),
        subresources: subresources.iter().map(|s| s.to_string()).collect(),
        custom: None,
    }
}

/// Every built-in resource.
pub fn builtin_resources() -> Vec<ResourceInfo> {
    let mut out = Vec::new();
    macro_rules! push {
        ($ty:ty, [$($short:expr),*], [$($cat:expr),*], [$($sub:expr),*]) => {
            out.push(builtin::<$ty>(&[$($short),*], &[$($cat),*], &[$($sub),*]));
        };
    }
    crate::for_each_builtin!(push);
    out
}

/// The served resources; cheap to share. Custom resources change at run time, and
/// [`Resources::generation`] moves each time so that caches (discovery, OpenAPI) know.
#[derive(Debug)]
pub struct Resources {
    builtin: Vec<Arc<ResourceInfo>>,
    custom: RwLock<Vec<Arc<ResourceInfo>>>,
    generation: AtomicU64,
}

impl Default for Resources {
    fn default() -> Self {
        Resources::new()
    }
}

impl Resources {
    pub fn new() -> Resources {
        Resources {
            builtin: builtin_resources().into_iter().map(Arc::new).collect(),
            custom: RwLock::new(Vec::new()),
            generation: AtomicU64::new(1),
        }
    }

    /// The resource served at `/apis/<group>/<version>/<plural>` (or `/api/v1/<plural>`).
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        let matches =
            |r: &&Arc<ResourceInfo>| r.group == group && r.version == version && r.plural == plural;
        if let Some(found) = self.builtin.iter().find(matches) {
            return Some(Arc::clone(found));
        }
        let custom = self.custom.read().unwrap_or_else(|p| p.into_inner());
        custom.iter().find(matches).cloned()
    }

    /// The resource of a kind in a group-version.
    pub fn find_kind(&self, group: &str, version: &str, kind: &str) -> Option<Arc<ResourceInfo>> {
        self.all()
            .into_iter()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
    }

    /// Built-in resources first, then custom ones.
    pub fn all(&self) -> Vec<Arc<ResourceInfo>> {
        let custom = self.custom.read().unwrap_or_else(|p| p.into_inner());
        self.builtin.iter().chain(custom.iter()).cloned().collect()
    }

    /// Replaces the custom resources (derived from the CRDs in the store).
    pub fn set_custom(&self, resources: Vec<ResourceInfo>) {
        let mut custom = self.custom.write().unwrap_or_else(|p| p.into_inner());
        let new: Vec<Arc<ResourceInfo>> = resources.into_iter().map(Arc::new).collect();
        if *custom != new {
            *custom = new;
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Whether a group-version is served at all.
    pub fn serves_group_version(&self, group: &str, version: &str) -> bool {
        self.all()
            .iter()
            .any(|r| r.group == group && r.version == version)
    }
}

/// The resources a CRD (as JSON) defines: one per served version. CRDs that are being deleted
/// still serve (so that their objects can be cleaned up).
pub fn resources_of_crd(crd: &Value) -> Vec<ResourceInfo> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let (Some(group), Some(kind), Some(plural)) = (
        spec["group"].as_str(),
        names["kind"].as_str(),
        names["plural"].as_str(),
    ) else {
        return Vec::new();
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    let storage_version = versions
        .iter()
        .find(|v| v["storage"].as_bool() == Some(true))
        .and_then(|v| v["name"].as_str())
        .unwrap_or_default()
        .to_string();
    let mut out = Vec::new();
    for version in &versions {
        if version["served"].as_bool() != Some(true) {
            continue;
        }
        let Some(name) = version["name"].as_str() else {
            continue;
        };
        let sub = &version["subresources"];
        let mut subresources = Vec::new();
        if sub["status"].is_object() {
            subresources.push("status".to_string());
        }
        let scale = sub["scale"].as_object().map(|scale| ScalePaths {
            spec_replicas: scale
                .get("specReplicasPath")
                .and_then(Value::as_str)
                .unwrap_or(".spec.replicas")
                .to_string(),
            status_replicas: scale
                .get("statusReplicasPath")
                .and_then(Value::as_str)
                .unwrap_or(".status.replicas")
                .to_string(),
            label_selector: scale
                .get("labelSelectorPath")
                .and_then(Value::as_str)
                .map(String::from),
        });
        if scale.is_some() {
            subresources.push("scale".to_string());
        }
        out.push(ResourceInfo {
            group: group.to_string(),
            version: name.to_string(),
            kind: kind.to_string(),
            list_kind: names["listKind"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| format!("{kind}List")),
            plural: plural.to_string(),
            singular: names["singular"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| kind.to_ascii_lowercase()),
            namespaced: spec["scope"].as_str() != Some("Cluster"),
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            subresources,
            custom: Some(CustomInfo {
                storage_version: storage_version.clone(),
                scale,
                printer_columns: version["additionalPrinterColumns"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
                schema: version["schema"]["openAPIV3Schema"]
                    .is_object()
                    .then(|| version["schema"]["openAPIV3Schema"].clone()),
                crd_name: format!("{plural}.{group}"),
            }),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builtins_carry_scope_and_plural_from_the_types() {
        let resources = Resources::new();
        let pods = resources.find("", "v1", "pods").expect("pods");
        assert!(pods.namespaced);
        assert_eq!(pods.kind, "Pod");
        assert_eq!(pods.short_names, vec!["po"]);
        let nodes = resources.find("", "v1", "nodes").expect("nodes");
        assert!(!nodes.namespaced);
        let deploy = resources
            .find("apps", "v1", "deployments")
            .expect("deployments");
        assert_eq!(deploy.api_version(), "apps/v1");
        assert!(deploy.has_subresource("scale"));
        assert!(resources.find("apps", "v1", "pods").is_none());
    }

    #[test]
    fn a_crd_defines_one_resource_per_served_version() {
        let crd = json!({
            "spec": {
                "group": "stable.example.com",
                "scope": "Namespaced",
                "names": {"plural": "crontabs", "singular": "crontab", "kind": "CronTab", "shortNames": ["ct"]},
                "versions": [
                    {"name": "v1", "served": true, "storage": true,
                     "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                     "schema": {"openAPIV3Schema": {"type": "object"}}},
                    {"name": "v2", "served": false, "storage": false}
                ]
            }
        });
        let defined = resources_of_crd(&crd);
        assert_eq!(defined.len(), 1);
        let r = &defined[0];
        assert_eq!(
            (r.group.as_str(), r.version.as_str(), r.plural.as_str()),
            ("stable.example.com", "v1", "crontabs")
        );
        assert_eq!(r.list_kind, "CronTabList");
        assert_eq!(r.subresources, vec!["status", "scale"]);
        let resources = Resources::new();
        let before = resources.generation();
        resources.set_custom(defined);
        assert!(resources.generation() > before);
        assert!(resources
            .find("stable.example.com", "v1", "crontabs")
            .is_some());
    }
}
