//! Controller revision history: the ControllerRevisions a DaemonSet or StatefulSet keeps of its
//! pod template, as kube-controller-manager's `pkg/controller/history` does.
//!
//! A revision is named `<owner>-<hash>`, carries the owner's template labels plus
//! `controller-revision-hash: <hash>`, is controlled by its owner and holds the owner's
//! template as the patch `{"spec": {"template": {..., "$patch": "replace"}}}` (what
//! `kubectl rollout undo` applies). Returning to an earlier template reuses its revision and
//! gives it the next revision number. A name taken by different data is a hash collision: the
//! owner's `status.collisionCount` goes up and the hash changes.
//!
//! Owns only ControllerRevision objects; the callers own their pods and status.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::Selector;
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};

use super::{controlled_by, controller_reference};

/// Label with the hash of the template revision a pod (or revision) was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// Revisions kept when `revisionHistoryLimit` is unset.
const DEFAULT_HISTORY_LIMIT: i32 = 10;

/// A short, stable hash of revision data, as Kubernetes' `HashControllerRevision` renders it:
/// FNV-1a (32 bit) over the data (JSON here) and the collision count, its decimal digits mapped
/// onto the alphabet of `SafeEncodeString` (no vowels, no look-alikes).
pub fn revision_hash(data: &Value, collision_count: Option<i32>) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    feed(data.to_string().as_bytes());
    if let Some(count) = collision_count {
        feed(&count.to_le_bytes());
    }
    hash.to_string()
        .bytes()
        .map(|b| char::from(ALPHABET[usize::from(b) % ALPHABET.len()]))
        .collect()
}

/// The revision data for a pod template: a patch that replaces the owner's template.
pub fn template_patch(template: &PodTemplateSpec) -> Value {
    let mut template = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(object) = template.as_object_mut() {
        object.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": template}})
}

/// The pod template a revision holds (the inverse of [`template_patch`]).
pub fn revision_template(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut template = revision
        .data
        .as_ref()?
        .0
        .get("spec")?
        .get("template")?
        .clone();
    if let Some(object) = template.as_object_mut() {
        object.remove("$patch");
    }
    serde_json::from_value(template).ok()
}

/// The hash a revision was stored under.
pub fn hash_of(revision: &ControllerRevision) -> Option<&str> {
    revision.labels().get(REVISION_LABEL).map(String::as_str)
}

/// The revisions `owner` controls among those its selector matches.
pub async fn list<K: Resource<DynamicType = ()>>(
    api: &Api<ControllerRevision>,
    owner: &K,
    selector: &Selector,
) -> Result<Vec<ControllerRevision>, kube::Error> {
    let uid = owner.meta().uid.clone().unwrap_or_default();
    let mut revisions: Vec<ControllerRevision> = api
        .list(&ListParams::default().labels_from(selector))
        .await?
        .items
        .into_iter()
        .filter(|r| controlled_by(r, &uid))
        .collect();
    revisions.sort_by_key(|r| r.revision);
    Ok(revisions)
}

/// What [`ensure`] found.
pub enum Ensured {
    /// The revision for the data (created, reused, or renumbered to be the newest).
    Revision(Box<ControllerRevision>),
    /// The name is taken by other data: the owner must store `collisionCount` and retry.
    Collision { collision_count: i32 },
}

/// Makes sure a revision with `data` exists and is the newest; `history` is updated to match.
pub async fn ensure<K: Resource<DynamicType = ()>>(
    api: &Api<ControllerRevision>,
    owner: &K,
    history: &mut Vec<ControllerRevision>,
    data: Value,
    template_labels: &BTreeMap<String, String>,
    collision_count: Option<i32>,
) -> Result<Ensured, kube::Error> {
    let max = history.iter().map(|r| r.revision).max().unwrap_or(0);
    // An equal revision (a rollback, or this revision already recorded) is reused.
    if let Some(index) = history
        .iter()
        .position(|r| r.data.as_ref().map(|d| &d.0) == Some(&data))
    {
        if history[index].revision < max {
            let name = history[index].name_any();
            let patch = json!({"revision": max + 1});
            history[index] = api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        return Ok(Ensured::Revision(Box::new(history[index].clone())));
    }
    let hash = revision_hash(&data, collision_count);
    let name = format!("{}-{}", owner.meta().name.clone().unwrap_or_default(), hash);
    let mut labels = template_labels.clone();
    labels.insert(REVISION_LABEL.into(), hash);
    let revision = ControllerRevision {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: owner.meta().namespace.clone(),
            labels: Some(labels),
            owner_references: Some(vec![controller_reference(owner)]),
            ..ObjectMeta::default()
        },
        data: Some(RawExtension(data.clone())),
        revision: max + 1,
    };
    match api.create(&PostParams::default(), &revision).await {
        Ok(created) => {
            history.push(created.clone());
            Ok(Ensured::Revision(Box::new(created)))
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let existing = api.get(&name).await?;
            let uid = owner.meta().uid.clone().unwrap_or_default();
            if controlled_by(&existing, &uid) && existing.data.as_ref().map(|d| &d.0) == Some(&data)
            {
                history.push(existing.clone());
                return Ok(Ensured::Revision(Box::new(existing)));
            }
            Ok(Ensured::Collision {
                collision_count: collision_count.unwrap_or(0) + 1,
            })
        }
        Err(err) => Err(err),
    }
}

/// Which revisions to delete: the oldest beyond `limit`, never `current` nor one whose hash a
/// live pod still carries.
pub fn excess<'a>(
    history: &'a [ControllerRevision],
    current: &str,
    live_hashes: &std::collections::BTreeSet<String>,
    limit: Option<i32>,
) -> Vec<&'a ControllerRevision> {
    let limit = usize::try_from(limit.unwrap_or(DEFAULT_HISTORY_LIMIT)).unwrap_or(0);
    let mut unused: Vec<&ControllerRevision> = history
        .iter()
        .filter(|r| r.name_any() != current)
        .filter(|r| hash_of(r).is_none_or(|h| !live_hashes.contains(h)))
        .collect();
    unused.sort_by_key(|r| r.revision);
    let count = unused.len().saturating_sub(limit);
    unused.truncate(count);
    unused
}

/// Deletes the revisions [`excess`] picks; failures are logged and retried next time.
pub async fn prune(
    api: &Api<ControllerRevision>,
    history: &[ControllerRevision],
    current: &str,
    live_hashes: &std::collections::BTreeSet<String>,
    limit: Option<i32>,
) {
    for old in excess(history, current, live_hashes, limit) {
        if let Err(err) = api.delete(&old.name_any(), &DeleteParams::default()).await {
            tracing::debug!(revision = %old.name_any(), error = %err, "pruning history");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_safe_and_move_with_collisions() {
        let data = json!({"spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}});
        let other = json!({"spec": {"template": {"spec": {"containers": [{"name": "d"}]}}}});
        let a = revision_hash(&data, None);
        assert_eq!(a, revision_hash(&data, None));
        assert_ne!(a, revision_hash(&other, None));
        assert_ne!(a, revision_hash(&data, Some(1)));
        assert_ne!(revision_hash(&data, Some(1)), revision_hash(&data, Some(2)));
        assert!(a
            .bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)));
    }

    #[test]
    fn template_round_trips_through_the_patch() {
        let template: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "a"}},
            "spec": {"containers": [{"name": "c", "image": "nginx:1"}]},
        }))
        .expect("template");
        let data = template_patch(&template);
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        let revision = ControllerRevision {
            data: Some(RawExtension(data)),
            ..ControllerRevision::default()
        };
        assert_eq!(revision_template(&revision), Some(template));
    }

    fn revision(name: &str, number: i64, hash: &str) -> ControllerRevision {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {REVISION_LABEL: hash}},
            "revision": number,
        }))
        .expect("revision")
    }

    #[test]
    fn pruning_keeps_the_current_the_live_and_the_newest() {
        let history = vec![
            revision("r1", 1, "h1"),
            revision("r2", 2, "h2"),
            revision("r3", 3, "h3"),
            revision("r4", 4, "h4"),
            revision("r5", 5, "h5"),
        ];
        let live: std::collections::BTreeSet<String> = ["h1".to_string()].into();
        let names =
            |v: Vec<&ControllerRevision>| v.iter().map(|r| r.name_any()).collect::<Vec<_>>();
        // r5 current, r1 in use; of r2..r4 one may stay.
        assert_eq!(names(excess(&history, "r5", &live, Some(1))), ["r2", "r3"]);
        assert_eq!(
            names(excess(&history, "r5", &live, Some(0))),
            ["r2", "r3", "r4"]
        );
        assert!(excess(&history, "r5", &live, None).is_empty());
    }
}
