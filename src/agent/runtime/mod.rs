//! The container runtime of the agent: images (pull, import, unpack, snapshots) and, later,
//! containers (libcontainer through a per-container shim).

pub mod image;
