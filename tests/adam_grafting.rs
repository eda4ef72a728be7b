//! Starting from an Adam setup: with `Grafting::BiasCorrectedAdam` and
//! `MomentumForm::FirstMoment`, every step before preconditioning starts is
//! Burn's `Adam` step (`AdamW`'s with decoupled weight decay), on both front
//! ends and for all three optimizers; from the start step on, the
//! preconditioned direction takes the length of Adam's step. On burn-ndarray
//! in f32.

mod common;

use burn::backend::{Autodiff, NdArray};
use burn::optim::{AdamConfig, AdamWConfig, Optimizer};
use common::{module_values_with_ids, zoo, zoo_continue, Zoo};
use kradagrad_burn::{
    ConfigError, Grafting, KradagradConfig, KradagradStarConfig, MomentumConfig, MomentumForm, ShampooConfig,
    WeightDecayConfig, WeightDecayStyle,
};

type B = Autodiff<NdArray<f32>>;

/// Burn keeps Adam's hyper-parameters in f32; these are the same numbers.
const BETA1: f64 = 0.9f32 as f64;
const BETA2: f64 = 0.999f32 as f64;
const EPSILON: f64 = 1e-8f32 as f64;
/// About Adam's usual 1e-3, a power of two so that AdamW's decay factor
/// `1 - lr * wd`, which Burn rounds to f32, is exact (with [`WD`]). Burn's
/// Adam also takes its bias corrections in f32 (`1 - 0.999^t` loses about
/// 6e-8 / (1 - 0.999^t) of its value), which moves its own trajectory by
/// about `lr * 1e-4` over these 30 steps (2e-6 at lr 1e-2); this library's
/// are in f64.
const LR: f64 = 1.0 / 1024.0;
/// AdamW's weight decay: `lr * wd = 2^-14`.
const WD: f64 = 1.0 / 16.0;
/// Every parameter of the zoo after these steps agrees with Adam's to this
/// (absolute; the parameters are of order 1, and f32 rounds them to 6e-8).
const TOLERANCE: f64 = 1e-6;

fn device() -> burn::backend::ndarray::NdArrayDevice {
    burn::backend::ndarray::NdArrayDevice::Cpu
}

/// Adam's setting on a KrAD or Shampoo config: Adam grafting, first-moment
/// momentum, preconditioning from step `start`, decoupled weight decay `wd`.
macro_rules! from_adam {
    ($config:expr, $start:expr, $wd:expr) => {
        $config
            .with_grafting(Some(Grafting::BiasCorrectedAdam {
                beta_2: BETA2,
                epsilon: EPSILON,
            }))
            .with_momentum(Some(
                MomentumConfig::new()
                    .with_momentum(BETA1)
                    .with_form(MomentumForm::FirstMoment),
            ))
            .with_weight_decay(Some(
                WeightDecayConfig::new($wd).with_style(WeightDecayStyle::Decoupled),
            ))
            .with_start_preconditioning_step($start)
            .with_preconditioning_compute_steps(4)
            .with_block_size(Some(8))
    };
}

/// Runs `$body` with `$optimizer` bound to each optimizer's Adam setup on
/// each front end, named by `$name`.
macro_rules! for_each_setup {
    ($start:expr, $wd:expr, |$name:ident, $optimizer:ident| $body:block) => {{
        {
            let $name = "KradagradStar init()";
            let $optimizer = from_adam!(KradagradStarConfig::new(), $start, $wd).init::<B, Zoo<B>>();
            $body
        }
        {
            let $name = "KradagradStar init_batched()";
            let $optimizer = from_adam!(KradagradStarConfig::new(), $start, $wd).init_batched::<B, Zoo<B>>();
            $body
        }
        {
            let $name = "Shampoo init()";
            let $optimizer = from_adam!(ShampooConfig::new(), $start, $wd).init::<B, Zoo<B>>();
            $body
        }
        {
            let $name = "Kradagrad init_batched()";
            let $optimizer = from_adam!(KradagradConfig::new(), $start, $wd).init_batched::<B, Zoo<B>>();
            $body
        }
        {
            let $name = "Kradagrad init()";
            let $optimizer = from_adam!(KradagradConfig::new(), $start, $wd).init::<B, Zoo<B>>();
            $body
        }
    }};
}

/// The largest entry-wise difference between two zoos' parameters.
fn max_difference(a: &Zoo<B>, b: &Zoo<B>) -> f64 {
    module_values_with_ids(a)
        .into_iter()
        .zip(module_values_with_ids(b))
        .flat_map(|((_, x), (_, y))| x.into_iter().zip(y).map(|(x, y)| (x - y).abs()))
        .fold(0.0, f64::max)
}

fn steps<O: Optimizer<Zoo<B>, B>>(mut optimizer: O, steps: usize) -> Zoo<B> {
    zoo_continue(zoo::<B>(&device()), &mut optimizer, LR, steps)
}

fn adam() -> impl Optimizer<Zoo<B>, B> {
    AdamConfig::new()
        .with_beta_1(BETA1 as f32)
        .with_beta_2(BETA2 as f32)
        .with_epsilon(EPSILON as f32)
        .init()
}

fn adamw(wd: f64) -> impl Optimizer<Zoo<B>, B> {
    AdamWConfig::new()
        .with_beta_1(BETA1 as f32)
        .with_beta_2(BETA2 as f32)
        .with_epsilon(EPSILON as f32)
        .with_weight_decay(wd as f32)
        .init()
}

/// Before the start step, 30 steps of every optimizer on every front end
/// are Adam's 30 steps: every parameter shape of the zoo (a scalar, a
/// vector, blocked and merged matrices, a 4-d kernel), and the parameter
/// without a gradient untouched by both.
#[test]
fn before_preconditioning_the_steps_are_adams() {
    let expected = steps(adam(), 30);
    for_each_setup!(1000, 0.0, |name, optimizer| {
        let gap = max_difference(&steps(optimizer, 30), &expected);
        assert!(
            gap <= TOLERANCE,
            "{name}: {gap:e} from Adam (tolerance {TOLERANCE:e})"
        );
    });
}

/// With decoupled weight decay they are AdamW's.
#[test]
fn with_decoupled_weight_decay_the_steps_are_adamws() {
    let expected = steps(adamw(WD), 30);
    for_each_setup!(1000, WD, |name, optimizer| {
        let gap = max_difference(&steps(optimizer, 30), &expected);
        assert!(
            gap <= TOLERANCE,
            "{name}: {gap:e} from AdamW (tolerance {TOLERANCE:e})"
        );
    });
}

/// From the start step on, each parameter moves by the length of Adam's
/// step from the same history (the grafting), in another direction (the
/// preconditioning): after 10 Adam steps, step 11 of each optimizer against
/// Adam's step 11, parameter by parameter.
#[test]
fn from_the_start_step_the_step_has_adams_length() {
    let before = steps(adam(), 10);
    let adam_after = steps(adam(), 11);
    let lengths = |after: &Zoo<B>| -> Vec<(f64, Vec<f64>)> {
        module_values_with_ids(&before)
            .into_iter()
            .zip(module_values_with_ids(after))
            .map(|((_, b), (_, a))| {
                let step: Vec<f64> = a.iter().zip(&b).map(|(a, b)| a - b).collect();
                (step.iter().map(|s| s * s).sum::<f64>().sqrt(), step)
            })
            .collect()
    };
    let adam_steps = lengths(&adam_after);
    // KrADagrad counts its steps from 0, the others from 1: step 11 is the
    // first preconditioned one with these start steps.
    for_each_setup!(
        if name.starts_with("Kradagrad ") { 10 } else { 11 },
        0.0,
        |name, optimizer| {
            let after = steps(optimizer, 11);
            // Before step 11 nothing differs.
            let mut turned = false;
            for (p, ((length, step), (adam_length, adam_step))) in
                lengths(&after).iter().zip(&adam_steps).enumerate()
            {
                if *adam_length == 0.0 {
                    assert_eq!(*length, 0.0, "{name}: parameter {p} has no gradient but moved");
                    continue;
                }
                // f32 parameters of order 1 hold a step of length ~1e-2 to ~1e-5 relative.
                assert!(
                    (length - adam_length).abs() <= 1e-4 * adam_length + 1e-6,
                    "{name}: parameter {p} stepped {length:e}, Adam {adam_length:e}"
                );
                let cosine =
                    step.iter().zip(adam_step).map(|(a, b)| a * b).sum::<f64>() / (length * adam_length);
                turned |= cosine < 0.999;
            }
            assert!(
                turned,
                "{name}: no parameter's step turned away from Adam's at the start step"
            );
        }
    );
}

/// The Adam grafting's own hyper-parameters are checked with the config,
/// naming the field.
#[test]
fn invalid_adam_settings_name_the_field() {
    let invalid = |config: KradagradStarConfig| -> ConfigError { config.validate().expect_err("invalid") };
    let graft = |beta_2, epsilon| {
        KradagradStarConfig::new().with_grafting(Some(Grafting::BiasCorrectedAdam { beta_2, epsilon }))
    };
    let error = invalid(graft(1.0, 1e-8));
    assert_eq!(error.field, "grafting.beta_2");
    assert!(error.rule.contains("[0, 1)"), "{error}");
    let error = invalid(graft(0.999, 0.0));
    assert_eq!(error.field, "grafting.epsilon");
    assert!(graft(0.999, 1e-8).validate().is_ok());
}

/// A whole-model state saved before states counted the model's steps (no
/// `steps` field) loads, and its single-entry parameter (the zoo's scalar,
/// which belongs to no class) counts its bias correction from the classes'
/// steps: the run goes on exactly as if it had not been interrupted.
#[test]
fn a_batched_state_without_the_step_count_loads() {
    use burn::record::{FullPrecisionSettings, PrettyJsonFileRecorder, Recorder};
    let config = || from_adam!(KradagradStarConfig::new(), 3, 0.0);
    let mut optimizer = config().init_batched::<B, Zoo<B>>();
    let model = zoo_continue(zoo::<B>(&device()), &mut optimizer, LR, 5);
    let uninterrupted = zoo_continue(model.clone(), &mut optimizer.clone(), LR, 5);

    let recorder = PrettyJsonFileRecorder::<FullPrecisionSettings>::new();
    let path = common::temp_path("batched-without-steps");
    recorder.record(optimizer.to_record(), path.clone()).unwrap();
    let file = path.with_extension("json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let item = json.get_mut("item").expect("a record item");
    assert_eq!(
        item["steps"],
        serde_json::json!(5),
        "the state counts the model's steps"
    );
    item.as_object_mut().unwrap().remove("steps");
    std::fs::write(&file, serde_json::to_string(&json).unwrap()).unwrap();

    let record = recorder.load(path, &device()).unwrap();
    let mut resumed = config().init_batched::<B, Zoo<B>>().load_record(record);
    let gap = max_difference(&zoo_continue(model, &mut resumed, LR, 5), &uninterrupted);
    assert!(gap <= 1e-7, "{gap:e} from the uninterrupted run");
    std::fs::remove_file(file).unwrap();
}
