//! `cluster`: a single-binary, lightweight Kubernetes distribution.
//!
//! The library holds everything; `main.rs` only parses the command line, starts tracing and
//! dispatches. The tree follows the two planes of Kubernetes: [`server`] is the control plane,
//! [`agent`] the data plane.

pub mod agent;
pub mod check_config;
pub mod cli;
pub mod config;
pub mod quantity;
pub mod server;
