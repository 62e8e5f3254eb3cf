//! The `default/kubernetes` Service and its Endpoints and EndpointSlice, pointing at the API
//! servers (kube-apiserver's "master endpoint reconciler").
//!
//! The Service gets the first IP of the service range (allocated explicitly, so no other
//! Service can take it) and port 443 → the API server port. The loop keeps all three objects
//! as they should be: recreated when deleted, reset when changed.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::resync::{self, Caches, ReconcileError};
use super::Context;
use crate::server::apiserver::allocators::Cidr;

const NAME: &str = "kubernetes";
const NAMESPACE: &str = "default";

/// Starts the loop.
pub fn start(context: Context, cancel: CancellationToken) -> BoxFuture<'static, ()> {
    run(context, cancel).boxed()
}

async fn run(context: Context, cancel: CancellationToken) {
    let by_name = watcher::Config::default().fields(&format!("metadata.name={NAME}"));
    let mut caches = Caches::default();
    let services = caches.cache(
        Api::<Service>::namespaced(context.client.clone(), NAMESPACE),
        by_name.clone(),
    );
    let endpoints = caches.cache(
        Api::<Endpoints>::namespaced(context.client.clone(), NAMESPACE),
        by_name.clone(),
    );
    let slices = caches.cache(
        Api::<EndpointSlice>::namespaced(context.client.clone(), NAMESPACE),
        by_name,
    );
    resync::drive(caches, cancel, Duration::from_secs(60), || {
        let context = context.clone();
        let services = services.clone();
        let endpoints = endpoints.clone();
        let slices = slices.clone();
        async move {
            reconcile(
                &context,
                services.state().first().map(|s| s.as_ref().clone()),
                endpoints.state().first().map(|e| e.as_ref().clone()),
                slices.state().first().map(|s| s.as_ref().clone()),
            )
            .await
        }
    })
    .await;
}

/// The ports of the Service and of its endpoints.
fn api_port(context: &Context) -> u16 {
    context
        .config
        .api_server_endpoints
        .first()
        .map_or(6443, |a| a.port())
}

fn desired_service(context: &Context) -> Value {
    let ip = Cidr::parse(&context.config.service_cidr)
        .map(|c| c.first().to_string())
        .unwrap_or_else(|| "10.43.0.1".into());
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": NAME, "namespace": NAMESPACE,
            "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {
            "type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "sessionAffinity": "None",
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": api_port(context)}],
        }
    })
}

fn desired_endpoints(context: &Context) -> Value {
    let addresses: Vec<Value> = context
        .config
        .api_server_endpoints
        .iter()
        .map(|a| json!({"ip": a.ip().to_string()}))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": NAME, "namespace": NAMESPACE,
            "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": addresses, "ports": [{"name": "https", "port": api_port(context), "protocol": "TCP"}]}],
    })
}

fn desired_slice(context: &Context) -> Value {
    let family = match context.config.api_server_endpoints.first() {
        Some(a) if a.is_ipv6() => "IPv6",
        _ => "IPv4",
    };
    let endpoints: Vec<Value> = context
        .config
        .api_server_endpoints
        .iter()
        .map(|a| json!({"addresses": [a.ip().to_string()], "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": NAME, "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": NAME}},
        "addressType": family,
        "endpoints": endpoints,
        "ports": [{"name": "https", "port": api_port(context), "protocol": "TCP"}],
    })
}

/// The values of `field` of the items of `list` in each element of `groups`: what the loop
/// compares, so that fields the API server defaults do not look like drift.
fn projection(groups: &Value, list: &str, field: &str) -> Vec<Value> {
    groups
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g[list].as_array().cloned().unwrap_or_default())
        .map(|item| item[field].clone())
        .collect()
}

async fn reconcile(
    context: &Context,
    service: Option<Service>,
    endpoints: Option<Endpoints>,
    slice: Option<EndpointSlice>,
) -> Result<Option<Duration>, ReconcileError> {
    let client = &context.client;
    let post = PostParams::default();
    let want = desired_service(context);
    match service {
        None => {
            let api = Api::<Service>::namespaced(client.clone(), NAMESPACE);
            resync::tolerate(
                api.create(&post, &serde_json::from_value(want)?).await,
                true,
            )?;
        }
        Some(current) => {
            let current_ports = serde_json::to_value(
                current
                    .spec
                    .as_ref()
                    .and_then(|s| s.ports.clone())
                    .unwrap_or_default(),
            )?;
            let want_ports = &want["spec"]["ports"];
            let same = current_ports.as_array().is_some_and(|ports| {
                ports.len() == 1
                    && ports[0]["port"] == want_ports[0]["port"]
                    && ports[0]["targetPort"] == want_ports[0]["targetPort"]
            });
            if !same {
                let mut next = serde_json::to_value(&current)?;
                next["spec"]["ports"] = want_ports.clone();
                let api = Api::<Service>::namespaced(client.clone(), NAMESPACE);
                resync::tolerate(
                    api.replace(NAME, &post, &serde_json::from_value(next)?)
                        .await,
                    true,
                )?;
            }
        }
    }
    let want = desired_endpoints(context);
    let api = Api::<Endpoints>::namespaced(client.clone(), NAMESPACE);
    match endpoints {
        None => resync::tolerate(
            api.create(&post, &serde_json::from_value(want)?).await,
            true,
        )?,
        Some(current) => {
            let current_value = serde_json::to_value(&current)?;
            if projection(&current_value["subsets"], "addresses", "ip")
                != projection(&want["subsets"], "addresses", "ip")
                || projection(&current_value["subsets"], "ports", "port")
                    != projection(&want["subsets"], "ports", "port")
            {
                let mut next = serde_json::to_value(&current)?;
                next["subsets"] = want["subsets"].clone();
                resync::tolerate(
                    api.replace(NAME, &post, &serde_json::from_value(next)?)
                        .await,
                    true,
                )?;
            }
        }
    }
    let want = desired_slice(context);
    let api = Api::<EndpointSlice>::namespaced(client.clone(), NAMESPACE);
    match slice {
        None => resync::tolerate(
            api.create(&post, &serde_json::from_value(want)?).await,
            true,
        )?,
        Some(current) => {
            let current_value = serde_json::to_value(&current)?;
            let wrap = |v: &Value| json!([{"endpoints": v["endpoints"], "ports": v["ports"]}]);
            if projection(&wrap(&current_value), "endpoints", "addresses")
                != projection(&wrap(&want), "endpoints", "addresses")
                || projection(&wrap(&current_value), "ports", "port")
                    != projection(&wrap(&want), "ports", "port")
            {
                let mut next = current_value;
                next["endpoints"] = want["endpoints"].clone();
                next["ports"] = want["ports"].clone();
                resync::tolerate(
                    api.replace(NAME, &post, &serde_json::from_value(next)?)
                        .await,
                    true,
                )?;
            }
        }
    }
    Ok(None)
}
