//! The per-parameter front end: a Burn [`SimpleOptimizer`], which Burn's
//! `OptimizerAdaptor` calls once per parameter, running the step engine on a
//! set of one.

use burn::optim::{LearningRate, SimpleOptimizer};
use burn::tensor::{backend::Backend, Tensor};

use super::engine::{Engine, ParamInput, SetState};
use super::stacking::Stacking;
use super::{ClassState, PreconditionerState};
use crate::layout::{reshape, rows_view, BlockLayout};

/// KrADagrad*, KrADagrad or Shampoo as a Burn [`SimpleOptimizer`]: one state
/// per parameter ([`PreconditionerState`]). Built by a config's `build()`,
/// or wrapped for a module by its `init()`.
///
/// ```
/// use burn::backend::NdArray;
/// use burn::optim::SimpleOptimizer;
/// use burn::tensor::{Distribution, Tensor};
/// use kradagrad_burn::{KradagradStarConfig, PerParameterOptimizer};
///
/// type B = NdArray<f32>;
/// let device = Default::default();
/// let optimizer: PerParameterOptimizer = KradagradStarConfig::new().build();
/// let weight = Tensor::<B, 2>::random([6, 4], Distribution::Default, &device);
/// let grad = Tensor::<B, 2>::random([6, 4], Distribution::Default, &device);
/// // One step on one tensor, as Burn's `OptimizerAdaptor` calls it.
/// let (weight, state) = optimizer.step(0.1, weight, grad, None);
/// let state = state.expect("a state after the first step");
/// assert_eq!(state.step, 1);
/// assert_eq!(weight.dims(), [6, 4]);
/// ```
#[derive(Clone, Debug)]
pub struct PerParameterOptimizer {
    engine: Engine,
}

/// The KrADagrad* optimizer ([`KradagradStarConfig::build`](crate::KradagradStarConfig)).
pub type KradagradStar = PerParameterOptimizer;
/// The KrADagrad optimizer ([`KradagradConfig::build`](crate::KradagradConfig)).
pub type Kradagrad = PerParameterOptimizer;
/// The Shampoo optimizer ([`ShampooConfig::build`](crate::ShampooConfig)).
pub type Shampoo = PerParameterOptimizer;

impl PerParameterOptimizer {
    pub(crate) fn new(engine: Engine) -> Self {
        Self { engine }
    }

    /// The step on the parameter's `view` (its update's view: flat, or its
    /// [`rows_view`] view).
    fn step_in_view<B: Backend, const D: usize, const T: usize>(
        &self,
        lr: f64,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<PreconditionerState<B, D>>,
        view: [usize; T],
    ) -> (Tensor<B, D>, Option<PreconditionerState<B, D>>) {
        let engine = &self.engine;
        let dims = tensor.dims();
        let shape = dims.to_vec();
        let options = &engine.options;
        let layout = BlockLayout::new(&shape, options.block_size, options.merge_dims);
        let origin = engine.algorithm.origin(options);
        let state = match state {
            Some(state) => {
                state.check_fits(&layout, &origin, engine.algorithm.tracks_stale_dims());
                state.in_float_type(tensor.dtype())
            }
            None => engine.fresh_state(&layout, &tensor.device(), tensor.dtype()),
        };
        let rank = layout.rank();
        let stacking = Stacking::single(layout);
        let mut set = SetState {
            classes: match rank {
                0 => vec![],
                _ => vec![ClassState {
                    step: state.step,
                    groups: state.groups,
                    stale_dims: state.stale_dims,
                }],
            },
            graft: vec![state.graft.map(|t| reshape(t, view))],
            momentum: vec![state.momentum.map(|t| reshape(t, view))],
            steps: state.step,
        };
        let params = [ParamInput {
            shape,
            grad: reshape(grad, view),
            param: reshape(tensor, view),
        }];
        let param = engine
            .step(lr, &params, &stacking, &mut set)
            .pop()
            .expect("one parameter in, one out");
        // At merged rank 0 the parameter has no factors and no dims to flag.
        let (step, groups, stale_dims) = match set.classes.pop() {
            Some(class) => (class.step, class.groups, class.stale_dims),
            None => (set.steps, vec![], vec![]),
        };
        let state = PreconditionerState {
            step,
            groups,
            stale_dims,
            graft: set.graft.pop().flatten().map(|t| reshape(t, dims)),
            momentum: set.momentum.pop().flatten().map(|t| reshape(t, dims)),
            origin: Some(origin),
        };
        (reshape(param, dims), Some(state))
    }
}

impl<B: Backend> SimpleOptimizer<B> for PerParameterOptimizer {
    type State<const D: usize> = PreconditionerState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        match rows_view(&tensor.dims()) {
            None => {
                let numel = tensor.shape().num_elements();
                self.step_in_view(lr, tensor, grad, state, [numel])
            }
            Some(rows) => self.step_in_view(lr, tensor, grad, state, rows),
        }
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        state.to_device(device)
    }
}
