//! The scheduler through the real server with hollow nodes: node selectors, taints and
//! tolerations, resource exhaustion (PodScheduled=False with kube-scheduler's message, then
//! scheduled once a node is added), anti-affinity and topology spread.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{json, Value};
use support::hollow::{HollowNode, HollowNodes};
use support::server::TestServer;

async fn create(pods: &Api<Pod>, name: &str, labels: Value, spec: Value) {
    let mut full = json!({"containers": [{"name": "c", "image": "busybox"}]});
    if let (Some(full), Some(extra)) = (full.as_object_mut(), spec.as_object()) {
        full.extend(extra.clone());
    }
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": full,
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
}

fn requests(cpu: &str) -> Value {
    json!({"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": cpu}}}]})
}

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
            "pod {name} never became {what}: {:?}",
            pods.get(name).await.ok().and_then(|p| p.status)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn node_of(pods: &Api<Pod>, name: &str) -> String {
    let pod = wait_for(pods, name, "scheduled", |p| {
        p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
    })
    .await;
    pod.spec.and_then(|s| s.node_name).unwrap_or_default()
}

fn unschedulable_message(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        })
        .and_then(|c| c.message.clone())
}

async fn wait_unschedulable(pods: &Api<Pod>, name: &str, message: &str) {
    let pod = wait_for(pods, name, "unschedulable", |p| {
        unschedulable_message(p).as_deref() == Some(message)
    })
    .await;
    assert!(pod.spec.and_then(|s| s.node_name).is_none());
}

/// Waits for an events.k8s.io Event with `reason` about the pod `name`.
async fn wait_event(events: &Api<Event>, name: &str, reason: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found = events
            .list(&ListParams::default())
            .await
            .map(|list| {
                list.items.iter().any(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                })
            })
            .unwrap_or(false);
        if found {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {reason} event for pod {name}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn node_selector_and_taints() {
    let server = TestServer::start();
    let client = server.client().await;
    let _nodes = HollowNodes::start(
        client.clone(),
        &[
            HollowNode::new("plain"),
            HollowNode::new("ssd").label("disk", "ssd"),
            HollowNode::new("gpu")
                .label("gpu", "yes")
                .taint("dedicated", "gpu", "NoSchedule"),
        ],
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    create(
        &pods,
        "wants-ssd",
        json!({}),
        json!({"nodeSelector": {"disk": "ssd"}}),
    )
    .await;
    assert_eq!(node_of(&pods, "wants-ssd").await, "ssd");

    // Without a toleration the tainted node is out of reach.
    create(
        &pods,
        "wants-gpu",
        json!({}),
        json!({"nodeSelector": {"gpu": "yes"}}),
    )
    .await;
    wait_unschedulable(
        &pods,
        "wants-gpu",
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, \
         2 node(s) didn't match Pod's node affinity/selector. preemption: 0/3 nodes are \
         available: 3 Preemption is not helpful for scheduling.",
    )
    .await;
    create(
        &pods,
        "tolerates-gpu",
        json!({}),
        json!({"nodeSelector": {"gpu": "yes"}, "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}),
    )
    .await;
    assert_eq!(node_of(&pods, "tolerates-gpu").await, "gpu");
    // Untargeted pods never land on the tainted node.
    for i in 0..6 {
        create(&pods, &format!("any-{i}"), json!({}), json!({})).await;
    }
    for i in 0..6 {
        assert_ne!(node_of(&pods, &format!("any-{i}")).await, "gpu");
    }
}

#[tokio::test]
async fn exhausted_resources_wait_for_a_new_node() {
    let server = TestServer::start();
    let client = server.client().await;
    let nodes = HollowNodes::start(
        client.clone(),
        &[HollowNode::new("small-1").capacity("1", "2Gi")],
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    create(&pods, "first", json!({}), requests("800m")).await;
    assert_eq!(node_of(&pods, "first").await, "small-1");
    create(&pods, "second", json!({}), requests("500m")).await;
    wait_unschedulable(
        &pods,
        "second",
        "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: \
         1 No preemption victims found for incoming pod.",
    )
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    wait_event(&events, "second", "FailedScheduling").await;

    // A new node is a cluster event: the pod is retried and lands there.
    nodes
        .add(&HollowNode::new("small-2").capacity("1", "2Gi"))
        .await;
    assert_eq!(node_of(&pods, "second").await, "small-2");
    wait_event(&events, "second", "Scheduled").await;
}

#[tokio::test]
async fn anti_affinity_and_topology_spread() {
    let server = TestServer::start();
    let client = server.client().await;
    let zone = "topology.kubernetes.io/zone";
    let _nodes = HollowNodes::start(
        client.clone(),
        &[
            HollowNode::new("a1").label(zone, "a"),
            HollowNode::new("a2").label(zone, "a"),
            HollowNode::new("b1").label(zone, "b"),
        ],
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
    for i in 0..4 {
        create(
            &pods,
            &format!("db-{i}"),
            json!({"app": "db"}),
            anti.clone(),
        )
        .await;
    }
    let mut placed = Vec::new();
    let mut pending = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while placed.len() + pending.len() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "db pods not decided"
        );
        placed.clear();
        pending.clear();
        for i in 0..4 {
            let pod = pods.get(&format!("db-{i}")).await.expect("pod");
            if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
                placed.push(node);
            } else if let Some(message) = unschedulable_message(&pod) {
                pending.push(message);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    placed.sort();
    assert_eq!(placed, ["a1", "a2", "b1"]);
    assert_eq!(
        pending,
        [
            "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. \
          preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
        ]
    );

    // Zone spread with maxSkew 1: 4 pods over zones a (2 nodes) and b (1 node) → 2 and 2.
    let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": zone,
        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]});
    let mut per_zone: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..4 {
        let name = format!("web-{i}");
        create(&pods, &name, json!({"app": "web"}), spread.clone()).await;
        // One at a time, so each decision sees the previous binding.
        let node = node_of(&pods, &name).await;
        *per_zone.entry(node[..1].to_string()).or_default() += 1;
    }
    assert_eq!(per_zone, BTreeMap::from([("a".into(), 2), ("b".into(), 2)]));
}
