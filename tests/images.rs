//! Images against a real registry (Debian's docker-registry on a loopback port) and real
//! archives built by scripts/build-test-images.sh from busybox-static: pull, pull through a
//! mirror with a rewrite, airgap import of docker-save and OCI archives (library and CLI), a
//! malicious layer, concurrent pulls sharing downloads, garbage collection. The rootfs checks
//! mount overlayfs and need root.

#[path = "support/registry.rs"]
mod registry;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use cluster::agent::runtime::image::digest::Digest;
use cluster::agent::runtime::image::gc::{FsUsage, GcPolicy};
use cluster::agent::runtime::image::manifest::{self, Platform};
use cluster::agent::runtime::image::registries::Registries;
use cluster::agent::runtime::image::snapshot;
use cluster::agent::runtime::image::unpack::UnpackError;
use cluster::agent::runtime::image::{
    Image, ImageError, ImageService, ImageServiceConfig, PullPolicy,
};
use registry::{build_test_images, have_tool, push_layout, Registry};

fn tools_present() -> bool {
    have_tool("docker-registry", "docker-registry")
        && have_tool("busybox", "busybox-static")
        && have_tool("zstd", "zstd")
}

fn service(root: &Path, registries: Registries) -> ImageService {
    ImageService::open(ImageServiceConfig::new(root, registries)).expect("open image service")
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        _ => "arm",
    }
}

/// Mounts the image's rootfs (when root) and checks what layers 1 and 2 of the test image
/// make of it: whiteout, opaque directory, files from both layers.
fn check_rootfs(image: &Image) {
    assert_eq!(image.rootfs.len(), 3);
    if !registry::root_or_skip("mounting the rootfs with overlayfs") {
        return;
    }
    let temp = tempfile::tempdir().expect("tempdir");
    let (target, upper, work) = (
        temp.path().join("rootfs"),
        temp.path().join("upper"),
        temp.path().join("work"),
    );
    for dir in [&target, &upper, &work] {
        std::fs::create_dir(dir).expect("mkdir");
    }
    snapshot::mount_overlay(&target, &image.rootfs, &upper, &work).expect("mount overlay");
    let result = std::panic::catch_unwind(|| {
        assert_eq!(
            std::fs::read_link(target.join("bin/sh")).expect("bin/sh"),
            Path::new("busybox")
        );
        assert!(target.join("bin/busybox").is_file());
        assert!(target.join("bin/busybox-link").is_file());
        assert!(std::fs::read_to_string(target.join("etc/passwd"))
            .expect("passwd")
            .contains("app:x:1000"));
        assert!(target.join("etc/motd").is_file());
        assert!(
            !target.join("etc/removed-by-layer-2").exists(),
            "the whiteout hides the lower file"
        );
        assert!(
            !target.join("var/cache/old").exists(),
            "the opaque directory hides lower contents"
        );
        assert!(target.join("var/cache/new-file").is_file());
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = std::fs::metadata(target.join("tmp")).expect("tmp");
        assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
    });
    snapshot::unmount(&target).expect("unmount");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_through_the_registry() {
    if !tools_present() {
        return;
    }
    let images = tempfile::tempdir().expect("tempdir");
    build_test_images(images.path(), &[]);
    let registry = Registry::start().await;
    let index_digest = push_layout(
        &registry.url(),
        "test/busybox",
        "1.0",
        &images.path().join("oci"),
    )
    .await;

    let root = tempfile::tempdir().expect("tempdir");
    let images_service = service(root.path(), Registries::default());
    let reference = format!("{}/test/busybox:1.0", registry.host());
    let never = images_service.ensure(&reference, PullPolicy::Never).await;
    assert!(matches!(never, Err(ImageError::NeverPull(_))), "{never:?}");

    let image = images_service
        .ensure(&reference, PullPolicy::IfNotPresent)
        .await
        .expect("pull");
    assert_eq!(image.names, vec![reference.clone()]);
    assert_eq!(
        image.repo_digests,
        vec![format!("{}/test/busybox@{index_digest}", registry.host())]
    );
    assert_eq!(image.config.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(image.config.cmd, ["echo $GREETING"]);
    assert!(image.config.env.contains(&"GREETING=hello".to_string()));
    assert_eq!(image.config.working_dir, "/tmp");
    assert_eq!(image.config.user, "0:0");
    assert_eq!(image.config.architecture, host_arch());
    check_rootfs(&image);

    // Present now: no second download, by name or by digest.
    let downloads = images_service
        .stats()
        .blob_downloads
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(downloads, 4, "config and three layers");
    let again = images_service
        .ensure(&reference, PullPolicy::Always)
        .await
        .expect("pull again");
    assert_eq!(again.id, image.id);
    let by_digest = images_service
        .ensure(
            &format!("{}/test/busybox@{index_digest}", registry.host()),
            PullPolicy::IfNotPresent,
        )
        .await
        .expect("by digest");
    assert_eq!(by_digest.id, image.id);
    assert_eq!(
        images_service
            .stats()
            .blob_downloads
            .load(std::sync::atomic::Ordering::Relaxed),
        4
    );

    // Another platform from the same index.
    let other_root = tempfile::tempdir().expect("tempdir");
    let other_arch = if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    let mut config = ImageServiceConfig::new(other_root.path(), Registries::default());
    config.platform = Platform::parse(&format!("linux/{other_arch}")).expect("platform");
    let other = ImageService::open(config)
        .expect("open")
        .pull(&reference)
        .await
        .expect("pull other platform");
    assert_eq!(other.config.architecture, other_arch);
    assert_ne!(other.id, image.id);

    // A tag that does not exist names the endpoint and the registry's answer.
    let missing = images_service
        .pull(&format!("{}/test/busybox:nope", registry.host()))
        .await
        .expect_err("missing tag");
    assert!(
        missing.to_string().contains("MANIFEST_UNKNOWN"),
        "{missing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_through_a_mirror_with_a_rewrite() {
    if !tools_present() {
        return;
    }
    let images = tempfile::tempdir().expect("tempdir");
    build_test_images(images.path(), &[]);
    let registry = Registry::start().await;
    push_layout(
        &registry.url(),
        "mirrored/busybox",
        "1.36",
        &images.path().join("oci"),
    )
    .await;
    let registries = Registries::parse(&format!(
        "mirrors:\n  docker.io:\n    endpoint:\n      - \"{}\"\n    rewrite:\n      \"^library/(.*)\": \"mirrored/$1\"\n",
        registry.url()
    ))
    .expect("registries.yaml");
    let root = tempfile::tempdir().expect("tempdir");
    let image = service(root.path(), registries)
        .ensure("busybox:1.36", PullPolicy::IfNotPresent)
        .await
        .expect("pull through the mirror");
    // Stored under the name asked for, not the mirror's.
    assert_eq!(image.names, ["docker.io/library/busybox:1.36"]);
    assert!(registry.blob_gets("mirrored/busybox") >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn airgap_import_of_docker_save_and_oci_archives() {
    if !tools_present() {
        return;
    }
    let images = tempfile::tempdir().expect("tempdir");
    build_test_images(images.path(), &[]);
    let airgap = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        images.path().join("busybox-oci.tar"),
        airgap.path().join("1-busybox-oci.tar"),
    )
    .expect("copy");
    // Compressed archives are imported too.
    let gz = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gzip -c {} > {}",
            images.path().join("busybox-docker.tar").display(),
            airgap.path().join("2-busybox-docker.tar.gz").display()
        ))
        .status()
        .expect("gzip");
    assert!(gz.success());
    std::fs::write(airgap.path().join("notes.txt"), b"not an archive").expect("write");

    let root = tempfile::tempdir().expect("tempdir");
    let images_service = service(root.path(), Registries::default());
    let (imported, failures) = images_service
        .import_dir(airgap.path())
        .await
        .expect("import dir");
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(imported.len(), 2);
    // Both formats carry the same config: one image.
    assert_eq!(imported[0].id, imported[1].id);
    let listed = images_service.list().expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].names, ["docker.io/library/busybox:test"]);
    assert_eq!(listed[0].config.architecture, host_arch());
    // Imported in name order, OCI first. The blobs nobody uses were dropped: the other
    // platform's manifest and config, and the docker-save copy's uncompressed layers and
    // manifest.
    let record = images_service
        .find("docker.io/library/busybox:test")
        .expect("find")
        .expect("present");
    assert_eq!(
        images_service.content().list().expect("blobs").len(),
        // index, manifest, config, three layers.
        6,
        "{record:?}"
    );
    check_rootfs(&record);

    // A second import changes nothing.
    images_service
        .import_dir(airgap.path())
        .await
        .expect("again");
    assert_eq!(images_service.list().expect("list").len(), 1);
}

#[test]
fn cli_import_ls_rm() {
    if !tools_present() {
        return;
    }
    let images = tempfile::tempdir().expect("tempdir");
    build_test_images(images.path(), &[("IMAGE_NAME", "example.com/team/tool:v1")]);
    let data = tempfile::tempdir().expect("tempdir");
    let config = data.path().join("config.yaml");
    std::fs::write(&config, "").expect("config");
    let cluster = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_cluster"))
            .args(args)
            .arg("--data-dir")
            .arg(data.path())
            .arg("--config")
            .arg(&config)
            .env_remove("CLUSTER_CONFIG")
            .output()
            .expect("run cluster");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let docker_tar = images.path().join("busybox-docker.tar");
    let (ok, out, err) = cluster(&["images", "import", docker_tar.to_str().expect("path")]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("imported example.com/team/tool:v1"), "{out}");
    let (ok, out, err) = cluster(&["images", "ls"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("IMAGE"), "{out}");
    assert!(
        lines[1].starts_with("example.com/team/tool") && lines[1].contains(" v1 "),
        "{out}"
    );
    let (ok, _, err) = cluster(&["images", "rm", "example.com/team/tool:v2"]);
    assert!(!ok && err.contains("not found"), "{err}");
    let (ok, out, err) = cluster(&["images", "rm", "example.com/team/tool:v1"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("deleted sha256:"), "{out}");
    let (ok, out, _) = cluster(&["images", "ls", "--quiet"]);
    assert!(ok && out.is_empty(), "{out}");
    // Blobs and snapshots went with the image.
    let runtime = data.path().join("agent/runtime");
    assert_eq!(
        std::fs::read_dir(runtime.join("content/blobs/sha256"))
            .expect("blobs")
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(runtime.join("snapshots"))
            .expect("snapshots")
            .count(),
        0
    );
    // A missing file is an error naming it.
    let (ok, _, err) = cluster(&["images", "import", "/nonexistent.tar"]);
    assert!(!ok && err.contains("/nonexistent.tar"), "{err}");
}

/// A raw tar entry (the tar crate refuses to write `..`, which this test needs).
fn raw_tar_entry(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    header[100..108].copy_from_slice(b"0000644\0");
    header[108..116].copy_from_slice(b"0000000\0");
    header[116..124].copy_from_slice(b"0000000\0");
    header[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
    header[136..148].copy_from_slice(b"00000000000\0");
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malicious_layer_is_rejected() {
    if !tools_present() {
        return;
    }
    let registry = Registry::start().await;
    let root = tempfile::tempdir().expect("tempdir");
    let store = root.path().join("store");
    // The escape would land here: <store>/snapshots/tmp-…/fs/../../../escaped = <root>/escaped
    let mut layer = Vec::new();
    raw_tar_entry(&mut layer, "ok", b"fine");
    raw_tar_entry(&mut layer, "../../../escaped", b"pwned");
    raw_tar_entry(&mut layer, "../../../../escaped", b"pwned");
    layer.extend_from_slice(&[0u8; 1024]);
    let diff_id = Digest::of(&layer);
    let layer_digest = registry::push_blob(&registry.url(), "evil/image", layer.clone()).await;
    let config = format!(
        r#"{{"architecture":"{}","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#,
        host_arch()
    );
    let config_digest =
        registry::push_blob(&registry.url(), "evil/image", config.clone().into_bytes()).await;
    let image_manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"{}","digest":"{layer_digest}","size":{}}}]}}"#,
        manifest::OCI_MANIFEST,
        manifest::OCI_CONFIG,
        config.len(),
        manifest::OCI_LAYER,
        layer.len()
    );
    registry::push_manifest(
        &registry.url(),
        "evil/image",
        "latest",
        manifest::OCI_MANIFEST,
        image_manifest.into_bytes(),
    )
    .await;

    let images_service = service(&store, Registries::default());
    let err = images_service
        .pull(&format!("{}/evil/image", registry.host()))
        .await
        .expect_err("the layer must be rejected");
    assert!(
        matches!(
            &err,
            ImageError::Unpack {
                source: UnpackError::Escape { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(!root.path().join("escaped").exists());
    assert!(!root
        .path()
        .parent()
        .map(|p| p.join("escaped"))
        .is_some_and(|p| p.exists()));
    assert!(images_service.list().expect("list").is_empty());
    assert!(images_service
        .snapshots()
        .list()
        .expect("snapshots")
        .is_empty());
    let leftovers: Vec<PathBuf> = std::fs::read_dir(store.join("snapshots"))
        .expect("snapshots dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_share_one_download() {
    if !tools_present() {
        return;
    }
    let images = tempfile::tempdir().expect("tempdir");
    build_test_images(images.path(), &[("PAD_MIB", "2")]);
    let registry = Registry::start().await;
    push_layout(
        &registry.url(),
        "test/shared",
        "1.0",
        &images.path().join("oci"),
    )
    .await;
    let root = tempfile::tempdir().expect("tempdir");
    let images_service = service(root.path(), Registries::default());
    let reference = format!("{}/test/shared:1.0", registry.host());
    let pulls = (0..8).map(|_| {
        let images_service = images_service.clone();
        let reference = reference.clone();
        tokio::spawn(async move { images_service.pull(&reference).await })
    });
    let results = futures::future::join_all(pulls).await;
    let ids: HashSet<Digest> = results
        .into_iter()
        .map(|r| r.expect("task").expect("pull").id)
        .collect();
    assert_eq!(ids.len(), 1);
    let stats = images_service.stats();
    assert_eq!(
        stats
            .blob_downloads
            .load(std::sync::atomic::Ordering::Relaxed),
        4,
        "config and three layers, once each"
    );
    assert_eq!(
        stats
            .layers_unpacked
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    // The registry saw each blob fetched once (its access log is written as each request
    // ends; wait for all of them).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while registry.blob_gets("test/shared") < 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(registry.blob_gets("test/shared"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_the_least_recently_used_unused_image() {
    if !tools_present() {
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let images_service = service(root.path(), Registries::default());
    // Three images sharing busybox layers, each with its own random 1 MiB padding layer.
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        let out = tempfile::tempdir().expect("tempdir");
        let full = format!("example.com/gc/{name}:1");
        build_test_images(out.path(), &[("IMAGE_NAME", &full), ("PAD_MIB", "1")]);
        let imported = images_service
            .import(&out.path().join("busybox-oci.tar"))
            .await
            .expect("import");
        ids.push(imported[0].id.clone());
    }
    // Use order: a, b, c (c most recent).
    for name in ["a", "b", "c"] {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        images_service
            .ensure(
                &format!("example.com/gc/{name}:1"),
                PullPolicy::IfNotPresent,
            )
            .await
            .expect("ensure");
    }
    let before_blobs = images_service.content().list().expect("blobs").len();
    let policy = GcPolicy {
        min_age: std::time::Duration::ZERO,
        ..GcPolicy::default()
    };
    // Below the high threshold: nothing.
    let calm = FsUsage {
        capacity: 1000,
        available: 500,
    };
    // Image a is in use: a container was created from its reference (what the kubelet's
    // periodic GC derives from the runtime's containers).
    let in_use: HashSet<Digest> = cluster::agent::kubelet::image_gc::in_use(
        &images_service,
        &[
            "example.com/gc/a:1".to_string(),
            "example.com/gone:1".to_string(),
        ],
    );
    assert_eq!(in_use, [ids[0].clone()].into());
    let report = images_service.gc(&policy, calm, &in_use).expect("gc");
    assert!(report.removed.is_empty());
    // 90% used, 100 bytes to free: the least recently used unused image (b, since a is in
    // use) goes, and only it.
    let full = FsUsage {
        capacity: 1000,
        available: 100,
    };
    let report = images_service.gc(&policy, full, &in_use).expect("gc");
    assert_eq!(report.removed, vec![ids[1].clone()]);
    let left: Vec<Digest> = images_service
        .list()
        .expect("list")
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(left, vec![ids[0].clone(), ids[2].clone()]);
    // b's own blobs (index, manifest, config, padding layer) went; shared ones stayed.
    assert_eq!(
        images_service.content().list().expect("blobs").len(),
        before_blobs - 4
    );
    // The remaining images still have every snapshot.
    for image in images_service.list().expect("list") {
        assert!(image.rootfs.iter().all(|dir| dir.is_dir()));
    }
}
