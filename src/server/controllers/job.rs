//! The Job controller: runs a Job's pods to completion, as kube-controller-manager's
//! `pkg/controller/job` does.
//!
//! Each reconcile lists the Job's pods (its selector, filtered to pods it controls), counts them
//! and then does one of: finish the Job (conditions, deleting what still runs), keep it
//! suspended, or create and delete pods towards `parallelism`. Supported: `completions`,
//! `parallelism`, `backoffLimit` with exponential back-off between failed pods (10 s doubling,
//! capped at 6 min), `activeDeadlineSeconds` (reason `DeadlineExceeded`), `Indexed` completion
//! mode (the completion index as label, annotation, `JOB_COMPLETION_INDEX` and hostname
//! `<job>-<index>`), `suspend`, `ttlSecondsAfterFinished`. Conditions follow 1.33: the
//! `FailureTarget` / `SuccessCriteriaMet` interim conditions first, then `Failed` / `Complete`
//! once no pod of the Job is still running.
//!
//! # Caveats
//! - Pods are counted from what exists, not tracked with the `batch.kubernetes.io/job-tracking`
//!   finalizer: a finished pod deleted by someone else is no longer counted
//!   (`uncountedTerminatedPods` is not used).
//! - `podFailurePolicy`, `successPolicy`, `backoffLimitPerIndex` and `managedBy` are ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, warn, Instrument};

use super::{controlled_by, controller_reference, label_selector, not_found, publish, Context};

/// Label (and annotation) carrying an Indexed Job pod's completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// Label naming the Job a pod belongs to.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
/// Label carrying the uid of the Job a pod belongs to.
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";

/// First delay after a failed pod.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// Longest delay between failed pods.
const BACKOFF_MAX: Duration = Duration::from_secs(360);
/// How often a Job is looked at even when nothing changes.
const RESYNC: Duration = Duration::from_secs(300);

/// Why a Job reconcile failed. All are retryable: the Job is requeued with a delay.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// An API call failed.
    #[error("job {job}: {action}")]
    Api {
        job: String,
        action: &'static str,
        #[source]
        source: kube::Error,
    },
}

/// Starts the Job controller; it runs until `cancel`.
pub fn run(context: Context, cancel: CancellationToken) -> futures::future::BoxFuture<'static, ()> {
    async move {
        let jobs: Api<Job> = Api::all(context.client.clone());
        let pods: Api<Pod> = Api::all(context.client.clone());
        Controller::new(jobs, watcher::Config::default())
            .owns(pods, watcher::Config::default())
            .graceful_shutdown_on(cancel.cancelled_owned())
            .run(reconcile, error_policy, Arc::new(context))
            .for_each(|result| async move {
                if let Err(err) = result {
                    debug!(error = %err, "job reconcile");
                }
            })
            .await;
    }
    .boxed()
}

fn error_policy(job: Arc<Job>, err: &JobError, _: Arc<Context>) -> Action {
    warn!(job = %job.name_any(), error = %err, "job reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// The delay before a new pod may start after `failures` failed pods: 10 s, doubling, capped at
/// 6 min; none without failures.
pub fn backoff_delay(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let doublings = (failures - 1).min(16);
    BACKOFF_BASE
        .saturating_mul(1u32 << doublings)
        .min(BACKOFF_MAX)
}

/// Renders a set of indexes the way `status.completedIndexes` does: `1,3-5,7`.
pub fn format_indexes(indexes: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if end == start {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Whether the pod's Ready condition is True.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// When a finished pod finished: its containers' latest `finishedAt`, else its last condition
/// change, else its creation.
fn finished_at(pod: &Pod) -> Option<jiff::Timestamp> {
    let status = pod.status.as_ref();
    let containers = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    let conditions = || {
        status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|c| c.last_transition_time.as_ref())
            .map(|t| t.0)
            .max()
    };
    containers
        .or_else(conditions)
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn pod_index(pod: &Pod) -> Option<i32> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(COMPLETION_INDEX))
        .or_else(|| pod.metadata.labels.as_ref()?.get(COMPLETION_INDEX))
        .and_then(|v| v.parse().ok())
}

fn condition<'a>(status: &'a JobStatus, type_: &str) -> Option<&'a JobCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Sets a condition, keeping its transition time when its status does not change.
fn set_condition(status: &mut JobStatus, type_: &str, value: &str, reason: &str, message: &str) {
    let now = Time(jiff::Timestamp::now());
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if existing.status != value {
            existing.last_transition_time = Some(now.clone());
        }
        existing.status = value.into();
        existing.reason = Some(reason.into());
        existing.message = Some(message.into());
        existing.last_probe_time = Some(now);
        return;
    }
    conditions.push(JobCondition {
        type_: type_.into(),
        status: value.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now),
    });
}

/// The pods of a Job, sorted into what the controller needs.
#[derive(Default)]
struct Census {
    active: Vec<Pod>,
    terminating: i32,
    succeeded: i32,
    failed: i32,
    ready: i32,
    succeeded_indexes: BTreeSet<i32>,
    last_failure: Option<jiff::Timestamp>,
}

fn census(pods: Vec<Pod>, indexed: bool, completions: i32) -> Census {
    let mut c = Census::default();
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some()
            && !matches!(phase(&pod), "Succeeded" | "Failed")
        {
            c.terminating += 1;
            continue;
        }
        match phase(&pod) {
            "Succeeded" => {
                c.succeeded += 1;
                if let Some(i) = pod_index(&pod).filter(|i| (0..completions).contains(i)) {
                    c.succeeded_indexes.insert(i);
                }
            }
            "Failed" => {
                c.failed += 1;
                c.last_failure = c.last_failure.max(finished_at(&pod));
            }
            _ => {
                if pod_ready(&pod) {
                    c.ready += 1;
                }
                c.active.push(pod);
            }
        }
    }
    if indexed {
        c.succeeded = i32::try_from(c.succeeded_indexes.len()).unwrap_or(i32::MAX);
    }
    c
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, JobError> {
    let name = job.name_any();
    let namespace = job.namespace().unwrap_or_default();
    let span = info_span!("reconcile", object.ref = %format!("{namespace}/{name}"));
    reconcile_job(&job, &ctx).instrument(span).await
}

async fn reconcile_job(job: &Job, ctx: &Context) -> Result<Action, JobError> {
    let name = job.name_any();
    let namespace = job.namespace().unwrap_or_default();
    let uid = job.uid().unwrap_or_default();
    let api_err = |action: &'static str| {
        let job = format!("{namespace}/{name}");
        move |source| JobError::Api {
            job,
            action,
            source,
        }
    };
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(spec) = job.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let old_status = job.status.clone().unwrap_or_default();
    let now = jiff::Timestamp::now();

    // A finished Job only waits for its TTL.
    let finished = condition(&old_status, "Complete")
        .or_else(|| condition(&old_status, "Failed"))
        .cloned();
    if let Some(done) = finished {
        let Some(ttl) = spec.ttl_seconds_after_finished else {
            return Ok(Action::await_change());
        };
        let at = old_status
            .completion_time
            .as_ref()
            .or(done.last_transition_time.as_ref())
            .map(|t| t.0)
            .unwrap_or(now);
        let expires = at + jiff::SignedDuration::from_secs(i64::from(ttl));
        if now < expires {
            let wait = expires.duration_since(now).unsigned_abs() + Duration::from_millis(100);
            return Ok(Action::requeue(wait));
        }
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Foreground),
            ..DeleteParams::default()
        };
        match jobs.delete(&name, &params).await {
            Ok(_) => {}
            Err(err) if not_found(&err) => {}
            Err(err) => return Err(api_err("deleting the finished job")(err)),
        }
        return Ok(Action::await_change());
    }

    let selector = spec
        .selector
        .as_ref()
        .and_then(|s| s.match_labels.clone())
        .unwrap_or_else(|| BTreeMap::from([(CONTROLLER_UID_LABEL.to_string(), uid.clone())]));
    let listed = pods_api
        .list(&ListParams::default().labels(&label_selector(&selector)))
        .await
        .map_err(api_err("listing pods"))?;
    let owned: Vec<Pod> = listed
        .items
        .into_iter()
        .filter(|p| controlled_by(p, &uid))
        .collect();

    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let completions = spec.completions;
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let suspended = spec.suspend == Some(true);
    let c = census(owned, indexed, completions.unwrap_or(0));

    let mut status = old_status.clone();
    let mut requeue = RESYNC;
    if status.start_time.is_none() && !suspended {
        status.start_time = Some(Time(now));
    }

    // Decide whether the Job has met its end.
    let mut failure: Option<(&str, &str)> =
        condition(&old_status, "FailureTarget").map(|_| ("", ""));
    let mut success = condition(&old_status, "SuccessCriteriaMet").is_some();
    if failure.is_none() && !success {
        if c.failed > backoff_limit {
            failure = Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ));
        } else if let (Some(deadline), Some(start), false) = (
            spec.active_deadline_seconds,
            status.start_time.as_ref(),
            suspended,
        ) {
            let ends = start.0 + jiff::SignedDuration::from_secs(deadline);
            if now >= ends {
                failure = Some((
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                ));
            } else {
                requeue = requeue
                    .min(ends.duration_since(now).unsigned_abs() + Duration::from_millis(100));
            }
        }
        if failure.is_none() {
            success = match completions {
                Some(n) => c.succeeded >= n,
                // A work queue is done once one pod succeeded and none runs.
                None => c.succeeded > 0 && c.active.is_empty(),
            };
        }
        if let Some((reason, message)) = failure {
            set_condition(&mut status, "FailureTarget", "True", reason, message);
            publish(ctx, job, EventType::Warning, reason, message.into()).await;
        } else if success {
            set_condition(
                &mut status,
                "SuccessCriteriaMet",
                "True",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            );
        }
    }

    let mut active = c.active.clone();
    if failure.is_some() || success || suspended {
        // Nothing of this Job may run any more (or, suspended, for now).
        for pod in active.drain(..) {
            delete_pod(ctx, job, &pods_api, &pod).await?;
        }
    } else {
        active = manage_pods(
            ctx,
            job,
            &pods_api,
            active,
            &c,
            parallelism,
            completions,
            indexed,
            &mut requeue,
        )
        .await?;
    }

    // Suspension.
    let was_suspended = condition(&old_status, "Suspended").is_some();
    if suspended && !was_suspended && failure.is_none() && !success {
        set_condition(
            &mut status,
            "Suspended",
            "True",
            "JobSuspended",
            "Job suspended",
        );
        publish(
            ctx,
            job,
            EventType::Normal,
            "Suspended",
            "Job suspended".into(),
        )
        .await;
    } else if !suspended && was_suspended {
        set_condition(
            &mut status,
            "Suspended",
            "False",
            "JobResumed",
            "Job resumed",
        );
        // The active deadline counts from the resumption.
        status.start_time = Some(Time(now));
        publish(ctx, job, EventType::Normal, "Resumed", "Job resumed".into()).await;
    }

    // Final conditions once nothing runs any more.
    let running = active.len() as i32 + c.terminating;
    if running == 0 {
        if let Some(target) = condition(&status, "FailureTarget").cloned() {
            let reason = target.reason.unwrap_or_default();
            let message = target.message.unwrap_or_default();
            set_condition(&mut status, "Failed", "True", &reason, &message);
        } else if condition(&status, "SuccessCriteriaMet").is_some() {
            set_condition(
                &mut status,
                "Complete",
                "True",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            );
            status.completion_time = Some(Time(now));
            publish(
                ctx,
                job,
                EventType::Normal,
                "Completed",
                "Job completed".into(),
            )
            .await;
        }
    }

    status.active = Some(active.len() as i32);
    status.ready = Some(active.iter().filter(|p| pod_ready(p)).count() as i32);
    status.terminating = Some(c.terminating);
    status.succeeded = Some(c.succeeded);
    status.failed = Some(c.failed);
    if indexed {
        status.completed_indexes = Some(format_indexes(&c.succeeded_indexes));
    }
    if status != old_status {
        let patch = json!({ "status": status });
        jobs.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err("updating status"))?;
    }
    if running > 0 && (failure.is_some() || success) {
        requeue = requeue.min(Duration::from_secs(1));
    }
    Ok(Action::requeue(requeue))
}

/// Creates or deletes pods so that `parallelism` (bounded by what is left to complete) run,
/// waiting out the back-off after failures. Returns the pods that stay active.
#[allow(clippy::too_many_arguments)]
async fn manage_pods(
    ctx: &Context,
    job: &Job,
    pods_api: &Api<Pod>,
    mut active: Vec<Pod>,
    c: &Census,
    parallelism: i32,
    completions: Option<i32>,
    indexed: bool,
    requeue: &mut Duration,
) -> Result<Vec<Pod>, JobError> {
    let want = match completions {
        Some(n) => parallelism.min((n - c.succeeded).max(0)),
        None if c.succeeded > 0 => 0,
        None => parallelism,
    };
    let mut excess: Vec<Pod> = Vec::new();
    if indexed {
        // One pod per index: duplicates and indexes already done go.
        let mut seen = BTreeSet::new();
        active.retain(|p| match pod_index(p) {
            Some(i) if !c.succeeded_indexes.contains(&i) && seen.insert(i) => true,
            _ => {
                excess.push(p.clone());
                false
            }
        });
    }
    if completions.is_some() || c.succeeded == 0 {
        // Delete the newest, least advanced pods first.
        active.sort_by_key(|p| {
            (
                !pod_ready(p),
                std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)),
            )
        });
        while active.len() as i32 > want {
            if let Some(pod) = active.pop() {
                excess.push(pod);
            }
        }
    }
    for pod in &excess {
        delete_pod(ctx, job, pods_api, pod).await?;
    }
    let missing = want - active.len() as i32;
    if missing <= 0 {
        return Ok(active);
    }
    // Back-off after failures.
    let delay = backoff_delay(u32::try_from(c.failed).unwrap_or(0));
    if let Some(last) = c.last_failure {
        let ready_at = last + jiff::SignedDuration::try_from(delay).unwrap_or_default();
        let now = jiff::Timestamp::now();
        if now < ready_at {
            *requeue = (*requeue).min(ready_at.duration_since(now).unsigned_abs());
            return Ok(active);
        }
    }
    let indexes: Vec<Option<i32>> = if indexed {
        let taken: BTreeSet<i32> = active.iter().filter_map(pod_index).collect();
        (0..completions.unwrap_or(0))
            .filter(|i| !taken.contains(i) && !c.succeeded_indexes.contains(i))
            .take(usize::try_from(missing).unwrap_or(0))
            .map(Some)
            .collect()
    } else {
        (0..missing).map(|_| None).collect()
    };
    for index in indexes {
        let pod = pod_for(job, index);
        match pods_api.create(&PostParams::default(), &pod).await {
            Ok(created) => {
                publish(
                    ctx,
                    job,
                    EventType::Normal,
                    "SuccessfulCreate",
                    format!("Created pod: {}", created.name_any()),
                )
                .await;
                active.push(created);
            }
            Err(err) => {
                publish(
                    ctx,
                    job,
                    EventType::Warning,
                    "FailedCreate",
                    format!("Error creating: {err}"),
                )
                .await;
                return Err(JobError::Api {
                    job: job.name_any(),
                    action: "creating a pod",
                    source: err,
                });
            }
        }
    }
    Ok(active)
}

async fn delete_pod(
    ctx: &Context,
    job: &Job,
    pods_api: &Api<Pod>,
    pod: &Pod,
) -> Result<(), JobError> {
    let pod_name = pod.name_any();
    match pods_api.delete(&pod_name, &DeleteParams::default()).await {
        Ok(_) => {
            publish(
                ctx,
                job,
                EventType::Normal,
                "SuccessfulDelete",
                format!("Deleted pod: {pod_name}"),
            )
            .await;
            Ok(())
        }
        Err(err) if not_found(&err) => Ok(()),
        Err(source) => Err(JobError::Api {
            job: job.name_any(),
            action: "deleting a pod",
            source,
        }),
    }
}

/// The generateName of a Job's pods: `<job>-` or, indexed, `<job>-<index>-`.
pub fn pod_generate_name(job: &str, index: Option<i32>) -> String {
    match index {
        Some(i) => format!("{job}-{i}-"),
        None => format!("{job}-"),
    }
}

/// A pod from the Job's template, owned by the Job.
fn pod_for(job: &Job, index: Option<i32>) -> Pod {
    let name = job.name_any();
    let uid = job.uid().unwrap_or_default();
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut meta = template.metadata.unwrap_or_default();
    let mut spec = template.spec.unwrap_or_default();
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(JOB_NAME_LABEL.into(), name.clone());
    labels.insert("job-name".into(), name.clone());
    labels.insert(CONTROLLER_UID_LABEL.into(), uid.clone());
    labels.insert("controller-uid".into(), uid);
    if let Some(i) = index {
        labels.insert(COMPLETION_INDEX.into(), i.to_string());
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(COMPLETION_INDEX.into(), i.to_string());
        if spec.hostname.is_none() {
            spec.hostname = Some(format!("{name}-{i}"));
        }
        for container in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            let env = container.env.get_or_insert_with(Vec::new);
            if !env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX") {
                env.push(EnvVar {
                    name: "JOB_COMPLETION_INDEX".into(),
                    value: Some(i.to_string()),
                    value_from: None,
                });
            }
        }
    }
    meta.name = None;
    meta.generate_name = Some(pod_generate_name(&name, index));
    meta.namespace = job.namespace();
    meta.owner_references = Some(vec![controller_reference(job)]);
    Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_ten_seconds_and_caps_at_six_minutes() {
        assert_eq!(backoff_delay(0), Duration::ZERO);
        assert_eq!(backoff_delay(1), Duration::from_secs(10));
        assert_eq!(backoff_delay(2), Duration::from_secs(20));
        assert_eq!(backoff_delay(3), Duration::from_secs(40));
        assert_eq!(backoff_delay(6), Duration::from_secs(320));
        assert_eq!(backoff_delay(7), Duration::from_secs(360));
        assert_eq!(backoff_delay(1000), Duration::from_secs(360));
    }

    #[test]
    fn completed_indexes_are_compressed_into_ranges() {
        let set: BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into_iter().collect();
        assert_eq!(format_indexes(&set), "0-2,4,6-7");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
    }

    #[test]
    fn pod_names() {
        assert_eq!(pod_generate_name("pi", None), "pi-");
        assert_eq!(pod_generate_name("pi", Some(3)), "pi-3-");
    }

    #[test]
    fn indexed_pods_carry_their_index() {
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "idx", "namespace": "default", "uid": "u1"},
            "spec": {"completionMode": "Indexed", "completions": 3,
                     "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}
        }))
        .expect("job");
        let pod = pod_for(&job, Some(2));
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get(COMPLETION_INDEX).map(String::as_str), Some("2"));
        assert_eq!(
            labels.get(CONTROLLER_UID_LABEL).map(String::as_str),
            Some("u1")
        );
        assert_eq!(pod_index(&pod), Some(2));
        let spec = pod.spec.unwrap_or_default();
        assert_eq!(spec.hostname.as_deref(), Some("idx-2"));
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("idx-2-"));
    }
}
