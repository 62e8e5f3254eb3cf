//! Pod volumes: prepares each volume of a pod on the node's disk, resolves the mounts of each
//! container (subPath, readOnly), follows ConfigMap/Secret/downward API changes atomically, and
//! removes it all when the pod goes.
//!
//! Layout: `<pods_root>/<pod uid>/volumes/<plugin>/<volume name>`, with kubelet's plugin
//! directory names (`kubernetes.io~empty-dir`, `kubernetes.io~configmap`, …). hostPath and
//! persistentVolumeClaim volumes (hostPath/local PVs) use the host's path directly.
//!
//! Owns those directories and the tmpfs mounts of `medium: Memory` emptyDirs. Must not touch
//! containers, the pod's status or anything outside the pod's directory except creating hostPath
//! paths a `…OrCreate` type asks for. Each plugin is its own module.
//!
//! # Caveats
//! - `fsGroup` ownership and `subPathExpr` are not applied.
//! - projected `serviceAccountToken` needs the API server's `serviceaccounts/<name>/token`
//!   (TokenRequest); without it the volume fails to set up with the server's error.

pub mod atomic_writer;
pub mod config_map;
pub mod downward_api;
pub mod empty_dir;
pub mod host_path;
pub mod persistent_volume_claim;
pub mod projected;
pub mod secret;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Container, Pod, Volume};

use crate::agent::runtime::container::spec::Mount;

/// Why a volume could not be prepared, mounted or removed. Display reads as kubelet's
/// `FailedMount` event message.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("MountVolume.SetUp failed for volume \"{volume}\" : {message}")]
    SetUp { volume: String, message: String },
    #[error("unable to find volume \"{volume}\" for container \"{container}\"")]
    UnknownVolume { volume: String, container: String },
    #[error("invalid subPath {sub_path:?} of volume \"{volume}\": {reason}")]
    SubPath {
        volume: String,
        sub_path: String,
        reason: String,
    },
    #[error("pod has no uid")]
    NoUid,
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl VolumeError {
    fn set_up(volume: &str, message: impl std::fmt::Display) -> Self {
        VolumeError::SetUp {
            volume: volume.to_string(),
            message: message.to_string(),
        }
    }
}

pub(crate) fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> VolumeError + 'a {
    move |source| VolumeError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A projected service account token kept until it is 80 % through its lifetime.
#[derive(Debug, Clone)]
pub struct CachedToken {
    pub token: String,
    pub refresh_at: std::time::Instant,
}

/// Service account tokens of projected volumes by (pod uid, volume, path).
pub type TokenCache = Mutex<HashMap<(String, String, String), CachedToken>>;

/// Prepares, resolves, refreshes and removes pod volumes. Cheap to clone.
#[derive(Clone)]
pub struct VolumeManager {
    client: kube::Client,
    pods_root: PathBuf,
    /// (pod uid, volume, path) → token, for projected serviceAccountToken sources.
    tokens: Arc<TokenCache>,
}

impl std::fmt::Debug for VolumeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeManager")
            .field("pods_root", &self.pods_root)
            .finish()
    }
}

/// Where a volume's contents are on the host, and whether the volume itself is read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumePath {
    pub path: PathBuf,
    pub read_only: bool,
}

impl VolumeManager {
    /// `pods_root` = `<data-dir>/agent/pods`; volumes live under
    /// `<pods_root>/<uid>/volumes/<plugin>/<name>`.
    pub fn new(client: kube::Client, pods_root: PathBuf) -> VolumeManager {
        VolumeManager {
            client,
            pods_root,
            tokens: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// `<pods_root>/<uid>/volumes`.
    pub fn volumes_dir(&self, pod_uid: &str) -> PathBuf {
        self.pods_root.join(pod_uid).join("volumes")
    }

    fn plugin_dir(&self, pod_uid: &str, plugin: &str, name: &str) -> PathBuf {
        self.volumes_dir(pod_uid).join(plugin).join(name)
    }

    /// Idempotent: prepares every volume of the pod (fetches configMaps/secrets, mounts tmpfs, …).
    pub async fn setup(&self, pod: &Pod) -> Result<(), VolumeError> {
        let uid = pod_uid(pod)?;
        for volume in pod_volumes(pod) {
            self.setup_volume(pod, &uid, volume).await?;
        }
        Ok(())
    }

    async fn setup_volume(&self, pod: &Pod, uid: &str, volume: &Volume) -> Result<(), VolumeError> {
        let name = volume.name.as_str();
        if let Some(source) = &volume.empty_dir {
            let dir = self.plugin_dir(uid, empty_dir::PLUGIN, name);
            return empty_dir::set_up(&dir, source).map_err(|e| VolumeError::set_up(name, e));
        }
        if let Some(source) = &volume.host_path {
            return host_path::set_up(source).map_err(|e| VolumeError::set_up(name, e));
        }
        if let Some(source) = &volume.persistent_volume_claim {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            let path = persistent_volume_claim::resolve(&self.client, namespace, source)
                .await
                .map_err(|e| VolumeError::set_up(name, e))?;
            return persistent_volume_claim::remember_path(&self.volumes_dir(uid), name, &path)
                .map_err(|e| VolumeError::set_up(name, e));
        }
        if self.is_refreshable(volume) {
            return self.write_refreshable(pod, uid, volume).await;
        }
        Err(VolumeError::set_up(name, "unsupported volume type"))
    }

    fn is_refreshable(&self, volume: &Volume) -> bool {
        volume.config_map.is_some()
            || volume.secret.is_some()
            || volume.downward_api.is_some()
            || volume.projected.is_some()
    }

    /// Builds the payload of a configMap/secret/downwardAPI/projected volume and writes it with
    /// the atomic writer.
    async fn write_refreshable(
        &self,
        pod: &Pod,
        uid: &str,
        volume: &Volume,
    ) -> Result<(), VolumeError> {
        let name = volume.name.as_str();
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let (plugin, payload) = if let Some(source) = &volume.config_map {
            let payload = config_map::payload(&self.client, namespace, source)
                .await
                .map_err(|e| VolumeError::set_up(name, e))?;
            (config_map::PLUGIN, payload)
        } else if let Some(source) = &volume.secret {
            let payload = secret::payload(&self.client, namespace, source)
                .await
                .map_err(|e| VolumeError::set_up(name, e))?;
            (secret::PLUGIN, payload)
        } else if let Some(source) = &volume.downward_api {
            let payload = downward_api::payload(
                &self.client,
                pod,
                source.items.as_deref().unwrap_or_default(),
                source.default_mode.unwrap_or(downward_api::DEFAULT_MODE),
            )
            .await
            .map_err(|e| VolumeError::set_up(name, e))?;
            (downward_api::PLUGIN, payload)
        } else if let Some(source) = &volume.projected {
            let payload = projected::payload(&self.client, pod, name, source, &self.tokens)
                .await
                .map_err(|e| VolumeError::set_up(name, e))?;
            (projected::PLUGIN, payload)
        } else {
            return Ok(());
        };
        let dir = self.plugin_dir(uid, plugin, name);
        atomic_writer::write(&dir, &payload).map_err(|e| VolumeError::set_up(name, e))?;
        Ok(())
    }

    /// Where one volume of the pod lives on the host.
    pub fn volume_path(&self, pod: &Pod, volume: &Volume) -> Result<VolumePath, VolumeError> {
        let uid = pod_uid(pod)?;
        let name = volume.name.as_str();
        let in_pod = |plugin: &str, read_only: bool| VolumePath {
            path: self.plugin_dir(&uid, plugin, name),
            read_only,
        };
        if volume.empty_dir.is_some() {
            return Ok(in_pod(empty_dir::PLUGIN, false));
        }
        if let Some(source) = &volume.host_path {
            return Ok(VolumePath {
                path: PathBuf::from(&source.path),
                read_only: false,
            });
        }
        if let Some(source) = &volume.persistent_volume_claim {
            let path = persistent_volume_claim::cached_path(&self.volumes_dir(&uid), name)
                .ok_or_else(|| {
                    VolumeError::set_up(name, "persistent volume claim is not set up")
                })?;
            return Ok(VolumePath {
                path,
                read_only: source.read_only == Some(true),
            });
        }
        // The API-backed volumes are always mounted read-only, as kubelet does.
        if volume.config_map.is_some() {
            return Ok(in_pod(config_map::PLUGIN, true));
        }
        if volume.secret.is_some() {
            return Ok(in_pod(secret::PLUGIN, true));
        }
        if volume.downward_api.is_some() {
            return Ok(in_pod(downward_api::PLUGIN, true));
        }
        if volume.projected.is_some() {
            return Ok(in_pod(projected::PLUGIN, true));
        }
        Err(VolumeError::set_up(name, "unsupported volume type"))
    }

    /// The mounts of one container (subPath, readOnly resolved), in the runtime's type.
    pub fn mounts(&self, pod: &Pod, container: &Container) -> Result<Vec<Mount>, VolumeError> {
        let mut out = Vec::new();
        for mount in container.volume_mounts.iter().flatten() {
            let volume = pod_volumes(pod)
                .find(|v| v.name == mount.name)
                .ok_or_else(|| VolumeError::UnknownVolume {
                    volume: mount.name.clone(),
                    container: container.name.clone(),
                })?;
            let base = self.volume_path(pod, volume)?;
            let host_path = match mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub_path) => resolve_sub_path(&base.path, &mount.name, sub_path)?,
                None => base.path.clone(),
            };
            out.push(Mount {
                container_path: mount.mount_path.clone(),
                host_path,
                read_only: base.read_only || mount.read_only == Some(true),
            });
        }
        Ok(out)
    }

    /// Re-reads configMap/secret/downwardAPI/projected sources and swaps contents atomically.
    pub async fn refresh(&self, pod: &Pod) -> Result<(), VolumeError> {
        let uid = pod_uid(pod)?;
        for volume in pod_volumes(pod) {
            if self.is_refreshable(volume) {
                self.write_refreshable(pod, &uid, volume).await?;
            }
        }
        Ok(())
    }

    /// Unmounts and removes everything of the pod. Idempotent.
    pub async fn teardown(&self, pod_uid: &str) -> Result<(), VolumeError> {
        if pod_uid.is_empty() || pod_uid.contains('/') || pod_uid == "." || pod_uid == ".." {
            return Err(VolumeError::NoUid);
        }
        let dir = self.volumes_dir(pod_uid);
        empty_dir::unmount_all_under(&dir)?;
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", &dir)(e)),
        }
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.retain(|(uid, _, _), _| uid != pod_uid);
        }
        // The pod directory itself goes when nothing else is left in it.
        let _ = fs::remove_dir(self.pods_root.join(pod_uid));
        Ok(())
    }
}

fn pod_uid(pod: &Pod) -> Result<String, VolumeError> {
    match pod.metadata.uid.as_deref() {
        Some(uid) if !uid.is_empty() && !uid.contains('/') && uid != "." && uid != ".." => {
            Ok(uid.to_string())
        }
        _ => Err(VolumeError::NoUid),
    }
}

fn pod_volumes(pod: &Pod) -> impl Iterator<Item = &Volume> {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
}

/// `<volume>/<subPath>`, refused when the subPath is absolute, has a `..` component, or (after
/// following symlinks) leaves the volume. A missing subPath is created as a directory, as
/// kubelet does.
pub fn resolve_sub_path(base: &Path, volume: &str, sub_path: &str) -> Result<PathBuf, VolumeError> {
    let refuse = |reason: &str| VolumeError::SubPath {
        volume: volume.to_string(),
        sub_path: sub_path.to_string(),
        reason: reason.to_string(),
    };
    let relative = Path::new(sub_path);
    if relative.is_absolute() {
        return Err(refuse("must be a relative path"));
    }
    if relative
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(refuse("must not contain '..'"));
    }
    let real_base = fs::canonicalize(base).map_err(io_err("resolving", base))?;
    // Walk the subPath one element at a time: every existing prefix must resolve inside the
    // volume before anything below it is created (a symlink must not lead the mkdir outside).
    let mut current = base.to_path_buf();
    for component in relative.components() {
        let Component::Normal(element) = component else {
            continue;
        };
        current.push(element);
        if fs::symlink_metadata(&current).is_err() {
            fs::create_dir(&current).map_err(io_err("creating subPath", &current))?;
        }
        let real = fs::canonicalize(&current).map_err(io_err("resolving subPath", &current))?;
        // Entries of an atomic-writer volume resolve into its `..data` directory, still inside.
        if !real.starts_with(&real_base) {
            return Err(refuse("resolves outside the volume"));
        }
    }
    let full = base.join(relative);
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_paths_stay_inside_the_volume() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().join("vol");
        fs::create_dir_all(&base).expect("mkdir");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(&outside).expect("mkdir");
        std::os::unix::fs::symlink(&outside, base.join("escape")).expect("symlink");
        std::os::unix::fs::symlink("inner", base.join("ok-link")).expect("symlink");
        fs::create_dir_all(base.join("inner")).expect("mkdir");

        assert_eq!(
            resolve_sub_path(&base, "v", "a/b").expect("created"),
            base.join("a/b")
        );
        assert!(base.join("a/b").is_dir());
        assert!(resolve_sub_path(&base, "v", "ok-link").is_ok());
        for bad in ["/etc", "../x", "a/../../x", "escape", "escape/deeper"] {
            let err = resolve_sub_path(&base, "v", bad);
            assert!(
                matches!(err, Err(VolumeError::SubPath { .. })),
                "{bad}: {err:?}"
            );
        }
        // Refusing did not create anything outside.
        assert!(!outside.join("deeper").exists());
    }
}
