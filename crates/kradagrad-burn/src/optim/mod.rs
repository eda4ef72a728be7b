//! The three optimizers and the step machinery they share.

pub(crate) mod engine;
pub mod kradagrad;
pub mod kradagrad_star;
pub mod shampoo;
mod state;

pub use state::{FactorGroup, PreconditionerState};
