//! Support code for the workspace's examples and integration tests: the
//! reference-vector replay, test problems, backend probes and report output.

pub mod backends;
pub mod cli;
pub mod datasets;
pub mod mlp;
pub mod parallel;
pub mod quadratic;
pub mod replay;
pub mod report;
pub mod spd;

/// The README's code blocks, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The tuning guide's code blocks, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/tuning.md")]
pub struct TuningDoctests;
