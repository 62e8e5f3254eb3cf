//! secret volumes: the Secret's keys (or the chosen `items`) as files, with `defaultMode`/`mode`,
//! written by the atomic writer so updates appear at once.
//!
//! Owns building the payload; must not write files itself.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Secret, SecretVolumeSource};
use kube::Api;

use super::atomic_writer::Payload;
use super::config_map::{project, ProjectionError};

pub const PLUGIN: &str = "kubernetes.io~secret";
/// kubelet's `SecretVolumeSourceDefaultMode` (0644).
pub const DEFAULT_MODE: i32 = 0o644;

/// The payload of a secret volume; an absent optional Secret gives an empty payload.
pub async fn payload(
    client: &kube::Client,
    namespace: &str,
    source: &SecretVolumeSource,
) -> Result<Payload, ProjectionError> {
    let name = source.secret_name.clone().unwrap_or_default();
    let optional = source.optional == Some(true);
    match fetch(client, namespace, &name, optional).await? {
        None => Ok(Payload::new()),
        Some(data) => project(
            &data,
            source.items.as_deref(),
            source.default_mode.unwrap_or(DEFAULT_MODE),
            optional,
            ProjectionError::SecretKey,
        ),
    }
}

/// The Secret's data (stringData merged, as the API server would); `None` when absent and
/// optional.
pub(super) async fn fetch(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    optional: bool,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, ProjectionError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let found = api
        .get_opt(name)
        .await
        .map_err(|source| ProjectionError::Api {
            what: format!("secret {namespace}/{name}"),
            source,
        })?;
    match found {
        None if optional => Ok(None),
        None => Err(ProjectionError::SecretNotFound(name.to_string())),
        Some(secret) => {
            let mut data: BTreeMap<String, Vec<u8>> = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            for (k, v) in secret.string_data.unwrap_or_default() {
                data.insert(k, v.into_bytes());
            }
            Ok(Some(data))
        }
    }
}
