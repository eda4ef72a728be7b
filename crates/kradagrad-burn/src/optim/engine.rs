//! The step shared by the three optimizers: precondition (per optimizer),
//! then graft, weight decay and momentum (ALGORITHM.md sections 3 to 6), with
//! the non-finite gradient guard around it all.

use burn::tensor::{backend::Backend, Tensor};

use std::collections::BTreeMap;

use super::{kradagrad, kradagrad_star, shampoo, FactorGroup, PreconditionerState};
use crate::config::{NonFiniteGradients, Options};
use crate::guard;
use crate::layout::{mode_gram, mode_product, BlockLayout};
use crate::roots::{matrix_root, RootSpec};
use crate::transforms::{accumulate_graft, apply_momentum, graft, WeightDecayStyle};

/// Which optimizer a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variant {
    /// Section 3.
    KradagradStar,
    /// Section 4.
    Kradagrad,
    /// Section 5.
    Shampoo,
}

impl Variant {
    /// Scale of the initial statistic (`scale * I`).
    fn initial_scale(self, options: &Options) -> f64 {
        match self {
            Variant::KradagradStar => 1.0 / options.matrix_eps,
            Variant::Kradagrad => 1.0,
            Variant::Shampoo => options.matrix_eps,
        }
    }
}

/// Which factor tensors a step wrote, per merged dim (the same dims in every
/// group), so that the non-finite guard masks only those: an untouched factor
/// is the old tensor itself, and masking it would be a wasted pass over
/// `[blocks, d, d]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Touched {
    /// `statistics[i]`: the statistics of dim `i` were updated.
    pub statistics: Vec<bool>,
    /// `roots[i]`: the roots of dim `i` were recomputed.
    pub roots: Vec<bool>,
}

impl Touched {
    fn none(rank: usize) -> Self {
        Self {
            statistics: vec![false; rank],
            roots: vec![false; rank],
        }
    }
}

/// One optimizer step for one parameter.
pub(crate) fn step<B: Backend, const D: usize>(
    options: &Options,
    variant: Variant,
    lr: f64,
    tensor: Tensor<B, D>,
    grad: Tensor<B, D>,
    state: Option<PreconditionerState<B, D>>,
) -> (Tensor<B, D>, Option<PreconditionerState<B, D>>) {
    assert!(
        lr.is_finite() && lr > 0.0,
        "kradagrad-burn: the learning rate must be positive and finite, got {lr}"
    );
    let shape = tensor.dims().to_vec();
    let layout = BlockLayout::new(&shape, options.block_size, options.merge_dims);
    let non_finite = guard::non_finite(&grad);
    if options.non_finite_gradients == NonFiniteGradients::Panic {
        guard::panic_if_set(non_finite.clone(), &shape);
    }
    let stale = variant == Variant::Kradagrad;
    let old = match state {
        Some(state) => {
            state.check_layout(&layout, stale);
            state
        }
        None => PreconditionerState::new(
            &layout,
            variant.initial_scale(options),
            stale,
            &tensor.device(),
            tensor.dtype(),
        ),
    };

    let mut new = old.clone();
    let mut touched = Touched::none(layout.rank());
    let direction = match variant {
        Variant::Kradagrad => kradagrad::precondition(options, &layout, &mut new, &grad, &mut touched),
        _ => kronecker_precondition(options, variant, &layout, &mut new, &grad, &mut touched),
    };
    new.graft = accumulate_graft(options.grafting, new.graft.take(), &grad, options.beta2);
    let mut direction = graft(
        options.grafting,
        direction,
        &grad,
        new.graft.as_ref(),
        options.diagonal_eps,
    );
    let mut param = tensor.clone();
    if options.weight_decay != 0.0 {
        match options.weight_decay_style {
            WeightDecayStyle::L2AfterPreconditioning => {
                direction = direction + tensor.clone().mul_scalar(options.weight_decay)
            }
            WeightDecayStyle::Decoupled => {
                param = param - tensor.clone().mul_scalar(lr * options.weight_decay)
            }
        }
    }
    let nesterov = options.nesterov.then_some(options.nesterov_style);
    let (update, momentum) = apply_momentum(options.momentum, nesterov, new.momentum.take(), direction);
    new.momentum = momentum;
    let param = param - update.mul_scalar(lr);

    if options.non_finite_gradients == NonFiniteGradients::Skip {
        let keep = |new: Tensor<B, 3>, old: &Tensor<B, 3>| guard::keep_if(&non_finite, new, old.clone());
        let keep_buffer = |new: Option<Tensor<B, D>>, old: &Option<Tensor<B, D>>| {
            new.map(|n| {
                let o = old.clone().unwrap_or_else(|| n.zeros_like());
                guard::keep_if(&non_finite, n, o)
            })
        };
        for (group, old_group) in new.groups.iter_mut().zip(&old.groups) {
            for (i, (s, o)) in group.statistics.iter_mut().zip(&old_group.statistics).enumerate() {
                if touched.statistics[i] {
                    *s = keep(s.clone(), o);
                }
            }
            for (i, (r, o)) in group.roots.iter_mut().zip(&old_group.roots).enumerate() {
                if touched.roots[i] {
                    *r = keep(r.clone(), o);
                }
            }
        }
        new.graft = keep_buffer(new.graft, &old.graft);
        new.momentum = keep_buffer(new.momentum, &old.momentum);
        let param = guard::keep_if(&non_finite, param, tensor);
        return (param, Some(new));
    }
    (param, Some(new))
}

/// Recomputes the roots of the statistics of the selected dims in every
/// group, with one batched root computation per distinct factor size: the
/// statistics of all regions and dims that share a size are stacked along the
/// batch axis (every matrix still converges and freezes on its own).
pub(crate) fn refresh_roots<B: Backend>(
    groups: &mut [FactorGroup<B>],
    selected: impl Fn(usize) -> bool,
    spec: RootSpec,
    options: &Options,
) {
    let mut by_size: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
    for (g, group) in groups.iter().enumerate() {
        for (i, statistic) in group.statistics.iter().enumerate() {
            if selected(i) {
                by_size.entry(statistic.dims()[1]).or_default().push((g, i));
            }
        }
    }
    for members in by_size.into_values() {
        let stacked = Tensor::cat(
            members
                .iter()
                .map(|&(g, i)| groups[g].statistics[i].clone())
                .collect(),
            0,
        );
        let roots = matrix_root(stacked, spec, options.root_method, options.newton_iterations);
        let total = roots.dims()[0];
        let mut offset = 0;
        for (g, i) in members {
            let n = groups[g].statistics[i].dims()[0];
            groups[g].roots[i] = if n == total {
                roots.clone()
            } else {
                roots.clone().narrow(0, offset, n)
            };
            offset += n;
        }
    }
}

/// Applies every factor to every block: mode `i` multiplied by `roots[i]`.
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

/// KrADagrad* and Shampoo (sections 3 and 5): every factor of every block is
/// updated from the raw gradient, roots are refreshed when due, and the
/// direction is the gradient with every mode preconditioned.
fn kronecker_precondition<B: Backend, const D: usize>(
    options: &Options,
    variant: Variant,
    layout: &BlockLayout,
    state: &mut PreconditionerState<B, D>,
    grad: &Tensor<B, D>,
    touched: &mut Touched,
) -> Tensor<B, D> {
    state.step += 1;
    let tau = state.step;
    let k = layout.rank();
    if k == 0 {
        return grad.clone();
    }
    let blocks = layout.split(grad.clone().reshape([layout.numel()]));
    if tau.is_multiple_of(options.statistics_compute_steps) {
        for ((group, region), b) in state.groups.iter_mut().zip(&layout.regions).zip(&blocks) {
            for (i, statistic) in group.statistics.iter_mut().enumerate() {
                let (s, dims) = (statistic.clone(), &region.block_dims);
                *statistic = match variant {
                    Variant::Shampoo => {
                        shampoo::update_statistic(s, mode_gram(b.clone(), dims, i), options.beta2)
                    }
                    _ => kradagrad_star::update_statistic(s, b.clone(), dims, i, options.beta2),
                };
            }
        }
        touched.statistics.fill(true);
    }
    if tau.is_multiple_of(options.preconditioning_compute_steps) {
        let spec = match variant {
            Variant::Shampoo => shampoo::root_spec(k, options),
            _ => kradagrad_star::root_spec(k),
        };
        refresh_roots(&mut state.groups, |_| true, spec, options);
        touched.roots.fill(true);
    }
    if tau < options.start_preconditioning_step {
        return grad.clone();
    }
    let preconditioned = blocks
        .into_iter()
        .zip(&state.groups)
        .zip(&layout.regions)
        .map(|((b, group), region)| apply_factors(b, &group.roots, &region.block_dims, None))
        .collect();
    layout.assemble(preconditioned).reshape(grad.dims())
}
