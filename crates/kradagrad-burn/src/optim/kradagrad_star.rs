//! KrADagrad*: the Shampoo-shaped KrAD optimizer (docs/algorithm.md, "The
//! three optimizers").
//!
//! Per block and dim it keeps `S_i ~ L_i^-1`, starting at `I / eps`, updates
//! every `S_i` from the raw gradient's mode-`i` Gram `C` with
//! `S_i - S_i C S_i / (d_i (1 + trace(C S_i)))`, and preconditions with
//! `P_i = S_i^(1/(2k))`, `k` being the merged rank. The direction is grafted
//! (to the SGD norm by default), then weight decay and momentum follow.

use burn::tensor::{backend::Backend, Tensor};

use super::preconditioner::{update_every_dim, ClassFactors, StatisticsUpdate};
use crate::config::Options;
use crate::krad::{decay_inverse, krad_star_update_from_blocks};
use crate::roots::RootSpec;

/// The scale of the initial inverse statistic `I / eps`.
pub(crate) fn initial_scale(options: &Options) -> f64 {
    1.0 / options.matrix_eps
}

/// The statistics update of one class: every inverse statistic from the raw
/// gradient's blocks, every root `S^(1/(2k))` due together.
pub(crate) fn update_statistics<B: Backend>(
    options: &Options,
    dims: &[usize],
    block_dims: &[&[usize]],
    factors: ClassFactors<'_, B>,
    blocks: &[Tensor<B, 2>],
) -> StatisticsUpdate<B> {
    let rank = dims.len();
    update_every_dim(
        options,
        rank,
        block_dims,
        factors,
        blocks,
        |s, b, bd, i| update_statistic(s, b.clone(), bd, i, options.beta_2),
        |_| root_spec(rank),
    )
}

/// The KrADagrad* statistic update of the mode-`i` inverse statistics of a
/// batch of gradient blocks, with decay `beta_2` (the inverse of the decayed
/// statistic is `S / beta_2`).
fn update_statistic<B: Backend>(
    s: Tensor<B, 3>,
    blocks: Tensor<B, 2>,
    block_dims: &[usize],
    i: usize,
    beta_2: f64,
) -> Tensor<B, 3> {
    krad_star_update_from_blocks(decay_inverse(s, beta_2), blocks, block_dims, i)
}

/// `P = S^(1/(2k))`.
fn root_spec(rank: usize) -> RootSpec {
    RootSpec::positive(2 * rank as u32)
}
