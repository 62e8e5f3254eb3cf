//! The container runtime of the agent: images (pull, import, unpack, snapshots) and containers
//! (libcontainer through a per-container shim).

pub mod container;
pub mod image;
