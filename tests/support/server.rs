//! A real `cluster server` for tests: the built binary, a fresh data directory, a free loopback
//! port, the admin kubeconfig in the temp dir; stopped (SIGTERM, then SIGKILL) on drop, also
//! when the test panics.
//!
//! Servers run with `--disable-agent` (tests use hollow nodes and must not see a real node),
//! unless started with [`TestServer::start_with_agent`], which runs the embedded agent, usually
//! inside a network namespace the test made (see [`AgentOptions`]).

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct TestServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
    /// Where the API server is reached (127.0.0.1 unless it runs in another namespace).
    address: String,
    /// Runs the server through this command (e.g. `nsenter --net=…`).
    wrapper: Vec<String>,
}

/// How to run a server with its embedded agent.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// The address the server listens on and is reached at (default 127.0.0.1).
    pub address: Option<String>,
    /// A command prefix for the server, e.g. `["nsenter", "--net=/run/netns/x"]`.
    pub wrapper: Vec<String>,
    /// Extra flags (agent flags: --node-name, --kubelet-port, --pod-logs-dir, …).
    pub args: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl TestServer {
    /// Starts a server with extra flags and waits until it is ready.
    pub fn start_with(extra: &[&str]) -> TestServer {
        let dir = tempfile::Builder::new()
            .prefix("cluster-test-server")
            .tempdir()
            .expect("tempdir");
        // An explicit, empty config file keeps the host's /etc/cluster/config.yaml out of tests.
        std::fs::write(dir.path().join("config.yaml"), "{}\n").expect("config file");
        let mut server = TestServer {
            port: free_port(),
            kubeconfig: dir.path().join("kubeconfig.yaml"),
            dir,
            child: None,
            extra: std::iter::once("--disable-agent".to_string())
                .chain(extra.iter().map(|s| s.to_string()))
                .collect(),
            address: "127.0.0.1".into(),
            wrapper: Vec::new(),
        };
        server.spawn();
        server
    }

    /// Starts a server that runs its embedded agent (this machine, or the network namespace
    /// the wrapper enters, becomes a node).
    pub fn start_with_agent(options: AgentOptions) -> TestServer {
        let dir = tempfile::Builder::new()
            .prefix("cluster-test-node")
            .tempdir()
            .expect("tempdir");
        std::fs::write(dir.path().join("config.yaml"), "{}\n").expect("config file");
        let mut server = TestServer {
            port: free_port(),
            kubeconfig: dir.path().join("kubeconfig.yaml"),
            dir,
            child: None,
            // The machine's disk is shared and not under test: the kubelet's default
            // thresholds (imagefs.available<15%) would report DiskPressure, taint the node and
            // keep pods off it on a busy disk. Memory stays at the default. (A second
            // `--eviction-hard` in `options.args` would add to these, not replace them.)
            extra: [
                "--eviction-hard".to_string(),
                "memory.available<100Mi,nodefs.available<1%".to_string(),
            ]
            .into_iter()
            .chain(options.args)
            .collect(),
            address: options.address.unwrap_or_else(|| "127.0.0.1".into()),
            wrapper: options.wrapper,
        };
        server.spawn();
        server
    }

    pub fn start() -> TestServer {
        TestServer::start_with(&[])
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("log file");
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(env!("CARGO_BIN_EXE_cluster"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_cluster")),
        };
        let child = command
            .arg("server")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--https-listen-port")
            .arg(self.port.to_string())
            .arg("--bind-address")
            .arg(&self.address)
            .arg("--write-kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--config")
            .arg(self.dir.path().join("config.yaml"))
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start cluster server");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Stops the server (SIGTERM) and starts it again on the same data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        format!("https://{}:{}", self.address, self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("cluster server exited early ({status}):\n{}", self.log());
                }
            }
            if self.kubeconfig.exists() {
                let out = Command::new("curl")
                    .args(["-sk", "--max-time", "2"])
                    .arg(format!("{}/readyz", self.url()))
                    .output();
                if let Ok(out) = out {
                    if out.status.success() && out.stdout == b"ok" {
                        self.point_kubeconfig_at_address();
                        return;
                    }
                }
            }
            if Instant::now() > deadline {
                panic!("cluster server did not become ready:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server writes a kubeconfig for 127.0.0.1; a server in another network namespace is
    /// reached at its own address instead.
    fn point_kubeconfig_at_address(&self) {
        if self.address == "127.0.0.1" {
            return;
        }
        let text = std::fs::read_to_string(&self.kubeconfig).expect("kubeconfig");
        let local = format!("https://127.0.0.1:{}", self.port);
        std::fs::write(&self.kubeconfig, text.replace(&local, &self.url())).expect("kubeconfig");
    }

    /// A kube-rs client with the admin kubeconfig.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("client config");
        kube::Client::try_from(config).expect("client")
    }

    /// Runs a kubectl binary against this server.
    pub fn kubectl(&self, kubectl: &Path, args: &[&str]) -> Output {
        self.kubectl_with(kubectl, args, None, &[])
    }

    pub fn kubectl_with(
        &self,
        kubectl: &Path,
        args: &[&str],
        stdin: Option<&str>,
        env: &[(&str, &str)],
    ) -> Output {
        use std::io::Write;
        let mut command = Command::new(kubectl);
        command
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .envs(env.iter().copied())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("run kubectl");
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).expect("write stdin");
        }
        child.wait_with_output().expect("kubectl output")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The kubectl binaries of the given minor versions installed on this machine; under CI=true a
/// missing one is an error, elsewhere it is skipped with a message.
pub fn kubectls(minors: &[u32]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for minor in minors {
        let path = PathBuf::from(format!("/usr/lib/google-cloud-sdk/bin/kubectl.1.{minor}"));
        if path.exists() {
            found.push(path);
        } else if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{} is required when CI=true", path.display());
        } else {
            eprintln!("skipped: {} is not installed", path.display());
        }
    }
    found
}
