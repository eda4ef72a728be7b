//! Learning-rate schedules that reach 0: a step at lr 0 is a valid step, as in
//! Burn's own optimizers. The parameter keeps its value; the state advances
//! exactly as it would at any other rate (the state never reads the rate).
//! Burn's `CosineAnnealingLrScheduler` ends at `min_lr = 0` by default, in a
//! plain loop and in burn-train's `Learner`.

mod common;

use burn::backend::{Autodiff, NdArray};
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{GradientsParams, Optimizer, SimpleOptimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use burn::train::{InferenceStep, Learner, RegressionOutput, SupervisedTraining, TrainOutput, TrainStep};
use kradagrad_burn::{
    Grafting, KradagradConfig, KradagradStarConfig, ShampooConfig, WeightDecayConfig, WeightDecayStyle,
};
use kradagrad_burn_suite::mlp::Mlp;

type B = NdArray<f64>;
type AB = Autodiff<NdArray<f32>>;

/// One step at `lr` and at 0.1 from the same state: the parameter stays put
/// at lr 0 and the two new states are equal entry for entry.
fn zero_rate_step<O: SimpleOptimizer<B, State<2> = kradagrad_burn::PreconditionerState<B, 2>>>(
    name: &str,
    optimizer: &O,
) {
    let device = Default::default();
    let mut param: Tensor<B, 2> = common::normal([6, 5], 1, &device);
    let mut state = None;
    // A few steps first, so that momentum, graft and factors are not fresh.
    for seed in 2..5 {
        let (next, next_state) = optimizer.step(0.1, param, common::normal([6, 5], seed, &device), state);
        (param, state) = (next, next_state);
    }
    let grad = common::normal([6, 5], 9, &device);
    let (at_zero, zero_state) = optimizer.step(0.0, param.clone(), grad.clone(), state.clone());
    let (_, moving_state) = optimizer.step(0.1, param.clone(), grad, state.clone());
    assert_eq!(
        at_zero.to_data(),
        param.to_data(),
        "{name}: lr 0 moved the parameter"
    );
    let (zero_state, moving_state) = (zero_state.unwrap(), moving_state.unwrap());
    assert_eq!(
        zero_state.step,
        state.unwrap().step + 1,
        "{name}: the step counter"
    );
    assert_eq!(
        common::snapshot(&zero_state),
        common::snapshot(&moving_state),
        "{name}: the state at lr 0 differs from the state at lr 0.1"
    );
}

#[test]
fn a_zero_rate_keeps_the_parameter_and_advances_the_state() {
    let with_everything = |c: KradagradStarConfig| {
        c.with_grafting(Some(Grafting::Adam { epsilon: 1e-6 }))
            .with_weight_decay(Some(
                WeightDecayConfig::new(0.01).with_style(WeightDecayStyle::Decoupled),
            ))
            .with_preconditioning_compute_steps(2)
    };
    zero_rate_step("KrADagrad*", &with_everything(KradagradStarConfig::new()).build());
    zero_rate_step(
        "KrADagrad",
        &KradagradConfig::new()
            .with_weight_decay(Some(WeightDecayConfig::new(0.01)))
            .with_preconditioning_compute_steps(2)
            .build(),
    );
    zero_rate_step(
        "Shampoo",
        &ShampooConfig::new()
            .with_grafting(Some(Grafting::AdaGrad { epsilon: 1e-6 }))
            .with_preconditioning_compute_steps(2)
            .build(),
    );
}

/// `steps` steps of a small MLP under Burn's cosine schedule ending at 0; the
/// last step (lr exactly 0) must leave the model as it was.
fn cosine_to_zero<O: Optimizer<Mlp<AB>, AB>>(name: &str, mut optimizer: O) {
    let device = Default::default();
    let steps = 12;
    let (mut model, (x, y)) = common::problem::<AB>(&device);
    let mut schedule = CosineAnnealingLrSchedulerConfig::new(0.05, steps - 1)
        .init()
        .expect("valid schedule");
    let mut last = (f64::NAN, vec![]);
    for _ in 0..steps {
        let lr = LrScheduler::step(&mut schedule);
        let before = common::module_values(&model);
        let grads = GradientsParams::from_grads(model.mse(x.clone(), y.clone()).backward(), &model);
        model = optimizer.step(lr, model, grads);
        last = (lr, before);
    }
    let (lr, before) = last;
    assert_eq!(lr, 0.0, "the schedule ends at 0");
    assert_eq!(
        common::module_values(&model),
        before,
        "{name}: lr 0 moved the model"
    );
}

#[test]
fn a_cosine_schedule_to_zero_runs_in_a_loop() {
    cosine_to_zero("KrADagrad*", KradagradStarConfig::new().init());
    cosine_to_zero("KrADagrad", KradagradConfig::new().init());
    cosine_to_zero("Shampoo", ShampooConfig::new().init());
    cosine_to_zero("KrADagrad* batched", KradagradStarConfig::new().init_batched());
    cosine_to_zero("Shampoo batched", ShampooConfig::new().init_batched());
}

// ---------------------------------------------------------------- Learner

/// A regression pair: 4 inputs, 1 target.
#[derive(Clone, Debug)]
struct Pair {
    x: [f32; 4],
    y: f32,
}

#[derive(Clone, Debug)]
struct PairBatch<B: Backend> {
    x: Tensor<B, 2>,
    y: Tensor<B, 2>,
}

#[derive(Clone, Default)]
struct PairBatcher;

impl<B: Backend> Batcher<B, Pair, PairBatch<B>> for PairBatcher {
    fn batch(&self, items: Vec<Pair>, device: &B::Device) -> PairBatch<B> {
        let n = items.len();
        let x: Vec<f32> = items.iter().flat_map(|p| p.x).collect();
        let y: Vec<f32> = items.iter().map(|p| p.y).collect();
        PairBatch {
            x: Tensor::from_data(TensorData::new(x, [n, 4]), device),
            y: Tensor::from_data(TensorData::new(y, [n, 1]), device),
        }
    }
}

#[derive(Module, Debug)]
struct Regressor<B: Backend> {
    layer: Linear<B>,
}

impl<B: Backend> Regressor<B> {
    fn regress(&self, batch: PairBatch<B>) -> RegressionOutput<B> {
        let output = self.layer.forward(batch.x);
        let loss = (output.clone() - batch.y.clone()).square().mean();
        RegressionOutput::new(loss, output, batch.y)
    }
}

impl<B: AutodiffBackend> TrainStep for Regressor<B> {
    type Input = PairBatch<B>;
    type Output = RegressionOutput<B>;

    fn step(&self, batch: PairBatch<B>) -> TrainOutput<RegressionOutput<B>> {
        let output = self.regress(batch);
        TrainOutput::new(self, output.loss.backward(), output)
    }
}

impl<B: Backend> InferenceStep for Regressor<B> {
    type Input = PairBatch<B>;
    type Output = RegressionOutput<B>;

    fn step(&self, batch: PairBatch<B>) -> RegressionOutput<B> {
        self.regress(batch)
    }
}

/// 64 pairs of a noiseless linear map.
fn pairs() -> Vec<Pair> {
    (0..64)
        .map(|i| {
            let x = [0, 1, 2, 3].map(|j| ((i * 4 + j) as f32 * 0.37).sin());
            Pair {
                x,
                y: x[0] - 2.0 * x[1] + 0.5 * x[3],
            }
        })
        .collect()
}

/// One epoch of 4 batches under a cosine schedule whose last step is at
/// lr 0, through burn-train's `Learner`.
fn learner_to_zero<O: Optimizer<Regressor<AB>, AB> + 'static>(name: &str, optimizer: O) {
    let device = Default::default();
    AB::seed(&device, 3);
    let train = DataLoaderBuilder::new(PairBatcher)
        .batch_size(16)
        .build(InMemDataset::new(pairs()));
    let valid = DataLoaderBuilder::new(PairBatcher)
        .batch_size(64)
        .build(InMemDataset::new(pairs()));
    let schedule = CosineAnnealingLrSchedulerConfig::new(0.05, 3)
        .init()
        .expect("valid schedule");
    let directory = common::temp_path(&format!("learner_to_zero_{name}"));
    let model = Regressor::<AB> {
        layer: LinearConfig::new(4, 1).init(&device),
    };
    let learner = Learner::new(model, optimizer, schedule);
    let trained = SupervisedTraining::new(&directory, train, valid)
        .num_epochs(1)
        .launch(learner)
        .model;
    let values = common::module_values(&trained);
    assert!(values.iter().all(|v| v.is_finite()), "{name}: {values:?}");
    let _ = std::fs::remove_dir_all(directory);
}

#[test]
fn a_cosine_schedule_to_zero_runs_in_a_learner() {
    learner_to_zero("kradagrad_star", KradagradStarConfig::new().init());
    learner_to_zero("kradagrad_batched", KradagradConfig::new().init_batched());
}
