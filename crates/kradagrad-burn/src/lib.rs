#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod config;
pub mod guard;
pub mod krad;
pub mod layout;
pub mod optim;
pub mod roots;
pub mod transforms;

pub use config::{ConfigError, NonFiniteGradients};
pub use optim::kradagrad::{Kradagrad, KradagradConfig};
pub use optim::kradagrad_star::{KradagradStar, KradagradStarConfig};
pub use optim::shampoo::{Shampoo, ShampooConfig};
pub use optim::{BatchedOptimizer, BatchedState, ClassState, FactorGroup, PreconditionerState, StateOrigin};
pub use roots::{RootMethod, RootSpec};
pub use transforms::{Grafting, MomentumForm, NesterovStyle, WeightDecayStyle};
