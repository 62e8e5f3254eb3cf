//! Images: pull (OCI distribution, registries.yaml), import (airgap archives), unpack into
//! snapshots shared through overlayfs, list, remove, garbage-collect.
//!
//! # For the container side
//! [`ImageService::ensure`] is the one call a container needs: it returns an [`Image`] whose
//! [`Image::rootfs`] are the overlayfs lower directories (uppermost first, see
//! [`snapshot::overlay_lowerdir`] and [`snapshot::mount_overlay`]) and whose [`Image::config`]
//! has the entrypoint, command, environment, user and working directory. The directories stay
//! until the image is removed; pass the IDs of images in use to [`ImageService::remove`] and
//! [`ImageService::gc`] so that they never are.
//!
//! # On disk (`<data-dir>/agent/runtime`)
//! - `content/blobs/sha256/<hex>`: verified blobs (manifests, configs, compressed layers);
//!   `content/ingest/`: downloads in progress ([`content`]);
//! - `snapshots/<chain-id hex>/fs`: one unpacked layer each ([`snapshot`]);
//! - `images.json` (+ `images.lock`): the image records ([`metadata`]).
//!
//! Airgap archives are read from `<data-dir>/agent/images/` ([`ImageService::import_dir`]).
//!
//! # Guarantees
//! - Concurrent pulls of one reference share one resolution and one download; concurrent
//!   downloads of one blob (two images sharing a layer) share one transfer; a layer is unpacked
//!   once per chain ID in this process (and harmlessly twice across processes: the first
//!   rename wins).
//! - Every blob is verified against its digest, every layer against its diff ID.
//! - An image is recorded only after all its blobs and snapshots exist.

pub mod airgap;
pub mod command;
pub mod content;
pub mod digest;
pub mod gc;
pub mod manifest;
pub mod metadata;
pub mod pull;
pub mod reference;
pub mod registries;
pub mod snapshot;
pub mod unpack;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::{BoxFuture, FutureExt as _, Shared};
use futures::{StreamExt as _, TryStreamExt as _};
use tracing::Instrument as _;

use self::content::{ContentError, ContentStore, Lease};
use self::digest::Digest;
use self::manifest::{ConfigFile, Descriptor, Manifest, Platform};
use self::metadata::{ImageRecord, Metadata, MetadataError};
use self::pull::{PullError, RegistryClient};
use self::reference::{Reference, ReferenceError};
use self::registries::Registries;
use self::snapshot::{SnapshotError, Snapshots};
use self::unpack::{UnpackError, UnpackOptions};

/// Layers downloaded at once per image.
const CONCURRENT_DOWNLOADS: usize = 3;

/// When to pull, as a container's `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Always ask the registry what the reference names now (blobs already here are not
    /// downloaded again).
    Always,
    /// Pull only when no image of that name is here.
    IfNotPresent,
    /// Never pull: fail when the image is not here.
    Never,
}

/// Everything that can go wrong with images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error("image {0} is not present and the pull policy is Never")]
    NeverPull(String),
    #[error("image {0} not found")]
    NotFound(String),
    #[error("image {reference} is in use by a container")]
    InUse { reference: String },
    #[error("{0}")]
    Ambiguous(String),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("layer {layer}: {source}")]
    Unpack {
        layer: Digest,
        #[source]
        source: UnpackError,
    },
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error(transparent)]
    Airgap(#[from] airgap::AirgapError),
    #[error("image config {digest} is not valid: {message}")]
    Config { digest: Digest, message: String },
    #[error("{what}: {message}")]
    Io { what: String, message: String },
    /// The same failure, seen by a caller that shared another caller's pull.
    #[error("{0}")]
    Shared(Arc<ImageError>),
}

impl From<Arc<ImageError>> for ImageError {
    fn from(shared: Arc<ImageError>) -> ImageError {
        Arc::try_unwrap(shared).unwrap_or_else(ImageError::Shared)
    }
}

/// The parts of an image's configuration a container runtime uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    /// `user`, `uid`, `user:group`, `uid:gid` or empty (root).
    pub user: String,
    /// Empty means `/`.
    pub working_dir: String,
    /// `80/tcp`…
    pub exposed_ports: Vec<String>,
    pub volumes: Vec<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub stop_signal: Option<String>,
    pub os: String,
    pub architecture: String,
}

impl From<&ConfigFile> for ImageConfig {
    fn from(file: &ConfigFile) -> ImageConfig {
        let run = file.config.clone().unwrap_or_default();
        ImageConfig {
            entrypoint: run.entrypoint.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
            env: run.env.unwrap_or_default(),
            user: run.user.unwrap_or_default(),
            working_dir: run.working_dir.unwrap_or_default(),
            exposed_ports: run.exposed_ports.unwrap_or_default().into_keys().collect(),
            volumes: run.volumes.unwrap_or_default().into_keys().collect(),
            labels: run.labels.unwrap_or_default(),
            stop_signal: run.stop_signal,
            os: file.os.clone(),
            architecture: file.architecture.clone(),
        }
    }
}

/// An image ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The image ID: its config's digest (what the kubelet reports as `imageID`'s tail).
    pub id: Digest,
    pub names: Vec<String>,
    pub repo_digests: Vec<String>,
    pub config: ImageConfig,
    /// Overlayfs lower directories, uppermost first.
    pub rootfs: Vec<PathBuf>,
    /// Bytes of its blobs.
    pub size: u64,
    /// Milliseconds since the epoch.
    pub last_used: u64,
}

/// What the collector did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub removed: Vec<Digest>,
    pub bytes_to_free: u64,
    pub bytes_freed: u64,
}

/// Counters, for logs and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Blob downloads started (one per distinct blob however many pulls want it).
    pub blob_downloads: AtomicU64,
    pub bytes_downloaded: AtomicU64,
    pub layers_unpacked: AtomicU64,
}

/// How to open the service.
#[derive(Debug, Clone)]
pub struct ImageServiceConfig {
    /// `<data-dir>/agent/runtime`.
    pub root: PathBuf,
    pub registries: Registries,
    /// The platform to pick from image indexes.
    pub platform: Platform,
    /// Apply ownership, device nodes and overlay whiteouts (needs root).
    pub privileged: bool,
}

impl ImageServiceConfig {
    /// The defaults for a data directory's `agent/runtime`.
    pub fn new(root: &Path, registries: Registries) -> ImageServiceConfig {
        ImageServiceConfig {
            root: root.to_path_buf(),
            registries,
            platform: Platform::current(),
            privileged: unpack::running_as_root(),
        }
    }
}

type SharedPull = Shared<BoxFuture<'static, Result<Image, Arc<ImageError>>>>;
type SharedFetch = Shared<BoxFuture<'static, Result<(), Arc<ImageError>>>>;

/// The image service. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct ImageService {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    content: Arc<ContentStore>,
    snapshots: Snapshots,
    metadata: Metadata,
    client: RegistryClient,
    privileged: bool,
    pulls: Mutex<HashMap<String, SharedPull>>,
    fetches: Mutex<HashMap<Digest, SharedFetch>>,
    unpacking: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    stats: Stats,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageService")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the epoch (seconds would tie images used within one second).
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ImageService {
    /// Opens (creating) the store under `config.root`.
    pub fn open(config: ImageServiceConfig) -> Result<ImageService, ImageError> {
        let content = Arc::new(ContentStore::open(&config.root.join("content"))?);
        let snapshots = Snapshots::open(&config.root.join("snapshots"))?;
        let metadata = Metadata::open(&config.root)?;
        let service = ImageService {
            inner: Arc::new(Inner {
                root: config.root,
                content,
                snapshots,
                metadata,
                client: RegistryClient::new(config.registries, config.platform),
                privileged: config.privileged,
                pulls: Mutex::new(HashMap::new()),
                fetches: Mutex::new(HashMap::new()),
                unpacking: Mutex::new(HashMap::new()),
                stats: Stats::default(),
            }),
        };
        service.rebuild_refs(&service.inner.metadata.load()?);
        Ok(service)
    }

    /// Start-up housekeeping for the agent (not for a second process such as `cluster images`):
    /// drops interrupted downloads and unpacks, and blobs no image references.
    pub fn recover(&self) -> Result<(), ImageError> {
        self.inner.content.clean_ingest()?;
        self.inner.snapshots.clean_partial()?;
        let deleted = self.inner.content.sweep()?;
        if !deleted.is_empty() {
            tracing::info!(blobs = deleted.len(), "removed blobs no image references");
        }
        Ok(())
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// The content store (for tests and diagnostics).
    pub fn content(&self) -> &ContentStore {
        &self.inner.content
    }

    /// The snapshot store (for tests and diagnostics).
    pub fn snapshots(&self) -> &Snapshots {
        &self.inner.snapshots
    }

    /// The image for `reference`, pulled according to `policy`.
    pub async fn ensure(&self, reference: &str, policy: PullPolicy) -> Result<Image, ImageError> {
        let parsed = Reference::parse(reference)?;
        if policy != PullPolicy::Always {
            if let Some(image) = self.find(&parsed.to_string())? {
                self.touch(&image.id)?;
                return Ok(image);
            }
            if policy == PullPolicy::Never {
                return Err(ImageError::NeverPull(parsed.to_string()));
            }
        }
        self.pull(reference).await
    }

    /// Pulls `reference` (sharing the work with concurrent pulls of the same reference).
    pub async fn pull(&self, reference: &str) -> Result<Image, ImageError> {
        let parsed = Reference::parse(reference)?;
        let key = parsed.to_string();
        let shared = {
            let mut pulls = lock(&self.inner.pulls);
            match pulls.get(&key) {
                Some(shared) => shared.clone(),
                None => {
                    let service = self.clone();
                    let key_for_task = key.clone();
                    let span = tracing::info_span!("pull", image = %key);
                    let future = async move {
                        let result = service
                            .pull_uncached(parsed)
                            .instrument(span)
                            .await
                            .map_err(Arc::new);
                        lock(&service.inner.pulls).remove(&key_for_task);
                        result
                    }
                    .boxed()
                    .shared();
                    pulls.insert(key, future.clone());
                    future
                }
            }
        };
        shared.await.map_err(ImageError::from)
    }

    async fn pull_uncached(&self, reference: Reference) -> Result<Image, ImageError> {
        let inner = &self.inner;
        let resolved = inner.client.resolve(&reference).await?;
        resolved.manifest.check_layers()?;
        let mut lease = inner
            .content
            .lease(std::slice::from_ref(&resolved.manifest_digest));
        if let Some((digest, bytes)) = &resolved.index {
            lease.add(std::slice::from_ref(digest));
            inner.content.insert(digest, bytes)?;
        }
        inner
            .content
            .insert(&resolved.manifest_digest, &resolved.manifest_bytes)?;
        let mut wanted = vec![resolved.manifest.config.clone()];
        wanted.extend(resolved.manifest.layers.iter().cloned());
        lease.add(&wanted.iter().map(|d| d.digest.clone()).collect::<Vec<_>>());
        futures::stream::iter(wanted)
            .map(|descriptor| self.fetch_shared(resolved.endpoint.clone(), descriptor))
            .buffer_unordered(CONCURRENT_DOWNLOADS)
            .try_collect::<Vec<()>>()
            .await?;
        let names = match reference.tag() {
            Some(_) if reference.digest().is_none() => vec![reference.clone()],
            _ => Vec::new(),
        };
        let repo_digest = reference.with_digest(resolved.top_digest.clone());
        let image = self
            .commit_image(
                lease,
                names,
                vec![repo_digest],
                resolved.index.map(|(digest, _)| digest),
                resolved.manifest_digest,
                resolved.manifest,
            )
            .await?;
        tracing::info!(image = %reference, id = %image.id, "pulled");
        Ok(image)
    }

    /// Downloads a blob unless present, sharing the transfer with concurrent callers.
    async fn fetch_shared(
        &self,
        endpoint: registries::Endpoint,
        descriptor: Descriptor,
    ) -> Result<(), ImageError> {
        if self.inner.content.contains(&descriptor.digest) {
            return Ok(());
        }
        let shared = {
            let mut fetches = lock(&self.inner.fetches);
            match fetches.get(&descriptor.digest) {
                Some(shared) => shared.clone(),
                None => {
                    let service = self.clone();
                    let digest = descriptor.digest.clone();
                    let future = async move {
                        service
                            .inner
                            .stats
                            .blob_downloads
                            .fetch_add(1, Ordering::Relaxed);
                        let result = service
                            .inner
                            .client
                            .fetch_blob(&endpoint, &descriptor, &service.inner.content)
                            .await;
                        lock(&service.inner.fetches).remove(&descriptor.digest);
                        match result {
                            Ok(bytes) => {
                                service
                                    .inner
                                    .stats
                                    .bytes_downloaded
                                    .fetch_add(bytes, Ordering::Relaxed);
                                Ok(())
                            }
                            Err(err) => Err(Arc::new(ImageError::from(err))),
                        }
                    }
                    .boxed()
                    .shared();
                    fetches.insert(digest, future.clone());
                    future
                }
            }
        };
        shared.await.map_err(ImageError::from)
    }

    /// Unpacks the layers of a manifest whose blobs are all in the store, and records the image
    /// under `names`.
    async fn commit_image(
        &self,
        mut lease: Lease,
        names: Vec<Reference>,
        repo_digests: Vec<Reference>,
        index: Option<Digest>,
        manifest_digest: Digest,
        manifest: Manifest,
    ) -> Result<Image, ImageError> {
        let inner = &self.inner;
        manifest.check_layers()?;
        let config_digest = manifest.config.digest.clone();
        let config_bytes = inner
            .content
            .read(&config_digest, manifest::MAX_DOCUMENT_SIZE)?;
        let config: ConfigFile =
            serde_json::from_slice(&config_bytes).map_err(|err| ImageError::Config {
                digest: config_digest.clone(),
                message: err.to_string(),
            })?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(manifest::ManifestError::LayerCountMismatch {
                layers: manifest.layers.len(),
                diff_ids: config.rootfs.diff_ids.len(),
            }
            .into());
        }
        let chain = snapshot::chain_ids(&config.rootfs.diff_ids);
        lease.add(&chain);
        for (i, layer) in manifest.layers.iter().enumerate() {
            self.unpack_once(layer, &config.rootfs.diff_ids[i], &chain[..=i])
                .await?;
        }
        let size = manifest.config.size
            + manifest.layers.iter().map(|l| l.size).sum::<u64>()
            + inner.content.size(&manifest_digest);
        let record = ImageRecord {
            id: config_digest.clone(),
            names: names.iter().map(Reference::to_string).collect(),
            repo_digests: repo_digests.iter().map(Reference::to_string).collect(),
            index,
            manifest: manifest_digest,
            config: manifest.config.clone(),
            layers: manifest.layers.clone(),
            diff_ids: config.rootfs.diff_ids.clone(),
            chain_ids: chain,
            size,
            created_at: now(),
            last_used: now(),
        };
        let service = self.clone();
        let stored = tokio::task::spawn_blocking(move || service.record(record))
            .await
            .map_err(|err| ImageError::Io {
                what: "recording the image".to_string(),
                message: err.to_string(),
            })??;
        drop(lease);
        self.image_from(&stored)
    }

    /// Unpacks one layer into its snapshot unless it is there.
    async fn unpack_once(
        &self,
        layer: &Descriptor,
        diff_id: &Digest,
        chain: &[Digest],
    ) -> Result<(), ImageError> {
        let Some(chain_id) = chain.last() else {
            return Ok(());
        };
        if self.inner.snapshots.exists(chain_id) {
            return Ok(());
        }
        let gate = lock(&self.inner.unpacking)
            .entry(chain_id.clone())
            .or_default()
            .clone();
        let _guard = gate.lock().await;
        if self.inner.snapshots.exists(chain_id) {
            return Ok(());
        }
        let service = self.clone();
        let layer = layer.clone();
        let diff_id = diff_id.clone();
        let chain = chain.to_vec();
        let result =
            tokio::task::spawn_blocking(move || service.unpack_blocking(&layer, &diff_id, &chain))
                .await
                .map_err(|err| ImageError::Io {
                    what: "unpacking a layer".to_string(),
                    message: err.to_string(),
                })?;
        lock(&self.inner.unpacking).remove(chain_id);
        result
    }

    fn unpack_blocking(
        &self,
        layer: &Descriptor,
        diff_id: &Digest,
        chain: &[Digest],
    ) -> Result<(), ImageError> {
        let inner = &self.inner;
        let Some((chain_id, parents)) = chain.split_last() else {
            return Ok(());
        };
        let prepared = inner.snapshots.prepare()?;
        let blob = inner.content.open_blob(&layer.digest)?;
        let options = UnpackOptions {
            parents: parents
                .iter()
                .rev()
                .map(|id| inner.snapshots.path(id))
                .collect(),
            privileged: inner.privileged,
            expected_diff_id: Some(diff_id.clone()),
        };
        unpack::unpack_layer(blob, &prepared.fs(), &options).map_err(|source| {
            ImageError::Unpack {
                layer: layer.digest.clone(),
                source,
            }
        })?;
        inner.snapshots.commit(prepared, chain_id)?;
        inner.stats.layers_unpacked.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Adds or updates a record: names move to it from whatever image had them.
    fn record(&self, record: ImageRecord) -> Result<ImageRecord, ImageError> {
        let inner = &self.inner;
        inner.metadata.update(|images| {
            // Another process may have removed shared content since we checked.
            for blob in record.blobs() {
                if !inner.content.contains(&blob) {
                    return Err(ImageError::Content(ContentError::Missing(blob)));
                }
            }
            for chain_id in &record.chain_ids {
                if !inner.snapshots.exists(chain_id) {
                    return Err(ImageError::Io {
                        what: format!("snapshot {chain_id}"),
                        message: "disappeared while the image was being recorded".to_string(),
                    });
                }
            }
            for other in images.iter_mut().filter(|i| i.id != record.id) {
                other.names.retain(|n| !record.names.contains(n));
            }
            let stored = match images.iter_mut().find(|i| i.id == record.id) {
                Some(existing) => {
                    for name in &record.names {
                        if !existing.names.contains(name) {
                            existing.names.push(name.clone());
                        }
                    }
                    for digest in &record.repo_digests {
                        if !existing.repo_digests.contains(digest) {
                            existing.repo_digests.push(digest.clone());
                        }
                    }
                    existing.last_used = record.last_used;
                    existing.clone()
                }
                None => {
                    images.push(record.clone());
                    record
                }
            };
            self.rebuild_refs(images);
            Ok(stored)
        })
    }

    /// Reference counts from the records: one per image holding each blob.
    fn rebuild_refs(&self, images: &[ImageRecord]) {
        let mut refs: HashMap<Digest, u32> = HashMap::new();
        for image in images {
            for blob in image.blobs() {
                *refs.entry(blob).or_insert(0) += 1;
            }
        }
        self.inner.content.set_refs(refs);
    }

    fn image_from(&self, record: &ImageRecord) -> Result<Image, ImageError> {
        let bytes = self
            .inner
            .content
            .read(&record.config.digest, manifest::MAX_DOCUMENT_SIZE)?;
        let config: ConfigFile =
            serde_json::from_slice(&bytes).map_err(|err| ImageError::Config {
                digest: record.config.digest.clone(),
                message: err.to_string(),
            })?;
        Ok(Image {
            id: record.id.clone(),
            names: record.names.clone(),
            repo_digests: record.repo_digests.clone(),
            config: ImageConfig::from(&config),
            rootfs: record
                .chain_ids
                .iter()
                .rev()
                .map(|id| self.inner.snapshots.path(id))
                .collect(),
            size: record.size,
            last_used: record.last_used,
        })
    }

    /// Finds the record `text` names: a reference (normalised), a full image ID, or an
    /// unambiguous ID prefix of at least 12 hex digits.
    fn find_record(images: &[ImageRecord], text: &str) -> Result<Option<usize>, ImageError> {
        let hex = text.strip_prefix("sha256:").unwrap_or(text);
        if hex.len() >= 12 && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let matches: Vec<usize> = images
                .iter()
                .enumerate()
                .filter(|(_, i)| i.id.hex().starts_with(&hex.to_ascii_lowercase()))
                .map(|(n, _)| n)
                .collect();
            match matches.len() {
                0 => {}
                1 => return Ok(matches.first().copied()),
                _ => {
                    return Err(ImageError::Ambiguous(format!(
                        "image ID prefix {text} matches several images"
                    )))
                }
            }
        }
        let reference = Reference::parse(text)?.to_string();
        Ok(images
            .iter()
            .position(|i| i.names.contains(&reference) || i.repo_digests.contains(&reference)))
    }

    /// The local image `reference` (or ID) names, if any.
    pub fn find(&self, reference: &str) -> Result<Option<Image>, ImageError> {
        let images = self.inner.metadata.load()?;
        match Self::find_record(&images, reference)? {
            Some(n) => Ok(Some(self.image_from(&images[n])?)),
            None => Ok(None),
        }
    }

    /// Every image, oldest first.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let mut images = self.inner.metadata.load()?;
        images.sort_by_key(|i| i.created_at);
        images.iter().map(|r| self.image_from(r)).collect()
    }

    /// Marks an image as just used (for garbage collection's LRU order).
    pub fn touch(&self, id: &Digest) -> Result<(), ImageError> {
        let time = now();
        self.inner.metadata.update(|images| {
            if let Some(image) = images.iter_mut().find(|i| i.id == *id) {
                image.last_used = time;
            }
            Ok::<_, ImageError>(())
        })
    }

    /// Removes `reference`: a name is untagged (the image goes with its last name); an ID
    /// removes the image whatever its names. Images in `in_use` are refused. Returns the IDs
    /// of the images deleted.
    pub fn remove(
        &self,
        reference: &str,
        in_use: &HashSet<Digest>,
    ) -> Result<Vec<Digest>, ImageError> {
        let removed = self.inner.metadata.update(|images| {
            let n = Self::find_record(images, reference)?
                .ok_or_else(|| ImageError::NotFound(reference.to_string()))?;
            let by_id = {
                let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
                images[n].id.hex().starts_with(hex) && hex.len() >= 12
            };
            if !by_id {
                let name = Reference::parse(reference)?.to_string();
                let record = &mut images[n];
                record.names.retain(|x| *x != name);
                record.repo_digests.retain(|x| *x != name);
                if !record.names.is_empty() {
                    return Ok(None);
                }
            }
            if in_use.contains(&images[n].id) {
                return Err(ImageError::InUse {
                    reference: reference.to_string(),
                });
            }
            let record = images.remove(n);
            self.release(images, &record)?;
            Ok(Some(record.id))
        })?;
        Ok(removed.into_iter().collect())
    }

    /// Drops a removed record's references: its blobs and snapshots that no remaining image
    /// (and no pull in progress) needs are deleted. Called under the metadata lock.
    fn release(&self, remaining: &[ImageRecord], record: &ImageRecord) -> Result<(), ImageError> {
        let mut with_record = remaining.to_vec();
        with_record.push(record.clone());
        self.rebuild_refs(&with_record);
        self.inner.content.release(&record.blobs())?;
        let kept: HashSet<&Digest> = remaining.iter().flat_map(|i| &i.chain_ids).collect();
        let leased: HashSet<Digest> = self.leased_snapshots();
        for chain_id in &record.chain_ids {
            if !kept.contains(chain_id) && !leased.contains(chain_id) {
                self.inner.snapshots.remove(chain_id)?;
            }
        }
        Ok(())
    }

    fn leased_snapshots(&self) -> HashSet<Digest> {
        // Layers being unpacked right now in this process.
        lock(&self.inner.unpacking).keys().cloned().collect()
    }

    /// Imports every image of an archive (docker save or OCI layout; plain, gzip or zstd).
    pub async fn import(&self, path: &Path) -> Result<Vec<Image>, ImageError> {
        let service = self.clone();
        let archive = path.to_path_buf();
        let (lease, found) = tokio::task::spawn_blocking(move || {
            let mut lease = service.inner.content.lease(&[]);
            let found = airgap::read_archive(
                &archive,
                &service.inner.content,
                &mut lease,
                service.inner.client.platform(),
            );
            (lease, found)
        })
        .await
        .map_err(|err| ImageError::Io {
            what: format!("importing {}", path.display()),
            message: err.to_string(),
        })?;
        // Held until every image of the archive is recorded.
        let written = lease.digests().to_vec();
        let found = match found {
            Ok(found) => found,
            Err(err) => {
                drop(lease);
                self.inner.content.delete_unreferenced(&written)?;
                return Err(err.into());
            }
        };
        let mut images = Vec::new();
        for archive_image in found {
            // Each image keeps the archive's lease alive until all are recorded.
            let mut image_lease = self.inner.content.lease(&[]);
            let mut digests = vec![archive_image.manifest_digest.clone()];
            digests.extend(archive_image.index.clone());
            image_lease.add(&digests);
            let image = self
                .commit_image(
                    image_lease,
                    archive_image.names,
                    Vec::new(),
                    archive_image.index,
                    archive_image.manifest_digest,
                    archive_image.manifest,
                )
                .await?;
            tracing::info!(archive = %path.display(), id = %image.id, names = ?image.names, "imported");
            images.push(image);
        }
        // What the archive held that no image uses (other platforms' manifests and configs; a
        // second copy of an image already here from another archive format) is not kept.
        drop(lease);
        self.inner.content.delete_unreferenced(&written)?;
        Ok(images)
    }

    /// Imports every archive in `dir` (`*.tar`, `*.tar.gz`, `*.tgz`, `*.tar.zst`), as the agent
    /// does at start with `<data-dir>/agent/images`. An archive that fails is logged and
    /// skipped; returns the images imported and the failures.
    pub async fn import_dir(
        &self,
        dir: &Path,
    ) -> Result<(Vec<Image>, Vec<(PathBuf, ImageError)>), ImageError> {
        let archives = airgap::archives_in(dir).map_err(|err| ImageError::Io {
            what: format!("airgap directory {}", dir.display()),
            message: err.to_string(),
        })?;
        let mut images = Vec::new();
        let mut failures = Vec::new();
        for archive in archives {
            match self.import(&archive).await {
                Ok(found) => images.extend(found),
                Err(err) => {
                    tracing::warn!(archive = %archive.display(), %err, "airgap import failed");
                    failures.push((archive, err));
                }
            }
        }
        Ok((images, failures))
    }

    /// [`ImageService::gc`] with the usage of the file system holding the store, as the
    /// kubelet's periodic image GC does.
    pub fn gc_now(
        &self,
        policy: &gc::GcPolicy,
        in_use: &HashSet<Digest>,
    ) -> Result<GcReport, ImageError> {
        let usage = gc::FsUsage::of(&self.inner.root).map_err(|err| ImageError::Io {
            what: format!("file system of {}", self.inner.root.display()),
            message: err.to_string(),
        })?;
        self.gc(policy, usage, in_use)
    }

    /// Deletes unused images, least recently used first, when `usage` is above the policy's
    /// high threshold (see [`gc`]). `in_use` are the IDs of images containers use.
    pub fn gc(
        &self,
        policy: &gc::GcPolicy,
        usage: gc::FsUsage,
        in_use: &HashSet<Digest>,
    ) -> Result<GcReport, ImageError> {
        let images = self.inner.metadata.load()?;
        // Bytes each image would free: its blobs and snapshots no other image has.
        let mut blob_users: HashMap<&Digest, usize> = HashMap::new();
        let mut snapshot_users: HashMap<&Digest, usize> = HashMap::new();
        let blobs: Vec<Vec<Digest>> = images.iter().map(ImageRecord::blobs).collect();
        for (image, image_blobs) in images.iter().zip(&blobs) {
            for blob in image_blobs {
                *blob_users.entry(blob).or_insert(0) += 1;
            }
            for chain_id in &image.chain_ids {
                *snapshot_users.entry(chain_id).or_insert(0) += 1;
            }
        }
        let candidates: Vec<gc::Candidate> = images
            .iter()
            .zip(&blobs)
            .map(|(image, image_blobs)| {
                let own_blobs: u64 = image_blobs
                    .iter()
                    .filter(|b| blob_users.get(b) == Some(&1))
                    .map(|b| self.inner.content.size(b))
                    .sum();
                let own_snapshots: u64 = image
                    .chain_ids
                    .iter()
                    .filter(|c| snapshot_users.get(c) == Some(&1))
                    .map(|c| self.inner.snapshots.disk_usage(c))
                    .sum();
                gc::Candidate {
                    id: image.id.clone(),
                    size: own_blobs + own_snapshots,
                    last_used: image.last_used,
                    created_at: image.created_at,
                    in_use: in_use.contains(&image.id),
                }
            })
            .collect();
        let plan = gc::plan(policy, usage, &candidates, now());
        let mut report = GcReport {
            bytes_to_free: plan.bytes_to_free,
            ..GcReport::default()
        };
        for id in &plan.delete {
            match self.remove(&id.to_string(), in_use) {
                Ok(removed) => report.removed.extend(removed),
                Err(ImageError::NotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        report.bytes_freed = plan.bytes_freed;
        if !report.removed.is_empty() {
            tracing::info!(
                images = report.removed.len(),
                bytes = report.bytes_freed,
                "image garbage collection"
            );
        }
        Ok(report)
    }
}

/// For tests that need root: true when running as root; otherwise prints why the test is
/// skipped, or fails under CI (`CI=true`), where root tests must run.
#[cfg(test)]
pub(crate) fn root_or_skip(what: &str) -> bool {
    if unpack::running_as_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what}: this test needs root, and CI=true requires it to run"
    );
    eprintln!("skipping {what}: needs root");
    false
}
