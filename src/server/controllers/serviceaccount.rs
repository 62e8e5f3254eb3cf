//! Every active namespace gets a `default` ServiceAccount (pkg/controller/serviceaccount) and
//! the `kube-root-ca.crt` ConfigMap holding the cluster CA (pkg/controller/certificates/
//! rootcacertpublisher); both are recreated when deleted and the ConfigMap is reset when its
//! `ca.crt` differs.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::resync::{self, Caches, ReconcileError};
use super::Context;

pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";

/// Starts the loop.
pub fn start(context: Context, cancel: CancellationToken) -> BoxFuture<'static, ()> {
    run(context, cancel).boxed()
}

async fn run(context: Context, cancel: CancellationToken) {
    let mut caches = Caches::default();
    let client = &context.client;
    let namespaces = caches.cache(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    );
    let accounts = caches.cache(
        Api::<ServiceAccount>::all(client.clone()),
        watcher::Config::default().fields("metadata.name=default"),
    );
    let configmaps = caches.cache(
        Api::<ConfigMap>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={ROOT_CA_CONFIGMAP}")),
    );
    resync::drive(caches, cancel, Duration::from_secs(60), || {
        let (context, namespaces, accounts, configmaps) = (
            context.clone(),
            namespaces.clone(),
            accounts.clone(),
            configmaps.clone(),
        );
        async move { reconcile(&context, &namespaces, &accounts, &configmaps).await }
    })
    .await;
}

async fn reconcile(
    context: &Context,
    namespaces: &Store<Namespace>,
    accounts: &Store<ServiceAccount>,
    configmaps: &Store<ConfigMap>,
) -> Result<Option<Duration>, ReconcileError> {
    let with_account: BTreeSet<String> = accounts
        .state()
        .iter()
        .filter_map(|a| a.metadata.namespace.clone())
        .collect();
    let pem = &context.config.ca_cert_pem;
    let mut first_error = None;
    for namespace in namespaces.state() {
        let Some(ns) = namespace.metadata.name.clone() else {
            continue;
        };
        let terminating = namespace.metadata.deletion_timestamp.is_some()
            || namespace.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
        if terminating {
            continue;
        }
        if !with_account.contains(&ns) {
            let api = Api::<ServiceAccount>::namespaced(context.client.clone(), &ns);
            let account: ServiceAccount = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "default", "namespace": ns},
            }))?;
            if let Err(err) =
                resync::tolerate(api.create(&PostParams::default(), &account).await, true)
            {
                first_error.get_or_insert(err);
            }
        }
        let current = configmaps
            .state()
            .into_iter()
            .find(|c| c.metadata.namespace.as_deref() == Some(ns.as_str()));
        let api = Api::<ConfigMap>::namespaced(context.client.clone(), &ns);
        let result = match current {
            None => {
                let configmap: ConfigMap = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": ROOT_CA_CONFIGMAP, "namespace": ns,
                        "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
                    "data": {"ca.crt": pem},
                }))?;
                resync::tolerate(api.create(&PostParams::default(), &configmap).await, true)
            }
            Some(current) => {
                let held = current.data.as_ref().and_then(|d| d.get("ca.crt"));
                if held == Some(pem) {
                    continue;
                }
                let mut next = current.as_ref().clone();
                next.data
                    .get_or_insert_with(Default::default)
                    .insert("ca.crt".into(), pem.clone());
                resync::tolerate(
                    api.replace(ROOT_CA_CONFIGMAP, &PostParams::default(), &next)
                        .await,
                    true,
                )
            }
        };
        if let Err(err) = result {
            first_error.get_or_insert(err);
        }
    }
    match first_error {
        Some(err) => Err(err.into()),
        None => Ok(None),
    }
}
