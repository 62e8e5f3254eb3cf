//! What a container leaves on disk, so that a restarted agent finds it again.
//!
//! Each container has a directory `<runtime-root>/<id>/` that is also its OCI bundle:
//! `config.json` (the OCI spec), `container.json` ([`ContainerRecord`], written once by the
//! agent), `status.json` ([`ShimStatus`], written only by the shim, always atomically),
//! `shim.sock` (the shim's socket while it runs: requests and attach sessions), `shim.log` (the shim's own diagnostics) and,
//! for overlay root filesystems, `rootfs/`, `upper/` and `work/`. libcontainer keeps its state
//! under `<runtime-root>/.libcontainer/<id>/`.
//!
//! This module only reads and writes these files; it must not start or signal processes.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The directory libcontainer keeps its own state in, under the runtime root.
pub const LIBCONTAINER_DIR: &str = ".libcontainer";

/// Paths of one container's files.
#[derive(Debug, Clone)]
pub struct ContainerDir {
    pub dir: PathBuf,
}

impl ContainerDir {
    pub fn new(root: &Path, id: &str) -> Self {
        ContainerDir { dir: root.join(id) }
    }

    pub fn id(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The runtime root this container lives in.
    pub fn root(&self) -> &Path {
        self.dir.parent().unwrap_or(Path::new("/"))
    }

    pub fn spec(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    pub fn record(&self) -> PathBuf {
        self.dir.join("container.json")
    }
    pub fn status(&self) -> PathBuf {
        self.dir.join("status.json")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("shim.sock")
    }
    pub fn shim_log(&self) -> PathBuf {
        self.dir.join("shim.log")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    /// libcontainer's root path (it adds the container id itself).
    pub fn libcontainer_root(&self) -> PathBuf {
        self.root().join(LIBCONTAINER_DIR)
    }

    pub fn read_record(&self) -> io::Result<ContainerRecord> {
        read_json(&self.record())
    }

    pub fn read_status(&self) -> io::Result<ShimStatus> {
        read_json(&self.status())
    }

    pub fn write_status(&self, status: &ShimStatus) -> io::Result<()> {
        write_json_atomic(&self.status(), status)
    }
}

/// How the root filesystem of a container is provided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Rootfs {
    /// A directory prepared by the caller, used as is.
    Path(PathBuf),
    /// Image layers (lowest first); the shim mounts an overlay with a private upper dir.
    Overlay { lower: Vec<PathBuf> },
}

/// What the agent knows about a container, written once at create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub attempt: u32,
    pub image: String,
    pub log_path: PathBuf,
    pub log_max_size: u64,
    pub log_max_files: u32,
    pub rootfs: Rootfs,
    /// The container's cgroup path (as in the OCI spec), for stats and the OOM counter.
    pub cgroup_path: String,
    /// Unix seconds with nanoseconds, when the agent created it.
    pub created_at: String,
    /// The container has a stdin for attach clients ([`super::spec::ContainerSpec::stdin`]).
    #[serde(default)]
    pub stdin: bool,
    /// Its stdin closes after the first attach ([`super::spec::ContainerSpec::stdin_once`]).
    #[serde(default)]
    pub stdin_once: bool,
}

/// The life cycle states, as the CRI names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum State {
    Created,
    Running,
    Exited,
    /// The shim is gone without having recorded an exit (it crashed, or the host rebooted).
    Unknown,
}

/// What the shim reports: written to `status.json` at every change and sent over its socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShimStatus {
    pub state: State,
    /// The container's init process, as seen from the host.
    pub pid: Option<i32>,
    /// The shim's own process id.
    pub shim_pid: Option<i32>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Exit code as a shell reports it: the code, or 128 + the signal that ended it.
    pub exit_code: Option<i32>,
    /// The signal that ended the init process, if any.
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed a process of this container.
    pub oom_killed: bool,
    /// Why it is in this state, when something went wrong.
    pub message: Option<String>,
}

impl ShimStatus {
    pub fn created(pid: i32, shim_pid: i32) -> Self {
        ShimStatus {
            state: State::Created,
            pid: Some(pid),
            shim_pid: Some(shim_pid),
            started_at: None,
            finished_at: None,
            exit_code: None,
            signal: None,
            oom_killed: false,
            message: None,
        }
    }

    /// The kubelet's reason for a terminated container (containerd's choice).
    pub fn reason(&self) -> Option<&'static str> {
        match self.state {
            State::Exited if self.oom_killed => Some("OOMKilled"),
            State::Exited if self.exit_code == Some(0) => Some("Completed"),
            State::Exited => Some("Error"),
            State::Unknown => Some("ContainerStatusUnknown"),
            _ => None,
        }
    }
}

/// The current time as RFC 3339 (UTC, nanoseconds).
pub fn now() -> String {
    jiff::Timestamp::now().to_string()
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<T> {
    let bytes = fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(|err| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {err}", path.display()),
        )
    })
}

/// Writes JSON to a temporary file, syncs it and renames it over `path`.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let container = ContainerDir::new(dir.path(), "abc");
        fs::create_dir_all(&container.dir).expect("mkdir");
        let mut status = ShimStatus::created(42, 41);
        container.write_status(&status).expect("write");
        status.state = State::Exited;
        status.exit_code = Some(137);
        status.oom_killed = true;
        container.write_status(&status).expect("rewrite");
        let read = container.read_status().expect("read");
        assert_eq!(read, status);
        assert_eq!(read.reason(), Some("OOMKilled"));
        assert!(!container.dir.join("status.json.tmp").exists());
    }
}
