//! The messages between the agent and a shim over the shim's unix socket.
//!
//! One connection carries one request, a JSON object on one line, and one response, also one
//! JSON line. `Wait` is answered only when the container has exited. Shared by both sides;
//! holds no I/O.

use serde::{Deserialize, Serialize};

use super::state::ShimStatus;

/// What the agent asks a shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    /// The current status.
    Status,
    /// Start the created container's process.
    Start,
    /// Send a signal to the container's init process, or to all its processes.
    Kill { signal: i32, all: bool },
    /// Answer once the container has exited, with its final status.
    Wait,
}

/// A shim's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    /// The status after the request was carried out.
    pub status: Option<ShimStatus>,
    /// Why the request failed.
    pub error: Option<String>,
}
