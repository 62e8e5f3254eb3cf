//! The official Python `kubernetes` client (PyPI) against a real `cluster server`: create, list,
//! watch and delete of a ConfigMap and a Deployment, driven by `tests/python/client_test.py`.
//!
//! The interpreter is `$CLUSTER_TEST_PYTHON` (scripts/test.sh sets it to the `python3` it
//! installed the package into), else `python3` on PATH. Without the `kubernetes` module the test
//! is skipped with a message, except under CI=true, where it fails.

mod support;

use std::process::Command;

use support::server::TestServer;

fn python() -> String {
    std::env::var("CLUSTER_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Whether `python` can import the client; the reason when it cannot.
fn client_missing(python: &str) -> Option<String> {
    match Command::new(python)
        .args(["-c", "import kubernetes"])
        .output()
    {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "{python} cannot import the kubernetes module ({}); install it with \
             `{python} -m pip install kubernetes` or run scripts/test.sh",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("no output")
        )),
        Err(err) => Some(format!("cannot run {python}: {err}")),
    }
}

#[test]
fn python_client_crud_and_watch() {
    let python = python();
    if let Some(reason) = client_missing(&python) {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("the Python client is required when CI=true: {reason}");
        }
        eprintln!("skipped: {reason}");
        return;
    }
    let server = TestServer::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client_test.py");
    let out = Command::new(&python)
        .arg(script)
        .arg(&server.kubeconfig)
        // Keep the user's ~/.kube and proxy settings out of the client.
        .env("HOME", server.dir.path())
        .env_remove("KUBECONFIG")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .expect("run the python client test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{python} {script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- server log\n{}",
        out.status,
        server.log()
    );
    print!("{stdout}");
}
