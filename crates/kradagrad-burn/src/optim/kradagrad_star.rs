//! KrADagrad*: the Shampoo-shaped KrAD optimizer (docs/algorithm.md, "The
//! three optimizers").
//!
//! Per block and dim it keeps `S_i ~ L_i^-1`, starting at `I / eps`, updates
//! every `S_i` from the raw gradient's mode-`i` Gram `C` with
//! `S_i - S_i C S_i / (d_i (1 + trace(C S_i)))`, and preconditions with
//! `P_i = S_i^(1/(2k))`, `k` being the merged rank. The direction is grafted
//! (to the SGD norm by default), then weight decay and momentum follow.

use burn::tensor::{backend::Backend, Tensor};

use crate::config::Options;
use crate::krad::{decay_inverse, krad_star_update_from_blocks};
use crate::roots::RootSpec;

/// The scale of the initial inverse statistic `I / eps`.
pub(crate) fn initial_scale(options: &Options) -> f64 {
    1.0 / options.matrix_eps
}

/// The KrADagrad* statistic update of the mode-`i` inverse statistics of a
/// batch of gradient blocks, with decay `beta_2` (the inverse of the decayed
/// statistic is `S / beta_2`).
pub(crate) fn update_statistic<B: Backend>(
    s: Tensor<B, 3>,
    blocks: &Tensor<B, 2>,
    block_dims: &[usize],
    i: usize,
    options: &Options,
) -> Tensor<B, 3> {
    krad_star_update_from_blocks(decay_inverse(s, options.beta_2), blocks.clone(), block_dims, i)
}

/// `P = S^(1/(2k))` for merged rank `k`, at every refresh.
pub(crate) fn root_spec(rank: usize, _tau: usize, _options: &Options) -> RootSpec {
    RootSpec::positive(2 * rank as u32)
}
