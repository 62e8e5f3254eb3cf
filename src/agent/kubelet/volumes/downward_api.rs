//! downwardAPI volumes (and the downwardAPI source of projected volumes): pod fields and
//! container resources as files.
//!
//! Owns building the payload; must not write files itself.

use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, Pod};

use super::atomic_writer::{FileProjection, Payload};
use crate::agent::kubelet::env::{self, EnvError};

pub const PLUGIN: &str = "kubernetes.io~downward-api";
/// kubelet's `DownwardAPIVolumeSourceDefaultMode` (0644).
pub const DEFAULT_MODE: i32 = 0o644;

/// Why a downward API file cannot be produced.
#[derive(Debug, thiserror::Error)]
pub enum DownwardApiError {
    #[error(transparent)]
    Field(#[from] EnvError),
    #[error("container \"{0}\" not found in the pod for resourceFieldRef")]
    NoContainer(String),
}

/// One file per item: `fieldRef` values as the env var would read them (maps as sorted
/// `key="value"` lines), `resourceFieldRef` of the named container (limits default to the node's
/// allocatable).
pub async fn payload(
    client: &kube::Client,
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: i32,
) -> Result<Payload, DownwardApiError> {
    let mut payload = Payload::new();
    let mut allocatable = None;
    let pod_ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default();
    let pod_ips: Vec<String> = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .map(|ip| ip.ip.clone())
        .collect();
    let host_ip = pod
        .status
        .as_ref()
        .and_then(|s| s.host_ip.clone())
        .unwrap_or_default();
    for item in items {
        let value = if let Some(field) = &item.field_ref {
            env::field_ref_value(pod, field, &pod_ip, &pod_ips, &host_ip)?
        } else if let Some(resource) = &item.resource_field_ref {
            let name = resource.container_name.clone().unwrap_or_default();
            let container = pod
                .spec
                .as_ref()
                .into_iter()
                .flat_map(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                })
                .find(|c| c.name == name)
                .ok_or_else(|| DownwardApiError::NoContainer(name.clone()))?;
            if allocatable.is_none() {
                allocatable = Some(env::node_allocatable(client, pod).await?);
            }
            let alloc = allocatable.clone().unwrap_or_default();
            env::resource_field_value(resource, container, &alloc)?
        } else {
            continue;
        };
        payload.insert(
            item.path.clone(),
            FileProjection {
                data: value.into_bytes(),
                mode: (item.mode.unwrap_or(default_mode) as u32) & 0o7777,
            },
        );
    }
    Ok(payload)
}
