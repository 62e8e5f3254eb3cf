//! A real local registry for image tests: Debian's `docker-registry` (distribution 2.x) on a
//! free loopback port with its own config and storage in a temp dir, killed when dropped; plus
//! pushing over the plain distribution API, and building the test images with
//! scripts/build-test-images.sh.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cluster::agent::runtime::image::digest::Digest;
use cluster::agent::runtime::image::manifest;

/// True when running under CI, where tests must not skip.
pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Whether `tool` is on PATH; otherwise prints why the test skips (fails under CI).
pub fn have_tool(tool: &str, package: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        assert!(
            !in_ci(),
            "{tool} is missing (Debian package {package}); CI=true requires it"
        );
        eprintln!("skipping: {tool} not found (install the Debian package {package})");
    }
    found
}

/// True when root; otherwise prints why the root-only part skips (fails under CI).
pub fn root_or_skip(what: &str) -> bool {
    if rustix_is_root() {
        return true;
    }
    assert!(
        !in_ci(),
        "{what} needs root, and CI=true requires it to run"
    );
    eprintln!("skipping {what}: needs root");
    false
}

fn rustix_is_root() -> bool {
    cluster::agent::runtime::image::unpack::running_as_root()
}

/// A running registry.
pub struct Registry {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry and waits until it answers.
    pub async fn start() -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            listener.local_addr().expect("addr").port()
        };
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("storage").display()
            ),
        )
        .expect("config");
        let log = dir.path().join("registry.log");
        let log_file = std::fs::File::create(&log).expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .expect("start docker-registry");
        let registry = Registry {
            child,
            port,
            log,
            _dir: dir,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = client.get(format!("{}/v2/", registry.url())).send().await {
                if response.status().is_success() {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start: {}",
                std::fs::read_to_string(&registry.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        registry
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>`, the registry part of image names.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Blob GETs the registry has logged for `repository`.
    pub fn blob_gets(&self, repository: &str) -> usize {
        let needle = format!("\"GET /v2/{repository}/blobs/");
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(&needle))
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pushes one blob.
pub async fn push_blob(base: &str, repository: &str, bytes: Vec<u8>) -> Digest {
    let digest = Digest::of(&bytes);
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{base}/v2/{repository}/blobs/uploads/"))
        .send()
        .await
        .expect("start upload");
    assert_eq!(response.status().as_u16(), 202, "start upload");
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("upload location")
        .to_string();
    let location = if location.starts_with("http") {
        location
    } else {
        format!("{base}{location}")
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    let response = client
        .put(format!("{location}{separator}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status().as_u16(), 201, "upload {digest}");
    digest
}

/// Pushes a manifest or index under `reference` (a tag or its digest).
pub async fn push_manifest(
    base: &str,
    repository: &str,
    reference: &str,
    media_type: &str,
    bytes: Vec<u8>,
) {
    let response = reqwest::Client::new()
        .put(format!("{base}/v2/{repository}/manifests/{reference}"))
        .header("content-type", media_type)
        .body(bytes)
        .send()
        .await
        .expect("put manifest");
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status.as_u16(), 201, "put manifest {reference}: {body}");
}

/// Pushes everything `descriptor` (in an OCI layout's blobs) refers to, then itself by digest.
fn push_tree<'a>(
    base: &'a str,
    repository: &'a str,
    layout: &'a Path,
    descriptor: &'a manifest::Descriptor,
) -> futures::future::BoxFuture<'a, ()> {
    Box::pin(async move {
        let blob = |digest: &Digest| {
            std::fs::read(layout.join("blobs/sha256").join(digest.hex())).expect("layout blob")
        };
        let bytes = blob(&descriptor.digest);
        if manifest::is_index(&descriptor.media_type) {
            let index: manifest::Index = serde_json::from_slice(&bytes).expect("index");
            for child in &index.manifests {
                push_tree(base, repository, layout, child).await;
            }
        } else {
            let image: manifest::Manifest = serde_json::from_slice(&bytes).expect("manifest");
            push_blob(base, repository, blob(&image.config.digest)).await;
            for layer in &image.layers {
                push_blob(base, repository, blob(&layer.digest)).await;
            }
        }
        push_manifest(
            base,
            repository,
            &descriptor.digest.to_string(),
            &descriptor.media_type,
            bytes,
        )
        .await;
    })
}

/// Pushes the first image of an OCI layout directory as `repository:tag`; returns the digest
/// of its top document (an index for the test images).
pub async fn push_layout(base: &str, repository: &str, tag: &str, layout: &Path) -> Digest {
    let index: manifest::Index =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index.json");
    let top = index.manifests.first().expect("an image in the layout");
    push_tree(base, repository, layout, top).await;
    let bytes = std::fs::read(layout.join("blobs/sha256").join(top.digest.hex())).expect("top");
    push_manifest(base, repository, tag, &top.media_type, bytes).await;
    top.digest.clone()
}

/// Runs scripts/build-test-images.sh into `out` with the given environment.
pub fn build_test_images(out: &Path, env: &[(&str, &str)]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-test-images.sh");
    let output = Command::new("sh")
        .arg(script)
        .arg(out)
        .envs(env.iter().copied())
        .output()
        .expect("run build-test-images.sh");
    assert!(
        output.status.success(),
        "build-test-images.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
