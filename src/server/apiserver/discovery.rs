//! API discovery, as clients find what the server serves: `/api`, `/apis`, `/api/v1`,
//! `/apis/<group>`, `/apis/<group>/<version>`, the aggregated form (`apidiscovery.k8s.io`
//! `APIGroupDiscoveryList`, v2 and v2beta1) and `/version`.
//!
//! Built from [`Resources`] on every request (cheap), so CRDs appear and disappear live.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use serde_json::{json, Value};

use super::resources::{ResourceInfo, Resources};

/// The Kubernetes version this server implements (its API types are k8s-openapi's v1_33).
pub const KUBERNETES_MINOR: &str = "33";

/// The `/version` document.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": KUBERNETES_MINOR,
        "gitVersion": format!("v1.{KUBERNETES_MINOR}.0+cluster.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": option_env!("CLUSTER_GIT_COMMIT").unwrap_or("unknown"),
        "gitTreeState": "clean",
        "buildDate": option_env!("CLUSTER_BUILD_DATE").unwrap_or("1970-01-01T00:00:00Z"),
        "goVersion": "n/a (rust)",
        "compiler": "rustc",
        "platform": format!("linux/{}", go_arch()),
    })
}

/// The architecture as Kubernetes (Go) names it.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

/// Which aggregated-discovery version the client asked for, if any (newest first).
pub fn aggregated_version(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(axum::http::header::ACCEPT)?.to_str().ok()?;
    for media in accept.split(',') {
        let params: BTreeMap<&str, &str> = media
            .split(';')
            .skip(1)
            .filter_map(|p| p.trim().split_once('='))
            .collect();
        if params.get("g") == Some(&"apidiscovery.k8s.io")
            && params.get("as") == Some(&"APIGroupDiscoveryList")
        {
            match params.get("v") {
                Some(&"v2") => return Some("v2"),
                Some(&"v2beta1") => return Some("v2beta1"),
                _ => {}
            }
        }
    }
    None
}

/// The content type of an aggregated discovery response.
pub fn aggregated_content_type(version: &str) -> String {
    format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList")
}

/// Groups in the order discovery lists them: by group name, with the served versions of each.
fn groups(
    resources: &Resources,
) -> BTreeMap<String, BTreeMap<String, Vec<std::sync::Arc<ResourceInfo>>>> {
    let mut groups: BTreeMap<String, BTreeMap<String, Vec<_>>> = BTreeMap::new();
    for r in resources.all() {
        groups
            .entry(r.group.clone())
            .or_default()
            .entry(r.version.clone())
            .or_default()
            .push(r);
    }
    groups
}

/// Versions newest first as Kubernetes orders them (v2 > v1 > v1beta1 > v1alpha1).
fn sorted_versions(versions: &BTreeMap<String, Vec<std::sync::Arc<ResourceInfo>>>) -> Vec<String> {
    let mut names: Vec<String> = versions.keys().cloned().collect();
    names.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
    names
}

fn version_priority(version: &str) -> (u32, u32, u32) {
    let rest = version.trim_start_matches('v');
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let major = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    let (stability, minor) = if tail.is_empty() {
        (3, 0)
    } else if let Some(n) = tail.strip_prefix("beta") {
        (2, n.parse().unwrap_or(0))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, n.parse().unwrap_or(0))
    } else {
        (0, 0)
    };
    (stability, major, minor)
}

/// `GET /api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_entry(name: &str, versions: &[String]) -> Value {
    let list: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({
        "name": name,
        "versions": list,
        "preferredVersion": list.first().cloned().unwrap_or(Value::Null),
    })
}

/// `GET /apis`.
pub fn group_list(resources: &Resources) -> Value {
    let groups: Vec<Value> = groups(resources)
        .iter()
        .filter(|(name, _)| !name.is_empty())
        .map(|(name, versions)| group_entry(name, &sorted_versions(versions)))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<group>`.
pub fn group(resources: &Resources, name: &str) -> Option<Value> {
    let groups = groups(resources);
    let versions = groups.get(name).filter(|_| !name.is_empty())?;
    let mut entry = group_entry(name, &sorted_versions(versions));
    entry["kind"] = json!("APIGroup");
    entry["apiVersion"] = json!("v1");
    Some(entry)
}

fn subresource_verbs(sub: &str) -> Vec<&'static str> {
    match sub {
        "binding" => vec!["create"],
        // Served by the kubelet through the API server's proxy.
        "log" => vec!["get"],
        "exec" | "attach" | "portforward" => vec!["create", "get"],
        "proxy" => vec!["create", "delete", "get", "patch", "update"],
        _ => vec!["get", "patch", "update"],
    }
}

fn subresource_kind(info: &ResourceInfo, sub: &str) -> (String, String, String) {
    match sub {
        "scale" => ("autoscaling".into(), "v1".into(), "Scale".into()),
        "binding" => (String::new(), "v1".into(), "Binding".into()),
        "exec" => (String::new(), "v1".into(), "PodExecOptions".into()),
        "attach" => (String::new(), "v1".into(), "PodAttachOptions".into()),
        "portforward" => (String::new(), "v1".into(), "PodPortForwardOptions".into()),
        "proxy" if info.kind == "Node" => (String::new(), "v1".into(), "NodeProxyOptions".into()),
        _ => (info.group.clone(), info.version.clone(), info.kind.clone()),
    }
}

/// `GET /api/v1` or `/apis/<group>/<version>`.
pub fn resource_list(resources: &Resources, group: &str, version: &str) -> Option<Value> {
    let served: Vec<_> = resources
        .all()
        .into_iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut list = Vec::new();
    for r in &served {
        list.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
            "shortNames": r.short_names,
            "categories": r.categories,
        }));
        for sub in &r.subresources {
            let (g, v, k) = subresource_kind(r, sub);
            let mut entry = json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": k,
                "verbs": subresource_verbs(sub),
            });
            if g != r.group || v != r.version {
                entry["group"] = json!(g);
                entry["version"] = json!(v);
            }
            list.push(entry);
        }
    }
    if group.is_empty() {
        list.push(json!({
            "name": "bindings", "singularName": "binding", "namespaced": true, "kind": "Binding", "verbs": ["create"],
        }));
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": list,
    }))
}

fn discovery_resource(r: &ResourceInfo) -> Value {
    let subresources: Vec<Value> = r
        .subresources
        .iter()
        .map(|sub| {
            let (g, v, k) = subresource_kind(r, sub);
            json!({
                "subresource": sub,
                "responseKind": {"group": g, "version": v, "kind": k},
                "verbs": subresource_verbs(sub),
            })
        })
        .collect();
    let mut entry = json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": r.verbs(),
    });
    if !r.short_names.is_empty() {
        entry["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        entry["categories"] = json!(r.categories);
    }
    if !subresources.is_empty() {
        entry["subresources"] = json!(subresources);
    }
    entry
}

/// Aggregated discovery: for `/api` (`core` true: the legacy core group only) or `/apis`.
pub fn aggregated(resources: &Resources, core: bool, version: &str) -> Value {
    let items: Vec<Value> = groups(resources)
        .iter()
        .filter(|(name, _)| name.is_empty() == core)
        .map(|(name, versions)| {
            let versions: Vec<Value> = sorted_versions(versions)
                .iter()
                .map(|v| {
                    let mut list: Vec<Value> = versions[v].iter().map(|r| discovery_resource(r)).collect();
                    if name.is_empty() {
                        list.push(json!({
                            "resource": "bindings",
                            "responseKind": {"group": "", "version": "v1", "kind": "Binding"},
                            "scope": "Namespaced", "singularResource": "binding", "verbs": ["create"],
                        }));
                    }
                    json!({"version": v, "resources": list, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": name, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_like_kubernetes() {
        let mut v = vec!["v1beta1", "v1", "v2alpha1", "v2", "v1alpha1"];
        v.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        assert_eq!(v, vec!["v2", "v1", "v1beta1", "v2alpha1", "v1alpha1"]);
    }

    #[test]
    fn discovery_lists_groups_resources_and_subresources() {
        let resources = Resources::new();
        let groups = group_list(&resources);
        let names: Vec<&str> = groups["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .filter_map(|g| g["name"].as_str())
            .collect();
        assert!(names.contains(&"apps") && names.contains(&"batch") && !names.contains(&""));
        let core = resource_list(&resources, "", "v1").expect("core");
        let names: Vec<&str> = core["resources"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert!(
            names.contains(&"pods")
                && names.contains(&"pods/status")
                && names.contains(&"pods/binding")
        );
        let apps = resource_list(&resources, "apps", "v1").expect("apps");
        let scale = apps["resources"]
            .as_array()
            .expect("list")
            .iter()
            .find(|r| r["name"] == "deployments/scale")
            .expect("scale");
        assert_eq!(scale["group"], "autoscaling");
        let agg = aggregated(&resources, false, "v2");
        assert_eq!(agg["apiVersion"], "apidiscovery.k8s.io/v2");
        let agg_core = aggregated(&resources, true, "v2");
        assert_eq!(agg_core["items"][0]["metadata"]["name"], "");
    }

    #[test]
    fn aggregated_accept_is_recognised() {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::ACCEPT,
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
                .parse()
                .expect("header"),
        );
        assert_eq!(aggregated_version(&headers), Some("v2"));
        headers.insert(
            axum::http::header::ACCEPT,
            "application/json".parse().expect("header"),
        );
        assert_eq!(aggregated_version(&headers), None);
    }
}
