//! The StatefulSet controller: pods with stable identities and their own storage, as
//! kube-controller-manager's `pkg/controller/statefulset` does.
//!
//! Pod `<set>-<ordinal>` for each ordinal from `spec.ordinals.start`, labelled
//! `statefulset.kubernetes.io/pod-name` and `apps.kubernetes.io/pod-index`, with hostname the pod
//! name and subdomain `serviceName`. Each `volumeClaimTemplate` gives the pod a claim
//! `<claim>-<set>-<ordinal>`, created before the pod and kept when the pod goes; owner
//! references on the claims carry `persistentVolumeClaimRetentionPolicy` (claims of scaled-down
//! pods are owned by the pod when `whenScaled: Delete`, claims by the set when
//! `whenDeleted: Delete`) and the garbage collector does the deleting.
//!
//! `OrderedReady` creates one pod at a time in ordinal order, each only once all before it are
//! Running and Ready (and available for `minReadySeconds`), and removes surplus pods from the
//! highest ordinal down, one at a time; `Parallel` does both at once. Templates are recorded as
//! ControllerRevisions ([`super::history`]); a pod's `controller-revision-hash` label names its
//! revision. `RollingUpdate` deletes, from the highest ordinal down to `partition`, one pod not
//! at the update revision at a time once the ones above are healthy again (recreated pods below
//! the partition keep the current revision); `OnDelete` only uses the update revision for pods
//! someone else deleted. Status is what `kubectl rollout status sts` reads.
//!
//! Owns the set's pods, its claims' owner references, its ControllerRevisions and its status.
//! Never deletes a claim itself.
//!
//! # Caveats
//! - `maxUnavailable` of a rolling update is ignored (upstream it is alpha, off by default).
//! - Orphaned pods matching the selector are not adopted, nor controlled pods released.
//! - A pod's identity is repaired only in its labels (hostname, subdomain and volumes are
//!   immutable after creation).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::Selector;
use kube::runtime::controller::{Action as ControllerAction, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, warn, Instrument};

use super::history::{self, Ensured, REVISION_LABEL};
use super::{controlled_by, controller_reference, not_found, pod_available, publish, Context};

/// Label with the pod's name.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Label with the pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// How often a settled StatefulSet is looked at anyway.
const RESYNC: Duration = Duration::from_secs(300);
/// How soon a set blocked on a claim (being deleted, or still owned by a deleted pod) retries.
const BLOCKED_RETRY: Duration = Duration::from_secs(1);

/// Why a StatefulSet reconcile failed. All are retryable.
#[derive(Debug, thiserror::Error)]
pub enum StatefulSetError {
    #[error("statefulset {set}: {action}")]
    Api {
        set: String,
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("statefulset {set}: invalid selector: {message}")]
    Selector { set: String, message: String },
}

/// Starts the StatefulSet controller; it runs until `cancel`.
pub fn run(context: Context, cancel: CancellationToken) -> futures::future::BoxFuture<'static, ()> {
    async move {
        let sets: Api<StatefulSet> = Api::all(context.client.clone());
        let pods: Api<Pod> = Api::all(context.client.clone());
        Controller::new(sets, watcher::Config::default())
            .owns(pods, watcher::Config::default())
            .graceful_shutdown_on(cancel.cancelled_owned())
            .run(reconcile, error_policy, Arc::new(context))
            .for_each(|result| async move {
                if let Err(err) = result {
                    debug!(error = %err, "statefulset reconcile");
                }
            })
            .await;
    }
    .boxed()
}

fn error_policy(
    set: Arc<StatefulSet>,
    err: &StatefulSetError,
    _: Arc<Context>,
) -> ControllerAction {
    warn!(statefulset = %set.name_any(), error = %err, "statefulset reconcile failed");
    ControllerAction::requeue(Duration::from_secs(5))
}

/// The ordinal of a pod named `<set>-<ordinal>`, if it is one of `set`'s names.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let digits = pod.strip_prefix(set)?.strip_prefix('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The name of a claim from template `claim` for `ordinal` of `set`.
pub fn claim_name(claim: &str, set: &str, ordinal: i32) -> String {
    format!("{claim}-{set}-{ordinal}")
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn running_and_ready(pod: &Pod) -> bool {
    phase(pod) == "Running" && super::job::pod_ready(pod)
}

fn healthy(pod: &Pod) -> bool {
    running_and_ready(pod) && !terminating(pod)
}

fn pod_revision(pod: &Pod) -> Option<&str> {
    pod.labels().get(REVISION_LABEL).map(String::as_str)
}

/// The claims of `ordinal` as `set`'s templates describe them (labels: the template's plus the
/// set's `matchLabels`), without owner references.
pub fn claims_for(set: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let Some(spec) = set.spec.as_ref() else {
        return Vec::new();
    };
    let set_name = set.name_any();
    let match_labels = spec.selector.match_labels.clone().unwrap_or_default();
    spec.volume_claim_templates
        .iter()
        .flatten()
        .map(|template| {
            let mut claim = template.clone();
            let template_name = template.metadata.name.clone().unwrap_or_default();
            claim.metadata.name = Some(claim_name(&template_name, &set_name, ordinal));
            claim.metadata.namespace = set.namespace();
            let labels = claim.metadata.labels.get_or_insert_with(BTreeMap::new);
            labels.extend(match_labels.clone());
            claim.metadata.owner_references = None;
            claim.status = None;
            claim
        })
        .collect()
}

/// Pod `ordinal` of `set` from `template`, at revision `revision`.
pub fn pod_for(set: &StatefulSet, template: &PodTemplateSpec, ordinal: i32, revision: &str) -> Pod {
    let set_name = set.name_any();
    let name = format!("{set_name}-{ordinal}");
    let mut meta = template.metadata.clone().unwrap_or_default();
    let mut spec = template.spec.clone().unwrap_or_default();
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(REVISION_LABEL.into(), revision.into());
    meta.name = Some(name.clone());
    meta.generate_name = None;
    meta.namespace = set.namespace();
    meta.owner_references = Some(vec![controller_reference(set)]);
    spec.hostname = Some(name);
    let service = set.spec.as_ref().map(|s| s.service_name.clone());
    spec.subdomain = service.flatten().filter(|s| !s.is_empty());
    // The claims' volumes replace template volumes of the same name.
    let claims: Vec<(String, String)> = set
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_ref())
        .into_iter()
        .flatten()
        .map(|t| {
            let template_name = t.metadata.name.clone().unwrap_or_default();
            let claim = claim_name(&template_name, &set_name, ordinal);
            (template_name, claim)
        })
        .collect();
    if !claims.is_empty() {
        let mut volumes: Vec<Volume> = claims
            .iter()
            .map(|(volume, claim)| Volume {
                name: volume.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.clone(),
                    read_only: None,
                }),
                ..Volume::default()
            })
            .collect();
        volumes.extend(
            spec.volumes
                .take()
                .into_iter()
                .flatten()
                .filter(|v| !claims.iter().any(|(name, _)| *name == v.name)),
        );
        spec.volumes = Some(volumes);
    }
    Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    }
}

/// `persistentVolumeClaimRetentionPolicy`: (delete when the set is deleted, delete when scaled).
fn retention(set: &StatefulSet) -> (bool, bool) {
    let policy = set
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref());
    let delete = |v: Option<&String>| v.is_some_and(|v| v == "Delete");
    (
        delete(policy.and_then(|p| p.when_deleted.as_ref())),
        delete(policy.and_then(|p| p.when_scaled.as_ref())),
    )
}

fn refers_to(reference: &OwnerReference, kind: &str, name: &str) -> bool {
    reference.kind == kind && reference.name == name
}

fn pod_reference(pod: &Pod) -> OwnerReference {
    controller_reference(pod)
}

/// The owner references a claim of `pod` should have under the retention policy, or `None`
/// when they are right already or must not be touched (they name an earlier set or pod of the
/// same name, or another controller owns the claim).
pub fn claim_owners(
    set: &StatefulSet,
    pod: &Pod,
    scaled_down: bool,
    claim: &PersistentVolumeClaim,
) -> Option<Vec<OwnerReference>> {
    let refs = claim.metadata.owner_references.clone().unwrap_or_default();
    let set_name = set.name_any();
    let set_uid = set.uid().unwrap_or_default();
    let pod_name = pod.name_any();
    let pod_uid = pod.uid().unwrap_or_default();
    let ours = |r: &OwnerReference| {
        refers_to(r, "StatefulSet", &set_name) || refers_to(r, "Pod", &pod_name)
    };
    let stale = refs.iter().any(|r| {
        (refers_to(r, "StatefulSet", &set_name) && r.uid != set_uid)
            || (refers_to(r, "Pod", &pod_name) && r.uid != pod_uid)
    });
    if stale {
        return None;
    }
    let foreign_controller = refs.iter().any(|r| r.controller == Some(true) && !ours(r));
    let mut wanted: Vec<OwnerReference> = Vec::new();
    if !foreign_controller {
        let (when_deleted, when_scaled) = retention(set);
        if when_scaled && scaled_down {
            wanted.push(pod_reference(pod));
        } else if when_deleted {
            wanted.push(controller_reference(set));
        }
    }
    // Up to date when our references are exactly the wanted owners, each as controller.
    let have: Vec<&OwnerReference> = refs.iter().filter(|r| ours(r)).collect();
    let up_to_date = have.len() == wanted.len()
        && have
            .iter()
            .all(|r| r.controller == Some(true) && wanted.iter().any(|w| w.uid == r.uid));
    if up_to_date {
        return None;
    }
    let mut next: Vec<OwnerReference> = refs.iter().filter(|r| !ours(r)).cloned().collect();
    next.extend(wanted);
    Some(next)
}

/// One step of a sync, in the order they must be made.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    CreateClaim(Box<PersistentVolumeClaim>),
    CreatePod(Box<Pod>),
    SetClaimOwners {
        claim: String,
        owners: Vec<OwnerReference>,
    },
    Relabel {
        pod: String,
        labels: BTreeMap<String, String>,
    },
    DeletePod {
        pod: String,
        reason: &'static str,
    },
}

/// The status a StatefulSet reports (besides generation and collision count).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub replicas: i32,
    pub ready: i32,
    pub available: i32,
    pub current: i32,
    pub updated: i32,
    pub current_revision: String,
    pub update_revision: String,
}

/// What one sync decides.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub counts: Counts,
    /// Why progress waits on a claim (retry soon).
    pub blocked: Option<String>,
    /// When a pod becomes available (after `minReadySeconds`) and should be looked at again.
    pub recheck: Option<Duration>,
}

/// A revision of the set's template.
pub struct Revision<'a> {
    pub name: &'a str,
    pub template: &'a PodTemplateSpec,
}

struct Planner<'a> {
    set: &'a StatefulSet,
    claims: BTreeMap<String, &'a PersistentVolumeClaim>,
    plan: Plan,
    min_ready: i32,
    now: jiff::Timestamp,
}

impl Planner<'_> {
    fn available(&mut self, pod: &Pod) -> bool {
        let (available, wait) = pod_available(pod, self.min_ready, self.now);
        if let Some(wait) = wait {
            self.plan.recheck = Some(self.plan.recheck.map_or(wait, |r| r.min(wait)));
        }
        available
    }

    /// Steps creating the claims `ordinal` lacks; false (and `blocked`) when one is being
    /// deleted, or (with `check_stale`) still belongs to an earlier pod of the same name.
    fn missing_claims(&mut self, ordinal: i32, check_stale: bool) -> bool {
        let pod_name = format!("{}-{ordinal}", self.set.name_any());
        let (when_deleted, when_scaled) = retention(self.set);
        for mut claim in claims_for(self.set, ordinal) {
            let name = claim.name_any();
            match self.claims.get(&name) {
                Some(existing) if existing.metadata.deletion_timestamp.is_some() => {
                    self.plan.blocked = Some(format!("pvc {name} is being deleted"));
                    return false;
                }
                Some(existing) => {
                    let stale = existing
                        .owner_references()
                        .iter()
                        .any(|r| refers_to(r, "Pod", &pod_name));
                    if check_stale && when_scaled && stale {
                        self.plan.blocked =
                            Some(format!("pvc {name} still belongs to an earlier {pod_name}"));
                        return false;
                    }
                }
                None => {
                    if when_deleted {
                        claim.metadata.owner_references =
                            Some(vec![controller_reference(self.set)]);
                    }
                    self.plan.steps.push(Step::CreateClaim(Box::new(claim)));
                }
            }
        }
        true
    }

    fn fix_claim_owners(&mut self, pod: &Pod, ordinal: i32, scaled_down: bool) {
        for claim in claims_for(self.set, ordinal) {
            let name = claim.name_any();
            let Some(existing) = self.claims.get(&name) else {
                continue;
            };
            if let Some(owners) = claim_owners(self.set, pod, scaled_down, existing) {
                self.plan.steps.push(Step::SetClaimOwners {
                    claim: name,
                    owners,
                });
            }
        }
    }
}

/// Decides one sync of `set` (pure): `pods` are the pods it controls, `claims` the claims in its
/// namespace.
pub fn plan(
    set: &StatefulSet,
    pods: &[Pod],
    claims: &[PersistentVolumeClaim],
    current: &Revision,
    update: &Revision,
    now: jiff::Timestamp,
) -> Plan {
    let spec = set.spec.clone().unwrap_or_default();
    let set_name = set.name_any();
    let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0);
    let count = spec.replicas.unwrap_or(1).max(0);
    let monotonic = spec.pod_management_policy.as_deref() != Some("Parallel");
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    let partition = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0);
    let mut planner = Planner {
        set,
        claims: claims.iter().map(|c| (c.name_any(), c)).collect(),
        plan: Plan::default(),
        min_ready: spec.min_ready_seconds.unwrap_or(0),
        now,
    };

    // Status, from what is there now.
    let mut counts = Counts {
        current_revision: current.name.to_string(),
        update_revision: update.name.to_string(),
        ..Counts::default()
    };
    for pod in pods {
        if !phase(pod).is_empty() {
            counts.replicas += 1;
        }
        if running_and_ready(pod) {
            counts.ready += 1;
            if planner.available(pod) {
                counts.available += 1;
            }
        }
        if !phase(pod).is_empty() && !terminating(pod) {
            counts.current += i32::from(pod_revision(pod) == Some(current.name));
            counts.updated += i32::from(pod_revision(pod) == Some(update.name));
        }
    }
    if rolling && counts.updated == counts.replicas && counts.ready == counts.replicas {
        counts.current = counts.updated;
        counts.current_revision = update.name.to_string();
    }
    planner.plan.counts = counts;

    // Replicas in range by ordinal; the rest are condemned, highest first.
    let mut replicas: Vec<Option<&Pod>> = vec![None; usize::try_from(count).unwrap_or(0)];
    let mut condemned: Vec<(i32, &Pod)> = Vec::new();
    for pod in pods {
        let Some(ordinal) = ordinal_of(&set_name, &pod.name_any()) else {
            continue;
        };
        match usize::try_from(ordinal - start) {
            Ok(index) if index < replicas.len() => replicas[index] = Some(pod),
            _ => condemned.push((ordinal, pod)),
        }
    }
    condemned.sort_by_key(|(ordinal, _)| std::cmp::Reverse(*ordinal));
    let first_unhealthy: Option<String> = match replicas.iter().find(|p| !p.is_some_and(healthy)) {
        Some(slot) => slot.map(|p| p.name_any()),
        None => condemned
            .iter()
            .rev()
            .find(|(_, p)| !healthy(p))
            .map(|(_, p)| p.name_any()),
    };

    // Each replica: created in order, replaced when finished, waited for in OrderedReady.
    for (index, slot) in replicas.iter().enumerate() {
        let ordinal = start + i32::try_from(index).unwrap_or(i32::MAX);
        let Some(pod) = slot else {
            if !planner.missing_claims(ordinal, true) {
                return planner.plan;
            }
            let from_current = rolling && ordinal < start + partition;
            let revision = if from_current { current } else { update };
            let pod = pod_for(set, revision.template, ordinal, revision.name);
            planner.plan.steps.push(Step::CreatePod(Box::new(pod)));
            if monotonic {
                return planner.plan;
            }
            continue;
        };
        if matches!(phase(pod), "Failed" | "Succeeded") {
            if !terminating(pod) {
                planner.plan.steps.push(Step::DeletePod {
                    pod: pod.name_any(),
                    reason: "finished",
                });
            }
            if monotonic {
                return planner.plan;
            }
            continue;
        }
        if phase(pod) == "Pending" && !planner.missing_claims(ordinal, false) {
            return planner.plan;
        }
        if monotonic && (terminating(pod) || !running_and_ready(pod) || !planner.available(pod)) {
            return planner.plan;
        }
        if terminating(pod) {
            continue;
        }
        let name = pod.name_any();
        let labels = pod.labels();
        let index_label = ordinal.to_string();
        if labels.get(POD_NAME_LABEL) != Some(&name)
            || labels.get(POD_INDEX_LABEL) != Some(&index_label)
        {
            let labels = BTreeMap::from([
                (POD_NAME_LABEL.to_string(), name),
                (POD_INDEX_LABEL.to_string(), index_label),
            ]);
            planner.plan.steps.push(Step::Relabel {
                pod: pod.name_any(),
                labels,
            });
        }
        planner.fix_claim_owners(pod, ordinal, false);
    }

    // Condemned pods: their claims follow the policy first, then they go from the top.
    for (ordinal, pod) in &condemned {
        if !terminating(pod) {
            planner.fix_claim_owners(pod, *ordinal, true);
        }
    }
    for (_, pod) in &condemned {
        if terminating(pod) {
            if monotonic {
                return planner.plan;
            }
            continue;
        }
        let first = first_unhealthy.as_deref() == Some(pod.name_any().as_str());
        if monotonic && !first && (!running_and_ready(pod) || !planner.available(pod)) {
            return planner.plan;
        }
        planner.plan.steps.push(Step::DeletePod {
            pod: pod.name_any(),
            reason: "scale down",
        });
        if monotonic {
            return planner.plan;
        }
    }

    if !rolling {
        return planner.plan;
    }
    // Rolling update: from the top down to the partition, one pod at a time.
    let floor = usize::try_from(partition.max(0)).unwrap_or(0);
    for index in (floor..replicas.len()).rev() {
        let Some(pod) = replicas[index] else {
            return planner.plan;
        };
        if pod_revision(pod) != Some(update.name) && !terminating(pod) {
            planner.plan.steps.push(Step::DeletePod {
                pod: pod.name_any(),
                reason: "update",
            });
            return planner.plan;
        }
        if !healthy(pod) {
            return planner.plan;
        }
    }
    planner.plan
}

async fn reconcile(
    set: Arc<StatefulSet>,
    ctx: Arc<Context>,
) -> Result<ControllerAction, StatefulSetError> {
    let name = set.name_any();
    let namespace = set.namespace().unwrap_or_default();
    let span = info_span!("reconcile", object.ref = %format!("{namespace}/{name}"));
    reconcile_set(&set, &ctx).instrument(span).await
}

async fn reconcile_set(
    set: &StatefulSet,
    ctx: &Context,
) -> Result<ControllerAction, StatefulSetError> {
    let name = set.name_any();
    let namespace = set.namespace().unwrap_or_default();
    let uid = set.uid().unwrap_or_default();
    let api_err = |action: &'static str| {
        let set = format!("{namespace}/{name}");
        move |source| StatefulSetError::Api {
            set,
            action,
            source,
        }
    };
    let (Some(spec), None) = (set.spec.as_ref(), &set.metadata.deletion_timestamp) else {
        return Ok(ControllerAction::await_change());
    };
    let selector =
        Selector::try_from(spec.selector.clone()).map_err(|err| StatefulSetError::Selector {
            set: format!("{namespace}/{name}"),
            message: err.to_string(),
        })?;
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
    let revisions: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &namespace);
    let status = set.status.clone().unwrap_or_default();

    // The update revision (the template now) and the current one (what status says).
    let mut history = history::list(&revisions, set, &selector)
        .await
        .map_err(api_err("listing revisions"))?;
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let update = match history::ensure(
        &revisions,
        set,
        &mut history,
        history::template_patch(&spec.template),
        &template_labels,
        status.collision_count,
    )
    .await
    .map_err(api_err("recording the revision"))?
    {
        Ensured::Revision(revision) => revision,
        Ensured::Collision { collision_count } => {
            let patch = json!({"status": {"collisionCount": collision_count}});
            sets.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(api_err("updating status"))?;
            return Ok(ControllerAction::requeue(Duration::from_millis(100)));
        }
    };
    let current = status
        .current_revision
        .as_ref()
        .and_then(|c| history.iter().find(|r| r.name_any() == *c))
        .cloned()
        .unwrap_or_else(|| (*update).clone());
    let update_template = spec.template.clone();
    let current_template = history::revision_template(&current).unwrap_or(update_template.clone());
    let (update_name, current_name) = (update.name_any(), current.name_any());

    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default().labels_from(&selector))
        .await
        .map_err(api_err("listing pods"))?
        .items
        .into_iter()
        .filter(|p| controlled_by(p, &uid))
        .collect();
    let claims: Vec<PersistentVolumeClaim> = if spec.volume_claim_templates.is_some() {
        claims_api
            .list(&ListParams::default())
            .await
            .map_err(api_err("listing claims"))?
            .items
    } else {
        Vec::new()
    };
    let plan = plan(
        set,
        &pods,
        &claims,
        &Revision {
            name: &current_name,
            template: &current_template,
        },
        &Revision {
            name: &update_name,
            template: &update_template,
        },
        jiff::Timestamp::now(),
    );
    if let Some(reason) = &plan.blocked {
        debug!(%reason, "waiting on a claim");
    }

    for step in &plan.steps {
        match step {
            Step::CreateClaim(claim) => {
                let claim_name = claim.name_any();
                match claims_api.create(&PostParams::default(), claim).await {
                    Ok(_) => {
                        let note =
                            format!("create Claim {claim_name} in StatefulSet {name} success");
                        publish(ctx, set, EventType::Normal, "SuccessfulCreate", note).await;
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(err) => {
                        let note = format!(
                            "create Claim {claim_name} in StatefulSet {name} failed error: {err}"
                        );
                        publish(ctx, set, EventType::Warning, "FailedCreate", note).await;
                        return Err(api_err("creating a claim")(err));
                    }
                }
            }
            Step::CreatePod(pod) => {
                let pod_name = pod.name_any();
                match pods_api.create(&PostParams::default(), pod).await {
                    Ok(_) => {
                        let note =
                            format!("create Pod {pod_name} in StatefulSet {name} successful");
                        publish(ctx, set, EventType::Normal, "SuccessfulCreate", note).await;
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(err) => {
                        let note = format!(
                            "create Pod {pod_name} in StatefulSet {name} failed error: {err}"
                        );
                        publish(ctx, set, EventType::Warning, "FailedCreate", note).await;
                        return Err(api_err("creating a pod")(err));
                    }
                }
            }
            Step::SetClaimOwners { claim, owners } => {
                let patch = json!({"metadata": {"ownerReferences": owners}});
                match claims_api
                    .patch(claim, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {}
                    Err(err) if not_found(&err) => {}
                    Err(err) => return Err(api_err("updating claim owners")(err)),
                }
            }
            Step::Relabel { pod, labels } => {
                let patch = json!({"metadata": {"labels": labels}});
                match pods_api
                    .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {}
                    Err(err) if not_found(&err) => {}
                    Err(err) => return Err(api_err("relabelling a pod")(err)),
                }
            }
            Step::DeletePod { pod, reason } => {
                match pods_api.delete(pod, &DeleteParams::default()).await {
                    Ok(_) => {
                        debug!(%pod, %reason, "deleted");
                        let note = format!("delete Pod {pod} in StatefulSet {name} successful");
                        publish(ctx, set, EventType::Normal, "SuccessfulDelete", note).await;
                    }
                    Err(err) if not_found(&err) => {}
                    Err(err) => return Err(api_err("deleting a pod")(err)),
                }
            }
        }
    }

    let counts = &plan.counts;
    let wanted = json!({
        "observedGeneration": set.metadata.generation,
        "replicas": counts.replicas,
        "readyReplicas": counts.ready,
        "availableReplicas": counts.available,
        "currentReplicas": counts.current,
        "updatedReplicas": counts.updated,
        "currentRevision": counts.current_revision,
        "updateRevision": counts.update_revision,
        "collisionCount": status.collision_count.unwrap_or(0),
    });
    let old = serde_json::to_value(&status).unwrap_or_default();
    let changed = wanted
        .as_object()
        .into_iter()
        .flatten()
        .any(|(k, v)| old.get(k).unwrap_or(&json!(0)) != v);
    if changed {
        sets.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": wanted })),
        )
        .await
        .map_err(api_err("updating status"))?;
    }

    let mut live: BTreeSet<String> = pods
        .iter()
        .filter_map(|p| pod_revision(p).map(str::to_string))
        .collect();
    live.insert(current_name.clone());
    // Pods name their revision; the history keeps what they and status still name.
    let live_hashes: BTreeSet<String> = history
        .iter()
        .filter(|r| live.contains(&r.name_any()))
        .filter_map(|r| history::hash_of(r).map(str::to_string))
        .collect();
    history::prune(
        &revisions,
        &history,
        &update_name,
        &live_hashes,
        spec.revision_history_limit,
    )
    .await;

    let wait = if plan.blocked.is_some() {
        Some(BLOCKED_RETRY)
    } else {
        plan.recheck.map(|w| w + Duration::from_millis(100))
    };
    Ok(ControllerAction::requeue(wait.unwrap_or(RESYNC)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn set(spec: Value) -> StatefulSet {
        let mut full = json!({
            "selector": {"matchLabels": {"app": "web"}},
            "serviceName": "web",
            "replicas": 3,
            "podManagementPolicy": "OrderedReady",
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}},
        });
        if let (Some(full), Some(extra)) = (full.as_object_mut(), spec.as_object()) {
            full.extend(extra.clone());
        }
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "set-uid", "generation": 1},
            "spec": full,
        }))
        .expect("statefulset")
    }

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": image}]},
        }))
        .expect("template")
    }

    /// Pod `web-<ordinal>` at `revision` in `phase`, ready or not.
    fn pod(ordinal: i32, revision: &str, phase: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("web-{ordinal}"), "uid": format!("pod-{ordinal}"),
                         "labels": {"app": "web", REVISION_LABEL: revision,
                                    POD_NAME_LABEL: format!("web-{ordinal}"),
                                    POD_INDEX_LABEL: ordinal.to_string()}},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": phase, "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" },
                 "lastTransitionTime": "2023-01-01T00:00:00Z"}]},
        }))
        .expect("pod")
    }

    fn ready(ordinal: i32, revision: &str) -> Pod {
        pod(ordinal, revision, "Running", true)
    }

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000).expect("time")
    }

    fn plan_for(set: &StatefulSet, pods: &[Pod], claims: &[PersistentVolumeClaim]) -> Plan {
        let (old, new) = (template("nginx:1"), template("nginx:2"));
        plan(
            set,
            pods,
            claims,
            &Revision {
                name: "web-old",
                template: &old,
            },
            &Revision {
                name: "web-new",
                template: &new,
            },
            now(),
        )
    }

    fn created(plan: &Plan) -> Vec<String> {
        plan.steps
            .iter()
            .filter_map(|s| match s {
                Step::CreatePod(p) => Some(p.name_any()),
                Step::CreateClaim(c) => Some(format!("pvc/{}", c.name_any())),
                _ => None,
            })
            .collect()
    }

    fn deleted(plan: &Plan) -> Vec<String> {
        plan.steps
            .iter()
            .filter_map(|s| match s {
                Step::DeletePod { pod, .. } => Some(pod.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn ordinals_parse_only_our_names() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
        assert_eq!(ordinal_of("web", "webby-1"), None);
        assert_eq!(ordinal_of("web", "web-1-2"), None);
        assert_eq!(ordinal_of("web-1", "web-1-2"), Some(2));
    }

    #[test]
    fn pods_get_identity_and_claims() {
        let s = set(json!({"volumeClaimTemplates": [
            {"metadata": {"name": "www", "labels": {"tier": "disk"}},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}));
        let mut t = template("nginx:1");
        if let Some(spec) = t.spec.as_mut() {
            spec.volumes = Some(vec![
                Volume {
                    name: "www".into(),
                    ..Volume::default()
                },
                Volume {
                    name: "scratch".into(),
                    ..Volume::default()
                },
            ]);
        }
        let p = pod_for(&s, &t, 2, "web-abc");
        assert_eq!(p.name_any(), "web-2");
        let labels = p.labels();
        assert_eq!(labels[POD_NAME_LABEL], "web-2");
        assert_eq!(labels[POD_INDEX_LABEL], "2");
        assert_eq!(labels[REVISION_LABEL], "web-abc");
        assert_eq!(labels["app"], "web");
        let spec = p.spec.expect("spec");
        assert_eq!(spec.hostname.as_deref(), Some("web-2"));
        assert_eq!(spec.subdomain.as_deref(), Some("web"));
        let volumes = spec.volumes.unwrap_or_default();
        assert_eq!(volumes.len(), 2);
        assert_eq!(
            volumes[0]
                .persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str()),
            Some("www-web-2")
        );
        assert_eq!(volumes[1].name, "scratch");
        let claims = claims_for(&s, 2);
        assert_eq!(claims[0].name_any(), "www-web-2");
        assert_eq!(claims[0].labels()["tier"], "disk");
        assert_eq!(claims[0].labels()["app"], "web");
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_with_claims_first() {
        let s = set(json!({"volumeClaimTemplates": [{"metadata": {"name": "www"}, "spec": {}}]}));
        let first = plan_for(&s, &[], &[]);
        assert_eq!(created(&first), ["pvc/www-web-0", "web-0"]);
        // web-0 not ready yet: nothing.
        let waiting = plan_for(
            &s,
            &[pod(0, "web-new", "Running", false)],
            &claims_for(&s, 0),
        );
        assert!(waiting.steps.is_empty(), "{waiting:?}");
        // A pending pod gets the claims it lacks, and nothing else happens.
        let pending = plan_for(&s, &[pod(0, "web-new", "Pending", false)], &[]);
        assert_eq!(created(&pending), ["pvc/www-web-0"]);
        let next = plan_for(&s, &[ready(0, "web-new")], &claims_for(&s, 0));
        assert_eq!(created(&next), ["pvc/www-web-1", "web-1"]);
        // Parallel: all at once.
        let parallel = set(json!({"podManagementPolicy": "Parallel"}));
        assert_eq!(
            created(&plan_for(&parallel, &[], &[])),
            ["web-0", "web-1", "web-2"]
        );
    }

    #[test]
    fn scale_down_goes_from_the_top_one_at_a_time() {
        let s = set(json!({"replicas": 1}));
        let pods = [
            ready(0, "web-new"),
            ready(1, "web-new"),
            ready(2, "web-new"),
        ];
        assert_eq!(deleted(&plan_for(&s, &pods, &[])), ["web-2"]);
        let mut going = ready(2, "web-new");
        going.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
        let blocked = plan_for(&s, &[ready(0, "web-new"), ready(1, "web-new"), going], &[]);
        assert!(deleted(&blocked).is_empty());
        let parallel = set(json!({"replicas": 1, "podManagementPolicy": "Parallel"}));
        assert_eq!(
            deleted(&plan_for(&parallel, &pods, &[])),
            ["web-2", "web-1"]
        );
        // Scaling down waits for a not-ready replica below.
        let unready = [
            pod(0, "web-new", "Running", false),
            ready(1, "web-new"),
            ready(2, "web-new"),
        ];
        assert!(deleted(&plan_for(&s, &unready, &[])).is_empty());
    }

    #[test]
    fn rolling_update_respects_the_partition() {
        let s = set(
            json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}}),
        );
        let old = [
            ready(0, "web-old"),
            ready(1, "web-old"),
            ready(2, "web-old"),
        ];
        assert_eq!(deleted(&plan_for(&s, &old, &[])), ["web-2"]);
        // web-2 recreated at the new revision but not ready: wait.
        let midway = [
            ready(0, "web-old"),
            ready(1, "web-old"),
            pod(2, "web-new", "Running", false),
        ];
        assert!(deleted(&plan_for(&s, &midway, &[])).is_empty());
        let next = [
            ready(0, "web-old"),
            ready(1, "web-old"),
            ready(2, "web-new"),
        ];
        assert_eq!(deleted(&plan_for(&s, &next, &[])), ["web-1"]);
        // Ordinal 0 is below the partition: left alone, and recreated from the current revision.
        let done = [
            ready(0, "web-old"),
            ready(1, "web-new"),
            ready(2, "web-new"),
        ];
        let settled = plan_for(&s, &done, &[]);
        assert!(settled.steps.is_empty(), "{settled:?}");
        assert_eq!(settled.counts.updated, 2);
        assert_eq!(settled.counts.current, 1);
        assert_eq!(settled.counts.current_revision, "web-old");
        let recreate = plan_for(&s, &[ready(1, "web-new"), ready(2, "web-new")], &[]);
        let Some(Step::CreatePod(p)) = recreate.steps.first() else {
            panic!("{recreate:?}");
        };
        assert_eq!(p.labels()[REVISION_LABEL], "web-old");
        assert_eq!(
            p.spec
                .as_ref()
                .and_then(|s| s.containers[0].image.as_deref()),
            Some("nginx:1")
        );
        // OnDelete never deletes for an update.
        let on_delete = set(json!({"updateStrategy": {"type": "OnDelete"}}));
        assert!(plan_for(&on_delete, &old, &[]).steps.is_empty());
    }

    #[test]
    fn a_finished_rollout_makes_the_update_revision_current() {
        let s = set(json!({}));
        let pods = [
            ready(0, "web-new"),
            ready(1, "web-new"),
            ready(2, "web-new"),
        ];
        let counts = plan_for(&s, &pods, &[]).counts;
        assert_eq!(counts.current_revision, "web-new");
        assert_eq!(
            (
                counts.replicas,
                counts.ready,
                counts.current,
                counts.updated
            ),
            (3, 3, 3, 3)
        );
    }

    #[test]
    fn failed_pods_are_replaced() {
        let s = set(json!({}));
        let pods = [
            ready(0, "web-new"),
            pod(1, "web-new", "Failed", false),
            ready(2, "web-new"),
        ];
        assert_eq!(deleted(&plan_for(&s, &pods, &[])), ["web-1"]);
    }

    #[test]
    fn retention_policy_sets_claim_owners() {
        let claim = |refs: Value| -> PersistentVolumeClaim {
            serde_json::from_value(
                json!({"metadata": {"name": "www-web-2", "ownerReferences": refs}}),
            )
            .expect("claim")
        };
        let kinds = |refs: Option<Vec<OwnerReference>>| {
            refs.map(|r| r.iter().map(|r| r.kind.clone()).collect::<Vec<_>>())
        };
        let p = ready(2, "web-new");
        let retain = set(json!({}));
        assert_eq!(
            kinds(claim_owners(&retain, &p, true, &claim(json!([])))),
            None
        );
        let both = set(
            json!({"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Delete"}}),
        );
        assert_eq!(
            kinds(claim_owners(&both, &p, false, &claim(json!([])))),
            Some(vec!["StatefulSet".into()])
        );
        let set_ref = json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "uid": "set-uid", "controller": true}]);
        assert_eq!(
            kinds(claim_owners(&both, &p, false, &claim(set_ref.clone()))),
            None
        );
        assert_eq!(
            kinds(claim_owners(&both, &p, true, &claim(set_ref))),
            Some(vec!["Pod".into()])
        );
        // A ref to an earlier pod of the same name is left for the garbage collector.
        let stale = json!([{"apiVersion": "v1", "kind": "Pod", "name": "web-2", "uid": "gone", "controller": true}]);
        assert_eq!(
            kinds(claim_owners(&both, &p, true, &claim(stale.clone()))),
            None
        );
        // ... and blocks recreating the pod.
        let scaled = set(
            json!({"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Delete"},
                                "volumeClaimTemplates": [{"metadata": {"name": "www"}, "spec": {}}]}),
        );
        let pods = [ready(0, "web-new"), ready(1, "web-new")];
        let mut claims: Vec<PersistentVolumeClaim> = [0, 1]
            .iter()
            .flat_map(|o| claims_for(&scaled, *o))
            .collect();
        claims.push(claim(stale));
        let blocked = plan_for(&scaled, &pods, &claims);
        assert!(blocked.blocked.is_some());
        assert!(created(&blocked).is_empty());
    }
}
