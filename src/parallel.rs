//! Data-parallel training on several devices, for the multi-device tests
//! and example: a regression MLP whose loss adds up over shards, its data,
//! burn-train's `Learner` under an `ExecutionStrategy`, the same strategies
//! as plain loops, and the optimizer state read back for comparison.
//!
//! The loss is a *sum* of squared errors scaled by one fixed factor (one over
//! the global batch's element count), not a per-shard mean: burn-train adds
//! the gradients of the shards, so only a loss that adds up the same way
//! makes n devices at batch `b` step exactly like one device at batch `n b`
//! (up to the order of float additions).

use std::path::Path;
use std::sync::{Arc, Mutex};

use burn::collective::{all_reduce, PeerId, ReduceOperation};
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::InMemDataset;
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{GradientsAccumulator, GradientsParams, MultiGradientsParams, Optimizer};
use burn::prelude::DeviceOps;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn::train::{
    ExecutionStrategy, InferenceStep, Learner, RegressionOutput, SupervisedTraining, TrainOutput, TrainStep,
};
use kradagrad_burn::{BatchedOptimizer, PerParameterOptimizer, PreconditionerState};

use crate::mlp::{regression_values, scalar, Mlp};

/// One regression sample, with the shard it belongs to.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Inputs.
    pub x: Vec<f32>,
    /// Targets.
    pub y: Vec<f32>,
    /// The device (shard) that trains on it under data parallelism.
    pub shard: usize,
}

/// Per-batch losses as the model computed them, under the shard of the
/// batch's first sample (`usize::MAX` for a batch that spans shards).
#[derive(Clone, Default, Debug)]
pub struct LossLog(Arc<Mutex<Vec<(usize, f64)>>>);

impl LossLog {
    fn push(&self, shard: usize, loss: f64) {
        self.0.lock().expect("loss log").push((shard, loss));
    }

    /// The losses logged for `shard`, in order.
    pub fn of(&self, shard: usize) -> Vec<f64> {
        let log = self.0.lock().expect("loss log");
        log.iter().filter(|(s, _)| *s == shard).map(|(_, l)| *l).collect()
    }

    /// The per-step losses of a run over `shards` shards: each step's shard
    /// losses added up (for one shard: its losses).
    pub fn per_step(&self, shards: usize) -> Vec<f64> {
        let all = self.of(usize::MAX);
        if !all.is_empty() {
            return all;
        }
        let per_shard: Vec<_> = (0..shards).map(|s| self.of(s)).collect();
        (0..per_shard[0].len())
            .map(|k| per_shard.iter().map(|l| l[k]).sum())
            .collect()
    }
}

/// Batches [`Sample`]s.
#[derive(Clone, Debug)]
pub struct SampleBatcher {
    /// The loss's fixed factor (see the [module docs](self)).
    pub scale: f32,
    /// Where the model logs its training losses.
    pub log: LossLog,
}

/// A batch of [`Sample`]s on one device.
#[derive(Clone, Debug)]
pub struct SampleBatch<B: Backend> {
    x: Tensor<B, 2>,
    y: Tensor<B, 2>,
    shard: usize,
    scale: f32,
    log: LossLog,
}

impl<B: Backend> Batcher<B, Sample, SampleBatch<B>> for SampleBatcher {
    fn batch(&self, items: Vec<Sample>, device: &B::Device) -> SampleBatch<B> {
        let n = items.len();
        let (inputs, outputs) = (items[0].x.len(), items[0].y.len());
        let shard = match items.iter().all(|s| s.shard == items[0].shard) {
            true => items[0].shard,
            false => usize::MAX,
        };
        let x: Vec<f32> = items.iter().flat_map(|s| s.x.iter().copied()).collect();
        let y: Vec<f32> = items.iter().flat_map(|s| s.y.iter().copied()).collect();
        SampleBatch {
            x: Tensor::from_data(TensorData::new(x, [n, inputs]), device),
            y: Tensor::from_data(TensorData::new(y, [n, outputs]), device),
            shard,
            scale: self.scale,
            log: self.log.clone(),
        }
    }
}

impl<B: Backend> SampleBatch<B> {
    /// The same batch on `device`.
    pub fn to_device(self, device: &B::Device) -> Self {
        Self {
            x: self.x.to_device(device),
            y: self.y.to_device(device),
            ..self
        }
    }
}

/// An [`Mlp`] trained on scaled sums of squared errors.
#[derive(Module, Debug)]
pub struct Regressor<B: Backend> {
    /// The network.
    pub mlp: Mlp<B>,
}

impl<B: Backend> Regressor<B> {
    /// The loss of a batch, and the network's output.
    pub fn loss(&self, batch: &SampleBatch<B>) -> (Tensor<B, 1>, Tensor<B, 2>) {
        let output = self.mlp.forward(batch.x.clone());
        let loss = (output.clone() - batch.y.clone())
            .square()
            .sum()
            .mul_scalar(batch.scale);
        (loss, output)
    }
}

impl<B: AutodiffBackend> TrainStep for Regressor<B> {
    type Input = SampleBatch<B>;
    type Output = RegressionOutput<B>;

    fn step(&self, batch: SampleBatch<B>) -> TrainOutput<RegressionOutput<B>> {
        let (loss, output) = self.loss(&batch);
        batch.log.push(batch.shard, scalar(loss.clone().inner()));
        let grads = loss.backward();
        TrainOutput::new(self, grads, RegressionOutput::new(loss, output, batch.y))
    }
}

impl<B: Backend> InferenceStep for Regressor<B> {
    type Input = SampleBatch<B>;
    type Output = RegressionOutput<B>;

    fn step(&self, batch: SampleBatch<B>) -> RegressionOutput<B> {
        let (loss, output) = self.loss(&batch);
        RegressionOutput::new(loss, output, batch.y)
    }
}

/// A data-parallel regression problem: `shards` shards of `steps` batches
/// of `batch` samples each, and the samples in the order one device must
/// see them to step as the shards together do.
#[derive(Clone, Debug)]
pub struct Problem {
    /// Layer widths of the network.
    pub dims: Vec<usize>,
    /// Samples per shard and step.
    pub batch: usize,
    /// Number of shards (devices).
    pub shards: usize,
    /// Steps in one epoch.
    pub steps: usize,
}

impl Problem {
    /// The samples as burn-train splits them over `shards` devices: shard
    /// `s` holds the `s`-th contiguous part.
    pub fn sharded_samples(&self, seed: u64) -> Vec<Sample> {
        let (inputs, outputs) = (self.dims[0], *self.dims.last().expect("layer widths"));
        let per_shard = self.batch * self.steps;
        let n = per_shard * self.shards;
        let (x, y) = regression_values(n, inputs, outputs, seed);
        (0..n)
            .map(|i| Sample {
                x: x[i * inputs..(i + 1) * inputs]
                    .iter()
                    .map(|&v| v as f32)
                    .collect(),
                y: y[i * outputs..(i + 1) * outputs]
                    .iter()
                    .map(|&v| v as f32)
                    .collect(),
                shard: i / per_shard,
            })
            .collect()
    }

    /// The same samples reordered for one device at batch `shards * batch`:
    /// its step `k` takes every shard's step-`k` batch, shard by shard.
    pub fn one_device_samples(&self, sharded: &[Sample]) -> Vec<Sample> {
        let per_shard = self.batch * self.steps;
        (0..self.steps)
            .flat_map(|k| {
                (0..self.shards).flat_map(move |s| {
                    let start = s * per_shard + k * self.batch;
                    start..start + self.batch
                })
            })
            .map(|i| sharded[i].clone())
            .collect()
    }

    /// The loss's fixed factor: one over the global batch's element count.
    pub fn scale(&self) -> f32 {
        let outputs = *self.dims.last().expect("layer widths");
        1.0 / (self.shards * self.batch * outputs) as f32
    }

    /// A fresh network, seeded.
    pub fn model<B: Backend>(&self, seed: u64, device: &B::Device) -> Regressor<B> {
        B::seed(device, seed);
        Regressor {
            mlp: Mlp::new(&self.dims, device),
        }
    }
}

/// What a training run leaves: the per-step losses, the trained
/// parameters and the optimizer state, read back.
#[derive(Clone, Debug)]
pub struct Run {
    /// Loss of each step (the shards' losses added up).
    pub losses: Vec<f64>,
    /// Every parameter, in visit order.
    pub params: Vec<f64>,
    /// Every optimizer state tensor, one list per tensor (empty where a
    /// run cannot read it).
    pub state: Vec<Vec<f64>>,
}

impl Run {
    /// The gaps between two runs, as `[losses, parameters, state]`: the
    /// largest [`max_gap`] of losses and of parameters, and the largest
    /// [`tensor_gap`] over the state's tensors.
    pub fn gaps(&self, other: &Run) -> [f64; 3] {
        let state = match self.state.len() == other.state.len() {
            true => self
                .state
                .iter()
                .zip(&other.state)
                .map(|(a, b)| tensor_gap(a, b))
                .fold(0.0, f64::max),
            false => f64::INFINITY,
        };
        [
            max_gap(&self.losses, &other.losses),
            max_gap(&self.params, &other.params),
            state,
        ]
    }
}

/// The largest `|a - b| / max(1, |a|, |b|)` over two equally long lists
/// (infinite if their lengths differ).
pub fn max_gap(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / x.abs().max(y.abs()).max(1.0))
        .fold(0.0, f64::max)
}

/// `||a - b|| / ||a||` (Frobenius; infinite if the lengths differ): the
/// gap of a state tensor, whose entries span many magnitudes (the inverse
/// statistics of KrAD, the roots of Shampoo).
pub fn tensor_gap(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    let diff = norm(&mut a.iter().zip(b).map(|(x, y)| x - y));
    diff / norm(&mut a.iter().copied()).max(f64::MIN_POSITIVE)
}

/// How a plain loop spreads a step over devices, as burn-train's
/// `MultiDeviceOptim` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gather {
    /// Every shard's gradients move to the first device and add up there;
    /// `Optimizer::step` (`OptimMainDevice`).
    MainDevice,
    /// Each shard's gradients stay on their device; `Optimizer::step_multi`
    /// adds them up per parameter (`OptimSharded`).
    Sharded,
}

/// A training loop over `devices` (one shard each, in order), stepping as
/// `gather` says; with one device, a plain single-device loop.
pub fn plain_run<B, O>(
    problem: &Problem,
    devices: &[B::Device],
    gather: Gather,
    mut optimizer: O,
    lr: f64,
    state_of: impl Fn(&O, &Regressor<B>) -> Vec<Vec<f64>>,
) -> Run
where
    B: AutodiffBackend,
    O: Optimizer<Regressor<B>, B>,
{
    let main = &devices[0];
    let log = LossLog::default();
    let batcher = SampleBatcher {
        scale: problem.scale(),
        log: log.clone(),
    };
    let sharded = problem.sharded_samples(7);
    let samples = match devices.len() {
        1 => problem.one_device_samples(&sharded),
        _ => sharded,
    };
    let per_device = samples.len() / devices.len();
    let batch = samples.len() / devices.len() / problem.steps;
    let mut model = problem.model::<B>(11, main);
    let mut losses = vec![];
    for k in 0..problem.steps {
        let mut accumulator = GradientsAccumulator::new();
        let mut multi = MultiGradientsParams::default();
        let mut loss = 0.0;
        for (d, device) in devices.iter().enumerate() {
            let start = d * per_device + k * batch;
            let items = samples[start..start + batch].to_vec();
            let replica = model.clone().fork(device);
            let (l, _) = replica.loss(&batcher.batch(items, device));
            loss += scalar(l.clone().inner());
            let grads = GradientsParams::from_grads(l.backward(), &replica);
            match gather {
                Gather::MainDevice => accumulator.accumulate(&model, grads.to_device(main, &model)),
                Gather::Sharded => multi.grads.push((grads, device.to_id())),
            }
        }
        losses.push(loss);
        model = match gather {
            Gather::MainDevice => optimizer.step(lr, model, accumulator.grads()),
            Gather::Sharded => optimizer.step_multi(lr, model, multi),
        };
    }
    Run {
        state: state_of(&optimizer, &model),
        params: module_values(&model),
        losses,
    }
}

/// One epoch of burn-train's `Learner` under `strategy` (one shard per
/// device of the strategy).
pub fn learner_run<B, O>(
    problem: &Problem,
    strategy: ExecutionStrategy<B>,
    optimizer: O,
    lr: f64,
    directory: &Path,
) -> Run
where
    B: AutodiffBackend,
    O: Optimizer<Regressor<B>, B> + 'static,
{
    let device = strategy.main_device().clone();
    let shards = match &strategy {
        ExecutionStrategy::MultiDevice(devices, _) => devices.len(),
        _ => 1,
    };
    let log = LossLog::default();
    let batcher = SampleBatcher {
        scale: problem.scale(),
        log: log.clone(),
    };
    let sharded = problem.sharded_samples(7);
    let samples = match shards {
        1 => problem.one_device_samples(&sharded),
        _ => sharded,
    };
    let batch = samples.len() / shards / problem.steps;
    let train = DataLoaderBuilder::new(batcher.clone())
        .batch_size(batch)
        .build(InMemDataset::new(samples));
    let valid = DataLoaderBuilder::new(batcher)
        .batch_size(batch)
        .build(InMemDataset::new(problem.sharded_samples(8)[..batch].to_vec()));
    let learner = Learner::new(problem.model::<B>(11, &device), optimizer, lr);
    let trained = SupervisedTraining::new(directory, train, valid)
        .with_training_strategy(strategy.into())
        .num_epochs(1)
        .launch(learner)
        .model;
    let _ = std::fs::remove_dir_all(directory);
    Run {
        losses: log.per_step(problem.shards.min(shards)),
        params: module_values(&trained),
        state: vec![],
    }
}

/// Every float parameter of a module, read back as f64, in visit order.
pub fn module_values<B: Backend, M: Module<B>>(module: &M) -> Vec<f64> {
    struct Values(Vec<f64>);
    impl<B: Backend> ModuleVisitor<B> for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.extend(host(param.val().into_data()));
        }
    }
    let mut values = Values(vec![]);
    module.visit(&mut values);
    values.0
}

fn host(data: TensorData) -> Vec<f64> {
    data.convert::<f64>().to_vec::<f64>().expect("float data")
}

/// The per-parameter front end's state (Burn's `OptimizerAdaptor` record),
/// read back parameter by parameter in the module's visit order (parameters
/// of rank 1 and 2).
pub fn adaptor_state<B, M>(
    optimizer: &OptimizerAdaptor<PerParameterOptimizer, M, B>,
    module: &M,
) -> Vec<Vec<f64>>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
{
    struct Ranks(Vec<(ParamId, usize)>);
    impl<B: Backend> ModuleVisitor<B> for Ranks {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push((param.id, D));
        }
    }
    let mut ranks = Ranks(vec![]);
    module.visit(&mut ranks);
    let mut records = optimizer.to_record();
    let mut values = vec![];
    for (id, rank) in ranks.0 {
        let Some(record) = records.remove(&id) else {
            continue;
        };
        values.extend(match rank {
            1 => preconditioner_values::<B::InnerBackend, 1>(&record.into_state()),
            2 => preconditioner_values::<B::InnerBackend, 2>(&record.into_state()),
            _ => panic!("adaptor_state reads parameters of rank 1 and 2, not {rank}"),
        });
    }
    values
}

/// Every tensor of a per-parameter state: statistics and roots, then the
/// graft and momentum buffers.
fn preconditioner_values<B: Backend, const D: usize>(state: &PreconditionerState<B, D>) -> Vec<Vec<f64>> {
    let factors = state
        .groups
        .iter()
        .flat_map(|g| g.statistics.iter().chain(&g.roots));
    let buffers = [&state.graft, &state.momentum].into_iter().flatten();
    factors
        .map(|t| host(t.to_data()))
        .chain(buffers.map(|t| host(t.to_data())))
        .collect()
}

/// The whole-model front end's state, read back (its factors by class and
/// group, then its buffers).
pub fn batched_state<B, M>(optimizer: &BatchedOptimizer<M, B>, _module: &M) -> Vec<Vec<f64>>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
{
    let Some(state) = optimizer.state() else {
        return vec![];
    };
    let factors = state
        .classes
        .iter()
        .flat_map(|c| &c.groups)
        .flat_map(|g| g.statistics.iter().chain(&g.roots));
    let buffers = state.graft.iter().chain(&state.momentum).flatten();
    factors
        .map(|t| host(t.to_data()))
        .chain(buffers.map(|t| host(t.to_data())))
        .collect()
}

/// A comparison of one run on several devices against one device: what ran,
/// and [`Run::gaps`].
#[derive(Clone, Debug)]
pub struct Gap {
    /// Optimizer, front end, loop and strategy.
    pub what: String,
    /// `[losses, parameters, state]` (state `NaN` where not read).
    pub gaps: [f64; 3],
}

/// Every front end, optimizer and strategy of plain loops and `Learner`s on
/// `devices` against one device (`devices[0]`), for `problem`.
pub fn multi_device_gaps<B: AutodiffBackend>(
    problem: &Problem,
    devices: &[B::Device],
    directory: &Path,
) -> Vec<Gap>
where
    B::Device: 'static,
{
    use kradagrad_burn::{KradagradStarConfig, ShampooConfig};
    let star = KradagradStarConfig::new()
        .with_block_size(Some(16))
        .with_preconditioning_compute_steps(2);
    // f32 Shampoo's inverse root amplifies round-off along eigenvalues near
    // `matrix_eps` (condition up to 1 / eps): at the default 1e-6 a change in
    // the order of two additions moved its roots by 2e-4 (Frobenius,
    // relative). A larger eps keeps the comparison about the devices.
    let shampoo = ShampooConfig::new()
        .with_matrix_eps(1e-2)
        .with_block_size(Some(16))
        .with_preconditioning_compute_steps(2);
    let mut gaps = vec![];
    let mut front_end = |what: &str, gaps_of: Vec<Gap>| {
        gaps.extend(gaps_of.into_iter().map(|g| Gap {
            what: format!("{what}, {}", g.what),
            ..g
        }));
    };
    let (init, batched) = (adaptor_state::<B, Regressor<B>>, batched_state::<B, Regressor<B>>);
    front_end(
        "KrADagrad* per-parameter",
        front_end_gaps(problem, devices, directory, || star.init(), init),
    );
    front_end(
        "KrADagrad* batched",
        front_end_gaps(problem, devices, directory, || star.init_batched(), batched),
    );
    front_end(
        "Shampoo per-parameter",
        front_end_gaps(problem, devices, directory, || shampoo.init(), init),
    );
    front_end(
        "Shampoo batched",
        front_end_gaps(problem, devices, directory, || shampoo.init_batched(), batched),
    );
    gaps
}

/// One optimizer through one front end, at lr 0.05: plain loops on
/// `devices` gathering both ways against a plain loop on the first device,
/// a single-device `Learner` against that loop, and `Learner`s on `devices`
/// under both `MultiDeviceOptim` modes against the single-device one.
fn front_end_gaps<B, O>(
    problem: &Problem,
    devices: &[B::Device],
    directory: &Path,
    optimizer: impl Fn() -> O,
    state_of: impl Fn(&O, &Regressor<B>) -> Vec<Vec<f64>> + Copy,
) -> Vec<Gap>
where
    B: AutodiffBackend,
    O: Optimizer<Regressor<B>, B> + 'static,
{
    use burn::train::MultiDeviceOptim;
    let lr = 0.05;
    // The state gap is `NaN` where the reference's state was not read.
    let gap = |what: String, reference: &Run, run: &Run| {
        let mut gaps = reference.gaps(run);
        if reference.state.is_empty() {
            gaps[2] = f64::NAN;
        }
        Gap { what, gaps }
    };
    let one = std::slice::from_ref(&devices[0]);
    let reference = plain_run(problem, one, Gather::MainDevice, optimizer(), lr, state_of);
    let mut gaps = vec![];
    for gather in [Gather::MainDevice, Gather::Sharded] {
        let run = plain_run(problem, devices, gather, optimizer(), lr, state_of);
        gaps.push(gap(format!("plain loop, {gather:?}"), &reference, &run));
    }
    let single = ExecutionStrategy::SingleDevice(devices[0].clone());
    let reference_learner = learner_run(problem, single, optimizer(), lr, &directory.join("single"));
    let plain = Run {
        state: vec![],
        ..reference
    };
    gaps.push(gap(
        "Learner single vs plain loop".into(),
        &plain,
        &reference_learner,
    ));
    for optim in [MultiDeviceOptim::OptimMainDevice, MultiDeviceOptim::OptimSharded] {
        let strategy = ExecutionStrategy::MultiDevice(devices.to_vec(), optim);
        let run = learner_run(problem, strategy, optimizer(), lr, &directory.join("multi"));
        gaps.push(gap(format!("Learner, {optim:?}"), &reference_learner, &run));
    }
    gaps
}

/// Sums every gradient over the burn-collective peers, parameter by
/// parameter in the module's visit order (the same on every replica, in
/// every process), as `peer`.
pub fn all_reduce_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
    grads: GradientsParams,
    module: &M,
    peer: usize,
) -> GradientsParams {
    struct Reduce {
        grads: GradientsParams,
        peer: PeerId,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Reduce {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                let primitive = grad.into_primitive().tensor();
                let sum = all_reduce::<B::InnerBackend>(self.peer, primitive, ReduceOperation::Sum)
                    .unwrap_or_else(|error| panic!("gradient all-reduce failed: {error:?}"));
                let sum = Tensor::<B::InnerBackend, D>::from_primitive(TensorPrimitive::Float(sum));
                self.grads.register(param.id, sum);
            }
        }
    }
    let mut reduce = Reduce {
        grads,
        peer: PeerId(peer as u32),
    };
    module.visit(&mut reduce);
    reduce.grads
}

/// One replica of data-parallel training over burn-collective, as peer
/// `peer` of `problem.shards`: it trains on its shard, sums the gradients
/// over the peers every step, and steps its own copy of the model; its
/// losses are its shard's (a step's loss is their sum over the peers). The caller registers the peer with burn-collective first
/// (the inner backend). Every replica ends with the same model.
///
/// With `problem.shards == 1` every replica trains on the one shard and
/// sums no gradients: the replicas hold the same gradients bit for bit, as after
/// an all-reduce, without the all-reduce's order of additions.
pub fn replica_run<B, O>(
    problem: &Problem,
    peer: usize,
    mut model: Regressor<B>,
    mut optimizer: O,
    lr: f64,
    state_of: impl Fn(&O, &Regressor<B>) -> Vec<Vec<f64>>,
) -> Run
where
    B: AutodiffBackend,
    O: Optimizer<Regressor<B>, B>,
{
    let batcher = SampleBatcher {
        scale: problem.scale(),
        log: LossLog::default(),
    };
    let samples = problem.sharded_samples(7);
    let per_shard = problem.batch * problem.steps;
    let device = model.devices()[0].clone();
    let mut losses = vec![];
    for k in 0..problem.steps {
        let shard = peer % problem.shards;
        let start = shard * per_shard + k * problem.batch;
        let batch = batcher.batch(samples[start..start + problem.batch].to_vec(), &device);
        let (loss, _) = model.loss(&batch);
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        if problem.shards > 1 {
            grads = all_reduce_gradients(grads, &model, peer);
        }
        losses.push(scalar(loss.inner()));
        model = optimizer.step(lr, model, grads);
    }
    Run {
        state: state_of(&optimizer, &model),
        params: module_values(&model),
        losses,
    }
}

/// `peers` replicas of [`replica_run`] on `device`, one thread each, from
/// one initial model (built before the threads: Burn's seed is global to a
/// backend), as one burn-collective group (registered here, finished
/// after; the collective server of the inner backend is reset first).
/// `optimizer(peer)` builds each replica's optimizer. Returns each
/// replica's run, by peer, with the per-step losses of the whole batch
/// (the shards' losses added up).
pub fn collective_replicas<B, O>(
    problem: &Problem,
    peers: usize,
    device: &B::Device,
    optimizer: impl Fn(usize) -> O + Sync,
    lr: f64,
    state_of: impl Fn(&O, &Regressor<B>) -> Vec<Vec<f64>> + Sync,
) -> Vec<Run>
where
    B: AutodiffBackend,
    O: Optimizer<Regressor<B>, B>,
{
    use burn::collective::{finish_collective, register, reset_collective, CollectiveConfig};
    reset_collective::<B::InnerBackend>();
    let config = CollectiveConfig::default().with_num_devices(peers);
    let model = problem.model::<B>(11, device);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..peers)
            .map(|peer| {
                let (config, optimizer, state_of) = (config.clone(), &optimizer, &state_of);
                // A replica of its own: fresh autodiff leaves with the same
                // ids. Clones share their leaves, and Burn 0.21's autodiff
                // can deadlock when threads run graphs on shared leaves.
                let model = Regressor::<B>::from_inner(model.valid());
                scope.spawn(move || {
                    let id = PeerId(peer as u32);
                    register::<B::InnerBackend>(id, device.clone(), config)
                        .unwrap_or_else(|error| panic!("peer {peer} could not register: {error:?}"));
                    let run = replica_run(problem, peer, model, optimizer(peer), lr, state_of);
                    finish_collective::<B::InnerBackend>(id)
                        .unwrap_or_else(|error| panic!("peer {peer} could not finish: {error:?}"));
                    run
                })
            })
            .collect();
        let mut runs: Vec<Run> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|payload| std::panic::resume_unwind(payload))
            })
            .collect();
        // Each step's loss: the shards' losses added up.
        if problem.shards > 1 {
            let totals: Vec<f64> = (0..problem.steps)
                .map(|k| runs.iter().map(|r| r.losses[k]).sum())
                .collect();
            for run in &mut runs {
                run.losses = totals.clone();
            }
        }
        runs
    })
}
