//! The three optimizers and the step machinery they share.

pub mod batched;
pub(crate) mod engine;
pub mod kradagrad;
pub mod kradagrad_star;
pub mod shampoo;
mod state;

pub use batched::{BatchedOptimizer, BatchedState, ClassState, ParkedState};
pub use state::{FactorGroup, PreconditionerState, StateOrigin};
