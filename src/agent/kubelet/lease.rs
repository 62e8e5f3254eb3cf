//! The node's heartbeat: the Lease `kube-node-lease/<node>`, renewed every 10 s (the kubelet's
//! default: a quarter of the 40 s lease duration). The Lease is owned by the Node, so it goes
//! when the Node is deleted.
//!
//! This module writes only that Lease.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use kube::api::{Api, ObjectMeta, PostParams};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The lease's duration, as the kubelet's `nodeLeaseDurationSeconds`.
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// How often the lease is renewed.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// How soon to retry a failed renewal.
const RETRY: Duration = Duration::from_secs(1);

/// The namespace of node leases.
pub const NAMESPACE: &str = "kube-node-lease";

/// Renews the node's lease until `shutdown`.
pub async fn run(client: kube::Client, node: String, shutdown: CancellationToken) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let nodes: Api<Node> = Api::all(client);
    loop {
        let wait = match renew(&leases, &nodes, &node).await {
            Ok(()) => RENEW_INTERVAL,
            Err(err) => {
                warn!(node = %node, error = %err, "renewing the node lease");
                RETRY
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One renewal: update the lease, or create it when it is missing.
pub async fn renew(leases: &Api<Lease>, nodes: &Api<Node>, node: &str) -> Result<(), kube::Error> {
    let now = MicroTime(Timestamp::now());
    match leases.get_opt(node).await? {
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.holder_identity = Some(node.to_string());
            spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
            spec.renew_time = Some(now);
            if lease.metadata.owner_references.is_none() {
                lease.metadata.owner_references = owner(nodes, node).await;
            }
            leases.replace(node, &PostParams::default(), &lease).await?;
            debug!(node, "lease renewed");
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(node.to_string()),
                    namespace: Some(NAMESPACE.to_string()),
                    owner_references: owner(nodes, node).await,
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(node.to_string()),
                    lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
                    renew_time: Some(now),
                    ..LeaseSpec::default()
                }),
            };
            leases.create(&PostParams::default(), &lease).await?;
            debug!(node, "lease created");
        }
    }
    Ok(())
}

/// The Node as the lease's owner, as the kubelet sets it.
async fn owner(nodes: &Api<Node>, node: &str) -> Option<Vec<OwnerReference>> {
    let uid = nodes.get_opt(node).await.ok().flatten()?.metadata.uid?;
    Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.to_string(),
        uid,
        ..OwnerReference::default()
    }])
}
