//! The namespace controller: empties a namespace being deleted and then finalizes it
//! (pkg/controller/namespace/deletion).
//!
//! For a namespace with a `deletionTimestamp` it deletes every object of every namespaced
//! resource discovery lists with `delete` (custom resources included), in the background
//! propagation mode, waits until the namespace is empty (pods finish their graceful deletion
//! first), and then removes the `kubernetes` finalizer through `PUT namespaces/<n>/finalize`;
//! the API server removes the namespace once no finalizer holds it. Progress is published as
//! the `NamespaceDeletionContentFailure` / `NamespaceContentRemaining` conditions.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::{verbs, Discovery, Scope};
use kube::runtime::watcher;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::resync::{self, Caches, ReconcileError};
use super::Context;

/// How soon a namespace still holding content is looked at again.
const RECHECK: Duration = Duration::from_secs(1);

/// Starts the loop.
pub fn start(context: Context, cancel: CancellationToken) -> BoxFuture<'static, ()> {
    run(context, cancel).boxed()
}

async fn run(context: Context, cancel: CancellationToken) {
    let mut caches = Caches::default();
    let namespaces = caches.cache(
        Api::<Namespace>::all(context.client.clone()),
        watcher::Config::default(),
    );
    resync::drive(caches, cancel, Duration::from_secs(60), || {
        let (context, namespaces) = (context.clone(), namespaces.clone());
        async move {
            let deleting: Vec<Namespace> = namespaces
                .state()
                .iter()
                .filter(|n| n.metadata.deletion_timestamp.is_some())
                .map(|n| n.as_ref().clone())
                .collect();
            if deleting.is_empty() {
                return Ok(None);
            }
            let discovery = Discovery::new(context.client.clone()).run().await?;
            let mut requeue = None;
            for namespace in deleting {
                if let Some(after) = finalize(&context, &discovery, &namespace).await? {
                    requeue = Some(after);
                }
            }
            Ok::<_, ReconcileError>(requeue)
        }
    })
    .await;
}

/// Deletes the content of one namespace; finalizes it when empty. Returns when to look again.
async fn finalize(
    context: &Context,
    discovery: &Discovery,
    namespace: &Namespace,
) -> Result<Option<Duration>, ReconcileError> {
    let Some(name) = namespace.metadata.name.clone() else {
        return Ok(None);
    };
    let held = namespace
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.as_ref())
        .is_some_and(|f| f.iter().any(|f| f == "kubernetes"));
    if !held {
        return Ok(None);
    }
    let mut remaining = 0usize;
    let mut failures = Vec::new();
    for group in discovery.groups() {
        for (resource, capabilities) in group.recommended_resources() {
            if capabilities.scope != Scope::Namespaced
                || !capabilities.supports_operation(verbs::LIST)
                || !capabilities.supports_operation(verbs::DELETE)
            {
                continue;
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(context.client.clone(), &name, &resource);
            let list = match api.list(&ListParams::default()).await {
                Ok(list) => list,
                Err(err) if resync::is_not_found(&err) => continue,
                Err(err) => {
                    failures.push(format!("{}: {err}", resource.plural));
                    continue;
                }
            };
            for item in list.items {
                remaining += 1;
                if item.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let Some(item_name) = item.metadata.name.as_deref() else {
                    continue;
                };
                if let Err(err) = resync::tolerate(
                    api.delete(item_name, &DeleteParams::background()).await,
                    true,
                ) {
                    failures.push(format!("{}/{item_name}: {err}", resource.plural));
                }
            }
        }
    }
    let api = Api::<Namespace>::all(context.client.clone());
    if remaining > 0 || !failures.is_empty() {
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let mut conditions = vec![json!({
            "type": "NamespaceContentRemaining",
            "status": if remaining > 0 { "True" } else { "False" },
            "reason": if remaining > 0 { "SomeResourcesRemain" } else { "ContentRemoved" },
            "message": format!("{remaining} objects remaining"),
            "lastTransitionTime": now,
        })];
        conditions.push(json!({
            "type": "NamespaceDeletionContentFailure",
            "status": if failures.is_empty() { "False" } else { "True" },
            "reason": if failures.is_empty() { "ContentDeleted" } else { "ContentDeletionFailed" },
            "message": if failures.is_empty() { "All content successfully deleted, may be waiting on finalization".to_string() } else { failures.join("; ") },
            "lastTransitionTime": now,
        }));
        let patch = json!({"status": {"phase": "Terminating", "conditions": conditions}});
        let _ = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        return Ok(Some(RECHECK));
    }
    // Empty: drop our finalizer through the finalize subresource.
    let mut next = namespace.clone();
    if let Some(spec) = next.spec.as_mut() {
        if let Some(finalizers) = spec.finalizers.as_mut() {
            finalizers.retain(|f| f != "kubernetes");
        }
    }
    next.metadata.managed_fields = None;
    next.metadata.resource_version = None;
    resync::tolerate(
        api.replace_subresource("finalize", &name, &PostParams::default(), &next)
            .await,
        true,
    )?;
    info!(namespace = %name, "namespace finalized");
    Ok(None)
}
