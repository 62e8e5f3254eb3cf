//! A throw-away single-member etcd for tests and benchmarks: free loopback ports, a fresh data
//! directory, killed and reaped on drop (also when the test panics).
//!
//! Needs only std and `tempfile`, so benchmarks can include it with `#[path]`. The binary is
//! `etcd` from `PATH` (Debian: `etcd-server`), or the one named by `CLUSTER_TEST_ETCD`. etcd keeps
//! its default durability (fsync on) and does no automatic compaction: tests drive it.
//!
//! Use [`EtcdProcess::start_or_skip`] in tests: it returns `None` (and says why) when etcd is not
//! installed, except under `CI=true`, where a missing etcd fails the test.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long etcd may take to answer its health check.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a start is retried when etcd exits at once (a port taken between probe and bind).
const START_ATTEMPTS: usize = 3;

/// A running etcd; dropping it kills the process and removes its data.
pub struct EtcdProcess {
    /// Client URL, e.g. `http://127.0.0.1:41234`.
    pub endpoint: String,
    child: Child,
    client_addr: SocketAddr,
    log: PathBuf,
    data_dir: PathBuf,
    // Removed after the process is reaped (fields drop after `Drop::drop` has run).
    _temp: tempfile::TempDir,
}

impl std::fmt::Debug for EtcdProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdProcess")
            .field("endpoint", &self.endpoint)
            .field("pid", &self.child.id())
            .finish()
    }
}

impl EtcdProcess {
    /// Starts etcd and waits until it is healthy. `None` if the etcd binary is not installed.
    pub fn start() -> Option<Result<EtcdProcess, String>> {
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            match Self::start_once() {
                None => return None,
                Some(Ok(process)) => return Some(Ok(process)),
                Some(Err(e)) => last_error = e,
            }
        }
        Some(Err(last_error))
    }

    /// [`EtcdProcess::start`] for tests: `None` means "skip" (the reason is printed); a missing
    /// etcd under `CI=true` and a failed start panic.
    pub fn start_or_skip() -> Option<EtcdProcess> {
        match Self::start() {
            Some(Ok(process)) => Some(process),
            Some(Err(e)) => panic!("cannot start etcd: {e}"),
            None if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("etcd is not installed (install etcd-server); it is required when CI=true")
            }
            None => {
                eprintln!("skipped: etcd is not installed (install etcd-server to run this test)");
                None
            }
        }
    }

    fn start_once() -> Option<Result<EtcdProcess, String>> {
        let binary = std::env::var_os("CLUSTER_TEST_ETCD").unwrap_or_else(|| "etcd".into());
        let setup = || -> Result<_, String> {
            let data = tempfile::Builder::new()
                .prefix("cluster-test-etcd")
                .tempdir()
                .map_err(|e| format!("creating a data directory: {e}"))?;
            let [client_port, peer_port] = free_ports()?;
            Ok((data, client_port, peer_port))
        };
        let (data, client_port, peer_port) = match setup() {
            Ok(setup) => setup,
            Err(e) => return Some(Err(e)),
        };
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log = data.path().join("etcd.log");
        let data_dir = data.path().join("data");
        let log_file = match std::fs::File::create(&log) {
            Ok(file) => file,
            Err(e) => return Some(Err(format!("creating {}: {e}", log.display()))),
        };
        let spawned = Command::new(&binary)
            .arg("--name=test")
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            .arg("--initial-cluster-state=new")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == ErrorKind::NotFound => return None,
            Err(e) => return Some(Err(format!("starting {}: {e}", binary.to_string_lossy()))),
        };
        let mut process = EtcdProcess {
            endpoint: client_url,
            child,
            client_addr: SocketAddr::from(([127, 0, 0, 1], client_port)),
            log,
            data_dir,
            _temp: data,
        };
        Some(process.wait_ready().map(|()| process))
    }

    /// The etcd process id (for resource measurements).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directory etcd keeps its data in (for size measurements).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Polls etcd's `/health` (served on the client port) until it reports a healthy member.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("etcd exited with {status}: {}", self.log_tail()));
            }
            if healthy(self.client_addr) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "etcd did not become healthy within {READY_TIMEOUT:?}: {}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two distinct free loopback ports (both listeners are held until both are known).
fn free_ports() -> Result<[u16; 2], String> {
    let bind = || {
        TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| Ok((l.local_addr()?.port(), l)))
            .map_err(|e| format!("finding a free port: {e}"))
    };
    let (first, _first) = bind()?;
    let (second, _second) = bind()?;
    Ok([first, second])
}

/// One HTTP/1.0 `GET /health`; true if etcd answers `"health":"true"`.
fn healthy(addr: SocketAddr) -> bool {
    let check = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response.contains("\"health\":\"true\""))
    };
    check().unwrap_or(false)
}
