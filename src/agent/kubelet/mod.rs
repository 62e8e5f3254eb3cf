//! The kubelet: runs the pods bound to this node.

pub mod env;
pub mod probes;
pub mod volumes;
