//! Shared test fixtures (each test crate uses what it needs).

#![allow(dead_code)]

pub mod binder;
pub mod hollow;
pub mod rootfs;
pub mod server;
