//! The DaemonSet controller: one pod per eligible node, as kube-controller-manager's
//! `pkg/controller/daemon` does.
//!
//! A node is eligible when the template's `nodeName` (if any) names it, it matches the
//! template's `nodeSelector` and required node affinity, and every `NoSchedule` / `NoExecute`
//! taint is tolerated — counting the tolerations the controller adds to every daemon pod
//! (`not-ready` / `unreachable` `NoExecute`, the pressure and `unschedulable` `NoSchedule` ones,
//! `network-unavailable` for host-network pods). A pod already there stays as long as the
//! node's `NoExecute` taints are tolerated. Node changes that matter (labels, taints,
//! conditions, existence) reconcile every DaemonSet, so pods follow nodes as they come and go.
//!
//! Pods are tied to their node by a required node affinity on `metadata.name` (`matchFields`)
//! and placed by the scheduler. The template's revisions are ControllerRevisions
//! ([`super::history`]); pods carry `controller-revision-hash`. `RollingUpdate` replaces old
//! pods within `maxUnavailable` (delete, then create) or `maxSurge` (create the new pod, delete
//! the old once the new is available); `OnDelete` waits for someone to delete them. As upstream,
//! a sync that creates or deletes pods for placement leaves the rolling update to the next one.
//!
//! Owns the DaemonSet's pods, its ControllerRevisions and its status; never touches nodes.
//!
//! # Caveats
//! - Failed daemon pods are deleted and recreated at once, without upstream's back-off.
//! - Orphaned pods matching the selector are not adopted, nor are controlled pods that stop
//!   matching released.
//! - Pods bound to a node that no longer exists are left to pod GC, as upstream.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::Selector;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, warn, Instrument};

use super::history::{self, Ensured, REVISION_LABEL};
use super::{controlled_by, controller_reference, not_found, pod_available, publish, Context};
use crate::server::scheduler::filter::tolerates;

/// Label with the DaemonSet's template generation (only when the DaemonSet carries it).
pub const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";
/// Annotation some API servers keep the template generation in.
const TEMPLATE_GENERATION_ANNOTATION: &str = "deprecated.daemonset.template.generation";
/// How often a settled DaemonSet is looked at anyway.
const RESYNC: Duration = Duration::from_secs(300);

/// Why a DaemonSet reconcile failed. All are retryable.
#[derive(Debug, thiserror::Error)]
pub enum DaemonSetError {
    #[error("daemonset {daemonset}: {action}")]
    Api {
        daemonset: String,
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("daemonset {daemonset}: invalid selector: {message}")]
    Selector { daemonset: String, message: String },
}

/// Starts the DaemonSet controller; it runs until `cancel`.
pub fn run(context: Context, cancel: CancellationToken) -> futures::future::BoxFuture<'static, ()> {
    async move {
        let daemonsets: Api<DaemonSet> = Api::all(context.client.clone());
        let pods: Api<Pod> = Api::all(context.client.clone());
        let nodes: Api<Node> = Api::all(context.client.clone());
        // Node changes that may move daemon pods (not every heartbeat) reconcile all.
        let seen: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let node_changes = watcher(nodes, watcher::Config::default()).filter_map(move |event| {
            let seen = Arc::clone(&seen);
            async move { node_change_matters(&seen, event.ok()?).then_some(()) }
        });
        Controller::new(daemonsets, watcher::Config::default())
            .owns(pods, watcher::Config::default())
            .reconcile_all_on(node_changes)
            .graceful_shutdown_on(cancel.cancelled_owned())
            .run(reconcile, error_policy, Arc::new(context))
            .for_each(|result| async move {
                if let Err(err) = result {
                    debug!(error = %err, "daemonset reconcile");
                }
            })
            .await;
    }
    .boxed()
}

/// What of a node decides where daemon pods go (upstream's `shouldIgnoreNodeUpdate`).
fn node_fingerprint(node: &Node) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    node.metadata.labels.hash(&mut hasher);
    let spec = node.spec.as_ref();
    spec.and_then(|s| s.unschedulable).hash(&mut hasher);
    for taint in spec.and_then(|s| s.taints.as_ref()).into_iter().flatten() {
        (&taint.key, &taint.value, &taint.effect).hash(&mut hasher);
    }
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
    for condition in conditions.into_iter().flatten() {
        (&condition.type_, &condition.status).hash(&mut hasher);
    }
    hasher.finish()
}

fn node_change_matters(seen: &Mutex<HashMap<String, u64>>, event: watcher::Event<Node>) -> bool {
    let Ok(mut seen) = seen.lock() else {
        return true;
    };
    match event {
        watcher::Event::Apply(node) | watcher::Event::InitApply(node) => {
            let print = node_fingerprint(&node);
            seen.insert(node.name_any(), print) != Some(print)
        }
        watcher::Event::Delete(node) => {
            seen.remove(&node.name_any());
            true
        }
        watcher::Event::Init => false,
        watcher::Event::InitDone => true,
    }
}

fn error_policy(ds: Arc<DaemonSet>, err: &DaemonSetError, _: Arc<Context>) -> Action {
    warn!(daemonset = %ds.name_any(), error = %err, "daemonset reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

fn toleration(key: &str, effect: &str) -> Toleration {
    Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Toleration::default()
    }
}

/// The tolerations the DaemonSet controller adds to every daemon pod.
pub fn default_tolerations(host_network: bool) -> Vec<Toleration> {
    let mut list = vec![
        toleration("node.kubernetes.io/not-ready", "NoExecute"),
        toleration("node.kubernetes.io/unreachable", "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        list.push(toleration(
            "node.kubernetes.io/network-unavailable",
            "NoSchedule",
        ));
    }
    list
}

/// Adds each default toleration, replacing one with the same key, operator, value and effect
/// (`AddOrUpdateTolerationInPodSpec`: a user's `tolerationSeconds` there gives way).
fn add_default_tolerations(tolerations: &mut Vec<Toleration>, host_network: bool) {
    for wanted in default_tolerations(host_network) {
        let same = |t: &Toleration| {
            t.key == wanted.key
                && t.operator.as_deref().unwrap_or("Equal")
                    == wanted.operator.as_deref().unwrap_or("Equal")
                && t.value.as_deref().unwrap_or("") == wanted.value.as_deref().unwrap_or("")
                && t.effect == wanted.effect
        };
        match tolerations.iter_mut().find(|t| same(t)) {
            Some(existing) => *existing = wanted,
            None => tolerations.push(wanted),
        }
    }
}

fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&String>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if req.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether a node satisfies a required node selector (terms OR-ed, requirements AND-ed; a
/// term without requirements matches nothing; `matchFields` knows `metadata.name`).
pub fn node_selector_matches(selector: &NodeSelector, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let name = node.metadata.name.clone().unwrap_or_default();
    selector.node_selector_terms.iter().any(|term| {
        let expressions = term.match_expressions.as_deref().unwrap_or_default();
        let fields = term.match_fields.as_deref().unwrap_or_default();
        (!expressions.is_empty() || !fields.is_empty())
            && expressions
                .iter()
                .all(|r| requirement_matches(r, labels.get(&r.key)))
            && fields.iter().all(|r| {
                let value = (r.key == "metadata.name").then_some(&name);
                requirement_matches(r, value)
            })
    })
}

/// Where a DaemonSet's pod belongs on `node` (`NodeShouldRunDaemonPod`):
/// (should run — a pod is wanted there, should continue running — an existing one may stay).
pub fn node_should_run(ds: &DaemonSet, node: &Node) -> (bool, bool) {
    let spec = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    let node_name = node.name_any();
    if spec
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty() && n != node_name)
    {
        return (false, false);
    }
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let selected = spec
        .and_then(|s| s.node_selector.as_ref())
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let affinity = spec
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_none_or(|required| node_selector_matches(required, node));
    if !selected || !affinity {
        return (false, false);
    }
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let mut tolerations = spec.and_then(|s| s.tolerations.clone()).unwrap_or_default();
    add_default_tolerations(&mut tolerations, host_network);
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let tolerated = |effects: &[&str]| {
        taints
            .iter()
            .filter(|t| effects.contains(&t.effect.as_str()))
            .all(|t| tolerations.iter().any(|tol| tolerates(tol, t)))
    };
    (
        tolerated(&["NoSchedule", "NoExecute"]),
        tolerated(&["NoExecute"]),
    )
}

/// `maxUnavailable` / `maxSurge` resolved against the number of nodes wanting a pod
/// (percentages round up, as `ResolveFenceposts`; one unavailable if both come out zero).
pub fn rolling_limits(
    max_unavailable: Option<&IntOrString>,
    max_surge: Option<&IntOrString>,
    desired: i32,
) -> (i32, i32) {
    let resolve = |v: Option<&IntOrString>, default: i32| match v {
        None => default,
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => {
            let percent: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            let scaled = percent * i64::from(desired);
            i32::try_from((scaled + 99) / 100).unwrap_or(0)
        }
    };
    let surge = resolve(max_surge, 0);
    let mut unavailable = resolve(max_unavailable, 1);
    if unavailable == 0 && surge == 0 {
        unavailable = 1;
    }
    (unavailable, surge)
}

/// The node a daemon pod is for: its `spec.nodeName`, else the node its required affinity
/// names (`GetTargetNodeName`).
pub fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(name) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(name.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms.iter().find_map(|term| {
        term.match_fields.iter().flatten().find_map(|r| {
            let values = r.values.as_deref().unwrap_or_default();
            (r.key == "metadata.name" && r.operator == "In" && values.len() == 1)
                .then(|| values[0].clone())
        })
    })
}

/// The required node affinity that binds a daemon pod to `node`; other required terms are
/// replaced (the controller already checked them), preferred ones are kept.
pub fn bind_to_node(affinity: Option<Affinity>, node: &str) -> Affinity {
    let mut affinity = affinity.unwrap_or_default();
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.into()]),
            }]),
            match_expressions: None,
        }],
    });
    affinity
}

/// A daemon pod for `node`: the template with the revision label, the default tolerations and
/// the node affinity that ties it to the node.
pub fn pod_for(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut meta = template.metadata.unwrap_or_default();
    let mut spec = template.spec.unwrap_or_default();
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(REVISION_LABEL.into(), hash.into());
    if let Some(generation) = ds.annotations().get(TEMPLATE_GENERATION_ANNOTATION) {
        labels.insert(TEMPLATE_GENERATION_LABEL.into(), generation.clone());
    }
    let host_network = spec.host_network.unwrap_or(false);
    add_default_tolerations(spec.tolerations.get_or_insert_with(Vec::new), host_network);
    spec.affinity = Some(bind_to_node(spec.affinity.take(), node));
    meta.name = None;
    meta.generate_name = Some(format!("{}-", ds.name_any()));
    meta.namespace = ds.namespace();
    meta.owner_references = Some(vec![controller_reference(ds)]);
    Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    }
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

fn pod_revision(pod: &Pod) -> Option<&str> {
    pod.labels().get(REVISION_LABEL).map(String::as_str)
}

/// Oldest first; among equals, running before pending before the rest
/// (`podByCreationTimestampAndPhase`).
fn sort_oldest_first(pods: &mut [&Pod]) {
    pods.sort_by_key(|p| {
        let rank = match phase(p) {
            "Running" => 0,
            "Pending" => 1,
            _ => 2,
        };
        (
            p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            rank,
            p.name_any(),
        )
    });
}

/// The status a DaemonSet reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub desired: i32,
    pub current: i32,
    pub misscheduled: i32,
    pub ready: i32,
    pub available: i32,
    pub updated: i32,
}

/// What one sync decides to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Nodes that get a new pod.
    pub create: Vec<String>,
    /// Pods to delete, by name.
    pub delete: Vec<String>,
    pub counts: Counts,
    /// When a pod becomes available (after `minReadySeconds`) and should be looked at again.
    pub recheck: Option<Duration>,
}

/// Decides one sync of `ds` (pure): `pods` are the pods it controls, `hash` its current
/// revision's.
pub fn plan(
    ds: &DaemonSet,
    nodes: &[Node],
    pods: &[Pod],
    hash: &str,
    now: jiff::Timestamp,
) -> Plan {
    let spec = ds.spec.as_ref();
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let mut plan = Plan::default();
    let recheck: std::cell::Cell<Option<Duration>> = std::cell::Cell::new(None);
    let available = |pod: &Pod| {
        let (available, wait) = pod_available(pod, min_ready, now);
        if let Some(wait) = wait {
            recheck.set(Some(recheck.get().map_or(wait, |r| r.min(wait))));
        }
        available
    };
    let strategy = spec.and_then(|s| s.update_strategy.as_ref());
    let rolling = strategy
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    let rolling_update = strategy.and_then(|s| s.rolling_update.as_ref());

    // Pods by the node they are for; finished pods already being deleted are done with.
    let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for pod in pods {
        if terminating(pod) && matches!(phase(pod), "Succeeded" | "Failed") {
            continue;
        }
        if let Some(node) = target_node(pod) {
            by_node.entry(node).or_default().push(pod);
        }
    }
    let mut nodes: Vec<&Node> = nodes.iter().collect();
    nodes.sort_by_key(|n| n.name_any());
    let eligibility: BTreeMap<String, (bool, bool)> = nodes
        .iter()
        .map(|n| (n.name_any(), node_should_run(ds, n)))
        .collect();
    let desired = eligibility.values().filter(|(run, _)| *run).count();
    let desired = i32::try_from(desired).unwrap_or(i32::MAX);
    let (max_unavailable, max_surge) = if rolling {
        rolling_limits(
            rolling_update.and_then(|r| r.max_unavailable.as_ref()),
            rolling_update.and_then(|r| r.max_surge.as_ref()),
            desired,
        )
    } else {
        (1, 0)
    };
    // Whether surging is allowed at all (`AllowsSurge`: any surge against one node).
    let surge =
        rolling && rolling_limits(None, rolling_update.and_then(|r| r.max_surge.as_ref()), 1).1 > 0;

    // Status, from what is there now.
    let mut counts = Counts {
        desired,
        ..Counts::default()
    };
    for (name, (should_run, _)) in &eligibility {
        let here = by_node.get(name).map(Vec::as_slice).unwrap_or_default();
        if !should_run {
            if !here.is_empty() {
                counts.misscheduled += 1;
            }
            continue;
        }
        let mut here: Vec<&Pod> = here.to_vec();
        if here.is_empty() {
            continue;
        }
        counts.current += 1;
        sort_oldest_first(&mut here);
        let pod = here[0];
        if super::job::pod_ready(pod) {
            counts.ready += 1;
            if available(pod) {
                counts.available += 1;
            }
        }
        if pod_revision(pod) == Some(hash) {
            counts.updated += 1;
        }
    }
    plan.counts = counts;

    // Placement: a pod where one should run, none where none may.
    for node in &nodes {
        let name = node.name_any();
        let (should_run, should_continue) = eligibility[&name];
        let here = by_node.get(&name).cloned().unwrap_or_default();
        if should_run && here.is_empty() {
            plan.create.push(name);
        } else if should_continue {
            let mut running: Vec<&Pod> = Vec::new();
            for pod in here.into_iter().filter(|p| !terminating(p)) {
                if matches!(phase(pod), "Failed" | "Succeeded") {
                    plan.delete.push(pod.name_any());
                } else {
                    running.push(pod);
                }
            }
            sort_oldest_first(&mut running);
            if !surge {
                // Only the oldest stays.
                plan.delete
                    .extend(running.iter().skip(1).map(|p| p.name_any()));
                continue;
            }
            // Surging: at most the oldest new and the oldest old pod, the old one only while
            // it is ready and the new one not yet available.
            let (mut oldest_new, mut oldest_old) = (None, None);
            for pod in running {
                let slot = if pod_revision(pod) == Some(hash) {
                    &mut oldest_new
                } else {
                    &mut oldest_old
                };
                if slot.is_none() {
                    *slot = Some(pod);
                } else {
                    plan.delete.push(pod.name_any());
                }
            }
            if let (Some(new), Some(old)) = (oldest_new, oldest_old) {
                if !super::job::pod_ready(old) || available(new) {
                    plan.delete.push(old.name_any());
                }
            }
        } else {
            plan.delete.extend(
                here.iter()
                    .filter(|p| !terminating(p))
                    .map(|p| p.name_any()),
            );
        }
    }
    // Unscheduled pods for nodes that are gone.
    for (node, here) in &by_node {
        if eligibility.contains_key(node) {
            continue;
        }
        plan.delete.extend(
            here.iter()
                .filter(|p| {
                    !terminating(p)
                        && p.spec
                            .as_ref()
                            .and_then(|s| s.node_name.as_deref())
                            .is_none_or(str::is_empty)
                })
                .map(|p| p.name_any()),
        );
    }
    if !plan.create.is_empty() || !plan.delete.is_empty() || !rolling {
        plan.recheck = recheck.get();
        return plan;
    }

    // Rolling update, once placement is settled.
    let mut candidates: Vec<String> = Vec::new();
    let mut replacements: Vec<String> = Vec::new();
    let mut in_flight = 0;
    for (name, here) in &by_node {
        let Some((should_run, _)) = eligibility.get(name) else {
            continue;
        };
        let live: Vec<&Pod> = here.iter().copied().filter(|p| !terminating(p)).collect();
        let (new, old): (Vec<&Pod>, Vec<&Pod>) = live
            .into_iter()
            .partition(|p| pod_revision(p) == Some(hash));
        if new.len() > 1 || old.len() > 1 {
            // Placement will clean this node up; it counts as unavailable / surging.
            in_flight += 1;
            continue;
        }
        match (new.first(), old.first()) {
            (None, None) => in_flight += usize::from(!surge),
            (Some(_), Some(_)) if !surge => in_flight += 1,
            (Some(new), None) => {
                if !surge && !available(new) {
                    in_flight += 1;
                }
            }
            (None, Some(old)) => {
                let old_available = available(old);
                if surge {
                    if !old_available {
                        replacements.push(name.clone());
                    } else if *should_run {
                        candidates.push(name.clone());
                    }
                } else if !old_available {
                    replacements.push(old.name_any());
                } else {
                    candidates.push(old.name_any());
                }
            }
            (Some(new), Some(old)) => {
                // Surged here: the old pod goes once the new one is available.
                if available(new) {
                    plan.delete.push(old.name_any());
                } else {
                    in_flight += 1;
                }
            }
        }
    }
    let in_flight = i32::try_from(in_flight).unwrap_or(i32::MAX);
    let budget = if surge { max_surge } else { max_unavailable };
    let room = usize::try_from((budget - in_flight).max(0)).unwrap_or(0);
    candidates.truncate(room);
    replacements.extend(candidates);
    if surge {
        plan.create.extend(replacements);
    } else {
        plan.delete.extend(replacements);
    }
    plan.recheck = recheck.get();
    plan
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action, DaemonSetError> {
    let name = ds.name_any();
    let namespace = ds.namespace().unwrap_or_default();
    let span = info_span!("reconcile", object.ref = %format!("{namespace}/{name}"));
    reconcile_daemonset(&ds, &ctx).instrument(span).await
}

async fn reconcile_daemonset(ds: &DaemonSet, ctx: &Context) -> Result<Action, DaemonSetError> {
    let name = ds.name_any();
    let namespace = ds.namespace().unwrap_or_default();
    let uid = ds.uid().unwrap_or_default();
    let api_err = |action: &'static str| {
        let daemonset = format!("{namespace}/{name}");
        move |source| DaemonSetError::Api {
            daemonset,
            action,
            source,
        }
    };
    let (Some(spec), None) = (ds.spec.as_ref(), &ds.metadata.deletion_timestamp) else {
        return Ok(Action::await_change());
    };
    let selector =
        Selector::try_from(spec.selector.clone()).map_err(|err| DaemonSetError::Selector {
            daemonset: format!("{namespace}/{name}"),
            message: err.to_string(),
        })?;
    let daemonsets: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let revisions: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &namespace);
    let collision_count = ds.status.as_ref().and_then(|s| s.collision_count);

    // The current revision.
    let mut history = history::list(&revisions, ds, &selector)
        .await
        .map_err(api_err("listing revisions"))?;
    let data = history::template_patch(&spec.template);
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let current = match history::ensure(
        &revisions,
        ds,
        &mut history,
        data,
        &template_labels,
        collision_count,
    )
    .await
    .map_err(api_err("recording the revision"))?
    {
        Ensured::Revision(revision) => revision,
        Ensured::Collision { collision_count } => {
            let patch = json!({"status": {"collisionCount": collision_count}});
            daemonsets
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(api_err("updating status"))?;
            return Ok(Action::requeue(Duration::from_millis(100)));
        }
    };
    let hash = history::hash_of(&current).unwrap_or_default().to_string();

    let nodes: Vec<Node> = Api::<Node>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(api_err("listing nodes"))?
        .items;
    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default().labels_from(&selector))
        .await
        .map_err(api_err("listing pods"))?
        .items
        .into_iter()
        .filter(|p| controlled_by(p, &uid))
        .collect();
    let plan = plan(ds, &nodes, &pods, &hash, jiff::Timestamp::now());

    for pod_name in &plan.delete {
        match pods_api.delete(pod_name, &DeleteParams::default()).await {
            Ok(_) => {
                let note = format!("Deleted pod: {pod_name}");
                publish(ctx, ds, EventType::Normal, "SuccessfulDelete", note).await;
            }
            Err(err) if not_found(&err) => {}
            Err(err) => return Err(api_err("deleting a pod")(err)),
        }
    }
    for node in &plan.create {
        let pod = pod_for(ds, node, &hash);
        match pods_api.create(&PostParams::default(), &pod).await {
            Ok(created) => {
                let note = format!("Created pod: {}", created.name_any());
                publish(ctx, ds, EventType::Normal, "SuccessfulCreate", note).await;
            }
            Err(err) => {
                let note = format!("Error creating: {err}");
                publish(ctx, ds, EventType::Warning, "FailedCreate", note).await;
                return Err(api_err("creating a pod")(err));
            }
        }
    }

    let counts = &plan.counts;
    let status = json!({"status": {
        "desiredNumberScheduled": counts.desired,
        "currentNumberScheduled": counts.current,
        "numberMisscheduled": counts.misscheduled,
        "numberReady": counts.ready,
        "numberAvailable": counts.available,
        "numberUnavailable": (counts.desired - counts.available).max(0),
        "updatedNumberScheduled": counts.updated,
        "observedGeneration": ds.metadata.generation,
    }});
    let old = serde_json::to_value(&ds.status).unwrap_or_default();
    let changed = status["status"]
        .as_object()
        .into_iter()
        .flatten()
        .any(|(k, v)| old.get(k).unwrap_or(&json!(0)) != v);
    if changed {
        daemonsets
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(api_err("updating status"))?;
    }
    let live_hashes: BTreeSet<String> = pods
        .iter()
        .filter_map(|p| pod_revision(p).map(str::to_string))
        .collect();
    history::prune(
        &revisions,
        &history,
        &current.name_any(),
        &live_hashes,
        spec.revision_history_limit,
    )
    .await;
    // Pod and node changes bring the DaemonSet back; only availability needs a clock.
    Ok(Action::requeue(
        plan.recheck
            .map_or(RESYNC, |wait| wait + Duration::from_millis(100)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn node_named(name: &str, labels: Value, taints: Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints},
        }))
        .expect("node")
    }

    fn node(labels: Value, taints: Value) -> Node {
        node_named("n1", labels, taints)
    }

    fn ds_with(template_spec: Value, strategy: Value) -> DaemonSet {
        serde_json::from_value(json!({
            "metadata": {"name": "d", "namespace": "default", "uid": "ds-uid"},
            "spec": {"selector": {"matchLabels": {"a": "b"}},
                     "updateStrategy": strategy,
                     "template": {"metadata": {"labels": {"a": "b"}}, "spec": template_spec}},
        }))
        .expect("daemonset")
    }

    fn ds(template_spec: Value) -> DaemonSet {
        ds_with(template_spec, json!({"type": "RollingUpdate"}))
    }

    /// A pod of the DaemonSet on `node` at revision `hash`, created at second `age`.
    fn pod(name: &str, node: &str, hash: &str, age: i64, ready: bool) -> Pod {
        let created = jiff::Timestamp::from_second(1_700_000_000 + age).expect("time");
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"a": "b", REVISION_LABEL: hash},
                         "creationTimestamp": created.to_string()},
            "spec": {"nodeName": node, "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" },
                 "lastTransitionTime": created.to_string()}]},
        }))
        .expect("pod")
    }

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_001_000).expect("time")
    }

    fn two_nodes() -> Vec<Node> {
        vec![
            node_named("a", json!({}), json!([])),
            node_named("b", json!({}), json!([])),
        ]
    }

    #[test]
    fn taints_and_tolerations() {
        let plain = ds(json!({"containers": [{"name": "c"}]}));
        let tolerant = ds(json!({"containers": [{"name": "c"}],
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}));
        let gpu = node(
            json!({}),
            json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
        );
        assert_eq!(node_should_run(&plain, &gpu), (false, true));
        assert_eq!(node_should_run(&tolerant, &gpu), (true, true));
        let evict = node(json!({}), json!([{"key": "x", "effect": "NoExecute"}]));
        assert_eq!(node_should_run(&plain, &evict), (false, false));
        // The defaults: not-ready and unschedulable nodes still run daemon pods.
        let not_ready = node(
            json!({}),
            json!([{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"},
                   {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
        );
        assert_eq!(node_should_run(&plain, &not_ready), (true, true));
        let soft = node(
            json!({}),
            json!([{"key": "y", "effect": "PreferNoSchedule"}]),
        );
        assert_eq!(node_should_run(&plain, &soft), (true, true));
        // network-unavailable only for host-network pods.
        let no_network = node(
            json!({}),
            json!([{"key": "node.kubernetes.io/network-unavailable", "effect": "NoSchedule"}]),
        );
        assert_eq!(node_should_run(&plain, &no_network), (false, true));
        let host = ds(json!({"containers": [{"name": "c"}], "hostNetwork": true}));
        assert_eq!(node_should_run(&host, &no_network), (true, true));
    }

    #[test]
    fn selectors_affinity_and_node_name() {
        let picky = ds(
            json!({"containers": [{"name": "c"}], "nodeSelector": {"disk": "ssd"},
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}]}}}}),
        );
        let run = |labels| node_should_run(&picky, &node(labels, json!([])));
        assert_eq!(run(json!({"disk": "ssd", "zone": "a"})), (true, true));
        assert_eq!(run(json!({"disk": "ssd", "zone": "c"})), (false, false));
        assert_eq!(run(json!({"zone": "a"})), (false, false));
        let pinned = ds(json!({"containers": [{"name": "c"}], "nodeName": "n2"}));
        assert_eq!(
            node_should_run(&pinned, &node(json!({}), json!([]))),
            (false, false)
        );
    }

    #[test]
    fn daemon_pods_are_bound_by_affinity_and_tolerate_the_defaults() {
        let daemon = ds(json!({"containers": [{"name": "c"}],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                             "effect": "NoExecute", "tolerationSeconds": 300}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}}}));
        let pod = pod_for(&daemon, "n7", "h1");
        assert_eq!(target_node(&pod).as_deref(), Some("n7"));
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.node_name, None);
        let required = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .expect("required affinity");
        assert_eq!(required.node_selector_terms.len(), 1);
        assert!(node_selector_matches(
            required,
            &node_named("n7", json!({}), json!([]))
        ));
        assert!(!node_selector_matches(
            required,
            &node_named("n8", json!({"zone": "a"}), json!([]))
        ));
        let tolerations = spec.tolerations.as_deref().unwrap_or_default();
        assert_eq!(tolerations.len(), 6);
        let not_ready = tolerations
            .iter()
            .find(|t| t.key.as_deref() == Some("node.kubernetes.io/not-ready"))
            .expect("not-ready toleration");
        assert_eq!(not_ready.toleration_seconds, None);
        assert_eq!(
            pod.labels().get(REVISION_LABEL).map(String::as_str),
            Some("h1")
        );
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("d-"));
    }

    #[test]
    fn rolling_limits_resolve_percentages() {
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(rolling_limits(None, None, 10), (1, 0));
        assert_eq!(rolling_limits(Some(&pct("25%")), None, 10), (3, 0));
        assert_eq!(
            rolling_limits(Some(&IntOrString::Int(0)), Some(&pct("25%")), 10),
            (0, 3)
        );
        assert_eq!(rolling_limits(Some(&pct("10%")), None, 3), (1, 0));
        assert_eq!(rolling_limits(Some(&pct("0%")), None, 3), (1, 0));
    }

    #[test]
    fn placement_follows_nodes() {
        let daemon = ds(json!({"containers": [{"name": "c"}]}));
        let nodes = vec![
            node_named("a", json!({}), json!([])),
            node_named("b", json!({}), json!([])),
            node_named(
                "tainted",
                json!({}),
                json!([{"key": "k", "effect": "NoExecute"}]),
            ),
        ];
        let pods = vec![
            pod("on-a", "a", "h1", 0, true),
            pod("on-a-too", "a", "h1", 5, true),
            pod("on-tainted", "tainted", "h1", 0, true),
        ];
        let plan = plan(&daemon, &nodes, &pods, "h1", now());
        assert_eq!(plan.create, ["b"]);
        assert_eq!(plan.delete, ["on-a-too", "on-tainted"]);
        assert_eq!(
            plan.counts,
            Counts {
                desired: 2,
                current: 1,
                misscheduled: 1,
                ready: 1,
                available: 1,
                updated: 1
            }
        );
    }

    #[test]
    fn a_terminating_pod_blocks_its_replacement() {
        let daemon = ds(json!({"containers": [{"name": "c"}]}));
        let mut going = pod("going", "a", "old", 0, true);
        going.metadata.deletion_timestamp = going.metadata.creation_timestamp.clone();
        let pods = vec![going, pod("on-b", "b", "new", 0, true)];
        let plan = plan(&daemon, &two_nodes(), &pods, "new", now());
        assert!(plan.create.is_empty() && plan.delete.is_empty(), "{plan:?}");
    }

    #[test]
    fn rolling_update_with_max_unavailable() {
        let daemon = ds_with(
            json!({"containers": [{"name": "c"}]}),
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
        );
        let old = vec![
            pod("pa", "a", "old", 0, true),
            pod("pb", "b", "old", 0, true),
        ];
        let first = plan(&daemon, &two_nodes(), &old, "new", now());
        assert!(first.create.is_empty());
        assert_eq!(first.delete, ["pa"]);
        assert_eq!(first.counts.updated, 0);
        // The new pod on a is not ready yet: nothing more goes.
        let midway = vec![
            pod("pa2", "a", "new", 0, false),
            pod("pb", "b", "old", 0, true),
        ];
        let second = plan(&daemon, &two_nodes(), &midway, "new", now());
        assert!(second.delete.is_empty() && second.create.is_empty());
        // A not-ready old pod is replaced regardless of the budget.
        let broken = vec![
            pod("pa2", "a", "new", 0, false),
            pod("pb", "b", "old", 0, false),
        ];
        assert_eq!(
            plan(&daemon, &two_nodes(), &broken, "new", now()).delete,
            ["pb"]
        );
        // OnDelete leaves old pods alone.
        let on_delete = ds_with(
            json!({"containers": [{"name": "c"}]}),
            json!({"type": "OnDelete"}),
        );
        let untouched = plan(&on_delete, &two_nodes(), &old, "new", now());
        assert!(untouched.delete.is_empty() && untouched.create.is_empty());
    }

    #[test]
    fn rolling_update_with_max_surge() {
        let daemon = ds_with(
            json!({"containers": [{"name": "c"}]}),
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}),
        );
        let old = vec![
            pod("pa", "a", "old", 0, true),
            pod("pb", "b", "old", 0, true),
        ];
        let first = plan(&daemon, &two_nodes(), &old, "new", now());
        assert_eq!(first.create, ["a"]);
        assert!(first.delete.is_empty());
        // Surged on a, new pod not ready: wait; ready: the old one goes.
        let surging = vec![
            pod("pa", "a", "old", 0, true),
            pod("pa2", "a", "new", 10, false),
            pod("pb", "b", "old", 0, true),
        ];
        let waiting = plan(&daemon, &two_nodes(), &surging, "new", now());
        assert!(
            waiting.create.is_empty() && waiting.delete.is_empty(),
            "{waiting:?}"
        );
        let surged = vec![
            pod("pa", "a", "old", 0, true),
            pod("pa2", "a", "new", 10, true),
            pod("pb", "b", "old", 0, true),
        ];
        assert_eq!(
            plan(&daemon, &two_nodes(), &surged, "new", now()).delete,
            ["pa"]
        );
    }

    #[test]
    fn min_ready_seconds_delays_availability() {
        let mut daemon = ds(json!({"containers": [{"name": "c"}]}));
        if let Some(spec) = daemon.spec.as_mut() {
            spec.min_ready_seconds = Some(3600);
        }
        let pods = vec![pod("pa", "a", "h", 0, true), pod("pb", "b", "h", 0, true)];
        let plan = plan(&daemon, &two_nodes(), &pods, "h", now());
        assert_eq!(plan.counts.ready, 2);
        assert_eq!(plan.counts.available, 0);
        assert_eq!(plan.recheck, Some(Duration::from_secs(2600)));
    }
}
