//! `BatchedOptimizer`, the whole-model front end, on burn-ndarray: the same
//! updates as the per-parameter optimizers in f64, the non-finite guard,
//! checkpoints, and clear errors for a state that does not fit. (Parameters
//! that skip steps: tests/edges.rs.) (Its f32
//! agreement with the per-parameter path also runs on wgpu, in the backend
//! test suites.)

mod common;

use burn::backend::{Autodiff, NdArray};
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use common::{
    batched_kept_snapshot, module_values, panic_message, temp_path, zoo, zoo_continue, zoo_grads_with, Zoo,
    F32_SQUARE_OVERFLOWS,
};
use kradagrad_burn::{Grafting, KradagradConfig, KradagradStarConfig, NonFiniteGradients};
use kradagrad_burn_suite::mlp::{regression_data, train, Mlp};

type B64 = Autodiff<NdArray<f64>>;
type B32 = Autodiff<NdArray<f32>>;

fn device() -> burn::backend::ndarray::NdArrayDevice {
    burn::backend::ndarray::NdArrayDevice::Cpu
}

/// In f64 the two front ends agree to round-off: each block's arithmetic is
/// the same, only its neighbours in the batch differ.
#[test]
fn batched_matches_per_parameter_in_f64() {
    common::batched_matches_per_parameter::<B64>(&device(), 1e-12);
}

/// A NaN or Inf in one parameter's gradient, blocked or not, skips the step
/// for the whole model: every parameter and every state tensor stay as they
/// were, and training goes on afterwards. With every grafting (the probes
/// read the stacked blocks and the unblocked gradients, whatever the
/// grafting; a NaN or Inf left in a graft norm or an accumulator would show).
#[test]
fn a_non_finite_gradient_skips_the_whole_step() {
    for grafting in [
        None,
        Some(Grafting::SgdNorm),
        Some(Grafting::AdaGrad { epsilon: 1e-6 }),
        Some(Grafting::Adam { epsilon: 1e-6 }),
    ] {
        let config = KradagradStarConfig::new()
            .with_block_size(Some(8))
            .with_preconditioning_compute_steps(2)
            .with_grafting(grafting);
        let mut optimizer = config.init_batched::<B32, Zoo<B32>>();
        let mut model = zoo_continue(zoo::<B32>(&device()), &mut optimizer, 0.05, 3);
        let bad_values = [
            (f64::NAN, false),
            (f64::INFINITY, false),
            (f64::NEG_INFINITY, false),
            (f64::NAN, true),
            (f64::INFINITY, true),
            (F32_SQUARE_OVERFLOWS, false),
            (F32_SQUARE_OVERFLOWS, true),
        ];
        for (bad, unblocked) in bad_values {
            let before = (
                module_values(&model),
                batched_kept_snapshot(optimizer.state().unwrap()),
            );
            let grads = zoo_grads_with(&model, bad, unblocked);
            model = optimizer.step(0.05, model, grads);
            assert_eq!(
                module_values(&model),
                before.0,
                "{grafting:?}: a parameter moved on a {bad} gradient (unblocked: {unblocked})"
            );
            assert_eq!(
                batched_kept_snapshot(optimizer.state().unwrap()),
                before.1,
                "{grafting:?}: a statistic or buffer changed on a {bad} gradient (unblocked: {unblocked})"
            );
            // Roots due are taken of the statistics kept (tests/edges.rs).
            let state = optimizer.state().unwrap();
            for root in state
                .classes
                .iter()
                .flat_map(|c| &c.groups)
                .flat_map(|g| &g.roots)
            {
                let values = root.to_data().convert::<f64>().to_vec::<f64>().unwrap();
                assert!(
                    values.iter().all(|v| v.is_finite()),
                    "{grafting:?}: a root turned non-finite"
                );
            }
        }
        let before = module_values(&model);
        let model = zoo_continue(model, &mut optimizer, 0.05, 1);
        let after = module_values(&model);
        assert!(after.iter().all(|v| v.is_finite()), "{grafting:?}");
        assert_ne!(
            after, before,
            "{grafting:?}: training goes on after a skipped step"
        );
    }
}

/// Under `NonFiniteGradients::Panic` the message names the parameter's shape.
#[test]
fn a_non_finite_gradient_can_panic_instead() {
    let config = KradagradConfig::new().with_non_finite_gradients(NonFiniteGradients::Panic);
    let mut optimizer = config.init_batched::<B32, Zoo<B32>>();
    let model = zoo::<B32>(&device());
    let grads = zoo_grads_with(&model, f64::NAN, false);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        optimizer.step(0.05, model, grads)
    }));
    let message = panic_message(
        outcome
            .err()
            .unwrap_or_else(|| panic!("a NaN gradient must panic")),
    );
    assert!(message.contains("shape [3, 4, 5] holds NaN or Inf"), "{message}");
}

/// Saved after 6 steps and loaded into a fresh optimizer, the run continues
/// bitwise as if uninterrupted; before the first step the record is empty and
/// loads as a fresh optimizer.
#[test]
fn checkpoints_resume_bitwise() {
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let config = KradagradStarConfig::new()
        .with_preconditioning_compute_steps(4)
        .with_grafting(Some(Grafting::Adam { epsilon: 1e-6 }));
    let data = regression_data::<B32>(128, 4, 2, 7, &device());
    let start = Mlp::<B32>::new(&[4, 32, 32, 2], &device());
    let model = || start.clone();
    let (_, _, straight) = train(model(), config.init_batched(), &data, 0.05, 12);

    let (half, optimizer, mut resumed) = train(model(), config.init_batched(), &data, 0.05, 6);
    let path = temp_path("optimizer");
    recorder.record(optimizer.to_record(), path.clone()).unwrap();
    let optimizer = config
        .init_batched::<B32, Mlp<B32>>()
        .load_record(recorder.load(path, &device()).unwrap());
    resumed.extend(train(half, optimizer, &data, 0.05, 6).2);
    assert_eq!(resumed, straight, "a resumed run must be bitwise identical");

    let empty = config.init_batched::<B32, Mlp<B32>>().to_record();
    assert!(empty.param_ids.is_empty());
    let (_, _, fresh) = train(model(), config.init_batched().load_record(empty), &data, 0.05, 12);
    assert_eq!(fresh, straight);
}

/// A state from another model, or from another block size, is rejected at
/// the first step with a message that says what does not fit.
#[test]
fn a_state_that_does_not_fit_is_a_clear_error() {
    let data = regression_data::<B32>(64, 4, 2, 7, &device());
    let (_, optimizer, _) = train(
        Mlp::<B32>::new(&[4, 32, 32, 2], &device()),
        KradagradStarConfig::new().init_batched(),
        &data,
        0.05,
        2,
    );
    let record = optimizer.to_record();

    // Another model: other parameters.
    let other_model = Mlp::<B32>::new(&[4, 16, 2], &device());
    let loaded = KradagradStarConfig::new()
        .init_batched::<B32, Mlp<B32>>()
        .load_record(record.clone());
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        train(other_model, loaded, &data, 0.05, 1)
    }));
    let message = panic_message(
        outcome
            .err()
            .unwrap_or_else(|| panic!("another model's state must be rejected")),
    );
    assert!(
        message.contains("BatchedOptimizer's loaded state holds parameters")
            && message.contains("none of which has a gradient at this step"),
        "{message}"
    );

    // The same parameters (same ids, from the record's model), another block size.
    let (model, _, _) = train(
        Mlp::<B32>::new(&[4, 32, 32, 2], &device()),
        KradagradStarConfig::new().init_batched(),
        &data,
        0.05,
        1,
    );
    let mut record = record;
    let mut ids = vec![];
    struct Ids<'a>(&'a mut Vec<u64>);
    impl<Bk: burn::tensor::backend::Backend> burn::module::ModuleVisitor<Bk> for Ids<'_> {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<burn::tensor::Tensor<Bk, D>>) {
            self.0.push(param.id.val());
        }
    }
    burn::module::Module::visit(&model, &mut Ids(&mut ids));
    record.param_ids = ids;
    let load_and_step = |record: kradagrad_burn::BatchedState<B32>| {
        let loaded = KradagradStarConfig::new()
            .with_block_size(Some(4))
            .init_batched::<B32, Mlp<B32>>()
            .load_record(record);
        let model = model.clone();
        let data = &data;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            train(model, loaded, data, 0.05, 1)
        }));
        panic_message(
            outcome
                .err()
                .expect("a state of another block size must be rejected"),
        )
    };
    let message = load_and_step(record.clone());
    assert!(
        message.contains("BatchedOptimizer's state was written by KradagradStar (block_size Some(128), merge_dims true) and is used by KradagradStar (block_size Some(4), merge_dims true)"),
        "{message}"
    );
    // A state saved before states named their origin: caught by its shapes.
    record.origin = None;
    let message = load_and_step(record);
    assert!(
        message.contains("does not fit the model's parameters"),
        "{message}"
    );
}

/// An invalid config fails at `init_batched`, naming the field.
#[test]
fn an_invalid_config_names_the_field() {
    let outcome = std::panic::catch_unwind(|| {
        KradagradStarConfig::new()
            .with_beta_2(0.0)
            .init_batched::<B32, Mlp<B32>>()
    });
    let message = panic_message(
        outcome
            .err()
            .unwrap_or_else(|| panic!("beta_2 = 0 must be rejected")),
    );
    assert!(message.contains("`beta_2`"), "{message}");
}
