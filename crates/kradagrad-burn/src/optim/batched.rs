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
//! factor size for the model. Both front ends run the same step engine, so
//! both give the same updates to round-off; grafting, weight decay and
//! momentum stay per parameter. docs/performance.md has the measurements.
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
//! one device (under burn-train's `MultiDeviceOptim::OptimSharded`, whose
//! gradients arrive spread over the devices, [`Optimizer::step_multi`]
//! gathers them onto the device of the state and steps there); and under
//! [`NonFiniteGradients::Skip`](crate::NonFiniteGradients::Skip) a NaN or Inf in any gradient, or a model
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

use super::engine::{Engine, ParamInput, SetState};
use super::stacking::Stacking;
use super::state::{factors_mismatch, tensor_bytes};
use super::{ClassState, FactorGroup, PreconditionerState, StateOrigin};
use crate::layout::{flatten, reshape, stack, unstack, BlockLayout};

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
            classes: self.classes.into_iter().map(|c| c.map(&f3)).collect(),
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

/// The stacking a state records. A state written before states recorded
/// [`BatchedState::class_of`] is classed by the algorithm's class key (all
/// its parameters had stepped together).
fn stacking_of_state<B: Backend>(state: &BatchedState<B>, engine: &Engine) -> Stacking {
    let options = &engine.options;
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
            Stacking::with_classes(layouts, class_of)
        }
        Some(class_of) => state_mismatch(format!(
            "{} class assignments stored for {} parameters",
            class_of.len(),
            state.shapes.len()
        )),
        None => {
            Stacking::by_key(&state.shapes, options, |_, layout| {
                engine.algorithm.class_key(layout)
            })
            .0
        }
    }
}

/// A parameter with a gradient, flattened, as collected at the start of a step.
struct Entry<B: Backend> {
    id: ParamId,
    input: ParamInput<B, 1>,
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
                input: ParamInput {
                    shape,
                    param: flatten(tensor),
                    grad: flatten(grad),
                },
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
    engine: Engine,
    grad_clipping: Option<GradientClipping>,
    state: Option<BatchedState<B::InnerBackend>>,
    /// The stacking of `state` (rebuilt from its shapes after a record is loaded).
    stacking: Option<Stacking>,
    /// A loaded record still lives on the device it was loaded on.
    loaded: bool,
    module: PhantomData<fn() -> M>,
}

impl<M, B: AutodiffBackend> Clone for BatchedOptimizer<M, B> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
            grad_clipping: self.grad_clipping.clone(),
            state: self.state.clone(),
            stacking: self.stacking.clone(),
            loaded: self.loaded,
            module: PhantomData,
        }
    }
}

impl<M, B: AutodiffBackend> BatchedOptimizer<M, B> {
    /// A fresh optimizer (the configs' `init_batched` validates the options first).
    pub(crate) fn new(engine: Engine) -> Self {
        Self {
            engine,
            grad_clipping: None,
            state: None,
            stacking: None,
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

    /// A fresh state of one parameter, in its gradient's float type.
    fn fresh(
        &self,
        entry: &Entry<B::InnerBackend>,
        layout: &BlockLayout,
    ) -> PreconditionerState<B::InnerBackend, 1> {
        let grad = &entry.input.grad;
        self.engine.fresh_state(layout, &grad.device(), grad.dtype())
    }

    /// The stacked state of `entries` from their own states (in `entries`'
    /// order), with `parked` kept aside, and its stacking. Parameters of one
    /// class share a merged rank (for KrADagrad, a schedule), a step counter
    /// and pending roots.
    fn restack(
        &self,
        entries: &[Entry<B::InnerBackend>],
        mut own: Vec<PreconditionerState<B::InnerBackend, 1>>,
        parked: Vec<ParkedState<B::InnerBackend>>,
        steps: Option<usize>,
    ) -> (BatchedState<B::InnerBackend>, Stacking) {
        let shapes: Vec<_> = entries.iter().map(|e| e.input.shape.clone()).collect();
        let (stacking, class_of) = Stacking::by_key(&shapes, &self.engine.options, |p, layout| {
            (
                self.engine.algorithm.class_key(layout),
                own[p].step,
                own[p].stale_dims.clone(),
            )
        });
        let mut regions: Vec<Vec<Option<FactorGroup<B::InnerBackend>>>> = own
            .iter_mut()
            .map(|state| state.groups.drain(..).map(Some).collect())
            .collect();
        let classes = stacking
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
            origin: Some(self.engine.algorithm.origin(&self.engine.options)),
            class_of: Some(class_of),
            parked: Some(parked),
            steps,
        };
        (state, stacking)
    }

    /// The states of the parameters of a stacked state: its active ones (as
    /// `stacking` stacks them, in its order), then its parked ones.
    fn unstack(
        state: BatchedState<B::InnerBackend>,
        stacking: &Stacking,
    ) -> Vec<ParkedState<B::InnerBackend>> {
        let origin = state.origin.clone();
        let mut own: Vec<PreconditionerState<B::InnerBackend, 1>> = stacking
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
        let mut regions: Vec<Vec<Option<FactorGroup<B::InnerBackend>>>> = stacking
            .layouts
            .iter()
            .map(|l| vec![None; l.regions.len()])
            .collect();
        for (class, class_state) in stacking.classes.iter().zip(state.classes) {
            for (group, stacked) in class.groups.iter().zip(class_state.groups) {
                let counts = group.counts();
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

    /// The state and stacking for this step's parameters: fresh at the first
    /// step; the state as it is while the parameters with a gradient stay the
    /// same; otherwise restacked, a parameter without a gradient parked with
    /// its state and one seen for the first time joining with a fresh state.
    /// Clear panics when a state does not fit.
    fn state_for(&mut self, entries: &[Entry<B::InnerBackend>]) -> (BatchedState<B::InnerBackend>, Stacking) {
        let options = &self.engine.options;
        let layouts = || -> Vec<BlockLayout> {
            entries
                .iter()
                .map(|e| BlockLayout::new(&e.input.shape, options.block_size, options.merge_dims))
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
            written.check(&self.engine.algorithm.origin(options), "BatchedOptimizer's state");
        }
        let loaded = std::mem::take(&mut self.loaded);
        // A state this optimizer stepped keeps its stacking; one loaded from a
        // record gets the stacking it records, checked against it once.
        let stacking = match self.stacking.take() {
            Some(stacking) => stacking,
            None => {
                let stacking = stacking_of_state(&state, &self.engine);
                check_state(&state, &stacking, self.engine.algorithm.tracks_stale_dims());
                stacking
            }
        };
        // A loaded record lives on the device, and in the float type, Burn
        // loaded it in (the device's default float type, which may not be the
        // parameters'): it follows the parameters.
        let state = if loaded {
            let (device, dtype) = (entries[0].input.grad.device(), entries[0].input.grad.dtype());
            state.map_tensors(
                |t| t.to_device(&device).cast(dtype),
                |t| t.to_device(&device).cast(dtype),
            )
        } else {
            state
        };
        let ids: Vec<u64> = entries.iter().map(|e| e.id.val()).collect();
        if state.param_ids == ids {
            let shapes: Vec<_> = entries.iter().map(|e| e.input.shape.clone()).collect();
            if state.shapes != shapes {
                state_mismatch(format!(
                    "it holds parameters of shapes {:?}, this step's have shapes {shapes:?}",
                    state.shapes
                ));
            }
            return (state, stacking);
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
        let mut kept = Self::unstack(state, &stacking);
        let own = entries
            .iter()
            .zip(layouts())
            .map(
                |(entry, layout)| match kept.iter().position(|p| p.param_id == entry.id.val()) {
                    Some(k) => {
                        let parked = kept.remove(k);
                        if parked.shape != entry.input.shape {
                            state_mismatch(format!(
                                "it holds a parameter of shape {:?} where this step's has shape {:?}",
                                parked.shape, entry.input.shape
                            ));
                        }
                        let state = parked.state;
                        if let Some(what) =
                            state.factors_mismatch(&layout, self.engine.algorithm.tracks_stale_dims())
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

    /// The device the state lives on, once there is one.
    fn state_device(&self) -> Option<burn::tensor::Device<B::InnerBackend>> {
        let state = self.state.as_ref()?;
        let factor = state
            .classes
            .iter()
            .flat_map(|class| &class.groups)
            .flat_map(|group| &group.statistics)
            .next()
            .map(|t| t.device());
        let buffer = || {
            state
                .graft
                .iter()
                .chain(&state.momentum)
                .flatten()
                .next()
                .map(|t| t.device())
        };
        factor.or_else(buffer)
    }

    /// One step on the gradients `grads` holds. With `gather`, every
    /// gradient and its parameter first move to one device: the state's, or
    /// at the first step the first gradient's.
    fn step_common(&mut self, lr: LearningRate, module: M, mut grads: GradAdaptor, gather: bool) -> M
    where
        M: AutodiffModule<B>,
    {
        let mut collector = Collector::<B> {
            grads: &mut grads,
            clipping: self.grad_clipping.as_ref(),
            entries: vec![],
        };
        module.visit(&mut collector);
        let mut entries = collector.entries;
        if entries.is_empty() {
            return module;
        }
        if gather {
            let device = self
                .state_device()
                .unwrap_or_else(|| entries[0].input.grad.device());
            for entry in &mut entries {
                let input = &mut entry.input;
                input.grad = input.grad.clone().to_device(&device);
                input.param = input.param.clone().to_device(&device);
            }
        }
        let device = entries[0].input.grad.device();
        if let Some(other) = entries.iter().find(|e| e.input.grad.device() != device) {
            panic!(
                "kradagrad-burn: BatchedOptimizer needs every parameter on one device; the parameter of \
                 shape {:?} is on {:?}, the first on {:?}. Use `init()` (one state per parameter) for \
                 models spread over devices.",
                other.input.shape,
                other.input.grad.device(),
                device
            );
        }
        let (mut state, stacking) = self.state_for(&entries);
        let steps = model_steps(&state);
        let mut set = SetState {
            classes: std::mem::take(&mut state.classes),
            graft: std::mem::take(&mut state.graft),
            momentum: std::mem::take(&mut state.momentum),
            steps,
        };
        let (ids, inputs): (Vec<ParamId>, Vec<_>) = entries.into_iter().map(|e| (e.id, e.input)).unzip();
        let updated = self.engine.step(lr, &inputs, &stacking, &mut set);
        state.classes = set.classes;
        state.graft = set.graft;
        state.momentum = set.momentum;
        state.steps = Some(set.steps);
        let mut writer = Writer::<B> {
            updated: ids.into_iter().zip(updated).collect(),
        };
        self.state = Some(state);
        self.stacking = Some(stacking);
        module.map(&mut writer)
    }
}

/// Steps the optimizer has taken, by the state's count or, in a state saved
/// before it kept one, the most any class has taken.
fn model_steps<B: Backend>(state: &BatchedState<B>) -> usize {
    state
        .steps
        .unwrap_or_else(|| state.classes.iter().map(|c| c.step).max().unwrap_or(0))
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
/// have the stacked shapes `stacking` expects.
fn check_state<B: Backend>(state: &BatchedState<B>, stacking: &Stacking, stale_dims: bool) {
    if state.classes.len() != stacking.classes.len() {
        state_mismatch(format!(
            "{} classes stored, {} expected",
            state.classes.len(),
            stacking.classes.len()
        ));
    }
    for (class, class_plan) in state.classes.iter().zip(&stacking.classes) {
        let expected: Vec<_> = class_plan
            .groups
            .iter()
            .map(|group| (group.num_blocks(), group.block_dims.as_slice()))
            .collect();
        let stale_rank = stale_dims.then_some(class_plan.dims.len());
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
        self.step_common(lr, module, grads.into(), false)
    }

    /// The step under burn-train's `MultiDeviceOptim::OptimSharded`, whose
    /// gradients arrive each on the device Burn assigns its parameter to:
    /// they are gathered onto the device the state lives on and the step
    /// runs there, since the stacks span parameters (the per-parameter front
    /// end, `init()`, is the one that steps each parameter on its own device).
    fn step_multi(&mut self, lr: LearningRate, module: M, grads: MultiGradientsParams) -> M {
        self.step_common(lr, module, grads.into(), true)
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
        self.stacking = None;
        self
    }
}
