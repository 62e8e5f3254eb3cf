//! The scheduling queue: pods waiting for a node, handed out highest priority first, then
//! oldest first; pods that did not fit wait out an exponential backoff (1 s doubling to 10 s,
//! kube-scheduler's defaults) and, if still unschedulable, until a cluster change that could
//! help them (or [`UNSCHEDULABLE_TIMEOUT`]) moves them back.
//!
//! # Guarantees
//! - A pod is in the queue at most once, and never while a scheduling attempt for it is in
//!   flight ([`SchedulingQueue::pop`] marks it in flight until [`SchedulingQueue::done`]).

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use super::filter::Plugin;

pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long an unschedulable pod waits for a helpful event before it is tried again anyway.
pub const UNSCHEDULABLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The order of the active queue: priority (highest first), creation time, key.
type Order = (Reverse<i32>, String, String);

#[derive(Debug)]
struct Entry {
    order: Order,
    attempts: u32,
    /// When the backoff of the last failure ends.
    backoff_until: Option<Instant>,
    /// Set while the pod is parked as unschedulable: the plugins that rejected it and when.
    unschedulable: Option<(Vec<Plugin>, Instant)>,
    in_flight: bool,
    active: bool,
}

/// What changed in the cluster, for deciding which unschedulable pods to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterEvent {
    /// A node was added or changed in a way that matters (labels, taints, allocatable,
    /// readiness, unschedulable).
    Node,
    /// A pod was deleted or finished: resources, ports and anti-affinity freed.
    PodGone,
    /// A pod was bound: affinity or spread may now be satisfiable.
    PodBound,
}

impl ClusterEvent {
    fn may_help(self, plugins: &[Plugin]) -> bool {
        match self {
            ClusterEvent::Node => true,
            ClusterEvent::PodGone => plugins.iter().any(|p| {
                matches!(
                    p,
                    Plugin::NodePorts
                        | Plugin::NodeResourcesFit
                        | Plugin::PodTopologySpread
                        | Plugin::InterPodAffinity
                )
            }),
            ClusterEvent::PodBound => plugins
                .iter()
                .any(|p| matches!(p, Plugin::PodTopologySpread | Plugin::InterPodAffinity)),
        }
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct SchedulingQueue {
    entries: HashMap<String, Entry>,
    active: BTreeSet<Order>,
    /// Keys of the pods parked as unschedulable.
    parked: BTreeSet<String>,
}

impl SchedulingQueue {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Adds a new pending pod (no-op when it is already queued).
    pub fn add(&mut self, key: &str, priority: i32, created: String) {
        if self.entries.contains_key(key) {
            return;
        }
        let order = (Reverse(priority), created, key.to_string());
        self.active.insert(order.clone());
        self.entries.insert(
            key.to_string(),
            Entry {
                order,
                attempts: 0,
                backoff_until: None,
                unschedulable: None,
                in_flight: false,
                active: true,
            },
        );
    }

    /// Forgets a pod (deleted, bound elsewhere, or no longer ours).
    pub fn remove(&mut self, key: &str) {
        if let Some(entry) = self.entries.remove(key) {
            self.active.remove(&entry.order);
        }
        self.parked.remove(key);
    }

    /// The next pod to try, marked in flight.
    pub fn pop(&mut self) -> Option<String> {
        let order = self.active.pop_first()?;
        let entry = self.entries.get_mut(&order.2)?;
        entry.active = false;
        entry.in_flight = true;
        Some(order.2)
    }

    /// Ends an attempt that bound the pod (or gave up on it).
    pub fn done(&mut self, key: &str) {
        self.remove(key);
    }

    /// Ends a failed attempt: the pod backs off and then waits for a helpful event. `plugins`
    /// are the filters that rejected it (empty for an error, which is retried after backoff).
    pub fn failed(&mut self, key: &str, plugins: Vec<Plugin>, now: Instant) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        entry.in_flight = false;
        entry.attempts += 1;
        let backoff = INITIAL_BACKOFF
            .saturating_mul(1u32 << (entry.attempts - 1).min(10))
            .min(MAX_BACKOFF);
        entry.backoff_until = Some(now + backoff);
        if plugins.is_empty() {
            entry.unschedulable = None;
        } else {
            entry.unschedulable = Some((plugins, now));
            self.parked.insert(key.to_string());
        }
    }

    /// Moves pods whose backoff ended (and that wait on no event) and unschedulable pods past
    /// their timeout to the active queue. Returns when the next backoff ends.
    pub fn flush(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for entry in self.entries.values_mut() {
            if entry.active || entry.in_flight {
                continue;
            }
            let backoff_over = entry.backoff_until.is_none_or(|t| t <= now);
            let ready = match &entry.unschedulable {
                None => backoff_over,
                Some((_, since)) => backoff_over && *since + UNSCHEDULABLE_TIMEOUT <= now,
            };
            if ready {
                entry.active = true;
                entry.unschedulable = None;
                self.active.insert(entry.order.clone());
                continue;
            }
            let wake = match &entry.unschedulable {
                None => entry.backoff_until,
                Some((_, since)) => {
                    Some((*since + UNSCHEDULABLE_TIMEOUT).max(entry.backoff_until.unwrap_or(now)))
                }
            };
            if let Some(wake) = wake {
                next = Some(next.map_or(wake, |n| n.min(wake)));
            }
        }
        next
    }

    /// A cluster change: unschedulable pods it may help wait only for the rest of their
    /// backoff. Returns whether any pod was released.
    pub fn on_event(&mut self, event: ClusterEvent) -> bool {
        let mut moved = false;
        let entries = &mut self.entries;
        self.parked.retain(|key| {
            let Some(entry) = entries.get_mut(key) else {
                return false;
            };
            let helps = match &entry.unschedulable {
                Some((plugins, _)) => event.may_help(plugins),
                None => true,
            };
            if helps {
                entry.unschedulable = None;
                moved = true;
            }
            !helps
        });
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_then_age() {
        let mut queue = SchedulingQueue::default();
        queue.add("ns/old-low", 0, "2024-01-01T00:00:00Z".into());
        queue.add("ns/new-high", 100, "2024-01-02T00:00:00Z".into());
        queue.add("ns/new-low", 0, "2024-01-02T00:00:00Z".into());
        assert_eq!(queue.pop().as_deref(), Some("ns/new-high"));
        assert_eq!(queue.pop().as_deref(), Some("ns/old-low"));
        assert_eq!(queue.pop().as_deref(), Some("ns/new-low"));
        assert_eq!(queue.pop(), None);
    }

    #[test]
    fn backoff_then_event() {
        let mut queue = SchedulingQueue::default();
        queue.add("ns/p", 0, String::new());
        assert_eq!(queue.pop().as_deref(), Some("ns/p"));
        let now = Instant::now();
        queue.failed("ns/p", vec![Plugin::NodeResourcesFit], now);
        // An unrelated event does not release it; a helpful one does, after backoff.
        assert!(!queue.on_event(ClusterEvent::PodBound));
        assert!(queue.on_event(ClusterEvent::PodGone));
        assert_eq!(queue.flush(now), Some(now + INITIAL_BACKOFF));
        assert_eq!(queue.pop(), None);
        queue.flush(now + INITIAL_BACKOFF);
        assert_eq!(queue.pop().as_deref(), Some("ns/p"));
        // The second failure backs off twice as long; without an event it waits the timeout.
        queue.failed("ns/p", vec![Plugin::NodeResourcesFit], now);
        queue.flush(now + INITIAL_BACKOFF * 2);
        assert_eq!(queue.pop(), None);
        queue.flush(now + UNSCHEDULABLE_TIMEOUT);
        assert_eq!(queue.pop().as_deref(), Some("ns/p"));
    }
}
