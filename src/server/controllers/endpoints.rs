//! The endpoints controller: one `Endpoints` object per Service with a selector, listing the
//! IPs and resolved target ports of the pods it selects (pkg/controller/endpoint).
//!
//! Ready pods go to `addresses`, others to `notReadyAddresses` (all to `addresses` with
//! `publishNotReadyAddresses`); terminating and terminal pods are left out (terminating ones
//! stay with `publishNotReadyAddresses`). Named target ports are resolved per pod through its
//! container ports; a pod without the named port is left out of that port's subset. Services
//! without a selector are not touched (their Endpoints belong to someone else).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::resync::{self, Caches, ReconcileError};
use super::Context;

/// Starts the loop.
pub fn start(context: Context, cancel: CancellationToken) -> BoxFuture<'static, ()> {
    run(context, cancel).boxed()
}

async fn run(context: Context, cancel: CancellationToken) {
    let mut caches = Caches::default();
    let client = &context.client;
    let services = caches.cache(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let pods = caches.cache(Api::<Pod>::all(client.clone()), watcher::Config::default());
    let endpoints = caches.cache(
        Api::<Endpoints>::all(client.clone()),
        watcher::Config::default(),
    );
    resync::drive(caches, cancel, Duration::from_secs(30), || {
        let (context, services, pods, endpoints) = (
            context.clone(),
            services.clone(),
            pods.clone(),
            endpoints.clone(),
        );
        async move { reconcile(&context, &services, &pods, &endpoints).await }
    })
    .await;
}

/// A service port: its name, protocol and target (a number or a container port's name).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServicePort {
    pub name: String,
    pub protocol: String,
    pub target: Target,
    pub app_protocol: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Number(i64),
    Named(String),
}

/// The ports of a service as the controllers need them.
pub fn service_ports(service: &Value) -> Vec<ServicePort> {
    service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let target = match &p["targetPort"] {
                Value::String(s) => s
                    .parse::<i64>()
                    .map(Target::Number)
                    .unwrap_or_else(|_| Target::Named(s.clone())),
                Value::Number(n) => Target::Number(n.as_i64().unwrap_or(0)),
                _ => Target::Number(p["port"].as_i64().unwrap_or(0)),
            };
            let target = match target {
                Target::Number(0) => Target::Number(p["port"].as_i64().unwrap_or(0)),
                other => other,
            };
            ServicePort {
                name: p["name"].as_str().unwrap_or_default().to_string(),
                protocol: p["protocol"].as_str().unwrap_or("TCP").to_string(),
                target,
                app_protocol: p["appProtocol"].as_str().map(String::from),
            }
        })
        .collect()
}

/// The port number `port` targets on `pod`, if the pod has it.
pub fn resolve_port(pod: &Value, port: &ServicePort) -> Option<i64> {
    match &port.target {
        Target::Number(n) => Some(*n),
        Target::Named(name) => pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .find(|p| {
                p["name"].as_str() == Some(name.as_str())
                    && p["protocol"].as_str().unwrap_or("TCP") == port.protocol
            })
            .and_then(|p| p["containerPort"].as_i64()),
    }
}

/// What the controllers need to know about a pod behind a service.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub ip: String,
    pub node: Option<String>,
    pub ready: bool,
    pub terminating: bool,
    pub hostname: Option<String>,
    pub reference: Value,
}

/// True when the selector (a plain label map) selects these labels.
pub fn selects(selector: &BTreeMap<String, String>, labels: &Value) -> bool {
    selector
        .iter()
        .all(|(k, v)| labels[k.as_str()].as_str() == Some(v.as_str()))
}

/// The selector of a service, if it has a non-empty one.
pub fn selector_of(service: &Value) -> Option<BTreeMap<String, String>> {
    let map = service["spec"]["selector"].as_object()?;
    let selector: BTreeMap<String, String> = map
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
        .collect();
    (!selector.is_empty()).then_some(selector)
}

/// A pod as a member of `service`, if it may be one at all: it has an IP and has not
/// terminated.
pub fn member(service: &Value, pod: &Value) -> Option<Member> {
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        return None;
    }
    let ip = pod["status"]["podIP"]
        .as_str()
        .filter(|ip| !ip.is_empty())?;
    let ready = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    let service_name = service["metadata"]["name"].as_str().unwrap_or_default();
    let hostname = match (
        pod["spec"]["hostname"].as_str(),
        pod["spec"]["subdomain"].as_str(),
    ) {
        (Some(h), Some(sub)) if sub == service_name && !h.is_empty() => Some(h.to_string()),
        _ => None,
    };
    Some(Member {
        ip: ip.to_string(),
        node: pod["spec"]["nodeName"].as_str().map(String::from),
        ready,
        terminating: pod["metadata"].get("deletionTimestamp").is_some(),
        hostname,
        reference: json!({
            "kind": "Pod",
            "namespace": pod["metadata"]["namespace"],
            "name": pod["metadata"]["name"],
            "uid": pod["metadata"]["uid"],
        }),
    })
}

/// A service port resolved for one pod: name, number, protocol.
type ResolvedPort = (String, i64, String);

/// The desired `subsets` of a service's Endpoints from the pods of its namespace.
pub fn desired_subsets(service: &Value, pods: &[Value]) -> Value {
    let Some(selector) = selector_of(service) else {
        return json!([]);
    };
    let publish = service["spec"]["publishNotReadyAddresses"] == true;
    let ports = service_ports(service);
    let headless = service["spec"]["clusterIP"] == "None";
    // Group addresses by the resolved port set.
    let mut groups: BTreeMap<Vec<ResolvedPort>, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    for pod in pods {
        if !selects(&selector, &pod["metadata"]["labels"]) {
            continue;
        }
        let Some(m) = member(service, pod) else {
            continue;
        };
        if m.terminating && !publish {
            continue;
        }
        let resolved: Vec<ResolvedPort> = ports
            .iter()
            .filter_map(|p| resolve_port(pod, p).map(|n| (p.name.clone(), n, p.protocol.clone())))
            .collect();
        if resolved.is_empty() && !(ports.is_empty() && headless) {
            continue;
        }
        let mut address = json!({"ip": m.ip, "targetRef": m.reference});
        if let Some(node) = &m.node {
            address["nodeName"] = json!(node);
        }
        if let Some(hostname) = &m.hostname {
            address["hostname"] = json!(hostname);
        }
        let entry = groups.entry(resolved).or_default();
        if m.ready || publish {
            entry.0.push(address);
        } else {
            entry.1.push(address);
        }
    }
    let subsets: Vec<Value> = groups
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by(|a, b| a["ip"].as_str().cmp(&b["ip"].as_str()));
            not_ready.sort_by(|a, b| a["ip"].as_str().cmp(&b["ip"].as_str()));
            let mut subset = json!({});
            if !ready.is_empty() {
                subset["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                subset["notReadyAddresses"] = json!(not_ready);
            }
            if !ports.is_empty() {
                subset["ports"] = json!(ports
                    .iter()
                    .map(|(name, port, protocol)| {
                        let mut p = json!({"port": port, "protocol": protocol});
                        if !name.is_empty() {
                            p["name"] = json!(name);
                        }
                        p
                    })
                    .collect::<Vec<_>>());
            }
            subset
        })
        .collect();
    json!(subsets)
}

/// Labels an Endpoints or EndpointSlice carries: the service's, plus the headless marker.
pub fn inherited_labels(service: &Value) -> serde_json::Map<String, Value> {
    let mut labels = service["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    if service["spec"]["clusterIP"] == "None" {
        labels.insert("service.kubernetes.io/headless".into(), json!(""));
    } else {
        labels.remove("service.kubernetes.io/headless");
    }
    labels
}

async fn reconcile(
    context: &Context,
    services: &Store<Service>,
    pods: &Store<Pod>,
    endpoints: &Store<Endpoints>,
) -> Result<Option<Duration>, ReconcileError> {
    let mut pods_by_namespace: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for pod in pods.state() {
        let value = serde_json::to_value(pod.as_ref())?;
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        pods_by_namespace.entry(ns).or_default().push(value);
    }
    let mut existing: BTreeMap<(String, String), Value> = BTreeMap::new();
    for e in endpoints.state() {
        existing.insert(
            (
                e.metadata.namespace.clone().unwrap_or_default(),
                e.metadata.name.clone().unwrap_or_default(),
            ),
            serde_json::to_value(e.as_ref())?,
        );
    }
    let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
    let mut first_error = None;
    for service in services.state() {
        let service = serde_json::to_value(service.as_ref())?;
        let ns = service["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = service["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if selector_of(&service).is_none() || service["spec"]["type"] == "ExternalName" {
            continue;
        }
        wanted.insert((ns.clone(), name.clone()));
        let no_pods = Vec::new();
        let subsets = desired_subsets(&service, pods_by_namespace.get(&ns).unwrap_or(&no_pods));
        let labels = inherited_labels(&service);
        let api = Api::<Endpoints>::namespaced(context.client.clone(), &ns);
        let result = match existing.get(&(ns.clone(), name.clone())) {
            None => {
                let object = json!({
                    "apiVersion": "v1", "kind": "Endpoints",
                    "metadata": {"name": name, "namespace": ns, "labels": labels},
                    "subsets": subsets,
                });
                resync::tolerate(
                    api.create(&PostParams::default(), &serde_json::from_value(object)?)
                        .await,
                    true,
                )
            }
            Some(current) => {
                let current_subsets = current.get("subsets").cloned().unwrap_or(json!([]));
                let current_labels = current["metadata"]["labels"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                if current_subsets == subsets && current_labels == labels {
                    continue;
                }
                let mut next = current.clone();
                next["subsets"] = subsets;
                next["metadata"]["labels"] = json!(labels);
                resync::tolerate(
                    api.replace(
                        &name,
                        &PostParams::default(),
                        &serde_json::from_value(next)?,
                    )
                    .await,
                    true,
                )
            }
        };
        if let Err(err) = result {
            first_error.get_or_insert(err);
        }
    }
    // Endpoints of services that are gone go too (those of selectorless services stay).
    let service_keys: BTreeSet<(String, String)> = services
        .state()
        .iter()
        .map(|s| {
            (
                s.metadata.namespace.clone().unwrap_or_default(),
                s.metadata.name.clone().unwrap_or_default(),
            )
        })
        .collect();
    for (ns, name) in existing.keys() {
        if service_keys.contains(&(ns.clone(), name.clone()))
            || wanted.contains(&(ns.clone(), name.clone()))
        {
            continue;
        }
        let api = Api::<Endpoints>::namespaced(context.client.clone(), ns);
        if let Err(err) = resync::tolerate(api.delete(name, &DeleteParams::default()).await, true) {
            first_error.get_or_insert(err);
        }
    }
    match first_error {
        Some(err) => Err(err.into()),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ready: bool, labels: Value) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "d", "uid": name, "labels": labels},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        })
    }

    #[test]
    fn ready_and_not_ready_pods_with_named_ports() {
        let svc = json!({"metadata": {"name": "web", "namespace": "d"}, "spec": {"selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}, {"name": "raw", "port": 81, "targetPort": 9000}]}});
        let pods = vec![
            pod("a", "10.42.0.2", true, json!({"app": "web"})),
            pod("b", "10.42.0.3", false, json!({"app": "web"})),
            pod("c", "10.42.0.4", true, json!({"app": "other"})),
        ];
        let subsets = desired_subsets(&svc, &pods);
        assert_eq!(subsets.as_array().map(Vec::len), Some(1));
        assert_eq!(subsets[0]["addresses"][0]["ip"], "10.42.0.2");
        assert_eq!(subsets[0]["notReadyAddresses"][0]["ip"], "10.42.0.3");
        let ports: Vec<i64> = subsets[0]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["port"].as_i64())
            .collect();
        assert_eq!(ports, vec![8080, 9000]);
    }

    #[test]
    fn publish_not_ready_and_terminating() {
        let mut svc = json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}});
        let mut gone = pod("a", "10.42.0.2", true, json!({"app": "web"}));
        gone["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        let pods = vec![gone, pod("b", "10.42.0.3", false, json!({"app": "web"}))];
        let subsets = desired_subsets(&svc, &pods);
        assert!(subsets[0].get("addresses").is_none());
        assert_eq!(subsets[0]["notReadyAddresses"][0]["ip"], "10.42.0.3");
        svc["spec"]["publishNotReadyAddresses"] = json!(true);
        let subsets = desired_subsets(&svc, &pods);
        assert_eq!(subsets[0]["addresses"].as_array().map(Vec::len), Some(2));
    }
}
