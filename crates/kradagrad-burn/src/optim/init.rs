//! Building the optimizers from their configs, as Burn's `AdamConfig` does:
//! `init()` for a module through Burn's `OptimizerAdaptor` (one state per
//! parameter), `init_batched()` for the whole-model front end, `build()` for
//! the bare [`SimpleOptimizer`](burn::optim::SimpleOptimizer), each with a
//! `try_` form that returns the [`ConfigError`] instead of panicking.

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::tensor::backend::AutodiffBackend;

use super::algorithm::Algorithm;
use super::engine::Engine;
use super::{BatchedOptimizer, PerParameterOptimizer};
use crate::config::{ConfigError, KradagradConfig, KradagradStarConfig, ShampooConfig};

macro_rules! front_ends {
    ($config:ident, $algorithm:expr) => {
        impl $config {
            /// Validates the config and builds the per-parameter optimizer.
            pub fn try_build(&self) -> Result<PerParameterOptimizer, ConfigError> {
                self.validate()?;
                Ok(PerParameterOptimizer::new(Engine {
                    options: self.options(),
                    algorithm: $algorithm,
                }))
            }

            /// [`try_build`](Self::try_build), panicking with the
            /// [`ConfigError`] message if the config is invalid.
            pub fn build(&self) -> PerParameterOptimizer {
                self.try_build().unwrap_or_else(|error| panic!("{error}"))
            }

            /// Validates the config and returns an optimizer for a module, one
            /// state per parameter, with the config's gradient clipping.
            pub fn try_init<B, M>(&self) -> Result<OptimizerAdaptor<PerParameterOptimizer, M, B>, ConfigError>
            where
                B: AutodiffBackend,
                M: AutodiffModule<B>,
            {
                let optimizer = OptimizerAdaptor::from(self.try_build()?);
                Ok(match &self.grad_clipping {
                    Some(clipping) => optimizer.with_grad_clipping(clipping.init()),
                    None => optimizer,
                })
            }

            /// [`try_init`](Self::try_init), panicking with the
            /// [`ConfigError`] message if the config is invalid. Used like
            /// `AdamConfig::init()`.
            pub fn init<B, M>(&self) -> OptimizerAdaptor<PerParameterOptimizer, M, B>
            where
                B: AutodiffBackend,
                M: AutodiffModule<B>,
            {
                self.try_init().unwrap_or_else(|error| panic!("{error}"))
            }

            /// Validates the config and returns one optimizer for a whole
            /// module that batches the factors of equal block shape across all
            /// its parameters (see [`BatchedOptimizer`]), with the config's
            /// gradient clipping: the faster front end where every parameter
            /// gets a gradient at every step.
            pub fn try_init_batched<B, M>(&self) -> Result<BatchedOptimizer<M, B>, ConfigError>
            where
                B: AutodiffBackend,
                M: AutodiffModule<B>,
            {
                self.validate()?;
                let optimizer = BatchedOptimizer::new(Engine {
                    options: self.options(),
                    algorithm: $algorithm,
                });
                Ok(match &self.grad_clipping {
                    Some(clipping) => optimizer.with_grad_clipping(clipping.init()),
                    None => optimizer,
                })
            }

            /// [`try_init_batched`](Self::try_init_batched), panicking with
            /// the [`ConfigError`] message if the config is invalid.
            pub fn init_batched<B, M>(&self) -> BatchedOptimizer<M, B>
            where
                B: AutodiffBackend,
                M: AutodiffModule<B>,
            {
                self.try_init_batched()
                    .unwrap_or_else(|error| panic!("{error}"))
            }
        }
    };
}

front_ends!(KradagradStarConfig, Algorithm::KradagradStar);
front_ends!(KradagradConfig, Algorithm::Kradagrad);
front_ends!(ShampooConfig, Algorithm::Shampoo);
