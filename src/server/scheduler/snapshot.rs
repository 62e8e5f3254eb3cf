//! The scheduler's view of the cluster as plain values: every node with the pods on it and what
//! they request ([`NodeInfo`]), kept up to date incrementally ([`Snapshot`]), and each pod's
//! scheduling-relevant facts computed once ([`PodInfo`]).
//!
//! # Guarantees
//! - A node's requested resources, host ports and controller counts always equal the sum over
//!   the pods recorded on it; adding and removing a pod are exact inverses.
//! - Terminal pods (Succeeded, Failed) hold no resources and are not recorded.
//!
//! # Caveats
//! - A pod affinity term's `namespaceSelector` is honoured only when empty (all namespaces);
//!   a non-empty one is treated as the term's `namespaces` list alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::quantity::parse_milli;

/// Resource amounts in thousandths, by resource name (`cpu`, `memory`, `pods`, extended…).
pub type Resources = BTreeMap<String, i64>;

/// Requests counted for scoring when a pod asks for nothing (kube-scheduler's non-zero defaults:
/// 100m CPU, 200Mi memory).
pub const DEFAULT_MILLI_CPU: i64 = 100;
pub const DEFAULT_MEMORY_MILLI: i64 = 200 * 1024 * 1024 * 1000;

/// A compiled label selector.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selector {
    pub match_labels: BTreeMap<String, String>,
    /// (key, operator, values) with operator In, NotIn, Exists or DoesNotExist.
    pub expressions: Vec<(String, String, Vec<String>)>,
    /// An absent selector matches nothing.
    pub nothing: bool,
}

impl Selector {
    pub fn from_label_selector(selector: Option<&LabelSelector>) -> Selector {
        let Some(selector) = selector else {
            return Selector {
                nothing: true,
                ..Selector::default()
            };
        };
        Selector {
            match_labels: selector.match_labels.clone().unwrap_or_default(),
            expressions: selector
                .match_expressions
                .iter()
                .flatten()
                .map(|e| {
                    (
                        e.key.clone(),
                        e.operator.clone(),
                        e.values.clone().unwrap_or_default(),
                    )
                })
                .collect(),
            nothing: false,
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        if self.nothing {
            return false;
        }
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self
                .expressions
                .iter()
                .all(|(key, op, values)| match op.as_str() {
                    "In" => labels.get(key).is_some_and(|v| values.contains(v)),
                    "NotIn" => labels.get(key).is_none_or(|v| !values.contains(v)),
                    "Exists" => labels.contains_key(key),
                    "DoesNotExist" => !labels.contains_key(key),
                    _ => false,
                })
    }
}

/// A pod (anti-)affinity term, compiled.
#[derive(Clone, Debug, PartialEq)]
pub struct AffinityTerm {
    pub selector: Selector,
    /// `None`: every namespace.
    pub namespaces: Option<BTreeSet<String>>,
    pub topology_key: String,
}

impl AffinityTerm {
    fn compile(term: &PodAffinityTerm, own_namespace: &str, own_labels: &Labels) -> AffinityTerm {
        let mut selector = Selector::from_label_selector(term.label_selector.as_ref());
        // matchLabelKeys / mismatchLabelKeys take their values from the incoming pod.
        if !selector.nothing {
            for key in term.match_label_keys.iter().flatten() {
                if let Some(value) = own_labels.get(key) {
                    selector
                        .expressions
                        .push((key.clone(), "In".into(), vec![value.clone()]));
                }
            }
            for key in term.mismatch_label_keys.iter().flatten() {
                if let Some(value) = own_labels.get(key) {
                    selector
                        .expressions
                        .push((key.clone(), "NotIn".into(), vec![value.clone()]));
                }
            }
        }
        let listed: BTreeSet<String> = term.namespaces.iter().flatten().cloned().collect();
        let all = term
            .namespace_selector
            .as_ref()
            .is_some_and(|s| s.match_labels.is_none() && s.match_expressions.is_none());
        let namespaces = if all {
            None
        } else if listed.is_empty() {
            Some(BTreeSet::from([own_namespace.to_string()]))
        } else {
            Some(listed)
        };
        AffinityTerm {
            selector,
            namespaces,
            topology_key: term.topology_key.clone(),
        }
    }

    /// Whether `pod` is one of the pods this term selects.
    pub fn selects(&self, pod: &PodInfo) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|n| n.contains(&pod.namespace))
            && self.selector.matches(&pod.labels)
    }
}

type Labels = BTreeMap<String, String>;

/// A host port a container asks for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostPort {
    pub ip: String,
    pub protocol: String,
    pub port: i32,
}

impl HostPort {
    pub fn conflicts(&self, other: &HostPort) -> bool {
        let wildcard = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || wildcard(&self.ip) || wildcard(&other.ip))
    }
}

/// What the scheduler needs to know about one pod, computed once.
#[derive(Clone, Debug)]
pub struct PodInfo {
    /// `namespace/name`.
    pub key: String,
    pub namespace: String,
    pub uid: String,
    pub labels: Labels,
    pub priority: i32,
    /// `spec.preemptionPolicy` is `Never`.
    pub never_preempts: bool,
    pub terminating: bool,
    /// Effective requests (max of the init containers, sum of the containers, plus overhead).
    pub requests: Resources,
    /// CPU and memory with kube-scheduler's non-zero defaults, for scoring.
    pub nonzero_cpu: i64,
    pub nonzero_memory: i64,
    pub host_ports: Vec<HostPort>,
    /// The uid of the controller that owns the pod.
    pub owner: Option<String>,
    pub affinity: Vec<AffinityTerm>,
    pub anti_affinity: Vec<AffinityTerm>,
    pub preferred_affinity: Vec<(i32, AffinityTerm)>,
    pub preferred_anti_affinity: Vec<(i32, AffinityTerm)>,
    pub pod: Arc<Pod>,
}

impl PodInfo {
    /// Computes a pod's facts; `priority` is resolved by the caller (PriorityClass lookup).
    pub fn new(pod: Arc<Pod>, priority: i32) -> PodInfo {
        let meta = &pod.metadata;
        let namespace = meta.namespace.clone().unwrap_or_default();
        let name = meta.name.clone().unwrap_or_default();
        let labels = meta.labels.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let mut requests = Resources::new();
        let mut host_ports = Vec::new();
        if let Some(spec) = spec {
            for container in &spec.containers {
                for (resource, quantity) in container
                    .resources
                    .as_ref()
                    .and_then(|r| r.requests.as_ref())
                    .into_iter()
                    .flatten()
                {
                    let value = parse_milli(&quantity.0).unwrap_or(0);
                    *requests.entry(resource.clone()).or_default() += value;
                }
                for port in container.ports.iter().flatten() {
                    if let Some(host_port) = port.host_port.filter(|p| *p > 0) {
                        host_ports.push(HostPort {
                            ip: port.host_ip.clone().unwrap_or_default(),
                            protocol: port.protocol.clone().unwrap_or_else(|| "TCP".into()),
                            port: host_port,
                        });
                    }
                }
            }
            for init in spec.init_containers.iter().flatten() {
                for (resource, quantity) in init
                    .resources
                    .as_ref()
                    .and_then(|r| r.requests.as_ref())
                    .into_iter()
                    .flatten()
                {
                    let value = parse_milli(&quantity.0).unwrap_or(0);
                    let entry = requests.entry(resource.clone()).or_default();
                    *entry = (*entry).max(value);
                }
            }
            for (resource, quantity) in spec.overhead.iter().flatten() {
                *requests.entry(resource.clone()).or_default() +=
                    parse_milli(&quantity.0).unwrap_or(0);
            }
        }
        requests.retain(|_, v| *v != 0);
        let nonzero_cpu = requests
            .get("cpu")
            .copied()
            .filter(|v| *v > 0)
            .unwrap_or(DEFAULT_MILLI_CPU);
        let nonzero_memory = requests
            .get("memory")
            .copied()
            .filter(|v| *v > 0)
            .unwrap_or(DEFAULT_MEMORY_MILLI);
        let affinity = spec.and_then(|s| s.affinity.as_ref());
        let compile = |terms: Option<&Vec<PodAffinityTerm>>| -> Vec<AffinityTerm> {
            terms
                .into_iter()
                .flatten()
                .map(|t| AffinityTerm::compile(t, &namespace, &labels))
                .collect()
        };
        let required_affinity = compile(affinity.and_then(|a| a.pod_affinity.as_ref()).and_then(
            |a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            },
        ));
        let required_anti = compile(
            affinity
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_ref()
                }),
        );
        let preferred =
            |weighted: Option<&Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>| {
                weighted
                    .into_iter()
                    .flatten()
                    .map(|w| {
                        (
                            w.weight,
                            AffinityTerm::compile(&w.pod_affinity_term, &namespace, &labels),
                        )
                    })
                    .collect::<Vec<_>>()
            };
        let preferred_affinity = preferred(
            affinity
                .and_then(|a| a.pod_affinity.as_ref())
                .and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .as_ref()
                }),
        );
        let preferred_anti_affinity = preferred(
            affinity
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .as_ref()
                }),
        );
        let owner = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone());
        PodInfo {
            key: format!("{namespace}/{name}"),
            uid: meta.uid.clone().unwrap_or_default(),
            namespace: namespace.clone(),
            labels: labels.clone(),
            priority,
            never_preempts: spec.and_then(|s| s.preemption_policy.as_deref()) == Some("Never"),
            terminating: meta.deletion_timestamp.is_some(),
            requests,
            nonzero_cpu,
            nonzero_memory,
            host_ports,
            owner,
            affinity: required_affinity,
            anti_affinity: required_anti,
            preferred_affinity,
            preferred_anti_affinity,
            pod,
        }
    }

    pub fn spec(&self) -> Option<&k8s_openapi::api::core::v1::PodSpec> {
        self.pod.spec.as_ref()
    }
}

/// Whether a pod has finished (its resources are free again).
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

/// One node and the pods on it.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    pub name: String,
    /// `None` while pods are known to be bound to a node not yet seen.
    pub node: Option<Arc<Node>>,
    pub labels: Labels,
    /// The node's taints, plus `node.kubernetes.io/not-ready` / `unreachable` (NoSchedule)
    /// when its Ready condition is False / Unknown and the taint is not there yet (what the
    /// node lifecycle controller adds).
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub allocatable: Resources,
    pub requested: Resources,
    pub nonzero_cpu: i64,
    pub nonzero_memory: i64,
    pub pods: BTreeMap<String, Arc<PodInfo>>,
    pub used_ports: Vec<HostPort>,
    /// Pods per controller uid.
    pub owners: HashMap<String, u32>,
    /// Keys of the pods here with required anti-affinity terms.
    pub with_anti_affinity: BTreeSet<String>,
    /// Keys of the pods here with preferred (anti-)affinity terms.
    pub with_preferred: BTreeSet<String>,
}

impl NodeInfo {
    fn empty(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.to_string(),
            ..NodeInfo::default()
        }
    }

    fn set_node(&mut self, node: Arc<Node>) {
        self.labels = node.metadata.labels.clone().unwrap_or_default();
        let spec = node.spec.as_ref();
        self.unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        let mut taints = spec.and_then(|s| s.taints.clone()).unwrap_or_default();
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone());
        let implied = match ready.as_deref() {
            Some("True") => None,
            Some("False") => Some("node.kubernetes.io/not-ready"),
            _ => Some("node.kubernetes.io/unreachable"),
        };
        if let Some(key) = implied {
            if !taints.iter().any(|t| t.key == key) {
                taints.push(Taint {
                    key: key.to_string(),
                    effect: "NoSchedule".into(),
                    ..Taint::default()
                });
            }
        }
        self.taints = taints;
        self.allocatable = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref())
            .into_iter()
            .flatten()
            .map(|(k, q)| (k.clone(), parse_milli(&q.0).unwrap_or(0)))
            .collect();
        self.node = Some(node);
    }

    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        if let Some(old) = self.pods.get(&pod.key).cloned() {
            self.remove_pod(&old.key);
        }
        for (resource, value) in &pod.requests {
            *self.requested.entry(resource.clone()).or_default() += value;
        }
        self.nonzero_cpu += pod.nonzero_cpu;
        self.nonzero_memory += pod.nonzero_memory;
        self.used_ports.extend(pod.host_ports.iter().cloned());
        if let Some(owner) = &pod.owner {
            *self.owners.entry(owner.clone()).or_default() += 1;
        }
        if !pod.anti_affinity.is_empty() {
            self.with_anti_affinity.insert(pod.key.clone());
        }
        if !pod.preferred_affinity.is_empty() || !pod.preferred_anti_affinity.is_empty() {
            self.with_preferred.insert(pod.key.clone());
        }
        self.pods.insert(pod.key.clone(), pod);
    }

    pub fn remove_pod(&mut self, key: &str) -> Option<Arc<PodInfo>> {
        let pod = self.pods.remove(key)?;
        for (resource, value) in &pod.requests {
            if let Some(total) = self.requested.get_mut(resource) {
                *total -= value;
                if *total == 0 {
                    self.requested.remove(resource);
                }
            }
        }
        self.nonzero_cpu -= pod.nonzero_cpu;
        self.nonzero_memory -= pod.nonzero_memory;
        for port in &pod.host_ports {
            if let Some(i) = self.used_ports.iter().position(|p| p == port) {
                self.used_ports.swap_remove(i);
            }
        }
        if let Some(owner) = &pod.owner {
            if let Some(count) = self.owners.get_mut(owner) {
                *count -= 1;
                if *count == 0 {
                    self.owners.remove(owner);
                }
            }
        }
        self.with_anti_affinity.remove(key);
        self.with_preferred.remove(key);
        Some(pod)
    }
}

/// Every node with its pods, updated one event at a time.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Which node each recorded pod is on.
    pub pod_node: HashMap<String, String>,
}

impl Snapshot {
    /// A snapshot of plain values (for tests and the planner's callers): pods without a node
    /// or that have finished are left out.
    pub fn build(nodes: &[Node], pods: &[Pod]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for node in nodes {
            snapshot.set_node(Arc::new(node.clone()));
        }
        for pod in pods {
            let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
            snapshot.set_pod(Arc::new(PodInfo::new(Arc::new(pod.clone()), priority)));
        }
        snapshot
    }

    pub fn set_node(&mut self, node: Arc<Node>) {
        let name = node.metadata.name.clone().unwrap_or_default();
        self.nodes
            .entry(name.clone())
            .or_insert_with(|| NodeInfo::empty(&name))
            .set_node(node);
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(info) = self.nodes.get_mut(name) else {
            return;
        };
        info.node = None;
        if info.pods.is_empty() {
            self.nodes.remove(name);
        }
    }

    /// Records a pod where its `spec.nodeName` says (or forgets it when it has none or has
    /// finished).
    pub fn set_pod(&mut self, pod: Arc<PodInfo>) {
        let node = pod
            .spec()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        match node {
            Some(node) if !is_terminal(&pod.pod) => self.place(pod, &node),
            _ => {
                self.remove_pod(&pod.key);
            }
        }
    }

    /// Records `pod` on `node` whatever its `spec.nodeName` (an assumed pod).
    pub fn place(&mut self, pod: Arc<PodInfo>, node: &str) {
        if self.pod_node.get(&pod.key).is_some_and(|n| n != node) {
            self.remove_pod(&pod.key);
        }
        self.pod_node.insert(pod.key.clone(), node.to_string());
        self.nodes
            .entry(node.to_string())
            .or_insert_with(|| NodeInfo::empty(node))
            .add_pod(pod);
    }

    pub fn remove_pod(&mut self, key: &str) -> Option<Arc<PodInfo>> {
        let node = self.pod_node.remove(key)?;
        let info = self.nodes.get_mut(&node)?;
        let pod = info.remove_pod(key);
        if info.node.is_none() && info.pods.is_empty() {
            self.nodes.remove(&node);
        }
        pod
    }

    /// The nodes that exist (have a Node object).
    pub fn live_nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values().filter(|n| n.node.is_some())
    }

    /// Every recorded pod with the node it is on.
    pub fn pods(&self) -> impl Iterator<Item = (&NodeInfo, &Arc<PodInfo>)> {
        self.nodes
            .values()
            .flat_map(|n| n.pods.values().map(move |p| (n, p)))
    }
}
