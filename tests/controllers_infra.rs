//! The cluster-infrastructure loops and allocators end to end, on a real server with hollow
//! nodes: Service IPs and node ports, the `kubernetes` Service, Endpoints and EndpointSlices,
//! default ServiceAccounts and the root CA ConfigMap, namespace deletion, garbage collection
//! and node lifecycle.

mod support;

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Namespace, Node, Pod, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{json, Value};
use support::hollow::{HollowNode, HollowNodes};
use support::server::TestServer;

/// Polls `check` until it returns `Some`, or panics after `secs` seconds.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn service(name: &str, spec: Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("service")
}

async fn create_namespace(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    )
    .expect("ns");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

fn pod(name: &str, node: &str, labels: Value, extra_spec: Value) -> Pod {
    let mut spec = json!({"nodeName": node, "containers": [{"name": "c", "image": "busybox",
        "ports": [{"name": "http", "containerPort": 8080}]}]});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }))
    .expect("pod")
}

#[tokio::test]
async fn service_ips_and_node_ports() {
    let mut server = TestServer::start();
    let client = server.client().await;
    create_namespace(&client, "ips").await;
    let services: Api<Service> = Api::namespaced(client.clone(), "ips");

    // 200 concurrent creates: 200 different IPs.
    let creates = (0..200).map(|i| {
        let services = services.clone();
        async move {
            services
                .create(
                    &PostParams::default(),
                    &service(&format!("s{i}"), json!({"ports": [{"port": 80}]})),
                )
                .await
                .expect("create service")
        }
    });
    let created = futures::future::join_all(creates).await;
    let ips: BTreeSet<String> = created
        .iter()
        .filter_map(|s| s.spec.as_ref().and_then(|s| s.cluster_ip.clone()))
        .collect();
    assert_eq!(ips.len(), 200, "every service got its own IP");
    assert!(ips.iter().all(|ip| ip.starts_with("10.43.")));

    // A taken IP, and one out of range, are 422s.
    let taken = ips.iter().next().cloned().expect("an ip");
    let err = services
        .create(
            &PostParams::default(),
            &service("dup", json!({"clusterIP": taken, "ports": [{"port": 80}]})),
        )
        .await
        .expect_err("taken ip");
    let kube::Error::Api(status) = err else {
        panic!("not an api error: {err}")
    };
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains("provided IP is already allocated"),
        "{}",
        status.message
    );
    let err = services
        .create(
            &PostParams::default(),
            &service(
                "far",
                json!({"clusterIP": "10.99.0.1", "ports": [{"port": 80}]}),
            ),
        )
        .await
        .expect_err("out of range");
    let kube::Error::Api(status) = err else {
        panic!("not an api error: {err}")
    };
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains("not in the valid range"),
        "{}",
        status.message
    );

    // Headless and ExternalName get none.
    let headless = services
        .create(
            &PostParams::default(),
            &service(
                "headless",
                json!({"clusterIP": "None", "ports": [{"port": 80}]}),
            ),
        )
        .await
        .expect("headless");
    assert_eq!(
        headless.spec.and_then(|s| s.cluster_ip).as_deref(),
        Some("None")
    );
    let external = services
        .create(
            &PostParams::default(),
            &service(
                "ext",
                json!({"type": "ExternalName", "externalName": "example.com"}),
            ),
        )
        .await
        .expect("externalname");
    assert!(external.spec.and_then(|s| s.cluster_ip).is_none());

    // Node ports: allocated in range, unique, a taken one is a 422.
    let np = services
        .create(&PostParams::default(), &service("np", json!({"type": "NodePort", "ports": [{"port": 80, "name": "a"}, {"port": 81, "name": "b"}]})))
        .await
        .expect("nodeport");
    let ports: Vec<i32> = np
        .spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.node_port)
        .collect();
    assert_eq!(ports.len(), 2);
    assert_ne!(ports[0], ports[1]);
    assert!(ports.iter().all(|p| (30000..=32767).contains(p)));
    let err = services
        .create(
            &PostParams::default(),
            &service(
                "np2",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": ports[0]}]}),
            ),
        )
        .await
        .expect_err("taken port");
    let kube::Error::Api(status) = err else {
        panic!("not an api error: {err}")
    };
    assert_eq!(status.code, 422);
    assert!(
        status
            .message
            .contains("provided port is already allocated"),
        "{}",
        status.message
    );

    // A deleted service's IP is free again.
    services
        .delete("s0", &DeleteParams::default())
        .await
        .expect("delete");
    let freed = created[0]
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .expect("ip");
    services
        .create(
            &PostParams::default(),
            &service(
                "again",
                json!({"clusterIP": freed, "ports": [{"port": 80}]}),
            ),
        )
        .await
        .expect("a released IP can be requested");

    // The kubernetes Service has the first IP and points at the API server.
    let default_services: Api<Service> = Api::namespaced(client.clone(), "default");
    let port = server.port;
    let kubernetes = eventually(30, "the kubernetes service", || {
        let api = default_services.clone();
        async move { api.get_opt("kubernetes").await.ok().flatten() }
    })
    .await;
    let spec = kubernetes.spec.expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.43.0.1"));
    let ports = spec.ports.unwrap_or_default();
    assert_eq!(ports[0].port, 443);
    assert_eq!(
        serde_json::to_value(&ports[0].target_port).expect("json"),
        json!(port)
    );
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    eventually(30, "the kubernetes endpoints", || {
        let api = endpoints.clone();
        async move {
            let e = api.get_opt("kubernetes").await.ok().flatten()?;
            let subset = e.subsets?.into_iter().next()?;
            (subset.ports?.first()?.port == i32::from(port)).then_some(())
        }
    })
    .await;

    // After a restart no live IP is handed out again.
    drop(client);
    server.restart();
    let client = server.client().await;
    let services: Api<Service> = Api::namespaced(client.clone(), "ips");
    let mut all: BTreeSet<String> = services
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .iter()
        .filter_map(|s| s.spec.as_ref().and_then(|s| s.cluster_ip.clone()))
        .filter(|ip| ip != "None")
        .collect();
    let before = all.len();
    for i in 0..50 {
        let s = services
            .create(
                &PostParams::default(),
                &service(&format!("late{i}"), json!({"ports": [{"port": 80}]})),
            )
            .await
            .expect("create after restart");
        all.insert(s.spec.and_then(|s| s.cluster_ip).expect("ip"));
    }
    assert_eq!(all.len(), before + 50, "no IP reused after the restart");
}

#[tokio::test]
async fn endpoints_follow_ready_pods() {
    let server = TestServer::start();
    let client = server.client().await;
    let _nodes = HollowNodes::start(
        client.clone(),
        &[HollowNode::new("ep-1").label("topology.kubernetes.io/zone", "zone-a")],
    )
    .await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    services
        .create(
            &PostParams::default(),
            &service(
                "web",
                json!({"selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}),
            ),
        )
        .await
        .expect("service");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(
        &PostParams::default(),
        &pod("web-1", "ep-1", json!({"app": "web"}), json!({})),
    )
    .await
    .expect("pod");
    let mut not_ready = pod("web-2", "ep-1", json!({"app": "web"}), json!({}));
    not_ready.metadata.annotations = Some(
        [(
            "hollow.cluster.dev/not-ready".to_string(),
            "true".to_string(),
        )]
        .into(),
    );
    pods.create(&PostParams::default(), &not_ready)
        .await
        .expect("pod");

    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    eventually(
        30,
        "endpoints with one ready and one not-ready address",
        || {
            let api = endpoints.clone();
            async move {
                let e = api.get_opt("web").await.ok().flatten()?;
                let subset = e.subsets?.into_iter().next()?;
                let ready = subset.addresses.unwrap_or_default();
                let not_ready = subset.not_ready_addresses.unwrap_or_default();
                let port = subset.ports?.first()?.port;
                (ready.len() == 1
                    && not_ready.len() == 1
                    && port == 8080
                    && ready[0].node_name.as_deref() == Some("ep-1"))
                .then_some(())
            }
        },
    )
    .await;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    eventually(30, "an endpointslice with both pods", || {
        let api = slices.clone();
        async move {
            let list = api
                .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                .await
                .ok()?;
            let slice = list.items.into_iter().next()?;
            let labels = slice.metadata.labels.clone().unwrap_or_default();
            if labels
                .get("endpointslice.kubernetes.io/managed-by")
                .map(String::as_str)
                != Some("endpointslice-controller.k8s.io")
            {
                return None;
            }
            let endpoints = slice.endpoints;
            let ready = endpoints
                .iter()
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .count();
            let zoned = endpoints
                .iter()
                .all(|e| e.zone.as_deref() == Some("zone-a"));
            (endpoints.len() == 2
                && ready == 1
                && zoned
                && slice.ports?.first()?.port == Some(8080))
            .then_some(())
        }
    })
    .await;

    // A deleted pod leaves both (the hollow kubelet finishes its deletion).
    pods.delete("web-1", &DeleteParams::default())
        .await
        .expect("delete pod");
    eventually(30, "endpoints without the deleted pod", || {
        let api = endpoints.clone();
        async move {
            let e = api.get_opt("web").await.ok().flatten()?;
            let subsets = e.subsets.unwrap_or_default();
            let ready: usize = subsets
                .iter()
                .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
                .sum();
            (ready == 0).then_some(())
        }
    })
    .await;
    // The service's deletion takes its endpoints and slices along.
    services
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete service");
    eventually(30, "endpoints and slices gone", || {
        let (e, s) = (endpoints.clone(), slices.clone());
        async move {
            let e_gone = e.get_opt("web").await.ok()?.is_none();
            let s_gone = s
                .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                .await
                .ok()?
                .items
                .is_empty();
            (e_gone && s_gone).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn namespaces_get_a_service_account_and_the_root_ca() {
    let server = TestServer::start();
    let client = server.client().await;
    create_namespace(&client, "fresh").await;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "fresh");
    eventually(30, "the default service account", || {
        let api = accounts.clone();
        async move { api.get_opt("default").await.ok().flatten() }
    })
    .await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "fresh");
    let ca = eventually(30, "kube-root-ca.crt", || {
        let api = configmaps.clone();
        async move { api.get_opt("kube-root-ca.crt").await.ok().flatten() }
    })
    .await;
    let pem = ca
        .data
        .unwrap_or_default()
        .get("ca.crt")
        .cloned()
        .unwrap_or_default();
    assert!(pem.contains("BEGIN CERTIFICATE"));
    // Deleted, it comes back.
    accounts
        .delete("default", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(30, "the default service account again", || {
        let api = accounts.clone();
        async move { api.get_opt("default").await.ok().flatten() }
    })
    .await;
}

fn configmap(name: &str, owners: Value) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "ownerReferences": owners},
        "data": {"k": "v"},
    }))
    .expect("configmap")
}

fn owned_by(owner: &ConfigMap, block: bool) -> Value {
    json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": owner.metadata.name,
        "uid": owner.metadata.uid, "blockOwnerDeletion": block}])
}

async fn gone(api: &Api<ConfigMap>, name: &str) -> bool {
    matches!(api.get_opt(name).await, Ok(None))
}

#[tokio::test]
async fn namespace_deletion_and_garbage_collection() {
    let server = TestServer::start();
    let client = server.client().await;

    // Namespace deletion empties the namespace, then removes it.
    create_namespace(&client, "doomed").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    cms.create(&PostParams::default(), &configmap("one", json!([])))
        .await
        .expect("cm");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), "doomed");
    let secret = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}),
    )
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("delete ns");
    let ns = namespaces
        .get("doomed")
        .await
        .expect("still there while terminating");
    assert_eq!(
        ns.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    eventually(30, "the namespace to disappear", || {
        let api = namespaces.clone();
        async move { api.get_opt("doomed").await.ok()?.is_none().then_some(()) }
    })
    .await;
    assert!(cms
        .list(&ListParams::default())
        .await
        .map(|l| l.items.is_empty())
        .unwrap_or(true));

    // Background: dependents go after their owner.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let owner = cms
        .create(&PostParams::default(), &configmap("bg-owner", json!([])))
        .await
        .expect("owner");
    cms.create(
        &PostParams::default(),
        &configmap("bg-child", owned_by(&owner, false)),
    )
    .await
    .expect("child");
    cms.delete("bg-owner", &DeleteParams::background())
        .await
        .expect("delete");
    eventually(30, "the background dependent to go", || {
        let api = cms.clone();
        async move { gone(&api, "bg-child").await.then_some(()) }
    })
    .await;

    // Foreground: the owner stays until its blocking dependents are gone.
    let owner = cms
        .create(&PostParams::default(), &configmap("fg-owner", json!([])))
        .await
        .expect("owner");
    cms.create(
        &PostParams::default(),
        &configmap("fg-child", owned_by(&owner, true)),
    )
    .await
    .expect("child");
    cms.delete("fg-owner", &DeleteParams::foreground())
        .await
        .expect("delete");
    eventually(30, "foreground deletion to finish", || {
        let api = cms.clone();
        async move { (gone(&api, "fg-child").await && gone(&api, "fg-owner").await).then_some(()) }
    })
    .await;

    // Orphan: the dependent stays, without the owner reference.
    let owner = cms
        .create(&PostParams::default(), &configmap("or-owner", json!([])))
        .await
        .expect("owner");
    cms.create(
        &PostParams::default(),
        &configmap("or-child", owned_by(&owner, true)),
    )
    .await
    .expect("child");
    cms.delete("or-owner", &DeleteParams::orphan())
        .await
        .expect("delete");
    eventually(30, "orphaning to finish", || {
        let api = cms.clone();
        async move { gone(&api, "or-owner").await.then_some(()) }
    })
    .await;
    let child = cms.get("or-child").await.expect("the orphan stays");
    assert!(child
        .metadata
        .owner_references
        .unwrap_or_default()
        .is_empty());
}

#[tokio::test]
async fn lost_nodes_are_tainted_and_their_pods_evicted() {
    let server = TestServer::start_with(&["--node-monitor-grace-period", "5s"]);
    let client = server.client().await;
    let hollow = HollowNodes::start(
        client.clone(),
        &[HollowNode::new("lost-1"), HollowNode::new("kept-1")],
    )
    .await;
    let nodes: Api<Node> = Api::all(client.clone());
    // Node IPAM: distinct pod CIDRs.
    let cidrs = eventually(30, "pod CIDRs on both nodes", || {
        let api = nodes.clone();
        async move {
            let a = api.get("lost-1").await.ok()?.spec?.pod_cidr?;
            let b = api.get("kept-1").await.ok()?.spec?.pod_cidr?;
            Some((a, b))
        }
    })
    .await;
    assert_ne!(cidrs.0, cidrs.1);
    assert!(cidrs.0.starts_with("10.42.") && cidrs.0.ends_with("/24"));

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let tolerate = json!({"tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2}]});
    pods.create(
        &PostParams::default(),
        &pod("on-lost", "lost-1", json!({}), tolerate),
    )
    .await
    .expect("pod");
    pods.create(
        &PostParams::default(),
        &pod("on-kept", "kept-1", json!({}), json!({})),
    )
    .await
    .expect("pod");
    eventually(30, "pods running", || {
        let api = pods.clone();
        async move {
            let phase = api.get("on-lost").await.ok()?.status?.phase?;
            (phase == "Running").then_some(())
        }
    })
    .await;

    hollow.silence("lost-1");
    let node =
        eventually(30, "the lost node to become Unknown and tainted", || {
            let api = nodes.clone();
            async move {
                let node = api.get("lost-1").await.ok()?;
                let unknown = node
                    .status
                    .as_ref()?
                    .conditions
                    .as_ref()?
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "Unknown");
                let tainted =
                    node.spec.as_ref()?.taints.as_ref()?.iter().any(|t| {
                        t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute"
                    });
                (unknown && tainted).then_some(node)
            }
        })
        .await;
    assert!(node
        .spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .iter()
        .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoSchedule"));
    eventually(20, "the pod on the lost node to be evicted", || {
        let api = pods.clone();
        async move {
            match api.get_opt("on-lost").await.ok()? {
                None => Some(()),
                Some(p) => p.metadata.deletion_timestamp.map(|_| ()),
            }
        }
    })
    .await;
    let kept = pods.get("on-kept").await.expect("the other pod stays");
    assert!(kept.metadata.deletion_timestamp.is_none());
    let kept_node = nodes.get("kept-1").await.expect("node");
    assert!(kept_node
        .spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .is_empty());

    // A deleted node's pods are collected.
    hollow.remove("lost-1").await;
    eventually(30, "the deleted node's pods to go", || {
        let api = pods.clone();
        async move { api.get_opt("on-lost").await.ok()?.is_none().then_some(()) }
    })
    .await;
}
