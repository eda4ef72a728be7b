//! The Kronecker-factored preconditioner the three algorithms share: what an
//! algorithm's statistics update leaves for the rest of the step (the roots
//! due and how to form the direction), the root refresh, and the
//! preconditioned direction (docs/algorithm.md, "The three optimizers").

use std::collections::BTreeMap;

use burn::tensor::{backend::Backend, Tensor};

use super::FactorGroup;
use crate::config::Options;
use crate::layout::{flatten, mode_product, mode_product_as, stack, unstack};
use crate::roots::{matrix_roots, RootSpec};
use crate::sharing::shared_matrix_roots;

/// Mutable access to the factors of one schedule class: the stacked factors
/// of every parameter in it (one group per distinct block shape) and the
/// class's step counter and pending roots.
pub(crate) struct ClassFactors<'a, B: Backend> {
    /// The step counter (see [`PreconditionerState::step`](super::PreconditionerState::step)).
    pub step: &'a mut usize,
    /// One factor group per block shape.
    pub groups: &'a mut [FactorGroup<B>],
    /// KrADagrad's dims updated since their roots were last computed (empty
    /// for the other optimizers).
    pub stale_dims: &'a mut Vec<bool>,
}

/// What an algorithm's statistics update leaves for the rest of the step:
/// which statistics it wrote (for the non-finite guard), the roots due, and
/// how the direction is formed once they are refreshed.
pub(crate) struct StatisticsUpdate<B: Backend> {
    /// `written[i]`: the statistics of dim `i` were updated (every group
    /// shares the dims). An untouched statistic is the old tensor itself, and
    /// the guard skips it.
    pub written: Vec<bool>,
    /// The roots due this step, if any.
    pub refresh: Option<RootRefresh>,
    /// How the step forms its direction.
    pub direction: Direction<B>,
}

/// The roots a step recomputes: those of the selected dims, in every group.
#[derive(Debug, Clone)]
pub(crate) struct RootRefresh {
    /// `dims[i]`: the roots of dim `i` are due.
    pub dims: Vec<bool>,
    /// The root of the statistics that gives them.
    pub spec: RootSpec,
}

/// How a step forms its direction from the blocks and the (refreshed) roots.
pub(crate) enum Direction<B: Backend> {
    /// The raw gradient (before `start_preconditioning_step`).
    Gradient,
    /// Every mode of every block multiplied by its root.
    EveryMode,
    /// KrADagrad's statistics step: the blocks with every mode but `dim`
    /// preconditioned (by the roots before the refresh), and, once
    /// preconditioning has started (`started`), mode `dim` multiplied last.
    AllButOne {
        dim: usize,
        blocks: Vec<Tensor<B, 2>>,
        started: bool,
    },
}

impl<B: Backend> StatisticsUpdate<B> {
    /// Nothing written, no roots due, the raw gradient as the direction.
    pub(crate) fn gradient(rank: usize) -> Self {
        Self {
            written: vec![false; rank],
            refresh: None,
            direction: Direction::Gradient,
        }
    }
}

/// The update of one statistic of a batch of blocks: `(statistic, blocks,
/// block_dims, dim, options)` to the new statistic.
pub(crate) type StatisticUpdate<B> =
    fn(Tensor<B, 3>, &Tensor<B, 2>, &[usize], usize, &Options) -> Tensor<B, 3>;

/// The statistics update of the Kronecker-shaped optimizers (KrADagrad* and
/// Shampoo): advances the step counter; on a statistics step (see
/// [`kronecker_statistics_due`]) every statistic of every group is replaced by
/// `update(statistic, blocks, block_dims, dim, options)`; every root is due
/// each `preconditioning_compute_steps`, as `root_spec(rank, tau, options)`
/// of the statistics (`tau` the step counter after the increment); the
/// direction preconditions every mode from `start_preconditioning_step` on.
pub(crate) fn update_every_dim<B: Backend>(
    options: &Options,
    rank: usize,
    block_dims: &[&[usize]],
    factors: ClassFactors<'_, B>,
    blocks: &[Tensor<B, 2>],
    update: StatisticUpdate<B>,
    root_spec: fn(usize, usize, &Options) -> RootSpec,
) -> StatisticsUpdate<B> {
    let statistics_due = kronecker_statistics_due(*factors.step, options);
    *factors.step += 1;
    let tau = *factors.step;
    let mut written = vec![false; rank];
    if statistics_due {
        for ((group, dims), b) in factors.groups.iter_mut().zip(block_dims).zip(blocks) {
            for (i, statistic) in group.statistics.iter_mut().enumerate() {
                *statistic = update(statistic.clone(), b, dims, i, options);
            }
        }
        written.fill(true);
    }
    let refresh = tau
        .is_multiple_of(options.preconditioning_compute_steps)
        .then(|| RootRefresh {
            dims: vec![true; rank],
            spec: root_spec(rank, tau, options),
        });
    let direction = match tau < options.start_preconditioning_step {
        true => Direction::Gradient,
        false => Direction::EveryMode,
    };
    StatisticsUpdate {
        written,
        refresh,
        direction,
    }
}

/// Whether the Kronecker-shaped optimizers update their statistics at the
/// step taken after `step` steps: they count steps from 1.
pub(crate) fn kronecker_statistics_due(step: usize, options: &Options) -> bool {
    (step + 1).is_multiple_of(options.statistics_compute_steps)
}

/// Recomputes the roots each request asks for, in its groups (one request
/// per schedule class with roots due).
///
/// The statistics of one request that share a size are stacked along the
/// batch axis, and [`matrix_roots`] merges the Newton stages that stacks of
/// one size share across requests (every matrix still converges and freezes
/// on its own).
pub(crate) fn refresh_roots<B: Backend>(
    mut requests: Vec<(&mut [FactorGroup<B>], &RootRefresh)>,
    options: &Options,
) {
    let mut inputs = vec![];
    // Per input: its request and the (group, dim) of each stacked statistic.
    let mut owners: Vec<(usize, Vec<(usize, usize)>)> = vec![];
    for (r, (groups, refresh)) in requests.iter().enumerate() {
        let mut by_size: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
        for (g, group) in groups.iter().enumerate() {
            for (i, statistic) in group.statistics.iter().enumerate() {
                if refresh.dims[i] {
                    by_size.entry(statistic.dims()[1]).or_default().push((g, i));
                }
            }
        }
        for members in by_size.into_values() {
            let stacked = stack(
                members
                    .iter()
                    .map(|&(g, i)| groups[g].statistics[i].clone())
                    .collect(),
            );
            inputs.push((stacked, refresh.spec));
            owners.push((r, members));
        }
    }
    let roots = match &options.shared_roots {
        Some(shared) => shared_matrix_roots(inputs, options.root_method, options.newton, shared),
        None => matrix_roots(inputs, options.root_method, options.newton),
    };
    for ((r, members), roots) in owners.into_iter().zip(roots) {
        let groups = &mut *requests[r].0;
        let counts: Vec<_> = members
            .iter()
            .map(|&(g, i)| groups[g].statistics[i].dims()[0])
            .collect();
        for ((g, i), root) in members.into_iter().zip(unstack(roots, &counts)) {
            groups[g].roots[i] = root;
        }
    }
}

/// The preconditioned blocks of each group, flattened (`[blocks *
/// block_numel]`), or `None` when the direction is the raw gradient.
///
/// `filtered` holds the blocks of the first-moment filtered gradient under
/// [`MomentumForm::FirstMoment`](crate::MomentumForm::FirstMoment): every
/// root due is then applied to them (KrADagrad's partially preconditioned
/// blocks belong to the raw gradient its statistics saw, so they are not
/// reused).
pub(crate) fn precondition<B: Backend>(
    direction: Direction<B>,
    groups: &[FactorGroup<B>],
    block_dims: &[&[usize]],
    blocks: Vec<Tensor<B, 2>>,
    filtered: Option<Vec<Tensor<B, 2>>>,
) -> Option<Vec<Tensor<B, 1>>> {
    let every_mode = |blocks: Vec<Tensor<B, 2>>| -> Vec<Tensor<B, 1>> {
        blocks
            .into_iter()
            .zip(groups)
            .zip(block_dims)
            .map(|((b, group), bd)| apply_every_factor_flat(b, &group.roots, bd))
            .collect()
    };
    if let Some(filtered) = filtered {
        return match direction {
            Direction::Gradient | Direction::AllButOne { started: false, .. } => None,
            Direction::EveryMode | Direction::AllButOne { started: true, .. } => Some(every_mode(filtered)),
        };
    }
    match direction {
        Direction::Gradient => None,
        Direction::EveryMode => Some(every_mode(blocks)),
        Direction::AllButOne {
            blocks: partial,
            started: false,
            ..
        } => Some(partial.into_iter().map(flatten).collect()),
        Direction::AllButOne {
            dim,
            blocks: partial,
            started: true,
        } => Some(
            partial
                .into_iter()
                .zip(groups)
                .zip(block_dims)
                .map(|((b, group), bd)| {
                    let numel = b.shape().num_elements();
                    mode_product_as(b, group.roots[dim].clone(), bd, dim, [numel])
                })
                .collect(),
        ),
    }
}

/// Applies the factors to every block: mode `i` multiplied by `roots[i]`,
/// every mode but `skip`.
pub(crate) fn apply_factors<B: Backend>(
    blocks: Tensor<B, 2>,
    roots: &[Tensor<B, 3>],
    block_dims: &[usize],
    skip: Option<usize>,
) -> Tensor<B, 2> {
    roots
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != skip)
        .fold(blocks, |b, (i, p)| mode_product(b, p.clone(), block_dims, i))
}

/// [`apply_factors`] on every mode, the result flattened
/// (`[blocks * block_numel]`).
fn apply_every_factor_flat<B: Backend>(
    blocks: Tensor<B, 2>,
    roots: &[Tensor<B, 3>],
    block_dims: &[usize],
) -> Tensor<B, 1> {
    if let ([d0, d1], [left, right]) = (block_dims, roots) {
        // Matrix blocks: `L X R` on `[blocks, d0, d1]`, the same two products
        // as the fold, flattened straight from the product: the fold's
        // reshapes of the intermediate to `[blocks, numel]` and back, and of
        // the result to `[blocks, numel]`, are each a copy on burn-ndarray
        // (see `layout::reshape`).
        let n = blocks.dims()[0];
        return left
            .clone()
            .matmul(blocks.reshape([n, *d0, *d1]))
            .matmul(right.clone())
            .reshape([n * d0 * d1]);
    }
    flatten(apply_factors(blocks, roots, block_dims, None))
}
