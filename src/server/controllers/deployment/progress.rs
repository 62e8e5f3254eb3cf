//! A Deployment's status and conditions: the counts summed over its ReplicaSets, `Available`
//! (MinimumReplicasAvailable / MinimumReplicasUnavailable), `Progressing` (NewReplicaSetCreated,
//! FoundNewReplicaSet, ReplicaSetUpdated, NewReplicaSetAvailable, ProgressDeadlineExceeded,
//! DeploymentPaused, DeploymentResumed, ReplicaSetCreateError), `ReplicaFailure` carried over
//! from the ReplicaSets, and when to look again for a progress deadline (`sync.go` and
//! `progress.go` upstream).

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use super::replicas::{self, desired};
use super::{DeploymentError, Rollout, Sets};

pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const REPLICA_FAILURE: &str = "ReplicaFailure";

pub const MIN_AVAILABLE: &str = "MinimumReplicasAvailable";
pub const MIN_UNAVAILABLE: &str = "MinimumReplicasUnavailable";
pub const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
pub const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
pub const RS_UPDATED: &str = "ReplicaSetUpdated";
pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";
pub const PAUSED: &str = "DeploymentPaused";
pub const RESUMED: &str = "DeploymentResumed";
pub const FAILED_RS_CREATE: &str = "ReplicaSetCreateError";

/// Now, to the second (what the API keeps of a time).
pub fn now() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now())
}

/// A condition that changed at `now`.
pub fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// The condition of `type_`, if present.
pub fn get_condition<'a>(
    status: &'a DeploymentStatus,
    type_: &str,
) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
}

/// Sets a condition as `SetDeploymentCondition` does: nothing happens when status and reason
/// are unchanged; the transition time is kept when only the reason changes.
pub fn set_condition(status: &mut DeploymentStatus, mut new: DeploymentCondition) {
    if let Some(current) = get_condition(status, &new.type_) {
        if current.status == new.status && current.reason == new.reason {
            return;
        }
        if current.status == new.status {
            new.last_transition_time = current.last_transition_time.clone();
        }
    }
    remove_condition(status, &new.type_);
    status.conditions.get_or_insert_with(Vec::new).push(new);
}

/// Removes the condition of `type_`.
pub fn remove_condition(status: &mut DeploymentStatus, type_: &str) {
    if let Some(conditions) = status.conditions.as_mut() {
        conditions.retain(|c| c.type_ != type_);
        if conditions.is_empty() {
            status.conditions = None;
        }
    }
}

/// Whether the Deployment has a progress deadline (not absent, not MaxInt32).
pub fn has_progress_deadline(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .is_some_and(|s| s != i32::MAX)
}

/// The status the ReplicaSets add up to (`calculateStatus`), with `Available` set.
pub fn calculate_status(d: &Deployment, sets: &Sets, now: Timestamp) -> DeploymentStatus {
    let all = sets.all();
    let available = replicas::total_available(&all);
    let total = replicas::total_spec(&all);
    let old = d.status.clone().unwrap_or_default();
    let new: Vec<&ReplicaSet> = sets.new.iter().collect();
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(replicas::total_actual(&all)),
        updated_replicas: Some(replicas::total_actual(&new)),
        ready_replicas: Some(replicas::total_ready(&all)),
        available_replicas: Some(available),
        unavailable_replicas: Some((total - available).max(0)),
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
        terminating_replicas: old.terminating_replicas,
    };
    if available >= desired(d) - replicas::max_unavailable(d) {
        let c = condition(
            AVAILABLE,
            "True",
            MIN_AVAILABLE,
            "Deployment has minimum availability.".into(),
            now,
        );
        set_condition(&mut status, c);
    } else {
        let c = condition(
            AVAILABLE,
            "False",
            MIN_UNAVAILABLE,
            "Deployment does not have minimum availability.".into(),
            now,
        );
        set_condition(&mut status, c);
    }
    status
}

/// Whether the rollout is done: every replica updated and available, the generation observed.
pub fn deployment_complete(d: &Deployment, status: &DeploymentStatus) -> bool {
    let replicas = desired(d);
    status.updated_replicas.unwrap_or(0) == replicas
        && status.replicas.unwrap_or(0) == replicas
        && status.available_replicas.unwrap_or(0) == replicas
        && status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// Whether `new` shows progress over the Deployment's recorded status: more updated, fewer old,
/// more ready or more available pods.
pub fn deployment_progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let n = |v: Option<i32>| v.unwrap_or(0);
    let old_old = n(old.replicas) - n(old.updated_replicas);
    let new_old = n(new.replicas) - n(new.updated_replicas);
    n(new.updated_replicas) > n(old.updated_replicas)
        || new_old < old_old
        || n(new.ready_replicas) > n(old.ready_replicas)
        || n(new.available_replicas) > n(old.available_replicas)
}

/// Whether the Deployment went longer than its progress deadline without progress.
pub fn deployment_timed_out(d: &Deployment, status: &DeploymentStatus, now: Timestamp) -> bool {
    if !has_progress_deadline(d) {
        return false;
    }
    let Some(c) = get_condition(status, PROGRESSING) else {
        return false;
    };
    match c.reason.as_deref() {
        Some(NEW_RS_AVAILABLE) => false,
        Some(TIMED_OUT) => true,
        _ => {
            let Some(from) = c.last_update_time.as_ref().map(|t| t.0) else {
                return false;
            };
            from + deadline(d) < now
        }
    }
}

fn deadline(d: &Deployment) -> SignedDuration {
    let secs = d
        .spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .unwrap_or(600);
    SignedDuration::from_secs(i64::from(secs))
}

/// The status after a rollout step (`syncRolloutStatus`): counts, `Progressing` and
/// `ReplicaFailure`.
pub fn rollout_status(d: &Deployment, sets: &Sets, now: Timestamp) -> DeploymentStatus {
    let mut status = calculate_status(d, sets, now);
    if !has_progress_deadline(d) {
        remove_condition(&mut status, PROGRESSING);
    }
    let old = d.status.clone().unwrap_or_default();
    let current = get_condition(&old, PROGRESSING);
    let new_name = sets.new.as_ref().map(|rs| rs.name_any());
    let complete_already = status.replicas == status.updated_replicas
        && current.is_some_and(|c| c.reason.as_deref() == Some(NEW_RS_AVAILABLE));
    if has_progress_deadline(d) && !complete_already {
        if deployment_complete(d, &status) {
            let message = match &new_name {
                Some(name) => format!("ReplicaSet \"{name}\" has successfully progressed."),
                None => "Deployment has successfully progressed.".into(),
            };
            set_condition(
                &mut status,
                condition(PROGRESSING, "True", NEW_RS_AVAILABLE, message, now),
            );
        } else if deployment_progressing(d, &status) {
            let message = match &new_name {
                Some(name) => format!("ReplicaSet \"{name}\" is progressing."),
                None => format!("Deployment \"{}\" is progressing.", d.name_any()),
            };
            let mut c = condition(PROGRESSING, "True", RS_UPDATED, message, now);
            // Progress always refreshes the update time, whatever the reason was.
            if let Some(current) = current {
                if current.status == "True" {
                    c.last_transition_time = current.last_transition_time.clone();
                }
                remove_condition(&mut status, PROGRESSING);
            }
            set_condition(&mut status, c);
        } else if deployment_timed_out(d, &status, now) {
            let message = match &new_name {
                Some(name) => format!("ReplicaSet \"{name}\" has timed out progressing."),
                None => format!("Deployment \"{}\" has timed out progressing.", d.name_any()),
            };
            set_condition(
                &mut status,
                condition(PROGRESSING, "False", TIMED_OUT, message, now),
            );
        }
    }
    match replica_failure(sets) {
        Some(failure) => set_condition(&mut status, failure),
        None => remove_condition(&mut status, REPLICA_FAILURE),
    }
    status
}

/// The first `ReplicaFailure` condition of the new ReplicaSet, else of an old one.
fn replica_failure(sets: &Sets) -> Option<DeploymentCondition> {
    sets.new
        .iter()
        .chain(sets.old.iter())
        .filter_map(|rs| rs.status.as_ref()?.conditions.as_ref())
        .flatten()
        .find(|c| c.type_ == REPLICA_FAILURE)
        .map(|c| DeploymentCondition {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            last_update_time: c.last_transition_time.clone(),
            last_transition_time: c.last_transition_time.clone(),
        })
}

/// When to look at a rollout that has not progressed, to notice its deadline passing
/// (`requeueStuckDeployment`).
pub fn stuck_requeue(d: &Deployment, new: &DeploymentStatus, now: Timestamp) -> Option<Duration> {
    let old = d.status.clone().unwrap_or_default();
    let current = get_condition(&old, PROGRESSING)?;
    if !has_progress_deadline(d)
        || deployment_complete(d, new)
        || current.reason.as_deref() == Some(TIMED_OUT)
    {
        return None;
    }
    let from = current.last_update_time.as_ref()?.0;
    let after = (from + deadline(d)).duration_since(now);
    let after = Duration::try_from(after).unwrap_or(Duration::ZERO);
    if after < Duration::from_secs(1) {
        return Some(Duration::from_secs(1));
    }
    Some(after + Duration::from_secs(1))
}

impl Rollout<'_> {
    /// Writes the counts (`syncDeploymentStatus`), used when scaling or paused.
    pub(super) async fn sync_deployment_status(
        &mut self,
        sets: &Sets,
    ) -> Result<(), DeploymentError> {
        let status = calculate_status(&self.d, sets, now());
        self.save_status(status).await
    }

    /// Writes the status after a rollout step (`syncRolloutStatus`) and arranges to look again
    /// when the progress deadline would pass.
    pub(super) async fn sync_rollout_status(&mut self, sets: &Sets) -> Result<(), DeploymentError> {
        let now = now();
        let status = rollout_status(&self.d, sets, now);
        if self.d.status.as_ref() == Some(&status) {
            self.requeue_after(stuck_requeue(&self.d, &status, now));
            return Ok(());
        }
        self.save_status(status).await
    }

    /// Marks pausing and resuming in `Progressing` (Unknown), so that the time spent paused
    /// does not count against the progress deadline.
    pub(super) async fn check_paused_conditions(&mut self) -> Result<(), DeploymentError> {
        if !has_progress_deadline(&self.d) {
            return Ok(());
        }
        let mut status = self.d.status.clone().unwrap_or_default();
        let current = get_condition(&status, PROGRESSING).and_then(|c| c.reason.clone());
        if current.as_deref() == Some(TIMED_OUT) {
            return Ok(());
        }
        let paused_recorded = current.as_deref() == Some(PAUSED);
        let paused = self.d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        let c = if paused && !paused_recorded {
            condition(
                PROGRESSING,
                "Unknown",
                PAUSED,
                "Deployment is paused".into(),
                now(),
            )
        } else if !paused && paused_recorded {
            condition(
                PROGRESSING,
                "Unknown",
                RESUMED,
                "Deployment is resumed".into(),
                now(),
            )
        } else {
            return Ok(());
        };
        set_condition(&mut status, c);
        self.save_status(status).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(status: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": 2},
            "spec": {"replicas": 3, "selector": {}, "template": {}, "progressDeadlineSeconds": 60,
                     "strategy": {"type": "RollingUpdate",
                                  "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}},
            "status": status,
        }))
        .expect("deployment")
    }

    fn rs(name: &str, replicas: i32, actual: i32, available: i32) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {}},
            "status": {"replicas": actual, "readyReplicas": available,
                       "availableReplicas": available},
        }))
        .expect("rs")
    }

    fn t(s: &str) -> Timestamp {
        s.parse().expect("time")
    }

    #[test]
    fn counts_add_up_and_availability_follows_max_unavailable() {
        let d = deployment(json!({}));
        let sets = Sets {
            new: Some(rs("new", 2, 2, 1)),
            old: vec![rs("old", 2, 2, 2)],
        };
        let status = calculate_status(&d, &sets, t("2026-01-01T00:00:00Z"));
        assert_eq!(status.replicas, Some(4));
        assert_eq!(status.updated_replicas, Some(2));
        assert_eq!(status.available_replicas, Some(3));
        assert_eq!(status.unavailable_replicas, Some(1));
        assert_eq!(status.observed_generation, Some(2));
        let available = get_condition(&status, AVAILABLE).expect("available");
        assert_eq!(available.reason.as_deref(), Some(MIN_AVAILABLE));
        let short = Sets {
            new: Some(rs("new", 3, 3, 2)),
            old: vec![],
        };
        let status = calculate_status(&d, &short, t("2026-01-01T00:00:00Z"));
        let available = get_condition(&status, AVAILABLE).expect("available");
        assert_eq!(available.reason.as_deref(), Some(MIN_UNAVAILABLE));
    }

    #[test]
    fn progress_completion_and_deadline() {
        let created = json!({"conditions": [{"type": "Progressing", "status": "True",
            "reason": "NewReplicaSetCreated", "lastUpdateTime": "2026-01-01T00:00:00Z",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "replicas": 0, "updatedReplicas": 0, "availableReplicas": 0});
        let d = deployment(created);
        // Some pods became available: progressing, update time refreshed.
        let sets = Sets {
            new: Some(rs("new", 3, 3, 1)),
            old: vec![],
        };
        let status = rollout_status(&d, &sets, t("2026-01-01T00:00:30Z"));
        let c = get_condition(&status, PROGRESSING).expect("progressing");
        assert_eq!(c.reason.as_deref(), Some(RS_UPDATED));
        assert_eq!(c.last_update_time, Some(Time(t("2026-01-01T00:00:30Z"))));
        assert_eq!(
            c.last_transition_time,
            Some(Time(t("2026-01-01T00:00:00Z")))
        );
        // Nothing changed and the deadline passed: timed out.
        let stuck = Sets {
            new: Some(rs("new", 3, 0, 0)),
            old: vec![],
        };
        assert_eq!(
            stuck_requeue(
                &d,
                &calculate_status(&d, &stuck, t("2026-01-01T00:00:30Z")),
                t("2026-01-01T00:00:30Z")
            ),
            Some(Duration::from_secs(31))
        );
        let status = rollout_status(&d, &stuck, t("2026-01-01T00:01:01Z"));
        let c = get_condition(&status, PROGRESSING).expect("progressing");
        assert_eq!(c.reason.as_deref(), Some(TIMED_OUT));
        assert_eq!(c.status, "False");
        // Everything available: complete.
        let done = Sets {
            new: Some(rs("new", 3, 3, 3)),
            old: vec![],
        };
        let status = rollout_status(&d, &done, t("2026-01-01T00:00:40Z"));
        let c = get_condition(&status, PROGRESSING).expect("progressing");
        assert_eq!(c.reason.as_deref(), Some(NEW_RS_AVAILABLE));
        assert_eq!(
            c.message.as_deref(),
            Some("ReplicaSet \"new\" has successfully progressed.")
        );
    }
}
