//! Containers for real: the runtime, its shims and libcontainer on this kernel, with a busybox
//! root filesystem. They need root (CI runs them as root; elsewhere they skip and say why).

mod support;

use std::fs;
use std::time::Duration;

use cluster::agent::runtime::container::spec::SeccompProfile;
use cluster::agent::runtime::container::{Rootfs, Runtime, State};
use support::rootfs::{require_root, TestRuntime};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Generous bound for anything that should finish quickly.
const LONG: Duration = Duration::from_secs(60);

async fn run_to_exit(
    t: &TestRuntime,
    request: &cluster::agent::runtime::container::CreateRequest,
) -> cluster::agent::runtime::container::ContainerStatus {
    let id = t.runtime.create(request).await.expect("create");
    t.runtime.start(&id).await.expect("start");
    tokio::time::timeout(LONG, t.runtime.wait(&id))
        .await
        .expect("container ends")
        .expect("wait")
}

/// Records of a CRI log file: (stream, tag, text), checking each timestamp parses.
fn log_records(path: &std::path::Path) -> Vec<(String, String, String)> {
    let text = fs::read_to_string(path).expect("log file");
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let ts = parts.next().unwrap_or_default();
            assert!(
                ts.parse::<jiff::Timestamp>().is_ok(),
                "bad timestamp in {line:?}"
            );
            (
                parts.next().unwrap_or_default().to_string(),
                parts.next().unwrap_or_default().to_string(),
                parts.next().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn output_goes_to_the_cri_log_and_the_exit_code_is_kept() {
    if !require_root("output_goes_to_the_cri_log_and_the_exit_code_is_kept") {
        return;
    }
    let t = TestRuntime::new();
    let request = t.request(
        "main",
        &[
            "/bin/sh",
            "-c",
            "echo hello; echo oops >&2; echo -n 'no newline'; exit 3",
        ],
    );
    let status = run_to_exit(&t, &request).await;
    assert_eq!(status.state, State::Exited);
    assert_eq!(status.exit_code, Some(3));
    assert_eq!(status.reason.as_deref(), Some("Error"));
    assert!(!status.oom_killed);
    assert!(status.started_at.is_some() && status.finished_at.is_some());

    let expected_path = t
        .config
        .log_root
        .join(format!("default_test_{}", t.pod.uid))
        .join("main")
        .join("0.log");
    assert_eq!(status.log_path, expected_path);
    let records = log_records(&status.log_path);
    assert!(
        records.contains(&("stdout".into(), "F".into(), "hello".into())),
        "{records:?}"
    );
    assert!(
        records.contains(&("stderr".into(), "F".into(), "oops".into())),
        "{records:?}"
    );
    assert!(
        records.contains(&("stdout".into(), "P".into(), "no newline".into())),
        "{records:?}"
    );

    let ok = run_to_exit(&t, &t.request("ok", &["/bin/true"])).await;
    assert_eq!(
        (ok.exit_code, ok.reason.as_deref()),
        (Some(0), Some("Completed"))
    );

    t.runtime.remove(&status.id).await.expect("remove");
    assert!(!status.log_path.exists(), "remove deletes the log");
    assert!(t.runtime.status(&status.id).await.is_err());
}

#[tokio::test]
async fn exceeding_the_memory_limit_is_reported_as_oom_killed() {
    if !require_root("exceeding_the_memory_limit_is_reported_as_oom_killed") {
        return;
    }
    let t = TestRuntime::new();
    let mut request = t.request(
        "hog",
        &[
            "/bin/dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=256M",
            "count=1",
        ],
    );
    request.spec.resources.memory_limit = Some(32 << 20);
    let status = run_to_exit(&t, &request).await;
    assert_eq!(status.exit_code, Some(137), "{status:?}");
    assert!(status.oom_killed, "{status:?}");
    assert_eq!(status.reason.as_deref(), Some("OOMKilled"));

    // The same program within its limit is not.
    let mut request = t.request(
        "small",
        &[
            "/bin/dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=1M",
            "count=1",
        ],
    );
    request.spec.resources.memory_limit = Some(32 << 20);
    let status = run_to_exit(&t, &request).await;
    assert_eq!(status.exit_code, Some(0), "{status:?}");
    assert!(!status.oom_killed);
}

#[tokio::test]
async fn stop_waits_the_grace_period_then_kills() {
    if !require_root("stop_waits_the_grace_period_then_kills") {
        return;
    }
    let t = TestRuntime::new();
    // Ignores SIGTERM.
    let stubborn = t.request(
        "stubborn",
        &[
            "/bin/sh",
            "-c",
            "trap '' TERM; while true; do sleep 1; done",
        ],
    );
    let id = t.runtime.create(&stubborn).await.expect("create");
    t.runtime.start(&id).await.expect("start");
    let status = t
        .runtime
        .stop(&id, Duration::from_secs(2))
        .await
        .expect("stop");
    assert_eq!(status.state, State::Exited);
    assert_eq!(status.exit_code, Some(137), "killed by SIGKILL: {status:?}");

    // Exits on SIGTERM within the grace period.
    let polite = t.request(
        "polite",
        &[
            "/bin/sh",
            "-c",
            "trap 'exit 42' TERM; echo trapped; while true; do sleep 0.1; done",
        ],
    );
    let id = t.runtime.create(&polite).await.expect("create");
    t.runtime.start(&id).await.expect("start");
    // PID 1 ignores a SIGTERM that arrives before its handler is installed: wait for it.
    let log_path = t.runtime.status(&id).await.expect("status").log_path;
    let deadline = std::time::Instant::now() + LONG;
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("trapped")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the trap was never set"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = t.runtime.stop(&id, LONG).await.expect("stop");
    assert_eq!(status.exit_code, Some(42), "{status:?}");
}

#[tokio::test]
async fn exec_runs_inside_the_container_with_and_without_a_terminal() {
    if !require_root("exec_runs_inside_the_container_with_and_without_a_terminal") {
        return;
    }
    let t = TestRuntime::new();
    let mut request = t.request("app", &["/bin/sleep", "1000"]);
    request.spec.env = vec![("GREETING".into(), "hi".into())];
    let id = t.runtime.create(&request).await.expect("create");
    t.runtime.start(&id).await.expect("start");

    let command: Vec<String> = [
        "/bin/sh",
        "-c",
        "echo $GREETING from $(cat /proc/1/cmdline | tr '\\0' ' '); echo err >&2; exit 7",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let output = t
        .runtime
        .exec(&id, &command, false)
        .await
        .expect("exec")
        .output(LONG)
        .await
        .expect("output");
    assert_eq!(output.exit_code, 7, "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "hi from /bin/sleep 1000\n"
    );
    assert_eq!(String::from_utf8_lossy(&output.stderr), "err\n");

    // stdin reaches the process.
    let mut process = t
        .runtime
        .exec(&id, &["/bin/cat".to_string()], false)
        .await
        .expect("exec cat");
    let mut stdin = process.stdin.take().expect("stdin");
    stdin.write_all(b"piped through\n").await.expect("write");
    drop(stdin);
    let mut out = String::new();
    process
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .await
        .expect("read");
    assert_eq!(out, "piped through\n");
    assert_eq!(process.wait().await.expect("wait"), 0);

    // With a terminal: the process sees one, and what it reads comes from our stdin.
    let mut process = t
        .runtime
        .exec(
            &id,
            &[
                "/bin/sh".to_string(),
                "-c".to_string(),
                "test -t 0 && echo on-a-tty; read line; echo got:$line".to_string(),
            ],
            true,
        )
        .await
        .expect("exec tty");
    let mut stdin = process.stdin.take().expect("stdin");
    stdin.write_all(b"typed\n").await.expect("write");
    let mut out = String::new();
    tokio::time::timeout(
        LONG,
        process
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out),
    )
    .await
    .expect("tty output in time")
    .expect("read");
    assert!(out.contains("on-a-tty"), "{out:?}");
    assert!(out.contains("got:typed"), "{out:?}");
    assert_eq!(process.wait().await.expect("wait"), 0);

    // A command that does not exist fails to start.
    let output = t
        .runtime
        .exec(&id, &["/no/such/binary".to_string()], false)
        .await
        .expect("exec")
        .output(LONG)
        .await
        .expect("output");
    assert_ne!(output.exit_code, 0);

    let stats = t.runtime.stats(&id).await.expect("stats");
    assert!(stats.memory_usage_bytes > 0, "{stats:?}");
    assert!(stats.cpu_usage_ns > 0, "{stats:?}");

    t.runtime
        .stop(&id, Duration::from_secs(1))
        .await
        .expect("stop");
}

async fn output_of(
    t: &TestRuntime,
    request: &cluster::agent::runtime::container::CreateRequest,
) -> String {
    let status = run_to_exit(t, request).await;
    assert_eq!(
        status.exit_code,
        Some(0),
        "{status:?}: {:?}",
        fs::read_to_string(&status.log_path)
    );
    log_records(&status.log_path)
        .into_iter()
        .filter(|(stream, _, _)| stream == "stdout")
        .map(|(_, _, text)| text + "\n")
        .collect()
}

#[tokio::test]
async fn users_and_groups_resolve_from_the_image() {
    if !require_root("users_and_groups_resolve_from_the_image") {
        return;
    }
    let t = TestRuntime::new();
    let mut request = t.request("who", &["/bin/sh", "-c", "id; echo $HOME; pwd"]);
    request.image_config.user = Some("alice".into());
    request.image_config.working_dir = Some("/home/alice".into());
    assert_eq!(
        output_of(&t, &request).await,
        "uid=1000(alice) gid=1000(alice) groups=50(staff),1000(alice)\n/home/alice\n/home/alice\n"
    );

    let mut request = t.request("numeric", &["/bin/sh", "-c", "id -u; id -g; id -G"]);
    request.image_config.user = Some("alice".into());
    request.spec.security.run_as_user = Some(1001);
    request.spec.security.run_as_group = Some(50);
    request.spec.security.supplemental_groups = vec![4242];
    assert_eq!(output_of(&t, &request).await, "1001\n50\n50 4242\n");

    let mut request = t.request("unknown", &["/bin/true"]);
    request.image_config.user = Some("mallory".into());
    let err = t.runtime.create(&request).await.expect_err("unknown user");
    assert!(err.to_string().contains("mallory"), "{err}");
}

#[tokio::test]
async fn security_settings_reach_the_process() {
    if !require_root("security_settings_reach_the_process") {
        return;
    }
    let t = TestRuntime::new();
    let mut request = t.request(
        "locked",
        &[
            "/bin/sh",
            "-c",
            "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; \
             touch /dev/shm/ok && echo shm-writable; \
             touch /root/x 2>/dev/null || echo rootfs-read-only; \
             cat /proc/kcore 2>/dev/null | head -c 1 | wc -c",
        ],
    );
    request.spec.security.read_only_root_filesystem = true;
    request.spec.security.allow_privilege_escalation = Some(false);
    request.spec.security.seccomp = SeccompProfile::RuntimeDefault;
    let out = output_of(&t, &request).await;
    let lines: Vec<&str> = out.lines().map(|l| l.trim()).collect();
    // containerd's default capability set, as docker shows it.
    assert!(
        lines.contains(&"CapEff:\t00000000a80425fb") || out.contains("00000000a80425fb"),
        "{out}"
    );
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(lines.contains(&"shm-writable"), "{out}");
    assert!(lines.contains(&"rootfs-read-only"), "{out}");
    assert_eq!(lines.last(), Some(&"0"), "/proc/kcore is masked: {out}");

    // Dropping everything but one capability.
    let mut request = t.request(
        "nocaps",
        &["/bin/sh", "-c", "grep ^CapEff: /proc/self/status"],
    );
    request.spec.security.capabilities_drop = vec!["ALL".into()];
    request.spec.security.capabilities_add = vec!["NET_BIND_SERVICE".into()];
    assert!(output_of(&t, &request)
        .await
        .contains("CapEff:\t0000000000000400"));
}

#[tokio::test]
async fn a_new_runtime_finds_running_and_exited_containers_again() {
    if !require_root("a_new_runtime_finds_running_and_exited_containers_again") {
        return;
    }
    let t = TestRuntime::new();
    let running = t
        .runtime
        .create(&t.request("survivor", &["/bin/sleep", "1000"]))
        .await
        .expect("create");
    t.runtime.start(&running).await.expect("start");
    let exited = run_to_exit(&t, &t.request("done", &["/bin/sh", "-c", "exit 5"])).await;
    let pid = t.runtime.status(&running).await.expect("status").pid;

    // The agent goes away: a new runtime on the same root knows nothing in memory.
    let again = Runtime::new(t.config.clone()).expect("runtime");
    let listed = again.list().await.expect("list");
    assert_eq!(listed.len(), 2, "{listed:?}");
    let survivor = listed
        .iter()
        .find(|c| c.id == running)
        .expect("running container found");
    assert_eq!(survivor.state, State::Running);
    assert_eq!(survivor.pid, pid);
    assert_eq!(survivor.name, "survivor");
    let done = listed
        .iter()
        .find(|c| c.id == exited.id)
        .expect("exited found");
    assert_eq!((done.state, done.exit_code), (State::Exited, Some(5)));

    let stopped = again
        .stop(&running, Duration::from_secs(1))
        .await
        .expect("stop");
    assert_eq!(stopped.state, State::Exited);
    assert_eq!(stopped.exit_code, Some(137), "{stopped:?}");
    again.remove(&running).await.expect("remove");
    again.remove(&exited.id).await.expect("remove");
    assert!(again.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn an_overlay_root_keeps_the_image_layer_untouched() {
    if !require_root("an_overlay_root_keeps_the_image_layer_untouched") {
        return;
    }
    let t = TestRuntime::new();
    let mut request = t.request(
        "writer",
        &[
            "/bin/sh",
            "-c",
            "echo changed > /etc/motd; rm /bin/yes; cat /etc/motd",
        ],
    );
    request.rootfs = Rootfs::Overlay {
        lower: vec![t.rootfs.clone()],
    };
    let status = run_to_exit(&t, &request).await;
    assert_eq!(status.exit_code, Some(0), "{status:?}");
    let records = log_records(&status.log_path);
    assert!(
        records.contains(&("stdout".into(), "F".into(), "changed".into())),
        "{records:?}"
    );
    assert!(
        !t.rootfs.join("etc/motd").exists(),
        "the layer was written to"
    );
    assert!(
        fs::symlink_metadata(t.rootfs.join("bin/yes")).is_ok(),
        "the layer lost a file"
    );
    let dir = t.config.root.join(&status.id);
    assert!(
        !fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .contains(&dir.join("rootfs").display().to_string()),
        "the shim unmounts the root filesystem when the container exits"
    );
    t.runtime.remove(&status.id).await.expect("remove");
    assert!(!dir.exists());
}

/// Everything an attach session delivers until the shim ends it: (stdout, stderr).
async fn attach_output(
    output: &mut cluster::agent::runtime::container::AttachOutput,
) -> (String, String) {
    use cluster::agent::runtime::container::logs::Stream;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    while let Some((stream, data)) = tokio::time::timeout(LONG, output.next())
        .await
        .expect("attach output ends in time")
        .expect("attach output")
    {
        match stream {
            Stream::Stdout => stdout.extend(data),
            Stream::Stderr => stderr.extend(data),
        }
    }
    (
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// Reads attach output until `text` has arrived on stdout.
async fn attach_until(
    output: &mut cluster::agent::runtime::container::AttachOutput,
    text: &str,
) -> String {
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(text) {
        match tokio::time::timeout(LONG, output.next())
            .await
            .expect("attach output in time")
            .expect("attach output")
        {
            Some((_, data)) => seen.extend(data),
            None => panic!(
                "the session ended before {text:?}: {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

const ATTACH_ALL: cluster::agent::runtime::container::AttachOptions =
    cluster::agent::runtime::container::AttachOptions {
        stdin: true,
        stdout: true,
        stderr: true,
    };

/// `stdin: true, stdinOnce: true` (what `kubectl run -i` makes): the container's reads wait
/// for a client; the client's input arrives, and the end of the client's stdin closes the
/// container's stdin (the shell sees end-of-file) while the client keeps the output.
#[tokio::test]
async fn attach_relays_input_and_output_and_stdin_once_closes_stdin() {
    if !require_root("attach_relays_input_and_output_and_stdin_once_closes_stdin") {
        return;
    }
    let t = TestRuntime::new();
    let mut request = t.request(
        "main",
        &[
            "/bin/sh",
            "-c",
            "read x; echo got $x; read y || echo stdin-closed; echo err >&2",
        ],
    );
    request.spec.stdin = true;
    request.spec.stdin_once = true;
    let id = t.runtime.create(&request).await.expect("create");
    t.runtime.start(&id).await.expect("start");
    let (mut output, mut input) = t.runtime.attach(&id, ATTACH_ALL).await.expect("attach");
    input.stdin(b"hi\n").await.expect("stdin");
    input.close_stdin().await.expect("close stdin");
    let (stdout, stderr) = attach_output(&mut output).await;
    assert_eq!(stdout, "got hi\nstdin-closed\n");
    assert_eq!(stderr, "err\n");
    let status = tokio::time::timeout(LONG, t.runtime.wait(&id))
        .await
        .expect("exits")
        .expect("wait");
    assert_eq!(status.exit_code, Some(0));
    let records = log_records(&status.log_path);
    assert!(
        records.contains(&("stdout".into(), "F".into(), "got hi".into())),
        "the log still gets the output: {records:?}"
    );
}

/// Without stdinOnce the end of a client's stdin ends only that client's session: the
/// container's stdin stays open and the next client's input reaches the same process.
/// A container without stdin gives an attach client output only.
#[tokio::test]
async fn attach_sessions_end_with_the_client_stdin_unless_stdin_once() {
    if !require_root("attach_sessions_end_with_the_client_stdin_unless_stdin_once") {
        return;
    }
    let t = TestRuntime::new();
    let mut request = t.request(
        "main",
        &[
            "/bin/sh",
            "-c",
            "while read l; do echo \"in: $l\"; done; echo stdin-ended; sleep 1000",
        ],
    );
    request.spec.stdin = true;
    let id = t.runtime.create(&request).await.expect("create");
    t.runtime.start(&id).await.expect("start");
    for word in ["one", "two"] {
        let (mut output, mut input) = t.runtime.attach(&id, ATTACH_ALL).await.expect("attach");
        input
            .stdin(format!("{word}\n").as_bytes())
            .await
            .expect("stdin");
        attach_until(&mut output, &format!("in: {word}")).await;
        input.close_stdin().await.expect("close stdin");
        let (rest, _) = attach_output(&mut output).await;
        assert!(!rest.contains("stdin-ended"), "stdin was closed: {rest}");
        let status = t.runtime.status(&id).await.expect("status");
        assert_eq!(status.state, State::Running);
    }
    t.runtime
        .stop(&id, Duration::ZERO)
        .await
        .expect("stop the reader");

    // No stdin: the client's input goes nowhere, its output arrives, and the container's
    // reads see /dev/null.
    let request = t.request(
        "quiet",
        &[
            "/bin/sh",
            "-c",
            "read x || echo no-stdin; sleep 1; echo late",
        ],
    );
    let id = t.runtime.create(&request).await.expect("create");
    let (mut output, mut input) = t.runtime.attach(&id, ATTACH_ALL).await.expect("attach");
    t.runtime.start(&id).await.expect("start");
    input.stdin(b"ignored\n").await.expect("stdin");
    let (stdout, _) = attach_output(&mut output).await;
    assert_eq!(stdout, "no-stdin\nlate\n");
}

/// A client that attaches and never reads does not hold up the container or its log: the
/// shim detaches it once it is far behind.
#[tokio::test]
async fn a_stalled_attach_client_never_holds_up_the_container() {
    if !require_root("a_stalled_attach_client_never_holds_up_the_container") {
        return;
    }
    let t = TestRuntime::new();
    let request = t.request(
        "main",
        &[
            "/bin/sh",
            "-c",
            "head -c 8000000 /dev/zero | tr '\\0' a; echo; echo done",
        ],
    );
    let id = t.runtime.create(&request).await.expect("create");
    let (mut output, _input) = t
        .runtime
        .attach(
            &id,
            cluster::agent::runtime::container::AttachOptions {
                stdin: false,
                stdout: true,
                stderr: true,
            },
        )
        .await
        .expect("attach");
    t.runtime.start(&id).await.expect("start");
    let status = tokio::time::timeout(LONG, t.runtime.wait(&id))
        .await
        .expect("the container ends although its client never reads")
        .expect("wait");
    assert_eq!(status.exit_code, Some(0));
    let log = fs::read_to_string(&status.log_path).expect("log");
    assert!(
        log.lines().any(|l| l.ends_with(" stdout F done")),
        "the log is complete"
    );
    // The stalled client got a bounded part of the output, then the end of the session.
    let mut received = 0usize;
    while let Ok(Some((_, data))) = tokio::time::timeout(LONG, output.next())
        .await
        .expect("the session ends")
    {
        received += data.len();
    }
    assert!(received < 8_000_000, "received {received} bytes");
}

/// The shim reads requests without blocking: clients that connect and stall (half a request,
/// or nothing) do not delay anybody, and many requests at once are all answered.
#[tokio::test]
async fn the_shim_answers_many_concurrent_requests_while_clients_stall() {
    if !require_root("the_shim_answers_many_concurrent_requests_while_clients_stall") {
        return;
    }
    let t = TestRuntime::new();
    let id = t
        .runtime
        .create(&t.request("main", &["/bin/sleep", "1000"]))
        .await
        .expect("create");
    t.runtime.start(&id).await.expect("start");
    let socket = t.config.root.join(&id).join("shim.sock");
    let mut stalled = Vec::new();
    for i in 0..20 {
        let mut stream = tokio::net::UnixStream::connect(&socket)
            .await
            .expect("connect");
        if i % 2 == 0 {
            stream.write_all(b"{\"op\":").await.expect("half a request");
        }
        stalled.push(stream);
    }
    let statuses = futures::future::join_all((0..200).map(|_| t.runtime.status(&id))).await;
    for status in statuses {
        assert_eq!(status.expect("status").state, State::Running);
    }
    // Deleting many pods at once: kills and waits in parallel with the status calls.
    let (killed, more) = tokio::join!(
        t.runtime.stop(&id, Duration::from_secs(5)),
        futures::future::join_all((0..50).map(|_| t.runtime.status(&id)))
    );
    let killed = killed.expect("stop");
    assert_eq!(killed.state, State::Exited);
    for status in more {
        status.expect("status during the stop");
    }
    // The stalled clients were never answered, and nothing else waited for them.
    let mut buf = [0u8; 16];
    for mut stream in stalled {
        let n = tokio::time::timeout(LONG, stream.read(&mut buf))
            .await
            .expect("the exited shim closes them")
            .unwrap_or(0);
        assert_eq!(n, 0, "a stalled client got an answer");
    }
}
