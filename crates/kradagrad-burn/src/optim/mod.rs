//! The three optimizers: one step engine, the algorithms it dispatches to,
//! and the two front ends Burn calls.
//!
//! | module | holds |
//! |---|---|
//! | `engine` | the one step, on a set of parameters with stacked factors |
//! | `algorithm` | the dispatch from the engine to an algorithm |
//! | `kradagrad_star`, `kradagrad`, `shampoo` | each algorithm's initial factor, statistics update, roots and schedule |
//! | `preconditioner` | the factored preconditioner they share: roots due, root refresh, preconditioned direction |
//! | `stacking` | how parameters map onto stacked factors |
//! | `per_parameter`, `batched` | the front ends: Burn's `SimpleOptimizer` and a whole-model `Optimizer` |
//! | `init` | building the front ends from the configs |
//! | `state` | the records both front ends save |

mod algorithm;
pub mod batched;
mod engine;
mod init;
pub mod kradagrad;
mod kradagrad_star;
mod per_parameter;
mod preconditioner;
mod shampoo;
mod stacking;
mod state;

pub use batched::{BatchedOptimizer, BatchedState, ParkedState};
pub use per_parameter::{Kradagrad, KradagradStar, PerParameterOptimizer, Shampoo};
pub use state::{ClassState, FactorGroup, PreconditionerState, StateOrigin};
