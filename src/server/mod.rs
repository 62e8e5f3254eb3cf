//! The control plane: `cluster server`.

pub mod store;
