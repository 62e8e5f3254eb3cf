//! The image records: which images exist, by which names, made of which blobs and snapshots,
//! and when each was last used. One JSON file, `<root>/images.json`, changed only under an
//! exclusive `flock` on `<root>/images.lock` so that the agent and `cluster images` (another
//! process) can both change it.
//!
//! # Guarantees
//! - Every change is read-modify-write under the lock and lands by rename: a reader sees the
//!   file before or after a change, never half of one.
//! - These records are the source of truth for the content store's reference counts.
//!
//! Owns `images.json` and `images.lock`; touches no blob or snapshot.

use std::fs;
use std::io::{self, Write};
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::manifest::Descriptor;

/// Why the records could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("image records {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image records {path} are corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
}

/// One image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    /// The image ID: the digest of its config.
    pub id: Digest,
    /// Tagged names (`docker.io/library/busybox:latest`).
    #[serde(default)]
    pub names: Vec<String>,
    /// Names pinned by digest (`docker.io/library/busybox@sha256:…`).
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// The index the image was chosen from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<Digest>,
    pub manifest: Digest,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    pub diff_ids: Vec<Digest>,
    pub chain_ids: Vec<Digest>,
    /// Bytes of the blobs (compressed layers, config, manifest).
    pub size: u64,
    /// Milliseconds since the epoch.
    pub created_at: u64,
    pub last_used: u64,
}

impl ImageRecord {
    /// Every blob this image holds a reference to.
    pub fn blobs(&self) -> Vec<Digest> {
        let mut blobs: Vec<Digest> = self.index.iter().cloned().collect();
        blobs.push(self.manifest.clone());
        blobs.push(self.config.digest.clone());
        blobs.extend(self.layers.iter().map(|l| l.digest.clone()));
        blobs.sort();
        blobs.dedup();
        blobs
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    #[serde(default)]
    images: Vec<ImageRecord>,
}

/// The records file.
#[derive(Debug, Clone)]
pub struct Metadata {
    path: PathBuf,
    lock_path: PathBuf,
}

impl Metadata {
    pub fn open(root: &Path) -> Result<Metadata, MetadataError> {
        fs::create_dir_all(root).map_err(|source| MetadataError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        Ok(Metadata {
            path: root.join("images.json"),
            lock_path: root.join("images.lock"),
        })
    }

    /// The records as they are now.
    pub fn load(&self) -> Result<Vec<ImageRecord>, MetadataError> {
        let text = match fs::read(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(MetadataError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let file: File = serde_json::from_slice(&text).map_err(|err| MetadataError::Corrupt {
            path: self.path.clone(),
            message: err.to_string(),
        })?;
        Ok(file.images)
    }

    /// Changes the records under the lock. `change` may fail; then nothing is written.
    pub fn update<T, E: From<MetadataError>>(
        &self,
        change: impl FnOnce(&mut Vec<ImageRecord>) -> Result<T, E>,
    ) -> Result<T, E> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| MetadataError::Io { path, source }
        };
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(io_err(&self.lock_path))?;
        rustix::fs::flock(lock.as_fd(), rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_err(&self.lock_path)(e.into()))?;
        let mut images = self.load()?;
        let result = change(&mut images)?;
        let temp = self
            .path
            .with_extension(format!("json.tmp-{}", std::process::id()));
        let bytes =
            serde_json::to_vec_pretty(&File { images }).map_err(|err| MetadataError::Corrupt {
                path: self.path.clone(),
                message: err.to_string(),
            })?;
        let mut file = fs::File::create(&temp).map_err(io_err(&temp))?;
        file.write_all(&bytes).map_err(io_err(&temp))?;
        file.sync_all().map_err(io_err(&temp))?;
        fs::rename(&temp, &self.path).map_err(io_err(&self.path))?;
        // The lock goes with the file descriptor.
        drop(lock);
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> ImageRecord {
        let config = Descriptor {
            media_type: String::new(),
            digest: Digest::of(name.as_bytes()),
            size: 1,
            platform: None,
            annotations: None,
        };
        ImageRecord {
            id: config.digest.clone(),
            names: vec![name.to_string()],
            repo_digests: vec![],
            index: None,
            manifest: Digest::of(b"m"),
            config,
            layers: vec![],
            diff_ids: vec![],
            chain_ids: vec![],
            size: 1,
            created_at: 0,
            last_used: 0,
        }
    }

    #[test]
    fn updates_persist_and_failed_updates_do_not() {
        let temp = tempfile::tempdir().expect("tempdir");
        let metadata = Metadata::open(temp.path()).expect("open");
        assert!(metadata.load().expect("empty").is_empty());
        metadata
            .update(|images| {
                images.push(record("a"));
                Ok::<_, MetadataError>(())
            })
            .expect("update");
        let failed: Result<(), MetadataError> = metadata.update(|images| {
            images.clear();
            Err(MetadataError::Corrupt {
                path: PathBuf::new(),
                message: "no".to_string(),
            })
        });
        assert!(failed.is_err());
        let images = Metadata::open(temp.path())
            .expect("reopen")
            .load()
            .expect("load");
        assert_eq!(images, vec![record("a")]);
    }

    #[test]
    fn concurrent_updates_from_threads_are_serialised() {
        let temp = tempfile::tempdir().expect("tempdir");
        let metadata = Metadata::open(temp.path()).expect("open");
        std::thread::scope(|scope| {
            for i in 0..8 {
                let metadata = metadata.clone();
                scope.spawn(move || {
                    metadata
                        .update(|images| {
                            images.push(record(&format!("image-{i}")));
                            Ok::<_, MetadataError>(())
                        })
                        .expect("update");
                });
            }
        });
        assert_eq!(metadata.load().expect("load").len(), 8);
    }
}
