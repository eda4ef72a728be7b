//! Shampoo, the baseline on the same machinery (docs/algorithm.md, "The
//! three optimizers").
//!
//! Per block and dim it keeps `L_i = eps I + sum Gram_i(G)` (or its
//! exponential average with `beta_2 < 1`) and preconditions with the inverse
//! root `L_i^(-1/(2k))`. Grafting, weight decay and momentum are those of
//! KrADagrad*.

use burn::tensor::{backend::Backend, Tensor};

use crate::config::Options;
use crate::layout::mode_gram;
use crate::roots::RootSpec;

/// The scale of the initial statistic `eps I`.
pub(crate) fn initial_scale(options: &Options) -> f64 {
    options.matrix_eps
}

/// `L = beta_2 L + w Gram_i(G)`, `w = 1` when `beta_2 == 1` and `1 - beta_2`
/// otherwise, for the mode-`i` statistics of a batch of gradient blocks.
pub(crate) fn update_statistic<B: Backend>(
    l: Tensor<B, 3>,
    blocks: &Tensor<B, 2>,
    block_dims: &[usize],
    i: usize,
    options: &Options,
) -> Tensor<B, 3> {
    let gram = mode_gram(blocks.clone(), block_dims, i);
    match options.beta_2 < 1.0 {
        true => l.mul_scalar(options.beta_2) + gram.mul_scalar(1.0 - options.beta_2),
        false => l + gram,
    }
}

/// `P = (L + r I)^(-1/(2k))` (or `-1/override`) at step counter `tau`, after
/// `updates = tau / statistics_compute_steps` statistics updates, eigenvalues
/// clamped below at `eps` by the eigendecomposition.
///
/// The ridge `r = max(0, eps / 2 - beta_2^updates eps)` keeps the root
/// bounded under EMA statistics: `L` starts at `eps I` and decays by `beta_2`
/// per update, so after `n` updates `L = beta_2^n eps I + EMA(Gram)`, and in
/// directions the gradient no longer reaches its eigenvalues fall toward 0,
/// where an inverse root has no bound (the Newton method has no eigenvalue
/// floor to clamp at). With the ridge the root sees every eigenvalue at
/// least `eps / 2`, so `P <= (eps / 2)^(-1/(2k))`. The ridge is 0 while the
/// decayed floor is above `eps / 2` (always with `beta_2 = 1`), and it shifts
/// an eigenvalue the gradient does reach by at most `eps / 2`: against the
/// reference's clamp at `eps`, half the shift a full floor at `eps` would
/// make (docs/algorithm.md, "EMA statistics").
pub(crate) fn root_spec(rank: usize, tau: usize, options: &Options) -> RootSpec {
    let updates = tau / options.statistics_compute_steps;
    let order = options.inverse_exponent_override.unwrap_or(2 * rank as u32);
    let decayed = options.beta_2.powi(updates.min(i32::MAX as usize) as i32);
    RootSpec {
        shift: options.matrix_eps * (0.5 - decayed).max(0.0),
        ..RootSpec::inverse(order, options.matrix_eps)
    }
}
