//! The workload controllers (Job, CronJob, DaemonSet, StatefulSet) end to end: a real server,
//! hollow nodes playing the kubelet, and the server's own scheduler placing the pods.

mod support;

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{json, Value};
use support::hollow::{HollowNode, HollowNodes};
use support::server::{kubectls, TestServer};

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

/// Runs kubectl without blocking the runtime (the hollow kubelet shares it).
async fn kubectl(server: &TestServer, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use tokio::io::AsyncWriteExt;
    let Some(bin) = kubectls(&[33]).into_iter().next() else {
        panic!("kubectl 1.33 is needed here");
    };
    let mut child = tokio::process::Command::new(bin)
        .args(args)
        .env("KUBECONFIG", &server.kubeconfig)
        .env("HOME", server.dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run kubectl");
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin.unwrap_or_default().as_bytes())
            .await
            .expect("kubectl stdin");
    }
    let out = child.wait_with_output().await.expect("kubectl output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// One line per pod with the given labels: name, uid, node, phase, readiness, deletion.
async fn describe_pods(client: &kube::Client, labels: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let items = pods
        .list(&ListParams::default().labels(labels))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    items
        .iter()
        .map(|p| {
            let status = p.status.clone().unwrap_or_default();
            let ready = status
                .conditions
                .unwrap_or_default()
                .iter()
                .map(|c| format!("{}={}", c.type_, c.status))
                .collect::<Vec<_>>()
                .join(",");
            format!(
                "{} uid={} node={:?} phase={:?} [{}] deleting={}\n",
                p.metadata.name.clone().unwrap_or_default(),
                p.metadata.uid.clone().unwrap_or_default(),
                p.spec.as_ref().and_then(|s| s.node_name.clone()),
                status.phase,
                ready,
                p.metadata.deletion_timestamp.is_some()
            )
        })
        .collect()
}

/// `kubectl apply -f -` of a YAML manifest; fails the test if kubectl does.
async fn apply(server: &TestServer, manifest: &str) {
    let (ok, out) = kubectl(server, &["apply", "-f", "-"], Some(manifest)).await;
    assert!(ok, "kubectl apply failed: {out}");
}

fn has_condition(job: &Job, type_: &str) -> Option<String> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| c.reason.clone().unwrap_or_default())
}

fn job(name: &str, spec: Value, exit_code: i32) -> Job {
    let mut spec = spec;
    spec["template"] = json!({
        "metadata": {"annotations": {
            "hollow.cluster.dev/exit-code": exit_code.to_string(),
            "hollow.cluster.dev/run-seconds": "1",
        }},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]},
    });
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))
    .expect("job")
}

async fn job_pods(client: &kube::Client, name: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={name}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

async fn cluster() -> (TestServer, kube::Client, HollowNodes) {
    let server = TestServer::start();
    let client = server.client().await;
    let nodes = HollowNodes::start(
        client.clone(),
        &[HollowNode::new("hollow-1"), HollowNode::new("hollow-2")],
    )
    .await;
    (server, client, nodes)
}

#[tokio::test]
async fn jobs_complete_fail_and_index() {
    let (_server, client, _nodes) = cluster().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    for j in [
        job("three", json!({"completions": 3, "parallelism": 2}), 0),
        job("failing", json!({"backoffLimit": 1}), 1),
        job(
            "indexed",
            json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed"}),
            0,
        ),
    ] {
        jobs.create(&PostParams::default(), &j)
            .await
            .expect("create job");
    }

    // completions 3, parallelism 2: never more than two at once, then Complete.
    let done = eventually(40, "job three completes", || async {
        let pods = job_pods(&client, "three").await;
        let running = pods
            .iter()
            .filter(|p| {
                !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            })
            .count();
        assert!(running <= 2, "more pods than parallelism: {running}");
        let j = jobs.get("three").await.ok()?;
        has_condition(&j, "Complete").map(|_| j)
    })
    .await;
    let status = done.status.unwrap_or_default();
    assert_eq!(status.succeeded, Some(3));
    assert!(status.completion_time.is_some());
    assert!(status.start_time.is_some());
    assert!(has_condition(&done_again(&jobs, "three").await, "SuccessCriteriaMet").is_some());
    for pod in job_pods(&client, "three").await {
        let name = pod.metadata.name.unwrap_or_default();
        assert!(
            name.starts_with("three-") && name.len() == "three-".len() + 5,
            "{name}"
        );
    }

    // Indexed: one pod per index, hostname <job>-<index>.
    let indexed = eventually(40, "indexed job completes", || async {
        let j = jobs.get("indexed").await.ok()?;
        has_condition(&j, "Complete").map(|_| j)
    })
    .await;
    assert_eq!(
        indexed.status.and_then(|s| s.completed_indexes).as_deref(),
        Some("0-2")
    );
    let mut hostnames: Vec<String> = job_pods(&client, "indexed")
        .await
        .into_iter()
        .filter_map(|p| p.spec?.hostname)
        .collect();
    hostnames.sort();
    assert_eq!(hostnames, ["indexed-0", "indexed-1", "indexed-2"]);

    // backoffLimit 1 with failing pods: two failures (10 s back-off between them), then Failed.
    let failed = eventually(45, "job failing fails", || async {
        let j = jobs.get("failing").await.ok()?;
        has_condition(&j, "Failed").map(|reason| (j, reason))
    })
    .await;
    assert_eq!(failed.1, "BackoffLimitExceeded");
    assert!(has_condition(&failed.0, "FailureTarget").is_some());
    assert_eq!(failed.0.status.and_then(|s| s.failed), Some(2));
}

async fn done_again(jobs: &Api<Job>, name: &str) -> Job {
    jobs.get(name).await.expect("job")
}

#[tokio::test]
async fn cronjob_fires_every_minute() {
    use k8s_openapi::api::batch::v1::CronJob;
    let (_server, client, _nodes) = cluster().await;
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), "default");
    let cronjob: CronJob = serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "tick", "namespace": "default"},
        "spec": {
            "schedule": "* * * * *",
            "timeZone": "Etc/UTC",
            "concurrencyPolicy": "Forbid",
            "jobTemplate": {"spec": {"template": {
                "metadata": {"annotations": {"hollow.cluster.dev/exit-code": "0"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]},
            }}},
        },
    }))
    .expect("cronjob");
    cronjobs
        .create(&PostParams::default(), &cronjob)
        .await
        .expect("create cronjob");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let job = eventually(75, "the cronjob starts a job", || async {
        jobs.list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|j| {
                j.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("tick-"))
            })
    })
    .await;
    let name = job.metadata.name.clone().unwrap_or_default();
    let minutes: i64 = name
        .trim_start_matches("tick-")
        .parse()
        .expect("minutes suffix");
    let now = jiff::Timestamp::now().as_second() / 60;
    assert!((now - minutes).abs() <= 1, "{name} is not this minute");
    let annotations = job.metadata.annotations.clone().unwrap_or_default();
    assert!(annotations.contains_key("batch.kubernetes.io/cronjob-scheduled-timestamp"));
    // The job completes and the CronJob records it.
    eventually(30, "lastSuccessfulTime is recorded", || async {
        let cj = cronjobs.get("tick").await.ok()?;
        let status = cj.status?;
        status.last_successful_time?;
        status.last_schedule_time
    })
    .await;
}

fn daemonset_yaml(name: &str, image: &str, extra_spec: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: {name}
  namespace: default
spec:
  selector:
    matchLabels: {{app: {name}}}
  updateStrategy:
    type: RollingUpdate
    rollingUpdate: {{maxUnavailable: 1}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
{extra_spec}      containers:
      - name: c
        image: {image}
"#
    )
}

/// The nodes the live (not terminating) pods of DaemonSet `name` are on, sorted.
async fn daemon_nodes(client: &kube::Client, name: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut nodes: Vec<String> = pods
        .list(&ListParams::default().labels(&format!("app={name}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.spec?.node_name)
        .collect();
    nodes.sort();
    nodes
}

async fn wait_for_daemon_nodes(client: &kube::Client, name: &str, want: &[&str], what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while daemon_nodes(client, name).await != want {
        if tokio::time::Instant::now() > deadline {
            let pods = describe_pods(client, &format!("app={name}")).await;
            panic!("timed out: {what}; pods:\n{pods}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn daemonset_follows_nodes_taints_selectors_and_rolls() {
    use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
    let server = TestServer::start();
    let client = server.client().await;
    let nodes = HollowNodes::start(
        client.clone(),
        &[
            HollowNode::new("hollow-1"),
            HollowNode::new("hollow-2").label("disk", "ssd"),
        ],
    )
    .await;
    apply(&server, &daemonset_yaml("agent", "busybox:1", "")).await;
    apply(
        &server,
        &daemonset_yaml(
            "ssd-agent",
            "busybox:1",
            "      nodeSelector: {disk: ssd}\n",
        ),
    )
    .await;
    let (ok, out) = kubectl(
        &server,
        &["rollout", "status", "ds/agent", "--timeout=90s"],
        None,
    )
    .await;
    if !(ok && out.contains("successfully rolled out")) {
        let pods = describe_pods(&client, "app=agent").await;
        panic!("kubectl rollout status: {out}\npods:\n{pods}");
    }
    wait_for_daemon_nodes(
        &client,
        "agent",
        &["hollow-1", "hollow-2"],
        "agent everywhere",
    )
    .await;
    wait_for_daemon_nodes(
        &client,
        "ssd-agent",
        &["hollow-2"],
        "ssd-agent on ssd nodes",
    )
    .await;

    // The scheduler placed them: the controller only pinned them with node affinity.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for pod in pods
        .list(&ListParams::default().labels("app=agent"))
        .await
        .expect("pods")
        .items
    {
        let spec = pod.spec.expect("spec");
        let terms = spec
            .affinity
            .and_then(|a| a.node_affinity)
            .and_then(|a| a.required_during_scheduling_ignored_during_execution)
            .expect("required node affinity")
            .node_selector_terms;
        let fields = terms[0].match_fields.clone().unwrap_or_default();
        assert_eq!(fields[0].key, "metadata.name");
        assert_eq!(fields[0].values, spec.node_name.map(|n| vec![n]));
        assert!(spec
            .tolerations
            .unwrap_or_default()
            .iter()
            .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unreachable")));
    }

    // An untolerated taint keeps pods off; new nodes get pods; removed nodes lose them.
    nodes
        .add(&HollowNode::new("hollow-3").taint("dedicated", "gpu", "NoSchedule"))
        .await;
    nodes
        .add(&HollowNode::new("hollow-4").label("disk", "ssd"))
        .await;
    wait_for_daemon_nodes(
        &client,
        "agent",
        &["hollow-1", "hollow-2", "hollow-4"],
        "agent on the new untainted node",
    )
    .await;
    wait_for_daemon_nodes(
        &client,
        "ssd-agent",
        &["hollow-2", "hollow-4"],
        "ssd-agent follows",
    )
    .await;
    nodes.remove("hollow-2").await;
    wait_for_daemon_nodes(
        &client,
        "agent",
        &["hollow-1", "hollow-4"],
        "agent leaves hollow-2",
    )
    .await;
    wait_for_daemon_nodes(
        &client,
        "ssd-agent",
        &["hollow-4"],
        "ssd-agent leaves hollow-2",
    )
    .await;

    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let ds = daemonsets.get("agent").await.expect("daemonset");
        let status = ds.status.clone().unwrap_or_default();
        if status.desired_number_scheduled == 2 && status.number_available == Some(2) {
            break status;
        }
        if tokio::time::Instant::now() > deadline {
            let pods = describe_pods(&client, "app=agent").await;
            let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
            let names: Vec<String> = nodes
                .list(&ListParams::default())
                .await
                .map(|l| {
                    l.items
                        .into_iter()
                        .filter_map(|n| n.metadata.name)
                        .collect()
                })
                .unwrap_or_default();
            panic!(
                "timed out: status counts the nodes; generation {:?} status {status:?}\nnodes {names:?}\npods:\n{pods}",
                ds.metadata.generation
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(status.current_number_scheduled, 2);
    assert_eq!(status.number_ready, 2);
    assert_eq!(status.updated_number_scheduled, Some(2));
    assert_eq!(status.number_misscheduled, 0);

    // A new image rolls out node by node; kubectl follows it to the end.
    let before: Vec<String> = pods
        .list(&ListParams::default().labels("app=agent"))
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    apply(&server, &daemonset_yaml("agent", "busybox:2", "")).await;
    let (ok, out) = kubectl(
        &server,
        &["rollout", "status", "ds/agent", "--timeout=120s"],
        None,
    )
    .await;
    if !(ok && out.contains("successfully rolled out")) {
        let pods = describe_pods(&client, "app=agent").await;
        panic!("kubectl rollout status: {out}\npods:\n{pods}");
    }
    let after = eventually(30, "only new pods are left", || async {
        let items = pods
            .list(&ListParams::default().labels("app=agent"))
            .await
            .ok()?
            .items;
        (items.len() == 2).then_some(items)
    })
    .await;
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), "default");
    let history = revisions
        .list(&ListParams::default().labels("app=agent"))
        .await
        .expect("revisions")
        .items;
    assert_eq!(history.len(), 2);
    let newest = history
        .iter()
        .max_by_key(|r| r.revision)
        .expect("a revision");
    let hash = newest
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("controller-revision-hash"))
        .expect("hash label");
    for pod in &after {
        let name = pod.metadata.name.clone().unwrap_or_default();
        assert!(!before.contains(&name), "{name} was not replaced");
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("controller-revision-hash"), Some(hash));
        let image = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers[0].image.clone());
        assert_eq!(image.as_deref(), Some("busybox:2"));
    }
}

fn statefulset_yaml(replicas: i32, image: &str, partition: i32) -> String {
    statefulset_yaml_retaining(replicas, image, partition, "Retain")
}

fn statefulset_yaml_retaining(
    replicas: i32,
    image: &str,
    partition: i32,
    when_scaled: &str,
) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
  namespace: default
spec:
  serviceName: web
  replicas: {replicas}
  persistentVolumeClaimRetentionPolicy: {{whenDeleted: Retain, whenScaled: {when_scaled}}}
  selector:
    matchLabels: {{app: web}}
  updateStrategy:
    type: RollingUpdate
    rollingUpdate: {{partition: {partition}}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: c
        image: {image}
        volumeMounts:
        - {{name: www, mountPath: /data}}
  volumeClaimTemplates:
  - metadata:
      name: www
    spec:
      accessModes: [ReadWriteOnce]
      resources:
        requests: {{storage: 1Gi}}
"#
    )
}

/// Records, in watch order, what happens to the pods labelled `app=web`: `created web-0`,
/// `ready web-0`, `terminating web-0`, `deleted web-0`.
fn record_pod_history(client: &kube::Client) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let log: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let sink = std::sync::Arc::clone(&log);
    tokio::spawn(async move {
        let mut seen: std::collections::HashMap<String, (bool, bool)> = Default::default();
        let mut events = watcher(pods, watcher::Config::default().labels("app=web")).boxed();
        while let Some(event) = events.next().await {
            let mut out = Vec::new();
            match event {
                Ok(watcher::Event::Apply(pod)) | Ok(watcher::Event::InitApply(pod)) => {
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    let uid = pod.metadata.uid.clone().unwrap_or_default();
                    let ready = pod
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        });
                    let (was_ready, was_terminating) = seen
                        .entry(uid)
                        .or_insert_with(|| {
                            out.push(format!("created {name}"));
                            (false, false)
                        })
                        .to_owned();
                    let terminating = pod.metadata.deletion_timestamp.is_some();
                    if ready && !was_ready {
                        out.push(format!("ready {name}"));
                    }
                    if terminating && !was_terminating {
                        out.push(format!("terminating {name}"));
                    }
                    let uid = pod.metadata.uid.clone().unwrap_or_default();
                    seen.insert(uid, (was_ready || ready, was_terminating || terminating));
                }
                Ok(watcher::Event::InitDone) => out.push("synced".to_string()),
                Ok(watcher::Event::Delete(pod)) => {
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    out.push(format!("deleted {name}"));
                }
                _ => {}
            }
            sink.lock().expect("log").extend(out);
        }
    });
    log
}

/// Where `entry` first appears in the log after position `from`.
fn at(log: &[String], entry: &str, from: usize) -> usize {
    log.iter()
        .skip(from)
        .position(|e| e == entry)
        .map(|p| p + from)
        .unwrap_or_else(|| panic!("{entry:?} not in {log:?} after {from}"))
}

async fn web_pods(client: &kube::Client) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut items: Vec<Pod> = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    items.sort_by_key(|p| p.metadata.name.clone());
    items
}

fn image_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers[0].image.clone())
        .unwrap_or_default()
}

fn label_of(pod: &Pod, key: &str) -> String {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key).cloned())
        .unwrap_or_default()
}

#[tokio::test]
async fn statefulset_orders_claims_scales_and_rolls_with_partition() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    let server = TestServer::start();
    let client = server.client().await;
    let _nodes = HollowNodes::start(
        client.clone(),
        &[HollowNode::new("hollow-1"), HollowNode::new("hollow-2")],
    )
    .await;
    let log = record_pod_history(&client);
    eventually(30, "the pod watch is running", || async {
        log.lock()
            .expect("log")
            .contains(&"synced".to_string())
            .then_some(())
    })
    .await;
    let rollout = |timeout: &'static str| {
        let server = &server;
        let client = client.clone();
        async move {
            let (ok, out) = kubectl(
                server,
                &[
                    "rollout",
                    "status",
                    "sts/web",
                    &format!("--timeout={timeout}"),
                ],
                None,
            )
            .await;
            if !ok {
                let pods = describe_pods(&client, "app=web").await;
                panic!("kubectl rollout status failed: {out}\npods:\n{pods}");
            }
            out
        }
    };

    // Scale up in order: each pod only once the one before is Ready.
    apply(&server, &statefulset_yaml(3, "nginx:1", 0)).await;
    let out = rollout("120s").await;
    assert!(out.contains("partitioned roll out complete"), "{out}");
    let events = log.lock().expect("log").clone();
    let mut from = 0;
    for ordinal in 0..3 {
        from = at(&events, &format!("created web-{ordinal}"), from);
        from = at(&events, &format!("ready web-{ordinal}"), from);
    }
    let pods = web_pods(&client).await;
    assert_eq!(pods.len(), 3);
    for (ordinal, pod) in pods.iter().enumerate() {
        let name = format!("web-{ordinal}");
        assert_eq!(pod.metadata.name.as_deref(), Some(name.as_str()));
        assert_eq!(label_of(pod, "statefulset.kubernetes.io/pod-name"), name);
        assert_eq!(
            label_of(pod, "apps.kubernetes.io/pod-index"),
            ordinal.to_string()
        );
        let spec = pod.spec.clone().expect("spec");
        assert_eq!(spec.hostname.as_deref(), Some(name.as_str()));
        assert_eq!(spec.subdomain.as_deref(), Some("web"));
        let claim = spec
            .volumes
            .unwrap_or_default()
            .into_iter()
            .find(|v| v.name == "www")
            .and_then(|v| v.persistent_volume_claim)
            .expect("www volume");
        assert_eq!(claim.claim_name, format!("www-web-{ordinal}"));
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let claim_names = || async {
        let mut names: Vec<String> = claims
            .list(&ListParams::default())
            .await
            .expect("claims")
            .items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect();
        names.sort();
        names
    };
    assert_eq!(claim_names().await, ["www-web-0", "www-web-1", "www-web-2"]);

    // Scale down in reverse: web-2 is gone before web-1 starts terminating; claims stay.
    let before = log.lock().expect("log").len();
    apply(&server, &statefulset_yaml(1, "nginx:1", 0)).await;
    eventually(60, "scaled down to web-0", || async {
        let names: Vec<String> = web_pods(&client)
            .await
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        (names == ["web-0"]).then_some(())
    })
    .await;
    let events = log.lock().expect("log").clone();
    let gone = at(&events, "deleted web-2", before);
    let next = at(&events, "terminating web-1", before);
    assert!(gone < next, "web-1 went before web-2 was gone: {events:?}");
    assert_eq!(claim_names().await, ["www-web-0", "www-web-1", "www-web-2"]);

    // Back to three, then a new image with partition 1: web-2 then web-1 move, web-0 stays.
    apply(&server, &statefulset_yaml(3, "nginx:1", 0)).await;
    rollout("120s").await;
    let before = log.lock().expect("log").len();
    apply(&server, &statefulset_yaml(3, "nginx:2", 1)).await;
    let out = rollout("120s").await;
    assert!(out.contains("2 new pods have been updated"), "{out}");
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let status = sets.get("web").await.expect("set").status.expect("status");
    let update_revision = status.update_revision.clone().expect("update revision");
    let current_revision = status.current_revision.clone().expect("current revision");
    assert_ne!(update_revision, current_revision);
    assert_eq!(status.updated_replicas, Some(2));
    let pods = web_pods(&client).await;
    let images: Vec<String> = pods.iter().map(image_of).collect();
    assert_eq!(images, ["nginx:1", "nginx:2", "nginx:2"]);
    assert_eq!(
        label_of(&pods[0], "controller-revision-hash"),
        current_revision
    );
    assert_eq!(
        label_of(&pods[2], "controller-revision-hash"),
        update_revision
    );
    let events = log.lock().expect("log").clone();
    let top = at(&events, "terminating web-2", before);
    let top_back = at(&events, "ready web-2", top);
    let middle = at(&events, "terminating web-1", before);
    assert!(
        top_back < middle,
        "web-1 was updated before web-2 was back: {events:?}"
    );
    assert!(
        !events[before..].contains(&"terminating web-0".to_string()),
        "web-0 is below the partition: {events:?}"
    );

    // Partition 0 finishes the rollout: the update revision becomes current.
    apply(&server, &statefulset_yaml(3, "nginx:2", 0)).await;
    rollout("120s").await;
    let status = eventually(30, "the update revision is current", || async {
        let status = sets.get("web").await.ok()?.status?;
        (status.current_revision == status.update_revision && status.current_replicas == Some(3))
            .then_some(status)
    })
    .await;
    assert_eq!(status.ready_replicas, Some(3));
    assert_eq!(status.available_replicas, Some(3));
    let images: Vec<String> = web_pods(&client).await.iter().map(image_of).collect();
    assert_eq!(images, ["nginx:2", "nginx:2", "nginx:2"]);

    // whenScaled: Delete — the claims of the pods scaled away go with them.
    apply(
        &server,
        &statefulset_yaml_retaining(1, "nginx:2", 0, "Delete"),
    )
    .await;
    eventually(60, "claims of scaled-down pods are deleted", || async {
        (claim_names().await == ["www-web-0"]).then_some(())
    })
    .await;
    assert_eq!(web_pods(&client).await.len(), 1);
}
