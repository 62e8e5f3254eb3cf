//! Root filesystems and a cleaned-up container runtime for the container tests.
//!
//! Until images can be pulled, a root filesystem is made from Debian's busybox-static: the
//! static `busybox` binary in `/bin` with a symlink per applet, and `/etc/passwd` and
//! `/etc/group` with a few users. [`TestRuntime`] owns a temporary state root and log root and,
//! when dropped (also when a test fails), kills every container it made, waits for their shims,
//! removes their cgroups, mounts and files.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cluster::agent::runtime::container::cgroups::{self, QosClass};
use cluster::agent::runtime::container::state::{ContainerDir, Rootfs};
use cluster::agent::runtime::container::{
    ContainerSpec, CreateRequest, ImageConfig, PodRef, Runtime, RuntimeConfig,
};

/// True when the test can run: root is needed. Outside CI a test without root skips (with the
/// reason printed); under `CI=true` it fails instead, so CI never skips silently.
pub fn require_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: container tests need root, and CI=true must run them");
    }
    eprintln!("skipping {test}: container tests need root");
    false
}

/// Where Debian's busybox-static puts its binary.
fn busybox() -> PathBuf {
    for candidate in ["/bin/busybox", "/usr/bin/busybox"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!("busybox not found: install Debian's busybox-static (scripts/test.sh does)");
}

/// Makes a busybox root filesystem in `dir` and returns it.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).expect("mkdir bin");
    let busybox = busybox();
    fs::copy(&busybox, bin.join("busybox")).expect("copy busybox");
    let list = std::process::Command::new(&busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if !applet.is_empty() && applet != "busybox" {
            let _ = symlink("busybox", bin.join(applet));
        }
    }
    for sub in [
        "etc",
        "proc",
        "sys",
        "dev",
        "root",
        "home/alice",
        "home/bob",
    ] {
        fs::create_dir_all(dir.join(sub)).expect("mkdir");
    }
    let tmp = dir.join("tmp");
    fs::create_dir_all(&tmp).expect("mkdir tmp");
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).expect("chmod tmp");
    fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n\
         alice:x:1000:1000:Alice:/home/alice:/bin/sh\n\
         bob:x:1001:1001:Bob:/home/bob:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .expect("passwd");
    fs::write(
        dir.join("etc/group"),
        "root:x:0:\nalice:x:1000:\nbob:x:1001:\nstaff:x:50:alice\nnogroup:x:65534:\n",
    )
    .expect("group");
    dir.to_path_buf()
}

/// A runtime on temporary directories, with a busybox root filesystem and a pod cgroup.
pub struct TestRuntime {
    pub runtime: Runtime,
    pub config: RuntimeConfig,
    pub rootfs: PathBuf,
    pub pod: PodRef,
    pub pod_cgroup: String,
    pub temp: tempfile::TempDir,
}

impl TestRuntime {
    pub fn new() -> TestRuntime {
        let temp = tempfile::Builder::new()
            .prefix("cluster-ct-")
            .tempdir()
            .expect("tempdir");
        let rootfs = busybox_rootfs(&temp.path().join("image"));
        let config = RuntimeConfig {
            root: temp.path().join("containers"),
            log_root: temp.path().join("logs"),
            shim_binary: PathBuf::from(env!("CARGO_BIN_EXE_cluster")),
            log_max_size: 1024 * 1024,
            log_max_files: 3,
        };
        let runtime = Runtime::new(config.clone()).expect("runtime");
        let uid = uuid::Uuid::new_v4().to_string();
        let pod_cgroup = cgroups::ensure_pod(QosClass::BestEffort, &uid, &Default::default())
            .expect("pod cgroup");
        TestRuntime {
            runtime,
            config,
            rootfs,
            pod: PodRef {
                namespace: "default".into(),
                name: "test".into(),
                uid,
            },
            pod_cgroup,
            temp,
        }
    }

    /// A create request for `name` running `command` in the busybox root filesystem.
    pub fn request(&self, name: &str, command: &[&str]) -> CreateRequest {
        CreateRequest {
            name: name.into(),
            pod: self.pod.clone(),
            attempt: 0,
            image: "busybox:test".into(),
            image_config: ImageConfig {
                entrypoint: Vec::new(),
                cmd: vec!["/bin/sh".into()],
                env: vec!["PATH=/bin".into()],
                working_dir: None,
                user: None,
            },
            rootfs: Rootfs::Path(self.rootfs.clone()),
            spec: ContainerSpec {
                command: command.iter().map(|s| s.to_string()).collect(),
                ..ContainerSpec::default()
            },
            pod_cgroup: self.pod_cgroup.clone(),
        }
    }
}

impl Drop for TestRuntime {
    fn drop(&mut self) {
        for dir in stop_containers(&self.config.root) {
            if let Ok(record) = dir.read_record() {
                let _ = fs::remove_file(&record.log_path);
            }
        }
        let _ = cgroups::remove_pod(QosClass::BestEffort, &self.pod.uid);
        // Tests leave the machine as they found it: the QoS parents and the root go too once
        // empty (removing a cgroup another test still uses fails harmlessly).
        for parent in ["besteffort", "burstable"] {
            remove_cgroup_everywhere(&format!("{}/{parent}", cgroups::ROOT));
        }
        remove_cgroup_everywhere(cgroups::ROOT);
    }
}

/// Kills every container under the container state directory `root` (its init process: a
/// PID namespace's init takes the rest with it), gives the shims up to 20 s to notice, clean up
/// and leave, then kills the stragglers and undoes what they would have: the rootfs mount and
/// the container cgroup. Returns the container directories found.
pub fn stop_containers(root: &Path) -> Vec<ContainerDir> {
    let mut dirs = Vec::new();
    let mut shims = Vec::new();
    for entry in fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let dir = ContainerDir::new(root, &name);
        if let Ok(status) = dir.read_status() {
            if let Some(pid) = status.pid.and_then(rustix::process::Pid::from_raw) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            if let Some(pid) = status.shim_pid.and_then(rustix::process::Pid::from_raw) {
                shims.push((dir.clone(), pid));
            }
        }
        dirs.push(dir);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for (dir, pid) in &shims {
        while dir.socket().exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if dir.socket().exists() {
            let _ = rustix::process::kill_process(*pid, rustix::process::Signal::KILL);
        }
        let _ = rustix::mount::unmount(dir.rootfs(), rustix::mount::UnmountFlags::DETACH);
        if let Ok(record) = dir.read_record() {
            remove_cgroup_everywhere(&record.cgroup_path);
        }
    }
    dirs
}

/// Removes a cgroup from every hierarchy (only if empty).
pub fn remove_cgroup_everywhere(path: &str) {
    let Ok(version) = cgroups::detect() else {
        return;
    };
    let controllers: Vec<String> = match version {
        cgroups::Version::V2 => vec![String::new()],
        cgroups::Version::V1 => fs::read_dir("/sys/fs/cgroup")
            .map(|e| {
                e.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default(),
    };
    for controller in controllers {
        let _ = fs::remove_dir(cgroups::dir(version, &controller, path));
    }
}
