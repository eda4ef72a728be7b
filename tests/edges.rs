//! The edges of a step on burn-ndarray in f64 (the one float type of this
//! process), bitwise where the rule is exact: a skipped step on a root
//! refresh leaves no root stale, a state names the optimizer and layout that
//! wrote it (every pair of optimizers, both front ends), KrADagrad's pending
//! roots survive a save and load, and in the whole-model front end a
//! parameter may skip steps (a branch not taken, a frozen or unfrozen layer). Shampoo's
//! EMA statistics, and the float-type rule, are checked on every backend
//! (tests/common).

mod common;

use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, Param};
use burn::optim::{GradientsParams, Optimizer, SimpleOptimizer};
use burn::record::{BinBytesRecorder, DoublePrecisionSettings, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use kradagrad_burn::{Grafting, KradagradConfig, KradagradStarConfig, ShampooConfig};
use kradagrad_burn_suite::mlp::{train, Mlp};

type B = NdArray<f64>;
type AB = Autodiff<NdArray<f64>>;

// ---------------------------------------------------------------- skipped steps

/// One `[4, 3]` weight: merged rank 2, so KrADagrad updates one of two dims
/// per statistics step and keeps the other's root pending.
#[derive(Module, Debug)]
struct Weight<B: burn::tensor::backend::Backend> {
    w: Param<Tensor<B, 2>>,
}

/// KrADagrad with statistics on even steps and roots every third step (its
/// counter starts at 0): step 3 refreshes the root of dim 0, updated at step
/// 2, without updating any statistic.
fn pending_root_config() -> KradagradConfig {
    KradagradConfig::new()
        .with_statistics_compute_steps(2)
        .with_preconditioning_compute_steps(3)
        .with_momentum(None)
}

/// The gradients of both runs: `grads[3]` is the step the runs differ at.
fn gradients() -> Vec<Tensor<B, 2>> {
    (0..8)
        .map(|k| common::normal([4, 3], 100 + k, &Default::default()))
        .collect()
}

/// The rate and gradient of step `k`: step 3 takes a NaN gradient in the
/// run with the bad step, and the valid one at rate 0 in the other.
fn step_input(k: usize, bad_step: bool, grad: &Tensor<B, 2>) -> (f64, Tensor<B, 2>) {
    match (k, bad_step) {
        (3, true) => (0.05, poisoned(grad)),
        (3, false) => (0.0, grad.clone()),
        _ => (0.05, grad.clone()),
    }
}

/// A gradient whose first entry is NaN.
fn poisoned(grad: &Tensor<B, 2>) -> Tensor<B, 2> {
    let mut values = grad.to_data().to_vec::<f64>().unwrap();
    values[0] = f64::NAN;
    Tensor::from_data(
        TensorData::new(values, [4, 3]),
        (&Default::default(), burn::tensor::DType::F64),
    )
}

/// A NaN gradient on a root step that updates no statistic is skipped: the
/// parameter and statistics stay, and the root due is taken of them. So the
/// run continues exactly as one whose step 3 was valid but at lr 0 (which
/// moves nothing and, with no momentum, leaves nothing behind but the same
/// refreshed root). Rolling the refreshed root back with the skipped step
/// instead would leave it stale, and the runs would part at step 4.
#[test]
fn a_skipped_refresh_step_leaves_no_root_stale() {
    let optimizer = pending_root_config().build();
    let grads = gradients();
    let start: Tensor<B, 2> = common::normal([4, 3], 1, &Default::default());
    let run = |bad_step: bool| {
        let (mut param, mut state) = (start.clone(), None);
        let mut trajectory = vec![];
        for (k, grad) in grads.iter().enumerate() {
            let (lr, grad) = step_input(k, bad_step, grad);
            (param, state) = SimpleOptimizer::<B>::step(&optimizer, lr, param, grad, state);
            trajectory.push(param.to_data());
        }
        (trajectory, common::snapshot(&state.unwrap()))
    };
    let (skipped, skipped_state) = run(true);
    let (zero_rate, zero_rate_state) = run(false);
    assert_eq!(skipped[3], skipped[2], "the skipped step moved the parameter");
    assert_eq!(skipped, zero_rate, "the trajectories part after the skipped step");
    assert_eq!(skipped_state, zero_rate_state);
}

/// The same through the whole-model front end, whose statistics are stacked.
#[test]
fn a_skipped_refresh_step_leaves_no_root_stale_batched() {
    let grads = gradients();
    let device = Default::default();
    let start = Weight::<AB> {
        w: Param::from_tensor(common::normal([4, 3], 1, &device)),
    };
    let run = |bad_step: bool| {
        let mut optimizer = pending_root_config().init_batched::<AB, Weight<AB>>();
        let mut model = start.clone();
        let mut trajectory = vec![];
        for (k, grad) in grads.iter().enumerate() {
            let (lr, grad) = step_input(k, bad_step, grad);
            let mut gradients = GradientsParams::new();
            gradients.register(model.w.id, grad);
            model = optimizer.step(lr, model, gradients);
            trajectory.push(model.w.val().to_data());
        }
        (trajectory, common::batched_snapshot(optimizer.state().unwrap()))
    };
    let (skipped, skipped_state) = run(true);
    let (zero_rate, zero_rate_state) = run(false);
    assert_eq!(skipped[3], skipped[2], "the skipped step moved the parameter");
    assert_eq!(skipped, zero_rate, "the trajectories part after the skipped step");
    assert_eq!(skipped_state, zero_rate_state);
}

// ---------------------------------------------------------------- origins

/// Two steps with `from`, its state saved and loaded into `to` (the bytes
/// of one record read as the other's), one step: the panic message, which
/// must name both sides.
fn cross_load<F, T>(from: F, to: T) -> String
where
    F: Optimizer<Mlp<AB>, AB>,
    T: Optimizer<Mlp<AB>, AB>,
{
    let device = Default::default();
    let recorder = BinBytesRecorder::<DoublePrecisionSettings>::default();
    let (model, data) = common::problem::<AB>(&device);
    let (model, from, _) = train(model, from, &data, 0.05, 2);
    let bytes = recorder.record(from.to_record(), ()).unwrap();
    let record: T::Record = recorder.load(bytes, &device).expect("the states have one format");
    let to = to.load_record(record);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| train(model, to, &data, 0.05, 1)));
    common::panic_message(
        outcome
            .err()
            .expect("a state from another optimizer must be rejected"),
    )
}

fn assert_names_both(message: &str, written: &str, used: &str) {
    assert!(
        message.contains(&format!("was written by {written} ("))
            && message.contains(&format!("is used by {used} (")),
        "{message}"
    );
}

macro_rules! every_pair {
    ($init:ident) => {{
        let star = || KradagradStarConfig::new().$init::<AB, Mlp<AB>>();
        let mm = || KradagradConfig::new().$init::<AB, Mlp<AB>>();
        let shampoo = || ShampooConfig::new().$init::<AB, Mlp<AB>>();
        assert_names_both(&cross_load(star(), mm()), "KradagradStar", "Kradagrad");
        assert_names_both(&cross_load(star(), shampoo()), "KradagradStar", "Shampoo");
        assert_names_both(&cross_load(mm(), star()), "Kradagrad", "KradagradStar");
        assert_names_both(&cross_load(mm(), shampoo()), "Kradagrad", "Shampoo");
        assert_names_both(&cross_load(shampoo(), star()), "Shampoo", "KradagradStar");
        assert_names_both(&cross_load(shampoo(), mm()), "Shampoo", "Kradagrad");
    }};
}

#[test]
fn a_state_from_another_optimizer_names_both_per_parameter() {
    every_pair!(init);
}

#[test]
fn a_state_from_another_optimizer_names_both_batched() {
    every_pair!(init_batched);
}

/// Another `block_size` or `merge_dims` (here with the same factor shapes,
/// which the tensor shapes alone would let through) is named as well.
#[test]
fn a_state_from_another_layout_names_both() {
    let star = |block, merge| {
        KradagradStarConfig::new()
            .with_block_size(block)
            .with_merge_dims(merge)
    };
    let message = cross_load(
        star(Some(128), true).init::<AB, Mlp<AB>>(),
        star(Some(256), true).init::<AB, Mlp<AB>>(),
    );
    assert!(
        message.contains("KradagradStar (block_size Some(128), merge_dims true)")
            && message.contains("KradagradStar (block_size Some(256), merge_dims true)"),
        "{message}"
    );
    let message = cross_load(
        star(Some(128), true).init_batched::<AB, Mlp<AB>>(),
        star(Some(128), false).init_batched::<AB, Mlp<AB>>(),
    );
    assert!(
        message.contains("merge_dims true") && message.contains("merge_dims false"),
        "{message}"
    );
}

// ---------------------------------------------------------------- pending roots across a checkpoint

/// `steps` steps on the quadratic of `tests/common`.
fn quadratic_steps<O: Optimizer<common::Square<AB>, AB>>(
    mut square: common::Square<AB>,
    optimizer: &mut O,
    h: &[Tensor<AB, 2>; 2],
    steps: usize,
) -> common::Square<AB> {
    for _ in 0..steps {
        let grads = GradientsParams::from_grads(common::quadratic_loss(&square, h).backward(), &square);
        square = optimizer.step(0.02, square, grads);
    }
    square
}

/// KrADagrad (roots every 4 steps) on the 32x32 quadratic: six steps, a save
/// and load of the optimizer, six more, against the uninterrupted run. After
/// six steps the root of dim 1 is pending (dim 1 is updated at the counter's
/// 5), and the load must keep it for the refresh at 8, the last before the
/// end; lost, that root would end the run as it was at 4 (the parameter then
/// ends about 50% away). The state goes through an f64 recorder
/// (`DoublePrecisionSettings`: Burn's `FullPrecisionSettings` stores f32), and
/// the final parameter and every state tensor must be bitwise those of the
/// straight run.
fn kradagrad_resumes<O, I, S>(init: I, state_of: S)
where
    O: Optimizer<common::Square<AB>, AB>,
    I: Fn() -> O,
    S: Fn(&O) -> Vec<TensorData>,
{
    let device = Default::default();
    let recorder = BinBytesRecorder::<DoublePrecisionSettings>::default();
    let (start, h) = common::quadratic::<AB>(&device);
    let mut straight = init();
    let straight_end = quadratic_steps(start.clone(), &mut straight, &h, 12);
    let mut first = init();
    let middle = quadratic_steps(start, &mut first, &h, 6);
    let bytes = recorder.record(first.to_record(), ()).unwrap();
    let mut resumed = init().load_record(recorder.load(bytes, &device).unwrap());
    let resumed_end = quadratic_steps(middle, &mut resumed, &h, 6);
    assert_eq!(
        resumed_end.x.val().to_data(),
        straight_end.x.val().to_data(),
        "the resumed run's parameter differs from the straight run's"
    );
    assert_eq!(
        state_of(&resumed),
        state_of(&straight),
        "the resumed run's state differs from the straight run's"
    );
}

#[test]
fn kradagrad_pending_roots_survive_a_checkpoint() {
    let config = KradagradConfig::new().with_preconditioning_compute_steps(4);
    kradagrad_resumes(
        || config.init::<AB, common::Square<AB>>(),
        |optimizer| {
            let record = optimizer.to_record().into_values().next().expect("one parameter");
            common::snapshot(&record.into_state::<2>())
        },
    );
    kradagrad_resumes(
        || config.init_batched::<AB, common::Square<AB>>(),
        |optimizer| common::batched_snapshot(optimizer.state().expect("a state")),
    );
}

// ---------------------------------------------------------------- parameters that skip steps

/// Three parameters that the loss uses or not, step by step.
#[derive(Module, Debug)]
struct Three<B: Backend> {
    a: Param<Tensor<B, 2>>,
    b: Param<Tensor<B, 2>>,
    c: Param<Tensor<B, 1>>,
}

fn three<B: Backend>() -> Three<B> {
    let device = Default::default();
    Three {
        a: Param::from_tensor(common::normal([6, 5], 1, &device)),
        b: Param::from_tensor(common::normal([5, 4], 2, &device)),
        c: Param::from_tensor(common::normal([7], 3, &device)),
    }
}

/// Which of `a`, `b`, `c` the loss uses at each step: `b` is not used at
/// step 4 and stays frozen at 5, then returns with the state it kept; `c`
/// first appears at step 3 (fresh state); at step 7 only `b` is used.
const USED: [[bool; 3]; 8] = [
    [true, true, false],
    [true, true, false],
    [true, true, true],
    [true, false, true],
    [true, false, true],
    [true, true, true],
    [false, true, false],
    [true, true, true],
];

/// `sum(k (p - 1)^2)` over the parameters in `used`, with a different
/// curvature `k` each.
fn three_loss<B: Backend>(m: &Three<B>, used: [bool; 3]) -> Tensor<B, 1> {
    let mut terms: Vec<Tensor<B, 1>> = vec![];
    if used[0] {
        terms.push(m.a.val().sub_scalar(1.0).square().mul_scalar(1.0).sum());
    }
    if used[1] {
        terms.push(m.b.val().sub_scalar(1.0).square().mul_scalar(0.5).sum());
    }
    if used[2] {
        terms.push(m.c.val().sub_scalar(1.0).square().mul_scalar(2.0).sum());
    }
    terms.into_iter().reduce(|x, y| x + y).expect("one term")
}

/// The steps `range` of [`USED`]; returns the model after each step.
fn three_steps<B: AutodiffBackend, O: Optimizer<Three<B>, B>>(
    mut model: Three<B>,
    optimizer: &mut O,
    range: std::ops::Range<usize>,
) -> (Three<B>, Vec<Vec<f64>>) {
    let mut after = vec![];
    for step in range {
        let grads = GradientsParams::from_grads(three_loss(&model, USED[step]).backward(), &model);
        model = optimizer.step(0.1, model, grads);
        after.push(common::module_values(&model));
    }
    (model, after)
}

/// The largest entry gap of two runs, relative to the largest entry.
fn gap(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    let scale = b.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// A parameter without a gradient at a step keeps its value and state, one
/// that first gets a gradient later joins with a fresh state, and one that
/// comes back continues from the state it kept: step for step the updates of
/// Burn's `OptimizerAdaptor` over the per-parameter optimizer (to 1e-12 in
/// f64, the front ends' round-off), for each optimizer, with schedules that
/// read the step counter (KrADagrad's one-factor schedule, roots every 2nd
/// step, statistics every 2nd step).
#[test]
fn parameters_may_skip_steps() {
    macro_rules! compare {
        ($name:expr, $config:expr) => {{
            let config = $config;
            let (_, per_parameter) = three_steps(three::<AB>(), &mut config.init(), 0..8);
            let (_, batched) = three_steps(three::<AB>(), &mut config.init_batched(), 0..8);
            let gap = gap(&batched, &per_parameter);
            assert!(gap <= 1e-12, "{}: the batched run differs by {gap:e}", $name);
            // b stays put at steps 4 and 5 (indices 3, 4), c until step 3.
            let b = 30..50;
            assert_eq!(batched[3][b.clone()], batched[2][b.clone()], "{}", $name);
            assert_eq!(batched[4][b.clone()], batched[2][b], "{}", $name);
        }};
    }
    let blocked = |c: KradagradStarConfig| c.with_block_size(Some(4)).with_preconditioning_compute_steps(2);
    compare!(
        "kradagrad*",
        blocked(KradagradStarConfig::new()).with_grafting(Some(Grafting::Adam { epsilon: 1e-6 }))
    );
    compare!(
        "kradagrad*, statistics every 2nd step",
        blocked(KradagradStarConfig::new()).with_statistics_compute_steps(2)
    );
    compare!(
        "kradagrad",
        KradagradConfig::new()
            .with_block_size(Some(4))
            .with_preconditioning_compute_steps(2)
    );
    compare!(
        "shampoo",
        ShampooConfig::new()
            .with_block_size(Some(4))
            .with_preconditioning_compute_steps(2)
            .with_grafting(Some(Grafting::AdaGrad { epsilon: 1e-6 }))
    );
}

/// A state saved while a parameter is parked (after step 5, with `b`
/// frozen) loads and continues bitwise as the uninterrupted run, `b`'s kept
/// state included.
#[test]
fn a_parked_parameter_survives_a_checkpoint() {
    let config = KradagradConfig::new()
        .with_block_size(Some(4))
        .with_preconditioning_compute_steps(2);
    let recorder = BinBytesRecorder::<DoublePrecisionSettings>::default();
    let (_, straight) = three_steps(three::<AB>(), &mut config.init_batched(), 0..8);
    let mut first = config.init_batched::<AB, Three<AB>>();
    let (model, mut resumed) = three_steps(three::<AB>(), &mut first, 0..5);
    let record = first.to_record();
    assert_eq!(
        record.parked.as_ref().map(Vec::len),
        Some(1),
        "b is parked after step 5"
    );
    let bytes = recorder.record(record, ()).unwrap();
    let mut loaded = config
        .init_batched::<AB, Three<AB>>()
        .load_record(recorder.load(bytes, &Default::default()).unwrap());
    resumed.extend(three_steps(model, &mut loaded, 5..8).1);
    assert_eq!(resumed, straight);
}

// ---------------------------------------------------------------- gradient clipping

/// A config's `grad_clipping` is applied as Burn applies its optimizers':
/// `init()` is `OptimizerAdaptor::with_grad_clipping` and `init_batched()`
/// is `BatchedOptimizer::with_grad_clipping`, bitwise, and the clipping
/// changes the run (the gradients of this problem are far above the bound).
#[test]
fn grad_clipping_from_the_config_is_burns() {
    use burn::grad_clipping::GradientClippingConfig;
    use burn::optim::adaptor::OptimizerAdaptor;
    use kradagrad_burn_suite::mlp::regression_data;

    let device = Default::default();
    let data = regression_data::<AB>(32, 4, 2, 3, &device);
    let start = Mlp::<AB>::new(&[4, 16, 2], &device);
    let config = KradagradStarConfig::new()
        .with_block_size(Some(8))
        .with_preconditioning_compute_steps(2);
    for clipping in [
        GradientClippingConfig::Norm(0.01),
        GradientClippingConfig::Value(0.001),
    ] {
        let clipped = config.clone().with_grad_clipping(Some(clipping.clone()));
        let by_hand = OptimizerAdaptor::from(config.build()).with_grad_clipping(clipping.init());
        let (_, _, from_config) = train(start.clone(), clipped.init::<AB, Mlp<AB>>(), &data, 0.05, 6);
        let (_, _, expected) = train(start.clone(), by_hand, &data, 0.05, 6);
        assert_eq!(from_config, expected, "init() with {clipping:?}");
        let (_, _, unclipped) = train(start.clone(), config.init::<AB, Mlp<AB>>(), &data, 0.05, 6);
        assert_ne!(from_config, unclipped, "{clipping:?} must change the run");

        let by_hand = config
            .init_batched::<AB, Mlp<AB>>()
            .with_grad_clipping(clipping.init());
        let (_, _, from_config) = train(
            start.clone(),
            clipped.init_batched::<AB, Mlp<AB>>(),
            &data,
            0.05,
            6,
        );
        let (_, _, expected) = train(start.clone(), by_hand, &data, 0.05, 6);
        assert_eq!(from_config, expected, "init_batched() with {clipping:?}");
    }
}
