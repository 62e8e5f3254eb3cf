//! The pods bound to this node: a watch on `pods?fieldSelector=spec.nodeName=<node>`, one
//! [`pod_worker`] per pod uid, fed every change of its pod.
//!
//! At start the runtime's containers are listed once and handed to the workers of their pods
//! (adoption after an agent restart). Once the first list of pods is complete, whatever
//! belongs to no pod any more — containers, sandboxes, pod network namespaces — is removed.
//!
//! This module owns the set of workers; it must not touch containers of pods that have a
//! worker (the worker does).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::pod_worker::{self, PodUpdate, WorkerHandle};
use super::{sandbox, Kubelet};
use crate::agent::runtime::container::ContainerStatus;

/// How long workers get to notice shutdown.
const WORKER_STOP: Duration = Duration::from_secs(5);

/// Watches this node's pods and runs their workers until `shutdown`.
pub async fn run(kubelet: Kubelet, shutdown: CancellationToken) {
    let node = kubelet.config.node_name.clone();
    let mut adoptable: HashMap<String, Vec<ContainerStatus>> = HashMap::new();
    match kubelet.runtime.list().await {
        Ok(containers) => {
            for container in containers {
                adoptable
                    .entry(container.pod.uid.clone())
                    .or_default()
                    .push(container);
            }
        }
        Err(err) => warn!(error = %err, "listing the runtime's containers"),
    }
    let api: Api<Pod> = Api::all(kubelet.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let workers_token = shutdown.child_token();
    let mut workers: HashMap<String, WorkerHandle> = HashMap::new();
    let mut listing: Option<HashSet<String>> = None;
    let mut cleaned = false;
    let mut reap = tokio::time::interval(Duration::from_secs(5));
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = reap.tick() => {
                workers.retain(|_, worker| !worker.task.is_finished());
                continue;
            }
            event = events.next() => event,
        };
        let event = match event {
            None => break,
            Some(Err(err)) => {
                warn!(error = %err, "watching pods");
                continue;
            }
            Some(Ok(event)) => event,
        };
        match event {
            Event::Init => listing = Some(HashSet::new()),
            Event::InitApply(pod) => {
                if let (Some(seen), Some(uid)) = (listing.as_mut(), pod.metadata.uid.clone()) {
                    seen.insert(uid);
                }
                dispatch(
                    &kubelet,
                    &mut workers,
                    &mut adoptable,
                    pod,
                    false,
                    &workers_token,
                );
            }
            Event::InitDone => {
                let seen = listing.take().unwrap_or_default();
                // Pods deleted while the watch was down.
                for (uid, worker) in &workers {
                    if !seen.contains(uid) {
                        let mut update = worker.updates.borrow().clone();
                        update.removed = true;
                        worker.updates.send_replace(update);
                    }
                }
                if !cleaned {
                    cleaned = true;
                    remove_orphans(&kubelet, &seen, std::mem::take(&mut adoptable)).await;
                }
            }
            Event::Apply(pod) => dispatch(
                &kubelet,
                &mut workers,
                &mut adoptable,
                pod,
                false,
                &workers_token,
            ),
            Event::Delete(pod) => dispatch(
                &kubelet,
                &mut workers,
                &mut adoptable,
                pod,
                true,
                &workers_token,
            ),
        }
    }
    workers_token.cancel();
    for (_, worker) in workers {
        let _ = tokio::time::timeout(WORKER_STOP, worker.task).await;
    }
}

/// Hands a pod to its worker, starting one when needed.
fn dispatch(
    kubelet: &Kubelet,
    workers: &mut HashMap<String, WorkerHandle>,
    adoptable: &mut HashMap<String, Vec<ContainerStatus>>,
    pod: Pod,
    removed: bool,
    token: &CancellationToken,
) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    if let Some(worker) = workers.get(&uid).filter(|w| !w.task.is_finished()) {
        let removed = removed || worker.updates.borrow().removed;
        worker.updates.send_replace(PodUpdate { pod, removed });
        return;
    }
    if removed && !adoptable.contains_key(&uid) && workers.contains_key(&uid) {
        // Its worker already cleaned up and deleted it.
        return;
    }
    let adopted = adoptable.remove(&uid).unwrap_or_default();
    let worker = pod_worker::spawn(kubelet.clone(), pod, removed, adopted, token.child_token());
    workers.insert(uid, worker);
}

/// Removes containers and sandboxes of pods that no longer exist.
async fn remove_orphans(
    kubelet: &Kubelet,
    live: &HashSet<String>,
    leftovers: HashMap<String, Vec<ContainerStatus>>,
) {
    for (uid, containers) in leftovers {
        if live.contains(&uid) {
            continue;
        }
        info!(uid = %uid, containers = containers.len(), "removing the containers of a pod that is gone");
        for container in containers {
            if let Err(err) = kubelet.runtime.stop(&container.id, Duration::ZERO).await {
                warn!(container = %container.id, error = %err, "stopping an orphaned container");
            }
            if let Err(err) = kubelet.runtime.remove(&container.id).await {
                warn!(container = %container.id, error = %err, "removing an orphaned container");
            }
        }
        if let Err(err) = kubelet.volumes.teardown(&uid).await {
            warn!(uid = %uid, error = %err, "removing an orphaned pod's volumes");
        }
        if let Err(err) =
            sandbox::remove(&uid, &kubelet.config.pods_root, kubelet.network.as_deref()).await
        {
            warn!(uid = %uid, error = %err, "removing an orphaned sandbox");
        }
    }
    // Pod directories left behind without containers.
    if let Ok(entries) = std::fs::read_dir(&kubelet.config.pods_root) {
        for entry in entries.flatten() {
            let uid = entry.file_name().to_string_lossy().into_owned();
            if !live.contains(&uid) {
                if let Err(err) = kubelet.volumes.teardown(&uid).await {
                    warn!(uid = %uid, error = %err, "removing an orphaned pod's volumes");
                    continue;
                }
                if let Err(err) =
                    sandbox::remove(&uid, &kubelet.config.pods_root, kubelet.network.as_deref())
                        .await
                {
                    warn!(uid = %uid, error = %err, "removing an orphaned pod directory");
                }
            }
        }
    }
    if let Some(network) = &kubelet.network {
        if let Err(err) = network.garbage_collect(live).await {
            warn!(error = %err, "collecting orphaned pod networks");
        }
    }
}
