//! The Recreate strategy (`recreate.go` upstream): scale every old ReplicaSet to zero, wait
//! until none of their pods is left running, then create and scale up the new one.

use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::ResourceExt;

use super::progress;
use super::replicas::{self, desired};
use super::{DeploymentError, Rollout, Sets};

impl Rollout<'_> {
    /// One step of a recreate rollout (`rolloutRecreate`).
    pub(super) async fn rollout_recreate(
        &mut self,
        rs_list: &[ReplicaSet],
    ) -> Result<(), DeploymentError> {
        let mut sets = self.sets_with_revision(rs_list, false).await?;
        let mut scaled_down = false;
        for rs in sets.active_old() {
            scaled_down |= self.scale_and_record(&rs, 0, &mut sets).await?;
        }
        if scaled_down {
            return self.sync_rollout_status(&sets).await;
        }
        if self.old_pods_running(&sets, rs_list).await? {
            return self.sync_rollout_status(&sets).await;
        }
        if sets.new.is_none() {
            sets = self.sets_with_revision(rs_list, true).await?;
        }
        if let Some(new_rs) = sets.new.clone() {
            self.scale_and_record(&new_rs, desired(&self.d), &mut sets)
                .await?;
        }
        let status = self.d.status.clone().unwrap_or_default();
        if progress::deployment_complete(&self.d, &status) {
            self.cleanup(&sets.old).await?;
        }
        self.sync_rollout_status(&sets).await
    }

    /// Whether any pod of an old ReplicaSet still exists and has not finished
    /// (`oldPodsRunning`).
    async fn old_pods_running(
        &self,
        sets: &Sets,
        rs_list: &[ReplicaSet],
    ) -> Result<bool, DeploymentError> {
        let old: Vec<&ReplicaSet> = sets.old.iter().collect();
        if replicas::total_actual(&old) > 0 {
            return Ok(true);
        }
        let new_uid = sets.new.as_ref().and_then(|rs| rs.uid());
        let groups = self.pods_by_replica_set(rs_list).await?;
        Ok(groups
            .iter()
            .filter(|(uid, _)| Some(uid) != new_uid.as_ref())
            .flat_map(|(_, pods)| pods)
            .any(|pod| {
                !matches!(
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            }))
    }
}
