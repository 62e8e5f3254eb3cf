//! The RollingUpdate strategy (`rolling.go` upstream): grow the new ReplicaSet within
//! `replicas + maxSurge` pods, shrink the old ones while at least `replicas - maxUnavailable`
//! pods stay available (unhealthy old pods first), and clean up once complete.

use k8s_openapi::api::apps::v1::ReplicaSet;

use super::progress;
use super::replicas::{self, desired, spec_replicas};
use super::{DeploymentError, Rollout, Sets};

impl Rollout<'_> {
    /// One step of a rolling update (`rolloutRolling`).
    pub(super) async fn rollout_rolling(
        &mut self,
        rs_list: &[ReplicaSet],
    ) -> Result<(), DeploymentError> {
        let mut sets = self.sets_with_revision(rs_list, true).await?;
        if self.reconcile_new_replica_set(&mut sets).await? {
            return self.sync_rollout_status(&sets).await;
        }
        if self.reconcile_old_replica_sets(&mut sets).await? {
            return self.sync_rollout_status(&sets).await;
        }
        let status = self.d.status.clone().unwrap_or_default();
        if progress::deployment_complete(&self.d, &status) {
            self.cleanup(&sets.old).await?;
        }
        self.sync_rollout_status(&sets).await
    }

    /// Grows (or trims) the new ReplicaSet (`reconcileNewReplicaSet`); whether it scaled.
    async fn reconcile_new_replica_set(&self, sets: &mut Sets) -> Result<bool, DeploymentError> {
        let Some(new_rs) = sets.new.clone() else {
            return Ok(false);
        };
        let replicas = desired(&self.d);
        let size = spec_replicas(&new_rs);
        if size == replicas {
            return Ok(false);
        }
        if size > replicas {
            return self.scale_and_record(&new_rs, replicas, sets).await;
        }
        let next = replicas::new_rs_new_replicas(&self.d, &sets.all(), &new_rs);
        self.scale_and_record(&new_rs, next, sets).await
    }

    /// Shrinks old ReplicaSets as far as availability allows (`reconcileOldReplicaSets`);
    /// whether any shrank.
    async fn reconcile_old_replica_sets(&self, sets: &mut Sets) -> Result<bool, DeploymentError> {
        let active_old = sets.active_old();
        let old_count = replicas::total_spec(&active_old.iter().collect::<Vec<_>>());
        if old_count == 0 {
            return Ok(false);
        }
        let all_count = replicas::total_spec(&sets.all());
        let min_available = desired(&self.d) - replicas::max_unavailable(&self.d);
        let new_unavailable = sets
            .new
            .as_ref()
            .map_or(0, |rs| spec_replicas(rs) - replicas::available(rs));
        let max_scaled_down = all_count - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        let cleaned = self
            .cleanup_unhealthy_replicas(sets, max_scaled_down)
            .await?;
        let scaled = self.scale_down_old_for_rolling_update(sets).await?;
        Ok(cleaned + scaled > 0)
    }

    /// Removes old pods that are not available anyway, oldest ReplicaSets first, up to
    /// `max_cleanup` (`cleanupUnhealthyReplicas`); how many.
    async fn cleanup_unhealthy_replicas(
        &self,
        sets: &mut Sets,
        max_cleanup: i32,
    ) -> Result<i32, DeploymentError> {
        let mut old = sets.active_old();
        old.sort_by(replicas::by_creation);
        let mut total = 0;
        for rs in old {
            if total >= max_cleanup {
                break;
            }
            let size = spec_replicas(&rs);
            let available = replicas::available(&rs);
            if size == 0 || size == available {
                continue;
            }
            let count = (max_cleanup - total).min(size - available);
            self.scale_and_record(&rs, size - count, sets).await?;
            total += count;
        }
        Ok(total)
    }

    /// Shrinks old ReplicaSets, oldest first, by what availability allows
    /// (`scaleDownOldReplicaSetsForRollingUpdate`); how many.
    async fn scale_down_old_for_rolling_update(
        &self,
        sets: &mut Sets,
    ) -> Result<i32, DeploymentError> {
        let min_available = desired(&self.d) - replicas::max_unavailable(&self.d);
        let available = replicas::total_available(&sets.all());
        if available <= min_available {
            return Ok(0);
        }
        let budget = available - min_available;
        let mut old = sets.active_old();
        old.sort_by(replicas::by_creation);
        let mut total = 0;
        for rs in old {
            if total >= budget {
                break;
            }
            let size = spec_replicas(&rs);
            if size == 0 {
                continue;
            }
            let count = size.min(budget - total);
            self.scale_and_record(&rs, size - count, sets).await?;
            total += count;
        }
        Ok(total)
    }
}
