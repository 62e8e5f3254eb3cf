//! The filters: whether a pod may run on a node, in kube-scheduler's plugin order
//! (NodeUnschedulable, TaintToleration, NodeAffinity, NodePorts, NodeResourcesFit,
//! PodTopologySpread, InterPodAffinity), stopping at the first that rejects, with
//! kube-scheduler's reason strings.
//!
//! [`CycleState`] holds what the filters compute once per pod over the whole snapshot
//! (kube-scheduler's PreFilter): topology spread counts and the affinity domains.

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::core::v1::{NodeSelectorTerm, Taint, Toleration};

use super::snapshot::{NodeInfo, PodInfo, Selector, Snapshot};

/// A filter plugin, by kube-scheduler's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Plugin {
    NodeUnschedulable,
    TaintToleration,
    NodeAffinity,
    NodePorts,
    NodeResourcesFit,
    PodTopologySpread,
    InterPodAffinity,
}

/// Why a node was rejected.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    pub plugin: Plugin,
    pub reasons: Vec<String>,
    /// Preempting pods on the node would not help (kube's UnschedulableAndUnresolvable).
    pub unresolvable: bool,
}

impl Rejection {
    fn new(plugin: Plugin, reason: impl Into<String>, unresolvable: bool) -> Rejection {
        Rejection {
            plugin,
            reasons: vec![reason.into()],
            unresolvable,
        }
    }
}

pub const ERR_UNSCHEDULABLE: &str = "node(s) were unschedulable";
pub const ERR_NODE_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
pub const ERR_PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
pub const ERR_TOO_MANY_PODS: &str = "Too many pods";
pub const ERR_SPREAD: &str = "node(s) didn't match pod topology spread constraints";
pub const ERR_SPREAD_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";
pub const ERR_AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const ERR_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const ERR_EXISTING_ANTI_AFFINITY: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";

/// One hard topology spread constraint, with its pod counts per domain.
#[derive(Debug)]
pub struct SpreadConstraint {
    pub topology_key: String,
    pub max_skew: i32,
    pub selector: Selector,
    pub self_match: bool,
    pub counts: HashMap<String, i64>,
    pub global_min: i64,
}

/// What the filters compute once per pod.
#[derive(Debug, Default)]
pub struct CycleState {
    spread: Vec<SpreadConstraint>,
    /// Per required affinity term: the topology values holding a matching pod.
    affinity_domains: Vec<HashSet<String>>,
    /// No pod anywhere matches any required affinity term (the first pod of a group may go
    /// anywhere if it matches its own terms).
    affinity_matches_none: bool,
    /// Per required anti-affinity term: the topology values holding a matching pod.
    anti_affinity_domains: Vec<HashSet<String>>,
    /// (topology key, value) pairs where an existing pod's anti-affinity selects this pod.
    existing_anti: HashSet<(String, String)>,
}

impl CycleState {
    pub fn compute(pod: &PodInfo, snapshot: &Snapshot) -> CycleState {
        let mut state = CycleState::default();
        // Existing pods' anti-affinity against this pod.
        for node in snapshot.nodes.values() {
            for key in &node.with_anti_affinity {
                let Some(existing) = node.pods.get(key) else {
                    continue;
                };
                for term in &existing.anti_affinity {
                    if term.selects(pod) {
                        if let Some(value) = node.labels.get(&term.topology_key) {
                            state
                                .existing_anti
                                .insert((term.topology_key.clone(), value.clone()));
                        }
                    }
                }
            }
        }
        if !pod.affinity.is_empty() || !pod.anti_affinity.is_empty() {
            state.affinity_domains = vec![HashSet::new(); pod.affinity.len()];
            state.anti_affinity_domains = vec![HashSet::new(); pod.anti_affinity.len()];
            let mut any = false;
            for (node, other) in snapshot.pods() {
                if other.key == pod.key {
                    continue;
                }
                for (i, term) in pod.affinity.iter().enumerate() {
                    if term.selects(other) {
                        any = true;
                        if let Some(value) = node.labels.get(&term.topology_key) {
                            state.affinity_domains[i].insert(value.clone());
                        }
                    }
                }
                for (i, term) in pod.anti_affinity.iter().enumerate() {
                    if term.selects(other) {
                        if let Some(value) = node.labels.get(&term.topology_key) {
                            state.anti_affinity_domains[i].insert(value.clone());
                        }
                    }
                }
            }
            state.affinity_matches_none = !any;
        }
        state.spread = spread_constraints(pod, snapshot, "DoNotSchedule");
        state
    }
}

/// Topology spread constraints of one kind (`DoNotSchedule` or `ScheduleAnyway`) with counts
/// over the nodes the pod could go to by node affinity and that carry every constraint key.
pub fn spread_constraints(pod: &PodInfo, snapshot: &Snapshot, kind: &str) -> Vec<SpreadConstraint> {
    let constraints: Vec<_> = pod
        .spec()
        .and_then(|s| s.topology_spread_constraints.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.when_unsatisfiable == kind)
        .collect();
    if constraints.is_empty() {
        return Vec::new();
    }
    let keys: Vec<&str> = constraints
        .iter()
        .map(|c| c.topology_key.as_str())
        .collect();
    let eligible: Vec<&NodeInfo> = snapshot
        .live_nodes()
        .filter(|n| keys.iter().all(|k| n.labels.contains_key(*k)))
        .filter(|n| node_affinity(pod, n).is_ok())
        .collect();
    constraints
        .iter()
        .map(|c| {
            let mut selector = Selector::from_label_selector(c.label_selector.as_ref());
            for key in c.match_label_keys.iter().flatten() {
                if let Some(value) = pod.labels.get(key) {
                    selector
                        .expressions
                        .push((key.clone(), "In".into(), vec![value.clone()]));
                }
            }
            let mut counts: HashMap<String, i64> = HashMap::new();
            for node in &eligible {
                let Some(value) = node.labels.get(&c.topology_key) else {
                    continue;
                };
                let matching = node
                    .pods
                    .values()
                    .filter(|p| {
                        p.key != pod.key
                            && !p.terminating
                            && p.namespace == pod.namespace
                            && selector.matches(&p.labels)
                    })
                    .count() as i64;
                *counts.entry(value.clone()).or_default() += matching;
            }
            let mut global_min = counts.values().copied().min().unwrap_or(0);
            if c.min_domains
                .is_some_and(|m| (counts.len() as i64) < i64::from(m))
            {
                global_min = 0;
            }
            SpreadConstraint {
                topology_key: c.topology_key.clone(),
                max_skew: c.max_skew,
                self_match: selector.matches(&pod.labels),
                selector,
                counts,
                global_min,
            }
        })
        .collect()
}

/// Runs every filter on one node; the first rejection wins.
pub fn filter(pod: &PodInfo, node: &NodeInfo, state: &CycleState) -> Result<(), Rejection> {
    node_unschedulable(pod, node)?;
    taint_toleration(pod, node)?;
    node_affinity(pod, node)?;
    node_ports(pod, node)?;
    resources_fit(pod, node)?;
    topology_spread(node, state)?;
    inter_pod_affinity(pod, node, state)
}

fn tolerations(pod: &PodInfo) -> &[Toleration] {
    pod.spec()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[])
}

/// Whether a toleration tolerates a taint (`v1.Toleration.ToleratesTaint`).
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty()) {
        if effect != taint.effect {
            return false;
        }
    }
    let key = toleration.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

fn node_unschedulable(pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
    if !node.unschedulable {
        return Ok(());
    }
    let taint = Taint {
        key: "node.kubernetes.io/unschedulable".into(),
        effect: "NoSchedule".into(),
        ..Taint::default()
    };
    if tolerations(pod).iter().any(|t| tolerates(t, &taint)) {
        return Ok(());
    }
    Err(Rejection::new(
        Plugin::NodeUnschedulable,
        ERR_UNSCHEDULABLE,
        true,
    ))
}

fn taint_toleration(pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
    let untolerated = node.taints.iter().find(|taint| {
        (taint.effect == "NoSchedule" || taint.effect == "NoExecute")
            && !tolerations(pod).iter().any(|t| tolerates(t, taint))
    });
    match untolerated {
        None => Ok(()),
        Some(taint) => Err(Rejection::new(
            Plugin::TaintToleration,
            format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint.key,
                taint.value.as_deref().unwrap_or("")
            ),
            true,
        )),
    }
}

/// Whether one node selector term matches a node (expressions and fields ANDed).
pub fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    expressions.iter().all(|e| {
        let values = e.values.as_deref().unwrap_or(&[]);
        let label = node.labels.get(&e.key);
        match e.operator.as_str() {
            "In" => label.is_some_and(|v| values.contains(v)),
            "NotIn" => label.is_none_or(|v| !values.contains(v)),
            "Exists" => label.is_some(),
            "DoesNotExist" => label.is_none(),
            "Gt" | "Lt" => {
                let (Some(Ok(have)), Some(Ok(want))) = (
                    label.map(|v| v.parse::<i64>()),
                    values.first().map(|v| v.parse::<i64>()),
                ) else {
                    return false;
                };
                if e.operator == "Gt" {
                    have > want
                } else {
                    have < want
                }
            }
            _ => false,
        }
    }) && fields.iter().all(|f| {
        let values = f.values.as_deref().unwrap_or(&[]);
        f.key == "metadata.name"
            && match f.operator.as_str() {
                "In" => values.contains(&node.name),
                "NotIn" => !values.contains(&node.name),
                _ => false,
            }
    })
}

/// nodeSelector and required node affinity.
pub fn node_affinity(pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
    let reject = || Rejection::new(Plugin::NodeAffinity, ERR_NODE_AFFINITY, true);
    let Some(spec) = pod.spec() else {
        return Ok(());
    };
    if let Some(selector) = &spec.node_selector {
        if !selector.iter().all(|(k, v)| node.labels.get(k) == Some(v)) {
            return Err(reject());
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if let Some(required) = required {
        if !required
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node))
        {
            return Err(reject());
        }
    }
    Ok(())
}

fn node_ports(pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
    let conflict = pod
        .host_ports
        .iter()
        .any(|want| node.used_ports.iter().any(|used| used.conflicts(want)));
    if conflict {
        return Err(Rejection::new(Plugin::NodePorts, ERR_PORTS, false));
    }
    Ok(())
}

/// NodeResourcesFit: the pod count, then every requested resource, against allocatable minus
/// what the node's pods already request.
pub fn resources_fit(pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
    let mut reasons = Vec::new();
    let mut unresolvable = true;
    let allowed_pods = node.allocatable.get("pods").copied().unwrap_or(0) / 1000;
    if node.pods.len() as i64 + 1 > allowed_pods {
        reasons.push(ERR_TOO_MANY_PODS.to_string());
        unresolvable = false;
    }
    for (resource, want) in &pod.requests {
        if resource == "pods" || *want <= 0 {
            continue;
        }
        let allocatable = node.allocatable.get(resource).copied().unwrap_or(0);
        let used = node.requested.get(resource).copied().unwrap_or(0);
        if want + used > allocatable {
            reasons.push(format!("Insufficient {resource}"));
            // Freeing the whole node would still not make room: preemption cannot help.
            if *want <= allocatable {
                unresolvable = false;
            }
        }
    }
    if reasons.is_empty() {
        return Ok(());
    }
    Err(Rejection {
        plugin: Plugin::NodeResourcesFit,
        reasons,
        unresolvable,
    })
}

fn topology_spread(node: &NodeInfo, state: &CycleState) -> Result<(), Rejection> {
    for constraint in &state.spread {
        let Some(value) = node.labels.get(&constraint.topology_key) else {
            return Err(Rejection::new(
                Plugin::PodTopologySpread,
                ERR_SPREAD_LABEL,
                true,
            ));
        };
        let count = constraint.counts.get(value).copied().unwrap_or(0);
        let skew = count + i64::from(constraint.self_match) - constraint.global_min;
        if skew > i64::from(constraint.max_skew) {
            return Err(Rejection::new(Plugin::PodTopologySpread, ERR_SPREAD, false));
        }
    }
    Ok(())
}

fn inter_pod_affinity(pod: &PodInfo, node: &NodeInfo, state: &CycleState) -> Result<(), Rejection> {
    for (i, term) in pod.affinity.iter().enumerate() {
        let satisfied = match node.labels.get(&term.topology_key) {
            Some(value) => state.affinity_domains[i].contains(value),
            None => false,
        };
        // The first pod of a group that selects itself may go anywhere with the key.
        let first_of_group = state.affinity_matches_none
            && node.labels.contains_key(&term.topology_key)
            && pod.affinity.iter().all(|t| t.selects(pod));
        if !satisfied && !first_of_group {
            return Err(Rejection::new(Plugin::InterPodAffinity, ERR_AFFINITY, true));
        }
    }
    for (i, term) in pod.anti_affinity.iter().enumerate() {
        if let Some(value) = node.labels.get(&term.topology_key) {
            if state.anti_affinity_domains[i].contains(value) {
                return Err(Rejection::new(
                    Plugin::InterPodAffinity,
                    ERR_ANTI_AFFINITY,
                    false,
                ));
            }
        }
    }
    for (key, value) in &state.existing_anti {
        if node.labels.get(key) == Some(value) {
            return Err(Rejection::new(
                Plugin::InterPodAffinity,
                ERR_EXISTING_ANTI_AFFINITY,
                false,
            ));
        }
    }
    Ok(())
}

/// Counts of pods per reason across rejected nodes.
pub type Histogram = BTreeMap<String, usize>;
