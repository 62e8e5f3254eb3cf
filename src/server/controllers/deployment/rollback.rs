//! Rollback requested on the server (`rollback.go` upstream): the
//! `deprecated.deployment.rollback.to` annotation (what apps/v1 keeps of `spec.rollbackTo`)
//! names a revision, 0 meaning the previous one; the Deployment's template is replaced by that
//! ReplicaSet's and the annotation removed. The next reconcile then rolls out to the old
//! ReplicaSet, which gets a new revision.
//!
//! `kubectl rollout undo` does not use this: it patches the template itself (client-side), and
//! the ordinary rollout handles it.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::ResourceExt;
use serde_json::json;

use super::hash::{self, POD_TEMPLATE_HASH};
use super::revision::{self, ROLLBACK_TO};
use super::{DeploymentError, Rollout};

/// The revision a rollback was requested to, if one was (and it is a number).
pub fn rollback_to(d: &Deployment) -> Option<i64> {
    d.metadata
        .annotations
        .as_ref()?
        .get(ROLLBACK_TO)
        .filter(|v| !v.is_empty())?
        .parse()
        .ok()
}

impl Rollout<'_> {
    /// Performs the requested rollback (`rollback`).
    pub(super) async fn rollback(&mut self, rs_list: &[ReplicaSet]) -> Result<(), DeploymentError> {
        let sets = self.sets_with_revision(rs_list, true).await?;
        let all = sets.all();
        let mut target = rollback_to(&self.d).unwrap_or(0);
        if target == 0 {
            target = revision::last_revision(all.iter().copied());
            if target == 0 {
                self.event(
                    EventType::Warning,
                    "DeploymentRollbackRevisionNotFound",
                    "Unable to find last revision.".into(),
                )
                .await;
                return self.finish_rollback(None).await;
            }
        }
        let found = all
            .into_iter()
            .find(|rs| revision::revision(&rs.metadata) == Some(target))
            .cloned();
        let Some(rs) = found else {
            self.event(
                EventType::Warning,
                "DeploymentRollbackRevisionNotFound",
                "Unable to find the revision to rollback to.".into(),
            )
            .await;
            return self.finish_rollback(None).await;
        };
        let template = rs
            .spec
            .as_ref()
            .and_then(|s| s.template.clone())
            .unwrap_or_default();
        let current = self
            .d
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        if hash::equal_ignore_hash(&template, &current) {
            self.event(
                EventType::Warning,
                "DeploymentRollbackTemplateUnchanged",
                format!(
                    "The rollback revision contains the same template as current deployment \"{}\"",
                    self.d.name_any()
                ),
            )
            .await;
            return self.finish_rollback(None).await;
        }
        self.finish_rollback(Some(&rs)).await?;
        self.event(
            EventType::Normal,
            "DeploymentRollback",
            format!(
                "Rolled back deployment \"{}\" to revision {target}",
                self.d.name_any()
            ),
        )
        .await;
        Ok(())
    }

    /// Clears the rollback request, replacing the template and annotations by `to`'s when
    /// given (`updateDeploymentAndClearRollbackTo`).
    async fn finish_rollback(&mut self, to: Option<&ReplicaSet>) -> Result<(), DeploymentError> {
        let patch = match to {
            None => json!({"metadata": {"annotations": {ROLLBACK_TO: null}}}),
            Some(rs) => {
                let mut template = rs
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.clone())
                    .unwrap_or_default();
                if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
                    labels.remove(POD_TEMPLATE_HASH);
                }
                let mut annotations: BTreeMap<String, Option<String>> = self
                    .d
                    .metadata
                    .annotations
                    .iter()
                    .flatten()
                    .map(|(k, _)| (k.clone(), None))
                    .collect();
                for (k, v) in revision::annotations_from_replica_set(&self.d, rs) {
                    annotations.insert(k, Some(v));
                }
                annotations.insert(ROLLBACK_TO.into(), None);
                // The whole template is replaced, not merged into the current one.
                let mut template = serde_json::to_value(&template).unwrap_or_else(|_| json!({}));
                template["$patch"] = json!("replace");
                json!({"metadata": {"annotations": annotations}, "spec": {"template": template}})
            }
        };
        let updated = self
            .deployments
            .patch(
                &self.d.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
            .map_err(self.api_error("rolling back"))?;
        self.d = updated;
        Ok(())
    }
}
