//! Runs the iproute2 (`ip`) and nftables (`nft`) tools for the pod network.
//!
//! The children are spawned from the calling thread, so they work in that thread's network
//! namespace (which is what lets the tests run everything inside a namespace of their own).
//! Owns nothing; the callers decide what to run.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;

/// Why a tool failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program could not be started (not installed?).
    #[error(
        "could not run `{command}`: {source} (the agent needs iproute2 and nftables installed)"
    )]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// The program ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

impl CommandError {
    /// What the program printed on stderr, empty when it did not run.
    pub fn stderr(&self) -> &str {
        match self {
            CommandError::Spawn { .. } => "",
            CommandError::Failed { stderr, .. } => stderr,
        }
    }
}

/// Runs `program args…` (with `stdin` fed to it when given) and returns its stdout.
pub async fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, CommandError> {
    let command = format!("{program} {}", args.join(" "));
    let spawn_error = |source| CommandError::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_error)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .map_err(spawn_error)?;
        drop(pipe);
    }
    let output = child.wait_with_output().await.map_err(spawn_error)?;
    if !output.status.success() {
        return Err(CommandError::Failed {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    tracing::trace!(%command, "ran");
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `ip args…`.
pub async fn ip(args: &[&str]) -> Result<String, CommandError> {
    run("ip", args, None).await
}

/// True when an `ip` error says the device or namespace is not there.
pub fn is_not_found(error: &CommandError) -> bool {
    let stderr = error.stderr();
    stderr.contains("does not exist")
        || stderr.contains("Cannot find device")
        || stderr.contains("No such file or directory")
        || stderr.contains("No such device")
}
