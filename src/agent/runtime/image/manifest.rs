//! The JSON documents of an image: image indexes (manifest lists), manifests and image
//! configurations, in both their OCI and Docker schema 2 spellings, plus platform selection.
//!
//! Owns the document shapes and the choice of a platform's manifest in an index; does no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::Digest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// What a registry is asked to return for a manifest request.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest, index or config accepted (containerd uses 4 MiB for manifests too).
pub const MAX_DOCUMENT_SIZE: u64 = 4 << 20;

/// Why a document is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{what} is not valid JSON of its kind: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("unsupported layer media type {0:?}")]
    UnsupportedLayer(String),
    #[error("no manifest for platform {wanted} in the image index (it has: {available})")]
    NoPlatform { wanted: String, available: String },
    #[error("the image has {layers} layers but its config lists {diff_ids} diff IDs")]
    LayerCountMismatch { layers: usize, diff_ids: usize },
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// The platform this binary runs on, in OCI's spelling.
    pub fn current() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "riscv64" => ("riscv64", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            other => (other, None),
        };
        Platform {
            os: "linux".to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// Parses `os/arch[/variant]` (`linux/arm/v7`).
    pub fn parse(text: &str) -> Option<Platform> {
        let mut parts = text.split('/');
        let os = parts.next().filter(|s| !s.is_empty())?;
        let architecture = parts.next().filter(|s| !s.is_empty())?;
        let variant = parts.next().map(str::to_string);
        if parts.next().is_some() {
            return None;
        }
        Some(Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant,
        })
    }

    /// How well an index entry's platform suits this (wanted) one: `None` when it cannot run,
    /// lower is better. As containerd's default matcher: the OS and architecture must match;
    /// `arm64` treats no variant as `v8`; `arm` prefers its own variant and accepts older ones
    /// (v7 runs v6 and v5 images), `amd64` accepts no variant or `v1`.
    pub fn rank(&self, candidate: &Platform) -> Option<u32> {
        if candidate.os != self.os || candidate.architecture != self.architecture {
            return None;
        }
        let normal = |p: &Platform| -> String {
            match (p.architecture.as_str(), p.variant.as_deref()) {
                ("arm64", None | Some("")) => "v8".to_string(),
                ("amd64", None | Some("")) => "v1".to_string(),
                ("arm", None | Some("")) => "v7".to_string(),
                (_, Some(v)) => v.to_string(),
                (_, None) => String::new(),
            }
        };
        let wanted = normal(self);
        let got = normal(candidate);
        if wanted == got {
            return Some(0);
        }
        if self.architecture == "arm" {
            let number = |v: &str| v.strip_prefix('v').and_then(|n| n.parse::<u32>().ok());
            if let (Some(w), Some(g)) = (number(&wanted), number(&got)) {
                if g < w {
                    return Some(w - g);
                }
            }
        }
        None
    }
}

/// An image index or Docker manifest list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    #[serde(default)]
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

impl Index {
    /// The best manifest for `platform`.
    pub fn select(&self, platform: &Platform) -> Result<&Descriptor, ManifestError> {
        self.manifests
            .iter()
            .filter(|d| is_manifest(&d.media_type) || d.media_type.is_empty())
            .filter_map(|d| {
                let candidate = d.platform.as_ref()?;
                platform.rank(candidate).map(|rank| (rank, d))
            })
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, d)| d)
            .ok_or_else(|| ManifestError::NoPlatform {
                wanted: platform.to_string(),
                available: self
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref().map(Platform::to_string))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// An image manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default)]
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

impl Manifest {
    /// Refuses layers we cannot unpack (foreign/non-distributable, encrypted, unknown).
    pub fn check_layers(&self) -> Result<(), ManifestError> {
        for layer in &self.layers {
            if !is_layer(&layer.media_type) {
                return Err(ManifestError::UnsupportedLayer(layer.media_type.clone()));
            }
        }
        Ok(())
    }
}

/// The image configuration (the part a runtime needs).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
}

/// `config` of the image configuration: what to run by default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

/// `rootfs` of the image configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

/// A fetched manifest document: either an index or a single-platform manifest.
#[derive(Debug, Clone)]
pub enum Document {
    Index(Index),
    Manifest(Manifest),
}

impl Document {
    /// Decodes `bytes` using the media type from the response (or, when the registry sent a
    /// generic one, the document's own `mediaType`, or its shape).
    pub fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<Document, ManifestError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Peek {
            media_type: Option<String>,
            manifests: Option<serde_json::Value>,
            config: Option<serde_json::Value>,
        }
        let header = content_type
            .map(|c| c.split(';').next().unwrap_or(c).trim().to_string())
            .filter(|c| is_index(c) || is_manifest(c));
        let media_type = match header {
            Some(media_type) => media_type,
            None => {
                let peek: Peek =
                    serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
                        what: "manifest",
                        source,
                    })?;
                match (peek.media_type, peek.manifests, peek.config) {
                    (Some(m), _, _) => m,
                    (None, Some(_), _) => OCI_INDEX.to_string(),
                    (None, None, Some(_)) => OCI_MANIFEST.to_string(),
                    (None, None, None) => String::new(),
                }
            }
        };
        if is_index(&media_type) {
            serde_json::from_slice(bytes)
                .map(Document::Index)
                .map_err(|source| ManifestError::Json {
                    what: "image index",
                    source,
                })
        } else if is_manifest(&media_type) {
            serde_json::from_slice(bytes)
                .map(Document::Manifest)
                .map_err(|source| ManifestError::Json {
                    what: "image manifest",
                    source,
                })
        } else {
            Err(ManifestError::UnsupportedMediaType(media_type))
        }
    }
}

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

pub fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

/// Layer media types we unpack (compression is detected from the bytes themselves).
pub fn is_layer(media_type: &str) -> bool {
    matches!(
        media_type,
        OCI_LAYER
            | OCI_LAYER_GZIP
            | OCI_LAYER_ZSTD
            | DOCKER_LAYER_GZIP
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(text: &str) -> Platform {
        Platform::parse(text).expect("platform")
    }

    fn index(platforms: &[&str]) -> Index {
        Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.to_string()),
            manifests: platforms
                .iter()
                .map(|p| Descriptor {
                    media_type: OCI_MANIFEST.to_string(),
                    digest: Digest::of(p.as_bytes()),
                    size: 1,
                    platform: Some(platform(p)),
                    annotations: None,
                })
                .collect(),
        }
    }

    #[test]
    fn platform_selection_table() {
        let all = index(&[
            "linux/amd64",
            "linux/arm/v5",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm64/v8",
            "windows/amd64",
        ]);
        for (wanted, chosen) in [
            ("linux/amd64", "linux/amd64"),
            ("linux/arm64", "linux/arm64/v8"),
            ("linux/arm64/v8", "linux/arm64/v8"),
            ("linux/arm/v7", "linux/arm/v7"),
            ("linux/arm/v6", "linux/arm/v6"),
        ] {
            let got = all.select(&platform(wanted)).expect(wanted);
            assert_eq!(got.digest, Digest::of(chosen.as_bytes()), "{wanted}");
        }
        // Older arm variants run on newer CPUs, not the other way round.
        let old_arm = index(&["linux/arm/v6", "linux/arm/v5"]);
        let got = old_arm
            .select(&platform("linux/arm/v7"))
            .expect("v7 runs v6");
        assert_eq!(got.digest, Digest::of(b"linux/arm/v6"));
        assert!(index(&["linux/arm/v7"])
            .select(&platform("linux/arm/v6"))
            .is_err());
        // arm64 without variant is v8.
        let plain = index(&["linux/arm64"]);
        assert!(plain.select(&platform("linux/arm64/v8")).is_ok());
        let err = index(&["linux/s390x", "windows/amd64"])
            .select(&platform("linux/amd64"))
            .expect_err("no match");
        assert!(err.to_string().contains("linux/s390x"), "{err}");
    }

    #[test]
    fn documents_are_recognised_by_header_or_content() {
        let manifest = br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;
        assert!(matches!(
            Document::parse(Some("application/octet-stream"), manifest),
            Ok(Document::Manifest(_))
        ));
        assert!(matches!(
            Document::parse(Some(DOCKER_MANIFEST), manifest),
            Ok(Document::Manifest(_))
        ));
        let list = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#;
        assert!(matches!(
            Document::parse(None, list),
            Ok(Document::Index(_))
        ));
        let v1 = br#"{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+prettyjws"}"#;
        assert!(matches!(
            Document::parse(None, v1),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn config_fields_are_read() {
        let config = br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/sh"],"Cmd":["-c","true"],"Env":["PATH=/bin"],"User":"1000:1000","WorkingDir":"/work"},"rootfs":{"type":"layers","diff_ids":["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]}}"#;
        let parsed: ConfigFile = serde_json::from_slice(config).expect("config");
        let run = parsed.config.expect("run config");
        assert_eq!(run.entrypoint, Some(vec!["/bin/sh".to_string()]));
        assert_eq!(run.user.as_deref(), Some("1000:1000"));
        assert_eq!(run.working_dir.as_deref(), Some("/work"));
        assert_eq!(parsed.rootfs.diff_ids.len(), 1);
    }
}
