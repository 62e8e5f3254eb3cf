//! The garbage collector: deletes objects whose owners are gone and carries out foreground
//! and orphan deletion (pkg/controller/garbagecollector).
//!
//! It caches every resource discovery lists with `list`, `watch` and `delete` (built-in and
//! custom; rediscovered when CustomResourceDefinitions change) and builds the ownership graph
//! from their `ownerReferences` on each pass:
//! - **background**: an object none of whose owners exists any more (checked with a live GET,
//!   by uid, before acting) is deleted; owners that are gone are removed from objects that
//!   still have a live owner.
//! - **foreground**: an owner with the `foregroundDeletion` finalizer gets its dependents
//!   deleted; the finalizer is removed once no dependent with `blockOwnerDeletion` is left.
//! - **orphan**: an owner with the `orphan` finalizer has itself removed from its dependents'
//!   `ownerReferences`, then the finalizer is removed.
//!
//! # Caveats
//! - Each pass looks at the whole graph (fine for small clusters).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::discovery::{verbs, Discovery, Scope};
use kube::runtime::reflector::Store;
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::resync::{self, Caches, ReconcileError};
use super::Context;

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

/// Starts the loop.
pub fn start(context: Context, cancel: CancellationToken) -> BoxFuture<'static, ()> {
    run(context, cancel).boxed()
}

/// One served resource the collector watches.
#[derive(Clone)]
struct Watched {
    resource: ApiResource,
    namespaced: bool,
    store: Store<DynamicObject>,
}

async fn run(context: Context, cancel: CancellationToken) {
    loop {
        let discovery = tokio::select! {
            _ = cancel.cancelled() => return,
            d = Discovery::new(context.client.clone()).run() => d,
        };
        let discovery = match discovery {
            Ok(d) => d,
            Err(err) => {
                tracing::warn!(error = %err, "discovery failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut caches = Caches::default();
        let mut watched = Vec::new();
        for group in discovery.groups() {
            for (resource, capabilities) in group.recommended_resources() {
                if !(capabilities.supports_operation(verbs::LIST)
                    && capabilities.supports_operation(verbs::WATCH)
                    && capabilities.supports_operation(verbs::DELETE))
                    || (resource.group.is_empty() && resource.plural == "events")
                    || (resource.group == "events.k8s.io")
                {
                    continue;
                }
                let api: Api<DynamicObject> = Api::all_with(context.client.clone(), &resource);
                let store = caches.cache_dynamic(api, resource.clone());
                watched.push(Watched {
                    resource,
                    namespaced: capabilities.scope == Scope::Namespaced,
                    store,
                });
            }
        }
        let watched = Arc::new(watched);
        // A CRD change means other resources: rediscover (the first events are the list).
        let crds: Api<CustomResourceDefinition> = Api::all(context.client.clone());
        let mut crd_changes = watcher(crds, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        let inner = cancel.child_token();
        let known: usize = watched.len();
        let driver = {
            let context = context.clone();
            let watched = Arc::clone(&watched);
            let inner = inner.clone();
            async move {
                resync::drive(caches, inner, Duration::from_secs(30), || {
                    let (context, watched) = (context.clone(), Arc::clone(&watched));
                    async move { reconcile(&context, &watched).await }
                })
                .await
            }
        };
        tokio::pin!(driver);
        let started = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = &mut driver => return,
                change = crd_changes.next() => {
                    // Changes seen in the first seconds are the initial list.
                    if change.is_some() && started.elapsed() > Duration::from_secs(2) {
                        debug!(known, "custom resources changed; rediscovering");
                        inner.cancel();
                        break;
                    }
                }
            }
        }
        let _ = (&mut driver).await;
        if cancel.is_cancelled() {
            return;
        }
    }
}

/// An object in the graph.
#[derive(Clone, Debug)]
struct Node {
    resource: ApiResource,
    namespaced: bool,
    namespace: Option<String>,
    name: String,
    uid: String,
    owners: Vec<Value>,
    finalizers: Vec<String>,
    deleting: bool,
}

/// What the collector decides to do with an object whose owners were classified.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do.
    Keep,
    /// Remove these owner uids from the object's ownerReferences.
    RemoveOwners(Vec<String>),
    /// Delete the object with this propagation policy.
    Delete(&'static str),
}

/// The state of one owner reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerState {
    /// The owner exists and is not waiting for its dependents.
    Solid,
    /// The owner does not exist (or exists with another uid).
    Dangling,
    /// The owner is being deleted in the foreground.
    Waiting,
}

/// The decision of `attemptToDeleteItem`: owners classified as solid, dangling or waiting.
pub fn decide(owners: &[(String, OwnerState)], has_dependents: bool) -> Decision {
    if owners.is_empty() {
        return Decision::Keep;
    }
    let solid = owners.iter().any(|(_, s)| *s == OwnerState::Solid);
    let waiting = owners.iter().any(|(_, s)| *s == OwnerState::Waiting);
    let stale: Vec<String> = owners
        .iter()
        .filter(|(_, s)| *s != OwnerState::Solid)
        .map(|(uid, _)| uid.clone())
        .collect();
    if solid {
        if stale.is_empty() {
            Decision::Keep
        } else {
            Decision::RemoveOwners(stale)
        }
    } else if waiting && has_dependents {
        Decision::Delete("Foreground")
    } else {
        Decision::Delete("Background")
    }
}

fn api_for(context: &Context, node: &Node) -> Api<DynamicObject> {
    match (&node.namespace, node.namespaced) {
        (Some(ns), true) => Api::namespaced_with(context.client.clone(), ns, &node.resource),
        _ => Api::all_with(context.client.clone(), &node.resource),
    }
}

async fn reconcile(
    context: &Context,
    watched: &[Watched],
) -> Result<Option<Duration>, ReconcileError> {
    // The graph: every object by uid; kinds by apiVersion/kind for live owner checks.
    let mut nodes: HashMap<String, Node> = HashMap::new();
    let mut kinds: HashMap<(String, String), (ApiResource, bool)> = HashMap::new();
    for w in watched {
        kinds.insert(
            (w.resource.api_version.clone(), w.resource.kind.clone()),
            (w.resource.clone(), w.namespaced),
        );
        for obj in w.store.state() {
            let meta = &obj.metadata;
            let (Some(uid), Some(name)) = (meta.uid.clone(), meta.name.clone()) else {
                continue;
            };
            let owners = meta
                .owner_references
                .as_ref()
                .map(|refs| {
                    refs.iter()
                        .filter_map(|r| serde_json::to_value(r).ok())
                        .collect()
                })
                .unwrap_or_default();
            nodes.insert(
                uid.clone(),
                Node {
                    resource: w.resource.clone(),
                    namespaced: w.namespaced,
                    namespace: meta.namespace.clone(),
                    name,
                    uid,
                    owners,
                    finalizers: meta.finalizers.clone().unwrap_or_default(),
                    deleting: meta.deletion_timestamp.is_some(),
                },
            );
        }
    }
    // Dependents of each owner uid.
    let mut dependents: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
    for node in nodes.values() {
        for owner in &node.owners {
            if let Some(owner_uid) = owner["uid"].as_str() {
                dependents
                    .entry(owner_uid.to_string())
                    .or_default()
                    .push((node.uid.clone(), owner["blockOwnerDeletion"] == true));
            }
        }
    }
    let mut first_error: Option<kube::Error> = None;
    let mut note = |result: Result<(), kube::Error>| {
        if let Err(err) = result {
            first_error.get_or_insert(err);
        }
    };
    // Dependents: classify their owners and act.
    for node in nodes.values() {
        if node.owners.is_empty() || node.deleting {
            continue;
        }
        let mut classified = Vec::new();
        for owner in &node.owners {
            let Some(owner_uid) = owner["uid"].as_str() else {
                continue;
            };
            let state = match nodes.get(owner_uid) {
                Some(o) if o.deleting && o.finalizers.iter().any(|f| f == FOREGROUND) => {
                    OwnerState::Waiting
                }
                Some(_) => OwnerState::Solid,
                None => match owner_absent(context, &kinds, node, owner).await {
                    Some(true) => OwnerState::Dangling,
                    // Unknown kind or a lookup error: do nothing rash.
                    _ => OwnerState::Solid,
                },
            };
            classified.push((owner_uid.to_string(), state));
        }
        let has_dependents = dependents.contains_key(&node.uid);
        match decide(&classified, has_dependents) {
            Decision::Keep => {}
            Decision::RemoveOwners(uids) => {
                note(remove_owners(context, node, &uids).await);
            }
            Decision::Delete(policy) => {
                info!(
                    object.ref = %format!("{}/{}", node.resource.plural, node.name),
                    policy, "deleting an object whose owners are gone or going"
                );
                let params = DeleteParams {
                    propagation_policy: Some(match policy {
                        "Foreground" => kube::api::PropagationPolicy::Foreground,
                        _ => kube::api::PropagationPolicy::Background,
                    }),
                    preconditions: Some(kube::api::Preconditions {
                        uid: Some(node.uid.clone()),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                note(resync::tolerate(
                    api_for(context, node).delete(&node.name, &params).await,
                    true,
                ));
            }
        }
    }
    // Owners being deleted in the foreground or with orphaning.
    let mut requeue = None;
    for node in nodes.values() {
        if !node.deleting {
            continue;
        }
        let deps = dependents.get(&node.uid).cloned().unwrap_or_default();
        let live: Vec<&(String, bool)> = deps
            .iter()
            .filter(|(uid, _)| nodes.contains_key(uid))
            .collect();
        if node.finalizers.iter().any(|f| f == ORPHAN) {
            for (uid, _) in &live {
                if let Some(dependent) = nodes.get(uid) {
                    note(remove_owners(context, dependent, std::slice::from_ref(&node.uid)).await);
                }
            }
            if live.is_empty() {
                note(remove_finalizer(context, node, ORPHAN).await);
            } else {
                requeue = Some(Duration::from_millis(500));
            }
        } else if node.finalizers.iter().any(|f| f == FOREGROUND) {
            let blocking = live.iter().any(|(_, block)| *block);
            if blocking {
                requeue = Some(Duration::from_millis(500));
            } else {
                note(remove_finalizer(context, node, FOREGROUND).await);
            }
        }
    }
    match first_error {
        Some(err) => Err(err.into()),
        None => Ok(requeue),
    }
}

/// Whether an owner is really gone, by a live GET (the caches may lag): `None` when it
/// cannot be told.
async fn owner_absent(
    context: &Context,
    kinds: &HashMap<(String, String), (ApiResource, bool)>,
    dependent: &Node,
    owner: &Value,
) -> Option<bool> {
    let api_version = owner["apiVersion"].as_str()?;
    let kind = owner["kind"].as_str()?;
    let name = owner["name"].as_str()?;
    let uid = owner["uid"].as_str()?;
    let (resource, namespaced) = kinds.get(&(api_version.to_string(), kind.to_string()))?;
    let api: Api<DynamicObject> = match (namespaced, &dependent.namespace) {
        (true, Some(ns)) => Api::namespaced_with(context.client.clone(), ns, resource),
        (true, None) => return Some(true),
        (false, _) => Api::all_with(context.client.clone(), resource),
    };
    match api.get_opt(name).await {
        Ok(None) => Some(true),
        Ok(Some(found)) => Some(found.metadata.uid.as_deref() != Some(uid)),
        Err(_) => None,
    }
}

async fn remove_owners(context: &Context, node: &Node, uids: &[String]) -> Result<(), kube::Error> {
    let kept: Vec<&Value> = node
        .owners
        .iter()
        .filter(|o| !uids.iter().any(|u| o["uid"].as_str() == Some(u.as_str())))
        .collect();
    // A JSON patch guarded by the uid: nothing happens to a namesake.
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/uid", "value": node.uid},
        {"op": "replace", "path": "/metadata/ownerReferences", "value": kept},
    ]))
    .map_err(kube::Error::SerdeError)?;
    resync::tolerate(
        api_for(context, node)
            .patch(
                &node.name,
                &PatchParams::default(),
                &Patch::<()>::Json(patch),
            )
            .await,
        true,
    )
}

async fn remove_finalizer(
    context: &Context,
    node: &Node,
    finalizer: &str,
) -> Result<(), kube::Error> {
    let kept: Vec<&String> = node.finalizers.iter().filter(|f| *f != finalizer).collect();
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/uid", "value": node.uid},
        {"op": "replace", "path": "/metadata/finalizers", "value": kept},
    ]))
    .map_err(kube::Error::SerdeError)?;
    resync::tolerate(
        api_for(context, node)
            .patch(
                &node.name,
                &PatchParams::default(),
                &Patch::<()>::Json(patch),
            )
            .await,
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        let s = |u: &str, st| (u.to_string(), st);
        assert_eq!(decide(&[], false), Decision::Keep);
        assert_eq!(decide(&[s("a", OwnerState::Solid)], false), Decision::Keep);
        assert_eq!(
            decide(&[s("a", OwnerState::Dangling)], false),
            Decision::Delete("Background")
        );
        assert_eq!(
            decide(
                &[s("a", OwnerState::Solid), s("b", OwnerState::Dangling)],
                false
            ),
            Decision::RemoveOwners(vec!["b".into()])
        );
        assert_eq!(
            decide(&[s("a", OwnerState::Waiting)], true),
            Decision::Delete("Foreground")
        );
        assert_eq!(
            decide(&[s("a", OwnerState::Waiting)], false),
            Decision::Delete("Background")
        );
    }
}
