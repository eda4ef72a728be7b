//! The one optimizer step, on a set of parameters whose factors are stacked
//! by block shape (see [`Stacking`]). Both front ends run it: the
//! per-parameter optimizer on a set of one, the whole-model one on every
//! parameter with a gradient.
//!
//! A step reads top to bottom in stages: checks, the first moment, the
//! blocks, each class's statistics update, the roots due, the directions,
//! the non-finite guard's verdict, and each parameter's update.

use burn::tensor::{backend::Backend, Bool, DType, Tensor};

use super::algorithm::Algorithm;
use super::preconditioner::{precondition, refresh_roots, ClassFactors, StatisticsUpdate};
use super::stacking::Stacking;
use super::{ClassState, FactorGroup, PreconditionerState};
use crate::config::{NonFiniteGradients, Options};
use crate::guard::{self, Rollback};
use crate::layout::{flatten, reshape, rows_view, stack, unstack_flat, BlockLayout};
use crate::transforms::{first_moment, update_parameter, UpdateInputs, UpdateOutputs};

/// An optimizer's settings and algorithm: what a step needs besides the
/// tensors.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Engine {
    /// The settings, from the config.
    pub options: Options,
    /// Which optimizer runs.
    pub algorithm: Algorithm,
}

/// One parameter of the set a step updates, its tensors in the view its
/// update runs on (flat, or the [`rows_view`] view).
pub(crate) struct ParamInput<B: Backend, const T: usize> {
    /// The parameter's own shape.
    pub shape: Vec<usize>,
    /// The parameter.
    pub param: Tensor<B, T>,
    /// Its gradient.
    pub grad: Tensor<B, T>,
}

/// What a step reads and writes besides the parameters: the factors of each
/// class of the set's [`Stacking`] and each parameter's buffers, in the
/// parameters' view.
pub(crate) struct SetState<B: Backend, const T: usize> {
    /// The stacked factors, one entry per class.
    pub classes: Vec<ClassState<B>>,
    /// Per parameter: the graft accumulator, if the grafting has one.
    pub graft: Vec<Option<Tensor<B, T>>>,
    /// Per parameter: the momentum buffer, if momentum is on.
    pub momentum: Vec<Option<Tensor<B, T>>>,
    /// Steps the set has taken: the step counter of its parameters of
    /// merged rank 0, which belong to no class.
    pub steps: usize,
}

/// One class's statistics update, with the blocks it read.
struct ClassUpdate<B: Backend> {
    update: StatisticsUpdate<B>,
    blocks: Vec<Tensor<B, 2>>,
    filtered: Option<Vec<Tensor<B, 2>>>,
}

impl Engine {
    /// A fresh state of a parameter laid out as `layout`: statistics
    /// `scale * I`, roots `I`, no buffers, in float type `dtype`.
    pub(crate) fn fresh_state<B: Backend, const D: usize>(
        &self,
        layout: &BlockLayout,
        device: &B::Device,
        dtype: DType,
    ) -> PreconditionerState<B, D> {
        PreconditionerState::new(
            layout,
            self.algorithm.origin(&self.options),
            self.algorithm.initial_scale(&self.options),
            self.algorithm.tracks_stale_dims(),
            device,
            dtype,
        )
    }

    /// One step of every parameter in `params`, stacked as `stacking`:
    /// updates `state` and returns the new parameters, in `params`' order.
    pub(crate) fn step<B: Backend, const T: usize>(
        &self,
        lr: f64,
        params: &[ParamInput<B, T>],
        stacking: &Stacking,
        state: &mut SetState<B, T>,
    ) -> Vec<Tensor<B, T>> {
        let options = &self.options;
        check_learning_rate(lr);
        for p in params {
            check_float_type(p.param.dtype(), &p.shape);
        }
        if options.non_finite_gradients == NonFiniteGradients::Panic {
            for p in params {
                guard::panic_if_set(guard::unusable_gradient(&p.grad), &p.shape);
            }
        }
        // The factors before the step, for the guard's rollback of the statistics.
        let old = state.classes.clone();
        let steps = parameter_steps(state, stacking);
        state.steps += 1;
        let mut guard = self.guard(params, stacking, state);

        // The first moment, where it stands in for the gradient.
        let first_moments: Vec<_> = params
            .iter()
            .zip(&steps)
            .enumerate()
            .map(|(p, (param, &step))| {
                options.filters_gradient().then(|| {
                    first_moment(
                        options.momentum_factor(),
                        state.momentum[p].clone(),
                        &param.grad,
                        step,
                    )
                })
            })
            .collect();

        // Every parameter's blocks, region by region (of the filtered gradient too).
        let split = |t: &Tensor<B, T>, layout: &BlockLayout| -> Vec<Option<Tensor<B, 2>>> {
            match layout.rank() {
                0 => vec![],
                _ => layout.split(flatten(t.clone())).into_iter().map(Some).collect(),
            }
        };
        let mut blocks: Vec<_> = params
            .iter()
            .zip(&stacking.layouts)
            .map(|(p, layout)| split(&p.grad, layout))
            .collect();
        let mut filtered_blocks: Option<Vec<_>> = options.filters_gradient().then(|| {
            first_moments
                .iter()
                .zip(&stacking.layouts)
                .map(|(m, layout)| split(&m.as_ref().expect("a first moment").1, layout))
                .collect()
        });

        // Each class's statistics update, on its blocks stacked by shape.
        let mut updates = vec![];
        for (c, (class, class_state)) in stacking.classes.iter().zip(state.classes.iter_mut()).enumerate() {
            let stacked = stack_class(stacking, c, &mut blocks);
            let filtered = filtered_blocks.as_mut().map(|b| stack_class(stacking, c, b));
            guard.probe_batches(&stacked);
            let factors = ClassFactors {
                step: &mut class_state.step,
                groups: &mut class_state.groups,
                stale_dims: &mut class_state.stale_dims,
            };
            let update = self.algorithm.update_statistics(
                options,
                &class.dims,
                &class.block_dims(),
                factors,
                &stacked,
            );
            updates.push(ClassUpdate {
                update,
                blocks: stacked,
                filtered,
            });
        }

        // The roots due, of the statistics the step keeps: under a skipped
        // step the statistics go back first, so that the roots due (those
        // KrADagrad has pending too) are refreshed from them rather than
        // rolled back with the step and left stale.
        if updates.iter().any(|u| u.update.refresh.is_some()) {
            if let Some(verdict) = guard.verdict(params) {
                keep_statistics_if(verdict, state, &old, &mut updates);
            }
            let requests = state
                .classes
                .iter_mut()
                .zip(&updates)
                .filter_map(|(class, u)| u.update.refresh.as_ref().map(|r| (&mut class.groups[..], r)))
                .collect();
            refresh_roots(requests, options);
        }

        // The directions, back in each parameter's view (`None`: the gradient).
        let mut written = vec![];
        let mut regions: Vec<Vec<Option<Tensor<B, 1>>>> = stacking
            .layouts
            .iter()
            .map(|l| vec![None; l.regions.len()])
            .collect();
        for ((class, class_state), u) in stacking.classes.iter().zip(&state.classes).zip(updates) {
            written.push(u.update.written);
            let preconditioned = precondition(
                u.update.direction,
                &class_state.groups,
                &class.block_dims(),
                u.blocks,
                u.filtered,
            );
            for (group, flat) in class.groups.iter().zip(preconditioned.into_iter().flatten()) {
                let width = group.block_dims.iter().product();
                for (m, part) in group
                    .members
                    .iter()
                    .zip(unstack_flat(flat, width, &group.counts()))
                {
                    regions[m.param][m.region] = Some(part);
                }
            }
        }
        let directions: Vec<Option<Tensor<B, T>>> = params
            .iter()
            .zip(&stacking.layouts)
            .zip(regions)
            .map(|((p, layout), regions)| {
                let regions: Option<Vec<_>> = regions.into_iter().collect();
                regions
                    .filter(|r| !r.is_empty())
                    .map(|r| layout.assemble(r, p.param.dims()))
            })
            .collect();

        // The verdict, known before the updates so that each parameter's
        // rollback fuses with the update that produced it; its threshold is
        // filled after the directions, where Burn's fusion ends the stream it
        // is exploring, so that the updates start a stream of their own.
        let verdict = guard.verdict(params).cloned();

        // Each parameter's update: graft, weight decay, momentum, learning rate.
        let tails = params.iter().zip(directions).zip(first_moments).zip(steps);
        let mut updated = Vec::with_capacity(params.len());
        for (p, (((param, direction), first_moment), step)) in tails.enumerate() {
            let inputs = UpdateInputs {
                param: param.param.clone(),
                grad: param.grad.clone(),
                direction,
                graft: state.graft[p].take(),
                momentum: state.momentum[p].take(),
                first_moment,
                step,
            };
            let out = self.update_in_tail_view(lr, &param.shape, inputs, verdict.as_ref());
            state.graft[p] = out.graft;
            state.momentum[p] = out.momentum;
            updated.push(out.param);
        }
        if let Some(verdict) = &verdict {
            keep_statistics_written(verdict, state, &old, &written);
        }
        updated
    }

    /// The non-finite guard of a step over `params` (see [`StepGuard`]).
    fn guard<B: Backend, const T: usize>(
        &self,
        params: &[ParamInput<B, T>],
        stacking: &Stacking,
        state: &SetState<B, T>,
    ) -> StepGuard<B> {
        if self.options.non_finite_gradients != NonFiniteGradients::Skip {
            return StepGuard::off();
        }
        let dtype = params.first().map_or(DType::F32, |p| p.grad.dtype());
        // One whole-tensor reduction per probe: per parameter or per stacked
        // batch, whichever takes fewer.
        if params.len() <= stacking.num_batches() {
            // A KrAD statistics update reads the whole gradient first; the
            // probe then comes after the direction, where it is one kernel.
            let late = state
                .classes
                .iter()
                .any(|class| self.algorithm.krad_update_due(class.step, &self.options));
            return StepGuard::per_parameter(params, late, dtype);
        }
        let rank_0 = params
            .iter()
            .zip(&stacking.layouts)
            .filter(|(_, layout)| layout.rank() == 0)
            .map(|(p, _)| guard::squared_norm_probe(p.grad.clone()))
            .collect();
        StepGuard::per_batch(rank_0, dtype)
    }

    /// [`update_parameter`] under the guard's `verdict`, on the
    /// [`rows_view`] view of a large parameter given flat.
    ///
    /// Burn 0.21's fusion fuses a reduction with the element-wise work
    /// around it only along the last axis of tensors of one shape, so on flat
    /// tensors the update with its whole-tensor sums can be one fused kernel;
    /// but that kernel's single reduction row runs in one GPU workgroup, so a
    /// large parameter takes the `[rows, cols]` view instead, for a few
    /// kernels more.
    fn update_in_tail_view<B: Backend, const T: usize>(
        &self,
        lr: f64,
        shape: &[usize],
        inputs: UpdateInputs<B, T>,
        verdict: Option<&Rollback<B>>,
    ) -> UpdateOutputs<B, T> {
        let dims = inputs.param.dims();
        match rows_view(shape) {
            Some(rows) if dims[..] != rows[..] => self
                .guarded_update(lr, inputs.map(|t| reshape(t, rows)), verdict)
                .map(|t| reshape(t, dims)),
            _ => self.guarded_update(lr, inputs, verdict),
        }
    }

    /// [`update_parameter`], with every tensor it writes back to its value
    /// before the step where `verdict` rolls the step back (a buffer this
    /// step created falls back to zeros, what it would have started from).
    fn guarded_update<B: Backend, const T: usize>(
        &self,
        lr: f64,
        inputs: UpdateInputs<B, T>,
        verdict: Option<&Rollback<B>>,
    ) -> UpdateOutputs<B, T> {
        let before = verdict.map(|_| {
            (
                inputs.param.clone(),
                inputs.graft.clone(),
                inputs.momentum.clone(),
            )
        });
        let out = update_parameter(&self.options, lr, inputs);
        let Some((verdict, (param, graft, momentum))) = verdict.zip(before) else {
            return out;
        };
        let keep = |new: Option<Tensor<B, T>>, old: Option<Tensor<B, T>>| {
            new.map(|n| {
                let o = old.unwrap_or_else(|| n.zeros_like());
                verdict.apply(n, o)
            })
        };
        UpdateOutputs {
            param: verdict.apply(out.param, param),
            graft: keep(out.graft, graft),
            momentum: keep(out.momentum, momentum),
        }
    }
}

/// The blocks of class `c` of `stacking`, one stacked batch per block shape,
/// taken out of `blocks` (per parameter, per region).
fn stack_class<B: Backend>(
    stacking: &Stacking,
    c: usize,
    blocks: &mut [Vec<Option<Tensor<B, 2>>>],
) -> Vec<Tensor<B, 2>> {
    stacking.classes[c]
        .groups
        .iter()
        .map(|group| {
            stack(
                group
                    .members
                    .iter()
                    .map(|m| {
                        blocks[m.param][m.region]
                            .take()
                            .expect("each region stacked once")
                    })
                    .collect(),
            )
        })
        .collect()
}

/// Per parameter of `stacking`, the step about to be taken, counted from 1:
/// its class's, or the set's for a parameter of merged rank 0.
fn parameter_steps<B: Backend, const T: usize>(state: &SetState<B, T>, stacking: &Stacking) -> Vec<usize> {
    let mut steps = vec![state.steps + 1; stacking.layouts.len()];
    for (class, class_state) in stacking.classes.iter().zip(&state.classes) {
        for member in class.groups.iter().flat_map(|g| &g.members) {
            steps[member.param] = class_state.step + 1;
        }
    }
    steps
}

/// The guard on the statistics of a step with roots due: every statistic
/// the step wrote goes back under `verdict`, before the roots are taken of
/// them (the roots then need no rollback of their own); what it rolled back
/// is no longer written.
fn keep_statistics_if<B: Backend, const T: usize>(
    verdict: &Rollback<B>,
    state: &mut SetState<B, T>,
    old: &[ClassState<B>],
    updates: &mut [ClassUpdate<B>],
) {
    let written: Vec<_> = updates.iter().map(|u| u.update.written.clone()).collect();
    keep_statistics_written(verdict, state, old, &written);
    for u in updates {
        u.update.written.fill(false);
    }
}

/// Every statistic `written` marks (per class, per dim) goes back to its old
/// value under `verdict`. An unwritten statistic is the old tensor itself:
/// masking it would be a wasted pass over `[blocks, d, d]`.
fn keep_statistics_written<B: Backend, const T: usize>(
    verdict: &Rollback<B>,
    state: &mut SetState<B, T>,
    old: &[ClassState<B>],
    written: &[Vec<bool>],
) {
    for ((class, old_class), written) in state.classes.iter_mut().zip(old).zip(written) {
        for (group, old_group) in class.groups.iter_mut().zip(&old_class.groups) {
            keep_group_statistics(verdict, group, old_group, written);
        }
    }
}

fn keep_group_statistics<B: Backend>(
    verdict: &Rollback<B>,
    group: &mut FactorGroup<B>,
    old: &FactorGroup<B>,
    written: &[bool],
) {
    for ((s, o), &w) in group.statistics.iter_mut().zip(&old.statistics).zip(written) {
        if w {
            *s = verdict.apply(s.clone(), o.clone());
        }
    }
}

/// The non-finite guard of one step under [`NonFiniteGradients::Skip`]: the
/// squared-norm probes of the gradients (see
/// [`squared_norm_probe`](guard::squared_norm_probe)), summed into one
/// verdict for the whole set (its parameters may share factor tensors).
struct StepGuard<B: Backend> {
    probes: Probes<B>,
    dtype: DType,
    verdict: Option<Rollback<B>>,
}

/// Where a step's probes stand.
enum Probes<B: Backend> {
    /// No guard (`NonFiniteGradients::Panic` checked the gradients already).
    Off,
    /// The whole gradients, probed at the verdict.
    WholeGradientsLater,
    /// The whole gradients, probed and compared before anything read them.
    Compared(Tensor<B, 1, Bool>),
    /// Per stacked batch (and per unstacked gradient), summed at the verdict.
    Batches(Vec<Tensor<B, 1>>),
}

impl<B: Backend> StepGuard<B> {
    fn off() -> Self {
        Self {
            probes: Probes::Off,
            dtype: DType::F32,
            verdict: None,
        }
    }

    /// Probes the whole gradients: now, so that the probes and their
    /// comparison are issued before the blocks are cut (issued after, they
    /// hang off the cuts' slices, which Burn's fusion cannot fuse, and run
    /// one operation per kernel), or at the verdict when `late`.
    fn per_parameter<const T: usize>(params: &[ParamInput<B, T>], late: bool, dtype: DType) -> Self {
        let probes = match late {
            true => Probes::WholeGradientsLater,
            false => Probes::Compared(compare_probes(whole_gradient_probes(params))),
        };
        Self {
            probes,
            dtype,
            verdict: None,
        }
    }

    /// Probes per stacked batch, starting from `unstacked` (the probes of
    /// gradients in no batch).
    fn per_batch(unstacked: Vec<Tensor<B, 1>>, dtype: DType) -> Self {
        Self {
            probes: Probes::Batches(unstacked),
            dtype,
            verdict: None,
        }
    }

    /// Adds the probes of a class's stacked batches, when probing per batch.
    fn probe_batches(&mut self, batches: &[Tensor<B, 2>]) {
        if let Probes::Batches(probes) = &mut self.probes {
            probes.extend(batches.iter().map(|b| guard::squared_norm_probe(b.clone())));
        }
    }

    /// The verdict of the step, formed at the first call (`None` without a
    /// guard).
    fn verdict<const T: usize>(&mut self, params: &[ParamInput<B, T>]) -> Option<&Rollback<B>> {
        if self.verdict.is_none() {
            let kept = match std::mem::replace(&mut self.probes, Probes::Off) {
                Probes::Off => return None,
                Probes::WholeGradientsLater => compare_probes(whole_gradient_probes(params)),
                Probes::Compared(kept) => kept,
                Probes::Batches(probes) => compare_probes(probes),
            };
            self.verdict = Some(Rollback::unless(kept, self.dtype));
        }
        self.verdict.as_ref()
    }
}

fn whole_gradient_probes<B: Backend, const T: usize>(params: &[ParamInput<B, T>]) -> Vec<Tensor<B, 1>> {
    params
        .iter()
        .map(|p| guard::squared_norm_probe(p.grad.clone()))
        .collect()
}

/// Whether the probes, summed, are finite.
fn compare_probes<B: Backend>(probes: Vec<Tensor<B, 1>>) -> Tensor<B, 1, Bool> {
    let mut probes = probes.into_iter();
    let first = probes.next().expect("at least one probe");
    guard::probe_is_finite(probes.fold(first, |sum, p| sum + p))
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
