//! Node IPAM: gives every node a /24 `spec.podCIDR` (and `podCIDRs`) cut from the cluster
//! CIDR, never the same one twice (pkg/controller/nodeipam, range allocator).
//!
//! CIDRs in use are read from all nodes before each pass, and the ones this loop assigned are
//! remembered, so a node whose update is not yet in the cache never gets a second CIDR.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::resync::{self, Caches, ReconcileError};
use super::Context;
use crate::server::apiserver::allocators::Cidr;

/// The size of each node's range.
pub const NODE_MASK: u32 = 24;

/// Starts the loop.
pub fn start(context: Context, cancel: CancellationToken) -> BoxFuture<'static, ()> {
    run(context, cancel).boxed()
}

/// The `index`th /24 of `cluster`, if there is one (IPv4 clusters of /24 or larger).
pub fn node_cidr(cluster: &Cidr, prefix: u32, index: u128) -> Option<String> {
    if prefix > NODE_MASK {
        return None;
    }
    let count = 1u128 << (NODE_MASK - prefix);
    (index < count).then(|| format!("{}/{NODE_MASK}", cluster.nth(index * 256)))
}

/// The first /24 of `cluster_text` not in `used`.
pub fn next_free(cluster_text: &str, used: &BTreeSet<String>) -> Option<String> {
    let cluster = Cidr::parse(cluster_text)?;
    let prefix: u32 = cluster_text.split_once('/')?.1.parse().ok()?;
    (0..(1u128 << NODE_MASK.saturating_sub(prefix)))
        .filter_map(|i| node_cidr(&cluster, prefix, i))
        .find(|c| !used.contains(c))
}

async fn run(context: Context, cancel: CancellationToken) {
    let mut caches = Caches::default();
    let nodes = caches.cache(
        Api::<Node>::all(context.client.clone()),
        watcher::Config::default(),
    );
    let assigned: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    resync::drive(caches, cancel, Duration::from_secs(30), || {
        let (context, nodes, assigned) = (context.clone(), nodes.clone(), Arc::clone(&assigned));
        async move {
            let state = nodes.state();
            let mut used: BTreeSet<String> = state
                .iter()
                .filter_map(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.clone()))
                .collect();
            {
                let mut assigned = assigned.lock().unwrap_or_else(|p| p.into_inner());
                let names: BTreeSet<String> =
                    state.iter().filter_map(|n| n.metadata.name.clone()).collect();
                assigned.retain(|name, _| names.contains(name));
                used.extend(assigned.values().cloned());
            }
            let api = Api::<Node>::all(context.client.clone());
            for node in state {
                let Some(name) = node.metadata.name.clone() else {
                    continue;
                };
                if node.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_some() {
                    continue;
                }
                let remembered = assigned
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&name)
                    .cloned();
                let cidr = match remembered {
                    Some(cidr) => cidr,
                    None => match next_free(&context.config.cluster_cidr, &used) {
                        Some(cidr) => cidr,
                        None => {
                            warn!(node = %name, cluster_cidr = %context.config.cluster_cidr, "no pod CIDR left for the node");
                            continue;
                        }
                    },
                };
                used.insert(cidr.clone());
                assigned
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.clone(), cidr.clone());
                let patch = json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
                resync::tolerate(
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await,
                    true,
                )?;
                info!(node = %name, pod_cidr = %cidr, "assigned a pod CIDR");
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
    fn node_cidrs() {
        let mut used = BTreeSet::new();
        assert_eq!(
            next_free("10.42.0.0/16", &used).as_deref(),
            Some("10.42.0.0/24")
        );
        used.insert("10.42.0.0/24".to_string());
        used.insert("10.42.2.0/24".to_string());
        assert_eq!(
            next_free("10.42.0.0/16", &used).as_deref(),
            Some("10.42.1.0/24")
        );
        let one: BTreeSet<String> = ["10.9.0.0/24".to_string()].into();
        assert_eq!(next_free("10.9.0.0/24", &one), None);
        assert_eq!(next_free("10.9.0.0/25", &BTreeSet::new()), None);
    }
}
