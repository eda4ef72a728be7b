//! KrADagrad: one factor per step, approximating full-matrix AdaGrad
//! (ALGORITHM.md section 4).
//!
//! Per block and dim it keeps `S_i`, starting at `I`. On a statistics step it
//! picks ONE dim `i` by a fixed schedule, preconditions every other mode of the
//! gradient with the current roots, and updates `S_i` with the damped KrAD
//! step. Roots `P = S^(1/2)` of the dims updated since the last refresh are
//! recomputed for every block when due. No grafting by default.

use burn::tensor::{backend::Backend, Tensor};

use super::engine::{apply_factors, refresh_roots, Touched, Variant};
use super::PreconditionerState;
use crate::config::{preconditioned_config, Options};
use crate::krad::{decay_inverse, krad_mm_update_from_blocks};
use crate::layout::{mode_product, BlockLayout};
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
        // First index of the largest dim.
        let max = *dims.iter().max().expect("rank >= 1");
        dims.iter().position(|&d| d == max).expect("max exists")
    }
}

/// KrADagrad's preconditioned direction for one step (section 4).
pub(crate) fn precondition<B: Backend, const D: usize>(
    options: &Options,
    layout: &BlockLayout,
    state: &mut PreconditionerState<B, D>,
    grad: &Tensor<B, D>,
    touched: &mut Touched,
) -> Tensor<B, D> {
    let t = state.step;
    state.step += 1;
    if layout.rank() == 0 {
        return grad.clone();
    }
    let blocks = layout.split(grad.clone().reshape([layout.numel()]));
    // On a statistics step: the dim, and the gradient with every other mode preconditioned.
    let mut partial: Option<(usize, Vec<Tensor<B, 2>>)> = None;
    if t.is_multiple_of(options.statistics_compute_steps) {
        let i = dim_for_step(t, &layout.dims);
        let tilde: Vec<_> = blocks
            .iter()
            .zip(&state.groups)
            .zip(&layout.regions)
            .map(|((b, group), region)| apply_factors(b.clone(), &group.roots, &region.block_dims, Some(i)))
            .collect();
        for ((group, region), gt) in state.groups.iter_mut().zip(&layout.regions).zip(&tilde) {
            let s = decay_inverse(group.statistics[i].clone(), options.beta2);
            group.statistics[i] =
                krad_mm_update_from_blocks(s, gt.clone(), &region.block_dims, i, options.matrix_eps);
        }
        state.stale_dims[i] = true;
        touched.statistics[i] = true;
        partial = Some((i, tilde));
    }
    if t.is_multiple_of(options.preconditioning_compute_steps) {
        // Every block's roots of every stale dim (the reference refreshes only the first block's).
        let stale = std::mem::replace(&mut state.stale_dims, vec![false; layout.rank()]);
        refresh_roots(&mut state.groups, |j| stale[j], RootSpec::positive(2), options);
        touched.roots = stale;
    }
    let preconditioned = t >= options.start_preconditioning_step;
    let out: Vec<_> = match (partial, preconditioned) {
        (None, false) => return grad.clone(),
        (Some((_, tilde)), false) => tilde,
        (Some((i, tilde)), true) => tilde
            .into_iter()
            .zip(&state.groups)
            .zip(&layout.regions)
            .map(|((gt, group), region)| mode_product(gt, group.roots[i].clone(), &region.block_dims, i))
            .collect(),
        (None, true) => blocks
            .into_iter()
            .zip(&state.groups)
            .zip(&layout.regions)
            .map(|((b, group), region)| apply_factors(b, &group.roots, &region.block_dims, None))
            .collect(),
    };
    layout.assemble(out).reshape(grad.dims())
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
