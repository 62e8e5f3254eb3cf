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
use support::server::TestServer;

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
