//! The annotations a Deployment and its ReplicaSets carry: the revision (which rollout a
//! ReplicaSet belongs to, and which the Deployment is at), the revision history (earlier
//! revisions a ReplicaSet served, when rolled back to), the desired and maximum replicas a
//! ReplicaSet was sized for (proportional scaling reads them), and the Deployment's own
//! annotations copied onto its ReplicaSets (`kubernetes.io/change-cause` for
//! `kubectl rollout history`). Pure functions, as `deployment/util` has them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The rollout revision of a Deployment and of each of its ReplicaSets.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Revisions a ReplicaSet served before it was rolled back to under a new one.
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// `spec.replicas` of the Deployment when the ReplicaSet was last sized.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// `spec.replicas + maxSurge` of the Deployment when the ReplicaSet was last sized.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// The revision to roll back to (the annotation apps/v1 keeps of `spec.rollbackTo`).
pub const ROLLBACK_TO: &str = "deprecated.deployment.rollback.to";
/// kubectl's record of the applied configuration; never copied.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The longest revision history kept, in characters.
pub const MAX_HISTORY_CHARS: usize = 2000;

/// Whether an annotation stays on its object instead of being copied between a Deployment and
/// its ReplicaSets.
pub fn skip_copy(key: &str) -> bool {
    matches!(
        key,
        LAST_APPLIED | REVISION | REVISION_HISTORY | DESIRED_REPLICAS | MAX_REPLICAS | ROLLBACK_TO
    )
}

/// The revision of an object: 0 when unannotated, `None` when the annotation is not a number.
pub fn revision(meta: &ObjectMeta) -> Option<i64> {
    match meta.annotations.as_ref().and_then(|a| a.get(REVISION)) {
        None => Some(0),
        Some(value) => value.parse().ok(),
    }
}

/// The highest revision among `sets` (0 when none).
pub fn max_revision<'a>(sets: impl IntoIterator<Item = &'a ReplicaSet>) -> i64 {
    sets.into_iter()
        .filter_map(|rs| revision(&rs.metadata))
        .max()
        .unwrap_or(0)
}

/// The second-highest revision among `sets` (`LastRevision`): the one before the current.
pub fn last_revision<'a>(sets: impl IntoIterator<Item = &'a ReplicaSet>) -> i64 {
    let (mut max, mut second) = (0, 0);
    for v in sets.into_iter().filter_map(|rs| revision(&rs.metadata)) {
        if v >= max {
            second = max;
            max = v;
        } else if v > second {
            second = v;
        }
    }
    second
}

fn annotation_int(rs: &ReplicaSet, key: &str) -> Option<i32> {
    rs.metadata.annotations.as_ref()?.get(key)?.parse().ok()
}

/// The `desired-replicas` annotation.
pub fn desired_replicas(rs: &ReplicaSet) -> Option<i32> {
    annotation_int(rs, DESIRED_REPLICAS)
}

/// The `max-replicas` annotation.
pub fn max_replicas(rs: &ReplicaSet) -> Option<i32> {
    annotation_int(rs, MAX_REPLICAS)
}

/// Whether the replicas annotations differ from `desired` and `max`.
pub fn replicas_annotations_need_update(rs: &ReplicaSet, desired: i32, max: i32) -> bool {
    let Some(annotations) = rs.metadata.annotations.as_ref() else {
        return true;
    };
    annotations.get(DESIRED_REPLICAS) != Some(&desired.to_string())
        || annotations.get(MAX_REPLICAS) != Some(&max.to_string())
}

/// Writes the replicas annotations; whether anything changed.
pub fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut changed = false;
    for (key, value) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        let value = value.to_string();
        if annotations.get(key) != Some(&value) {
            annotations.insert(key.into(), value);
            changed = true;
        }
    }
    changed
}

/// Copies the Deployment's own annotations onto the ReplicaSet; whether anything changed.
fn copy_deployment_annotations(d: &Deployment, rs: &mut ReplicaSet) -> bool {
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut changed = false;
    for (key, value) in d.metadata.annotations.iter().flatten() {
        if skip_copy(key) || annotations.get(key) == Some(value) {
            continue;
        }
        annotations.insert(key.clone(), value.clone());
        changed = true;
    }
    changed
}

/// Brings the new ReplicaSet's annotations up to date (`SetNewReplicaSetAnnotations`): the
/// Deployment's annotations, the revision raised to `new_revision` (remembering the one it
/// replaces in the history, which means a rollback), and for a ReplicaSet about to be created
/// the replicas annotations. Whether anything changed.
pub fn set_new_replica_set_annotations(
    d: &Deployment,
    rs: &mut ReplicaSet,
    new_revision: i64,
    exists: bool,
    desired: i32,
    max: i32,
) -> bool {
    let mut changed = copy_deployment_annotations(d, rs);
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let old = annotations.get(REVISION).cloned();
    let old_revision = match old.as_deref() {
        None | Some("") => 0,
        Some(value) => match value.parse::<i64>() {
            Ok(v) => v,
            Err(_) => return changed,
        },
    };
    if old_revision < new_revision {
        annotations.insert(REVISION.into(), new_revision.to_string());
        changed = true;
        if let Some(old) = old {
            let history = annotations
                .get(REVISION_HISTORY)
                .cloned()
                .unwrap_or_default();
            if let Some(history) = append_history(&history, &old) {
                annotations.insert(REVISION_HISTORY.into(), history);
            }
        }
    }
    if !exists && set_replicas_annotations(rs, desired, max) {
        changed = true;
    }
    changed
}

/// `history` with `revision` appended, dropping the oldest entries to stay within
/// [`MAX_HISTORY_CHARS`]; `None` when even that does not fit.
fn append_history(history: &str, revision: &str) -> Option<String> {
    if history.is_empty() {
        return Some(revision.to_string());
    }
    let entries: Vec<&str> = history.split(',').collect();
    let mut total = history.len() + revision.len() + 1;
    let mut start = 0;
    while total > MAX_HISTORY_CHARS && start < entries.len() {
        total -= entries[start].len() + 1;
        start += 1;
    }
    if total > MAX_HISTORY_CHARS {
        return None;
    }
    let mut kept: Vec<&str> = entries[start..].to_vec();
    kept.push(revision);
    Some(kept.join(","))
}

/// The Deployment's annotations replaced by the ReplicaSet's copyable ones, keeping its own
/// non-copyable ones (`SetDeploymentAnnotationsTo`, used when rolling back).
pub fn annotations_from_replica_set(d: &Deployment, rs: &ReplicaSet) -> BTreeMap<String, String> {
    let mut annotations: BTreeMap<String, String> = d
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| skip_copy(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (key, value) in rs.metadata.annotations.iter().flatten() {
        if !skip_copy(key) {
            annotations.insert(key.clone(), value.clone());
        }
    }
    annotations
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rs(annotations: serde_json::Value) -> ReplicaSet {
        serde_json::from_value(json!({"metadata": {"name": "r", "annotations": annotations}}))
            .expect("rs")
    }

    fn deployment(annotations: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({"metadata": {"name": "d", "annotations": annotations}}))
            .expect("deployment")
    }

    #[test]
    fn revisions_max_and_last() {
        let sets = [
            rs(json!({REVISION: "1"})),
            rs(json!({REVISION: "4"})),
            rs(json!({REVISION: "3"})),
            rs(json!({REVISION: "x"})),
            rs(json!({})),
        ];
        assert_eq!(max_revision(&sets), 4);
        assert_eq!(last_revision(&sets), 3);
        assert_eq!(revision(&sets[4].metadata), Some(0));
        assert_eq!(revision(&sets[3].metadata), None);
    }

    #[test]
    fn new_replica_set_gets_revision_annotations_and_copies() {
        let d = deployment(json!({
            "kubernetes.io/change-cause": "image bump",
            REVISION: "7",
            LAST_APPLIED: "{}",
        }));
        let mut created = rs(json!({}));
        assert!(set_new_replica_set_annotations(
            &d,
            &mut created,
            3,
            false,
            4,
            5
        ));
        let a = created.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(a.get(REVISION).map(String::as_str), Some("3"));
        assert_eq!(a.get(DESIRED_REPLICAS).map(String::as_str), Some("4"));
        assert_eq!(a.get(MAX_REPLICAS).map(String::as_str), Some("5"));
        assert_eq!(
            a.get("kubernetes.io/change-cause").map(String::as_str),
            Some("image bump")
        );
        assert!(!a.contains_key(LAST_APPLIED));
        assert!(!a.contains_key(REVISION_HISTORY));
        // Nothing new: nothing changes.
        assert!(!set_new_replica_set_annotations(
            &d,
            &mut created,
            3,
            true,
            4,
            5
        ));
    }

    #[test]
    fn rolling_back_records_the_old_revision_in_the_history() {
        let d = deployment(json!({}));
        let mut old = rs(json!({REVISION: "1"}));
        assert!(set_new_replica_set_annotations(&d, &mut old, 3, true, 1, 1));
        let a = old.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(a.get(REVISION).map(String::as_str), Some("3"));
        assert_eq!(a.get(REVISION_HISTORY).map(String::as_str), Some("1"));
        assert!(set_new_replica_set_annotations(&d, &mut old, 5, true, 1, 1));
        let a = old.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(a.get(REVISION_HISTORY).map(String::as_str), Some("1,3"));
        // A lower revision never lowers it.
        assert!(!set_new_replica_set_annotations(
            &d, &mut old, 2, true, 1, 1
        ));
    }

    #[test]
    fn history_drops_the_oldest_beyond_the_limit() {
        let long = vec!["1234567890"; 181].join(",");
        assert!(long.len() <= MAX_HISTORY_CHARS);
        let appended = append_history(&long, "99").expect("fits");
        assert!(appended.len() <= MAX_HISTORY_CHARS);
        assert!(appended.ends_with(",99"));
    }

    #[test]
    fn rollback_takes_the_replica_sets_annotations() {
        let d = deployment(json!({REVISION: "4", "note": "current"}));
        let r = rs(json!({REVISION: "2", "note": "old", "kubernetes.io/change-cause": "v1"}));
        let a = annotations_from_replica_set(&d, &r);
        assert_eq!(a.get(REVISION).map(String::as_str), Some("4"));
        assert_eq!(a.get("note").map(String::as_str), Some("old"));
        assert_eq!(
            a.get("kubernetes.io/change-cause").map(String::as_str),
            Some("v1")
        );
    }
}
