//! The Deployment and ReplicaSet controllers end to end: a real server (with its scheduler and
//! controllers), hollow nodes playing the kubelet, and the real kubectl for what users do
//! (`apply`, `rollout status|history|undo|pause|resume`, `set image`, `scale`). Invariants over
//! a whole rollout are checked on every event of a pod watch.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use serde_json::{json, Value};
use support::hollow::{HollowNode, HollowNodes};
use support::server::{kubectls, TestServer};
use tokio_util::sync::CancellationToken;

const HASH: &str = "pod-template-hash";
const REVISION: &str = "deployment.kubernetes.io/revision";

/// Polls `probe` until it returns `Some`, or fails the test after `secs` seconds.
async fn eventually<T, F, Fut>(secs: u64, what: &str, probe: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One kubectl binary pointed at the test server; runs off the async runtime so that the
/// hollow kubelet keeps working while kubectl waits.
#[derive(Clone)]
struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    home: PathBuf,
}

impl Kubectl {
    fn new(server: &TestServer, bin: PathBuf) -> Kubectl {
        Kubectl {
            bin,
            kubeconfig: server.kubeconfig.clone(),
            home: server.dir.path().to_path_buf(),
        }
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let this = self.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let stdin = stdin.map(String::from);
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut child = Command::new(&this.bin)
                .args(&args)
                .env("KUBECONFIG", &this.kubeconfig)
                .env("HOME", &this.home)
                .stdin(if stdin.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run kubectl");
            if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
                pipe.write_all(input.as_bytes()).expect("kubectl stdin");
            }
            child.wait_with_output().expect("kubectl output")
        })
        .await
        .expect("kubectl task")
    }

    /// Runs kubectl, expects success, returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, None).await
    }

    async fn ok_with(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "`{} {}` failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
            self.bin.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Applies a manifest (JSON is YAML).
    async fn apply(&self, manifest: &Value) -> String {
        self.ok_with(&["apply", "-f", "-"], Some(&manifest.to_string()))
            .await
    }
}

struct Cluster {
    server: TestServer,
    client: kube::Client,
    _nodes: HollowNodes,
}

async fn cluster() -> Cluster {
    let server = TestServer::start();
    let client = server.client().await;
    let nodes = HollowNodes::start(
        client.clone(),
        &[HollowNode::new("hollow-1"), HollowNode::new("hollow-2")],
    )
    .await;
    Cluster {
        server,
        client,
        _nodes: nodes,
    }
}

/// The newest kubectl installed, or `None` (the test is skipped) outside CI.
fn kubectl(cluster: &Cluster, minor: u32) -> Option<Kubectl> {
    kubectls(&[minor])
        .into_iter()
        .next()
        .map(|bin| Kubectl::new(&cluster.server, bin))
}

fn deployment(name: &str, image: &str, replicas: i32, strategy: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "strategy": strategy,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": image}]},
            },
        },
    })
}

fn rolling(surge: Value, unavailable: Value) -> Value {
    json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}})
}

async fn replica_sets(client: &kube::Client, app: &str) -> Vec<ReplicaSet> {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    api.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

async fn pods(client: &kube::Client, selector: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    api.list(&ListParams::default().labels(selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

fn annotation<'a>(meta: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

fn label<'a>(meta: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn condition(d: &Deployment, type_: &str) -> Option<(String, String, String)> {
    d.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| {
            (
                c.status.clone(),
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

fn image_of(rs: &ReplicaSet) -> String {
    rs.spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(-1)
}

/// Watches the pods matching `selector` and calls `check` with all of them after every event
/// (once the initial list is in); stops when dropped.
struct PodWatch {
    cancel: CancellationToken,
    events: Arc<Mutex<usize>>,
}

impl PodWatch {
    fn start(
        client: &kube::Client,
        selector: &str,
        mut check: impl FnMut(&BTreeMap<String, Pod>) + Send + 'static,
    ) -> PodWatch {
        let api: Api<Pod> = Api::namespaced(client.clone(), "default");
        let config = watcher::Config::default().labels(selector);
        let cancel = CancellationToken::new();
        let events = Arc::new(Mutex::new(0));
        let (stop, seen) = (cancel.clone(), Arc::clone(&events));
        tokio::spawn(async move {
            let mut stream = watcher(api, config).boxed();
            let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
            let mut initial: BTreeMap<String, Pod> = BTreeMap::new();
            let mut synced = false;
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    event = stream.next() => event,
                };
                let Some(Ok(event)) = event else { continue };
                let name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
                match event {
                    watcher::Event::Init => initial.clear(),
                    watcher::Event::InitApply(pod) => {
                        initial.insert(name(&pod), pod);
                    }
                    watcher::Event::InitDone => {
                        pods = std::mem::take(&mut initial);
                        synced = true;
                    }
                    watcher::Event::Apply(pod) => {
                        pods.insert(name(&pod), pod);
                    }
                    watcher::Event::Delete(pod) => {
                        pods.remove(&name(&pod));
                    }
                }
                if synced {
                    check(&pods);
                    *seen.lock().expect("events") += 1;
                }
            }
        });
        PodWatch { cancel, events }
    }

    /// Waits until the watch has delivered its initial list.
    async fn synced(&self) {
        let events = Arc::clone(&self.events);
        eventually(30, "pod watch synced", || {
            let events = Arc::clone(&events);
            async move { (*events.lock().expect("events") > 0).then_some(()) }
        })
        .await;
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Waits until the pods of `app` are exactly `count`, all ready, of `image`, none terminating.
async fn wait_pods(client: &kube::Client, app: &str, count: usize, image: &str) -> Vec<Pod> {
    eventually(
        90,
        &format!("{count} ready {app} pods of {image}"),
        || async {
            let pods = pods(client, &format!("app={app}")).await;
            let good = pods.len() == count
                && pods.iter().all(|p| {
                    is_ready(p)
                        && p.metadata.deletion_timestamp.is_none()
                        && p.spec
                            .as_ref()
                            .and_then(|s| s.containers.first())
                            .and_then(|c| c.image.as_deref())
                            == Some(image)
                });
            good.then_some(pods)
        },
    )
    .await
}

/// A rolling update with `maxUnavailable: 0` never has fewer ready pods than desired; revisions,
/// `rollout history` and a client-side `rollout undo` (kubectl 1.33, then 1.27) work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_keeps_ready_pods_and_rolls_back() {
    let c = cluster().await;
    let Some(k) = kubectl(&c, 33) else { return };
    let mut manifest = deployment("web", "nginx:1.25", 3, rolling(json!(1), json!(0)));
    manifest["metadata"]["annotations"] = json!({"kubernetes.io/change-cause": "first"});
    assert_eq!(
        k.apply(&manifest).await.trim(),
        "deployment.apps/web created"
    );
    let status = k
        .ok(&["rollout", "status", "deployment/web", "--timeout=90s"])
        .await;
    assert!(
        status.contains("deployment \"web\" successfully rolled out"),
        "{status}"
    );

    // The ReplicaSet: hash label, selector and name; revision and replicas annotations.
    let sets = replica_sets(&c.client, "web").await;
    assert_eq!(sets.len(), 1);
    let first = sets[0].clone();
    let hash = label(&first.metadata, HASH)
        .expect("hash label")
        .to_string();
    assert_eq!(
        first.metadata.name.as_deref(),
        Some(format!("web-{hash}").as_str())
    );
    let spec = first.spec.clone().expect("rs spec");
    assert_eq!(
        spec.selector
            .match_labels
            .as_ref()
            .and_then(|m| m.get(HASH)),
        Some(&hash)
    );
    let template_labels = spec
        .template
        .and_then(|t| t.metadata)
        .and_then(|m| m.labels)
        .unwrap_or_default();
    assert_eq!(template_labels.get(HASH), Some(&hash));
    assert_eq!(annotation(&first.metadata, REVISION), Some("1"));
    assert_eq!(
        annotation(&first.metadata, "deployment.kubernetes.io/desired-replicas"),
        Some("3")
    );
    assert_eq!(
        annotation(&first.metadata, "deployment.kubernetes.io/max-replicas"),
        Some("4")
    );
    assert_eq!(
        annotation(&first.metadata, "kubernetes.io/change-cause"),
        Some("first")
    );
    let owner = first
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|r| r.controller == Some(true))
        .expect("controller reference");
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Deployment", "web")
    );
    for pod in wait_pods(&c.client, "web", 3, "nginx:1.25").await {
        assert_eq!(label(&pod.metadata, HASH), Some(hash.as_str()));
    }

    // The Deployment's status, as `kubectl rollout status` and `get` read it.
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    let d = deployments.get("web").await.expect("deployment");
    let s = d.status.clone().expect("status");
    assert_eq!(s.observed_generation, d.metadata.generation);
    assert_eq!(
        (
            s.replicas,
            s.updated_replicas,
            s.ready_replicas,
            s.available_replicas
        ),
        (Some(3), Some(3), Some(3), Some(3))
    );
    assert_eq!(s.unavailable_replicas.unwrap_or(0), 0);
    assert_eq!(annotation(&d.metadata, REVISION), Some("1"));
    let available = condition(&d, "Available").expect("Available");
    assert_eq!(
        (available.0.as_str(), available.1.as_str()),
        ("True", "MinimumReplicasAvailable")
    );
    let progressing = condition(&d, "Progressing").expect("Progressing");
    assert_eq!(
        (progressing.0.as_str(), progressing.1.as_str()),
        ("True", "NewReplicaSetAvailable")
    );

    // A new image, watched: never fewer than 3 ready pods that are not terminating.
    let lowest = Arc::new(Mutex::new(usize::MAX));
    let hashes = Arc::new(Mutex::new(BTreeSet::new()));
    let (low, seen) = (Arc::clone(&lowest), Arc::clone(&hashes));
    let watch = PodWatch::start(&c.client, "app=web", move |pods| {
        let ready = pods
            .values()
            .filter(|p| is_ready(p) && p.metadata.deletion_timestamp.is_none())
            .count();
        let mut low = low.lock().expect("lowest");
        *low = (*low).min(ready);
        let mut seen = seen.lock().expect("hashes");
        for pod in pods.values() {
            if let Some(h) = label(&pod.metadata, HASH) {
                seen.insert(h.to_string());
            }
        }
    });
    watch.synced().await;
    manifest["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.26");
    manifest["metadata"]["annotations"] = json!({"kubernetes.io/change-cause": "second"});
    assert_eq!(
        k.apply(&manifest).await.trim(),
        "deployment.apps/web configured"
    );
    k.ok(&["rollout", "status", "deployment/web", "--timeout=90s"])
        .await;
    wait_pods(&c.client, "web", 3, "nginx:1.26").await;
    drop(watch);
    let lowest = *lowest.lock().expect("lowest");
    assert!(
        lowest >= 3,
        "ready pods dropped to {lowest} during the rollout"
    );
    assert_eq!(
        hashes.lock().expect("hashes").len(),
        2,
        "both templates' pods seen"
    );
    let sets = replica_sets(&c.client, "web").await;
    assert_eq!(sets.len(), 2);
    let old = sets
        .iter()
        .find(|rs| image_of(rs) == "nginx:1.25")
        .expect("old rs");
    let new = sets
        .iter()
        .find(|rs| image_of(rs) == "nginx:1.26")
        .expect("new rs");
    assert_eq!((rs_replicas(old), rs_replicas(new)), (0, 3));
    assert_eq!(annotation(&new.metadata, REVISION), Some("2"));
    assert_eq!(
        annotation(
            &deployments.get("web").await.expect("web").metadata,
            REVISION
        ),
        Some("2")
    );

    let history = k.ok(&["rollout", "history", "deployment/web"]).await;
    let rows: Vec<Vec<&str>> = history
        .lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows, [vec!["1", "first"], vec!["2", "second"]], "{history}");

    // Undo (client-side in kubectl >= 1.27): the first template again, as revision 3.
    let undone = k.ok(&["rollout", "undo", "deployment/web"]).await;
    assert_eq!(undone.trim(), "deployment.apps/web rolled back");
    k.ok(&["rollout", "status", "deployment/web", "--timeout=90s"])
        .await;
    wait_pods(&c.client, "web", 3, "nginx:1.25").await;
    let sets = replica_sets(&c.client, "web").await;
    assert_eq!(sets.len(), 2, "the old ReplicaSet is reused");
    let back = sets
        .iter()
        .find(|rs| image_of(rs) == "nginx:1.25")
        .expect("rs");
    assert_eq!(label(&back.metadata, HASH), Some(hash.as_str()));
    assert_eq!(annotation(&back.metadata, REVISION), Some("3"));
    assert_eq!(
        annotation(&back.metadata, "deployment.kubernetes.io/revision-history"),
        Some("1")
    );
    assert_eq!(rs_replicas(back), 3);
    let history = k.ok(&["rollout", "history", "deployment/web"]).await;
    let revisions: Vec<&str> = history
        .lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, ["2", "3"], "{history}");
    let detail = k
        .ok(&["rollout", "history", "deployment/web", "--revision=2"])
        .await;
    assert!(detail.contains("nginx:1.26"), "{detail}");

    // kubectl 1.27 undoes to a named revision the same way.
    if let Some(old_kubectl) = kubectl(&c, 27) {
        let undone = old_kubectl
            .ok(&["rollout", "undo", "deployment/web", "--to-revision=2"])
            .await;
        assert_eq!(undone.trim(), "deployment.apps/web rolled back");
        old_kubectl
            .ok(&["rollout", "status", "deployment/web", "--timeout=90s"])
            .await;
        wait_pods(&c.client, "web", 3, "nginx:1.26").await;
        let d = deployments.get("web").await.expect("web");
        assert_eq!(annotation(&d.metadata, REVISION), Some("4"));
        assert_eq!(
            annotation(&d.metadata, "kubernetes.io/change-cause"),
            Some("second")
        );
    }
}

/// Recreate: the new pods start only once every old pod is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_never_runs_old_and_new_pods_together() {
    let c = cluster().await;
    let Some(k) = kubectl(&c, 33) else { return };
    let mut manifest = deployment("batch", "busybox:1.36", 3, json!({"type": "Recreate"}));
    k.apply(&manifest).await;
    k.ok(&["rollout", "status", "deployment/batch", "--timeout=90s"])
        .await;
    wait_pods(&c.client, "batch", 3, "busybox:1.36").await;

    let mixed = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&mixed);
    let watch = PodWatch::start(&c.client, "app=batch", move |pods| {
        let hashes: BTreeSet<&str> = pods
            .values()
            .filter_map(|p| label(&p.metadata, HASH))
            .collect();
        if hashes.len() > 1 {
            record
                .lock()
                .expect("mixed")
                .push(pods.keys().cloned().collect::<Vec<_>>());
        }
    });
    watch.synced().await;
    manifest["spec"]["template"]["spec"]["containers"][0]["image"] = json!("busybox:1.37");
    k.apply(&manifest).await;
    k.ok(&["rollout", "status", "deployment/batch", "--timeout=90s"])
        .await;
    wait_pods(&c.client, "batch", 3, "busybox:1.37").await;
    drop(watch);
    let mixed = mixed.lock().expect("mixed").clone();
    assert!(mixed.is_empty(), "old and new pods together: {mixed:?}");
    let sets = replica_sets(&c.client, "batch").await;
    let replicas: BTreeMap<String, i32> = sets
        .iter()
        .map(|rs| (image_of(rs), rs_replicas(rs)))
        .collect();
    assert_eq!(
        replicas,
        BTreeMap::from([("busybox:1.36".into(), 0), ("busybox:1.37".into(), 3)])
    );

    // No history kept: the old, empty ReplicaSet is deleted.
    manifest["spec"]["revisionHistoryLimit"] = json!(0);
    k.apply(&manifest).await;
    let left = eventually(60, "old replica set cleaned up", || async {
        let sets = replica_sets(&c.client, "batch").await;
        (sets.len() == 1).then_some(sets)
    })
    .await;
    assert_eq!(image_of(&left[0]), "busybox:1.37");
}

/// A ReplicaSet that already has the name the Deployment's new one would get, with another
/// template, is a hash collision: `collisionCount` goes up and the new ReplicaSet gets another
/// name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_collisions_raise_the_collision_count() {
    let c = cluster().await;
    let Some(k) = kubectl(&c, 33) else { return };
    let mut manifest = deployment("coll", "nginx:1.25", 1, rolling(json!(1), json!(0)));
    manifest["spec"]["paused"] = json!(true);
    k.apply(&manifest).await;
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    let d = deployments.get("coll").await.expect("coll");
    let template = d.spec.clone().expect("spec").template;
    let hash = cluster::server::controllers::deployment::hash::pod_template_hash(&template, None);
    let squatter: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": format!("coll-{hash}"), "labels": {"app": "squatter"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "squatter"}},
            "template": {
                "metadata": {"labels": {"app": "squatter"}},
                "spec": {"containers": [{"name": "web", "image": "busybox:1.36"}]},
            },
        },
    }))
    .expect("squatter");
    let sets: Api<ReplicaSet> = Api::namespaced(c.client.clone(), "default");
    sets.create(&PostParams::default(), &squatter)
        .await
        .expect("squatter");
    k.ok(&["rollout", "resume", "deployment/coll"]).await;
    k.ok(&["rollout", "status", "deployment/coll", "--timeout=90s"])
        .await;
    let d = deployments.get("coll").await.expect("coll");
    assert_eq!(d.status.and_then(|s| s.collision_count), Some(1));
    let owned = replica_sets(&c.client, "coll").await;
    assert_eq!(owned.len(), 1);
    let name = owned[0].metadata.name.clone().unwrap_or_default();
    assert_ne!(name, format!("coll-{hash}"));
    let second =
        cluster::server::controllers::deployment::hash::pod_template_hash(&template, Some(1));
    assert_eq!(name, format!("coll-{second}"));
    let squatter = sets.get(&format!("coll-{hash}")).await.expect("squatter");
    assert_eq!(
        image_of(&squatter),
        "busybox:1.36",
        "the squatter is left alone"
    );
}

/// A paused Deployment records the new template but rolls nothing out (it still scales);
/// resumed, it rolls out; `rollout restart` rolls out again; deletion takes the ReplicaSets
/// and pods along. A rollout that cannot progress exceeds its deadline, and
/// `kubectl rollout status` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_progress_deadline() {
    let c = cluster().await;
    let Some(k) = kubectl(&c, 33) else { return };
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), "default");

    k.apply(&deployment(
        "api",
        "nginx:1.25",
        2,
        rolling(json!("25%"), json!("25%")),
    ))
    .await;
    k.ok(&["rollout", "status", "deployment/api", "--timeout=90s"])
        .await;
    assert_eq!(
        k.ok(&["rollout", "pause", "deployment/api"]).await.trim(),
        "deployment.apps/api paused"
    );
    k.ok(&["set", "image", "deployment/api", "web=nginx:1.26"])
        .await;
    k.ok(&["scale", "deployment/api", "--replicas=3"]).await;
    let paused = eventually(30, "paused deployment observed", || async {
        let d = deployments.get("api").await.ok()?;
        let s = d.status.as_ref()?;
        let observed = s.observed_generation == d.metadata.generation;
        let reason = condition(&d, "Progressing")?.1;
        (observed && reason == "DeploymentPaused" && s.replicas == Some(3)).then_some(d)
    })
    .await;
    assert_eq!(
        condition(&paused, "Progressing").map(|c| c.0).as_deref(),
        Some("Unknown")
    );
    let sets = replica_sets(&c.client, "api").await;
    assert_eq!(sets.len(), 1, "no rollout while paused");
    assert_eq!(
        (image_of(&sets[0]), rs_replicas(&sets[0])),
        ("nginx:1.25".into(), 3)
    );
    wait_pods(&c.client, "api", 3, "nginx:1.25").await;

    assert_eq!(
        k.ok(&["rollout", "resume", "deployment/api"]).await.trim(),
        "deployment.apps/api resumed"
    );
    k.ok(&["rollout", "status", "deployment/api", "--timeout=90s"])
        .await;
    wait_pods(&c.client, "api", 3, "nginx:1.26").await;
    let sets = replica_sets(&c.client, "api").await;
    assert_eq!(sets.len(), 2);

    // `rollout restart` changes the template's annotations: a third ReplicaSet, same image.
    k.ok(&["rollout", "restart", "deployment/api"]).await;
    k.ok(&["rollout", "status", "deployment/api", "--timeout=90s"])
        .await;
    let sets = replica_sets(&c.client, "api").await;
    assert_eq!(sets.len(), 3);
    let live: Vec<&ReplicaSet> = sets.iter().filter(|rs| rs_replicas(rs) > 0).collect();
    assert_eq!(live.len(), 1);
    assert_eq!(annotation(&live[0].metadata, REVISION), Some("3"));

    // Deleted, the Deployment takes its ReplicaSets and pods along (garbage collector).
    k.ok(&["delete", "deployment", "api"]).await;
    eventually(60, "replica sets and pods of api gone", || async {
        let empty = replica_sets(&c.client, "api").await.is_empty()
            && pods(&c.client, "app=api").await.is_empty();
        empty.then_some(())
    })
    .await;

    // Pods that never become ready: the deadline passes.
    let mut stuck = deployment("stuck", "nginx:1.25", 1, rolling(json!(1), json!(0)));
    stuck["spec"]["progressDeadlineSeconds"] = json!(3);
    stuck["spec"]["template"]["metadata"]["annotations"] =
        json!({"hollow.cluster.dev/not-ready": "true"});
    k.apply(&stuck).await;
    let timed_out = eventually(60, "progress deadline exceeded", || async {
        let d = deployments.get("stuck").await.ok()?;
        let c = condition(&d, "Progressing")?;
        (c.1 == "ProgressDeadlineExceeded").then_some((d, c))
    })
    .await;
    let (d, progressing) = timed_out;
    assert_eq!(progressing.0, "False");
    assert!(
        progressing.2.starts_with("ReplicaSet \"stuck-")
            && progressing.2.ends_with("\" has timed out progressing."),
        "{}",
        progressing.2
    );
    let available = condition(&d, "Available").expect("Available");
    assert_eq!(
        (available.0.as_str(), available.1.as_str()),
        ("False", "MinimumReplicasUnavailable")
    );
    let out = k
        .run(
            &["rollout", "status", "deployment/stuck", "--timeout=60s"],
            None,
        )
        .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("deployment \"stuck\" exceeded its progress deadline"),
        "{stderr}"
    );
}

fn pod_manifest(name: &str, labels: Value, annotations: Value, node_selector: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {"nodeSelector": node_selector,
                 "containers": [{"name": "web", "image": "nginx:1.25"}]},
    }))
    .expect("pod")
}

fn replica_set(name: &str, replicas: i32, template_labels: Value) -> ReplicaSet {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": template_labels},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]},
            },
        },
    }))
    .expect("replica set")
}

fn controller_uid(pod: &Pod) -> Option<String> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.clone())
}

/// A ReplicaSet adopts matching orphans, releases pods whose labels stop matching, keeps its
/// status, and scales down the least valuable pods first (unscheduled, then not ready).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_sets_adopt_release_and_scale_down_least_valuable_first() {
    let c = cluster().await;
    let Some(k) = kubectl(&c, 33) else { return };
    let pods_api: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(c.client.clone(), "default");
    let params = PostParams::default();

    pods_api
        .create(
            &params,
            &pod_manifest("orphan", json!({"app": "keeper"}), json!({}), json!({})),
        )
        .await
        .expect("orphan");
    let rs = sets
        .create(
            &params,
            &replica_set("keeper", 2, json!({"app": "keeper", "tier": "web"})),
        )
        .await
        .expect("replica set");
    let uid = rs.metadata.uid.clone().expect("uid");
    let status = eventually(60, "keeper adopts the orphan and makes one pod", || async {
        let rs = sets.get("keeper").await.ok()?;
        let s = rs.status.clone()?;
        let pods = pods(&c.client, "app=keeper").await;
        let owned = pods
            .iter()
            .filter(|p| controller_uid(p).as_deref() == Some(&uid))
            .count();
        (owned == 2 && pods.len() == 2 && s.available_replicas == Some(2)).then_some((rs, s))
    })
    .await;
    let (rs, s) = status;
    assert_eq!(s.replicas, 2);
    assert_eq!(s.ready_replicas, Some(2));
    assert_eq!(
        s.fully_labeled_replicas,
        Some(1),
        "the orphan lacks tier=web"
    );
    assert_eq!(s.observed_generation, rs.metadata.generation);
    let orphan = pods_api.get("orphan").await.expect("orphan");
    assert_eq!(controller_uid(&orphan).as_deref(), Some(uid.as_str()));

    // Relabelled, the pod is released and replaced.
    k.ok(&["label", "pod", "orphan", "app=elsewhere", "--overwrite"])
        .await;
    eventually(60, "orphan released and replaced", || async {
        let released = pods_api.get("orphan").await.ok()?;
        let pods = pods(&c.client, "app=keeper").await;
        let owned = pods
            .iter()
            .filter(|p| controller_uid(p).as_deref() == Some(&uid))
            .count();
        (controller_uid(&released).is_none() && owned == 2 && pods.len() == 2).then_some(())
    })
    .await;

    // Scale-down order: an unscheduled pod goes first, then a not-ready one.
    pods_api
        .create(
            &params,
            &pod_manifest(
                "unscheduled",
                json!({"app": "rank"}),
                json!({}),
                json!({"nowhere": "true"}),
            ),
        )
        .await
        .expect("unscheduled pod");
    pods_api
        .create(
            &params,
            &pod_manifest(
                "not-ready",
                json!({"app": "rank"}),
                json!({"hollow.cluster.dev/not-ready": "true"}),
                json!({}),
            ),
        )
        .await
        .expect("not-ready pod");
    sets.create(&params, &replica_set("rank", 4, json!({"app": "rank"})))
        .await
        .expect("rank");
    eventually(
        60,
        "rank has 4 pods, 2 ready, one running unready",
        || async {
            let rs = sets.get("rank").await.ok()?;
            let s = rs.status?;
            let not_ready = pods_api.get("not-ready").await.ok()?;
            let running = not_ready.status.as_ref()?.phase.as_deref() == Some("Running");
            (s.replicas == 4 && s.ready_replicas == Some(2) && running).then_some(())
        },
    )
    .await;
    let names = |pods: Vec<Pod>| -> BTreeSet<String> {
        pods.into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.metadata.name)
            .collect()
    };
    k.ok(&["scale", "rs", "rank", "--replicas=3"]).await;
    let left = eventually(60, "rank scaled to 3", || async {
        let left = names(pods(&c.client, "app=rank").await);
        (left.len() == 3).then_some(left)
    })
    .await;
    assert!(!left.contains("unscheduled"), "{left:?}");
    assert!(left.contains("not-ready"), "{left:?}");
    k.ok(&["scale", "rs", "rank", "--replicas=2"]).await;
    let left = eventually(60, "rank scaled to 2", || async {
        let left = names(pods(&c.client, "app=rank").await);
        (left.len() == 2).then_some(left)
    })
    .await;
    assert!(!left.contains("not-ready"), "{left:?}");
    let remaining = pods(&c.client, "app=rank").await;
    for pod in remaining
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        assert!(
            is_ready(pod),
            "{:?} left although not ready",
            pod.metadata.name
        );
    }
}

/// A lost node: its lease stops, the node lifecycle controller taints it unreachable, the
/// Deployment's pods there are evicted once their tolerationSeconds run out, and the ReplicaSet
/// replaces them on the node that is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_nodes_pods_are_replaced_on_another_node() {
    let server = TestServer::start_with(&["--node-monitor-grace-period", "5s"]);
    let client = server.client().await;
    let nodes = HollowNodes::start(
        client.clone(),
        &[HollowNode::new("stay-1"), HollowNode::new("lost-1")],
    )
    .await;
    let mut manifest = deployment("survivor", "nginx:1.25", 4, rolling(json!(1), json!(0)));
    // Evicted 2 s after the taint rather than the default 300 s.
    manifest["spec"]["template"]["spec"]["tolerations"] = json!([
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2},
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2}
    ]);
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    api.create(
        &PostParams::default(),
        &serde_json::from_value(manifest).expect("deployment"),
    )
    .await
    .expect("create");
    let before = wait_pods(&client, "survivor", 4, "nginx:1.25").await;
    let on_lost = before
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("lost-1"))
        .count();
    assert!(
        on_lost > 0,
        "the scheduler spreads the replicas over both nodes"
    );

    nodes.silence("lost-1");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let pods = pods(&client, "app=survivor").await;
        let live: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let all_on_stay = live.iter().all(|p| {
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("stay-1") && is_ready(p)
        });
        if live.len() == 4 && all_on_stay {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let state: Vec<String> = pods
                .iter()
                .map(|p| {
                    format!(
                        "{} on {:?} ready={} deleting={}",
                        p.metadata.name.as_deref().unwrap_or(""),
                        p.spec.as_ref().and_then(|s| s.node_name.as_deref()),
                        is_ready(p),
                        p.metadata.deletion_timestamp.is_some()
                    )
                })
                .collect();
            panic!("timed out waiting for 4 ready pods, all on stay-1: {state:#?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eventually(30, "the Deployment to report 4 available again", || async {
        let deploy = api.get("survivor").await.ok()?;
        (deploy.status?.available_replicas == Some(4)).then_some(())
    })
    .await;
    drop(nodes);
}
