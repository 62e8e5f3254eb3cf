//! A real node for end-to-end tests: a `cluster server` with its embedded agent inside a
//! network namespace the test makes (a veth to the host side gives the node an InternalIP and
//! a default route), the busybox test image imported, driven with kubectl. [`Node`]'s drop
//! removes the server, every container and shim, their cgroups and mounts, the pods' network
//! namespaces and the test's namespace (with the bridge, veths and nft table in it) even when
//! a test fails.
//!
//! Needs root, iproute2, nftables, nsenter, kubectl and busybox-static: [`require`] says
//! whether a test can run (CI=true makes a missing piece a failure).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cluster::agent::runtime::container::cgroups::{self, QosClass};
use cluster::agent::runtime::container::state::ContainerDir;

use super::server::{AgentOptions, TestServer};
use super::{registry, rootfs};

/// Generous bound for anything that converges.
pub const LONG: Duration = Duration::from_secs(120);
/// The test image's name (not `latest`: the default pull policy is IfNotPresent).
pub const IMAGE: &str = "docker.io/library/busybox:kubelet-test";

pub fn kubectl_binary() -> PathBuf {
    PathBuf::from("/usr/bin/kubectl")
}

/// True when the test can run; under `CI=true` a missing requirement fails it.
pub fn require(test: &str) -> bool {
    let mut missing = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push("root".to_string());
    }
    for tool in ["ip", "nft", "nsenter"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            missing.push(format!("`{tool}`"));
        }
    }
    if !kubectl_binary().exists() {
        missing.push("kubectl".into());
    }
    if !Path::new("/bin/busybox").exists() && !Path::new("/usr/bin/busybox").exists() {
        missing.push("busybox-static".into());
    }
    if missing.is_empty() {
        return true;
    }
    let reason = format!("kubelet tests need {}", missing.join(", "));
    if registry::in_ci() {
        panic!("{test}: {reason}, and CI=true must run them");
    }
    eprintln!("skipping {test}: {reason}");
    false
}

pub fn sh(command: &str) -> std::process::Output {
    Command::new("sh")
        .args(["-c", command])
        .output()
        .expect("run sh")
}

pub fn sh_ok(command: &str) {
    let out = sh(command);
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A node: the network namespace, the server with its agent, and everything to clean up.
pub struct Node {
    pub server: Option<TestServer>,
    pub netns: String,
    pub temp: tempfile::TempDir,
    pub name: String,
}

impl Node {
    pub fn start(test: &str) -> Node {
        Node::start_with(test, &[])
    }

    /// A node whose server gets `extra` flags besides the fixture's own.
    pub fn start_with(test: &str, extra: &[&str]) -> Node {
        let n: u16 = rand_byte();
        let netns = format!("clkt-{n}-{}", std::process::id() % 10000);
        let host_veth = format!("clkh{n}x{}", std::process::id() % 1000);
        let node_veth = format!("clkn{n}x{}", std::process::id() % 1000);
        let subnet = format!("10.234.{n}");
        let temp = tempfile::Builder::new()
            .prefix("cluster-kubelet-")
            .tempdir()
            .expect("tempdir");
        let name = format!("kt-{n}");
        let mut node = Node {
            server: None,
            netns: netns.clone(),
            temp,
            name: name.clone(),
        };
        sh_ok(&format!("ip netns add {netns}"));
        sh_ok(&format!(
            "ip link add {host_veth} type veth peer name {node_veth} && \
             ip link set {node_veth} netns {netns} && \
             ip addr add {subnet}.1/30 dev {host_veth} && ip link set {host_veth} up && \
             ip -n {netns} link set lo up && \
             ip -n {netns} addr add {subnet}.2/30 dev {node_veth} && \
             ip -n {netns} link set {node_veth} up && \
             ip -n {netns} route add default via {subnet}.1"
        ));
        let kubelet_port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
            l.local_addr().expect("addr").port()
        };
        let args: Vec<String> = [
            "--node-name".to_string(),
            name,
            "--node-label".into(),
            format!("test={test}"),
            "--kubelet-port".into(),
            kubelet_port.to_string(),
            "--pod-logs-dir".into(),
            node.logs().display().to_string(),
            "--agent-run-dir".into(),
            node.run_dir().display().to_string(),
        ]
        .into_iter()
        .chain(extra.iter().map(|a| a.to_string()))
        .collect();
        node.server = Some(TestServer::start_with_agent(AgentOptions {
            address: Some(format!("{subnet}.2")),
            wrapper: vec!["nsenter".into(), format!("--net=/run/netns/{netns}")],
            args,
        }));
        node.import_image();
        node
    }

    pub fn server(&self) -> &TestServer {
        self.server.as_ref().expect("server")
    }

    pub fn logs(&self) -> PathBuf {
        self.temp.path().join("logs")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.temp.path().join("run")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.server().dir.path().join("data")
    }

    /// Builds the test image and imports it into the node's image store (the agent's store,
    /// shared with `cluster images`).
    pub fn import_image(&self) {
        let images = self.temp.path().join("images");
        registry::build_test_images(&images, &[("IMAGE_NAME", IMAGE)]);
        let config = self.temp.path().join("images-config.yaml");
        fs::write(&config, "{}\n").expect("config");
        let out = Command::new(env!("CARGO_BIN_EXE_cluster"))
            .args(["images", "import"])
            .arg(images.join("busybox-docker.tar"))
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--config")
            .arg(&config)
            .output()
            .expect("cluster images import");
        assert!(
            out.status.success(),
            "import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.server().kubectl(&kubectl_binary(), args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args);
        assert!(ok, "kubectl {args:?}: {err}\n{out}");
        out
    }

    pub fn apply(&self, yaml: &str) {
        let out =
            self.server()
                .kubectl_with(&kubectl_binary(), &["apply", "-f", "-"], Some(yaml), &[]);
        assert!(
            out.status.success(),
            "apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Polls `kubectl get … -o jsonpath` until `check` accepts the output.
    pub fn wait_for(&self, what: &str, args: &[&str], check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LONG;
        let mut last = String::new();
        while Instant::now() < deadline {
            let (ok, out, err) = self.kubectl(args);
            last = if ok { out } else { err };
            if ok && check(&last) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        self.fail(&format!("{what}: still {last:?} after {LONG:?}"));
    }

    /// Fails the test with what the node shows: pods, shim logs, the server's log.
    pub fn fail(&self, what: &str) -> ! {
        let pods = self.kubectl(&["get", "pods", "-A", "-o", "yaml"]).1;
        let shims = sh(&format!(
            "tail -n 5 {}/containers/*/shim.log",
            self.run_dir().display()
        ));
        panic!(
            "{what}\npods:\n{pods}\nshim logs:\n{}\nserver log (tail):\n{}",
            String::from_utf8_lossy(&shims.stdout),
            tail(&self.server().log(), 80)
        );
    }

    pub fn pod_field(&self, pod: &str, path: &str) -> String {
        self.kubectl(&["get", "pod", pod, "-o", &format!("jsonpath={path}")])
            .1
    }

    /// The runtime's containers of pod `uid` (their directories under the run dir).
    pub fn containers_of(&self, uid: &str) -> Vec<String> {
        let mut ids = Vec::new();
        let root = self.run_dir().join("containers");
        for entry in fs::read_dir(&root).into_iter().flatten().flatten() {
            let dir = ContainerDir::new(&root, &entry.file_name().to_string_lossy());
            if dir.read_record().is_ok_and(|r| r.pod_uid == uid) {
                ids.push(dir.id());
            }
        }
        ids
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub fn rand_byte() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u16::try_from((nanos / 1000 + std::process::id()) % 250).unwrap_or(0) + 2
}

impl Drop for Node {
    fn drop(&mut self) {
        let data = self.server.as_ref().map(|s| s.dir.path().join("data"));
        // The server first (containers outlive it by design), then what it left running.
        drop(self.server.take());
        let root = self.run_dir().join("containers");
        rootfs::stop_containers(&root);
        let mut uids = Vec::new();
        if let Some(data) = &data {
            for entry in fs::read_dir(data.join("agent/pods"))
                .into_iter()
                .flatten()
                .flatten()
            {
                uids.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        for entry in fs::read_dir(&root).into_iter().flatten().flatten() {
            let dir = ContainerDir::new(&root, &entry.file_name().to_string_lossy());
            if let Ok(record) = dir.read_record() {
                uids.push(record.pod_uid);
            }
        }
        for uid in &uids {
            for qos in [
                QosClass::Guaranteed,
                QosClass::Burstable,
                QosClass::BestEffort,
            ] {
                let _ = cgroups::remove_pod(qos, uid);
            }
            let _ = sh(&format!("ip netns del cluster-{uid} 2>/dev/null"));
        }
        for parent in ["besteffort", "burstable"] {
            rootfs::remove_cgroup_everywhere(&format!("{}/{parent}", cgroups::ROOT));
        }
        rootfs::remove_cgroup_everywhere(cgroups::ROOT);
        // Anything still mounted under the temp dirs (overlays of killed shims).
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let temp = self.temp.path().display().to_string();
        for line in mountinfo.lines() {
            if let Some(target) = line.split_whitespace().nth(4) {
                if target.starts_with(&temp) {
                    let _ = rustix::mount::unmount(target, rustix::mount::UnmountFlags::DETACH);
                }
            }
        }
        // The namespace takes the bridge, the veths and the nft table with it.
        let _ = sh(&format!("ip netns del {}", self.netns));
    }
}
