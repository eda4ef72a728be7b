//! A small ReLU MLP, deterministic data, model transfer between backends and
//! training helpers, shared by the cross-backend example and the training,
//! checkpoint and backend tests.

use burn::module::{Initializer, Module, ModuleVisitor, Param};
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::{GradientsParams, Optimizer};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::spd::float_dtype;

/// A fully connected ReLU network (`dims[0] -> dims[1] -> ... -> dims[last]`).
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    layers: Vec<Linear<B>>,
    activation: Relu,
}

impl<B: Backend> Mlp<B> {
    /// A network with Burn's default initialisation on `device` (backend RNG),
    /// materialised (see [`materialize`]).
    pub fn new(dims: &[usize], device: &B::Device) -> Self {
        let initializer = LinearConfig::new(1, 1).initializer;
        Self::with_initializer(dims, initializer, device)
    }

    /// [`Mlp::new`] with another weight initializer (e.g. He's
    /// `KaimingNormal { gain: sqrt(2) }` for deep ReLU networks).
    pub fn with_initializer(dims: &[usize], initializer: Initializer, device: &B::Device) -> Self {
        let layers = dims
            .windows(2)
            .map(|w| {
                LinearConfig::new(w[0], w[1])
                    .with_initializer(initializer.clone())
                    .init(device)
            })
            .collect();
        materialize(Self {
            layers,
            activation: Relu::new(),
        })
    }

    /// The network's output.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let last = self.layers.len() - 1;
        self.layers.iter().enumerate().fold(x, |x, (i, layer)| {
            let y = layer.forward(x);
            if i < last {
                self.activation.forward(y)
            } else {
                y
            }
        })
    }

    /// Mean squared error against `y`.
    pub fn mse(&self, x: Tensor<B, 2>, y: Tensor<B, 2>) -> Tensor<B, 1> {
        (self.forward(x) - y).square().mean()
    }
}

/// Runs every parameter's lazy initialiser now.
///
/// Burn 0.21 initialises parameters lazily, and a clone of a not yet
/// initialised parameter initialises *independently* (fresh random values):
/// `model.clone().into_record()` would then save other weights than `model`
/// trains with. Materialising first makes clones, records and the original
/// agree.
pub fn materialize<B: Backend, M: Module<B>>(module: M) -> M {
    struct Touch;
    impl<B: Backend> ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
    module
}

/// Moves a module to another backend through a full-precision record (the
/// backends' random generators differ, so this is how two backends start
/// from the same weights).
pub fn transfer<B1: Backend, B2: Backend, M1: Module<B1>, M2: Module<B2>>(
    from: M1,
    into: M2,
    device: &B2::Device,
) -> M2 {
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder.record(from.into_record(), ()).expect("record a module");
    let record = Recorder::<B2>::load(&recorder, bytes, device).expect("load a module record");
    into.load_record(record)
}

/// A deterministic regression problem on `[-1, 1]^inputs`:
/// `y_j = sin(3 x . w_j)` for fixed random directions `w_j`, made on the host
/// from `seed` so every backend sees the same numbers.
pub fn regression_data<B: Backend>(
    n: usize,
    inputs: usize,
    outputs: usize,
    seed: u64,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let (x, y) = regression_values(n, inputs, outputs, seed);
    let dtype = float_dtype::<B>();
    (
        Tensor::from_data(TensorData::new(x, [n, inputs]), (device, dtype)),
        Tensor::from_data(TensorData::new(y, [n, outputs]), (device, dtype)),
    )
}

/// [`regression_data`]'s numbers on the host: `n * inputs` inputs and
/// `n * outputs` targets, row-major.
pub fn regression_values(n: usize, inputs: usize, outputs: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let x: Vec<f64> = (0..n * inputs).map(|_| rng.random_range(-1.0..1.0)).collect();
    let w: Vec<f64> = (0..inputs * outputs)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let y: Vec<f64> = (0..n)
        .flat_map(|i| {
            let (x, w) = (&x, &w);
            (0..outputs).map(move |j| {
                (3.0 * (0..inputs)
                    .map(|k| x[i * inputs + k] * w[k * outputs + j])
                    .sum::<f64>())
                .sin()
            })
        })
        .collect();
    (x, y)
}

/// Reads a one-element tensor (a host synchronisation: for examples and tests).
pub fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    t.into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("float data")[0]
}

/// Full-batch training for `steps` steps; returns the model, the optimizer
/// and the loss before each step.
pub fn train<B: AutodiffBackend, O: Optimizer<Mlp<B>, B>>(
    mut model: Mlp<B>,
    mut optimizer: O,
    data: &(Tensor<B, 2>, Tensor<B, 2>),
    lr: f64,
    steps: usize,
) -> (Mlp<B>, O, Vec<f64>) {
    let mut losses = Vec::with_capacity(steps);
    for _ in 0..steps {
        let loss = model.mse(data.0.clone(), data.1.clone());
        losses.push(scalar(loss.clone().inner()));
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(lr, model, grads);
    }
    (model, optimizer, losses)
}
