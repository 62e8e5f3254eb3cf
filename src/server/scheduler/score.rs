//! The scores: how good each feasible node is for a pod, as kube-scheduler's default score
//! plugins with their default weights, each normalised to 0..=100 before weighting:
//! NodeResourcesFit/LeastAllocated (1), NodeResourcesBalancedAllocation (1), NodeAffinity
//! preferred terms (2), TaintToleration PreferNoSchedule (3), InterPodAffinity preferred terms
//! (2), PodTopologySpread (2) — its ScheduleAnyway constraints, or, for a pod that has none and
//! a controller, kube-scheduler's system defaults (hostname skew 3, zone skew 5 over the
//! controller's pods), which is what spreads a ReplicaSet's pods across nodes.

use std::collections::HashMap;

use super::filter::{spread_constraints, term_matches, tolerates};
use super::snapshot::{NodeInfo, PodInfo, Snapshot};

pub const MAX_SCORE: i64 = 100;
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The total weighted score of every feasible node, in the same order.
pub fn score(pod: &PodInfo, feasible: &[&NodeInfo], snapshot: &Snapshot) -> Vec<i64> {
    let mut total = vec![0i64; feasible.len()];
    let mut add = |raw: Vec<i64>, weight: i64| {
        for (t, s) in total.iter_mut().zip(raw) {
            *t += s * weight;
        }
    };
    add(
        feasible.iter().map(|n| least_allocated(pod, n)).collect(),
        1,
    );
    add(
        feasible
            .iter()
            .map(|n| balanced_allocation(pod, n))
            .collect(),
        1,
    );
    add(
        normalise(
            feasible
                .iter()
                .map(|n| preferred_node_affinity(pod, n))
                .collect(),
            false,
        ),
        2,
    );
    add(
        normalise(
            feasible
                .iter()
                .map(|n| untolerated_prefer_no_schedule(pod, n))
                .collect(),
            true,
        ),
        3,
    );
    add(inter_pod_affinity(pod, feasible, snapshot), 2);
    add(topology_spread(pod, feasible, snapshot), 2);
    total
}

/// Scales raw scores to 0..=100 by the maximum; `reverse` makes the smallest the best.
fn normalise(raw: Vec<i64>, reverse: bool) -> Vec<i64> {
    let max = raw.iter().copied().max().unwrap_or(0);
    raw.into_iter()
        .map(|s| {
            let scaled = if max > 0 { s * MAX_SCORE / max } else { 0 };
            if reverse {
                MAX_SCORE - scaled
            } else {
                scaled
            }
        })
        .collect()
}

fn fraction(requested: i64, allocatable: i64) -> f64 {
    if allocatable <= 0 {
        1.0
    } else {
        (requested as f64 / allocatable as f64).min(1.0)
    }
}

/// Free CPU and memory after placing the pod, as a share of allocatable, averaged.
pub fn least_allocated(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let one = |requested: i64, allocatable: i64| -> i64 {
        if allocatable <= 0 || requested > allocatable {
            return 0;
        }
        (allocatable - requested) * MAX_SCORE / allocatable
    };
    let cpu = one(
        node.nonzero_cpu + pod.nonzero_cpu,
        node.allocatable.get("cpu").copied().unwrap_or(0),
    );
    let memory = one(
        node.nonzero_memory + pod.nonzero_memory,
        node.allocatable.get("memory").copied().unwrap_or(0),
    );
    (cpu + memory) / 2
}

/// How evenly the pod leaves CPU and memory used: 100 when the shares are equal.
pub fn balanced_allocation(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let cpu = fraction(
        node.nonzero_cpu + pod.nonzero_cpu,
        node.allocatable.get("cpu").copied().unwrap_or(0),
    );
    let memory = fraction(
        node.nonzero_memory + pod.nonzero_memory,
        node.allocatable.get("memory").copied().unwrap_or(0),
    );
    let deviation = (cpu - memory).abs() / 2.0;
    ((1.0 - deviation) * MAX_SCORE as f64) as i64
}

fn preferred_node_affinity(pod: &PodInfo, node: &NodeInfo) -> i64 {
    pod.spec()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .filter(|p| term_matches(&p.preference, node))
        .map(|p| i64::from(p.weight))
        .sum()
}

fn untolerated_prefer_no_schedule(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let tolerations = pod
        .spec()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[]);
    node.taints
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule")
        .filter(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
        .count() as i64
}

/// Preferred pod (anti-)affinity of the pod, and of existing pods towards it: the weight of
/// every term times the matching pods in the node's domain; min-max normalised.
fn inter_pod_affinity(pod: &PodInfo, feasible: &[&NodeInfo], snapshot: &Snapshot) -> Vec<i64> {
    // (topology key, value) → weight.
    let mut domain_weight: HashMap<(String, String), i64> = HashMap::new();
    let own_terms = pod.preferred_affinity.len() + pod.preferred_anti_affinity.len();
    let others_prefer = snapshot
        .nodes
        .values()
        .any(|n| !n.with_preferred.is_empty());
    if own_terms == 0 && !others_prefer {
        return vec![0; feasible.len()];
    }
    for (node, other) in snapshot.pods() {
        if other.key == pod.key {
            continue;
        }
        let mut add = |key: &str, weight: i64| {
            if let Some(value) = node.labels.get(key) {
                *domain_weight
                    .entry((key.to_string(), value.clone()))
                    .or_default() += weight;
            }
        };
        if own_terms > 0 {
            for (weight, term) in &pod.preferred_affinity {
                if term.selects(other) {
                    add(&term.topology_key, i64::from(*weight));
                }
            }
            for (weight, term) in &pod.preferred_anti_affinity {
                if term.selects(other) {
                    add(&term.topology_key, -i64::from(*weight));
                }
            }
        }
        for (weight, term) in &other.preferred_affinity {
            if term.selects(pod) {
                add(&term.topology_key, i64::from(*weight));
            }
        }
        for (weight, term) in &other.preferred_anti_affinity {
            if term.selects(pod) {
                add(&term.topology_key, -i64::from(*weight));
            }
        }
    }
    if domain_weight.is_empty() {
        return vec![0; feasible.len()];
    }
    let raw: Vec<i64> = feasible
        .iter()
        .map(|n| {
            domain_weight
                .iter()
                .filter(|((key, value), _)| n.labels.get(key) == Some(value))
                .map(|(_, w)| *w)
                .sum()
        })
        .collect();
    let max = raw.iter().copied().max().unwrap_or(0);
    let min = raw.iter().copied().min().unwrap_or(0);
    raw.into_iter()
        .map(|s| {
            if max > min {
                (s - min) * MAX_SCORE / (max - min)
            } else {
                0
            }
        })
        .collect()
}

/// Fewer matching pods in the node's domains is better (kube's PodTopologySpread score).
fn topology_spread(pod: &PodInfo, feasible: &[&NodeInfo], snapshot: &Snapshot) -> Vec<i64> {
    let soft = spread_constraints(pod, snapshot, "ScheduleAnyway");
    let has_hard = pod
        .spec()
        .and_then(|s| s.topology_spread_constraints.as_ref())
        .is_some_and(|c| !c.is_empty());
    let raw: Vec<i64> = if !soft.is_empty() {
        feasible
            .iter()
            .map(|n| {
                soft.iter()
                    .map(|c| {
                        n.labels
                            .get(&c.topology_key)
                            .and_then(|v| c.counts.get(v))
                            .copied()
                            .unwrap_or(0)
                    })
                    .sum()
            })
            .collect()
    } else if let (false, Some(owner)) = (has_hard, &pod.owner) {
        // System default constraints over the controller's pods.
        let mut zones: HashMap<&str, i64> = HashMap::new();
        for node in snapshot.live_nodes() {
            if let Some(zone) = node.labels.get(ZONE_LABEL) {
                *zones.entry(zone).or_default() +=
                    i64::from(node.owners.get(owner).copied().unwrap_or(0));
            }
        }
        feasible
            .iter()
            .map(|n| {
                let here = i64::from(n.owners.get(owner).copied().unwrap_or(0));
                let zone = n
                    .labels
                    .get(ZONE_LABEL)
                    .and_then(|z| zones.get(z.as_str()))
                    .copied()
                    .unwrap_or(0);
                // The hostname constraint (skew 3) weighs more than the zone one (skew 5).
                here * 2 + zone
            })
            .collect()
    } else {
        return vec![0; feasible.len()];
    };
    let max = raw.iter().copied().max().unwrap_or(0);
    let min = raw.iter().copied().min().unwrap_or(0);
    raw.into_iter()
        .map(|s| {
            if max == 0 {
                MAX_SCORE
            } else {
                MAX_SCORE * (max + min - s) / max
            }
        })
        .collect()
}
