//! Checkpoints written by kradagrad-burn 0.1.0 (before the configs took
//! nested sub-configs) still load: the optimizer records are unchanged, so a
//! model and optimizer saved after 7 steps resume and take the next 5 steps
//! exactly as the 0.1.0 run that wrote them did.
//!
//! The files in `tests/data/checkpoint-0.1.0/` hold, per setup, the model and
//! optimizer records after 7 full-batch steps on `regression_data(32, 6, 3,
//! 11)` at learning rate 0.05 (`NamedMpkFileRecorder` with
//! `DoublePrecisionSettings`, `Autodiff<NdArray<f64>>`, an `Mlp` of dims
//! `[6, 5, 3]`), and the losses of the 5 steps that followed.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use burn::module::Module;
use burn::optim::Optimizer;
use burn::record::{DoublePrecisionSettings, NamedMpkFileRecorder, Recorder};
use kradagrad_burn::{Grafting, KradagradConfig, KradagradStarConfig, ShampooConfig, WeightDecayConfig};
use kradagrad_burn_suite::mlp::{regression_data, train, Mlp};

type B = Autodiff<NdArray<f64>>;

/// The setups, as 0.1.0 configured them (`with_grafting(Grafting::Adam)`
/// used `diagonal_eps = 1e-6`; `with_weight_decay(1e-3)` the L2 style).
fn star() -> KradagradStarConfig {
    KradagradStarConfig::new()
        .with_preconditioning_compute_steps(3)
        .with_block_size(Some(4))
        .with_grafting(Some(Grafting::Adam { epsilon: 1e-6 }))
        .with_weight_decay(Some(WeightDecayConfig::new(1e-3)))
}

fn kradagrad() -> KradagradConfig {
    KradagradConfig::new()
        .with_preconditioning_compute_steps(3)
        .with_block_size(Some(4))
}

fn shampoo() -> ShampooConfig {
    ShampooConfig::new()
        .with_preconditioning_compute_steps(3)
        .with_block_size(Some(4))
        .with_beta_2(0.99)
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/checkpoint-0.1.0")
}

/// Loads `name`'s model and optimizer into `optimizer`, takes 5 steps and
/// compares the losses with those 0.1.0 recorded.
fn resumes<O: Optimizer<Mlp<B>, B>>(name: &str, optimizer: O) {
    let device = Default::default();
    let recorder = NamedMpkFileRecorder::<DoublePrecisionSettings>::new();
    let model = Mlp::<B>::new(&[6, 5, 3], &device).load_record(
        recorder
            .load(dir().join(format!("{name}-model")), &device)
            .expect("the 0.1.0 model record loads"),
    );
    let optimizer = optimizer.load_record(
        recorder
            .load(dir().join(format!("{name}-optimizer")), &device)
            .expect("the 0.1.0 optimizer record loads"),
    );
    let data = regression_data::<B>(32, 6, 3, 11, &device);
    let (_, _, losses) = train(model, optimizer, &data, 0.05, 5);
    let recorded: Vec<f64> = serde_json::from_str(
        &std::fs::read_to_string(dir().join(format!("{name}-losses.json"))).expect("the recorded losses"),
    )
    .expect("a list of losses");
    assert_eq!(losses.len(), recorded.len());
    for (step, (got, want)) in losses.iter().zip(&recorded).enumerate() {
        // f64 throughout: the same arithmetic gives the same losses to round-off.
        assert!(
            (got - want).abs() <= 1e-12,
            "{name}: loss {got} at resumed step {step}, 0.1.0 recorded {want}"
        );
    }
}

#[test]
fn per_parameter_checkpoints_from_0_1_0_resume() {
    resumes("kradagrad-star-init", star().init::<B, Mlp<B>>());
    resumes("kradagrad-init", kradagrad().init::<B, Mlp<B>>());
}

#[test]
fn batched_checkpoints_from_0_1_0_resume() {
    resumes("kradagrad-star-batched", star().init_batched::<B, Mlp<B>>());
    resumes("kradagrad-batched", kradagrad().init_batched::<B, Mlp<B>>());
    resumes("shampoo-batched", shampoo().init_batched::<B, Mlp<B>>());
}
