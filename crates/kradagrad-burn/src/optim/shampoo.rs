//! Shampoo, the baseline on the same machinery (ALGORITHM.md section 5).
//!
//! Per block and dim it keeps `L_i = eps I + sum Gram_i(G)` (or its
//! exponential average with `beta2 < 1`) and preconditions with the inverse
//! root `L_i^(-1/(2k))`. Grafting, weight decay and momentum are those of
//! KrADagrad*.

use burn::tensor::{backend::Backend, Tensor};

use super::engine::Variant;
use crate::config::{preconditioned_config, Options};
use crate::roots::RootSpec;

preconditioned_config! {
    /// Configuration of [`Shampoo`], with the library's defaults (see the field
    /// docs). Use it like Burn's `AdamConfig`:
    ///
    /// ```
    /// use kradagrad_burn::ShampooConfig;
    /// let config = ShampooConfig::new().with_inverse_exponent_override(2);
    /// assert!(config.validate().is_ok());
    /// ```
    ShampooConfig =>
    /// The Shampoo optimizer, a Burn [`SimpleOptimizer`](burn::optim::SimpleOptimizer).
    Shampoo(Variant::Shampoo),
    grafting = "crate::transforms::Grafting::SgdNorm",
    grafting_doc = "Grafting of the preconditioned direction. Default: the SGD norm.",
    {
        /// When positive, roots are `L^(-1/override)` instead of `L^(-1/(2k))`.
        /// Default: `0` (off).
        #[config(default = 0)]
        pub inverse_exponent_override: u32,
    }
    inverse_exponent_override = |config| config.inverse_exponent_override
}

/// `L = beta2 L + w Gram`, `w = 1` when `beta2 == 1` and `1 - beta2` otherwise.
pub(crate) fn update_statistic<B: Backend>(l: Tensor<B, 3>, gram: Tensor<B, 3>, beta2: f64) -> Tensor<B, 3> {
    if beta2 < 1.0 {
        l.mul_scalar(beta2) + gram.mul_scalar(1.0 - beta2)
    } else {
        l + gram
    }
}

/// `P = (L + r I)^(-1/(2k))` (or `-1/override`) after `updates` statistics
/// updates, eigenvalues clamped below at `eps` by the eigendecomposition.
///
/// The ridge `r = max(0, eps / 2 - beta2^updates eps)` keeps the root bounded
/// under EMA statistics: `L` starts at `eps I` and decays by `beta2` per
/// update, so after `n` updates `L = beta2^n eps I + EMA(Gram)`, and in
/// directions the gradient no longer reaches its eigenvalues fall toward 0,
/// where an inverse root has no bound (the Newton method has no eigenvalue
/// floor to clamp at). With the ridge the root sees every eigenvalue at
/// least `eps / 2`, so `P <= (eps / 2)^(-1/(2k))`. The ridge is 0 while the
/// decayed floor is above `eps / 2` (always with `beta2 = 1`), and it shifts
/// an eigenvalue the gradient does reach by at most `eps / 2`: against the
/// reference's clamp at `eps`, half the shift a full floor at `eps` would
/// make (docs/algorithm.md, "EMA statistics").
pub(crate) fn root_spec(rank: usize, options: &Options, updates: usize) -> RootSpec {
    let order = match options.inverse_exponent_override {
        0 => 2 * rank as u32,
        o => o,
    };
    let decayed = options.beta2.powi(updates.min(i32::MAX as usize) as i32);
    RootSpec {
        shift: options.matrix_eps * (0.5 - decayed).max(0.0),
        ..RootSpec::inverse(order, options.matrix_eps)
    }
}
