//! Controller references: which object controls which, as Kubernetes' `ControllerRefManager`
//! decides it — a controller adopts orphans its selector matches and releases the objects it
//! controls that its selector stops matching.
//!
//! Shared by the ReplicaSet controller (claiming pods) and the Deployment controller (claiming
//! ReplicaSets). Adoption and release are strategic-merge patches of `metadata.ownerReferences`
//! that carry the object's `uid`, so they never act on a newer object of the same name.
//!
//! # Guarantees
//! - An object controlled by someone else is never touched.
//! - Nothing is adopted while the controller or the object is being deleted.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::debug;

/// Whether `labels` satisfy `selector` (`matchLabels` and `matchExpressions`, ANDed). An empty
/// selector matches everything, as `metav1.LabelSelectorAsSelector` makes it.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// Whether a selector selects nothing useful (no labels and no expressions).
pub fn selector_is_empty(selector: &LabelSelector) -> bool {
    selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty())
}

/// The controller reference of an object, if it has one.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// What to do with one candidate object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Controlled by this controller and matching: it is ours.
    Owned,
    /// An orphan that matches: adopt it.
    Adopt,
    /// Controlled by this controller but no longer matching: release it.
    Release,
    /// Not ours and not to be taken.
    Ignore,
}

/// Decides, as `ControllerRefManager.ClaimObject` does, what a controller with `owner_uid`,
/// `selector` and the given deletion state does with an object.
pub fn decide(
    owner_uid: &str,
    owner_deleting: bool,
    selector: &LabelSelector,
    object: &ObjectMeta,
) -> Claim {
    let labels = object.labels.clone().unwrap_or_default();
    let matches = selector_matches(selector, &labels);
    match controller_of(object) {
        Some(reference) if reference.uid == owner_uid => {
            if matches {
                Claim::Owned
            } else if owner_deleting {
                Claim::Ignore
            } else {
                Claim::Release
            }
        }
        Some(_) => Claim::Ignore,
        None => {
            if owner_deleting || !matches || object.deletion_timestamp.is_some() {
                Claim::Ignore
            } else {
                Claim::Adopt
            }
        }
    }
}

/// Makes `owner` the controller of `object` (a strategic-merge patch keyed on the object's uid).
pub async fn adopt<K>(api: &Api<K>, object: &ObjectMeta, owner: OwnerReference) -> kube::Result<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let name = object.name.clone().unwrap_or_default();
    debug!(object = %name, owner = %owner.name, "adopting");
    let patch = json!({"metadata": {"ownerReferences": [owner], "uid": object.uid}});
    api.patch(&name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
}

/// Removes the reference to `owner_uid` from `object`.
pub async fn release<K>(api: &Api<K>, object: &ObjectMeta, owner_uid: &str) -> kube::Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let name = object.name.clone().unwrap_or_default();
    debug!(object = %name, "releasing");
    let patch = json!({"metadata": {
        "ownerReferences": [{"$patch": "delete", "uid": owner_uid}],
        "uid": object.uid,
    }});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
    {
        Ok(_) => Ok(()),
        // Gone, or replaced by a new object of the same name: nothing to release.
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["db".into()]),
            }]),
        };
        assert!(selector_matches(&selector, &labels(&[("app", "web")])));
        assert!(!selector_matches(
            &selector,
            &labels(&[("app", "web"), ("tier", "db")])
        ));
        assert!(!selector_matches(&selector, &labels(&[("app", "db")])));
        assert!(selector_is_empty(&LabelSelector::default()));
    }

    #[test]
    fn claims_follow_the_controller_ref_manager() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: None,
        };
        let mut meta = ObjectMeta {
            labels: Some(labels(&[("app", "web")])),
            ..ObjectMeta::default()
        };
        assert_eq!(decide("u1", false, &selector, &meta), Claim::Adopt);
        assert_eq!(decide("u1", true, &selector, &meta), Claim::Ignore);
        meta.owner_references = Some(vec![OwnerReference {
            uid: "u1".into(),
            controller: Some(true),
            ..OwnerReference::default()
        }]);
        assert_eq!(decide("u1", false, &selector, &meta), Claim::Owned);
        assert_eq!(decide("u2", false, &selector, &meta), Claim::Ignore);
        meta.labels = Some(labels(&[("app", "other")]));
        assert_eq!(decide("u1", false, &selector, &meta), Claim::Release);
    }
}
