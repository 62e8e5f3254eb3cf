//! Pod garbage collection (pkg/controller/podgc): terminated pods beyond
//! `terminated_pod_gc_threshold` (oldest first; 0 turns this off), pods bound to nodes that no
//! longer exist (after a quarantine, then confirmed with a live GET), and terminating pods
//! never scheduled. All are deleted at once (grace period 0): no kubelet is left to finish them.
//!
//! The quarantine is upstream's: a node must stay missing for 40 s before its pods go, so a pod
//! bound just before its node registers (or a node briefly re-created) is not collected. Here
//! it follows `--node-monitor-grace-period`, whose default is the same 40 s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams};
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::resync::{self, Caches, ReconcileError};
use super::Context;

/// How often the collector looks even when nothing changed.
const PERIOD: Duration = Duration::from_secs(5);

/// Starts the loop.
pub fn start(context: Context, cancel: CancellationToken) -> BoxFuture<'static, ()> {
    run(context, cancel).boxed()
}

/// The terminated pods to delete: the oldest beyond `threshold` (`(created, key)` pairs).
pub fn excess_terminated(mut terminated: Vec<(String, String)>, threshold: usize) -> Vec<String> {
    if threshold == 0 || terminated.len() <= threshold {
        return Vec::new();
    }
    terminated.sort();
    let excess = terminated.len() - threshold;
    terminated
        .into_iter()
        .take(excess)
        .map(|(_, key)| key)
        .collect()
}

async fn run(context: Context, cancel: CancellationToken) {
    let mut caches = Caches::default();
    let pods = caches.cache(
        Api::<Pod>::all(context.client.clone()),
        watcher::Config::default(),
    );
    let nodes = caches.cache(
        Api::<Node>::all(context.client.clone()),
        watcher::Config::default(),
    );
    // Node name -> when it was first seen missing while pods were bound to it.
    let missing_since: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    resync::drive(caches, cancel, PERIOD, || {
        let (context, pods, nodes) = (context.clone(), pods.clone(), nodes.clone());
        let missing_since = Arc::clone(&missing_since);
        async move {
            let node_names: std::collections::BTreeSet<String> = nodes
                .state()
                .iter()
                .filter_map(|n| n.metadata.name.clone())
                .collect();
            let quarantine = context.config.node_monitor_grace_period;
            let now = Instant::now();
            let mut expired = std::collections::BTreeSet::new();
            {
                let mut missing = match missing_since.lock() {
                    Ok(guard) => guard,
                    Err(poisoned) => poisoned.into_inner(),
                };
                missing.retain(|node, _| !node_names.contains(node));
                for pod in pods.state() {
                    if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
                        if !node.is_empty() && !node_names.contains(node) {
                            let since = *missing.entry(node.to_string()).or_insert(now);
                            if now.duration_since(since) >= quarantine {
                                expired.insert(node.to_string());
                            }
                        }
                    }
                }
            }
            let node_api = Api::<Node>::all(context.client.clone());
            let mut doomed: Vec<(String, String, &'static str)> = Vec::new();
            let mut terminated = Vec::new();
            for pod in pods.state() {
                let (Some(ns), Some(name)) =
                    (pod.metadata.namespace.clone(), pod.metadata.name.clone())
                else {
                    continue;
                };
                let phase = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .unwrap_or_default();
                if phase == "Succeeded" || phase == "Failed" {
                    let created = pod
                        .metadata
                        .creation_timestamp
                        .as_ref()
                        .map(|t| t.0.to_string())
                        .unwrap_or_default();
                    terminated.push((created, format!("{ns}/{name}")));
                }
                match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
                    Some(node) if !node.is_empty() && !node_names.contains(node) => {
                        // Quarantined long enough, and the cache may lag: ask.
                        if expired.contains(node) && node_api.get_opt(node).await?.is_none() {
                            doomed.push((ns, name, "the pod's node is gone"));
                        }
                    }
                    Some(node) if !node.is_empty() => {}
                    _ => {
                        if pod.metadata.deletion_timestamp.is_some() {
                            doomed.push((ns, name, "a terminating pod was never scheduled"));
                        }
                    }
                }
            }
            for key in excess_terminated(terminated, context.config.terminated_pod_gc_threshold) {
                if let Some((ns, name)) = key.split_once('/') {
                    doomed.push((ns.to_string(), name.to_string(), "too many terminated pods"));
                }
            }
            for (ns, name, why) in doomed {
                info!(pod = %format!("{ns}/{name}"), reason = why, "garbage-collecting a pod");
                let api = Api::<Pod>::namespaced(context.client.clone(), &ns);
                resync::tolerate(
                    api.delete(&name, &DeleteParams::default().grace_period(0))
                        .await,
                    true,
                )?;
            }
            Ok::<_, ReconcileError>(None)
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_terminated_go_first() {
        let pods = vec![
            ("2024-01-03".to_string(), "d/c".to_string()),
            ("2024-01-01".to_string(), "d/a".to_string()),
            ("2024-01-02".to_string(), "d/b".to_string()),
        ];
        assert_eq!(excess_terminated(pods.clone(), 1), vec!["d/a", "d/b"]);
        assert!(excess_terminated(pods.clone(), 3).is_empty());
        assert!(excess_terminated(pods, 0).is_empty());
    }
}
