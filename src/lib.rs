//! `cluster`: a single-binary, lightweight Kubernetes distribution.

pub mod server;
