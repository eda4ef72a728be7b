#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod config;
pub mod guard;
pub mod krad;
pub mod layout;
pub mod optim;
pub mod roots;
mod sharing;
pub mod transforms;

pub use config::{
    ConfigError, Grafting, KradagradConfig, KradagradStarConfig, MomentumConfig, MomentumForm,
    NonFiniteGradients, ShampooConfig, SharedRootsConfig, WeightDecayConfig, WeightDecayStyle,
};
pub use optim::{
    BatchedOptimizer, BatchedState, ClassState, FactorGroup, Kradagrad, KradagradStar, ParkedState,
    PerParameterOptimizer, PreconditionerState, Shampoo, StateOrigin,
};
pub use roots::{RootMethod, RootSpec};
