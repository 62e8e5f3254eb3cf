//! Shared test fixtures (each test crate uses what it needs).

#![allow(dead_code)]

pub mod hollow;
pub mod node;
pub mod registry;
pub mod rootfs;
pub mod server;
