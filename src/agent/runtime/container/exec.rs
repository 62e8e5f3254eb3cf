//! Exec: one more process inside a running container, for `kubectl exec` and exec probes.
//!
//! The agent starts `cluster shim exec DIR [--tty] -- CMD…` with pipes for its stdio; that
//! short-lived process joins the container with libcontainer's tenant builder, wires the new
//! process to those pipes (or, with a terminal, relays between them and the terminal's master,
//! so stderr arrives on stdout as on any terminal) and exits with the process's exit code.
//! Exit code 126 with a message on stderr means the process could not be started.
//!
//! With a terminal, the helper creates a FIFO `exec-<helper pid>.resize` in the container's
//! directory; [`ResizeHandle::resize`] writes `<columns> <rows>` lines to it and the helper
//! applies them to the terminal (`TIOCSWINSZ`).
//!
//! This module only spawns and hands back the helper; it must not call libcontainer.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};

use super::state::ContainerDir;
use super::RuntimeError;

/// A running exec'd process. Take its streams, then [`wait`](ExecProcess::wait).
#[derive(Debug)]
pub struct ExecProcess {
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
    child: Child,
    resize: Option<ResizeHandle>,
}

/// Sets the terminal size of an exec'd process that has a terminal.
#[derive(Debug, Clone)]
pub struct ResizeHandle {
    path: PathBuf,
}

/// How long [`ResizeHandle::resize`] waits for the helper to create its FIFO.
const RESIZE_WAIT: Duration = Duration::from_secs(5);

impl ResizeHandle {
    /// Sends a terminal size to the helper. Waits (boundedly) for the helper to be ready.
    pub async fn resize(&self, columns: u16, rows: u16) -> std::io::Result<()> {
        let deadline = tokio::time::Instant::now() + RESIZE_WAIT;
        loop {
            let path = self.path.clone();
            let attempt = tokio::task::spawn_blocking(move || {
                let mut fifo = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags_nonblock()
                    .open(&path)?;
                fifo.write_all(format!("{columns} {rows}\n").as_bytes())
            })
            .await
            .map_err(std::io::Error::other)?;
            match attempt {
                Err(err)
                    if err.kind() == std::io::ErrorKind::NotFound
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }
}

trait NonBlocking {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlocking for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt as _;
        self.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
    }
}

/// The resize FIFO of the exec helper with process id `helper_pid`.
pub fn resize_path(container_dir: &Path, helper_pid: u32) -> PathBuf {
    container_dir.join(format!("exec-{helper_pid}.resize"))
}

/// Parses a `<columns> <rows>` line.
pub fn parse_size(line: &[u8]) -> Option<(u16, u16)> {
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split_whitespace();
    let columns = parts.next()?.parse().ok()?;
    let rows = parts.next()?.parse().ok()?;
    Some((columns, rows))
}

/// The result of [`ExecProcess::output`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecProcess {
    /// The terminal size setter, when the process has a terminal.
    pub fn resizer(&self) -> Option<ResizeHandle> {
        self.resize.clone()
    }

    /// Waits for the process to end; returns its exit code (128 + signal when killed).
    pub async fn wait(mut self) -> Result<i32, RuntimeError> {
        drop(self.stdin.take());
        let status = self.child.wait().await.map_err(|source| RuntimeError::Io {
            what: "waiting for the exec helper".into(),
            source,
        })?;
        Ok(status.code().unwrap_or(255))
    }

    /// Closes stdin, collects stdout and stderr, and waits (as an exec probe does). After
    /// `timeout` the helper is killed and the exit code is 137.
    ///
    /// # Caveats
    /// The process inside the container is not killed with the helper yet: it runs on until
    /// it ends by itself or the container stops.
    pub async fn output(mut self, timeout: Duration) -> Result<ExecOutput, RuntimeError> {
        drop(self.stdin.take());
        let mut stdout = self.stdout.take();
        let mut stderr = self.stderr.take();
        let collect = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let read_out = async {
                if let Some(s) = stdout.as_mut() {
                    let _ = s.read_to_end(&mut out).await;
                }
            };
            let read_err = async {
                if let Some(s) = stderr.as_mut() {
                    let _ = s.read_to_end(&mut err).await;
                }
            };
            tokio::join!(read_out, read_err);
            let status = self.child.wait().await;
            (status, out, err)
        };
        match tokio::time::timeout(timeout, collect).await {
            Ok((status, stdout, stderr)) => {
                let status = status.map_err(|source| RuntimeError::Io {
                    what: "waiting for the exec helper".into(),
                    source,
                })?;
                Ok(ExecOutput {
                    exit_code: status.code().unwrap_or(255),
                    stdout,
                    stderr,
                })
            }
            Err(_) => {
                let _ = self.child.start_kill();
                Ok(ExecOutput {
                    exit_code: 137,
                    stdout: Vec::new(),
                    stderr: b"exec timed out".to_vec(),
                })
            }
        }
    }
}

/// Starts the exec helper for `command` in the container of `dir`.
pub(super) fn spawn(
    shim_binary: &Path,
    dir: &ContainerDir,
    command: &[String],
    tty: bool,
) -> Result<ExecProcess, RuntimeError> {
    let mut cmd = tokio::process::Command::new(shim_binary);
    cmd.arg("shim").arg("exec").arg(&dir.dir);
    if tty {
        cmd.arg("--tty");
    }
    cmd.arg("--")
        .args(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    let mut child = cmd.spawn().map_err(|source| RuntimeError::Io {
        what: format!("starting the exec helper {}", shim_binary.display()),
        source,
    })?;
    let resize = match (tty, child.id()) {
        (true, Some(pid)) => Some(ResizeHandle {
            path: resize_path(&dir.dir, pid),
        }),
        _ => None,
    };
    Ok(ExecProcess {
        stdin: child.stdin.take(),
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        child,
        resize,
    })
}
