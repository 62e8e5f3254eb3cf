//! Containers: the operations the kubelet needs, carried out through one shim per container.
//!
//! [`Runtime`] is what the kubelet calls: create, start, stop (signal, grace period, then
//! SIGKILL), kill, wait, remove, list, status, exec (with or without a terminal), attach (to
//! the container's own stdio, [`attach`]) and stats.
//! It never calls libcontainer itself: creating a container re-executes this binary as
//! `cluster shim run DIR` ([`shim`]), which owns the container from then on. Everything the
//! runtime knows is on disk under its root ([`state`]) or answered by the shims over their
//! sockets ([`protocol`]), so the runtime holds no memory of its own: a new `Runtime` on the
//! same root — after an agent restart — finds every container again, running or exited.
//!
//! # Guarantees
//! - A running container does not depend on the agent process: killing the agent leaves the
//!   shim and the container running.
//! - An exited container keeps its exit code, OOM flag and times until [`Runtime::remove`].
//! - A container whose shim vanished without recording an exit reports [`State::Unknown`].
//!
//! This module must not read the API or the store; it only runs containers.

pub mod attach;
pub mod cgroups;
pub mod exec;
pub mod logs;
pub mod protocol;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod state;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;

pub use attach::{AttachInput, AttachOptions, AttachOutput};
pub use exec::ExecProcess;
pub use protocol::{Request, Response};
pub use spec::{ContainerSpec, ImageConfig};
pub use state::{Rootfs, ShimStatus, State};

use state::{ContainerDir, ContainerRecord, LIBCONTAINER_DIR};

/// How long a shim may take to create a container (pull and unpack happen before).
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a shim may take to answer a request other than `Wait`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a container to die after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(30);

const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

/// Where the runtime keeps its state and its logs.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The state root: one directory per container (e.g. `/run/cluster/containers`).
    pub root: PathBuf,
    /// Where pod logs go (`/var/log/pods`).
    pub log_root: PathBuf,
    /// The `cluster` binary to run as the shim (normally the running executable).
    pub shim_binary: PathBuf,
    /// Rotate a container's log at this size (0: never).
    pub log_max_size: u64,
    /// Log files kept per container, the live one included.
    pub log_max_files: u32,
}

impl RuntimeConfig {
    /// The defaults of a node: state in `/run/cluster/containers`, logs in `/var/log/pods`.
    pub fn new(root: PathBuf, log_root: PathBuf) -> io::Result<Self> {
        Ok(RuntimeConfig {
            root,
            log_root,
            shim_binary: std::env::current_exe()?,
            log_max_size: logs::DEFAULT_MAX_SIZE,
            log_max_files: logs::DEFAULT_MAX_FILES,
        })
    }
}

/// The pod a container belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// Everything needed to create a container.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// The container's name in the pod.
    pub name: String,
    pub pod: PodRef,
    /// The restart count: the log file is `<attempt>.log`.
    pub attempt: u32,
    /// The image reference, for status.
    pub image: String,
    pub image_config: ImageConfig,
    pub rootfs: Rootfs,
    pub spec: ContainerSpec,
    /// The pod's cgroup ([`cgroups::ensure_pod`]); the container's is made inside it.
    pub pod_cgroup: String,
}

/// What the kubelet sees of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    pub id: String,
    pub name: String,
    pub pod: PodRef,
    pub attempt: u32,
    pub image: String,
    pub state: State,
    pub pid: Option<i32>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    /// `Completed`, `Error`, `OOMKilled` or `ContainerStatusUnknown` once it is no longer running.
    pub reason: Option<String>,
    pub message: Option<String>,
    pub log_path: PathBuf,
}

/// cpu and memory use of a container.
pub type ContainerStats = cgroups::Stats;

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("container {0} not found")]
    NotFound(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
    #[error("creating container {name}: {message}")]
    CreateFailed { name: String, message: String },
    #[error("container {id}: {message}")]
    Shim { id: String, message: String },
    #[error("container {0} is still running")]
    StillRunning(String),
}

fn io_ctx(what: impl Into<String>) -> impl FnOnce(io::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Io { what, source }
}

/// The container runtime of a node.
#[derive(Debug, Clone)]
pub struct Runtime {
    config: RuntimeConfig,
}

impl Runtime {
    /// Opens (or creates) the state root. Containers already there are found by [`list`].
    ///
    /// [`list`]: Runtime::list
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        fs::create_dir_all(config.root.join(LIBCONTAINER_DIR))
            .map_err(io_ctx(format!("creating {}", config.root.display())))?;
        Ok(Runtime { config })
    }

    fn dir(&self, id: &str) -> Result<ContainerDir, RuntimeError> {
        let valid = !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        let dir = ContainerDir::new(&self.config.root, id);
        if !valid || !dir.record().exists() {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        Ok(dir)
    }

    /// Creates a container: writes its bundle and starts its shim, which creates it with
    /// libcontainer. The container is `Created`; [`start`](Runtime::start) runs it.
    pub async fn create(&self, request: &CreateRequest) -> Result<String, RuntimeError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = ContainerDir::new(&self.config.root, &id);
        fs::create_dir_all(&dir.dir).map_err(io_ctx(format!("creating {}", dir.dir.display())))?;
        let result = self.create_in(&dir, &id, request).await;
        if result.is_err() {
            let _ = fs::remove_dir_all(&dir.dir);
        }
        result.map(|()| id)
    }

    async fn create_in(
        &self,
        dir: &ContainerDir,
        id: &str,
        request: &CreateRequest,
    ) -> Result<(), RuntimeError> {
        let layout = match &request.rootfs {
            Rootfs::Path(path) => spec::RootfsLayout {
                root: path.clone(),
                lookup: vec![path.clone()],
            },
            Rootfs::Overlay { lower } => spec::RootfsLayout {
                root: dir.rootfs(),
                lookup: lower.iter().rev().cloned().collect(),
            },
        };
        let cgroup_path = cgroups::container_path(&request.pod_cgroup, id);
        let oci = spec::build(&request.image_config, &request.spec, &layout, &cgroup_path)?;
        state::write_json_atomic(&dir.spec(), &oci).map_err(io_ctx("writing config.json"))?;
        let record = ContainerRecord {
            id: id.to_string(),
            name: request.name.clone(),
            pod_namespace: request.pod.namespace.clone(),
            pod_name: request.pod.name.clone(),
            pod_uid: request.pod.uid.clone(),
            attempt: request.attempt,
            image: request.image.clone(),
            log_path: logs::log_path(
                &self.config.log_root,
                &request.pod.namespace,
                &request.pod.name,
                &request.pod.uid,
                &request.name,
                request.attempt,
            ),
            log_max_size: self.config.log_max_size,
            log_max_files: self.config.log_max_files,
            rootfs: request.rootfs.clone(),
            cgroup_path,
            created_at: state::now(),
            stdin: request.spec.stdin,
            stdin_once: request.spec.stdin_once,
        };
        state::write_json_atomic(&dir.record(), &record)
            .map_err(io_ctx("writing container.json"))?;

        let shim_log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.shim_log())
            .map_err(io_ctx("opening shim.log"))?;
        let mut child = tokio::process::Command::new(&self.config.shim_binary)
            .arg("shim")
            .arg("run")
            .arg(&dir.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(shim_log)
            // Its own process group: a Ctrl-C or a signal to the agent's group spares it.
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(io_ctx(format!(
                "starting the shim {}",
                self.config.shim_binary.display()
            )))?;
        let stdout = child.stdout.take();
        // The shim outlives this call; reap it whenever it ends.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        let line = match stdout {
            Some(stdout) => {
                let mut line = String::new();
                let mut reader = BufReader::new(stdout);
                match tokio::time::timeout(CREATE_TIMEOUT, reader.read_line(&mut line)).await {
                    Ok(Ok(_)) => line,
                    Ok(Err(err)) => format!("error: reading from the shim: {err}"),
                    Err(_) => "error: the shim did not answer in time".to_string(),
                }
            }
            None => "error: no pipe to the shim".to_string(),
        };
        let line = line.trim();
        if line.starts_with("ok ") {
            tracing::debug!(id, name = %request.name, "container created");
            return Ok(());
        }
        let message = match line.strip_prefix("error: ") {
            Some(message) => message.to_string(),
            None if line.is_empty() => {
                let log = fs::read_to_string(dir.shim_log()).unwrap_or_default();
                format!(
                    "the shim exited without an answer; shim.log: {}",
                    log.trim()
                )
            }
            None => line.to_string(),
        };
        Err(RuntimeError::CreateFailed {
            name: request.name.clone(),
            message,
        })
    }

    /// Sends one request to a container's shim.
    async fn call(
        &self,
        dir: &ContainerDir,
        request: &Request,
        timeout: Option<Duration>,
    ) -> io::Result<Response> {
        let exchange = async {
            let mut stream = UnixStream::connect(dir.socket()).await?;
            let mut line = serde_json::to_vec(request).map_err(io::Error::other)?;
            line.push(b'\n');
            stream.write_all(&line).await?;
            let mut reader = BufReader::new(stream);
            let mut answer = String::new();
            if reader.read_line(&mut answer).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the shim closed the connection",
                ));
            }
            serde_json::from_str::<Response>(&answer).map_err(io::Error::other)
        };
        match timeout {
            Some(limit) => tokio::time::timeout(limit, exchange)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the shim did not answer"))?,
            None => exchange.await,
        }
    }

    /// Sends a request that must succeed.
    async fn command(&self, id: &str, request: Request) -> Result<ShimStatus, RuntimeError> {
        let dir = self.dir(id)?;
        let response = self
            .call(&dir, &request, Some(REQUEST_TIMEOUT))
            .await
            .map_err(|err| RuntimeError::Shim {
                id: id.to_string(),
                message: format!("{request:?}: {err}"),
            })?;
        if let Some(message) = response.error {
            return Err(RuntimeError::Shim {
                id: id.to_string(),
                message,
            });
        }
        match response.status {
            Some(status) => Ok(status),
            None => self.shim_status(&dir).await,
        }
    }

    /// Starts a created container.
    pub async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.command(id, Request::Start).await.map(|_| ())
    }

    /// Sends `signal` to the container's init process, or to all its processes.
    pub async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), RuntimeError> {
        match self.command(id, Request::Kill { signal, all }).await {
            Ok(_) => Ok(()),
            // Gone meanwhile: that is what was asked.
            Err(err) if self.is_finished(id).await => {
                tracing::debug!(id, error = %err, "kill after exit");
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    async fn is_finished(&self, id: &str) -> bool {
        matches!(
            self.status(id).await.map(|s| s.state),
            Ok(State::Exited | State::Unknown)
        )
    }

    /// Stops a container as the kubelet does: SIGTERM, then SIGKILL to all its processes if it
    /// is still running after `grace`. Returns its final status.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<ContainerStatus, RuntimeError> {
        let current = self.status(id).await?;
        match current.state {
            State::Exited | State::Unknown => return Ok(current),
            State::Created => {
                // Never started: nothing to be graceful with.
                self.kill(id, SIGKILL, true).await?;
            }
            State::Running => {
                if !grace.is_zero() {
                    // A SIGTERM that does not get through must not spare the container its
                    // SIGKILL: wait out the grace period anyway, then kill.
                    if let Err(err) = self.kill(id, SIGTERM, false).await {
                        tracing::warn!(id, error = %err, "SIGTERM failed; SIGKILL follows after the grace period");
                    }
                    if let Ok(status) = tokio::time::timeout(grace, self.wait(id)).await {
                        return status;
                    }
                    tracing::info!(id, ?grace, "grace period over, killing");
                }
                self.kill(id, SIGKILL, true).await?;
            }
        }
        match tokio::time::timeout(KILL_TIMEOUT, self.wait(id)).await {
            Ok(status) => status,
            Err(_) => Err(RuntimeError::Shim {
                id: id.to_string(),
                message: "still running after SIGKILL".into(),
            }),
        }
    }

    /// Waits until the container has exited and returns its final status.
    pub async fn wait(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        let dir = self.dir(id)?;
        if let Ok(response) = self.call(&dir, &Request::Wait, None).await {
            if let Some(message) = response.error {
                return Err(RuntimeError::Shim {
                    id: id.to_string(),
                    message,
                });
            }
        }
        // Answered, or the shim is already gone: either way status.json is final now.
        let status = self.status(id).await?;
        Ok(status)
    }

    /// The status reported by the shim, or the one it left on disk.
    async fn shim_status(&self, dir: &ContainerDir) -> Result<ShimStatus, RuntimeError> {
        if let Ok(response) = self
            .call(dir, &Request::Status, Some(REQUEST_TIMEOUT))
            .await
        {
            if let Some(status) = response.status {
                return Ok(status);
            }
        }
        let mut status = match dir.read_status() {
            Ok(status) => status,
            // The shim died before it wrote anything.
            Err(err) if err.kind() == io::ErrorKind::NotFound => ShimStatus {
                state: State::Unknown,
                pid: None,
                shim_pid: None,
                started_at: None,
                finished_at: None,
                exit_code: None,
                signal: None,
                oom_killed: false,
                message: Some("the shim never reported".into()),
            },
            Err(err) => return Err(io_ctx("reading status.json")(err)),
        };
        if status.state != State::Exited {
            // The socket is gone but no exit was recorded: the shim crashed or the host
            // rebooted. The kubelet calls this ContainerStatusUnknown.
            status.state = State::Unknown;
            status.message = Some("the container's shim is gone".into());
        }
        Ok(status)
    }

    /// The status of one container.
    pub async fn status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        let dir = self.dir(id)?;
        let record = dir
            .read_record()
            .map_err(io_ctx("reading container.json"))?;
        let status = self.shim_status(&dir).await?;
        Ok(ContainerStatus {
            id: record.id,
            name: record.name,
            pod: PodRef {
                namespace: record.pod_namespace,
                name: record.pod_name,
                uid: record.pod_uid,
            },
            attempt: record.attempt,
            image: record.image,
            state: status.state,
            pid: status.pid,
            created_at: record.created_at,
            started_at: status.started_at.clone(),
            finished_at: status.finished_at.clone(),
            exit_code: status.exit_code,
            oom_killed: status.oom_killed,
            reason: status.reason().map(String::from),
            message: status.message,
            log_path: record.log_path,
        })
    }

    /// Every container under the root, running or not (this is how a restarted agent finds
    /// its containers again).
    pub async fn list(&self) -> Result<Vec<ContainerStatus>, RuntimeError> {
        let mut ids = Vec::new();
        let entries = fs::read_dir(&self.config.root)
            .map_err(io_ctx(format!("reading {}", self.config.root.display())))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && entry.path().join("container.json").exists() {
                ids.push(name);
            }
        }
        ids.sort();
        let mut statuses = Vec::with_capacity(ids.len());
        for id in ids {
            match self.status(&id).await {
                Ok(status) => statuses.push(status),
                Err(err) => tracing::warn!(id, error = %err, "skipping unreadable container"),
            }
        }
        Ok(statuses)
    }

    /// Removes an exited container: its state, its log files and what a dead shim left behind.
    pub async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let dir = self.dir(id)?;
        let status = self.shim_status(&dir).await?;
        if matches!(status.state, State::Created | State::Running) {
            return Err(RuntimeError::StillRunning(id.to_string()));
        }
        let record = dir
            .read_record()
            .map_err(io_ctx("reading container.json"))?;
        if let Rootfs::Overlay { .. } = record.rootfs {
            // Normally the shim unmounted it; after a crash it is still there.
            let _ = rustix::mount::unmount(dir.rootfs(), rustix::mount::UnmountFlags::DETACH);
        }
        // libcontainer's state and the container cgroup, if the shim could not remove them.
        let _ = fs::remove_dir_all(dir.libcontainer_root().join(id));
        if let Ok(version) = cgroups::detect() {
            remove_cgroup(version, &record.cgroup_path);
        }
        remove_logs(&record.log_path);
        fs::remove_dir_all(&dir.dir).map_err(io_ctx(format!("removing {}", dir.dir.display())))
    }

    /// cpu and memory use of a running container.
    pub async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        let dir = self.dir(id)?;
        let record = dir
            .read_record()
            .map_err(io_ctx("reading container.json"))?;
        let version = cgroups::detect()?;
        Ok(cgroups::stats(version, &record.cgroup_path)?)
    }

    /// Attaches to a container's stdio ([`attach`]): its output from now on, and input to
    /// its stdin when it has one.
    pub async fn attach(
        &self,
        id: &str,
        options: AttachOptions,
    ) -> Result<(AttachOutput, AttachInput), RuntimeError> {
        let dir = self.dir(id)?;
        let shim_error = |message: String| RuntimeError::Shim {
            id: id.to_string(),
            message,
        };
        let request = Request::Attach {
            stdin: options.stdin,
            stdout: options.stdout,
            stderr: options.stderr,
        };
        let open = async {
            let stream = UnixStream::connect(dir.socket()).await?;
            let (read, mut write) = stream.into_split();
            let mut line = serde_json::to_vec(&request).map_err(io::Error::other)?;
            line.push(b'\n');
            write.write_all(&line).await?;
            let mut reader = BufReader::new(read);
            let mut answer = String::new();
            if reader.read_line(&mut answer).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the shim closed the connection",
                ));
            }
            let response: Response = serde_json::from_str(&answer).map_err(io::Error::other)?;
            Ok((response, reader, write))
        };
        let (response, reader, writer) = tokio::time::timeout(REQUEST_TIMEOUT, open)
            .await
            .map_err(|_| shim_error("attach: the shim did not answer".into()))?
            .map_err(|err| shim_error(format!("attach: {err}")))?;
        if let Some(message) = response.error {
            return Err(shim_error(message));
        }
        Ok((AttachOutput { reader }, AttachInput { writer }))
    }

    /// Starts `command` inside a running container, with a terminal when `tty`.
    pub async fn exec(
        &self,
        id: &str,
        command: &[String],
        tty: bool,
    ) -> Result<ExecProcess, RuntimeError> {
        let dir = self.dir(id)?;
        exec::spawn(&self.config.shim_binary, &dir, command, tty)
    }
}

/// Removes the container's cgroup in every hierarchy (empty cgroups only; missing is fine).
fn remove_cgroup(version: cgroups::Version, path: &str) {
    let controllers: Vec<String> = match version {
        cgroups::Version::V2 => vec![String::new()],
        cgroups::Version::V1 => fs::read_dir("/sys/fs/cgroup")
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default(),
    };
    for controller in controllers {
        let _ = fs::remove_dir(cgroups::dir(version, &controller, path));
    }
}

/// Removes a container's log file and its rotated files (the kubelet removes them with the
/// container), and the container's log directory when it is left empty.
fn remove_logs(log_path: &Path) {
    if let Ok(rotated) = logs::rotated_files(log_path) {
        for path in rotated {
            let _ = fs::remove_file(path);
        }
    }
    let _ = fs::remove_file(log_path);
    if let Some(dir) = log_path.parent() {
        let _ = fs::remove_dir(dir);
    }
}
