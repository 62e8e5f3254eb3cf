//! Airgap archives: reads `docker save` tarballs and OCI image layout tarballs (plain, gzip or
//! zstd) into the content store, and says which images they hold.
//!
//! - OCI layout: `oci-layout`, `index.json`, `blobs/sha256/<hex>`. An image's name comes from
//!   the `io.containerd.image.name` annotation of its `index.json` entry, else from
//!   `org.opencontainers.image.ref.name` when that is a full reference (a bare tag names no
//!   repository: such an image is imported by ID only). An entry that is an index is resolved
//!   for our platform.
//! - `docker save`: `manifest.json` lists, per image, its config file, its layer files and its
//!   `RepoTags`. Layer files are stored under the digest they hash to, and a manifest is
//!   written for them. Older Docker versions deduplicate layers with symlinks inside the
//!   archive; those are followed (within the archive only).
//!
//! # Guarantees
//! - The archive is read once, as a stream. Every `blobs/sha256/<hex>` file is verified against
//!   its name; other files are stored under the digest they hash to. Layers are checked against
//!   the config's diff IDs when they are unpacked (by the caller).
//! - Every blob written is leased until the caller has recorded its image.
//!
//! Owns reading archives; does not unpack or record images.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::content::{ContentError, ContentStore, Lease};
use super::digest::Digest;
use super::manifest::{self, Descriptor, Document, Manifest, ManifestError, Platform};
use super::reference::Reference;
use super::unpack::decompress;

/// Why an archive could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum AirgapError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: neither an OCI image layout (index.json) nor a docker save archive (manifest.json)")]
    UnknownFormat { path: PathBuf },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Content {
        path: PathBuf,
        #[source]
        source: ContentError,
    },
    #[error("{path}: {source}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: ManifestError,
    },
}

/// One image found in an archive; its blobs are in the content store.
#[derive(Debug, Clone)]
pub struct ArchiveImage {
    pub names: Vec<Reference>,
    pub index: Option<Digest>,
    pub manifest_digest: Digest,
    pub manifest: Manifest,
}

/// Reads the archive at `path` into `store`, leasing what it writes in `lease`.
pub fn read_archive(
    path: &Path,
    store: &ContentStore,
    lease: &mut Lease,
    platform: &Platform,
) -> Result<Vec<ArchiveImage>, AirgapError> {
    let read_err = |source| AirgapError::Read {
        path: path.to_path_buf(),
        source,
    };
    let invalid = |message: String| AirgapError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let content_err = |source| AirgapError::Content {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut archive = tar::Archive::new(decompress(file).map_err(read_err)?);
    // Small JSON files by path, every other file by path → digest, symlinks by path → target.
    let mut documents: HashMap<String, Vec<u8>> = HashMap::new();
    let mut files: HashMap<String, Digest> = HashMap::new();
    let mut links: HashMap<String, String> = HashMap::new();
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let name = normalise(&String::from_utf8_lossy(&entry.path_bytes()));
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            if let Some(target) = entry.link_name_bytes() {
                let target = String::from_utf8_lossy(&target).into_owned();
                let resolved = if kind.is_symlink() {
                    let dir = name.rsplit_once('/').map_or("", |(dir, _)| dir);
                    normalise(&format!("{dir}/{target}"))
                } else {
                    normalise(&target)
                };
                links.insert(name, resolved);
            }
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            let digest: Digest = format!("sha256:{hex}")
                .parse()
                .map_err(|_| invalid(format!("{name} is not named by a sha256 digest")))?;
            lease.add(std::slice::from_ref(&digest));
            let size = entry.header().size().ok();
            store
                .insert_from(&digest, size, &mut entry)
                .map_err(content_err)?;
            files.insert(name, digest);
        } else if name.ends_with(".json") || name == "oci-layout" || name == "repositories" {
            let mut bytes = Vec::new();
            (&mut entry)
                .take(manifest::MAX_DOCUMENT_SIZE + 1)
                .read_to_end(&mut bytes)
                .map_err(read_err)?;
            if bytes.len() as u64 > manifest::MAX_DOCUMENT_SIZE {
                return Err(invalid(format!("{name} is larger than 4 MiB")));
            }
            documents.insert(name, bytes);
        } else {
            let (digest, _) = store.insert_unnamed(&mut entry).map_err(content_err)?;
            lease.add(std::slice::from_ref(&digest));
            files.insert(name, digest);
        }
    }
    // Follow links (a few hops at most) to the file they name.
    let resolve = |name: &str| -> Option<String> {
        let mut current = name.to_string();
        for _ in 0..8 {
            if files.contains_key(&current) || documents.contains_key(&current) {
                return Some(current);
            }
            current = links.get(&current)?.clone();
        }
        None
    };

    if let Some(index) = documents.get("index.json") {
        read_oci_layout(path, index, store, platform)
    } else if let Some(manifest_json) = documents.get("manifest.json") {
        read_docker_save(
            path,
            manifest_json,
            &documents,
            &files,
            &resolve,
            store,
            lease,
        )
    } else {
        Err(AirgapError::UnknownFormat {
            path: path.to_path_buf(),
        })
    }
}

fn read_oci_layout(
    path: &Path,
    index_bytes: &[u8],
    store: &ContentStore,
    platform: &Platform,
) -> Result<Vec<ArchiveImage>, AirgapError> {
    let manifest_err = |source| AirgapError::Manifest {
        path: path.to_path_buf(),
        source,
    };
    let content_err = |source| AirgapError::Content {
        path: path.to_path_buf(),
        source,
    };
    let layout: manifest::Index =
        serde_json::from_slice(index_bytes).map_err(|err| AirgapError::Invalid {
            path: path.to_path_buf(),
            message: format!("index.json: {err}"),
        })?;
    let mut images = Vec::new();
    for entry in &layout.manifests {
        let names = entry_names(entry);
        let bytes = store
            .read(&entry.digest, manifest::MAX_DOCUMENT_SIZE)
            .map_err(content_err)?;
        let media_type = (!entry.media_type.is_empty()).then_some(entry.media_type.as_str());
        let (index, manifest_digest, manifest) =
            match Document::parse(media_type, &bytes).map_err(manifest_err)? {
                Document::Manifest(manifest) => (None, entry.digest.clone(), manifest),
                Document::Index(index) => {
                    let chosen = index.select(platform).map_err(manifest_err)?;
                    let bytes = store
                        .read(&chosen.digest, manifest::MAX_DOCUMENT_SIZE)
                        .map_err(content_err)?;
                    match Document::parse(Some(&chosen.media_type), &bytes).map_err(manifest_err)? {
                        Document::Manifest(manifest) => {
                            (Some(entry.digest.clone()), chosen.digest.clone(), manifest)
                        }
                        Document::Index(_) => {
                            return Err(manifest_err(ManifestError::UnsupportedMediaType(
                                "an index inside an index".to_string(),
                            )))
                        }
                    }
                }
            };
        images.push(ArchiveImage {
            names,
            index,
            manifest_digest,
            manifest,
        });
    }
    Ok(images)
}

/// The names an OCI layout gives an entry.
fn entry_names(entry: &Descriptor) -> Vec<Reference> {
    let Some(annotations) = &entry.annotations else {
        return Vec::new();
    };
    let mut names = Vec::new();
    for key in [
        "io.containerd.image.name",
        "org.opencontainers.image.ref.name",
    ] {
        if let Some(value) = annotations.get(key) {
            // A bare tag ("latest") names no repository.
            if value.contains('/') || value.contains(':') || value.contains('@') {
                if let Ok(reference) = Reference::parse(value) {
                    if !names.contains(&reference) {
                        names.push(reference);
                    }
                }
            }
        }
    }
    names
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn read_docker_save(
    path: &Path,
    manifest_json: &[u8],
    documents: &HashMap<String, Vec<u8>>,
    files: &HashMap<String, Digest>,
    resolve: &dyn Fn(&str) -> Option<String>,
    store: &ContentStore,
    lease: &mut Lease,
) -> Result<Vec<ArchiveImage>, AirgapError> {
    let invalid = |message: String| AirgapError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let content_err = |source| AirgapError::Content {
        path: path.to_path_buf(),
        source,
    };
    let entries: Vec<DockerSaveEntry> = serde_json::from_slice(manifest_json)
        .map_err(|err| invalid(format!("manifest.json: {err}")))?;
    let mut images = Vec::new();
    for entry in entries {
        let config_name = resolve(&normalise(&entry.config)).ok_or_else(|| {
            invalid(format!(
                "manifest.json names {} which is not in the archive",
                entry.config
            ))
        })?;
        // The config is a JSON document (held in memory) or, in newer archives, a blob.
        let (config_digest, config_size) = match documents.get(&config_name) {
            Some(bytes) => {
                let digest = Digest::of(bytes);
                lease.add(std::slice::from_ref(&digest));
                store.insert(&digest, bytes).map_err(content_err)?;
                (digest, bytes.len() as u64)
            }
            None => {
                let digest = files
                    .get(&config_name)
                    .cloned()
                    .ok_or_else(|| invalid(format!("config {config_name} is missing")))?;
                let size = store.size(&digest);
                (digest, size)
            }
        };
        let mut layers = Vec::new();
        for layer in &entry.layers {
            let name = resolve(&normalise(layer)).ok_or_else(|| {
                invalid(format!(
                    "manifest.json names layer {layer} which is not in the archive"
                ))
            })?;
            let digest = files
                .get(&name)
                .cloned()
                .ok_or_else(|| invalid(format!("layer {name} is missing")))?;
            layers.push(Descriptor {
                media_type: "application/vnd.docker.image.rootfs.diff.tar".to_string(),
                size: store.size(&digest),
                digest,
                platform: None,
                annotations: None,
            });
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(manifest::DOCKER_MANIFEST.to_string()),
            config: Descriptor {
                media_type: manifest::DOCKER_CONFIG.to_string(),
                digest: config_digest,
                size: config_size,
                platform: None,
                annotations: None,
            },
            layers,
        };
        let bytes = serde_json::to_vec(&manifest)
            .map_err(|err| invalid(format!("writing a manifest: {err}")))?;
        let manifest_digest = Digest::of(&bytes);
        lease.add(std::slice::from_ref(&manifest_digest));
        store
            .insert(&manifest_digest, &bytes)
            .map_err(content_err)?;
        let mut names = Vec::new();
        for tag in entry.repo_tags.unwrap_or_default() {
            let reference =
                Reference::parse(&tag).map_err(|err| invalid(format!("RepoTags: {err}")))?;
            names.push(reference);
        }
        images.push(ArchiveImage {
            names,
            index: None,
            manifest_digest,
            manifest,
        });
    }
    Ok(images)
}

/// `./a//b/` → `a/b`, resolving `.` and `..` textually (names only; nothing is written by
/// them).
fn normalise(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

/// The files of `dir` to import at start: `*.tar`, `*.tar.gz`, `*.tgz`, `*.tar.zst`, sorted.
pub fn archives_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(err) => return Err(err),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let wanted = [".tar", ".tar.gz", ".tgz", ".tar.zst"]
            .iter()
            .any(|suffix| name.ends_with(suffix));
        if wanted && entry.file_type()?.is_file() {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised() {
        assert_eq!(normalise("./index.json"), "index.json");
        assert_eq!(normalise("abc/../def/layer.tar"), "def/layer.tar");
        assert_eq!(normalise("blobs//sha256/x/"), "blobs/sha256/x");
    }

    #[test]
    fn only_archives_are_picked_up() {
        let temp = tempfile::tempdir().expect("tempdir");
        for name in [
            "a.tar",
            "b.tar.gz",
            "c.tar.zst",
            "d.txt",
            "e.tgz",
            "f.tar.bz2",
        ] {
            std::fs::write(temp.path().join(name), b"").expect("write");
        }
        let names: Vec<String> = archives_in(temp.path())
            .expect("list")
            .iter()
            .map(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(names, ["a.tar", "b.tar.gz", "c.tar.zst", "e.tgz"]);
        assert!(archives_in(&temp.path().join("missing"))
            .expect("missing")
            .is_empty());
    }

    #[test]
    fn oci_names_need_a_repository() {
        let entry = |annotations: &[(&str, &str)]| Descriptor {
            media_type: manifest::OCI_MANIFEST.to_string(),
            digest: Digest::of(b"x"),
            size: 1,
            platform: None,
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        };
        let names = entry_names(&entry(&[("org.opencontainers.image.ref.name", "latest")]));
        assert!(names.is_empty());
        let names = entry_names(&entry(&[
            (
                "io.containerd.image.name",
                "docker.io/library/busybox:latest",
            ),
            ("org.opencontainers.image.ref.name", "busybox:latest"),
        ]));
        assert_eq!(names.len(), 1);
        assert_eq!(names[0].to_string(), "docker.io/library/busybox:latest");
    }
}
