//! The kubelet: the node agent that runs the pods bound to this node.
//!
//! This file only declares the kubelet's modules; each module says what it owns.

pub mod server;
