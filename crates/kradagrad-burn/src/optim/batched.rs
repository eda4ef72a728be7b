//! A whole-model front end: one Burn [`Optimizer`] that batches the factors of
//! equal block shape across *all* parameters of a module.
//!
//! Burn's [`SimpleOptimizer`](burn::optim::SimpleOptimizer) sees one parameter
//! per call, so the per-parameter optimizers batch blocks only within a
//! parameter: an autoencoder with 16 parameters runs 16 sets of statistics
//! updates, factor products and Newton root iterations a step, each a handful
//! of small kernels. [`BatchedOptimizer`] visits the whole module first, stacks
//! the blocks of every parameter that share a block shape (and, for
//! KrADagrad, the one-factor schedule), and runs one batched statistics
//! update, one batched product per factor and one batched root computation per
//! factor size for the model. The arithmetic per block is that of the
//! per-parameter optimizers (ALGORITHM.md sections 3 to 6), so both give the
//! same updates to round-off; grafting, weight decay and momentum stay per
//! parameter. docs/performance.md has the measurements.
//!
//! A parameter without a gradient at a step (a branch not taken, a frozen
//! layer) is left as it is and its state kept, as Burn's `OptimizerAdaptor`
//! does, and one whose gradient first appears later joins with a fresh state:
//! when the set of parameters with a gradient changes, the stacks are
//! rebuilt once for the new set (a parameter that skipped steps is stacked
//! only with parameters at the same step, so that each keeps its own
//! schedule), and stay as they are while the set does not change.
//!
//! Differences from the per-parameter path: the factors live in the
//! optimizer's own stacked layout (its [`BatchedState`] record is not
//! interchangeable with `OptimizerAdaptor`'s); all parameters must live on
//! one device; and under
//! [`NonFiniteGradients::Skip`] a NaN or Inf in any gradient, or a model
//! gradient whose squared norm overflows, skips the whole step for every
//! parameter (as mixed-precision loss scaling does), because
//! the parameters share factor tensors.

use core::marker::PhantomData;
use std::collections::HashMap;

use burn::grad_clipping::GradientClipping;
use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::GradAdaptor;
use burn::optim::{GradientsParams, LearningRate, MultiGradientsParams, Optimizer};
use burn::record::Record;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

use super::engine::{
    check_float_type, check_learning_rate, filters_gradient, finish_flat, keep_statistics_if, precondition,
    refresh_roots, update_statistics, Factors, TailInputs, Touched, Variant,
};
use super::kradagrad::largest_dim;
use super::state::{factors_mismatch, tensor_bytes};
use super::{FactorGroup, PreconditionerState, StateOrigin};
use crate::config::{NonFiniteGradients, Options};
use crate::guard;
use crate::layout::{flatten, reshape, stack, unstack, unstack_flat, BlockLayout};
use crate::transforms::first_moment;

/// The state of a [`BatchedOptimizer`], also its Burn record.
///
/// Factors are stacked across parameters: one [`ClassState`] per schedule
/// class, holding one [`FactorGroup`] per distinct block shape whose batch axis
/// runs over the blocks of every member parameter in visit order.
#[derive(Record, Clone, Debug)]
pub struct BatchedState<B: Backend> {
    /// The preconditioned parameters' ids ([`ParamId::val`]) in visit order.
    pub param_ids: Vec<u64>,
    /// Their shapes, in the same order.
    pub shapes: Vec<Vec<usize>>,
    /// The stacked factors, one entry per schedule class.
    pub classes: Vec<ClassState<B>>,
    /// Per parameter (flattened): the graft accumulator, if the grafting has one.
    pub graft: Vec<Option<Tensor<B, 1>>>,
    /// Per parameter (flattened): the momentum buffer, if momentum is on.
    pub momentum: Vec<Option<Tensor<B, 1>>>,
    /// What the state was written for (`None` in states saved before this
    /// field existed, which are checked by their tensor shapes only).
    pub origin: Option<StateOrigin>,
    /// Per parameter, the index in `classes` of the class its blocks are
    /// stacked in (`None` for a parameter of merged rank 0). Absent in states
    /// saved before parameters could skip steps: their classes follow the
    /// merged rank (and, for KrADagrad, the position of the largest dim).
    pub class_of: Option<Vec<Option<usize>>>,
    /// The parameters that had a gradient at an earlier step but not at the
    /// last one, each with its own state, kept for when its gradient returns
    /// (as Burn's `OptimizerAdaptor` keeps the state of a parameter without a
    /// gradient). `None` in states saved before this field existed.
    pub parked: Option<Vec<ParkedState<B>>>,
    /// Steps the optimizer has taken: the step counter of the parameters of
    /// merged rank 0 (a single entry), which belong to no class. `None` in
    /// states saved before this field existed, which count from the most
    /// steps any class has taken.
    pub steps: Option<usize>,
}

/// A parameter's own state in a [`BatchedState`] while it has no gradient:
/// its factors per region of its layout, step counter, KrADagrad's pending
/// roots and its (flattened) graft and momentum buffers.
#[derive(Record, Clone, Debug)]
pub struct ParkedState<B: Backend> {
    /// The parameter's id ([`ParamId::val`]).
    pub param_id: u64,
    /// The parameter's shape.
    pub shape: Vec<usize>,
    /// Its state, buffers flattened.
    pub state: PreconditionerState<B, 1>,
}

/// The stacked factors of the parameters that share a merged rank (and, for
/// KrADagrad, the position of the largest merged dim, which fixes the
/// one-factor schedule).
#[derive(Record, Clone, Debug)]
pub struct ClassState<B: Backend> {
    /// Step counter, as [`PreconditionerState::step`](super::PreconditionerState::step).
    pub step: usize,
    /// One factor group per distinct block shape of the class.
    pub groups: Vec<FactorGroup<B>>,
    /// KrADagrad only: the dims updated since their roots were last computed.
    pub stale_dims: Vec<bool>,
}

impl<B: Backend> BatchedState<B> {
    /// A state holding nothing: what [`BatchedOptimizer::to_record`] returns
    /// before the first step.
    pub fn empty() -> Self {
        Self {
            param_ids: vec![],
            shapes: vec![],
            classes: vec![],
            graft: vec![],
            momentum: vec![],
            origin: None,
            class_of: None,
            parked: None,
            steps: None,
        }
    }

    /// Bytes held by the state's tensors (reads shapes only).
    pub fn size_bytes(&self) -> usize {
        let factors: usize = self
            .classes
            .iter()
            .flat_map(|c| &c.groups)
            .map(FactorGroup::size_bytes)
            .sum();
        let buffers: usize = self
            .graft
            .iter()
            .chain(&self.momentum)
            .flatten()
            .map(tensor_bytes)
            .sum();
        let parked: usize = self.parked.iter().flatten().map(|p| p.state.size_bytes()).sum();
        factors + buffers + parked
    }

    /// Applies `f3` to every factor tensor and `f1` to every buffer.
    fn map_tensors<C: Backend>(
        self,
        f3: impl Fn(Tensor<B, 3>) -> Tensor<C, 3>,
        f1: impl Fn(Tensor<B, 1>) -> Tensor<C, 1>,
    ) -> BatchedState<C> {
        BatchedState {
            param_ids: self.param_ids,
            shapes: self.shapes,
            classes: self
                .classes
                .into_iter()
                .map(|c| ClassState {
                    step: c.step,
                    groups: c.groups.into_iter().map(|g| g.map(&f3)).collect(),
                    stale_dims: c.stale_dims,
                })
                .collect(),
            graft: self.graft.into_iter().map(|b| b.map(&f1)).collect(),
            momentum: self.momentum.into_iter().map(|b| b.map(&f1)).collect(),
            origin: self.origin,
            class_of: self.class_of,
            steps: self.steps,
            parked: self.parked.map(|parked| {
                parked
                    .into_iter()
                    .map(|p| ParkedState {
                        param_id: p.param_id,
                        shape: p.shape,
                        state: p.state.map_tensors(&f3, &f1),
                    })
                    .collect()
            }),
        }
    }
}

/// One block batch of a region of one parameter, inside a stacked group.
#[derive(Debug, Clone)]
struct Member {
    /// Index of the parameter in visit order.
    param: usize,
    /// Index of the region in the parameter's layout.
    region: usize,
    /// Number of blocks of the region.
    blocks: usize,
}

/// The blocks of one shape stacked across the parameters of a class.
#[derive(Debug, Clone)]
struct GroupPlan {
    block_dims: Vec<usize>,
    members: Vec<Member>,
}

impl GroupPlan {
    fn num_blocks(&self) -> usize {
        self.members.iter().map(|m| m.blocks).sum()
    }
}

/// Parameters preconditioned together: same merged rank (and, for KrADagrad,
/// same schedule), same step counter and, for KrADagrad, the same pending
/// roots.
#[derive(Debug, Clone)]
struct ClassPlan {
    /// The merged dims of the class's first parameter: what KrADagrad's
    /// schedule reads (rank and position of the largest dim), shared by all.
    dims: Vec<usize>,
    groups: Vec<GroupPlan>,
}

/// How the parameters of a model map onto stacked factors (host-only, rebuilt
/// from the shapes).
#[derive(Debug, Clone)]
struct Plan {
    layouts: Vec<BlockLayout>,
    classes: Vec<ClassPlan>,
}

impl Plan {
    /// The plan of parameters of `shapes`, classed by `key` (parameters of
    /// equal keys share a class; `key` is only asked for parameters of merged
    /// rank 1 or more), with the class of each parameter (see
    /// [`BatchedState::class_of`]).
    fn by_key<K: PartialEq>(
        shapes: &[Vec<usize>],
        options: &Options,
        mut key: impl FnMut(usize, &BlockLayout) -> K,
    ) -> (Self, Vec<Option<usize>>) {
        let layouts: Vec<_> = shapes
            .iter()
            .map(|s| BlockLayout::new(s, options.block_size, options.merge_dims))
            .collect();
        let mut keys: Vec<K> = vec![];
        let class_of: Vec<Option<usize>> = layouts
            .iter()
            .enumerate()
            .map(|(p, layout)| {
                if layout.rank() == 0 {
                    return None;
                }
                let k = key(p, layout);
                Some(match keys.iter().position(|known| *known == k) {
                    Some(c) => c,
                    None => {
                        keys.push(k);
                        keys.len() - 1
                    }
                })
            })
            .collect();
        (Self::with_classes(layouts, &class_of), class_of)
    }

    /// The plan of parameters laid out as `layouts`, stacked in the classes
    /// `class_of` names.
    fn with_classes(layouts: Vec<BlockLayout>, class_of: &[Option<usize>]) -> Self {
        let count = class_of.iter().flatten().map(|&c| c + 1).max().unwrap_or(0);
        let mut classes: Vec<Option<ClassPlan>> = vec![None; count];
        for (p, (layout, class)) in layouts.iter().zip(class_of).enumerate() {
            let Some(&c) = class.as_ref() else { continue };
            let class = classes[c].get_or_insert_with(|| ClassPlan {
                dims: layout.dims.clone(),
                groups: vec![],
            });
            for (r, region) in layout.regions.iter().enumerate() {
                let member = Member {
                    param: p,
                    region: r,
                    blocks: region.num_blocks(),
                };
                match class
                    .groups
                    .iter_mut()
                    .find(|g| g.block_dims == region.block_dims)
                {
                    Some(g) => g.members.push(member),
                    None => class.groups.push(GroupPlan {
                        block_dims: region.block_dims.clone(),
                        members: vec![member],
                    }),
                }
            }
        }
        let classes = classes
            .into_iter()
            .map(|c| c.expect("every class index has a member"))
            .collect();
        Self { layouts, classes }
    }

    /// The plan a state records. A state written before states recorded
    /// [`BatchedState::class_of`] is classed by merged rank and, for
    /// KrADagrad, the position of the largest merged dim (all its parameters
    /// had stepped together).
    fn of_state<B: Backend>(state: &BatchedState<B>, options: &Options, variant: Variant) -> Self {
        match &state.class_of {
            Some(class_of) if class_of.len() == state.shapes.len() => {
                let layouts = state
                    .shapes
                    .iter()
                    .map(|s| BlockLayout::new(s, options.block_size, options.merge_dims))
                    .collect::<Vec<_>>();
                let ranks_fit = layouts
                    .iter()
                    .zip(class_of)
                    .all(|(l, c)| (l.rank() == 0) == c.is_none());
                if !ranks_fit || class_of.iter().flatten().any(|&c| c >= state.classes.len()) {
                    state_mismatch("its class assignment does not fit its parameters' layouts".into());
                }
                Self::with_classes(layouts, class_of)
            }
            Some(class_of) => state_mismatch(format!(
                "{} class assignments stored for {} parameters",
                class_of.len(),
                state.shapes.len()
            )),
            None => Self::by_key(&state.shapes, options, |_, layout| schedule_key(variant, layout)).0,
        }
    }
}

/// What parameters of one class share besides their step: the merged rank
/// and, for KrADagrad, the position of the first largest merged dim, which
/// fix the one-factor schedule.
fn schedule_key(variant: Variant, layout: &BlockLayout) -> (usize, usize) {
    let largest = match variant {
        Variant::Kradagrad => largest_dim(&layout.dims),
        _ => 0,
    };
    (layout.rank(), largest)
}

/// One parameter's blocks, one slot per region of its layout (emptied as
/// they are stacked or assembled).
type Regions<B> = Vec<Option<Tensor<B, 2>>>;

/// One parameter's preconditioned regions, each flattened (see
/// [`BlockLayout::assemble`]), one slot per region.
type FlatRegions<B> = Vec<Option<Tensor<B, 1>>>;

/// A parameter with a gradient, flattened, as collected at the start of a step.
struct Entry<B: Backend> {
    id: ParamId,
    shape: Vec<usize>,
    param: Tensor<B, 1>,
    grad: Tensor<B, 1>,
}

/// Collects every float parameter that has a gradient, in visit order.
struct Collector<'a, B: AutodiffBackend> {
    grads: &'a mut GradAdaptor,
    clipping: Option<&'a GradientClipping>,
    entries: Vec<Entry<B::InnerBackend>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Collector<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some((grad, device)) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let grad = match self.clipping {
                Some(clipping) => clipping.clip_gradient(grad),
                None => grad,
            };
            let tensor = param.val().inner().to_device(&device);
            let shape = tensor.dims().to_vec();
            self.entries.push(Entry {
                id: param.id,
                shape,
                param: flatten(tensor),
                grad: flatten(grad),
            });
        }
    }
}

/// Writes the updated parameters back into the module.
struct Writer<B: AutodiffBackend> {
    updated: HashMap<ParamId, Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Writer<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let tensor = match self.updated.remove(&id) {
            Some(flat) => {
                let updated = Tensor::from_inner(reshape(flat, tensor.dims()));
                if tensor.is_require_grad() {
                    updated.require_grad()
                } else {
                    updated
                }
            }
            None => tensor,
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// KrADagrad*, KrADagrad or Shampoo for a whole module, with the factors of
/// all parameters batched by block shape (see the [module docs](self)).
///
/// Built by the configs' `init_batched`, used like any Burn [`Optimizer`]:
///
/// ```
/// use burn::backend::{Autodiff, NdArray};
/// use burn::nn::{Linear, LinearConfig};
/// use burn::optim::{GradientsParams, Optimizer};
/// use burn::tensor::{Distribution, Tensor};
/// use kradagrad_burn::KradagradStarConfig;
///
/// type B = Autodiff<NdArray<f32>>;
/// let device = Default::default();
/// let model: Linear<B> = LinearConfig::new(8, 4).init(&device);
/// let mut optimizer = KradagradStarConfig::new().init_batched::<B, Linear<B>>();
/// let x = Tensor::<B, 2>::random([16, 8], Distribution::Normal(0.0, 1.0), &device);
/// let loss = model.forward(x).square().mean();
/// let grads = GradientsParams::from_grads(loss.backward(), &model);
/// let model = optimizer.step(0.1, model, grads);
/// ```
pub struct BatchedOptimizer<M, B: AutodiffBackend> {
    options: Options,
    variant: Variant,
    grad_clipping: Option<GradientClipping>,
    state: Option<BatchedState<B::InnerBackend>>,
    /// The plan of `state` (rebuilt from its shapes after a record is loaded).
    plan: Option<Plan>,
    /// A loaded record still lives on the device it was loaded on.
    loaded: bool,
    module: PhantomData<fn() -> M>,
}

impl<M, B: AutodiffBackend> Clone for BatchedOptimizer<M, B> {
    fn clone(&self) -> Self {
        Self {
            options: self.options.clone(),
            variant: self.variant,
            grad_clipping: self.grad_clipping.clone(),
            state: self.state.clone(),
            plan: self.plan.clone(),
            loaded: self.loaded,
            module: PhantomData,
        }
    }
}

impl<M, B: AutodiffBackend> BatchedOptimizer<M, B> {
    /// A fresh optimizer (the configs' `init_batched` validates `options` first).
    pub(crate) fn new(options: Options, variant: Variant) -> Self {
        Self {
            options,
            variant,
            grad_clipping: None,
            state: None,
            plan: None,
            loaded: false,
            module: PhantomData,
        }
    }

    /// Clips every gradient before the step, as `OptimizerAdaptor::with_grad_clipping`.
    pub fn with_grad_clipping(mut self, clipping: GradientClipping) -> Self {
        self.grad_clipping = Some(clipping);
        self
    }

    /// The current state, `None` before the first step.
    pub fn state(&self) -> Option<&BatchedState<B::InnerBackend>> {
        self.state.as_ref()
    }

    /// A fresh state of one parameter: statistics `scale * I`, roots `I`, no
    /// buffers, in the parameter's float type.
    fn fresh(
        &self,
        entry: &Entry<B::InnerBackend>,
        layout: &BlockLayout,
    ) -> PreconditionerState<B::InnerBackend, 1> {
        PreconditionerState::new(
            layout,
            self.variant.origin(&self.options),
            self.variant.initial_scale(&self.options),
            self.variant == Variant::Kradagrad,
            &entry.grad.device(),
            entry.grad.dtype(),
        )
    }

    /// The stacked state of `entries` from their own states (in `entries`'
    /// order), with `parked` kept aside, and its plan. Parameters of one
    /// class share a merged rank (for KrADagrad, a schedule), a step counter
    /// and pending roots.
    fn restack(
        &self,
        entries: &[Entry<B::InnerBackend>],
        mut own: Vec<PreconditionerState<B::InnerBackend, 1>>,
        parked: Vec<ParkedState<B::InnerBackend>>,
        steps: Option<usize>,
    ) -> (BatchedState<B::InnerBackend>, Plan) {
        let shapes: Vec<_> = entries.iter().map(|e| e.shape.clone()).collect();
        let (plan, class_of) = Plan::by_key(&shapes, &self.options, |p, layout| {
            (
                schedule_key(self.variant, layout),
                own[p].step,
                own[p].stale_dims.clone(),
            )
        });
        let mut regions: Vec<Vec<Option<FactorGroup<B::InnerBackend>>>> = own
            .iter_mut()
            .map(|state| state.groups.drain(..).map(Some).collect())
            .collect();
        let classes = plan
            .classes
            .iter()
            .map(|class| {
                let first = class.groups[0].members[0].param;
                let groups = class
                    .groups
                    .iter()
                    .map(|group| {
                        let parts: Vec<_> = group
                            .members
                            .iter()
                            .map(|m| {
                                regions[m.param][m.region]
                                    .take()
                                    .expect("each region stacked once")
                            })
                            .collect();
                        let rank = class.dims.len();
                        FactorGroup {
                            statistics: (0..rank)
                                .map(|i| stack(parts.iter().map(|g| g.statistics[i].clone()).collect()))
                                .collect(),
                            roots: (0..rank)
                                .map(|i| stack(parts.iter().map(|g| g.roots[i].clone()).collect()))
                                .collect(),
                        }
                    })
                    .collect();
                ClassState {
                    step: own[first].step,
                    groups,
                    stale_dims: own[first].stale_dims.clone(),
                }
            })
            .collect();
        let (graft, momentum) = own.into_iter().map(|state| (state.graft, state.momentum)).unzip();
        let state = BatchedState {
            param_ids: entries.iter().map(|e| e.id.val()).collect(),
            shapes,
            classes,
            graft,
            momentum,
            origin: Some(self.variant.origin(&self.options)),
            class_of: Some(class_of),
            parked: Some(parked),
            steps,
        };
        (state, plan)
    }

    /// The states of the parameters of a stacked state: its active ones (as
    /// `plan` stacks them, in its order), then its parked ones.
    fn unstack(state: BatchedState<B::InnerBackend>, plan: &Plan) -> Vec<ParkedState<B::InnerBackend>> {
        let origin = state.origin.clone();
        let mut own: Vec<PreconditionerState<B::InnerBackend, 1>> = plan
            .layouts
            .iter()
            .zip(state.graft)
            .zip(state.momentum)
            .map(|((layout, graft), momentum)| PreconditionerState {
                step: 0,
                groups: Vec::with_capacity(layout.regions.len()),
                stale_dims: vec![],
                graft,
                momentum,
                origin: origin.clone(),
            })
            .collect();
        let mut regions: Vec<Vec<Option<FactorGroup<B::InnerBackend>>>> =
            plan.layouts.iter().map(|l| vec![None; l.regions.len()]).collect();
        for (class, class_state) in plan.classes.iter().zip(state.classes) {
            for (group, stacked) in class.groups.iter().zip(class_state.groups) {
                let counts: Vec<_> = group.members.iter().map(|m| m.blocks).collect();
                let split =
                    |tensors: Vec<Tensor<B::InnerBackend, 3>>| -> Vec<Vec<Tensor<B::InnerBackend, 3>>> {
                        let per_dim: Vec<Vec<_>> = tensors.into_iter().map(|t| unstack(t, &counts)).collect();
                        (0..counts.len())
                            .map(|m| per_dim.iter().map(|parts| parts[m].clone()).collect())
                            .collect()
                    };
                let statistics = split(stacked.statistics);
                let roots = split(stacked.roots);
                for ((m, statistics), roots) in group.members.iter().zip(statistics).zip(roots) {
                    regions[m.param][m.region] = Some(FactorGroup { statistics, roots });
                    own[m.param].step = class_state.step;
                    own[m.param].stale_dims = class_state.stale_dims.clone();
                }
            }
        }
        let active = own
            .into_iter()
            .zip(regions)
            .zip(state.param_ids)
            .zip(state.shapes)
            .map(|(((mut own, regions), param_id), shape)| {
                own.groups = regions
                    .into_iter()
                    .map(|r| r.expect("every region stacked"))
                    .collect();
                ParkedState {
                    param_id,
                    shape,
                    state: own,
                }
            });
        active.chain(state.parked.unwrap_or_default()).collect()
    }

    /// The state and plan for this step's parameters: fresh at the first
    /// step; the state as it is while the parameters with a gradient stay the
    /// same; otherwise restacked, a parameter without a gradient parked with
    /// its state and one seen for the first time joining with a fresh state.
    /// Clear panics when a state does not fit.
    fn state_for(&mut self, entries: &[Entry<B::InnerBackend>]) -> (BatchedState<B::InnerBackend>, Plan) {
        let layouts = || -> Vec<BlockLayout> {
            entries
                .iter()
                .map(|e| BlockLayout::new(&e.shape, self.options.block_size, self.options.merge_dims))
                .collect()
        };
        let Some(state) = self.state.take() else {
            let own = entries
                .iter()
                .zip(layouts())
                .map(|(e, l)| self.fresh(e, &l))
                .collect();
            return self.restack(entries, own, vec![], Some(0));
        };
        if let Some(written) = &state.origin {
            written.check(&self.variant.origin(&self.options), "BatchedOptimizer's state");
        }
        let loaded = std::mem::take(&mut self.loaded);
        // A state this optimizer stepped keeps its plan; one loaded from a
        // record gets the plan it records, checked against it once.
        let plan = match self.plan.take() {
            Some(plan) => plan,
            None => {
                let plan = Plan::of_state(&state, &self.options, self.variant);
                check_state(&state, &plan, self.variant);
                plan
            }
        };
        // A loaded record lives on the device, and in the float type, Burn
        // loaded it in (the device's default float type, which may not be the
        // parameters'): it follows the parameters.
        let state = if loaded {
            let (device, dtype) = (entries[0].grad.device(), entries[0].grad.dtype());
            state.map_tensors(
                |t| t.to_device(&device).cast(dtype),
                |t| t.to_device(&device).cast(dtype),
            )
        } else {
            state
        };
        let ids: Vec<u64> = entries.iter().map(|e| e.id.val()).collect();
        if state.param_ids == ids {
            let shapes: Vec<_> = entries.iter().map(|e| e.shape.clone()).collect();
            if state.shapes != shapes {
                state_mismatch(format!(
                    "it holds parameters of shapes {:?}, this step's have shapes {shapes:?}",
                    state.shapes
                ));
            }
            return (state, plan);
        }
        let known = |id: &u64| {
            state.param_ids.contains(id) || state.parked.iter().flatten().any(|p| p.param_id == *id)
        };
        if loaded && !ids.iter().any(known) {
            panic!(
                "kradagrad-burn: BatchedOptimizer's loaded state holds parameters {:?} of shapes {:?}, none of \
                 which has a gradient at this step (parameters {ids:?}): a loaded record must come from \
                 the same model and optimizer.",
                state.param_ids, state.shapes
            );
        }
        let steps = Some(model_steps(&state));
        let mut kept = Self::unstack(state, &plan);
        let own = entries
            .iter()
            .zip(layouts())
            .map(
                |(entry, layout)| match kept.iter().position(|p| p.param_id == entry.id.val()) {
                    Some(k) => {
                        let parked = kept.remove(k);
                        if parked.shape != entry.shape {
                            state_mismatch(format!(
                                "it holds a parameter of shape {:?} where this step's has shape {:?}",
                                parked.shape, entry.shape
                            ));
                        }
                        let state = parked.state;
                        if let Some(what) =
                            state.factors_mismatch(&layout, self.variant == Variant::Kradagrad)
                        {
                            state_mismatch(what);
                        }
                        state
                    }
                    None => self.fresh(entry, &layout),
                },
            )
            .collect();
        self.restack(entries, own, kept, steps)
    }

    fn step_common(&mut self, lr: LearningRate, module: M, mut grads: GradAdaptor) -> M
    where
        M: AutodiffModule<B>,
    {
        check_learning_rate(lr);
        let mut collector = Collector::<B> {
            grads: &mut grads,
            clipping: self.grad_clipping.as_ref(),
            entries: vec![],
        };
        module.visit(&mut collector);
        let entries = collector.entries;
        if entries.is_empty() {
            return module;
        }
        for entry in &entries {
            check_float_type(entry.param.dtype(), &entry.shape);
        }
        let device = entries[0].grad.device();
        if let Some(other) = entries.iter().find(|e| e.grad.device() != device) {
            panic!(
                "kradagrad-burn: BatchedOptimizer needs every parameter on one device; the parameter of \
                 shape {:?} is on {:?}, the first on {:?}. Use `init()` (one state per parameter) for \
                 models spread over devices.",
                other.shape,
                other.grad.device(),
                device
            );
        }
        let (old, plan) = self.state_for(&entries);
        let (state, updated) = self.run(lr, &entries, old, &plan);
        self.state = Some(state);
        self.plan = Some(plan);
        let mut writer = Writer::<B> {
            updated: entries.iter().map(|e| e.id).zip(updated).collect(),
        };
        module.map(&mut writer)
    }

    /// One step of every parameter: returns the new state and the new
    /// (flattened) parameters in `entries`' order.
    fn run(
        &self,
        lr: f64,
        entries: &[Entry<B::InnerBackend>],
        old: BatchedState<B::InnerBackend>,
        plan: &Plan,
    ) -> (BatchedState<B::InnerBackend>, Vec<Tensor<B::InnerBackend, 1>>) {
        let options = &self.options;
        if options.non_finite_gradients == NonFiniteGradients::Panic {
            for entry in entries {
                guard::panic_if_set(guard::unusable_gradient(&entry.grad), &entry.shape);
            }
        }
        // Under `Skip`, one flag for the model, summed from the stacked blocks
        // below and the unblocked (rank 0) gradients: a reduction per stack
        // rather than per parameter.
        let skip = options.non_finite_gradients == NonFiniteGradients::Skip;
        let mut probes: Vec<Tensor<B::InnerBackend, 1>> = vec![];
        if skip {
            for (entry, layout) in entries.iter().zip(&plan.layouts) {
                if layout.rank() == 0 {
                    probes.push(guard::squared_norm_probe(entry.grad.clone()));
                }
            }
        }
        let mut new = old.clone();

        // Per parameter: this step counted from 1 (its class's, or the
        // model's for a parameter of merged rank 0), and under
        // `MomentumForm::FirstMoment` the new buffer and the filtered gradient.
        let steps = parameter_steps(&old, plan);
        new.steps = Some(model_steps(&old) + 1);
        let first_moments: Vec<_> = entries
            .iter()
            .enumerate()
            .map(|(p, e)| {
                filters_gradient(options)
                    .then(|| first_moment(options.momentum, new.momentum[p].clone(), &e.grad, steps[p]))
            })
            .collect();
        // Blocks of every parameter, region by region (of the filtered
        // gradient too, for the direction).
        let split = |t: &Tensor<B::InnerBackend, 1>, layout: &BlockLayout| -> Regions<B::InnerBackend> {
            match layout.rank() {
                0 => vec![],
                _ => layout.split(t.clone()).into_iter().map(Some).collect(),
            }
        };
        let mut blocks: Vec<Regions<B::InnerBackend>> = entries
            .iter()
            .zip(&plan.layouts)
            .map(|(e, layout)| split(&e.grad, layout))
            .collect();
        let mut filtered_blocks: Option<Vec<Regions<B::InnerBackend>>> =
            filters_gradient(options).then(|| {
                first_moments
                    .iter()
                    .zip(&plan.layouts)
                    .map(|(fm, layout)| split(&fm.as_ref().expect("filtered").1, layout))
                    .collect()
            });
        // Phase one, class by class: the statistics (see `engine::StepPlan`).
        let mut touched_by_class = vec![];
        let mut plans = vec![];
        for (class, class_state) in plan.classes.iter().zip(new.classes.iter_mut()) {
            let stack_class = |blocks: &mut Vec<Regions<B::InnerBackend>>| -> Vec<_> {
                class
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
            };
            let stacked = stack_class(&mut blocks);
            let filtered = filtered_blocks.as_mut().map(stack_class);
            if skip {
                probes.extend(stacked.iter().map(|b| guard::squared_norm_probe(b.clone())));
            }
            let block_dims: Vec<&[usize]> = class.groups.iter().map(|g| g.block_dims.as_slice()).collect();
            let mut touched = Touched::none(class.dims.len());
            let factors = Factors {
                step: &mut class_state.step,
                groups: &mut class_state.groups,
                stale_dims: &mut class_state.stale_dims,
            };
            let step = update_statistics(
                options,
                self.variant,
                &class.dims,
                &block_dims,
                factors,
                &stacked,
                &mut touched,
            );
            touched_by_class.push(touched);
            plans.push((step, stacked, filtered));
        }
        // Phase two: every root due in the model, with the Newton stages that
        // classes share for one matrix size run once. The roots are taken of
        // the statistics the step keeps: under a skipped step the statistics
        // go back first, so that the roots due (those KrADagrad has pending
        // too) are refreshed from them, not rolled back with the step.
        let refreshing = plans.iter().any(|(step, ..)| step.refresh.is_some());
        let mut rollback = None;
        if skip && refreshing {
            let probes = std::mem::take(&mut probes);
            rollback = Some(keep_statistics(probes, &mut new, &old, &mut touched_by_class));
        }
        let requests: Vec<_> = new
            .classes
            .iter_mut()
            .zip(&plans)
            .filter_map(|(class, (step, ..))| step.refresh.as_ref().map(|r| (&mut class.groups[..], r)))
            .collect();
        if !requests.is_empty() {
            refresh_roots(requests, options);
        }
        // Phase three: the preconditioned blocks, back to their parameters
        // (same indexing as `blocks`; `None` for a class whose direction is
        // the gradient).
        let mut out: Vec<Option<FlatRegions<B::InnerBackend>>> = vec![None; entries.len()];
        for ((class, class_state), (step, stacked, filtered)) in
            plan.classes.iter().zip(&new.classes).zip(plans)
        {
            let block_dims: Vec<&[usize]> = class.groups.iter().map(|g| g.block_dims.as_slice()).collect();
            let Some(result) = precondition(step, &class_state.groups, &block_dims, stacked, filtered) else {
                continue;
            };
            for (group, preconditioned) in class.groups.iter().zip(result) {
                let counts: Vec<_> = group.members.iter().map(|m| m.blocks).collect();
                let width = group.block_dims.iter().product();
                for (m, part) in group
                    .members
                    .iter()
                    .zip(unstack_flat(preconditioned, width, &counts))
                {
                    let slot =
                        out[m.param].get_or_insert_with(|| vec![None; plan.layouts[m.param].regions.len()]);
                    slot[m.region] = Some(part);
                }
            }
        }

        // One verdict for the model (the parameters share factor tensors),
        // known before the per-parameter work so that each parameter's
        // rollback fuses with the update that produced it.
        if skip && rollback.is_none() {
            rollback = Some(keep_statistics(probes, &mut new, &old, &mut touched_by_class));
        }

        // Every parameter's direction assembled first, then per parameter:
        // graft, weight decay, momentum, update. (Issued in this order, the
        // assembly's reshapes, which Burn's fusion cannot fuse when they lower
        // the rank, run before the updates instead of inside them.)
        let directions: Vec<_> = entries
            .iter()
            .enumerate()
            .map(|(p, entry)| {
                out[p].take().map(|regions| {
                    plan.layouts[p].assemble(
                        regions
                            .into_iter()
                            .map(|r| r.expect("every region preconditioned"))
                            .collect(),
                        entry.param.dims(),
                    )
                })
            })
            .collect();
        let mut params = Vec::with_capacity(entries.len());
        let tails = entries.iter().zip(directions).zip(first_moments).zip(steps);
        for (p, (((entry, direction), first_moment), step)) in tails.enumerate() {
            let inputs = TailInputs {
                tensor: entry.param.clone(),
                grad: entry.grad.clone(),
                direction,
                graft: new.graft[p].take(),
                momentum: new.momentum[p].take(),
                first_moment,
                step,
            };
            let (param, graft, momentum) = finish_flat(options, lr, &entry.shape, inputs, rollback.as_ref());
            new.graft[p] = graft;
            new.momentum[p] = momentum;
            params.push(param);
        }
        (new, params)
    }
}

/// Steps the optimizer has taken, by the state's count or, in a state saved
/// before it kept one, the most any class has taken.
fn model_steps<B: Backend>(state: &BatchedState<B>) -> usize {
    state
        .steps
        .unwrap_or_else(|| state.classes.iter().map(|c| c.step).max().unwrap_or(0))
}

/// Per parameter of `plan`, the step about to be taken, counted from 1: its
/// class's, or the model's for a parameter of merged rank 0.
fn parameter_steps<B: Backend>(state: &BatchedState<B>, plan: &Plan) -> Vec<usize> {
    let mut steps = vec![model_steps(state) + 1; plan.layouts.len()];
    for (class, class_state) in plan.classes.iter().zip(&state.classes) {
        for member in class.groups.iter().flat_map(|g| &g.members) {
            steps[member.param] = class_state.step + 1;
        }
    }
    steps
}

/// The model's verdict from `probes`, and the non-finite guard on every
/// class's statistics under it (see [`keep_statistics_if`]); what it rolled
/// back is no longer `touched`.
fn keep_statistics<B: Backend>(
    probes: Vec<Tensor<B, 1>>,
    new: &mut BatchedState<B>,
    old: &BatchedState<B>,
    touched_by_class: &mut [Touched],
) -> guard::Rollback<B> {
    let rollback = guard::Rollback::from_probes(probes);
    for ((class, old_class), touched) in new.classes.iter_mut().zip(&old.classes).zip(touched_by_class) {
        keep_statistics_if(&rollback, &mut class.groups, &old_class.groups, touched);
        *touched = Touched::none(touched.statistics.len());
    }
    rollback
}

/// Panics: a [`BatchedState`] does not fit the model's parameters (`what`
/// says how).
fn state_mismatch(what: String) -> ! {
    panic!(
        "kradagrad-burn: BatchedOptimizer's state does not fit the model's parameters ({what}). \
         Was it saved with another model, optimizer or block_size/merge_dims?"
    )
}

/// Panics with a clear message when `state` (e.g. from a checkpoint) does not
/// have the stacked shapes `plan` expects.
fn check_state<B: Backend>(state: &BatchedState<B>, plan: &Plan, variant: Variant) {
    if state.classes.len() != plan.classes.len() {
        state_mismatch(format!(
            "{} classes stored, {} expected",
            state.classes.len(),
            plan.classes.len()
        ));
    }
    for (class, class_plan) in state.classes.iter().zip(&plan.classes) {
        let expected: Vec<_> = class_plan
            .groups
            .iter()
            .map(|group| (group.num_blocks(), group.block_dims.as_slice()))
            .collect();
        let stale_rank = (variant == Variant::Kradagrad).then_some(class_plan.dims.len());
        if let Some(what) = factors_mismatch(&class.groups, &class.stale_dims, &expected, stale_rank) {
            state_mismatch(what);
        }
    }
    let n = state.param_ids.len();
    if state.graft.len() != n || state.momentum.len() != n {
        state_mismatch(format!(
            "{} graft and {} momentum buffers stored for {n} parameters",
            state.graft.len(),
            state.momentum.len()
        ));
    }
    for (p, shape) in state.shapes.iter().enumerate() {
        let numel: usize = shape.iter().product();
        for buffer in [&state.graft[p], &state.momentum[p]].into_iter().flatten() {
            if buffer.dims() != [numel] {
                state_mismatch(format!(
                    "a buffer of {} entries stored for a parameter of shape {shape:?}",
                    buffer.dims()[0]
                ));
            }
        }
    }
}

impl<M, B> Optimizer<M, B> for BatchedOptimizer<M, B>
where
    M: AutodiffModule<B>,
    B: AutodiffBackend,
{
    type Record = BatchedState<B>;

    fn step(&mut self, lr: LearningRate, module: M, grads: GradientsParams) -> M {
        self.step_common(lr, module, grads.into())
    }

    fn step_multi(&mut self, lr: LearningRate, module: M, grads: MultiGradientsParams) -> M {
        self.step_common(lr, module, grads.into())
    }

    fn to_record(&self) -> Self::Record {
        match &self.state {
            Some(state) => state.clone().map_tensors(Tensor::from_inner, Tensor::from_inner),
            None => BatchedState::empty(),
        }
    }

    fn load_record(mut self, record: Self::Record) -> Self {
        if record.param_ids.is_empty() {
            self.state = None;
        } else {
            self.state = Some(record.map_tensors(|t| t.inner(), |t| t.inner()));
            self.loaded = true;
        }
        self.plan = None;
        self
    }
}
