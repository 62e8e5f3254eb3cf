//! The API server driven by kube-rs, the Rust ecosystem's standard client: CRUD, watches
//! (resume and expiry), conflicts, the three patch types, finalizers, CRDs, Table responses
//! and the shape of error statuses. Each test starts its own `cluster server`.

mod support;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::Discovery;
use serde_json::{json, Value};
use support::server::TestServer;

fn api_error(err: kube::Error) -> Box<kube::core::Status> {
    match err {
        kube::Error::Api(status) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn config_map(name: &str, data: Value) -> ConfigMap {
    serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}),
    )
    .expect("configmap")
}

#[tokio::test]
async fn configmap_crud_with_conflicts_and_not_found() {
    let server = TestServer::start();
    let client = server.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");

    let created = cms
        .create(&PostParams::default(), &config_map("a", json!({"k": "v"})))
        .await
        .expect("create");
    let meta = &created.metadata;
    assert!(
        meta.uid.is_some() && meta.creation_timestamp.is_some() && meta.resource_version.is_some()
    );
    assert_eq!(meta.namespace.as_deref(), Some("default"));

    let err = api_error(
        cms.create(&PostParams::default(), &config_map("a", json!({})))
            .await
            .expect_err("duplicate"),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(err.message, "configmaps \"a\" already exists");

    let mut updated = created.clone();
    updated.data = Some([("k".to_string(), "v2".to_string())].into());
    let updated = cms
        .replace("a", &PostParams::default(), &updated)
        .await
        .expect("replace");
    assert_ne!(
        updated.metadata.resource_version,
        created.metadata.resource_version
    );

    // A write from the stale copy is a conflict.
    let err = api_error(
        cms.replace("a", &PostParams::default(), &created)
            .await
            .expect_err("stale"),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert!(
        err.message.contains("the object has been modified"),
        "{}",
        err.message
    );

    // The service-account controller's kube-root-ca.crt lives in every namespace too.
    let list = cms
        .list(&ListParams::default().fields("metadata.name!=kube-root-ca.crt"))
        .await
        .expect("list");
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.resource_version.is_some());

    cms.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    let err = api_error(cms.get("a").await.expect_err("gone"));
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
    assert_eq!(err.message, "configmaps \"a\" not found");

    // Nothing can be created in a namespace that does not exist.
    let elsewhere: Api<ConfigMap> = Api::namespaced(server.client().await, "nowhere");
    let err = api_error(
        elsewhere
            .create(&PostParams::default(), &config_map("x", json!({})))
            .await
            .expect_err("no ns"),
    );
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
}

#[tokio::test]
async fn generate_name_dry_run_paging_and_selectors() {
    let server = TestServer::start();
    let client = server.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut generated = config_map("", json!({}));
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let made = cms
        .create(&PostParams::default(), &generated)
        .await
        .expect("generateName");
    let name = made.metadata.name.expect("name");
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");

    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    cms.create(&dry, &config_map("dry", json!({})))
        .await
        .expect("dry run");
    assert!(
        cms.get_opt("dry").await.expect("get").is_none(),
        "dry run must not persist"
    );

    for i in 0..7 {
        let mut cm = config_map(&format!("p{i}"), json!({}));
        cm.metadata.labels = Some(
            [(
                "tier".to_string(),
                if i % 2 == 0 { "even" } else { "odd" }.to_string(),
            )]
            .into(),
        );
        cms.create(&PostParams::default(), &cm)
            .await
            .expect("create");
    }
    // Pages of 3 at one revision cover everything exactly once.
    let mut names = Vec::new();
    let mut params = ListParams::default()
        .fields("metadata.name!=kube-root-ca.crt")
        .limit(3);
    loop {
        let page = cms.list(&params).await.expect("page");
        assert!(page.items.len() <= 3);
        names.extend(page.items.into_iter().filter_map(|c| c.metadata.name));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    assert_eq!(names.len(), 8);
    let even = cms
        .list(&ListParams::default().labels("tier=even"))
        .await
        .expect("labels");
    assert_eq!(even.items.len(), 4);
    let set_based = cms
        .list(&ListParams::default().labels("tier in (odd),tier notin (even)"))
        .await
        .expect("set");
    assert_eq!(set_based.items.len(), 3);
    let by_name = cms
        .list(&ListParams::default().fields("metadata.name=p3"))
        .await
        .expect("fields");
    assert_eq!(by_name.items.len(), 1);
    let err = api_error(
        cms.list(&ListParams::default().fields("spec.nothing=x"))
            .await
            .expect_err("bad field"),
    );
    assert_eq!(err.code, 400);

    cms.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("tier=odd"),
    )
    .await
    .expect("deletecollection");
    assert_eq!(
        cms.list(&ListParams::default().fields("metadata.name!=kube-root-ca.crt"))
            .await
            .expect("list")
            .items
            .len(),
        5
    );
}

#[tokio::test]
async fn watch_resumes_from_a_resource_version() {
    let server = TestServer::start();
    let cms: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    let first = cms
        .create(&PostParams::default(), &config_map("w", json!({"n": "0"})))
        .await
        .expect("create");
    let from = first.metadata.resource_version.clone().expect("rv");
    for n in 1..=3 {
        cms.patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"n": n.to_string()}})),
        )
        .await
        .expect("patch");
    }
    cms.delete("w", &DeleteParams::default())
        .await
        .expect("delete");
    // Only `w`: the controllers may create other ConfigMaps here meanwhile (kube-root-ca.crt).
    let stream = cms
        .watch(
            &WatchParams::default().fields("metadata.name=w").timeout(10),
            &from,
        )
        .await
        .expect("watch");
    let events: Vec<WatchEvent<ConfigMap>> = stream.take(4).try_collect().await.expect("events");
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match e {
            WatchEvent::Added(_) => "ADDED",
            WatchEvent::Modified(_) => "MODIFIED",
            WatchEvent::Deleted(_) => "DELETED",
            WatchEvent::Bookmark(_) => "BOOKMARK",
            WatchEvent::Error(_) => "ERROR",
        })
        .collect();
    assert_eq!(kinds, vec!["MODIFIED", "MODIFIED", "MODIFIED", "DELETED"]);
    if let WatchEvent::Modified(cm) = &events[2] {
        assert_eq!(
            cm.data
                .as_ref()
                .and_then(|d| d.get("n"))
                .map(String::as_str),
            Some("3")
        );
    }

    // A watch from "now" sees a later change.
    let mut live = cms
        .watch(
            &WatchParams::default()
                .fields("metadata.name=later")
                .timeout(10),
            "0",
        )
        .await
        .expect("watch")
        .boxed();
    cms.create(&PostParams::default(), &config_map("later", json!({})))
        .await
        .expect("create");
    match tokio::time::timeout(Duration::from_secs(10), live.next()).await {
        Ok(Some(Ok(WatchEvent::Added(cm)))) => {
            assert_eq!(cm.metadata.name.as_deref(), Some("later"))
        }
        other => panic!("expected ADDED, got {other:?}"),
    }
}

#[tokio::test]
async fn a_compacted_resource_version_is_410_expired() {
    // Keep almost no history so that old revisions are compacted quickly.
    let server = TestServer::start_with(&[
        "--datastore-history-window",
        "1s",
        "--datastore-history-min-revisions",
        "1",
        "--datastore-compaction-interval",
        "1s",
    ]);
    let cms: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    let first = cms
        .create(&PostParams::default(), &config_map("old", json!({})))
        .await
        .expect("create");
    let old_rv = first.metadata.resource_version.expect("rv");
    for n in 0..5 {
        cms.patch(
            "old",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"n": n.to_string()}})),
        )
        .await
        .expect("patch");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut stream = cms
            .watch(&WatchParams::default().timeout(5), &old_rv)
            .await
            .expect("watch")
            .boxed();
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            Ok(Some(Ok(WatchEvent::Error(status)))) => {
                assert_eq!(status.code, 410);
                assert_eq!(status.reason, "Expired");
                break;
            }
            _ if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            other => panic!("old resourceVersion never expired: {other:?}"),
        }
    }
    // A list at an exact compacted revision is 410 too.
    let err = api_error(
        cms.list(
            &ListParams::default()
                .at(&old_rv)
                .matching(kube::api::VersionMatch::Exact),
        )
        .await
        .expect_err("expired"),
    );
    assert_eq!((err.code, err.reason.as_str()), (410, "Expired"));
}

#[tokio::test]
async fn json_merge_and_strategic_merge_patches() {
    let server = TestServer::start();
    let deployments: Api<Deployment> = Api::namespaced(server.client().await, "default");
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [
                    {"name": "web", "image": "busybox:1.36", "env": [{"name": "A", "value": "1"}]},
                    {"name": "sidecar", "image": "busybox:1.36"}
                ]}
            }
        }
    }))
    .expect("deployment");
    let created = deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create");
    // Defaults were applied.
    let spec = created.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.revision_history_limit, Some(10));
    assert_eq!(created.metadata.generation, Some(1));

    // Strategic merge: the container list merges by name.
    let smp = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "busybox:1.37", "env": [{"name": "B", "value": "2"}]}]}}}});
    let patched = deployments
        .patch("web", &PatchParams::default(), &Patch::Strategic(smp))
        .await
        .expect("smp");
    let containers = &patched
        .spec
        .as_ref()
        .expect("spec")
        .template
        .spec
        .as_ref()
        .expect("pod")
        .containers;
    assert_eq!(containers.len(), 2, "strategic merge must keep the sidecar");
    assert_eq!(containers[0].image.as_deref(), Some("busybox:1.37"));
    let env: Vec<&str> = containers[0]
        .env
        .as_ref()
        .expect("env")
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    // Without $setElementOrder, Go's strategic merge puts patch items before server-only ones.
    assert_eq!(env, vec!["B", "A"]);
    assert_eq!(patched.metadata.generation, Some(2));

    // Merge patch: lists replace.
    let merge = json!({"spec": {"template": {"spec": {"containers": [{"name": "only", "image": "busybox:1.36"}]}}}});
    let patched = deployments
        .patch("web", &PatchParams::default(), &Patch::Merge(merge))
        .await
        .expect("merge");
    assert_eq!(
        patched
            .spec
            .as_ref()
            .expect("spec")
            .template
            .spec
            .as_ref()
            .expect("pod")
            .containers
            .len(),
        1
    );

    // JSON patch, and a failed test operation.
    let ops: json_patch::Patch =
        serde_json::from_value(json!([{"op": "replace", "path": "/spec/replicas", "value": 3}]))
            .expect("ops");
    let patched = deployments
        .patch("web", &PatchParams::default(), &Patch::<()>::Json(ops))
        .await
        .expect("json patch");
    assert_eq!(patched.spec.as_ref().and_then(|s| s.replicas), Some(3));
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/spec/replicas", "value": 9}]))
            .expect("ops");
    let err = api_error(
        deployments
            .patch("web", &PatchParams::default(), &Patch::<()>::Json(failing))
            .await
            .expect_err("test op"),
    );
    assert_eq!(err.code, 422);

    // Status changes only through /status.
    let with_status = deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 42}})),
        )
        .await
        .expect("main patch");
    assert_ne!(
        with_status.status.as_ref().and_then(|s| s.replicas),
        Some(42)
    );
    let status = deployments
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 42}, "spec": {"replicas": 7}})),
        )
        .await
        .expect("status patch");
    assert_eq!(status.status.as_ref().and_then(|s| s.replicas), Some(42));
    assert_eq!(status.spec.as_ref().and_then(|s| s.replicas), Some(3));

    // Scale subresource.
    let scale = deployments.get_scale("web").await.expect("scale");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(3));
    deployments
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .expect("scale");
    assert_eq!(
        deployments
            .get("web")
            .await
            .expect("get")
            .spec
            .and_then(|s| s.replicas),
        Some(5)
    );
}

#[tokio::test]
async fn finalizers_hold_an_object_until_cleared() {
    let server = TestServer::start();
    let cms: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    let mut cm = config_map("held", json!({}));
    cm.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("create");
    cms.delete("held", &DeleteParams::default())
        .await
        .expect("delete");
    let held = cms.get("held").await.expect("still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    // Foreground deletion adds its finalizer.
    let mut fg = config_map("fg", json!({}));
    fg.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &fg)
        .await
        .expect("create");
    cms.delete("fg", &DeleteParams::foreground())
        .await
        .expect("delete");
    let fg = cms.get("fg").await.expect("held");
    assert!(fg
        .metadata
        .finalizers
        .unwrap_or_default()
        .contains(&"foregroundDeletion".to_string()));
    // Clearing the finalizers completes the deletion.
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("clear");
    assert!(cms.get_opt("held").await.expect("get").is_none());
}

#[tokio::test]
async fn pods_are_deleted_gracefully_once_scheduled() {
    let server = TestServer::start();
    let pods: Api<Pod> = Api::namespaced(server.client().await, "default");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .expect("pod");
    let created = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let spec = created.spec.as_ref().expect("spec");
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        spec.containers[0].image_pull_policy.as_deref(),
        Some("Always")
    );
    assert_eq!(
        created.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );
    // Bind it to a node, then delete: it is only marked, as a kubelet is expected to finish it.
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"apiVersion": "v1", "kind": "Node", "name": "node-1"}});
    let request = http::Request::post("/api/v1/namespaces/default/pods/p/binding")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&binding).expect("json"))
        .expect("request");
    server
        .client()
        .await
        .request_text(request)
        .await
        .expect("binding");
    let bound = pods.get("p").await.expect("get");
    assert_eq!(
        bound.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("node-1")
    );
    pods.delete("p", &DeleteParams::default())
        .await
        .expect("delete");
    let terminating = pods.get("p").await.expect("still there");
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(30));
    // The kubelet keeps reporting status while it stops the pod: that does not delete it.
    let status = json!({"status": {"phase": "Running", "message": "stopping"}});
    pods.patch_status("p", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status of a terminating pod");
    let still = pods
        .get("p")
        .await
        .expect("still there after a status update");
    assert_eq!(
        still.status.and_then(|s| s.message).as_deref(),
        Some("stopping")
    );
    // A force delete removes it.
    pods.delete("p", &DeleteParams::default().grace_period(0))
        .await
        .expect("force");
    assert!(pods.get_opt("p").await.expect("get").is_none());
}

#[tokio::test]
async fn a_custom_resource_definition_serves_its_resources_live() {
    let server = TestServer::start();
    let client = server.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "crontabs.stable.example.com"},
        "spec": {
            "group": "stable.example.com", "scope": "Namespaced",
            "names": {"plural": "crontabs", "singular": "crontab", "kind": "CronTab", "shortNames": ["ct"]},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"cronSpec": {"type": "string"}, "replicas": {"type": "integer"}}},
                    "status": {"type": "object", "properties": {"ok": {"type": "boolean"}}}}}}}]
        }
    }))
    .expect("crd");
    let created = crds
        .create(&PostParams::default(), &crd)
        .await
        .expect("create crd");
    let established = created
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True");
    assert!(established);

    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    assert!(discovery.groups().any(|g| g.name() == "stable.example.com"));

    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("stable.example.com", "v1", "CronTab"),
        "crontabs",
    );
    let crontabs: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "stable.example.com/v1", "kind": "CronTab",
        "metadata": {"name": "every-minute"}, "spec": {"cronSpec": "* * * * *", "replicas": 1}
    }))
    .expect("object");
    let made = crontabs
        .create(&PostParams::default(), &object)
        .await
        .expect("create cr");
    assert_eq!(made.metadata.generation, Some(1));
    let status = crontabs
        .patch_status(
            "every-minute",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ok": true}})),
        )
        .await
        .expect("status");
    assert_eq!(status.data["status"]["ok"], true);
    assert_eq!(
        crontabs
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        1
    );
    // Strategic merge patch is not for custom resources.
    let err = api_error(
        crontabs
            .patch(
                "every-minute",
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"replicas": 2}})),
            )
            .await
            .expect_err("smp"),
    );
    assert_eq!(err.code, 415);

    crds.delete("crontabs.stable.example.com", &DeleteParams::default())
        .await
        .expect("delete crd");
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    assert!(!discovery.groups().any(|g| g.name() == "stable.example.com"));
    let err = api_error(
        crontabs
            .list(&ListParams::default())
            .await
            .expect_err("gone"),
    );
    assert_eq!(err.code, 404);
}

async fn raw(
    client: &kube::Client,
    request: http::Request<Vec<u8>>,
) -> (u16, http::HeaderMap, Value) {
    use http_body_util::BodyExt;
    let response = client
        .send(request.map(kube::client::Body::from))
        .await
        .expect("send");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, body)
}

#[tokio::test]
async fn tables_and_error_statuses_have_the_kubernetes_shape() {
    let server = TestServer::start();
    let client = server.client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    assert!(
        namespaces.get("default").await.is_ok(),
        "the default namespace exists"
    );

    let table = http::Request::get("/api/v1/namespaces")
        .header(
            "accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .body(Vec::new())
        .expect("request");
    let (code, _, body) = raw(&client, table).await;
    assert_eq!(code, 200);
    assert_eq!(body["kind"], "Table");
    let columns: Vec<&str> = body["columnDefinitions"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(columns, vec!["Name", "Status", "Age"]);
    assert!(body["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .any(|r| r["cells"][0] == "default"));

    // 422 with causes naming the field.
    let invalid = http::Request::post("/api/v1/namespaces/default/configmaps")
        .header("content-type", "application/json")
        .body(br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Not_Valid"}}"#.to_vec())
        .expect("request");
    let (code, _, body) = raw(&client, invalid).await;
    assert_eq!(code, 422);
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "Invalid");
    assert_eq!(body["details"]["causes"][0]["field"], "metadata.name");

    // Malformed JSON: 400 with the parser's message.
    let malformed = http::Request::post("/api/v1/namespaces/default/configmaps")
        .header("content-type", "application/json")
        .body(b"{\"apiVersion\": ".to_vec())
        .expect("request");
    let (code, _, body) = raw(&client, malformed).await;
    assert_eq!((code, body["reason"].as_str()), (400, Some("BadRequest")));

    // Wrong content type: 415.
    let wrong = http::Request::post("/api/v1/namespaces/default/configmaps")
        .header("content-type", "text/plain")
        .body(b"hello".to_vec())
        .expect("request");
    let (code, _, _) = raw(&client, wrong).await;
    assert_eq!(code, 415);

    // Bodies over 3 MiB: 413.
    let huge = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"huge"}},"data":{{"k":"{}"}}}}"#,
        "x".repeat(4 << 20)
    );
    let too_big = http::Request::post("/api/v1/namespaces/default/configmaps")
        .header("content-type", "application/json")
        .body(huge.into_bytes())
        .expect("request");
    let (code, _, _) = raw(&client, too_big).await;
    assert_eq!(code, 413);

    // Unknown fields: a warning by default, an error with fieldValidation=Strict.
    let unknown =
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"u"},"bogus":1}"#.to_vec();
    let warn = http::Request::post("/api/v1/namespaces/default/configmaps")
        .header("content-type", "application/json")
        .body(unknown.clone())
        .expect("request");
    let (code, headers, body) = raw(&client, warn).await;
    assert_eq!(code, 201);
    assert!(body.get("bogus").is_none(), "unknown fields are dropped");
    let warning = headers
        .get("warning")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        warning.contains("unknown field"),
        "warning header: {warning:?}"
    );
    let strict =
        http::Request::post("/api/v1/namespaces/default/configmaps?fieldValidation=Strict")
            .header("content-type", "application/json")
            .body(unknown)
            .expect("request");
    let (code, _, body) = raw(&client, strict).await;
    assert_eq!(code, 400, "{body}");

    // Nobody without credentials gets in, but health and version are public.
    let anonymous = std::process::Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{}/api/v1/namespaces", server.url()))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&anonymous.stdout), "401");
    let version = std::process::Command::new("curl")
        .args(["-sk"])
        .arg(format!("{}/version", server.url()))
        .output()
        .expect("curl");
    let version: Value = serde_json::from_slice(&version.stdout).expect("version json");
    assert_eq!(version["major"], "1");
    let readyz = std::process::Command::new("curl")
        .args(["-sk"])
        .arg(format!("{}/readyz?verbose", server.url()))
        .output()
        .expect("curl");
    assert!(String::from_utf8_lossy(&readyz.stdout).contains("[+]etcd ok"));
}

#[tokio::test]
async fn bearer_tokens_authenticate_and_non_masters_are_forbidden() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(
        &tokens,
        "admin-token,admin,1,\"system:masters\"\nuser-token,bob,2,\"devs\"\n",
    )
    .expect("tokens");
    let server = TestServer::start_with(&["--token-auth-file", tokens.to_str().expect("path")]);
    let get = |token: &str| {
        let out = std::process::Command::new("curl")
            .args(["-sk", "-H", &format!("Authorization: Bearer {token}")])
            .arg(format!(
                "{}/api/v1/namespaces/default/configmaps",
                server.url()
            ))
            .output()
            .expect("curl");
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)
    };
    assert_eq!(get("admin-token")["kind"], "ConfigMapList");
    let forbidden = get("user-token");
    assert_eq!(forbidden["code"], 403);
    assert_eq!(
        forbidden["message"],
        "configmaps is forbidden: User \"bob\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"default\""
    );
    assert_eq!(get("wrong-token")["code"], 401);
}

#[tokio::test]
async fn metrics_count_requests_by_verb_resource_and_code() {
    let server = TestServer::start();
    let client = server.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.list(&ListParams::default()).await.expect("list");
    let _ = cms.get("missing").await;
    let metrics = client
        .request_text(
            http::Request::get("/metrics")
                .body(Vec::new())
                .expect("request"),
        )
        .await
        .expect("metrics");
    assert!(
        metrics.contains(
            "apiserver_request_total{verb=\"LIST\",resource=\"configmaps\",code=\"200\"}"
        ),
        "{metrics}"
    );
    assert!(metrics
        .contains("apiserver_request_total{verb=\"GET\",resource=\"configmaps\",code=\"404\"} 1"));
    assert!(metrics.contains("store_request_duration_seconds_count{operation=\"range\"}"));
}

#[tokio::test]
async fn data_survives_a_server_restart() {
    let mut server = TestServer::start();
    let cms: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    cms.create(
        &PostParams::default(),
        &config_map("kept", json!({"k": "v"})),
    )
    .await
    .expect("create");
    let ca_before =
        std::fs::read_to_string(server.dir.path().join("data/server/tls/server-ca.crt"))
            .expect("ca");
    server.restart();
    let cms: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    let kept = cms.get("kept").await.expect("still there");
    assert_eq!(
        kept.data.and_then(|d| d.get("k").cloned()).as_deref(),
        Some("v")
    );
    let ca_after = std::fs::read_to_string(server.dir.path().join("data/server/tls/server-ca.crt"))
        .expect("ca");
    assert_eq!(ca_before, ca_after, "the CA is reused on restart");
}

/// events.k8s.io/v1 and core/v1 Events are two views of the same objects, as in Kubernetes:
/// what a controller records through the new API is what `kubectl describe` lists.
#[tokio::test]
async fn both_event_apis_share_their_objects() {
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    use k8s_openapi::api::events::v1::Event;
    let server = TestServer::start();
    let client = server.client().await;
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let core: Api<CoreEvent> = Api::namespaced(client, "default");
    let event: Event = serde_json::from_value(json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "web.1"},
        "eventTime": "2026-01-02T03:04:05.000000Z",
        "reportingController": "example.com/ctl", "reportingInstance": "ctl-1",
        "action": "Scaling", "reason": "Scaled", "type": "Normal",
        "note": "scaled to 3",
        "regarding": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "namespace": "default", "uid": "u-1"},
        "deprecatedCount": 2
    }))
    .expect("event");
    events
        .create(&PostParams::default(), &event)
        .await
        .expect("create through events.k8s.io");
    let listed = core
        .list(&ListParams::default().fields("involvedObject.uid=u-1"))
        .await
        .expect("core list");
    assert_eq!(listed.items.len(), 1);
    let seen = &listed.items[0];
    assert_eq!(seen.message.as_deref(), Some("scaled to 3"));
    assert_eq!(seen.reporting_component.as_deref(), Some("example.com/ctl"));
    assert_eq!(seen.involved_object.name.as_deref(), Some("web"));
    assert_eq!(seen.count, Some(2));

    // A core write shows through the other API.
    let mut changed = seen.clone();
    changed.message = Some("scaled to 4".into());
    core.replace("web.1", &PostParams::default(), &changed)
        .await
        .expect("core update");
    let back = events.get("web.1").await.expect("events.k8s.io get");
    assert_eq!(back.note.as_deref(), Some("scaled to 4"));
    assert_eq!(back.regarding.and_then(|r| r.uid).as_deref(), Some("u-1"));
    events
        .delete("web.1", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(core.get_opt("web.1").await.expect("get").is_none());
}
