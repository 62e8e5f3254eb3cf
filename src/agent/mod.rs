//! The data plane: `cluster agent`.
//!
//! Not built yet: [`run`] says so instead of pretending. The kubelet, runtime, network, proxy
//! and DNS modules will live here; they talk to the API like any client and must never reach
//! the store.

pub mod kubelet;
pub mod network;
pub mod runtime;

use crate::config::AgentConfig;

/// Why the agent cannot run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// This build has no data plane yet.
    #[error("the agent (data plane) is not available in this build yet; run `cluster server` for the control plane")]
    NotAvailable,
}

/// Runs the agent. In this build it always fails with [`AgentError::NotAvailable`].
pub fn run(config: &AgentConfig) -> Result<(), AgentError> {
    tracing::debug!(server = %config.server_url, "agent requested");
    Err(AgentError::NotAvailable)
}
