//! The scheduling decision as a pure function: [`schedule`] takes a pod and a [`Snapshot`] and
//! returns the node to bind to, or a [`FitError`] whose message is kube-scheduler's ("0/3
//! nodes are available: 1 node(s) had untolerated taint {k: v}, 2 Insufficient cpu.
//! preemption: …").
//!
//! # Guarantees
//! - Deterministic: the same pod and snapshot always give the same node. Ties between equally
//!   scored nodes are broken by a hash of the pod and node names, so equal pods spread.
//! - [`preempt`] only ever proposes victims of a strictly lower priority than the pod.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};

use super::filter::{filter, CycleState, Plugin, Rejection};
use super::score::score;
use super::snapshot::{NodeInfo, PodInfo, Snapshot};

const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
const NO_VICTIMS: &str = "No preemption victims found for incoming pod";

/// Why a pod fits on no node.
#[derive(Clone, Debug, PartialEq)]
pub struct FitError {
    pub num_nodes: usize,
    /// Each node's rejection, by node name.
    pub rejections: BTreeMap<String, Rejection>,
    /// kube-scheduler's PostFilter message (`preemption: …`), set by [`preempt`].
    pub preemption: Option<String>,
}

impl FitError {
    /// The plugins that rejected some node (what a retry waits on).
    pub fn plugins(&self) -> Vec<Plugin> {
        let mut plugins: Vec<Plugin> = self.rejections.values().map(|r| r.plugin).collect();
        plugins.sort();
        plugins.dedup();
        plugins
    }
}

/// "<count> <reason>" entries sorted as strings, joined with ", " (kube's histogram).
fn histogram<'a>(reasons: impl Iterator<Item = &'a str>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for reason in reasons {
        *counts.entry(reason).or_default() += 1;
    }
    let mut entries: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    entries.sort();
    entries.join(", ")
}

impl fmt::Display for FitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.num_nodes == 0 {
            return write!(f, "no nodes available to schedule pods");
        }
        write!(f, "0/{} nodes are available", self.num_nodes)?;
        let reasons = histogram(
            self.rejections
                .values()
                .flat_map(|r| r.reasons.iter().map(String::as_str)),
        );
        if !reasons.is_empty() {
            write!(f, ": {reasons}.")?;
        } else {
            write!(f, ":")?;
        }
        if let Some(preemption) = &self.preemption {
            write!(f, " {preemption}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FitError {}

fn tie_break(pod: &str, node: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    pod.hash(&mut hasher);
    node.hash(&mut hasher);
    hasher.finish()
}

/// Picks the node for `pod`: filter every node, score the feasible ones, take the best.
pub fn schedule(pod: &PodInfo, snapshot: &Snapshot) -> Result<String, FitError> {
    let state = CycleState::compute(pod, snapshot);
    let mut feasible: Vec<&NodeInfo> = Vec::new();
    let mut rejections = BTreeMap::new();
    let mut num_nodes = 0;
    for node in snapshot.live_nodes() {
        num_nodes += 1;
        match filter(pod, node, &state) {
            Ok(()) => feasible.push(node),
            Err(rejection) => {
                rejections.insert(node.name.clone(), rejection);
            }
        }
    }
    if feasible.is_empty() {
        return Err(FitError {
            num_nodes,
            rejections,
            preemption: None,
        });
    }
    if feasible.len() == 1 {
        return Ok(feasible[0].name.clone());
    }
    let scores = score(pod, &feasible, snapshot);
    let best = feasible
        .iter()
        .zip(scores)
        .max_by(|(a, sa), (b, sb)| {
            sa.cmp(sb)
                .then_with(|| tie_break(&pod.key, &b.name).cmp(&tie_break(&pod.key, &a.name)))
        })
        .map(|(n, _)| n.name.clone());
    best.ok_or(FitError {
        num_nodes,
        rejections: BTreeMap::new(),
        preemption: None,
    })
}

/// A preemption plan: evict `victims` (keys) from `node` so that the pod fits.
#[derive(Clone, Debug, PartialEq)]
pub struct Preemption {
    pub node: String,
    pub victims: Vec<String>,
}

/// kube-scheduler's DefaultPreemption, simplified: on each node rejected for a reason that
/// evicting pods could fix, remove every lower-priority pod, check the pod fits, then keep
/// back as many victims as possible (highest priority first). The node whose victims have the
/// lowest highest priority, then the fewest victims, wins. Sets `error.preemption` to kube's
/// message when no node works.
pub fn preempt(pod: &PodInfo, snapshot: &Snapshot, error: &mut FitError) -> Option<Preemption> {
    if pod.never_preempts {
        error.preemption = Some("preemption: not eligible due to preemptionPolicy=Never.".into());
        return None;
    }
    let state = CycleState::compute(pod, snapshot);
    let mut outcomes: Vec<&str> = Vec::new();
    let mut best: Option<(i32, usize, Preemption)> = None;
    for (name, rejection) in &error.rejections {
        let Some(node) = snapshot.nodes.get(name) else {
            continue;
        };
        if rejection.unresolvable {
            outcomes.push(NOT_HELPFUL);
            continue;
        }
        let mut reduced = node.clone();
        let mut lower: Vec<_> = node
            .pods
            .values()
            .filter(|p| p.priority < pod.priority)
            .cloned()
            .collect();
        for victim in &lower {
            reduced.remove_pod(&victim.key);
        }
        if lower.is_empty() || filter(pod, &reduced, &state).is_err() {
            outcomes.push(NO_VICTIMS);
            continue;
        }
        // Reprieve: highest priority first.
        lower.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.key.cmp(&b.key)));
        let mut victims = Vec::new();
        for candidate in lower {
            reduced.add_pod(candidate.clone());
            if filter(pod, &reduced, &state).is_err() {
                reduced.remove_pod(&candidate.key);
                victims.push(candidate);
            }
        }
        let top = victims.iter().map(|v| v.priority).max().unwrap_or(i32::MIN);
        let plan = Preemption {
            node: name.clone(),
            victims: victims.iter().map(|v| v.key.clone()).collect(),
        };
        let better = best
            .as_ref()
            .is_none_or(|(t, n, _)| (top, victims.len()) < (*t, *n));
        if better {
            best = Some((top, victims.len(), plan));
        }
    }
    if let Some((_, _, plan)) = best {
        return Some(plan);
    }
    error.preemption = Some(format!(
        "preemption: 0/{} nodes are available: {}.",
        error.num_nodes,
        histogram(outcomes.into_iter())
    ));
    None
}
