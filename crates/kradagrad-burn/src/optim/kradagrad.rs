//! KrADagrad: one factor per step, approximating full-matrix AdaGrad
//! (docs/algorithm.md, "The three optimizers").
//!
//! Per block and dim it keeps `S_i`, starting at `I`. On a statistics step it
//! picks ONE dim `i` by a fixed schedule, preconditions every other mode of the
//! gradient with the current roots, and updates `S_i` with the damped KrAD
//! step. Roots `P = S^(1/2)` of the dims updated since the last refresh are
//! recomputed for every block when due. No grafting by default.

use burn::tensor::{backend::Backend, Tensor};

use super::preconditioner::{apply_factors, ClassFactors, Direction, RootRefresh, StatisticsUpdate};
use crate::config::Options;
use crate::krad::{decay_inverse, krad_mm_update_from_blocks};
use crate::layout::BlockLayout;
use crate::roots::RootSpec;

/// The scale of the initial statistic `I`.
pub(crate) fn initial_scale(_options: &Options) -> f64 {
    1.0
}

/// Whether the step taken after `step` steps updates a statistic: KrADagrad
/// counts its steps from 0.
pub(crate) fn statistics_due(step: usize, options: &Options) -> bool {
    step.is_multiple_of(options.statistics_compute_steps)
}

/// What parameters stacked in one class must share besides their step and
/// pending roots: the merged rank and the position of the first largest
/// merged dim, which fix [`dim_for_step`].
pub(crate) fn schedule_key(layout: &BlockLayout) -> (usize, usize) {
    let largest = match layout.rank() {
        0 => 0,
        _ => largest_dim(&layout.dims),
    };
    (layout.rank(), largest)
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
fn largest_dim(dims: &[usize]) -> usize {
    let max = *dims.iter().max().expect("rank >= 1");
    dims.iter().position(|&d| d == max).expect("max exists")
}

/// The statistics update of one class. `dims` (the merged dims every
/// member shares, as far as [`dim_for_step`] reads them) pick the statistic
/// updated this step; the roots due are those of the dims updated since
/// their last refresh.
pub(crate) fn update_statistics<B: Backend>(
    options: &Options,
    dims: &[usize],
    block_dims: &[&[usize]],
    factors: ClassFactors<'_, B>,
    blocks: &[Tensor<B, 2>],
) -> StatisticsUpdate<B> {
    let t = *factors.step;
    *factors.step += 1;
    let rank = dims.len();
    if rank == 0 {
        return StatisticsUpdate::gradient(rank);
    }
    let groups = factors.groups;
    let mut written = vec![false; rank];
    // On a statistics step: the dim, and the gradient with every other mode preconditioned.
    let mut partial: Option<(usize, Vec<Tensor<B, 2>>)> = None;
    if statistics_due(t, options) {
        let i = dim_for_step(t, dims);
        let tilde: Vec<_> = blocks
            .iter()
            .zip(groups.iter())
            .zip(block_dims)
            .map(|((b, group), bd)| apply_factors(b.clone(), &group.roots, bd, Some(i)))
            .collect();
        for ((group, bd), gt) in groups.iter_mut().zip(block_dims).zip(&tilde) {
            let s = decay_inverse(group.statistics[i].clone(), options.beta_2);
            group.statistics[i] = krad_mm_update_from_blocks(s, gt.clone(), bd, i, options.matrix_eps);
        }
        factors.stale_dims[i] = true;
        written[i] = true;
        partial = Some((i, tilde));
    }
    // Every block's roots of every stale dim (the reference refreshes only the first block's).
    let refresh = t.is_multiple_of(options.preconditioning_compute_steps).then(|| {
        let stale = std::mem::replace(factors.stale_dims, vec![false; rank]);
        RootRefresh {
            dims: stale,
            spec: RootSpec::positive(2),
        }
    });
    let started = t >= options.start_preconditioning_step;
    let direction = match partial {
        None if started => Direction::EveryMode,
        None => Direction::Gradient,
        Some((dim, blocks)) => Direction::AllButOne { dim, blocks, started },
    };
    StatisticsUpdate {
        written,
        refresh,
        direction,
    }
}

#[cfg(test)]
mod tests {
    use super::dim_for_step;

    #[test]
    fn schedule_round_robin_then_squares() {
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
