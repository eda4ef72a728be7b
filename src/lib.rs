//! Support code for the workspace's examples and integration tests: the
//! reference-vector replay used by `examples/replay.rs` and `tests/parity.rs`.

pub mod mlp;
pub mod replay;
pub mod spd;

/// The README's code blocks, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
