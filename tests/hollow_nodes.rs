//! The hollow-node fixture itself, through the real API: nodes register and stay Ready, and a
//! pod bound to one is run, completed and deleted by the hollow kubelet.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use support::hollow::{HollowNode, HollowNodes};
use support::server::TestServer;

async fn wait_for<F: Fn(&Pod) -> bool>(pods: &Api<Pod>, name: &str, what: &str, check: F) -> Pod {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(pod) = pods.get(name).await {
            if check(&pod) {
                return pod;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pod {name} never became {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn hollow_nodes_run_bound_pods() {
    let server = TestServer::start();
    let client = server.client().await;
    let _nodes = HollowNodes::start(client.clone(), &[HollowNode::new("hollow-1")]).await;
    let node = Api::<Node>::all(client.clone())
        .get("hollow-1")
        .await
        .expect("node");
    let ready = node.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(ready
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True"));

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "done", "annotations": {"hollow.cluster.dev/exit-code": "0"}},
        "spec": {"restartPolicy": "Never", "nodeName": "hollow-1", "containers": [{"name": "c", "image": "busybox"}]}
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    wait_for(&pods, "done", "Succeeded", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")
    })
    .await;

    let runner: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runner"},
        "spec": {"nodeName": "hollow-1", "containers": [{"name": "c", "image": "busybox"}]}
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &runner)
        .await
        .expect("create");
    let running = wait_for(&pods, "runner", "Running", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await;
    assert!(running.status.and_then(|s| s.pod_ip).is_some());
    // Graceful deletion is finished by the hollow kubelet.
    pods.delete("runner", &DeleteParams::default())
        .await
        .expect("delete");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while pods.get_opt("runner").await.expect("get").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hollow kubelet never finished the deletion"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
