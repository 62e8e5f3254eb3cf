//! `kubectl attach`, `kubectl run -i` and terminals (`kubectl exec -it`, `kubectl attach -it`)
//! on a real node: a `cluster server` with its embedded agent in a network namespace the test
//! makes ([`support::node`]), real containers, kubectl 1.32 over WebSockets. Terminals are
//! driven through `script`, which gives kubectl a pseudo-terminal as a user's shell would.
//!
//! Needs root, iproute2, nftables, nsenter, kubectl, busybox-static and util-linux `script`:
//! CI (`CI=true`) runs them; elsewhere they skip and say why.

mod support;

use std::io::{Read as _, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::node::{kubectl_binary, require, Node, IMAGE, LONG};

/// A kubectl (or `script` running kubectl) whose output the test watches while it types.
struct Interactive {
    child: Child,
    stdin: Option<ChildStdin>,
    output: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    what: String,
}

impl Interactive {
    /// `kubectl ARGS…` against the node, stdin piped.
    fn kubectl(node: &Node, args: &[&str]) -> Interactive {
        let mut command = Command::new(kubectl_binary());
        command.args(args);
        Interactive::spawn(node, command, format!("kubectl {}", args.join(" ")))
    }

    /// `kubectl ARGS…` on a pseudo-terminal, through `script`.
    fn terminal(node: &Node, args: &str) -> Interactive {
        let line = format!("{} {args}", kubectl_binary().display());
        let mut command = Command::new("script");
        command
            .args(["-q", "-e", "-c", &line, "/dev/null"])
            .env("SHELL", "/bin/sh")
            .env("TERM", "xterm");
        Interactive::spawn(node, command, format!("script -c '{line}'"))
    }

    fn spawn(node: &Node, mut command: Command, what: String) -> Interactive {
        command
            .env("KUBECONFIG", &node.server().kubeconfig)
            .env("HOME", node.server().dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn");
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().expect("stdout"));
        let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().expect("stderr"));
        for mut pipe in [stdout, stderr] {
            let output = output.clone();
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    output.lock().expect("lock").extend_from_slice(&buf[..n]);
                }
            }));
        }
        Interactive {
            stdin: child.stdin.take(),
            child,
            output,
            readers,
            what,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().expect("lock")).into_owned()
    }

    fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(text.as_bytes()).expect("write");
        stdin.flush().expect("flush");
    }

    /// Waits until the output (from `from` on) contains `text`; returns where it ends.
    fn wait_for(&self, node: &Node, from: usize, text: &str) -> usize {
        let deadline = Instant::now() + LONG;
        loop {
            let all = self.text();
            if let Some(at) = all.get(from..).and_then(|rest| rest.find(text)) {
                return from + at + text.len();
            }
            if Instant::now() > deadline {
                node.fail(&format!("{}: no {text:?} in {all:?}", self.what));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Closes stdin and waits for the exit; returns the exit code and all output.
    fn finish(mut self, node: &Node) -> (i32, String) {
        drop(self.stdin.take());
        let deadline = Instant::now() + LONG;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                for reader in std::mem::take(&mut self.readers) {
                    let _ = reader.join();
                }
                return (status.code().unwrap_or(-1), self.text());
            }
            if Instant::now() > deadline {
                node.fail(&format!("{} did not end: {:?}", self.what, self.text()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Interactive {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            let _ = self.child.wait();
        }
    }
}

fn pod(name: &str, command: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {IMAGE}\n    command: [\"/bin/sh\", \"-c\", {command:?}]\n{extra}"
    )
}

fn wait_running(node: &Node, pod: &str) {
    node.wait_for(
        &format!("{pod} Running"),
        &["get", "pod", pod, "-o", "jsonpath={.status.phase}"],
        |s| s == "Running",
    );
}

fn require_script(test: &str) -> bool {
    if !require(test) {
        return false;
    }
    let found = Command::new("script").arg("--version").output().is_ok();
    if !found && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: util-linux `script` is required when CI=true");
    }
    if !found {
        eprintln!("skipping {test}: util-linux `script` is missing");
    }
    found
}

/// `kubectl run -i --rm --restart=Never`: the piped input reaches the container's `read`
/// (stdin + stdinOnce), its answer comes back, and the pod is deleted afterwards.
#[test]
fn kubectl_run_i_rm_feeds_stdin_and_removes_the_pod() {
    if !require("kubectl_run_i_rm_feeds_stdin_and_removes_the_pod") {
        return;
    }
    let node = Node::start("attach-run");
    let mut run = Interactive::kubectl(
        &node,
        &[
            "run",
            "-i",
            "--rm",
            "--restart=Never",
            &format!("--image={IMAGE}"),
            "t",
            // The test image's entrypoint is `sh -c`: replace it.
            "--command",
            "--",
            "sh",
            "-c",
            "read x; echo got $x",
        ],
    );
    run.send("hello\n");
    let (code, output) = run.finish(&node);
    assert_eq!(code, 0, "kubectl run: {output}");
    assert!(output.contains("got hello"), "kubectl run: {output}");
    node.wait_for("pod t deleted", &["get", "pods", "-o", "name"], |s| {
        !s.contains("pod/t")
    });
}

/// `kubectl attach` shows what a running container prints from then on; `kubectl attach -i`
/// to a container with `stdin: true` delivers input, and ending the client's stdin ends only
/// that session: the container keeps its stdin for the next one (no stdinOnce).
#[test]
fn kubectl_attach_shows_output_and_delivers_input() {
    if !require("kubectl_attach_shows_output_and_delivers_input") {
        return;
    }
    let node = Node::start("attach");
    node.apply(&pod(
        "ticker",
        "i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done",
        "",
    ));
    node.apply(&pod(
        "echoer",
        "while read l; do echo \"in: $l\"; done; echo stdin-ended; sleep 1000",
        "    stdin: true\n",
    ));
    wait_running(&node, "ticker");
    wait_running(&node, "echoer");

    let ticker = Interactive::kubectl(&node, &["attach", "ticker"]);
    // Two ticks in a row arrive through the session.
    let after = ticker.wait_for(&node, 0, "tick ");
    ticker.wait_for(&node, after, "tick ");
    drop(ticker);

    for word in ["ping", "pong"] {
        let mut attach = Interactive::kubectl(&node, &["attach", "-i", "echoer"]);
        attach.send(&format!("{word}\n"));
        attach.wait_for(&node, 0, &format!("in: {word}"));
        let (code, output) = attach.finish(&node);
        assert_eq!(code, 0, "kubectl attach -i: {output}");
        assert!(!output.contains("stdin-ended"), "{output}");
        assert_eq!(node.pod_field("echoer", "{.status.phase}"), "Running");
    }
    let logs = node.kubectl_ok(&["logs", "echoer"]);
    assert_eq!(logs, "in: ping\nin: pong\n");
}

/// Terminals: `kubectl exec -it POD -- sh` — type a command, see its output, the exit code
/// comes back — and `kubectl attach -it` to a container whose own shell has a terminal.
#[test]
fn terminals_through_kubectl_exec_it_and_attach_it() {
    if !require_script("terminals_through_kubectl_exec_it_and_attach_it") {
        return;
    }
    let node = Node::start("attach-tty");
    node.apply(&pod("shell", "exec sh", "    stdin: true\n    tty: true\n"));
    wait_running(&node, "shell");

    let mut exec = Interactive::terminal(&node, "exec -it shell -- sh");
    let at = exec.wait_for(&node, 0, "# ");
    exec.send("echo $((6*7))\n");
    exec.wait_for(&node, at, "42");
    exec.send("exit 3\n");
    let (code, output) = exec.finish(&node);
    assert_eq!(code, 3, "kubectl exec -it: {output}");

    let mut attach = Interactive::terminal(&node, "attach -it shell");
    attach.wait_for(&node, 0, "If you don't see a command prompt");
    attach.send("\n");
    let at = attach.wait_for(&node, 0, "# ");
    attach.send("echo $((7*8)) $(tty)\n");
    attach.wait_for(&node, at, "56 /dev/");
    attach.send("exit\n");
    let (code, output) = attach.finish(&node);
    assert_eq!(code, 0, "kubectl attach -it: {output}");
    node.wait_for(
        "shell Succeeded",
        &["get", "pod", "shell", "-o", "jsonpath={.status.phase}"],
        |s| s == "Succeeded",
    );
}
