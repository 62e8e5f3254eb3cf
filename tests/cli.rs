//! The real `cluster` binary from the outside: help, usage errors, config-file errors, the agent
//! stub, and a server that starts and stops cleanly on SIGTERM.
//!
//! Every command runs with the `CLUSTER_*` variables and `RUST_LOG` removed and an explicit
//! `--config`, so the host's environment and `/etc/cluster/config.yaml` do not leak in.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cluster");

/// How long the server may take to open its store.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to exit after SIGTERM.
// Generous: a loaded CI machine must not turn a clean shutdown into a failure.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

fn cluster() -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CLUSTER_") {
            command.env_remove(&name);
        }
    }
    command.env_remove("RUST_LOG");
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("run cluster")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write_config(dir: &Path, yaml: &str) -> String {
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path.display().to_string()
}

#[test]
fn help_lists_the_subcommands() {
    let output = run(cluster().arg("--help"));
    assert!(output.status.success());
    let help = text(&output.stdout);
    for subcommand in ["server", "agent", "version", "check-config"] {
        assert!(
            help.contains(subcommand),
            "{subcommand} missing from:\n{help}"
        );
    }
}

#[test]
fn version_prints_one_line() {
    let output = run(cluster().arg("version"));
    assert!(output.status.success());
    let stdout = text(&output.stdout);
    assert!(stdout.starts_with("cluster version v0.1.0 ("), "{stdout}");
    assert_eq!(stdout.lines().count(), 1);
}

#[test]
fn a_bad_flag_exits_2() {
    let output = run(cluster().args(["server", "--no-such-flag"]));
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("--no-such-flag"));
}

#[test]
fn a_bad_config_file_exits_2_with_one_line_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    for yaml in ["foo: bar\n", "data-dir: [unclosed\n", "debug: maybe\n"] {
        let config = write_config(dir.path(), yaml);
        let output = run(cluster().args(["server", "--config", &config]));
        assert_eq!(output.status.code(), Some(2), "{yaml}");
        let stderr = text(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{yaml}: {stderr}");
        assert!(
            stderr.starts_with(&format!("cluster: config file {config}: ")),
            "{yaml}: {stderr}"
        );
    }
}

#[test]
fn a_missing_explicit_config_file_exits_2() {
    let output = run(cluster()
        .args(["server"])
        .env("CLUSTER_CONFIG", "/nonexistent/cluster.yaml"));
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("/nonexistent/cluster.yaml"));
}

#[test]
fn the_agent_says_it_is_not_available_yet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "server: https://10.0.0.1:6443\n");
    let output = run(cluster()
        .args(["agent", "--config", &config])
        .env("CLUSTER_TOKEN", "secret"));
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("cluster: ") && last.contains("not available"),
        "{stderr}"
    );
}

/// Waits up to `timeout` for `child` to exit.
fn wait_for_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn the_server_starts_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    // Keys of the config file are flag names: a free loopback port and a kubeconfig in the
    // temp dir keep the test away from the host's 6443 and /etc/cluster.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    let config = write_config(
        dir.path(),
        &format!(
            "debug: true\ndisable-agent: true\nbind-address: 127.0.0.1\nhttps-listen-port: {port}\nwrite-kubeconfig: {}\n",
            kubeconfig.display()
        ),
    );
    let mut child = cluster()
        .args(["server", "--config", &config, "--data-dir"])
        .arg(&data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cluster server");

    // Read stderr on a thread; tell the test when the server says it runs.
    let stderr = child.stderr.take().expect("stderr");
    let (lines, received) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + START_TIMEOUT;
    let mut log = Vec::new();
    let started = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => {
                let running = line.contains("API server listening");
                log.push(line);
                if running {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    if !started {
        let _ = child.kill();
        let _ = child.wait();
        panic!("server did not start:\n{}", log.join("\n"));
    }
    // The config file's `debug: true` took effect.
    assert!(
        log.iter().any(|line| line.contains("DEBUG")),
        "{}",
        log.join("\n")
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let Some(status) = wait_for_exit(&mut child, STOP_TIMEOUT) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("server did not stop within {STOP_TIMEOUT:?} of SIGTERM");
    };
    let _ = reader.join();
    log.extend(received.try_iter());
    assert!(status.success(), "exit {status:?}:\n{}", log.join("\n"));
    assert!(
        log.iter().any(|line| line.contains("store closed")),
        "{}",
        log.join("\n")
    );
    assert!(data_dir.join("server/db").is_dir());
    assert!(
        kubeconfig.is_file(),
        "the admin kubeconfig was written where the config file said"
    );
}
