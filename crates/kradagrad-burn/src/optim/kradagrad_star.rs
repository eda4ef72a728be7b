//! KrADagrad*: the Shampoo-shaped KrAD optimizer (ALGORITHM.md section 3).
//!
//! Per block and dim it keeps `S_i ~ L_i^-1`, starting at `I / eps`, updates
//! every `S_i` from the raw gradient's mode-`i` Gram `C` with
//! `S_i - S_i C S_i / (d_i (1 + trace(C S_i)))`, and preconditions with
//! `P_i = S_i^(1/(2k))`, `k` being the merged rank. The direction is grafted
//! (to the SGD norm by default), then weight decay and momentum follow.

use burn::tensor::{backend::Backend, Tensor};

use super::engine::Variant;
use crate::config::preconditioned_config;
use crate::krad::{decay_inverse, krad_star_update_from_blocks};
use crate::roots::RootSpec;

preconditioned_config! {
    /// Configuration of [`KradagradStar`], with the library's defaults (see the
    /// field docs). Use it like Burn's `AdamConfig`:
    ///
    /// ```
    /// use kradagrad_burn::KradagradStarConfig;
    /// let config = KradagradStarConfig::new().with_block_size(Some(256));
    /// assert!(config.validate().is_ok());
    /// ```
    KradagradStarConfig =>
    /// The KrADagrad* optimizer, a Burn [`SimpleOptimizer`](burn::optim::SimpleOptimizer).
    KradagradStar(Variant::KradagradStar),
    grafting = "crate::transforms::Grafting::SgdNorm",
    grafting_doc = "Grafting of the preconditioned direction. Default: the SGD norm (the reference always grafts KrADagrad*).",
    {}
    inverse_exponent_override = |_config| 0
}

/// The KrADagrad* statistic update (section 3) of the mode-`i` inverse
/// statistics of a batch of gradient blocks, with decay `beta2`.
pub(crate) fn update_statistic<B: Backend>(
    s: Tensor<B, 3>,
    blocks: Tensor<B, 2>,
    block_dims: &[usize],
    i: usize,
    beta2: f64,
) -> Tensor<B, 3> {
    krad_star_update_from_blocks(decay_inverse(s, beta2), blocks, block_dims, i)
}

/// `P = S^(1/(2k))`.
pub(crate) fn root_spec(rank: usize) -> RootSpec {
    RootSpec::positive(2 * rank as u32)
}
