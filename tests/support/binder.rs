//! A stand-in for the scheduler, for tests only: binds every pod without a node to the given
//! nodes round-robin through `pods/<name>/binding`. It goes once the real scheduler lands.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The running binder; stops on drop.
pub struct Binder {
    cancel: CancellationToken,
}

impl Binder {
    pub fn start(client: kube::Client, nodes: &[&str]) -> Binder {
        let cancel = CancellationToken::new();
        let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        tokio::spawn(bind_loop(client, nodes, cancel.clone()));
        Binder { cancel }
    }
}

impl Drop for Binder {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn bind_loop(client: kube::Client, nodes: Vec<String>, cancel: CancellationToken) {
    let pods: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields("spec.nodeName=");
    let mut events = watcher(pods, config).boxed();
    let mut next = 0usize;
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            event = events.next() => event,
        };
        let Some(Ok(event)) = event else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let pod = match event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => pod,
            _ => continue,
        };
        let bound = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some();
        if bound || pod.metadata.deletion_timestamp.is_some() || nodes.is_empty() {
            continue;
        }
        let (Some(name), Some(namespace)) = (pod.metadata.name, pod.metadata.namespace) else {
            continue;
        };
        let node = &nodes[next % nodes.len()];
        next += 1;
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        let request = http::Request::post(format!(
            "/api/v1/namespaces/{namespace}/pods/{name}/binding"
        ))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&binding).unwrap_or_default());
        if let Ok(request) = request {
            let _ = client.request_text(request).await;
        }
    }
}
