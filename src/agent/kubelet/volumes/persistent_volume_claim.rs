//! persistentVolumeClaim volumes bound to hostPath or local PersistentVolumes: the claim's PV's
//! path on this node.
//!
//! Owns resolving claim → volume → path and remembering that path for the pod
//! (`<volumes>/kubernetes.io~pvc/<name>` holds it); must not create or remove data on the PV.

use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimVolumeSource,
};
use kube::Api;

pub const PLUGIN: &str = "kubernetes.io~pvc";

/// Why a claim cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("persistentvolumeclaim \"{0}\" not found")]
    ClaimNotFound(String),
    #[error("persistentvolumeclaim \"{0}\" is not bound")]
    NotBound(String),
    #[error("persistentvolume \"{0}\" not found")]
    VolumeNotFound(String),
    #[error(
        "persistentvolume \"{0}\" is neither hostPath nor local, which this node cannot mount"
    )]
    Unsupported(String),
    #[error("path {path} of persistentvolume \"{volume}\" does not exist")]
    MissingPath { volume: String, path: String },
    #[error("couldn't get {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("remembering the path of claim volume {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The host path of the claim's bound hostPath/local PersistentVolume.
pub async fn resolve(
    client: &kube::Client,
    namespace: &str,
    source: &PersistentVolumeClaimVolumeSource,
) -> Result<PathBuf, ClaimError> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let claim = claims
        .get_opt(&source.claim_name)
        .await
        .map_err(|source_err| ClaimError::Api {
            what: format!("persistentvolumeclaim {namespace}/{}", source.claim_name),
            source: source_err,
        })?
        .ok_or_else(|| ClaimError::ClaimNotFound(source.claim_name.clone()))?;
    let volume_name = claim
        .spec
        .and_then(|s| s.volume_name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ClaimError::NotBound(source.claim_name.clone()))?;
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let volume = volumes
        .get_opt(&volume_name)
        .await
        .map_err(|source_err| ClaimError::Api {
            what: format!("persistentvolume {volume_name}"),
            source: source_err,
        })?
        .ok_or_else(|| ClaimError::VolumeNotFound(volume_name.clone()))?;
    let spec = volume.spec.unwrap_or_default();
    let path = if let Some(host_path) = spec.host_path {
        super::host_path::set_up(&host_path).map_err(|_| ClaimError::MissingPath {
            volume: volume_name.clone(),
            path: host_path.path.clone(),
        })?;
        host_path.path
    } else if let Some(local) = spec.local {
        local.path
    } else {
        return Err(ClaimError::Unsupported(volume_name));
    };
    if !Path::new(&path).exists() {
        return Err(ClaimError::MissingPath {
            volume: volume_name,
            path,
        });
    }
    Ok(PathBuf::from(path))
}

/// Records the resolved path for [`cached_path`].
pub fn remember_path(volumes_dir: &Path, volume: &str, path: &Path) -> Result<(), ClaimError> {
    let dir = volumes_dir.join(PLUGIN);
    let file = dir.join(volume);
    fs::create_dir_all(&dir)
        .and_then(|()| fs::write(&file, path.as_os_str().as_encoded_bytes()))
        .map_err(|source| ClaimError::Io { path: file, source })
}

/// The path [`remember_path`] recorded for the pod's volume.
pub fn cached_path(volumes_dir: &Path, volume: &str) -> Option<PathBuf> {
    let text = fs::read_to_string(volumes_dir.join(PLUGIN).join(volume)).ok()?;
    Some(PathBuf::from(text))
}
