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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{Node, Pod};
    use serde_json::{json, Value};

    use super::*;

    fn node(name: &str, cpu: &str, labels: Value, taints: Value) -> Node {
        let mut all = json!({"kubernetes.io/hostname": name});
        if let (Some(all), Some(extra)) = (all.as_object_mut(), labels.as_object()) {
            all.extend(extra.clone());
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": all},
            "spec": {"taints": taints},
            "status": {
                "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        }))
        .expect("node")
    }

    fn plain(name: &str, cpu: &str) -> Node {
        node(name, cpu, json!({}), json!([]))
    }

    /// A pod in `default` requesting `cpu`, with extra spec fields and labels.
    fn pod(name: &str, cpu: &str, labels: Value, spec: Value) -> Pod {
        let mut full = json!({"containers": [{"name": "c", "image": "i",
            "resources": {"requests": {"cpu": cpu}}}]});
        if let (Some(full), Some(extra)) = (full.as_object_mut(), spec.as_object()) {
            full.extend(extra.clone());
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                         "labels": labels},
            "spec": full,
        }))
        .expect("pod")
    }

    fn on(mut pod: Pod, node: &str) -> Pod {
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = Some(node.into());
        }
        pod
    }

    fn info(pod: Pod) -> Arc<PodInfo> {
        let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        Arc::new(PodInfo::new(Arc::new(pod), priority))
    }

    fn plan(pod: Pod, snapshot: &Snapshot) -> Result<String, String> {
        let pod = info(pod);
        schedule(&pod, snapshot).map_err(|mut e| {
            preempt(&pod, snapshot, &mut e);
            e.to_string()
        })
    }

    #[test]
    fn node_selector_picks_the_labelled_node() {
        let snapshot = Snapshot::build(
            &[
                plain("a", "4"),
                node("b", "4", json!({"disk": "ssd"}), json!([])),
                plain("c", "4"),
            ],
            &[],
        );
        let spec = json!({"nodeSelector": {"disk": "ssd"}});
        assert_eq!(
            plan(pod("p", "1", json!({}), spec), &snapshot).as_deref(),
            Ok("b")
        );
        let spec = json!({"nodeSelector": {"disk": "hdd"}});
        assert_eq!(
            plan(pod("p", "1", json!({}), spec), &snapshot),
            Err(
                "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector. \
                 preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
                    .into()
            )
        );
        // Required node affinity: In on a label, NotIn on the name field.
        let spec = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "DoesNotExist"}],
                                   "matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["a"]}]}]}}}});
        assert_eq!(
            plan(pod("p", "1", json!({}), spec), &snapshot).as_deref(),
            Ok("c")
        );
    }

    #[test]
    fn taints_and_resources_give_kube_schedulers_message() {
        let snapshot = Snapshot::build(
            &[
                node(
                    "a",
                    "4",
                    json!({}),
                    json!([{"key": "k", "value": "v", "effect": "NoSchedule"}]),
                ),
                plain("b", "2"),
                plain("c", "2"),
            ],
            &[
                on(pod("b0", "1", json!({}), json!({})), "b"),
                on(pod("c0", "1", json!({}), json!({})), "c"),
            ],
        );
        assert_eq!(
            plan(pod("big", "2", json!({}), json!({})), &snapshot),
            Err("0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 Insufficient cpu. \
                 preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, \
                 2 No preemption victims found for incoming pod."
                .into())
        );
        let tolerant = json!({"tolerations": [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}]});
        assert_eq!(
            plan(pod("big", "2", json!({}), tolerant), &snapshot).as_deref(),
            Ok("a")
        );
        let exists = json!({"tolerations": [{"operator": "Exists"}]});
        assert_eq!(
            plan(pod("big", "2", json!({}), exists), &snapshot).as_deref(),
            Ok("a")
        );
    }

    #[test]
    fn not_ready_and_unschedulable_nodes_are_skipped() {
        let mut cordoned = plain("a", "4");
        if let Some(spec) = cordoned.spec.as_mut() {
            spec.unschedulable = Some(true);
        }
        let mut down = plain("b", "4");
        if let Some(c) = down.status.as_mut().and_then(|s| s.conditions.as_mut()) {
            c[0].status = "Unknown".into();
        }
        let snapshot = Snapshot::build(&[cordoned, down], &[]);
        assert_eq!(
            plan(pod("p", "1", json!({}), json!({})), &snapshot),
            Err("0/2 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }, \
                 1 node(s) were unschedulable. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
                .into())
        );
    }

    #[test]
    fn resources_count_the_pods_already_there_and_assumed_ones() {
        let mut snapshot = Snapshot::build(
            &[plain("a", "2"), plain("b", "2")],
            &[on(pod("old", "1500m", json!({}), json!({})), "a")],
        );
        // Only b has room for 1 CPU.
        assert_eq!(
            plan(pod("p1", "1", json!({}), json!({})), &snapshot).as_deref(),
            Ok("b")
        );
        // A burst: each decision is assumed before the next, so b is not overcommitted.
        let mut placed = Vec::new();
        for i in 0..3 {
            let p = info(pod(&format!("burst-{i}"), "1", json!({}), json!({})));
            match schedule(&p, &snapshot) {
                Ok(node) => {
                    placed.push(node.clone());
                    snapshot.place(p, &node);
                }
                Err(e) => placed.push(e.to_string()),
            }
        }
        assert_eq!(placed[..2], ["b".to_string(), "b".to_string()]);
        assert!(
            placed[2].starts_with("0/2 nodes are available: 2 Insufficient cpu."),
            "{}",
            placed[2]
        );
        // Too many pods.
        let mut full = plain("full", "4");
        if let Some(a) = full.status.as_mut().and_then(|s| s.allocatable.as_mut()) {
            a.insert(
                "pods".into(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".into()),
            );
        }
        let snapshot = Snapshot::build(&[full], &[on(pod("x", "0", json!({}), json!({})), "full")]);
        assert!(plan(pod("p", "1", json!({}), json!({})), &snapshot)
            .is_err_and(|e| e.starts_with("0/1 nodes are available: 1 Too many pods.")));
    }

    #[test]
    fn host_ports_conflict() {
        let ports = json!({"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "hostPort": 8080}]}]});
        let snapshot = Snapshot::build(
            &[plain("a", "4"), plain("b", "4")],
            &[on(pod("web", "0", json!({}), ports.clone()), "a")],
        );
        assert_eq!(
            plan(pod("web2", "0", json!({}), ports.clone()), &snapshot).as_deref(),
            Ok("b")
        );
        let snapshot = Snapshot::build(
            &[plain("a", "4")],
            &[on(pod("web", "0", json!({}), ports.clone()), "a")],
        );
        assert!(
            plan(pod("web2", "0", json!({}), ports), &snapshot).is_err_and(|e| {
                e.starts_with(
            "0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports."
        )
            })
        );
    }

    fn anti_affinity(key: &str) -> Value {
        json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": key}]}}})
    }

    #[test]
    fn anti_affinity_spreads_and_then_refuses() {
        let nodes = [plain("a", "4"), plain("b", "4"), plain("c", "4")];
        let mut snapshot = Snapshot::build(&nodes, &[]);
        let mut placed = Vec::new();
        for i in 0..3 {
            let p = info(pod(
                &format!("db-{i}"),
                "100m",
                json!({"app": "db"}),
                anti_affinity("kubernetes.io/hostname"),
            ));
            let node = schedule(&p, &snapshot).expect("fits");
            snapshot.place(p, &node);
            placed.push(node);
        }
        placed.sort();
        assert_eq!(placed, ["a", "b", "c"]);
        assert_eq!(
            plan(pod("db-3", "100m", json!({"app": "db"}), anti_affinity("kubernetes.io/hostname")), &snapshot),
            Err("0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. \
                 preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
                .into())
        );
        // The existing pods' anti-affinity also keeps a plain matching pod away.
        assert!(plan(
            pod("plain", "100m", json!({"app": "db"}), json!({})),
            &snapshot
        )
        .is_err_and(|e| e.contains("3 node(s) didn't satisfy existing pods anti-affinity rules")));
        // By zone: two zones, so the third pod has nowhere to go.
        let zoned = [
            node(
                "a",
                "4",
                json!({"topology.kubernetes.io/zone": "z1"}),
                json!([]),
            ),
            node(
                "b",
                "4",
                json!({"topology.kubernetes.io/zone": "z1"}),
                json!([]),
            ),
            node(
                "c",
                "4",
                json!({"topology.kubernetes.io/zone": "z2"}),
                json!([]),
            ),
        ];
        let snapshot = Snapshot::build(
            &zoned,
            &[on(
                pod(
                    "db-0",
                    "0",
                    json!({"app": "db"}),
                    anti_affinity("topology.kubernetes.io/zone"),
                ),
                "a",
            )],
        );
        assert_eq!(
            plan(
                pod(
                    "db-1",
                    "0",
                    json!({"app": "db"}),
                    anti_affinity("topology.kubernetes.io/zone")
                ),
                &snapshot
            )
            .as_deref(),
            Ok("c")
        );
    }

    #[test]
    fn pod_affinity_follows_the_group() {
        let snapshot = Snapshot::build(
            &[plain("a", "4"), plain("b", "4"), plain("c", "4")],
            &[on(
                pod("cache", "0", json!({"app": "cache"}), json!({})),
                "b",
            )],
        );
        let spec = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
        assert_eq!(
            plan(pod("web", "0", json!({}), spec.clone()), &snapshot).as_deref(),
            Ok("b")
        );
        let empty = Snapshot::build(&[plain("a", "4")], &[]);
        assert!(plan(pod("web", "0", json!({}), spec), &empty)
            .is_err_and(|e| e.contains("1 node(s) didn't match pod affinity rules")));
    }

    #[test]
    fn topology_spread_keeps_the_skew() {
        let zoned = [
            node("a", "4", json!({"zone": "z1"}), json!([])),
            node("b", "4", json!({"zone": "z2"}), json!([])),
            plain("nolabel", "4"),
        ];
        let spec = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
            "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "w"}}}]});
        let snapshot = Snapshot::build(
            &zoned,
            &[on(pod("w0", "0", json!({"app": "w"}), json!({})), "a")],
        );
        assert_eq!(
            plan(pod("w1", "0", json!({"app": "w"}), spec.clone()), &snapshot).as_deref(),
            Ok("b")
        );
        let snapshot = Snapshot::build(
            &zoned[..2],
            &[on(pod("w0", "0", json!({"app": "w"}), json!({})), "a")],
        );
        let blocked = Snapshot::build(
            &zoned[..1],
            &[on(pod("w0", "0", json!({"app": "w"}), json!({})), "a")],
        );
        // One domain only: skew is always 0 relative to itself, so it fits.
        assert_eq!(
            plan(pod("w1", "0", json!({"app": "w"}), spec.clone()), &blocked).as_deref(),
            Ok("a")
        );
        let mut cordoned = snapshot.clone();
        if let Some(b) = cordoned.nodes.get_mut("b") {
            b.unschedulable = true;
        }
        assert_eq!(
            plan(pod("w1", "0", json!({"app": "w"}), spec.clone()), &cordoned),
            Err("0/2 nodes are available: 1 node(s) didn't match pod topology spread constraints, \
                 1 node(s) were unschedulable. preemption: 0/2 nodes are available: \
                 1 No preemption victims found for incoming pod, 1 Preemption is not helpful for scheduling."
                .into())
        );
        let all = Snapshot::build(&zoned, &[]);
        let missing = all.nodes.get("nolabel").map(|n| {
            let p = info(pod("w1", "0", json!({"app": "w"}), spec.clone()));
            let state = CycleState::compute(&p, &all);
            filter(&p, n, &state).map_err(|r| r.reasons)
        });
        assert_eq!(
            missing,
            Some(Err(vec![
                "node(s) didn't match pod topology spread constraints (missing required label)"
                    .into()
            ]))
        );
    }

    #[test]
    fn scores_prefer_free_balanced_preferred_and_spread_nodes() {
        // Least allocated: the emptier node wins.
        let snapshot = Snapshot::build(
            &[plain("a", "4"), plain("b", "4")],
            &[on(pod("busy", "3", json!({}), json!({})), "a")],
        );
        assert_eq!(
            plan(pod("p", "500m", json!({}), json!({})), &snapshot).as_deref(),
            Ok("b")
        );
        // Preferred node affinity outweighs a small load difference.
        let snapshot = Snapshot::build(
            &[
                plain("a", "4"),
                node("b", "4", json!({"gpu": "yes"}), json!([])),
            ],
            &[on(pod("busy", "500m", json!({}), json!({})), "b")],
        );
        let spec = json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "preference": {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["yes"]}]}}]}}});
        assert_eq!(
            plan(pod("p", "100m", json!({}), spec), &snapshot).as_deref(),
            Ok("b")
        );
        // PreferNoSchedule taints push pods away.
        let snapshot = Snapshot::build(
            &[
                node(
                    "a",
                    "4",
                    json!({}),
                    json!([{"key": "k", "effect": "PreferNoSchedule"}]),
                ),
                plain("b", "4"),
            ],
            &[on(pod("busy", "200m", json!({}), json!({})), "b")],
        );
        assert_eq!(
            plan(pod("p", "100m", json!({}), json!({})), &snapshot).as_deref(),
            Ok("b")
        );
        // Preferred pod affinity draws a pod to its group, preferred anti-affinity away.
        let snapshot = Snapshot::build(
            &[plain("a", "4"), plain("b", "4")],
            &[on(
                pod("cache", "500m", json!({"app": "cache"}), json!({})),
                "b",
            )],
        );
        let term = json!([{"weight": 100, "podAffinityTerm": {
            "labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "kubernetes.io/hostname"}}]);
        let near = json!({"affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": term}}});
        assert_eq!(
            plan(pod("p", "100m", json!({}), near), &snapshot).as_deref(),
            Ok("b")
        );
        let far = json!({"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": term}}});
        assert_eq!(
            plan(pod("p", "100m", json!({}), far), &snapshot).as_deref(),
            Ok("a")
        );
        // A controller's pods spread over nodes.
        let owned = |name: &str| -> Pod {
            let mut p = pod(name, "10m", json!({"app": "rs"}), json!({}));
            p.metadata.owner_references = Some(vec![serde_json::from_value(json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs-uid", "controller": true
            })).expect("owner")]);
            p
        };
        let mut snapshot =
            Snapshot::build(&[plain("a", "64"), plain("b", "64"), plain("c", "64")], &[]);
        let mut per_node = std::collections::BTreeMap::<String, usize>::new();
        for i in 0..30 {
            let p = info(owned(&format!("rs-{i}")));
            let node = schedule(&p, &snapshot).expect("fits");
            *per_node.entry(node.clone()).or_default() += 1;
            snapshot.place(p, &node);
        }
        assert_eq!(per_node.values().copied().collect::<Vec<_>>(), [10, 10, 10]);
    }

    #[test]
    fn preemption_evicts_the_fewest_lowest_priority_pods() {
        let mut low = on(pod("low", "1500m", json!({}), json!({"priority": 10})), "a");
        low.metadata.uid = Some("u-low".into());
        let snapshot = Snapshot::build(
            &[plain("a", "2"), plain("b", "2")],
            &[
                low,
                on(
                    pod("high", "1500m", json!({}), json!({"priority": 1000})),
                    "b",
                ),
            ],
        );
        let p = info(pod("urgent", "1", json!({}), json!({"priority": 100})));
        let mut error = schedule(&p, &snapshot).expect_err("no room");
        assert_eq!(
            preempt(&p, &snapshot, &mut error),
            Some(Preemption {
                node: "a".into(),
                victims: vec!["default/low".into()]
            })
        );
        let never = info(pod(
            "polite",
            "1",
            json!({}),
            json!({"priority": 100, "preemptionPolicy": "Never"}),
        ));
        let mut error = schedule(&never, &snapshot).expect_err("no room");
        assert_eq!(preempt(&never, &snapshot, &mut error), None);
        assert_eq!(
            error.to_string(),
            "0/2 nodes are available: 2 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never."
        );
    }

    #[test]
    fn no_nodes() {
        let snapshot = Snapshot::default();
        assert_eq!(
            plan(pod("p", "1", json!({}), json!({})), &snapshot),
            Err("no nodes available to schedule pods".into())
        );
    }
}
