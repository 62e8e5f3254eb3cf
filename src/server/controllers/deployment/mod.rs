//! The Deployment controller: rolls a Deployment's pod template out through ReplicaSets, as
//! kube-controller-manager's `pkg/controller/deployment` does.
//!
//! Each reconcile reads the Deployment and lists the namespace's ReplicaSets from the API,
//! claims them by selector (adopting orphans, releasing those that stopped matching), finds the
//! "new" one (whose template equals the Deployment's, the `pod-template-hash` label aside) and
//! then, in upstream's order: only writes the status while the Deployment is being deleted;
//! records pausing/resuming; only scales while paused; performs a rollback requested by the
//! `deprecated.deployment.rollback.to` annotation; scales proportionally when only
//! `spec.replicas` changed; otherwise takes a step of the strategy ([`rolling`] or
//! [`recreate`]) and writes the status with its conditions ([`progress`]).
//!
//! It owns the ReplicaSets' `spec.replicas`, `spec.minReadySeconds`, their `deployment.kubernetes.io/*`
//! annotations and controller references, and the Deployment's status and revision annotation.
//! It never touches pods (the ReplicaSet controller does); `kubectl rollout undo` works on the
//! Deployment's template by itself.
//!
//! # Guarantees
//! - A RollingUpdate never has more than `replicas + maxSurge` pods requested, nor scales old
//!   ReplicaSets below `replicas - maxUnavailable` available pods.
//! - A Recreate creates new pods only once no old pod is left running.
//!
//! # Caveats
//! - ReplicaSets are listed per reconcile (no cache, hence no expectations needed).

pub mod hash;
mod progress;
mod recreate;
pub mod replicas;
pub mod revision;
mod rollback;
mod rolling;
mod sync;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
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

/// How long a failed reconcile waits before the next try.
const ERROR_REQUEUE: Duration = Duration::from_secs(2);

/// Why a reconcile failed; all are retried.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    #[error("deployment {name}: {action}")]
    Api {
        name: String,
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("deployment {name}: replica set {replica_set} exists with another template; collision count raised")]
    HashCollision { name: String, replica_set: String },
}

/// The loop's entry point (registered in [`super::loops`]).
pub fn run(context: Context, cancel: CancellationToken) -> BoxFuture<'static, ()> {
    async move {
        let deployments: Api<Deployment> = Api::all(context.client.clone());
        let sets: Api<ReplicaSet> = Api::all(context.client.clone());
        let pods: Api<Pod> = Api::all(context.client.clone());
        let controller = Controller::new(deployments, watcher::Config::default());
        let for_sets = controller.store();
        let for_pods = controller.store();
        controller
            .watches(sets, watcher::Config::default(), move |rs| {
                deployments_for_replica_set(&for_sets, &rs)
            })
            .watches(pods, watcher::Config::default(), move |pod| {
                recreate_deployments_for_pod(&for_pods, &pod)
            })
            .graceful_shutdown_on(cancel.cancelled_owned())
            .run(reconcile, error_policy, Arc::new(context))
            .for_each(|_| async {})
            .await;
    }
    .boxed()
}

fn selects(
    d: &Deployment,
    namespace: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    d.namespace().as_deref() == Some(namespace)
        && d.spec.as_ref().is_some_and(|s| {
            !controller_ref::selector_is_empty(&s.selector)
                && controller_ref::selector_matches(&s.selector, labels)
        })
}

/// A ReplicaSet's change concerns its controlling Deployment, or for an orphan every
/// Deployment whose selector matches it.
fn deployments_for_replica_set(
    store: &Store<Deployment>,
    rs: &ReplicaSet,
) -> Vec<ObjectRef<Deployment>> {
    let namespace = rs.namespace().unwrap_or_default();
    if let Some(owner) = controller_ref::controller_of(&rs.metadata) {
        if owner.kind == "Deployment" {
            return vec![ObjectRef::new(&owner.name).within(&namespace)];
        }
        return Vec::new();
    }
    store
        .state()
        .iter()
        .filter(|d| selects(d, &namespace, rs.labels()))
        .map(|d| ObjectRef::from_obj(d.as_ref()))
        .collect()
}

/// Pods matter to a Recreate Deployment: it waits for the old ones to be gone.
fn recreate_deployments_for_pod(
    store: &Store<Deployment>,
    pod: &Pod,
) -> Vec<ObjectRef<Deployment>> {
    let namespace = pod.namespace().unwrap_or_default();
    store
        .state()
        .iter()
        .filter(|d| !replicas::is_rolling_update(d))
        .filter(|d| selects(d, &namespace, pod.labels()))
        .map(|d| ObjectRef::from_obj(d.as_ref()))
        .collect()
}

fn error_policy(d: Arc<Deployment>, error: &DeploymentError, _: Arc<Context>) -> Action {
    warn!(deployment = %d.name_any(), error = %error, "reconcile failed");
    Action::requeue(ERROR_REQUEUE)
}

async fn reconcile(d: Arc<Deployment>, context: Arc<Context>) -> Result<Action, DeploymentError> {
    let namespace = d.namespace().unwrap_or_default();
    let span = info_span!(
        "reconcile",
        object.ref = %format!("{namespace}/{}", d.name_any())
    );
    async move {
        let api: Api<Deployment> = Api::namespaced(context.client.clone(), &namespace);
        // The cached object may be stale; act on the current one.
        let fresh = api
            .get_opt(&d.name_any())
            .await
            .map_err(|source| DeploymentError::Api {
                name: d.name_any(),
                action: "reading the deployment",
                source,
            })?;
        let Some(fresh) = fresh else {
            return Ok(Action::await_change());
        };
        if fresh.uid() != d.uid() {
            return Ok(Action::await_change());
        }
        let mut rollout = Rollout::new(&context, fresh, &namespace);
        rollout.sync_deployment().await?;
        Ok(rollout
            .requeue
            .map(Action::requeue)
            .unwrap_or_else(Action::await_change))
    }
    .instrument(span)
    .await
}

/// A Deployment's ReplicaSets split as the rollout sees them.
#[derive(Clone, Debug, Default)]
pub struct Sets {
    /// The ReplicaSet running the Deployment's current template, if it exists.
    pub new: Option<ReplicaSet>,
    /// All the others, with or without replicas.
    pub old: Vec<ReplicaSet>,
}

impl Sets {
    /// Old then new.
    pub fn all(&self) -> Vec<&ReplicaSet> {
        self.old.iter().chain(self.new.iter()).collect()
    }

    /// The old ReplicaSets that have replicas.
    pub fn active_old(&self) -> Vec<ReplicaSet> {
        self.old
            .iter()
            .filter(|rs| replicas::spec_replicas(rs) > 0)
            .cloned()
            .collect()
    }

    /// Replaces the set with the same uid by `rs` (after it was updated).
    pub fn replace(&mut self, rs: ReplicaSet) {
        let uid = rs.uid();
        if self.new.as_ref().is_some_and(|n| n.uid() == uid) {
            self.new = Some(rs);
            return;
        }
        if let Some(slot) = self.old.iter_mut().find(|o| o.uid() == uid) {
            *slot = rs;
        }
    }
}

/// One reconcile of one Deployment.
pub(super) struct Rollout<'a> {
    ctx: &'a Context,
    /// The Deployment as last read or written.
    d: Deployment,
    deployments: Api<Deployment>,
    sets: Api<ReplicaSet>,
    pods: Api<Pod>,
    /// When to look again without a change (the progress deadline).
    requeue: Option<Duration>,
}

impl<'a> Rollout<'a> {
    fn new(ctx: &'a Context, d: Deployment, namespace: &str) -> Rollout<'a> {
        Rollout {
            ctx,
            d,
            deployments: Api::namespaced(ctx.client.clone(), namespace),
            sets: Api::namespaced(ctx.client.clone(), namespace),
            pods: Api::namespaced(ctx.client.clone(), namespace),
            requeue: None,
        }
    }

    fn api_error(&self, action: &'static str) -> impl Fn(kube::Error) -> DeploymentError + '_ {
        move |source| DeploymentError::Api {
            name: self.d.name_any(),
            action,
            source,
        }
    }

    fn requeue_after(&mut self, after: Option<Duration>) {
        if let Some(after) = after {
            self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
        }
    }

    fn paused(&self) -> bool {
        self.d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false)
    }

    async fn event(&self, type_: EventType, reason: &str, note: String) {
        publish(self.ctx, &self.d, type_, reason, note).await;
    }

    /// `syncDeployment`: one pass over the Deployment.
    async fn sync_deployment(&mut self) -> Result<(), DeploymentError> {
        let selector = self
            .d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        if controller_ref::selector_is_empty(&selector) {
            self.event(
                EventType::Warning,
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.".into(),
            )
            .await;
            let mut status = self.d.status.clone().unwrap_or_default();
            if status.observed_generation < self.d.metadata.generation {
                status.observed_generation = self.d.metadata.generation;
                self.save_status(status).await?;
            }
            return Ok(());
        }
        let rs_list = self.claim_replica_sets().await?;
        if self.d.metadata.deletion_timestamp.is_some() {
            return self.sync_status_only(&rs_list).await;
        }
        self.check_paused_conditions().await?;
        if self.paused() {
            return self.sync(&rs_list).await;
        }
        if rollback::rollback_to(&self.d).is_some() {
            return self.rollback(&rs_list).await;
        }
        if self.is_scaling_event(&rs_list).await? {
            return self.sync(&rs_list).await;
        }
        if replicas::is_rolling_update(&self.d) {
            self.rollout_rolling(&rs_list).await
        } else {
            self.rollout_recreate(&rs_list).await
        }
    }

    /// The ReplicaSets this Deployment controls after adopting matching orphans and releasing
    /// the ones its selector no longer matches (`getReplicaSetsForDeployment`).
    async fn claim_replica_sets(&self) -> Result<Vec<ReplicaSet>, DeploymentError> {
        let all = self
            .sets
            .list(&ListParams::default())
            .await
            .map_err(self.api_error("listing replica sets"))?;
        let uid = self.d.uid().unwrap_or_default();
        let deleting = self.d.metadata.deletion_timestamp.is_some();
        let selector = self
            .d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        let owner = controller_reference(&self.d);
        let mut owned = Vec::new();
        for rs in all.items {
            match controller_ref::decide(&uid, deleting, &selector, &rs.metadata) {
                Claim::Owned => owned.push(rs),
                Claim::Adopt => {
                    match controller_ref::adopt(&self.sets, &rs.metadata, owner.clone()).await {
                        Ok(adopted) => owned.push(adopted),
                        Err(err) => {
                            warn!(replicaset = %rs.name_any(), error = %err, "adoption failed")
                        }
                    }
                }
                Claim::Release => controller_ref::release(&self.sets, &rs.metadata, &uid)
                    .await
                    .map_err(self.api_error("releasing a replica set"))?,
                Claim::Ignore => {}
            }
        }
        Ok(owned)
    }

    /// Writes `status` if it differs from the recorded one.
    async fn save_status(&mut self, status: DeploymentStatus) -> Result<(), DeploymentError> {
        if self.d.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let mut body = serde_json::to_value(&status).unwrap_or_else(|_| json!({}));
        for field in ["conditions", "collisionCount"] {
            if body.get(field).is_none() {
                body[field] = serde_json::Value::Null;
            }
        }
        let updated = self
            .deployments
            .patch_status(
                &self.d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": body})),
            )
            .await
            .map_err(self.api_error("writing the status"))?;
        self.d = updated;
        Ok(())
    }

    /// Sets the Deployment's revision annotation (`SetDeploymentRevision`).
    async fn save_revision(&mut self, revision: &str) -> Result<(), DeploymentError> {
        let current = self
            .d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(revision::REVISION));
        if current.map(String::as_str) == Some(revision) {
            return Ok(());
        }
        let patch = json!({"metadata": {"annotations": {revision::REVISION: revision}}});
        let updated = self
            .deployments
            .patch(
                &self.d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
            .map_err(self.api_error("writing the revision"))?;
        self.d = updated;
        Ok(())
    }

    /// The Deployment's pods grouped by the ReplicaSet (of `rs_list`) controlling them.
    async fn pods_by_replica_set(
        &self,
        rs_list: &[ReplicaSet],
    ) -> Result<Vec<(String, Vec<Pod>)>, DeploymentError> {
        let selector = self
            .d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        let pods = self
            .pods
            .list(&ListParams::default())
            .await
            .map_err(self.api_error("listing pods"))?;
        let mut groups: Vec<(String, Vec<Pod>)> = rs_list
            .iter()
            .map(|rs| (rs.uid().unwrap_or_default(), Vec::new()))
            .collect();
        for pod in pods.items {
            if !controller_ref::selector_matches(&selector, pod.labels()) {
                continue;
            }
            let Some(owner) = controller_ref::controller_of(&pod.metadata) else {
                continue;
            };
            if let Some((_, group)) = groups.iter_mut().find(|(uid, _)| *uid == owner.uid) {
                group.push(pod);
            }
        }
        Ok(groups)
    }
}
