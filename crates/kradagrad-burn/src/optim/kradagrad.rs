//! KrADagrad: one factor per step, approximating full-matrix AdaGrad
//! (ALGORITHM.md section 4).
//!
//! Per block and dim it keeps `S_i`, starting at `I`. On a statistics step it
//! picks ONE dim `i` by a fixed schedule, preconditions every other mode of the
//! gradient with the current roots, and updates `S_i` with the damped KrAD
//! step. Roots `P = S^(1/2)` of the dims updated since the last refresh are
//! recomputed for every block when due. No grafting by default.

use burn::tensor::{backend::Backend, Tensor};

use super::engine::{apply_factors, Factors, RootRefresh, StepPlan, Touched, Variant};
use crate::config::{preconditioned_config, Options};
use crate::krad::{decay_inverse, krad_mm_update_from_blocks};
use crate::roots::RootSpec;

preconditioned_config! {
    /// Configuration of [`Kradagrad`], with the library's defaults (see the
    /// field docs). Use it like Burn's `AdamConfig`:
    ///
    /// ```
    /// use kradagrad_burn::KradagradConfig;
    /// let config = KradagradConfig::new().with_momentum(0.95);
    /// assert!(config.validate().is_ok());
    /// ```
    KradagradConfig =>
    /// The KrADagrad optimizer, a Burn [`SimpleOptimizer`](burn::optim::SimpleOptimizer).
    Kradagrad(Variant::Kradagrad),
    grafting = "crate::transforms::Grafting::None",
    grafting_doc = "Grafting of the preconditioned direction. Default: none (the reference never grafts KrADagrad).",
    {}
    inverse_exponent_override = |_config| 0
}

/// The dim updated at step `t` for merged dims `dims` (rank `k >= 1`): round
/// robin for the first `k^2` steps, then, after each perfect square `s^2`, the
/// dims `0..k` once, the largest dim otherwise.
pub fn dim_for_step(t: usize, dims: &[usize]) -> usize {
    let k = dims.len();
    if t < k * k {
        return t % k;
    }
    let s = t.isqrt();
    let e = t - s * s;
    if e < k {
        e
    } else {
        largest_dim(dims)
    }
}

/// The first index of the largest of `dims` (rank `>= 1`): with the rank, all
/// that [`dim_for_step`] reads of the dims.
pub(crate) fn largest_dim(dims: &[usize]) -> usize {
    let max = *dims.iter().max().expect("rank >= 1");
    dims.iter().position(|&d| d == max).expect("max exists")
}

/// KrADagrad's phase one (section 4); see
/// [`update_statistics`](super::engine::update_statistics) for the
/// arguments. `dims` (the merged dims) pick the statistic updated this step;
/// the roots due are those of the dims updated since their last refresh.
pub(crate) fn update_statistics<B: Backend>(
    options: &Options,
    dims: &[usize],
    block_dims: &[&[usize]],
    factors: Factors<'_, B>,
    blocks: &[Tensor<B, 2>],
    touched: &mut Touched,
) -> StepPlan<B> {
    let t = *factors.step;
    *factors.step += 1;
    if dims.is_empty() {
        return StepPlan::gradient();
    }
    let groups = factors.groups;
    // On a statistics step: the dim, and the gradient with every other mode preconditioned.
    let mut partial: Option<(usize, Vec<Tensor<B, 2>>)> = None;
    if Variant::Kradagrad.statistics_due(t, options) {
        let i = dim_for_step(t, dims);
        let tilde: Vec<_> = blocks
            .iter()
            .zip(groups.iter())
            .zip(block_dims)
            .map(|((b, group), bd)| apply_factors(b.clone(), &group.roots, bd, Some(i)))
            .collect();
        for ((group, bd), gt) in groups.iter_mut().zip(block_dims).zip(&tilde) {
            let s = decay_inverse(group.statistics[i].clone(), options.beta2);
            group.statistics[i] = krad_mm_update_from_blocks(s, gt.clone(), bd, i, options.matrix_eps);
        }
        factors.stale_dims[i] = true;
        touched.statistics[i] = true;
        partial = Some((i, tilde));
    }
    // Every block's roots of every stale dim (the reference refreshes only the first block's).
    let refresh = t.is_multiple_of(options.preconditioning_compute_steps).then(|| {
        let stale = std::mem::replace(factors.stale_dims, vec![false; dims.len()]);
        RootRefresh {
            dims: stale,
            spec: RootSpec::positive(2),
        }
    });
    StepPlan::kradagrad(refresh, partial, t >= options.start_preconditioning_step)
}

#[cfg(test)]
mod tests {
    use super::dim_for_step;

    #[test]
    fn schedule_follows_section_4() {
        let dims = [3, 7];
        // t < k^2 = 4: round robin.
        let first: Vec<_> = (0..4).map(|t| dim_for_step(t, &dims)).collect();
        assert_eq!(first, vec![0, 1, 0, 1]);
        // t = 4 = 2^2: e = 0 -> 0; t = 5: e = 1 -> 1; t = 6, 7, 8: e >= k -> largest (1).
        let later: Vec<_> = (4..10).map(|t| dim_for_step(t, &dims)).collect();
        assert_eq!(later, vec![0, 1, 1, 1, 1, 0]);
        // Ties pick the first largest.
        assert_eq!(dim_for_step(100 + 5, &[9, 9]), 0);
        assert_eq!(dim_for_step(7, &[5]), 0);
    }
}
