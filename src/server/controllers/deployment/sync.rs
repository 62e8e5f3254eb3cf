//! The steps every strategy shares (`sync.go` upstream): finding or creating the new
//! ReplicaSet and keeping revisions in step, scaling a ReplicaSet, proportional scaling when
//! only `spec.replicas` changed (also while paused), and cleaning up old ReplicaSets beyond
//! `revisionHistoryLimit`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use kube::ResourceExt;
use serde_json::json;

use super::hash::{self, POD_TEMPLATE_HASH};
use super::progress::{self, condition, get_condition, has_progress_deadline, set_condition};
use super::replicas::{self, desired, spec_replicas};
use super::revision;
use super::{controller_reference, DeploymentError, Rollout, Sets};

fn template_of(d: &Deployment) -> k8s_openapi::api::core::v1::PodTemplateSpec {
    d.spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default()
}

fn rs_template(rs: &ReplicaSet) -> k8s_openapi::api::core::v1::PodTemplateSpec {
    rs.spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default()
}

/// The oldest ReplicaSet whose template is the Deployment's (`FindNewReplicaSet`).
pub fn find_new<'a>(d: &Deployment, rs_list: &'a [ReplicaSet]) -> Option<&'a ReplicaSet> {
    let template = template_of(d);
    let mut sorted: Vec<&ReplicaSet> = rs_list.iter().collect();
    sorted.sort_by(|a, b| replicas::by_creation(a, b));
    sorted
        .into_iter()
        .find(|rs| hash::equal_ignore_hash(&rs_template(rs), &template))
}

/// Every ReplicaSet but the new one (`FindOldReplicaSets`' second result).
pub fn find_old(d: &Deployment, rs_list: &[ReplicaSet]) -> Vec<ReplicaSet> {
    let new_uid = find_new(d, rs_list).and_then(|rs| rs.uid());
    rs_list
        .iter()
        .filter(|rs| new_uid.is_none() || rs.uid() != new_uid)
        .cloned()
        .collect()
}

/// The ReplicaSet to scale when only one has (or should have) replicas
/// (`FindActiveOrLatest`): the only live one, or when none is live the new one, or else the
/// newest old one.
fn find_active_or_latest(sets: &Sets) -> Option<ReplicaSet> {
    if sets.new.is_none() && sets.old.is_empty() {
        return None;
    }
    let mut old = sets.old.clone();
    old.sort_by(|a, b| replicas::by_creation(b, a));
    let active: Vec<&ReplicaSet> = old
        .iter()
        .chain(sets.new.iter())
        .filter(|rs| spec_replicas(rs) > 0)
        .collect();
    match active.len() {
        0 => sets.new.clone().or_else(|| old.first().cloned()),
        1 => active.first().map(|rs| (*rs).clone()),
        _ => None,
    }
}

impl Rollout<'_> {
    /// The new ReplicaSet (created when `create`) and the old ones, with revision annotations
    /// brought up to date (`getAllReplicaSetsAndSyncRevision`).
    pub(super) async fn sets_with_revision(
        &mut self,
        rs_list: &[ReplicaSet],
        create: bool,
    ) -> Result<Sets, DeploymentError> {
        let old = find_old(&self.d, rs_list);
        let new = self.new_replica_set(rs_list, &old, create).await?;
        Ok(Sets { new, old })
    }

    /// `getNewReplicaSet`.
    async fn new_replica_set(
        &mut self,
        rs_list: &[ReplicaSet],
        old: &[ReplicaSet],
        create: bool,
    ) -> Result<Option<ReplicaSet>, DeploymentError> {
        let new_revision = revision::max_revision(old) + 1;
        let replicas = desired(&self.d);
        let max = replicas + replicas::max_surge(&self.d);
        if let Some(existing) = find_new(&self.d, rs_list) {
            let mut copy = existing.clone();
            let annotations_changed = revision::set_new_replica_set_annotations(
                &self.d,
                &mut copy,
                new_revision,
                true,
                replicas,
                max,
            );
            let min_ready = self.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
            let existing_min_ready = copy.spec.as_ref().and_then(|s| s.min_ready_seconds);
            if annotations_changed || min_ready.unwrap_or(0) != existing_min_ready.unwrap_or(0) {
                let patch = json!({
                    "metadata": {"annotations": copy.metadata.annotations},
                    "spec": {"minReadySeconds": min_ready.unwrap_or(0)},
                });
                let updated = self
                    .sets
                    .patch(
                        &copy.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await
                    .map_err(self.api_error("updating the new replica set"))?;
                return Ok(Some(updated));
            }
            let rs_revision = copy
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(revision::REVISION))
                .cloned()
                .unwrap_or_default();
            self.save_revision(&rs_revision).await?;
            let mut status = self.d.status.clone().unwrap_or_default();
            if has_progress_deadline(&self.d)
                && get_condition(&status, progress::PROGRESSING).is_none()
            {
                let c = condition(
                    progress::PROGRESSING,
                    "True",
                    progress::FOUND_NEW_RS,
                    format!("Found new replica set \"{}\"", copy.name_any()),
                    progress::now(),
                );
                set_condition(&mut status, c);
                self.save_status(status).await?;
            }
            return Ok(Some(copy));
        }
        if !create {
            return Ok(None);
        }
        self.create_new_replica_set(old, new_revision, replicas, max)
            .await
            .map(Some)
    }

    async fn create_new_replica_set(
        &mut self,
        old: &[ReplicaSet],
        new_revision: i64,
        replicas: i32,
        max: i32,
    ) -> Result<ReplicaSet, DeploymentError> {
        let spec = self.d.spec.clone().unwrap_or_default();
        let collision_count = self.d.status.as_ref().and_then(|s| s.collision_count);
        let pod_hash = hash::pod_template_hash(&spec.template, collision_count);
        let mut template = spec.template.clone();
        template
            .metadata
            .get_or_insert_with(ObjectMeta::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), pod_hash.clone());
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), pod_hash.clone());
        let name = format!("{}-{pod_hash}", self.d.name_any());
        let mut new_rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: self.d.namespace(),
                owner_references: Some(vec![controller_reference(&self.d)]),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let mut all: Vec<&ReplicaSet> = old.iter().collect();
        all.push(&new_rs);
        let new_replicas = replicas::new_rs_new_replicas(&self.d, &all, &new_rs);
        if let Some(s) = new_rs.spec.as_mut() {
            s.replicas = Some(new_replicas);
        }
        revision::set_new_replica_set_annotations(
            &self.d,
            &mut new_rs,
            new_revision,
            false,
            replicas,
            max,
        );
        let (created, already_existed) =
            match self.sets.create(&PostParams::default(), &new_rs).await {
                Ok(created) => (created, false),
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    let existing = self
                        .sets
                        .get(&name)
                        .await
                        .map_err(self.api_error("reading a colliding replica set"))?;
                    let ours = existing
                        .metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|r| {
                            r.controller == Some(true) && Some(&r.uid) == self.d.uid().as_ref()
                        });
                    if ours && hash::equal_ignore_hash(&spec.template, &rs_template(&existing)) {
                        (existing, true)
                    } else {
                        let mut status = self.d.status.clone().unwrap_or_default();
                        status.collision_count =
                            Some(status.collision_count.unwrap_or(0).saturating_add(1));
                        self.save_status(status).await?;
                        return Err(DeploymentError::HashCollision {
                            name: self.d.name_any(),
                            replica_set: name,
                        });
                    }
                }
                Err(source) => {
                    let message = format!("Failed to create new replica set \"{name}\": {source}");
                    if has_progress_deadline(&self.d) {
                        let mut status = self.d.status.clone().unwrap_or_default();
                        let c = condition(
                            progress::PROGRESSING,
                            "False",
                            progress::FAILED_RS_CREATE,
                            message.clone(),
                            progress::now(),
                        );
                        set_condition(&mut status, c);
                        self.save_status(status).await?;
                    }
                    self.event(EventType::Warning, progress::FAILED_RS_CREATE, message)
                        .await;
                    return Err(DeploymentError::Api {
                        name: self.d.name_any(),
                        action: "creating the new replica set",
                        source,
                    });
                }
            };
        if !already_existed && new_replicas > 0 {
            self.event(
                EventType::Normal,
                "ScalingReplicaSet",
                format!("Scaled up replica set {name} from 0 to {new_replicas}"),
            )
            .await;
        }
        self.save_revision(&new_revision.to_string()).await?;
        if !already_existed && has_progress_deadline(&self.d) {
            let mut status = self.d.status.clone().unwrap_or_default();
            let c = condition(
                progress::PROGRESSING,
                "True",
                progress::NEW_RS_CREATED,
                format!("Created new replica set \"{name}\""),
                progress::now(),
            );
            set_condition(&mut status, c);
            self.save_status(status).await?;
        }
        Ok(created)
    }

    /// Scales `rs` to `size` if it is not that size already; whether it scaled
    /// (`scaleReplicaSetAndRecordEvent`). Updates `sets`.
    pub(super) async fn scale_and_record(
        &self,
        rs: &ReplicaSet,
        size: i32,
        sets: &mut Sets,
    ) -> Result<bool, DeploymentError> {
        let current = spec_replicas(rs);
        if current == size {
            return Ok(false);
        }
        let operation = if current < size { "up" } else { "down" };
        self.scale_replica_set(rs, size, operation, sets).await
    }

    /// Sets `rs`'s size and replicas annotations (`scaleReplicaSet`); whether the size changed.
    pub(super) async fn scale_replica_set(
        &self,
        rs: &ReplicaSet,
        size: i32,
        operation: &str,
        sets: &mut Sets,
    ) -> Result<bool, DeploymentError> {
        let current = spec_replicas(rs);
        let replicas = desired(&self.d);
        let max = replicas + replicas::max_surge(&self.d);
        let resize = current != size;
        if !resize && !revision::replicas_annotations_need_update(rs, replicas, max) {
            return Ok(false);
        }
        let patch = json!({
            "metadata": {"annotations": {
                revision::DESIRED_REPLICAS: replicas.to_string(),
                revision::MAX_REPLICAS: max.to_string(),
            }},
            "spec": {"replicas": size},
        });
        let updated = self
            .sets
            .patch(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
            .map_err(self.api_error("scaling a replica set"))?;
        if resize {
            self.event(
                EventType::Normal,
                "ScalingReplicaSet",
                format!(
                    "Scaled {operation} replica set {} from {current} to {size}",
                    rs.name_any()
                ),
            )
            .await;
        }
        sets.replace(updated);
        Ok(resize)
    }

    /// Whether only `spec.replicas` changed since the live ReplicaSets were sized
    /// (`isScalingEvent`).
    pub(super) async fn is_scaling_event(
        &mut self,
        rs_list: &[ReplicaSet],
    ) -> Result<bool, DeploymentError> {
        let sets = self.sets_with_revision(rs_list, false).await?;
        let replicas = desired(&self.d);
        Ok(sets
            .all()
            .into_iter()
            .filter(|rs| spec_replicas(rs) > 0)
            .any(|rs| revision::desired_replicas(rs).is_some_and(|d| d != replicas)))
    }

    /// Scales, cleans up when paused, and writes the status (`sync`): the path for scaling
    /// events and paused Deployments.
    pub(super) async fn sync(&mut self, rs_list: &[ReplicaSet]) -> Result<(), DeploymentError> {
        let mut sets = self.sets_with_revision(rs_list, false).await?;
        self.scale(&mut sets).await?;
        if self.paused() && super::rollback::rollback_to(&self.d).is_none() {
            self.cleanup(&sets.old).await?;
        }
        self.sync_deployment_status(&sets).await
    }

    /// Only writes the status (a Deployment being deleted).
    pub(super) async fn sync_status_only(
        &mut self,
        rs_list: &[ReplicaSet],
    ) -> Result<(), DeploymentError> {
        let sets = self.sets_with_revision(rs_list, false).await?;
        self.sync_deployment_status(&sets).await
    }

    /// Brings the live ReplicaSets to the Deployment's size (`scale`): the single live one
    /// directly, old ones to zero once the new one is saturated, otherwise in proportion.
    async fn scale(&self, sets: &mut Sets) -> Result<(), DeploymentError> {
        let replicas = desired(&self.d);
        if let Some(target) = find_active_or_latest(sets) {
            if spec_replicas(&target) != replicas {
                self.scale_and_record(&target, replicas, sets).await?;
            }
            return Ok(());
        }
        if replicas::is_saturated(&self.d, sets.new.as_ref()) {
            for old in sets.active_old() {
                self.scale_and_record(&old, 0, sets).await?;
            }
            return Ok(());
        }
        if !replicas::is_rolling_update(&self.d) {
            return Ok(());
        }
        let mut live: Vec<ReplicaSet> = sets
            .all()
            .into_iter()
            .filter(|rs| spec_replicas(rs) > 0)
            .cloned()
            .collect();
        let allowed = if replicas > 0 {
            replicas + replicas::max_surge(&self.d)
        } else {
            0
        };
        let to_add = allowed - live.iter().map(spec_replicas).sum::<i32>();
        if to_add > 0 {
            live.sort_by(replicas::by_size_newer);
        } else if to_add < 0 {
            live.sort_by(replicas::by_size_older);
        }
        let refs: Vec<&ReplicaSet> = live.iter().collect();
        let sizes = replicas::proportional_sizes(&self.d, &refs, to_add);
        let operation = if to_add < 0 { "down" } else { "up" };
        for (rs, size) in live.iter().zip(sizes) {
            self.scale_replica_set(rs, size, operation, sets).await?;
        }
        Ok(())
    }

    /// Deletes the oldest empty ReplicaSets beyond `revisionHistoryLimit`
    /// (`cleanupDeployment`).
    pub(super) async fn cleanup(&self, old: &[ReplicaSet]) -> Result<(), DeploymentError> {
        let Some(limit) = self
            .d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .filter(|l| *l != i32::MAX)
        else {
            return Ok(());
        };
        let mut cleanable: Vec<&ReplicaSet> = old
            .iter()
            .filter(|rs| rs.metadata.deletion_timestamp.is_none())
            .collect();
        let surplus = i64::try_from(cleanable.len()).unwrap_or(i64::MAX) - i64::from(limit);
        if surplus <= 0 {
            return Ok(());
        }
        cleanable.sort_by(|a, b| replicas::by_revision(a, b));
        for rs in cleanable
            .into_iter()
            .take(usize::try_from(surplus).unwrap_or(0))
        {
            let status = rs.status.clone().unwrap_or_default();
            if status.replicas != 0
                || spec_replicas(rs) != 0
                || rs.metadata.generation > status.observed_generation
            {
                continue;
            }
            match self
                .sets
                .delete(&rs.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => {
                    return Err(DeploymentError::Api {
                        name: self.d.name_any(),
                        action: "deleting an old replica set",
                        source,
                    })
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn rs(name: &str, replicas: i32, image: &str, created: &str) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": name, "creationTimestamp": created},
            "spec": {"replicas": replicas, "selector": {},
                     "template": {"metadata": {"labels": {"app": "web", "pod-template-hash": name}},
                                  "spec": {"containers": [{"name": "c", "image": image}]}}},
        }))
        .expect("rs")
    }

    fn deployment(image: &str) -> Deployment {
        let template: Value = json!({"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "c", "image": image}]}});
        serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": template},
        }))
        .expect("deployment")
    }

    #[test]
    fn new_and_old_replica_sets_are_found_by_template() {
        let list = vec![
            rs("a", 0, "v1", "2026-01-01T00:00:00Z"),
            rs("b", 3, "v2", "2026-01-01T00:01:00Z"),
            rs("c", 0, "v2", "2026-01-01T00:02:00Z"),
        ];
        let d = deployment("v2");
        assert_eq!(
            find_new(&d, &list).map(|r| r.name_any()).as_deref(),
            Some("b")
        );
        let old: Vec<String> = find_old(&d, &list).iter().map(|r| r.name_any()).collect();
        assert_eq!(old, ["a", "c"]);
        assert!(find_new(&deployment("v3"), &list).is_none());
    }

    #[test]
    fn active_or_latest_picks_the_one_live_set() {
        let one_live = Sets {
            new: Some(rs("new", 0, "v2", "2026-01-01T00:01:00Z")),
            old: vec![rs("old", 2, "v1", "2026-01-01T00:00:00Z")],
        };
        assert_eq!(
            find_active_or_latest(&one_live)
                .map(|r| r.name_any())
                .as_deref(),
            Some("old")
        );
        let none_live = Sets {
            new: None,
            old: vec![
                rs("older", 0, "v1", "2026-01-01T00:00:00Z"),
                rs("newer", 0, "v0", "2026-01-01T00:05:00Z"),
            ],
        };
        assert_eq!(
            find_active_or_latest(&none_live)
                .map(|r| r.name_any())
                .as_deref(),
            Some("newer")
        );
        let two_live = Sets {
            new: Some(rs("new", 1, "v2", "2026-01-01T00:01:00Z")),
            old: vec![rs("old", 2, "v1", "2026-01-01T00:00:00Z")],
        };
        assert!(find_active_or_latest(&two_live).is_none());
    }
}
