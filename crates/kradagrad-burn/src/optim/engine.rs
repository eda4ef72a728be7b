//! The step shared by the three optimizers: precondition (per optimizer),
//! then graft, weight decay and momentum (ALGORITHM.md sections 3 to 6), with
//! the guard against non-finite gradients around it all.

use burn::tensor::{backend::Backend, Bool, DType, Tensor};

use std::collections::BTreeMap;

use super::{kradagrad, kradagrad_star, shampoo, FactorGroup, PreconditionerState, StateOrigin};
use crate::config::{NonFiniteGradients, Options};
use crate::guard;
use crate::layout::{
    flatten, mode_gram, mode_product, mode_product_as, reshape, stack, tail_rows, unstack, BlockLayout,
};
use crate::roots::{matrix_roots, RootSpec};
use crate::transforms::{
    accumulate_graft, add_momentum, decay_momentum, first_moment, graft, MomentumForm, WeightDecayStyle,
};

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
    /// Whether the step taken after `step` steps updates the statistics: the
    /// one schedule that phase one follows and that the step reads ahead to
    /// place the guard's probe (KrADagrad counts from 0, the others from 1).
    pub(crate) fn statistics_due(self, step: usize, options: &Options) -> bool {
        let tau = match self {
            Variant::Kradagrad => step,
            _ => step + 1,
        };
        tau.is_multiple_of(options.statistics_compute_steps)
    }

    /// The optimizer's type name, as states record it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Variant::KradagradStar => "KradagradStar",
            Variant::Kradagrad => "Kradagrad",
            Variant::Shampoo => "Shampoo",
        }
    }

    /// What a state written by this optimizer under `options` records of
    /// its origin.
    pub(crate) fn origin(self, options: &Options) -> StateOrigin {
        StateOrigin {
            optimizer: self.name().to_string(),
            block_size: options.block_size,
            merge_dims: options.merge_dims,
        }
    }

    /// Scale of the initial statistic (`scale * I`).
    pub(crate) fn initial_scale(self, options: &Options) -> f64 {
        match self {
            Variant::KradagradStar => 1.0 / options.matrix_eps,
            Variant::Kradagrad => 1.0,
            Variant::Shampoo => options.matrix_eps,
        }
    }
}

/// Which statistics a step wrote, per merged dim (the same dims in every
/// group), so that the non-finite guard masks only those: an untouched
/// statistic is the old tensor itself, and masking it would be a wasted pass
/// over `[blocks, d, d]`. Roots are never masked: they are taken of the
/// statistics the step keeps (see [`keep_statistics_if`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Touched {
    /// `statistics[i]`: the statistics of dim `i` were updated.
    pub statistics: Vec<bool>,
}

impl Touched {
    pub(crate) fn none(rank: usize) -> Self {
        Self {
            statistics: vec![false; rank],
        }
    }
}

/// Mutable access to the factors of one preconditioner: a parameter's own
/// (one [`FactorGroup`] per region of its layout) or, in
/// [`BatchedOptimizer`](super::BatchedOptimizer), the stacked factors of every
/// parameter of one schedule class (one group per distinct block shape).
pub(crate) struct Factors<'a, B: Backend> {
    /// The step counter (see [`PreconditionerState::step`]).
    pub step: &'a mut usize,
    /// One factor group per batch of equally shaped blocks.
    pub groups: &'a mut [FactorGroup<B>],
    /// KrADagrad's stale-dim flags (empty for the other optimizers).
    pub stale_dims: &'a mut Vec<bool>,
}

/// A preconditioner's step runs in three phases, so that a whole-model
/// front end can merge the root computations of all its preconditioners:
/// [`update_statistics`] (the statistics and the step counter), then
/// [`refresh_roots`] with the roots due, then [`precondition`] for the
/// direction. This is what the first phase leaves for the other two.
pub(crate) struct StepPlan<B: Backend> {
    /// The roots due this step, if any.
    pub refresh: Option<RootRefresh>,
    direction: Direction<B>,
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
enum Direction<B: Backend> {
    /// The raw gradient (rank 0, or before `start_preconditioning_step`).
    Gradient,
    /// Every mode of every block multiplied by its root.
    Full,
    /// KrADagrad's statistics step: the blocks with every mode but `dim`
    /// preconditioned (computed with the roots before the refresh), and,
    /// once preconditioning has started, mode `dim` multiplied last.
    Partial {
        dim: usize,
        blocks: Vec<Tensor<B, 2>>,
        finish: bool,
    },
}

/// Phase one of a step (sections 3 to 5): advances the step counter and
/// updates the statistics when due. `blocks[g]` is the `[blocks,
/// block_numel]` batch of `factors.groups[g]`, of block shape
/// `block_dims[g]`; `dims` are the merged dims KrADagrad's schedule reads
/// (every block shares them, or at least their rank and the position of
/// their largest entry).
pub(crate) fn update_statistics<B: Backend>(
    options: &Options,
    variant: Variant,
    dims: &[usize],
    block_dims: &[&[usize]],
    factors: Factors<'_, B>,
    blocks: &[Tensor<B, 2>],
    touched: &mut Touched,
) -> StepPlan<B> {
    match variant {
        Variant::Kradagrad => {
            kradagrad::update_statistics(options, dims, block_dims, factors, blocks, touched)
        }
        _ => kronecker_update(options, variant, dims.len(), block_dims, factors, blocks, touched),
    }
}

/// Phase three of a step: the preconditioned blocks of each group, flattened
/// (`[blocks * block_numel]`, the form both front ends assemble from), or
/// `None` when the direction is the raw gradient.
///
/// `filtered` holds the blocks of the first-moment filtered gradient under
/// [`MomentumForm::FirstMoment`]: every root due is then applied to them
/// (KrADagrad's partially preconditioned blocks belong to the raw gradient
/// its statistics saw, so they are not reused).
pub(crate) fn precondition<B: Backend>(
    plan: StepPlan<B>,
    groups: &[FactorGroup<B>],
    block_dims: &[&[usize]],
    blocks: Vec<Tensor<B, 2>>,
    filtered: Option<Vec<Tensor<B, 2>>>,
) -> Option<Vec<Tensor<B, 1>>> {
    if let Some(filtered) = filtered {
        return match plan.direction {
            Direction::Gradient | Direction::Partial { finish: false, .. } => None,
            Direction::Full | Direction::Partial { finish: true, .. } => Some(
                filtered
                    .into_iter()
                    .zip(groups)
                    .zip(block_dims)
                    .map(|((b, group), bd)| apply_all_factors_flat(b, &group.roots, bd))
                    .collect(),
            ),
        };
    }
    match plan.direction {
        Direction::Gradient => None,
        Direction::Full => Some(
            blocks
                .into_iter()
                .zip(groups)
                .zip(block_dims)
                .map(|((b, group), bd)| apply_all_factors_flat(b, &group.roots, bd))
                .collect(),
        ),
        Direction::Partial {
            blocks: partial,
            finish: false,
            ..
        } => Some(partial.into_iter().map(flatten).collect()),
        Direction::Partial {
            dim,
            blocks: partial,
            finish: true,
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

/// One optimizer step for one parameter.
pub(crate) fn step<B: Backend, const D: usize>(
    options: &Options,
    variant: Variant,
    lr: f64,
    tensor: Tensor<B, D>,
    grad: Tensor<B, D>,
    state: Option<PreconditionerState<B, D>>,
) -> (Tensor<B, D>, Option<PreconditionerState<B, D>>) {
    check_learning_rate(lr);
    let shape = tensor.dims().to_vec();
    check_float_type(tensor.dtype(), &shape);
    let layout = BlockLayout::new(&shape, options.block_size, options.merge_dims);
    if options.non_finite_gradients == NonFiniteGradients::Panic {
        guard::panic_if_set(guard::unusable_gradient(&grad), &shape);
    }
    let stale = variant == Variant::Kradagrad;
    let origin = variant.origin(options);
    let old = match state {
        Some(state) => {
            state.check_fits(&layout, &origin, stale);
            state.in_float_type(tensor.dtype())
        }
        None => PreconditionerState::new(
            &layout,
            origin,
            variant.initial_scale(options),
            stale,
            &tensor.device(),
            tensor.dtype(),
        ),
    };

    // The step's tail runs on the tensors flattened, or on a `[rows, cols]`
    // view for a large parameter (see `finish`); the buffers keep the
    // parameter's shape in the state.
    match tail_rows(&shape) {
        None => step_in(options, variant, lr, tensor, grad, &layout, old, [layout.numel()]),
        Some(rows) => step_in(options, variant, lr, tensor, grad, &layout, old, rows),
    }
}

/// The rest of [`step`], with the step's tail on `tail` (see [`finish`]).
#[allow(clippy::too_many_arguments)] // `step`'s inputs, each used once.
fn step_in<B: Backend, const D: usize, const T: usize>(
    options: &Options,
    variant: Variant,
    lr: f64,
    tensor: Tensor<B, D>,
    grad: Tensor<B, D>,
    layout: &BlockLayout,
    old: PreconditionerState<B, D>,
    tail: [usize; T],
) -> (Tensor<B, D>, Option<PreconditionerState<B, D>>) {
    let mut new = old.clone();
    let mut touched = Touched::none(layout.rank());
    let dims = tensor.dims();
    let grad = reshape(grad, tail);
    // The guard's probe and its comparison first, before the split reads the
    // gradient: issued later, they hang off the split's un-fusable slices and
    // run one operation per kernel (docs/performance.md, "Fewer kernels,
    // round five"). Except when a KrAD update of the statistics is due
    // (KrADagrad*, KrADagrad): the update runs the gradient before the probe
    // would (KrADagrad*'s ends the stream, see `krad_star_step`), so issued
    // after the direction the probe is one kernel, and the threshold's fill
    // that reads it ends the stream before the tail; for Shampoo it cost
    // kernels (round six).
    let skip = options.non_finite_gradients == NonFiniteGradients::Skip;
    let probe_after_statistics =
        variant != Variant::Shampoo && layout.rank() > 0 && variant.statistics_due(new.step, options);
    let probe = |grad: &Tensor<B, T>| guard::probe_is_finite(guard::squared_norm_probe(grad.clone()));
    // The verdict's threshold, from the probe compared earlier or compared now.
    let verdict_of = |kept: Option<Tensor<B, 1, Bool>>| {
        guard::Rollback::unless(kept.unwrap_or_else(|| probe(&grad)), grad.dtype())
    };
    let mut kept = (skip && !probe_after_statistics).then(|| probe(&grad));
    let tensor = reshape(tensor, tail);
    let graft_buffer = new.graft.take().map(|t| reshape(t, tail));
    let momentum_buffer = new.momentum.take().map(|t| reshape(t, tail));
    let step = new.step + 1;
    let first_moment = filters_gradient(options)
        .then(|| first_moment(options.momentum, momentum_buffer.clone(), &grad, step));
    let split = |t: &Tensor<B, T>| match layout.rank() {
        0 => vec![],
        _ => layout.split(flatten(t.clone())),
    };
    let blocks = split(&grad);
    let filtered_blocks = first_moment.as_ref().map(|(_, filtered)| split(filtered));
    let block_dims: Vec<&[usize]> = layout.regions.iter().map(|r| r.block_dims.as_slice()).collect();
    let factors = Factors {
        step: &mut new.step,
        groups: &mut new.groups,
        stale_dims: &mut new.stale_dims,
    };
    let plan = update_statistics(
        options,
        variant,
        &layout.dims,
        &block_dims,
        factors,
        &blocks,
        &mut touched,
    );
    let mut rollback = None;
    if let Some(refresh) = &plan.refresh {
        if skip {
            // The roots are taken of the statistics the step keeps: a skipped
            // step's statistics go back first, so that the roots due (those
            // KrADagrad has pending too) are refreshed from them rather than
            // rolled back with the step and left stale.
            let verdict = verdict_of(kept.take());
            keep_statistics_if(&verdict, &mut new.groups, &old.groups, &touched);
            touched = Touched::none(layout.rank());
            rollback = Some(verdict);
        }
        refresh_roots(vec![(&mut new.groups[..], refresh)], options);
    }
    let direction = precondition(plan, &new.groups, &block_dims, blocks, filtered_blocks)
        .map(|out| layout.assemble(out, tail));
    // Off refresh steps the verdict's threshold is filled after the
    // direction: its masked fill of a fresh constant is where Burn's fusion
    // ends the stream it is exploring, so that the tail starts a stream of
    // its own and fuses (the work before it hangs off the un-fusable
    // reshapes and slices of the split; docs/performance.md, "Fewer kernels,
    // round four").
    if skip && rollback.is_none() {
        rollback = Some(verdict_of(kept));
    }
    let inputs = TailInputs {
        tensor,
        grad,
        direction,
        graft: graft_buffer,
        momentum: momentum_buffer,
        first_moment,
        step,
    };
    let (param, graft, momentum) = finish(options, lr, inputs, rollback.as_ref());
    if let Some(rollback) = &rollback {
        keep_statistics_if(rollback, &mut new.groups, &old.groups, &touched);
    }
    new.graft = graft.map(|t| reshape(t, dims));
    new.momentum = momentum.map(|t| reshape(t, dims));
    (reshape(param, dims), Some(new))
}

/// Panics, naming the dtype and the rule, unless a parameter of shape
/// `shape` has a float type the optimizers run in: f32 or f64.
///
/// The factors span the square of the gradient's scale and its inverse, far
/// beyond a half-precision range: KrADagrad*'s inverse statistic starts at
/// `I / matrix_eps` (1e6 with the default), above f16's largest value
/// (65504), and bf16's 8-bit mantissa cannot hold a Newton root to the
/// accuracy the update needs. Checked before anything is computed, so a
/// half-precision model fails at its first step instead of turning NaN.
pub(crate) fn check_float_type(dtype: DType, shape: &[usize]) {
    if !matches!(dtype, DType::F32 | DType::F64) {
        panic!(
            "kradagrad-burn: the parameter of shape {shape:?} is {dtype:?}; the optimizers run in \
             f32 or f64 only (their factors span the squared gradient scale and its inverse, \
             beyond half precision's range: KrADagrad* starts at 1 / matrix_eps). Keep the \
             parameters in f32, or cast the model to f32 for the optimizer step \
             (docs/algorithm.md, \"Half precision\")."
        );
    }
}

/// Panics unless the learning rate is finite and non-negative.
///
/// A rate of exactly 0 is a valid step, as in Burn's own optimizers (a
/// cosine schedule ends there by default): the statistics, roots, graft and
/// momentum buffers and the step counter advance, and the parameter keeps
/// its value.
pub(crate) fn check_learning_rate(lr: f64) {
    assert!(
        lr.is_finite() && lr >= 0.0,
        "kradagrad-burn: the learning rate must be finite and non-negative, got {lr}"
    );
}

/// Whether the step filters the gradient with Adam's first moment
/// ([`MomentumForm::FirstMoment`] with a non-zero `momentum`).
pub(crate) fn filters_gradient(options: &Options) -> bool {
    options.momentum_form == MomentumForm::FirstMoment && options.momentum > 0.0
}

/// What the step's tail ([`finish`]) works on, all in the tail's shape.
pub(crate) struct TailInputs<B: Backend, const T: usize> {
    /// The parameter.
    pub tensor: Tensor<B, T>,
    /// The raw gradient.
    pub grad: Tensor<B, T>,
    /// The preconditioned direction; `None` where nothing was preconditioned.
    pub direction: Option<Tensor<B, T>>,
    /// The graft accumulator before the step.
    pub graft: Option<Tensor<B, T>>,
    /// The momentum buffer before the step.
    pub momentum: Option<Tensor<B, T>>,
    /// Under [`filters_gradient`]: the momentum buffer after the step and the
    /// bias-corrected first moment that stands in for the gradient.
    pub first_moment: Option<(Tensor<B, T>, Tensor<B, T>)>,
    /// This step, counted from 1 (the bias corrections' `t`).
    pub step: usize,
}

impl<B: Backend, const T: usize> TailInputs<B, T> {
    /// The same inputs with every tensor passed through `f` (a reshape).
    fn map<const U: usize>(self, f: impl Fn(Tensor<B, T>) -> Tensor<B, U>) -> TailInputs<B, U> {
        TailInputs {
            tensor: f(self.tensor),
            grad: f(self.grad),
            direction: self.direction.map(&f),
            graft: self.graft.map(&f),
            momentum: self.momentum.map(&f),
            first_moment: self.first_moment.map(|(m, filtered)| (f(m), f(filtered))),
            step: self.step,
        }
    }
}

/// What every optimizer does after preconditioning (sections 3 and 6): graft
/// the direction, add weight decay, apply momentum and take the step. Returns
/// the new parameter and the new graft and momentum buffers; under `rollback`
/// (the non-finite guard) each goes back to its value before the step where
/// the flag is set.
///
/// Both front ends run it on flattened tensors, or, for a tensor of at least
/// [`TAIL_ROWS_MIN_ENTRIES`](crate::layout::TAIL_ROWS_MIN_ENTRIES) entries, on
/// its `[rows, cols]` view ([`tail_rows`]; see [`finish_flat`]). Flat: Burn 0.21's
/// fusion fuses a reduction with the element-wise work around it only along
/// the last axis of tensors of one shape, so at a weight's own shape the
/// whole-tensor sums of the grafting take one reduction per axis, each a
/// kernel of its own, where on flat tensors the tail can be one fused kernel
/// (docs/performance.md, "Fewer kernels, round four"). But that kernel has
/// one reduction row, which a CubeCL backend runs in one workgroup: on an H200
/// it cost about 0.4 ns per entry, so large tensors take the few kernels more
/// of the `[rows, cols]` view ("One workgroup per whole-tensor sum"). Not
/// `[1, numel]` rows: under `CUBECL_AUTOTUNE_LEVEL=minimal` a cached fused
/// reduction of Burn 0.21 on rows panics at launch and leaves the fusion
/// queue undrained (docs/performance.md, "Why the rows version failed under
/// minimal autotune").
pub(crate) fn finish<B: Backend, const T: usize>(
    options: &Options,
    lr: f64,
    inputs: TailInputs<B, T>,
    rollback: Option<&guard::Rollback<B>>,
) -> (Tensor<B, T>, Option<Tensor<B, T>>, Option<Tensor<B, T>>) {
    let TailInputs {
        tensor,
        grad,
        direction,
        graft: graft_buffer,
        momentum: momentum_buffer,
        first_moment,
        step,
    } = inputs;
    let before = rollback.map(|_| (tensor.clone(), graft_buffer.clone(), momentum_buffer.clone()));
    let nesterov = options.nesterov.then_some(options.nesterov_style);
    // The momentum's decay first: issued after the grafting's norms, it would
    // run in a kernel of its own (see `decay_momentum`). A first moment was
    // taken before preconditioning instead.
    let decayed = match first_moment {
        Some(_) => None,
        None => decay_momentum(options.momentum, nesterov, momentum_buffer),
    };
    let graft_norm = accumulate_graft(
        options.grafting,
        graft_buffer,
        &grad,
        options.beta2,
        options.diagonal_eps,
        step,
    );
    // The graft direction is that of the gradient the step preconditioned:
    // the first moment where there is one.
    let (new_first_moment, source) = match first_moment {
        Some((buffer, filtered)) => (Some(buffer), filtered),
        None => (None, grad),
    };
    let mut direction = graft(&graft_norm, direction, &source);
    let graft_buffer = graft_norm.into_accumulator();
    let mut param = tensor.clone();
    if options.weight_decay != 0.0 {
        match options.weight_decay_style {
            WeightDecayStyle::L2AfterPreconditioning => {
                direction = direction + tensor.mul_scalar(options.weight_decay)
            }
            WeightDecayStyle::Decoupled => param = param - tensor.mul_scalar(lr * options.weight_decay),
        }
    }
    let (update, momentum_buffer) = match new_first_moment {
        Some(buffer) => (direction, Some(buffer)),
        None => add_momentum(options.momentum, nesterov, decayed, direction),
    };
    let param = param - update.mul_scalar(lr);
    match rollback.zip(before) {
        Some((rollback, (old_param, old_graft, old_momentum))) => (
            rollback.apply(param, old_param),
            keep_buffer_if(rollback, graft_buffer, &old_graft),
            keep_buffer_if(rollback, momentum_buffer, &old_momentum),
        ),
        None => (param, graft_buffer, momentum_buffer),
    }
}

/// [`finish`] for a parameter of shape `shape` whose tensors come flattened
/// (the batched front end's): on the flat tensors, or on their
/// [`tail_rows`] view and flattened back.
pub(crate) fn finish_flat<B: Backend>(
    options: &Options,
    lr: f64,
    shape: &[usize],
    inputs: TailInputs<B, 1>,
    rollback: Option<&guard::Rollback<B>>,
) -> (Tensor<B, 1>, Option<Tensor<B, 1>>, Option<Tensor<B, 1>>) {
    let Some(rows) = tail_rows(shape) else {
        return finish(options, lr, inputs, rollback);
    };
    let (param, graft, momentum) = finish(options, lr, inputs.map(|t| reshape(t, rows)), rollback);
    (flatten(param), graft.map(flatten), momentum.map(flatten))
}

/// The non-finite guard on factors: every statistic a step wrote (see
/// [`Touched`]) goes back to its old value under `rollback`.
///
/// Run before a root refresh on a step that has one, so that the roots are
/// those of the statistics kept; the roots then need no rollback of their own.
pub(crate) fn keep_statistics_if<B: Backend>(
    rollback: &guard::Rollback<B>,
    new: &mut [FactorGroup<B>],
    old: &[FactorGroup<B>],
    touched: &Touched,
) {
    for (group, old_group) in new.iter_mut().zip(old) {
        for (i, (s, o)) in group.statistics.iter_mut().zip(&old_group.statistics).enumerate() {
            if touched.statistics[i] {
                *s = rollback.apply(s.clone(), o.clone());
            }
        }
    }
}

/// The non-finite guard on a graft or momentum buffer (a buffer created by
/// this step falls back to zeros, what it would have started from).
fn keep_buffer_if<B: Backend, const T: usize>(
    rollback: &guard::Rollback<B>,
    new: Option<Tensor<B, T>>,
    old: &Option<Tensor<B, T>>,
) -> Option<Tensor<B, T>> {
    new.map(|n| {
        let o = old.clone().unwrap_or_else(|| n.zeros_like());
        rollback.apply(n, o)
    })
}

/// Phase two of a step: recomputes the roots each request asks for, in its
/// groups (a preconditioner's own, or a schedule class's stacked ones).
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
    let roots = matrix_roots(inputs, options.root_method, options.newton_schedule());
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

/// Applies every factor to every block: mode `i` multiplied by `roots[i]`
/// (every mode but `skip`).
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
fn apply_all_factors_flat<B: Backend>(
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

/// Phase one for KrADagrad* and Shampoo (sections 3 and 5): every factor of
/// every block is updated from the raw gradient, all roots are due every
/// `preconditioning_compute_steps`, and the direction is the gradient with
/// every mode preconditioned.
fn kronecker_update<B: Backend>(
    options: &Options,
    variant: Variant,
    rank: usize,
    block_dims: &[&[usize]],
    factors: Factors<'_, B>,
    blocks: &[Tensor<B, 2>],
    touched: &mut Touched,
) -> StepPlan<B> {
    let statistics_due = variant.statistics_due(*factors.step, options);
    *factors.step += 1;
    let tau = *factors.step;
    if rank == 0 {
        return StepPlan::gradient();
    }
    if statistics_due {
        for ((group, dims), b) in factors.groups.iter_mut().zip(block_dims).zip(blocks) {
            for (i, statistic) in group.statistics.iter_mut().enumerate() {
                let s = statistic.clone();
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
    let refresh = tau
        .is_multiple_of(options.preconditioning_compute_steps)
        .then(|| RootRefresh {
            dims: vec![true; rank],
            spec: match variant {
                Variant::Shampoo => shampoo::root_spec(rank, options, tau / options.statistics_compute_steps),
                _ => kradagrad_star::root_spec(rank),
            },
        });
    let direction = match tau < options.start_preconditioning_step {
        true => Direction::Gradient,
        false => Direction::Full,
    };
    StepPlan { refresh, direction }
}

impl<B: Backend> StepPlan<B> {
    /// No roots due, and the raw gradient as the direction.
    pub(crate) fn gradient() -> Self {
        Self {
            refresh: None,
            direction: Direction::Gradient,
        }
    }

    /// KrADagrad's plan (section 4): `partial` is `Some((dim, blocks))` on a
    /// statistics step (the blocks with every mode but `dim` preconditioned);
    /// `started` says whether preconditioning has started.
    pub(crate) fn kradagrad(
        refresh: Option<RootRefresh>,
        partial: Option<(usize, Vec<Tensor<B, 2>>)>,
        started: bool,
    ) -> Self {
        let direction = match (partial, started) {
            (None, false) => Direction::Gradient,
            (None, true) => Direction::Full,
            (Some((dim, blocks)), finish) => Direction::Partial { dim, blocks, finish },
        };
        Self { refresh, direction }
    }
}
