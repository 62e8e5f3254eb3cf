//! The ReplicaSet controller: keeps `spec.replicas` active pods of a ReplicaSet's template, as
//! kube-controller-manager's `pkg/controller/replicaset` does.
//!
//! Each reconcile lists the namespace's pods from the API (not a cache, so no expectations are
//! needed: what it just created is already there), claims them through
//! [`controller_ref`](super::controller_ref) (adopting matching orphans, releasing pods that
//! stopped matching), creates missing pods in slow-start batches (1, 2, 4, …) or deletes the
//! surplus, least valuable first ([`rank_for_deletion`]), and writes the status.
//!
//! # Guarantees
//! - At most [`BURST_REPLICAS`] pods are created or deleted per reconcile.
//! - A batch that fails stops the rest of the creations; the failure shows as the
//!   `ReplicaFailure` condition until a reconcile manages the replicas without error.
//!
//! # Caveats
//! - Pods are listed per reconcile; fine for the sizes `cluster` aims at, not for 100k pods.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info_span, warn, Instrument};

use super::controller_ref::{self, Claim};
use super::{controller_reference, publish, Context};

/// Most pods created or deleted in one reconcile (kube-controller-manager's `BurstReplicas`).
pub const BURST_REPLICAS: usize = 500;

/// How long a failed reconcile waits before the next try.
const ERROR_REQUEUE: Duration = Duration::from_secs(5);

/// Why a reconcile failed; all are retried.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaSetError {
    #[error("api request for replica set {name}")]
    Api {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// The loop's entry point (registered in [`super::loops`]).
pub fn run(context: Context, cancel: CancellationToken) -> BoxFuture<'static, ()> {
    async move {
        let sets: Api<ReplicaSet> = Api::all(context.client.clone());
        let pods: Api<Pod> = Api::all(context.client.clone());
        let controller = Controller::new(sets, watcher::Config::default());
        let store = controller.store();
        controller
            .watches(pods, watcher::Config::default(), move |pod| {
                sets_for_pod(&store, &pod)
            })
            .graceful_shutdown_on(cancel.cancelled_owned())
            .run(reconcile, error_policy, Arc::new(context))
            .for_each(|_| async {})
            .await;
    }
    .boxed()
}

/// The ReplicaSets a pod's change concerns: its controller, or for an orphan every set whose
/// selector matches it (one of them may adopt it).
fn sets_for_pod(store: &Store<ReplicaSet>, pod: &Pod) -> Vec<ObjectRef<ReplicaSet>> {
    let namespace = pod.namespace().unwrap_or_default();
    if let Some(owner) = controller_ref::controller_of(&pod.metadata) {
        if owner.kind == "ReplicaSet" {
            return vec![ObjectRef::new(&owner.name).within(&namespace)];
        }
        return Vec::new();
    }
    let labels = pod.labels();
    store
        .state()
        .iter()
        .filter(|rs| rs.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|rs| {
            rs.spec.as_ref().is_some_and(|s| {
                !controller_ref::selector_is_empty(&s.selector)
                    && controller_ref::selector_matches(&s.selector, labels)
            })
        })
        .map(|rs| ObjectRef::from_obj(rs.as_ref()))
        .collect()
}

fn error_policy(rs: Arc<ReplicaSet>, error: &ReplicaSetError, _: Arc<Context>) -> Action {
    warn!(replicaset = %rs.name_any(), error = %error, "reconcile failed");
    Action::requeue(ERROR_REQUEUE)
}

async fn reconcile(rs: Arc<ReplicaSet>, context: Arc<Context>) -> Result<Action, ReplicaSetError> {
    let span = info_span!(
        "reconcile",
        object.ref = %format!("{}/{}", rs.namespace().unwrap_or_default(), rs.name_any())
    );
    sync(&rs, &context).instrument(span).await
}

fn api_error(rs: &ReplicaSet) -> impl Fn(kube::Error) -> ReplicaSetError + '_ {
    move |source| ReplicaSetError::Api {
        name: rs.name_any(),
        source,
    }
}

/// Whether a pod counts towards its set: not finished and not being deleted.
pub fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// When a pod's Ready condition turned True, if it is ready.
pub fn ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .filter(|c| c.status == "True")
        .map(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

/// Whether a pod is ready.
pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Whether a pod has been ready for at least `min_ready_seconds` at `now`.
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => false,
        Some(Some(since)) => {
            since + k8s_openapi::jiff::SignedDuration::from_secs(i64::from(min_ready_seconds)) < now
        }
    }
}

async fn sync(rs: &ReplicaSet, context: &Context) -> Result<Action, ReplicaSetError> {
    let Some(spec) = rs.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let namespace = rs.namespace().unwrap_or_default();
    let uid = rs.uid().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);
    let sets_api: Api<ReplicaSet> = Api::namespaced(context.client.clone(), &namespace);
    // The cached object may be stale; act on the current one.
    let Some(rs) = sets_api
        .get_opt(&rs.name_any())
        .await
        .map_err(api_error(rs))?
    else {
        return Ok(Action::await_change());
    };
    if rs.uid().unwrap_or_default() != uid {
        return Ok(Action::await_change());
    }
    let spec = rs.spec.as_ref().unwrap_or(spec);
    let deleting = rs.metadata.deletion_timestamp.is_some();
    let all = pods_api
        .list(&ListParams::default())
        .await
        .map_err(api_error(&rs))?;

    let active: Vec<Pod> = all.items.into_iter().filter(is_active).collect();
    let mut owned = Vec::new();
    let owner = controller_reference(&rs);
    for pod in active.iter().cloned() {
        match controller_ref::decide(&uid, deleting, &spec.selector, &pod.metadata) {
            Claim::Owned => owned.push(pod),
            Claim::Adopt => {
                match controller_ref::adopt(&pods_api, &pod.metadata, owner.clone()).await {
                    Ok(adopted) => owned.push(adopted),
                    Err(err) => warn!(pod = %pod.name_any(), error = %err, "adoption failed"),
                }
            }
            Claim::Release => controller_ref::release(&pods_api, &pod.metadata, &uid)
                .await
                .map_err(api_error(&rs))?,
            Claim::Ignore => {}
        }
    }

    let managed = if deleting {
        Ok(())
    } else {
        manage_replicas(&rs, &owned, &active, &pods_api, context).await
    };
    let now = Timestamp::now();
    let status = calculate_status(&rs, &owned, managed.as_ref().err().map(|e| e.as_str()), now);
    if rs.status.as_ref() != Some(&status) {
        let mut body = serde_json::to_value(&status).unwrap_or_else(|_| json!({}));
        if status.conditions.is_none() {
            body["conditions"] = serde_json::Value::Null;
        }
        let patch = json!({"status": body});
        sets_api
            .patch_status(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
            .map_err(api_error(&rs))?;
    }
    if managed.is_err() {
        return Ok(Action::requeue(ERROR_REQUEUE));
    }
    // Pods that are ready but not yet available become available after minReadySeconds:
    // look again when the first of them does.
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    if let Some(wait) = next_availability(&owned, min_ready, now) {
        return Ok(Action::requeue(wait));
    }
    Ok(Action::await_change())
}

/// How long until the first of `pods` that is ready but not yet available becomes available.
pub fn next_availability(pods: &[Pod], min_ready_seconds: i32, now: Timestamp) -> Option<Duration> {
    if min_ready_seconds <= 0 {
        return None;
    }
    let min_ready = k8s_openapi::jiff::SignedDuration::from_secs(i64::from(min_ready_seconds));
    pods.iter()
        .filter(|p| !is_available(p, min_ready_seconds, now))
        .filter_map(|p| ready_since(p).flatten())
        .map(|since| {
            let left = (since + min_ready).duration_since(now);
            // One second past the boundary: availability is "strictly after".
            Duration::try_from(left).unwrap_or(Duration::ZERO) + Duration::from_secs(1)
        })
        .min()
}

/// The status a set with `pods` has, as `calculateStatus` computes it.
pub fn calculate_status(
    rs: &ReplicaSet,
    pods: &[Pod],
    failure: Option<&str>,
    now: Timestamp,
) -> ReplicaSetStatus {
    let spec = rs.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labeled = pods
        .iter()
        .filter(|p| {
            let labels = p.labels();
            template_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })
        .count();
    let ready = pods.iter().filter(|p| is_ready(p)).count();
    let available = pods
        .iter()
        .filter(|p| is_available(p, min_ready, now))
        .count();
    let old = rs.status.clone().unwrap_or_default();
    let mut conditions = old.conditions.clone().unwrap_or_default();
    let has_failure = conditions.iter().any(|c| c.type_ == "ReplicaFailure");
    match failure {
        Some(message) if !has_failure => {
            let replicas = i64::from(spec.replicas.unwrap_or(1));
            let diff = i64::try_from(pods.len()).unwrap_or(i64::MAX) - replicas;
            let reason = if diff < 0 {
                "FailedCreate"
            } else {
                "FailedDelete"
            };
            conditions.push(ReplicaSetCondition {
                type_: "ReplicaFailure".into(),
                status: "True".into(),
                reason: Some(reason.into()),
                message: Some(message.into()),
                last_transition_time: Some(Time(now)),
            });
        }
        None if has_failure => conditions.retain(|c| c.type_ != "ReplicaFailure"),
        _ => {}
    }
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    ReplicaSetStatus {
        replicas: count(pods.len()),
        fully_labeled_replicas: Some(count(fully_labeled)),
        ready_replicas: Some(count(ready)),
        available_replicas: Some(count(available)),
        observed_generation: rs.metadata.generation,
        conditions: (!conditions.is_empty()).then_some(conditions),
        terminating_replicas: old.terminating_replicas,
    }
}

/// Creates or deletes pods so that `owned` (the set's active pods) reaches `spec.replicas`.
/// The error is the message of the `ReplicaFailure` condition.
async fn manage_replicas(
    rs: &ReplicaSet,
    owned: &[Pod],
    active: &[Pod],
    pods_api: &Api<Pod>,
    context: &Context,
) -> Result<(), String> {
    let replicas = usize::try_from(
        rs.spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1)
            .max(0),
    )
    .unwrap_or(0);
    match owned.len().cmp(&replicas) {
        Ordering::Equal => Ok(()),
        Ordering::Less => {
            let missing = (replicas - owned.len()).min(BURST_REPLICAS);
            let pod = pod_from_template(rs);
            let created = slow_start_batch(missing, 1, || {
                let pod = pod.clone();
                async move {
                    match pods_api.create(&PostParams::default(), &pod).await {
                        Ok(created) => {
                            publish(
                                context,
                                rs,
                                EventType::Normal,
                                "SuccessfulCreate",
                                format!("Created pod: {}", created.name_any()),
                            )
                            .await;
                            Ok(())
                        }
                        Err(err) => {
                            publish(
                                context,
                                rs,
                                EventType::Warning,
                                "FailedCreate",
                                format!("Error creating: {err}"),
                            )
                            .await;
                            Err(err.to_string())
                        }
                    }
                }
            })
            .await;
            created.map(|_| ())
        }
        Ordering::Greater => {
            let surplus = (owned.len() - replicas).min(BURST_REPLICAS);
            let related = related_pods(rs, active, pods_api).await;
            let victims = pods_to_delete(owned, &related, surplus, Timestamp::now());
            let deletions = victims.iter().map(|pod| async move {
                let name = pod.name_any();
                match pods_api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {
                        publish(
                            context,
                            rs,
                            EventType::Normal,
                            "SuccessfulDelete",
                            format!("Deleted pod: {name}"),
                        )
                        .await;
                        Ok(())
                    }
                    Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                    Err(err) => {
                        publish(
                            context,
                            rs,
                            EventType::Warning,
                            "FailedDelete",
                            format!("Error deleting: {err}"),
                        )
                        .await;
                        Err(err.to_string())
                    }
                }
            });
            let results = futures::future::join_all(deletions).await;
            results.into_iter().collect::<Result<Vec<()>, String>>()?;
            Ok(())
        }
    }
}

/// The active pods of every ReplicaSet with the same controller as `rs` (for ranking pods
/// that share a node with their siblings), or `rs`'s own when it has no controller.
async fn related_pods(rs: &ReplicaSet, active: &[Pod], pods_api: &Api<Pod>) -> Vec<Pod> {
    let own_uid = rs.uid().unwrap_or_default();
    let controller_uid = controller_ref::controller_of(&rs.metadata).map(|r| r.uid.clone());
    let sets_api: Api<ReplicaSet> = Api::namespaced(
        pods_api.clone().into_client(),
        &rs.namespace().unwrap_or_default(),
    );
    let mut uids = vec![own_uid];
    if let Some(controller_uid) = controller_uid {
        if let Ok(sets) = sets_api.list(&ListParams::default()).await {
            uids.extend(
                sets.items
                    .iter()
                    .filter(|s| {
                        controller_ref::controller_of(&s.metadata)
                            .is_some_and(|r| r.uid == controller_uid)
                    })
                    .filter_map(|s| s.uid()),
            );
        }
    }
    active
        .iter()
        .filter(|p| {
            controller_ref::controller_of(&p.metadata).is_some_and(|r| uids.contains(&r.uid))
        })
        .cloned()
        .collect()
}

/// Runs `count` calls of `call` in batches of 1, 2, 4, … (starting at `initial`), all of a
/// batch at once, and stops after the first batch with a failure, as `slowStartBatch` does.
/// Returns how many succeeded, or the first error.
pub async fn slow_start_batch<F, Fut>(
    count: usize,
    initial: usize,
    call: F,
) -> Result<usize, String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut remaining = count;
    let mut successes = 0;
    let mut batch = remaining.min(initial.max(1));
    while batch > 0 {
        let results = futures::future::join_all((0..batch).map(|_| call())).await;
        let mut first_error = None;
        for result in results {
            match result {
                Ok(()) => successes += 1,
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        if let Some(err) = first_error {
            return Err(err);
        }
        remaining -= batch;
        batch = remaining.min(2 * batch);
    }
    Ok(successes)
}

/// The pod a set creates: its template's metadata and spec, a generated name, and the set as
/// controller.
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", rs.name_any())),
            namespace: rs.namespace(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![controller_reference(rs)]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// Picks the `count` least valuable of `pods`, ranking each by how many of `related` share
/// its node (as `getPodsToDelete` does).
pub fn pods_to_delete(pods: &[Pod], related: &[Pod], count: usize, now: Timestamp) -> Vec<Pod> {
    if count >= pods.len() {
        return pods.to_vec();
    }
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for pod in related {
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            *per_node.entry(node).or_default() += 1;
        }
    }
    let mut ranked: Vec<(usize, &Pod)> = pods
        .iter()
        .map(|p| {
            let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
            let rank = node.and_then(|n| per_node.get(n)).copied().unwrap_or(0);
            (rank, p)
        })
        .collect();
    ranked.sort_by(|a, b| rank_for_deletion(a, b, now));
    ranked
        .into_iter()
        .take(count)
        .map(|(_, p)| p.clone())
        .collect()
}

fn phase_ordinal(pod: &Pod) -> u8 {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Running") => 2,
        Some("Unknown") => 1,
        _ => 0,
    }
}

fn deletion_cost(pod: &Pod) -> i32 {
    pod.annotations()
        .get("controller.kubernetes.io/pod-deletion-cost")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn max_restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().map(|c| c.restart_count).max())
        .unwrap_or(0)
}

/// Orders two timestamps newer first, an absent one before both (`afterOrZero`), comparing
/// their ages on a log2 scale as `LogarithmicScaleDown` does; equal buckets fall back to uid.
fn newer_first(
    a: Option<Timestamp>,
    b: Option<Timestamp>,
    uids: (&str, &str),
    now: Timestamp,
) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) if a == b => Ordering::Equal,
        (Some(a), Some(b)) => {
            let bucket = |t: Timestamp| {
                let age = now.as_nanosecond() - t.as_nanosecond();
                if age > 0 {
                    i64::from(127 - (age as u128).leading_zeros())
                } else {
                    -1
                }
            };
            match bucket(a).cmp(&bucket(b)) {
                Ordering::Equal => uids.0.cmp(uids.1),
                other => other,
            }
        }
    }
}

/// Kubernetes' `ActivePodsWithRanks.Less`: `Less` means "delete first". Unscheduled before
/// scheduled, Pending before Unknown before Running, not ready before ready, lower deletion
/// cost first, more siblings on the node first, ready for less time first, more restarts
/// first, newer first.
pub fn rank_for_deletion(a: &(usize, &Pod), b: &(usize, &Pod), now: Timestamp) -> Ordering {
    let (rank_a, a) = (a.0, a.1);
    let (rank_b, b) = (b.0, b.1);
    let assigned = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
    };
    let uids = (
        a.metadata.uid.as_deref().unwrap_or(""),
        b.metadata.uid.as_deref().unwrap_or(""),
    );
    assigned(a)
        .cmp(&assigned(b))
        .then_with(|| phase_ordinal(a).cmp(&phase_ordinal(b)))
        .then_with(|| is_ready(a).cmp(&is_ready(b)))
        .then_with(|| deletion_cost(a).cmp(&deletion_cost(b)))
        .then_with(|| rank_b.cmp(&rank_a))
        .then_with(|| {
            if is_ready(a) && is_ready(b) {
                let since = |p: &Pod| ready_since(p).flatten();
                newer_first(since(a), since(b), uids, now)
            } else {
                Ordering::Equal
            }
        })
        .then_with(|| max_restarts(b).cmp(&max_restarts(a)))
        .then_with(|| {
            let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            newer_first(created(a), created(b), uids, now)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, node: Option<&str>, phase: &str, ready: bool, created: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": name, "creationTimestamp": created},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": phase, "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" },
                 "lastTransitionTime": created}
            ]}
        }))
        .expect("pod")
    }

    fn names(pods: &[Pod]) -> Vec<String> {
        pods.iter().map(|p| p.name_any()).collect()
    }

    #[test]
    fn least_valuable_pods_go_first() {
        let now: Timestamp = "2026-01-01T12:00:00Z".parse().expect("time");
        let pods = vec![
            pod(
                "ready-old",
                Some("n1"),
                "Running",
                true,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "ready-new",
                Some("n2"),
                "Running",
                true,
                "2026-01-01T11:59:50Z",
            ),
            pod(
                "not-ready",
                Some("n1"),
                "Running",
                false,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "pending",
                Some("n1"),
                "Pending",
                false,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "unscheduled",
                None,
                "Pending",
                false,
                "2026-01-01T00:00:00Z",
            ),
        ];
        let order = pods_to_delete(&pods, &[], 4, now);
        assert_eq!(
            names(&order),
            ["unscheduled", "pending", "not-ready", "ready-new"]
        );
    }

    #[test]
    fn doubled_up_pods_go_before_lonely_ones() {
        let now: Timestamp = "2026-01-01T12:00:00Z".parse().expect("time");
        let pods = vec![
            pod("alone", Some("n2"), "Running", true, "2026-01-01T00:00:00Z"),
            pod(
                "crowded",
                Some("n1"),
                "Running",
                true,
                "2026-01-01T00:00:00Z",
            ),
        ];
        let mut related = pods.clone();
        related.push(pod(
            "sibling",
            Some("n1"),
            "Running",
            true,
            "2026-01-01T00:00:00Z",
        ));
        assert_eq!(names(&pods_to_delete(&pods, &related, 1, now)), ["crowded"]);
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let p = pod("p", Some("n"), "Running", true, "2026-01-01T00:00:00Z");
        let early: Timestamp = "2026-01-01T00:00:05Z".parse().expect("time");
        let late: Timestamp = "2026-01-01T00:00:11Z".parse().expect("time");
        assert!(is_available(&p, 0, early));
        assert!(!is_available(&p, 10, early));
        assert!(is_available(&p, 10, late));
    }

    #[tokio::test]
    async fn slow_start_doubles_and_stops_at_a_failure() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let done = slow_start_batch(10, 1, || async {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        })
        .await;
        assert_eq!(done, Ok(10));
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let failed = slow_start_batch(10, 1, || async {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n >= 3 {
                Err("quota".to_string())
            } else {
                Ok(())
            }
        })
        .await;
        assert_eq!(failed, Err("quota".to_string()));
        // Batches 1, 2 succeeded; the batch of 4 failed and nothing more was tried.
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 7);
    }

    #[test]
    fn status_counts_labels_readiness_and_failures() {
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": 3},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web", "v": "1"}}}}
        }))
        .expect("rs");
        let mut labelled = pod("a", Some("n"), "Running", true, "2026-01-01T00:00:00Z");
        labelled.metadata.labels =
            Some([("app".into(), "web".into()), ("v".into(), "1".into())].into());
        let plain = pod("b", Some("n"), "Running", false, "2026-01-01T00:00:00Z");
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().expect("time");
        let status = calculate_status(&rs, &[labelled, plain], Some("quota exceeded"), now);
        assert_eq!(status.replicas, 2);
        assert_eq!(status.fully_labeled_replicas, Some(1));
        assert_eq!(status.ready_replicas, Some(1));
        assert_eq!(status.available_replicas, Some(1));
        assert_eq!(status.observed_generation, Some(3));
        let conditions = status.conditions.expect("conditions");
        assert_eq!(conditions[0].reason.as_deref(), Some("FailedCreate"));
    }
}
