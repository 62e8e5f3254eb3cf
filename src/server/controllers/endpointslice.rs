//! The EndpointSlice controller: EndpointSlices for every Service with a selector, from the
//! pods it selects (pkg/controller/endpointslice).
//!
//! Each endpoint carries `ready` (Ready and not terminating, or always with
//! `publishNotReadyAddresses`), `serving` (Ready, terminating or not) and `terminating`, its
//! node name and zone (the node's `topology.kubernetes.io/zone`) and a reference to its pod.
//! Pods are grouped into slices by their resolved port set, at most 100 endpoints a slice.
//! Slices are labelled `kubernetes.io/service-name` and
//! `endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io` and owned by
//! their Service; only slices with that managed-by label are ever changed.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::endpoints::{
    inherited_labels, member, resolve_port, selector_of, selects, service_ports,
};
use super::resync::{self, Caches, ReconcileError};
use super::Context;

pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
const MAX_ENDPOINTS: usize = 100;

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
    let nodes = caches.cache(Api::<Node>::all(client.clone()), watcher::Config::default());
    let slices = caches.cache(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(&format!("{MANAGED_BY}={CONTROLLER_NAME}")),
    );
    resync::drive(caches, cancel, Duration::from_secs(30), || {
        let (context, services, pods, nodes, slices) = (
            context.clone(),
            services.clone(),
            pods.clone(),
            nodes.clone(),
            slices.clone(),
        );
        async move { reconcile(&context, &services, &pods, &nodes, &slices).await }
    })
    .await;
}

/// The slices a service should have: (ports, endpoints) per slice, in a stable order.
pub fn desired_slices(
    service: &Value,
    pods: &[Value],
    zones: &BTreeMap<String, String>,
) -> Vec<(Value, Vec<Value>)> {
    let Some(selector) = selector_of(service) else {
        return Vec::new();
    };
    let publish = service["spec"]["publishNotReadyAddresses"] == true;
    let ports = service_ports(service);
    let mut groups: BTreeMap<String, (Value, Vec<Value>)> = BTreeMap::new();
    for pod in pods {
        if !selects(&selector, &pod["metadata"]["labels"]) {
            continue;
        }
        let Some(m) = member(service, pod) else {
            continue;
        };
        if m.ip.contains(':') {
            // Single-stack IPv4 slices.
            continue;
        }
        let resolved: Vec<Value> = ports
            .iter()
            .filter_map(|p| {
                resolve_port(pod, p).map(|n| {
                    let mut port = json!({"name": p.name, "port": n, "protocol": p.protocol});
                    if let Some(app) = &p.app_protocol {
                        port["appProtocol"] = json!(app);
                    }
                    port
                })
            })
            .collect();
        let mut endpoint = json!({
            "addresses": [m.ip],
            "conditions": {
                "ready": publish || (m.ready && !m.terminating),
                "serving": publish || m.ready,
                "terminating": m.terminating,
            },
            "targetRef": m.reference,
        });
        if let Some(node) = &m.node {
            endpoint["nodeName"] = json!(node);
            if let Some(zone) = zones.get(node) {
                endpoint["zone"] = json!(zone);
            }
        }
        if let Some(hostname) = &m.hostname {
            endpoint["hostname"] = json!(hostname);
        }
        let key = json!(resolved).to_string();
        groups
            .entry(key)
            .or_insert_with(|| (json!(resolved), Vec::new()))
            .1
            .push(endpoint);
    }
    let mut out = Vec::new();
    for (_, (ports, mut endpoints)) in groups {
        endpoints.sort_by(|a, b| a["addresses"][0].as_str().cmp(&b["addresses"][0].as_str()));
        for chunk in endpoints.chunks(MAX_ENDPOINTS) {
            out.push((ports.clone(), chunk.to_vec()));
        }
    }
    if out.is_empty() {
        // A service with no endpoints still gets one (empty) slice, as Kubernetes does.
        let ports: Vec<Value> = ports
            .iter()
            .filter_map(|p| match p.target {
                super::endpoints::Target::Number(n) => {
                    Some(json!({"name": p.name, "port": n, "protocol": p.protocol}))
                }
                super::endpoints::Target::Named(_) => None,
            })
            .collect();
        out.push((json!(ports), Vec::new()));
    }
    out
}

/// The parts of a slice this controller owns, for comparison.
fn comparable(slice: &Value) -> (Value, Value, Value) {
    let mut labels = slice["metadata"]["labels"].clone();
    if labels.is_null() {
        labels = json!({});
    }
    (
        slice.get("ports").cloned().unwrap_or(json!([])),
        slice.get("endpoints").cloned().unwrap_or(json!([])),
        labels,
    )
}

async fn reconcile(
    context: &Context,
    services: &Store<Service>,
    pods: &Store<Pod>,
    nodes: &Store<Node>,
    slices: &Store<EndpointSlice>,
) -> Result<Option<Duration>, ReconcileError> {
    let zones: BTreeMap<String, String> = nodes
        .state()
        .iter()
        .filter_map(|n| {
            let zone = n
                .metadata
                .labels
                .as_ref()?
                .get("topology.kubernetes.io/zone")?
                .clone();
            Some((n.metadata.name.clone()?, zone))
        })
        .collect();
    let mut pods_by_namespace: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for pod in pods.state() {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        pods_by_namespace
            .entry(ns)
            .or_default()
            .push(serde_json::to_value(pod.as_ref())?);
    }
    let mut existing: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
    for slice in slices.state() {
        let value = serde_json::to_value(slice.as_ref())?;
        let Some(service) = value["metadata"]["labels"][SERVICE_NAME].as_str() else {
            continue;
        };
        let ns = value["metadata"]["namespace"].as_str().unwrap_or_default();
        existing
            .entry((ns.to_string(), service.to_string()))
            .or_default()
            .push(value);
    }
    let mut first_error: Option<kube::Error> = None;
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
        let mut current = existing
            .remove(&(ns.clone(), name.clone()))
            .unwrap_or_default();
        if selector_of(&service).is_none() || service["spec"]["type"] == "ExternalName" {
            // Not ours to fill: drop slices we made while it had a selector.
            existing.insert((ns, name), current);
            continue;
        }
        let no_pods = Vec::new();
        let desired = desired_slices(
            &service,
            pods_by_namespace.get(&ns).unwrap_or(&no_pods),
            &zones,
        );
        let mut labels = inherited_labels(&service);
        labels.insert(SERVICE_NAME.into(), json!(name));
        labels.insert(MANAGED_BY.into(), json!(CONTROLLER_NAME));
        let api = Api::<EndpointSlice>::namespaced(context.client.clone(), &ns);
        current.sort_by(|a, b| {
            a["metadata"]["name"]
                .as_str()
                .cmp(&b["metadata"]["name"].as_str())
        });
        // Reuse slices that already have the wanted ports first, then any.
        let mut unused: Vec<Value> = current;
        for (ports, endpoints) in desired {
            let want = (ports.clone(), json!(endpoints), json!(labels));
            let position = unused
                .iter()
                .position(|s| comparable(s) == want)
                .or_else(|| {
                    unused
                        .iter()
                        .position(|s| s.get("ports").cloned().unwrap_or(json!([])) == ports)
                })
                .or(if unused.is_empty() { None } else { Some(0) });
            let result = match position {
                Some(i) => {
                    let slice = unused.remove(i);
                    if comparable(&slice) == want {
                        continue;
                    }
                    let mut next = slice.clone();
                    next["ports"] = ports;
                    next["endpoints"] = json!(endpoints);
                    next["metadata"]["labels"] = json!(labels);
                    let slice_name = slice["metadata"]["name"].as_str().unwrap_or_default();
                    resync::tolerate(
                        api.replace(
                            slice_name,
                            &PostParams::default(),
                            &serde_json::from_value(next)?,
                        )
                        .await,
                        true,
                    )
                }
                None => {
                    let object = json!({
                        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "metadata": {
                            "generateName": format!("{name}-"),
                            "namespace": ns,
                            "labels": labels,
                            "ownerReferences": [{
                                "apiVersion": "v1", "kind": "Service", "name": name,
                                "uid": service["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true,
                            }],
                        },
                        "addressType": "IPv4",
                        "ports": ports,
                        "endpoints": endpoints,
                    });
                    resync::tolerate(
                        api.create(&PostParams::default(), &serde_json::from_value(object)?)
                            .await,
                        true,
                    )
                }
            };
            if let Err(err) = result {
                first_error.get_or_insert(err);
            }
        }
        for slice in unused {
            let slice_name = slice["metadata"]["name"].as_str().unwrap_or_default();
            if let Err(err) =
                resync::tolerate(api.delete(slice_name, &DeleteParams::default()).await, true)
            {
                first_error.get_or_insert(err);
            }
        }
    }
    // Slices of services that are gone, or no longer have a selector.
    for ((ns, _), leftover) in existing {
        let api = Api::<EndpointSlice>::namespaced(context.client.clone(), &ns);
        for slice in leftover {
            let slice_name = slice["metadata"]["name"].as_str().unwrap_or_default();
            if let Err(err) =
                resync::tolerate(api.delete(slice_name, &DeleteParams::default()).await, true)
            {
                first_error.get_or_insert(err);
            }
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

    #[test]
    fn conditions_zone_and_grouping() {
        let svc = json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}});
        let pod = |name: &str, ip: &str, ready: bool, port: Option<i64>, deleting: bool| {
            let mut p = json!({
                "metadata": {"name": name, "namespace": "d", "uid": name, "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": port.map(|p| vec![json!({"name": "http", "containerPort": p})]).unwrap_or_default()}]},
                "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
            });
            if deleting {
                p["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
            }
            p
        };
        let pods = vec![
            pod("a", "10.42.0.2", true, Some(8080), false),
            pod("b", "10.42.0.3", true, Some(8080), true),
            pod("c", "10.42.0.4", false, Some(9090), false),
        ];
        let zones = BTreeMap::from([("n1".to_string(), "z1".to_string())]);
        let slices = desired_slices(&svc, &pods, &zones);
        assert_eq!(slices.len(), 2, "two port sets, two slices");
        let (ports, endpoints) = &slices[0];
        assert_eq!(ports[0]["port"], 8080);
        assert_eq!(endpoints.len(), 2);
        assert_eq!(
            endpoints[0]["conditions"],
            json!({"ready": true, "serving": true, "terminating": false})
        );
        assert_eq!(
            endpoints[1]["conditions"],
            json!({"ready": false, "serving": true, "terminating": true})
        );
        assert_eq!(endpoints[0]["zone"], "z1");
        assert_eq!(slices[1].1[0]["conditions"]["ready"], false);
    }
}
