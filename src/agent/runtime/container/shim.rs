//! The shim: `cluster shim run DIR` and `cluster shim exec DIR -- CMD…`, re-executed from the
//! agent's own binary.
//!
//! libcontainer is synchronous and creates processes with clone(); forking a multi-threaded
//! tokio process is not safe, so the agent never calls it. Instead, one small single-threaded
//! shim per container (as containerd-shim and conmon do):
//!
//! - creates the container from the bundle in `DIR` and reports `ok <pid>` (or `error: …`) on
//!   its stdout, which the agent reads, then detaches from that pipe;
//! - is the parent (and child subreaper) of the container's init process, so it alone reaps it
//!   and can signal it through a pidfd without racing pid reuse;
//! - copies the container's stdout and stderr into the CRI log file ([`super::logs`]);
//! - answers the agent on `DIR/shim.sock` ([`super::protocol`]): status, start, kill, wait
//!   and attach. Every connection is non-blocking with its own buffers, read and written from
//!   the one poll loop, so a slow or dead client never delays another (a connection that
//!   sends no whole request within 30 s is dropped);
//! - serves attach sessions: the container's output goes to every attached client as well
//!   as to the log, queued per client; a client that falls more than 1 MiB behind is
//!   detached instead of slowing the container or the log. With `stdin: true` the container
//!   reads a pipe (or, with a terminal, the terminal) that the shim keeps open, so it blocks
//!   until a client sends input; input is queued (256 KiB, then the shim stops reading
//!   clients' input) and written without blocking. When an attached client's stdin ends, as
//!   containerd does: with `stdinOnce` and no terminal the container's stdin is closed for
//!   good (the client keeps the output until the container ends), otherwise that client's
//!   session ends. Resize frames set the terminal's size;
//! - when the container exits, records its exit code and whether the OOM killer struck
//!   (the cgroup's `oom_kill` counter), removes the container's libcontainer state and cgroup,
//!   writes the final `status.json`, ends the attach sessions after their last output and
//!   exits. The agent may die and come back meanwhile: the
//!   shim is in its own process group and does not depend on it.
//!
//! `exec` runs one process inside the running container with libcontainer's tenant builder,
//! wired to the exec process's own stdio (or to a terminal whose master it relays), waits for
//! it and exits with its exit code.
//!
//! The shim must not start threads or an async runtime: libcontainer forks from it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, PidfdFlags, Signal, WaitOptions};

use super::cgroups;
use super::logs::{LogWriter, Stream};
use super::protocol::{
    decode_frame, encode_frame, Request, Response, FRAME_CLOSE_STDIN, FRAME_RESIZE, FRAME_STDERR,
    FRAME_STDIN, FRAME_STDOUT,
};
use super::state::{self, ContainerDir, ContainerRecord, Rootfs, ShimStatus, State};
use crate::cli::ShimCommand;

/// How long the shim keeps reading output after the init process exited (processes that
/// inherited the pipes outside the container's PID namespace may hold them open).
const DRAIN: Duration = Duration::from_secs(5);

/// How long a connection may take to send its whole request line.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the serve loop wakes up while a request is being read (to expire it).
const TICK: Duration = Duration::from_secs(1);
/// The longest request line.
const MAX_REQUEST: usize = 64 * 1024;
/// Output queued for one attach client beyond which it is detached: a slow client must
/// never hold up the container or its log.
const MAX_CLIENT_BACKLOG: usize = 1024 * 1024;
/// Input queued for the container beyond which the shim stops reading attach clients' input.
const MAX_STDIN_BACKLOG: usize = 256 * 1024;
/// How long the exited shim keeps delivering answers and last output to slow clients.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// Exit code of `shim exec` when the process could not be started (as `docker exec`).
const EXEC_FAILED: u8 = 126;

/// `__WALL`: libcontainer clones the container's process with CLONE_PARENT and no exit signal,
/// and waitpid() sees such "clone" children only with this flag.
const WALL: u32 = 0x4000_0000;

fn wait_all() -> WaitOptions {
    WaitOptions::from_bits_retain(WALL)
}

/// Entry point of the hidden `cluster shim` subcommand.
pub fn main(command: ShimCommand, log_filter: Option<&str>) -> ExitCode {
    match command {
        ShimCommand::Run { dir } => {
            init_tracing(&dir, log_filter);
            run(ContainerDir { dir })
        }
        ShimCommand::Exec { dir, tty, command } => {
            init_tracing(&dir, log_filter);
            match exec(&ContainerDir { dir }, tty, &command) {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(EXEC_FAILED)),
                Err(err) => {
                    tracing::error!(error = %err, "exec failed");
                    eprintln!("cluster shim exec: {err}");
                    ExitCode::from(EXEC_FAILED)
                }
            }
        }
    }
}

/// The shim logs to `DIR/shim.log`: its stdio belong to the agent or to an exec'd process.
fn init_tracing(dir: &Path, filter: Option<&str>) {
    let Ok(file) = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("shim.log"))
    else {
        return;
    };
    let filter = filter
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .try_init();
}

/// Why the shim could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("libcontainer: {0}")]
    Libcontainer(#[from] libcontainer::error::LibcontainerError),
    #[error("{0}")]
    Other(String),
}

fn io_ctx(what: impl Into<String>) -> impl FnOnce(io::Error) -> ShimError {
    let what = what.into();
    move |source| ShimError::Io { what, source }
}

fn errno_ctx(what: impl Into<String>) -> impl FnOnce(rustix::io::Errno) -> ShimError {
    let what = what.into();
    move |errno| ShimError::Io {
        what,
        source: errno.into(),
    }
}

/// `cluster shim run DIR`.
fn run(dir: ContainerDir) -> ExitCode {
    let mut report = io::stdout();
    let shim = match Shim::create(&dir) {
        Ok(shim) => shim,
        Err(err) => {
            tracing::error!(error = %err, "create failed");
            let _ = writeln!(report, "error: {err}");
            let _ = report.flush();
            return ExitCode::FAILURE;
        }
    };
    let _ = writeln!(report, "ok {}", shim.pid.as_raw_nonzero());
    let _ = report.flush();
    // Let go of the agent's pipe: the agent may exit, we must not get EPIPE on it.
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        let _ = rustix::stdio::dup2_stdout(&null);
        let _ = rustix::stdio::dup2_stdin(&null);
    }
    match shim.serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "shim failed");
            ExitCode::FAILURE
        }
    }
}

/// An output of the container: a pipe, or the terminal master.
struct Output {
    fd: OwnedFd,
    stream: Stream,
    open: bool,
}

/// The container's stdin, kept by the shim for attach clients.
struct ContainerStdin {
    /// The write end of the stdin pipe, or a duplicate of the terminal master.
    fd: OwnedFd,
    /// Input from clients not yet taken by the container.
    pending: Vec<u8>,
    /// Close once `pending` is written (`stdinOnce`).
    closing: bool,
}

/// What a connection on `shim.sock` is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// Reading its request line.
    Request,
    /// A `Wait`: answered by `finish`.
    Waiting,
    /// Answered: closed once the answer is written.
    Closing,
    /// An attach session ([`super::protocol`]).
    Attached {
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
}

/// One connection on `shim.sock`, non-blocking, with its own buffers.
struct Conn {
    stream: UnixStream,
    state: ConnState,
    input: Vec<u8>,
    output: Vec<u8>,
    opened: Instant,
    /// The peer shut down its side: nothing more to read.
    read_closed: bool,
    /// Must go: the peer is gone, an error, a protocol violation, too slow.
    dead: bool,
}

impl Conn {
    fn new(stream: UnixStream) -> Conn {
        Conn {
            stream,
            state: ConnState::Request,
            input: Vec::new(),
            output: Vec::new(),
            opened: Instant::now(),
            read_closed: false,
            dead: false,
        }
    }

    fn respond(&mut self, response: &Response) {
        if let Ok(mut line) = serde_json::to_vec(response) {
            line.push(b'\n');
            self.output.extend_from_slice(&line);
        }
        self.flush();
    }

    /// Writes what is queued, without blocking.
    fn flush(&mut self) {
        while !self.output.is_empty() && !self.dead {
            match rustix::net::send(&self.stream, &self.output, rustix::net::SendFlags::NOSIGNAL) {
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => return,
                Err(_) => self.dead = true,
            }
        }
    }

    fn done(&self) -> bool {
        self.dead || (self.state == ConnState::Closing && self.output.is_empty())
    }

    fn wants_input(&self) -> bool {
        !self.read_closed && matches!(self.state, ConnState::Request | ConnState::Attached { .. })
    }
}

struct Shim {
    dir: ContainerDir,
    record: ContainerRecord,
    container: Container,
    pid: Pid,
    pidfd: OwnedFd,
    listener: UnixListener,
    outputs: Vec<Output>,
    log: LogWriter,
    status: ShimStatus,
    conns: Vec<Conn>,
    /// The container's stdin while it is open (`stdin: true`).
    stdin: Option<ContainerStdin>,
    tty: bool,
    cgroup_version: Option<cgroups::Version>,
}

impl Shim {
    fn create(dir: &ContainerDir) -> Result<Shim, ShimError> {
        let record = dir
            .read_record()
            .map_err(io_ctx("reading container.json"))?;
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .map_err(errno_ctx("becoming a child subreaper"))?;
        if let Rootfs::Overlay { lower } = &record.rootfs {
            mount_overlay(dir, lower)?;
        }
        let spec: serde_json::Value =
            state::read_json(&dir.spec()).map_err(io_ctx("reading config.json"))?;
        let tty = spec["process"]["terminal"].as_bool().unwrap_or(false);

        let log = LogWriter::open(&record.log_path, record.log_max_size, record.log_max_files)
            .map_err(io_ctx(format!("opening log {}", record.log_path.display())))?;

        let null = File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(io_ctx("opening /dev/null"))?;
        let builder = ContainerBuilder::new(record.id.clone(), SyscallType::default())
            .with_root_path(dir.libcontainer_root())?
            .validate_id()?;
        let (container, outputs, stdin) = if tty {
            let console_path = dir.dir.join("console.sock");
            let _ = fs::remove_file(&console_path);
            let console =
                UnixListener::bind(&console_path).map_err(io_ctx("binding the console socket"))?;
            let container = builder
                .with_console_socket(Some(&console_path))
                .with_stdin(OwnedFd::from(null))
                .as_init(&dir.dir)
                .with_systemd(false)
                .with_detach(true)
                .build()?;
            let master = receive_terminal(&console)?;
            let _ = fs::remove_file(&console_path);
            rustix::io::ioctl_fionbio(&master, true)
                .map_err(errno_ctx("making the terminal non-blocking"))?;
            // Input goes to the same terminal master the output comes from.
            let stdin = if record.stdin {
                Some(ContainerStdin {
                    fd: master
                        .try_clone()
                        .map_err(io_ctx("duplicating the terminal"))?,
                    pending: Vec::new(),
                    closing: false,
                })
            } else {
                None
            };
            let outputs = vec![Output {
                fd: master,
                stream: Stream::Stdout,
                open: true,
            }];
            (container, outputs, stdin)
        } else {
            let (out_r, out_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(errno_ctx("creating the stdout pipe"))?;
            let (err_r, err_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(errno_ctx("creating the stderr pipe"))?;
            // With `stdin: true` the container reads a pipe that the shim keeps open (reads
            // block until a client attaches); otherwise /dev/null.
            let (stdin_fd, stdin) = if record.stdin {
                let (in_r, in_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                    .map_err(errno_ctx("creating the stdin pipe"))?;
                rustix::io::ioctl_fionbio(&in_w, true)
                    .map_err(errno_ctx("making the stdin pipe non-blocking"))?;
                let stdin = ContainerStdin {
                    fd: in_w,
                    pending: Vec::new(),
                    closing: false,
                };
                (in_r, Some(stdin))
            } else {
                (OwnedFd::from(null), None)
            };
            let container = builder
                .with_stdin(stdin_fd)
                .with_stdout(out_w)
                .with_stderr(err_w)
                .as_init(&dir.dir)
                .with_systemd(false)
                .with_detach(true)
                .build()?;
            let outputs = vec![
                Output {
                    fd: out_r,
                    stream: Stream::Stdout,
                    open: true,
                },
                Output {
                    fd: err_r,
                    stream: Stream::Stderr,
                    open: true,
                },
            ];
            (container, outputs, stdin)
        };
        let raw_pid = container
            .pid()
            .ok_or_else(|| ShimError::Other("libcontainer reported no pid".into()))?;
        let pid = Pid::from_raw(raw_pid.as_raw())
            .ok_or_else(|| ShimError::Other(format!("invalid pid {raw_pid}")))?;
        let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty())
            .map_err(errno_ctx("opening a pidfd for the container"))?;

        let status = ShimStatus::created(pid.as_raw_nonzero().get(), std::process::id() as i32);
        dir.write_status(&status)
            .map_err(io_ctx("writing status.json"))?;
        let _ = fs::remove_file(dir.socket());
        let listener = UnixListener::bind(dir.socket()).map_err(io_ctx("binding shim.sock"))?;
        listener
            .set_nonblocking(true)
            .map_err(io_ctx("shim.sock nonblocking"))?;
        tracing::info!(id = %record.id, pid = pid.as_raw_nonzero().get(), "container created");
        Ok(Shim {
            dir: dir.clone(),
            record,
            container,
            pid,
            pidfd,
            listener,
            outputs,
            log,
            status,
            conns: Vec::new(),
            stdin,
            tty,
            cgroup_version: cgroups::detect().ok(),
        })
    }

    /// Serves the agent and attach clients and copies output until the container has exited.
    fn serve(mut self) -> Result<(), ShimError> {
        let mut exited_at: Option<Instant> = None;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let outputs_open = self.outputs.iter().any(|o| o.open);
            if let Some(at) = exited_at {
                if !outputs_open || at.elapsed() >= DRAIN {
                    break;
                }
            }
            self.expire_requests();
            let ready = {
                let mut fds = vec![PollFd::new(&self.listener, PollFlags::IN)];
                let pid_index = if exited_at.is_none() {
                    fds.push(PollFd::new(&self.pidfd, PollFlags::IN));
                    Some(fds.len() - 1)
                } else {
                    None
                };
                let mut output_index = Vec::new();
                for (i, output) in self.outputs.iter().enumerate() {
                    if output.open {
                        fds.push(PollFd::new(&output.fd, PollFlags::IN));
                        output_index.push((i, fds.len() - 1));
                    }
                }
                let stdin_backlog = self.stdin.as_ref().map_or(0, |s| s.pending.len());
                let stdin_index = match &self.stdin {
                    Some(stdin) if !stdin.pending.is_empty() => {
                        fds.push(PollFd::new(&stdin.fd, PollFlags::OUT));
                        Some(fds.len() - 1)
                    }
                    _ => None,
                };
                let mut conn_index = Vec::new();
                for (i, conn) in self.conns.iter().enumerate() {
                    let mut flags = PollFlags::empty();
                    // A full stdin backlog holds back the clients that send input.
                    let held = matches!(conn.state, ConnState::Attached { stdin: true, .. })
                        && stdin_backlog >= MAX_STDIN_BACKLOG;
                    if conn.wants_input() && !held {
                        flags |= PollFlags::IN;
                    }
                    if !conn.output.is_empty() {
                        flags |= PollFlags::OUT;
                    }
                    fds.push(PollFd::new(&conn.stream, flags));
                    conn_index.push((i, fds.len() - 1));
                }
                let mut timeout = exited_at.map(|at| DRAIN.saturating_sub(at.elapsed()));
                if self.conns.iter().any(|c| c.state == ConnState::Request) {
                    timeout = Some(timeout.map_or(TICK, |t| t.min(TICK)));
                }
                let timeout = timeout.map(|left| Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: i64::from(left.subsec_nanos()),
                });
                match rustix::event::poll(&mut fds, timeout.as_ref()) {
                    Ok(_) => {}
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(err) => return Err(errno_ctx("poll")(err)),
                }
                let busy = |fd: &PollFd<'_>| !fd.revents().is_empty();
                Ready {
                    listener: busy(&fds[0]),
                    pid: pid_index.is_some_and(|i| busy(&fds[i])),
                    outputs: output_index
                        .iter()
                        .filter(|(_, fd)| busy(&fds[*fd]))
                        .map(|(i, _)| *i)
                        .collect(),
                    stdin: stdin_index.is_some_and(|i| busy(&fds[i])),
                    conns: conn_index
                        .iter()
                        .filter(|(_, fd)| busy(&fds[*fd]))
                        .map(|(i, fd)| (*i, fds[*fd].revents()))
                        .collect(),
                }
            };
            for i in ready.outputs {
                self.copy_output(i, &mut buf);
            }
            for (i, revents) in ready.conns {
                self.serve_conn(i, revents, &mut buf);
            }
            if ready.stdin || self.stdin.as_ref().is_some_and(|s| s.closing) {
                self.flush_stdin();
            }
            if ready.listener {
                self.accept();
            }
            self.remove_finished_conns();
            if (ready.pid || exited_at.is_none()) && self.reap() {
                exited_at = Some(Instant::now());
            }
        }
        for i in 0..self.outputs.len() {
            let stream = self.outputs[i].stream;
            let _ = self.log.close_stream(stream);
        }
        self.finish();
        Ok(())
    }

    /// Copies what is waiting on one output into the log and to the attached clients.
    fn copy_output(&mut self, index: usize, buf: &mut [u8]) {
        let output = &mut self.outputs[index];
        let stream = output.stream;
        let n = match rustix::io::read(&output.fd, &mut *buf) {
            Ok(0) => {
                output.open = false;
                return;
            }
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => return,
            // A terminal master reads EIO once the other side is closed.
            Err(_) => {
                output.open = false;
                return;
            }
        };
        if let Err(err) = self.log.write(stream, &buf[..n]) {
            tracing::warn!(error = %err, "writing the container log");
        }
        let kind = match stream {
            Stream::Stdout => FRAME_STDOUT,
            Stream::Stderr => FRAME_STDERR,
        };
        let mut frame = None;
        for conn in &mut self.conns {
            let ConnState::Attached { stdout, stderr, .. } = conn.state else {
                continue;
            };
            let wanted = match stream {
                Stream::Stdout => stdout,
                Stream::Stderr => stderr,
            };
            if !wanted || conn.dead {
                continue;
            }
            if conn.output.len() >= MAX_CLIENT_BACKLOG {
                tracing::warn!("an attach client does not keep up with the output, detaching it");
                conn.dead = true;
                continue;
            }
            let frame = frame.get_or_insert_with(|| encode_frame(kind, &buf[..n]));
            conn.output.extend_from_slice(frame);
            conn.flush();
        }
    }

    /// Writes pending client input to the container's stdin without blocking; closes it when
    /// `stdinOnce` asked for that and everything is written.
    fn flush_stdin(&mut self) {
        let Some(stdin) = self.stdin.as_mut() else {
            return;
        };
        while !stdin.pending.is_empty() {
            match rustix::io::write(&stdin.fd, &stdin.pending) {
                Ok(n) => {
                    stdin.pending.drain(..n);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => return,
                Err(err) => {
                    // Nobody reads it any more (EPIPE): input has nowhere to go.
                    tracing::info!(error = %err, "the container's stdin is gone");
                    self.stdin = None;
                    return;
                }
            }
        }
        if stdin.closing {
            tracing::info!("closing the container's stdin (stdinOnce)");
            self.stdin = None;
        }
    }

    /// Reads from and writes to one connection that poll found ready.
    fn serve_conn(&mut self, index: usize, revents: PollFlags, buf: &mut [u8]) {
        if revents.contains(PollFlags::OUT) {
            self.conns[index].flush();
        }
        if revents.contains(PollFlags::IN) {
            let conn = &mut self.conns[index];
            match rustix::io::read(&conn.stream, &mut *buf) {
                Ok(0) => {
                    conn.read_closed = true;
                    match conn.state {
                        ConnState::Attached { .. } => self.client_stdin_ended(index),
                        // Hung up before asking anything.
                        ConnState::Request => conn.dead = true,
                        ConnState::Waiting | ConnState::Closing => {}
                    }
                }
                Ok(n) => match conn.state {
                    ConnState::Request => {
                        conn.input.extend_from_slice(&buf[..n]);
                        self.take_request(index);
                    }
                    ConnState::Attached { .. } => {
                        conn.input.extend_from_slice(&buf[..n]);
                        self.take_frames(index);
                    }
                    ConnState::Waiting | ConnState::Closing => {}
                },
                Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => {}
                Err(_) => conn.dead = true,
            }
        } else if revents.intersects(PollFlags::HUP | PollFlags::ERR) {
            // Gone entirely (nothing left to read).
            self.conns[index].dead = true;
        }
    }

    /// Accepts every waiting connection; their requests are read by the poll loop.
    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        self.conns.push(Conn::new(stream));
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Drops connections that did not send a whole request in time.
    fn expire_requests(&mut self) {
        for conn in &mut self.conns {
            if conn.state == ConnState::Request && conn.opened.elapsed() >= REQUEST_READ_TIMEOUT {
                tracing::debug!("dropping a connection that sent no request");
                conn.dead = true;
            }
        }
    }

    fn remove_finished_conns(&mut self) {
        for index in 0..self.conns.len() {
            if self.conns[index].dead {
                // A client that vanishes has detached (its stdin ended too).
                self.client_stdin_ended(index);
            }
        }
        self.conns.retain(|conn| !conn.done());
    }

    /// Handles the request line of a connection once it is complete.
    fn take_request(&mut self, index: usize) {
        let conn = &mut self.conns[index];
        let Some(end) = conn.input.iter().position(|b| *b == b'\n') else {
            if conn.input.len() > MAX_REQUEST {
                conn.respond(&Response {
                    status: None,
                    error: Some("request too long".into()),
                });
                conn.state = ConnState::Closing;
            }
            return;
        };
        let line: Vec<u8> = conn.input.drain(..=end).collect();
        let request: Result<Request, String> =
            serde_json::from_slice(&line).map_err(|err| format!("bad request: {err}"));
        match request {
            // Answered by `finish`, once the output is in the log and the status is final.
            Ok(Request::Wait) => conn.state = ConnState::Waiting,
            Ok(Request::Attach {
                stdin,
                stdout,
                stderr,
            }) => {
                tracing::info!(stdin, stdout, stderr, "client attached");
                conn.state = ConnState::Attached {
                    stdin,
                    stdout,
                    stderr,
                };
                let response = Response {
                    status: Some(self.status.clone()),
                    error: None,
                };
                self.conns[index].respond(&response);
                // Frames may have come with the request.
                self.take_frames(index);
            }
            Ok(request) => {
                let response = self.handle(request);
                let conn = &mut self.conns[index];
                conn.respond(&response);
                conn.state = ConnState::Closing;
            }
            Err(error) => {
                conn.respond(&Response {
                    status: None,
                    error: Some(error),
                });
                conn.state = ConnState::Closing;
            }
        }
    }

    /// Carries out the frames an attached client sent.
    fn take_frames(&mut self, index: usize) {
        loop {
            let conn = &mut self.conns[index];
            let ConnState::Attached {
                stdin: sends_input, ..
            } = conn.state
            else {
                return;
            };
            let (kind, payload, used) = match decode_frame(&conn.input) {
                Ok(Some(frame)) => (frame.kind, frame.payload.to_vec(), frame.len),
                Ok(None) => return,
                Err(err) => {
                    tracing::warn!(error = %err, "bad attach frame, detaching the client");
                    conn.dead = true;
                    return;
                }
            };
            conn.input.drain(..used);
            match kind {
                FRAME_STDIN if sends_input => {
                    if let Some(stdin) = self.stdin.as_mut().filter(|s| !s.closing) {
                        stdin.pending.extend_from_slice(&payload);
                    }
                    self.flush_stdin();
                }
                FRAME_RESIZE => self.resize(&payload),
                FRAME_CLOSE_STDIN => self.client_stdin_ended(index),
                _ => {}
            }
        }
    }

    /// An attached client's stdin ended, as containerd handles it: with `stdinOnce` and no
    /// terminal the container's stdin closes and the client keeps receiving output until
    /// the container ends; otherwise the client's session ends.
    fn client_stdin_ended(&mut self, index: usize) {
        let once = self.record.stdin_once && !self.tty;
        let conn = &mut self.conns[index];
        let ConnState::Attached {
            stdin: true,
            stdout,
            stderr,
        } = conn.state
        else {
            return;
        };
        if !self.record.stdin {
            return;
        }
        if once {
            conn.state = ConnState::Attached {
                stdin: false,
                stdout,
                stderr,
            };
            if let Some(stdin) = self.stdin.as_mut() {
                stdin.closing = true;
            }
            self.flush_stdin();
        } else {
            conn.state = ConnState::Closing;
        }
    }

    /// Applies a `<columns> <rows>` resize to the terminal, when there is one.
    fn resize(&mut self, payload: &[u8]) {
        if !self.tty {
            return;
        }
        let (Some(master), Some((columns, rows))) =
            (self.outputs.first(), super::exec::parse_size(payload))
        else {
            return;
        };
        let size = rustix::termios::Winsize {
            ws_row: rows,
            ws_col: columns,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        if let Err(err) = rustix::termios::tcsetwinsize(&master.fd, size) {
            tracing::warn!(error = %err, "resizing the terminal failed");
        }
    }

    /// Reaps exited children; true when the container's init process is among them.
    fn reap(&mut self) -> bool {
        let mut init_exited = false;
        while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG | wait_all())
        {
            if pid != self.pid {
                continue;
            }
            let (code, signal) = exit_code(status);
            self.status.exit_code = Some(code);
            self.status.signal = signal;
            self.status.finished_at = Some(state::now());
            init_exited = true;
            tracing::info!(code, ?signal, "container exited");
        }
        if init_exited {
            self.status.oom_killed = self
                .cgroup_version
                .and_then(|v| cgroups::oom_kills(v, &self.record.cgroup_path).ok())
                .is_some_and(|n| n > 0);
        }
        init_exited
    }

    fn handle(&mut self, request: Request) -> Response {
        let result = match request {
            Request::Status | Request::Wait | Request::Attach { .. } => Ok(()),
            Request::Start => self.start(),
            Request::Kill { signal, all } => self.kill(signal, all),
        };
        Response {
            status: Some(self.status.clone()),
            error: result.err().map(|e| e.to_string()),
        }
    }

    fn start(&mut self) -> Result<(), ShimError> {
        if self.status.state != State::Created || self.status.exit_code.is_some() {
            return Err(ShimError::Other(format!(
                "container is {:?}, not created",
                self.status.state
            )));
        }
        self.container.start()?;
        self.status.state = State::Running;
        self.status.started_at = Some(state::now());
        self.dir
            .write_status(&self.status)
            .map_err(io_ctx("writing status.json"))?;
        tracing::info!("container started");
        Ok(())
    }

    fn kill(&mut self, signal: i32, all: bool) -> Result<(), ShimError> {
        if self.status.exit_code.is_some() {
            return Ok(());
        }
        tracing::info!(signal, all, "signalling container");
        if all {
            let signal = libcontainer::signal::Signal::try_from(signal)
                .map_err(|err| ShimError::Other(format!("signal {signal}: {err}")))?;
            self.container.kill(signal, true)?;
        } else {
            let signal = Signal::from_named_raw(signal)
                .ok_or_else(|| ShimError::Other(format!("unknown signal {signal}")))?;
            match rustix::process::pidfd_send_signal(&self.pidfd, signal) {
                Ok(()) | Err(rustix::io::Errno::SRCH) => {}
                Err(err) => return Err(errno_ctx("sending the signal")(err)),
            }
        }
        Ok(())
    }

    /// The container has exited: clean up, record, answer the waiters, end the attach
    /// sessions (after their last output).
    fn finish(mut self) {
        // Processes left in the cgroup (possible with a shared PID namespace) go too.
        if let Ok(signal) = libcontainer::signal::Signal::try_from(9) {
            let _ = self.container.kill(signal, true);
        }
        if let Err(err) = self.container.delete(true) {
            tracing::warn!(error = %err, "deleting the libcontainer state");
        }
        if let Rootfs::Overlay { .. } = self.record.rootfs {
            if let Err(err) =
                rustix::mount::unmount(self.dir.rootfs(), rustix::mount::UnmountFlags::DETACH)
            {
                tracing::warn!(error = %err, "unmounting the root filesystem");
            }
        }
        self.status.state = State::Exited;
        if let Err(err) = self.dir.write_status(&self.status) {
            tracing::error!(error = %err, "writing the final status");
        }
        // From now on status.json is the answer; new callers read it instead.
        let _ = fs::remove_file(self.dir.socket());
        let response = Response {
            status: Some(self.status.clone()),
            error: None,
        };
        for conn in &mut self.conns {
            match conn.state {
                ConnState::Waiting => {
                    conn.respond(&response);
                    conn.state = ConnState::Closing;
                }
                ConnState::Attached { .. } => conn.state = ConnState::Closing,
                // Asked too late: status.json answers them.
                ConnState::Request => conn.dead = true,
                ConnState::Closing => {}
            }
        }
        self.conns.retain(|conn| !conn.done());
        let deadline = Instant::now() + FINAL_FLUSH;
        while !self.conns.is_empty() && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            let mut fds: Vec<PollFd<'_>> = self
                .conns
                .iter()
                .map(|conn| PollFd::new(&conn.stream, PollFlags::OUT))
                .collect();
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => break,
            }
            drop(fds);
            for conn in &mut self.conns {
                conn.flush();
            }
            self.conns.retain(|conn| !conn.done());
        }
        tracing::info!("shim done");
    }
}

/// What one poll of the serve loop found ready.
struct Ready {
    listener: bool,
    pid: bool,
    outputs: Vec<usize>,
    stdin: bool,
    conns: Vec<(usize, PollFlags)>,
}

/// Mounts the overlay root filesystem of the container at `DIR/rootfs`.
fn mount_overlay(dir: &ContainerDir, lower: &[PathBuf]) -> Result<(), ShimError> {
    for path in [dir.rootfs(), dir.upper(), dir.work()] {
        fs::create_dir_all(&path).map_err(io_ctx(format!("creating {}", path.display())))?;
    }
    if lower.is_empty() {
        return Err(ShimError::Other(
            "an overlay needs at least one layer".into(),
        ));
    }
    // overlayfs lists the top layer first; ours are lowest first.
    let lowerdir: Vec<String> = lower
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowerdir.join(":"),
        dir.upper().display(),
        dir.work().display()
    );
    let options = std::ffi::CString::new(options)
        .map_err(|_| ShimError::Other("a layer path contains a NUL byte".into()))?;
    rustix::mount::mount(
        "overlay",
        dir.rootfs(),
        "overlay",
        rustix::mount::MountFlags::empty(),
        Some(options.as_c_str()),
    )
    .map_err(errno_ctx("mounting the overlay root filesystem"))
}

/// Receives the terminal master libcontainer sends to a console socket.
fn receive_terminal(console: &UnixListener) -> Result<OwnedFd, ShimError> {
    let (stream, _) = console
        .accept()
        .map_err(io_ctx("accepting on the console socket"))?;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
    let mut name = [0u8; 4096];
    rustix::net::recvmsg(
        &stream,
        &mut [io::IoSliceMut::new(&mut name)],
        &mut control,
        rustix::net::RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(errno_ctx("receiving the terminal"))?;
    for message in control.drain() {
        if let rustix::net::RecvAncillaryMessage::ScmRights(mut fds) = message {
            if let Some(fd) = fds.next() {
                return Ok(fd);
            }
        }
    }
    Err(ShimError::Other(
        "no terminal received on the console socket".into(),
    ))
}

/// `cluster shim exec DIR [--tty] -- CMD…`: returns the process's exit code.
fn exec(dir: &ContainerDir, tty: bool, command: &[String]) -> Result<i32, ShimError> {
    let record = dir
        .read_record()
        .map_err(io_ctx("reading container.json"))?;
    let spec: serde_json::Value =
        state::read_json(&dir.spec()).map_err(io_ctx("reading config.json"))?;
    let me = std::process::id();
    let process_path = dir.dir.join(format!("exec-{me}.json"));
    let process = super::spec::exec_process(&spec, command, tty);
    state::write_json_atomic(&process_path, &process)
        .map_err(io_ctx("writing the exec process"))?;
    let _cleanup = RemoveOnDrop(vec![process_path.clone()]);

    let builder = ContainerBuilder::new(record.id.clone(), SyscallType::default())
        .with_root_path(dir.libcontainer_root())?;
    // With a terminal, `exec-<pid>.resize` (a FIFO) takes `<columns> <rows>` lines from the
    // agent ([`super::exec::ResizeHandle`]); it exists before the process starts so that the
    // first size is not lost.
    let resize = if tty {
        let path = super::exec::resize_path(&dir.dir, me);
        let _ = fs::remove_file(&path);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .map_err(errno_ctx("creating the resize fifo"))?;
        let reader = rustix::fs::open(
            &path,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(errno_ctx("opening the resize fifo"))?;
        // Our own writer keeps the FIFO from reporting end-of-file between agent writes.
        let keep_open = rustix::fs::open(
            &path,
            rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(errno_ctx("opening the resize fifo"))?;
        Some((reader, keep_open, RemoveOnDrop(vec![path])))
    } else {
        None
    };
    let (pid, master) = if tty {
        let console_path = dir.dir.join(format!("exec-{me}.sock"));
        let _ = fs::remove_file(&console_path);
        let console =
            UnixListener::bind(&console_path).map_err(io_ctx("binding the console socket"))?;
        let _cleanup = RemoveOnDrop(vec![console_path.clone()]);
        let pid = builder
            .with_console_socket(Some(&console_path))
            .as_tenant()
            .with_process(Some(&process_path))
            .with_detach(true)
            .build()?;
        (pid, Some(receive_terminal(&console)?))
    } else {
        let pid = builder
            .as_tenant()
            .with_process(Some(&process_path))
            .with_detach(false)
            .build()?;
        (pid, None)
    };
    let pid = Pid::from_raw(pid.as_raw())
        .ok_or_else(|| ShimError::Other(format!("invalid pid {pid}")))?;
    tracing::info!(
        pid = pid.as_raw_nonzero().get(),
        ?command,
        tty,
        "exec started"
    );
    if let Some(master) = master {
        relay_terminal(&master, pid, resize.as_ref().map(|r| &r.0))?;
    }
    drop(resize);
    wait_exit_code(pid)
}

/// Waits for `pid` (a child) and returns its exit code as a shell reports it.
fn wait_exit_code(pid: Pid) -> Result<i32, ShimError> {
    loop {
        match rustix::process::waitpid(Some(pid), wait_all()) {
            Ok(Some((_, status))) => return Ok(exit_code(status).0),
            Ok(None) => continue,
            Err(rustix::io::Errno::INTR) => continue,
            Err(err) => return Err(errno_ctx("waiting for the exec process")(err)),
        }
    }
}

/// Copies stdin to the terminal and the terminal to stdout until the process is gone, and
/// applies the sizes read from `resize` to the terminal (before stdin read at the same time).
fn relay_terminal(master: &OwnedFd, pid: Pid, resize: Option<&OwnedFd>) -> Result<(), ShimError> {
    let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty())
        .map_err(errno_ctx("opening a pidfd for the exec process"))?;
    let stdin = rustix::stdio::stdin();
    let stdout = rustix::stdio::stdout();
    let mut stdin_open = true;
    let mut exited = false;
    let mut buf = vec![0u8; 16 * 1024];
    let mut sizes = Vec::new();
    loop {
        let (in_ready, master_ready, pid_ready, resize_ready) = {
            let mut fds = vec![
                PollFd::new(master, PollFlags::IN),
                PollFd::new(&pidfd, PollFlags::IN),
            ];
            let stdin_index = fds.len();
            if stdin_open {
                fds.push(PollFd::new(&stdin, PollFlags::IN));
            }
            let resize_index = fds.len();
            if let Some(fd) = resize {
                fds.push(PollFd::new(fd, PollFlags::IN));
            }
            // After the process exited, read what is left without blocking for long.
            let timeout = exited.then_some(Timespec {
                tv_sec: 0,
                tv_nsec: 100_000_000,
            });
            match rustix::event::poll(&mut fds, timeout.as_ref()) {
                Ok(0) if exited => return Ok(()),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(err) => return Err(errno_ctx("poll")(err)),
            }
            (
                stdin_open && !fds[stdin_index].revents().is_empty(),
                !fds[0].revents().is_empty(),
                !fds[1].revents().is_empty(),
                resize.is_some() && !fds[resize_index].revents().is_empty(),
            )
        };
        if let (true, Some(fd)) = (resize_ready, resize) {
            if let Ok(n) = rustix::io::read(fd, &mut buf[..]) {
                sizes.extend_from_slice(&buf[..n]);
            }
            while let Some(end) = sizes.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = sizes.drain(..=end).collect();
                if let Some((columns, rows)) = super::exec::parse_size(&line) {
                    let size = rustix::termios::Winsize {
                        ws_row: rows,
                        ws_col: columns,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    if let Err(err) = rustix::termios::tcsetwinsize(master, size) {
                        tracing::warn!(error = %err, "resizing the terminal failed");
                    }
                }
            }
        }
        if master_ready {
            match rustix::io::read(master, &mut buf[..]) {
                Ok(0) | Err(rustix::io::Errno::IO) => return Ok(()),
                Ok(n) => write_all(stdout, &buf[..n])?,
                Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => {}
                Err(err) => return Err(errno_ctx("reading the terminal")(err)),
            }
        }
        if in_ready {
            match rustix::io::read(stdin, &mut buf[..]) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => write_all(master, &buf[..n])?,
            }
        }
        if pid_ready {
            exited = true;
        }
    }
}

fn write_all(fd: impl AsFd, mut data: &[u8]) -> Result<(), ShimError> {
    while !data.is_empty() {
        match rustix::io::write(&fd, data) {
            Ok(n) => data = &data[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(err) => return Err(errno_ctx("writing")(err)),
        }
    }
    Ok(())
}

/// The exit code as a shell reports it (128 + the signal), and the signal if one ended it.
fn exit_code(status: rustix::process::WaitStatus) -> (i32, Option<i32>) {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => (code, None),
        (None, Some(signal)) => (128 + signal, Some(signal)),
        (None, None) => (255, None),
    }
}

struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}
