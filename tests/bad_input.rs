//! Bad input gets a clear answer and loses nothing: invalid configs name the
//! field and rule, a negative or non-finite learning rate panics, a NaN/Inf first gradient
//! leaves a fresh state (or panics naming the shape when asked to), and a
//! state that does not fit the parameter is a clear error. Non-finite
//! gradients mid-training are checked on every backend (tests/common).

use burn::backend::NdArray;
use burn::optim::SimpleOptimizer;
use burn::tensor::{Distribution, Tensor};
use kradagrad_burn::{
    ConfigError, Grafting, KradagradConfig, KradagradStarConfig, MomentumConfig, NonFiniteGradients,
    PreconditionerState, ShampooConfig, WeightDecayConfig,
};

type B = NdArray<f32>;

fn field(result: Result<(), ConfigError>) -> &'static str {
    let error = result.expect_err("the config must be rejected");
    assert!(
        error.to_string().contains(&format!("`{}`", error.field)),
        "{error}"
    );
    error.field
}

#[test]
fn invalid_configs_name_the_field() {
    let star = KradagradStarConfig::new;
    assert_eq!(field(star().with_block_size(Some(0)).validate()), "block_size");
    assert_eq!(
        field(star().with_statistics_compute_steps(0).validate()),
        "statistics_compute_steps"
    );
    assert_eq!(
        field(star().with_preconditioning_compute_steps(0).validate()),
        "preconditioning_compute_steps"
    );
    for eps in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert_eq!(field(star().with_matrix_eps(eps).validate()), "matrix_eps");
    }
    for momentum in [-0.1, 1.0, f64::NAN] {
        let config = star().with_momentum(Some(MomentumConfig::new().with_momentum(momentum)));
        assert_eq!(field(config.validate()), "momentum.momentum");
    }
    for beta_2 in [0.0, 1.5, f64::NAN] {
        assert_eq!(field(star().with_beta_2(beta_2).validate()), "beta_2");
    }
    for penalty in [-1e-3, f64::NAN, f64::INFINITY] {
        let config = star().with_weight_decay(Some(WeightDecayConfig::new(penalty)));
        assert_eq!(field(config.validate()), "weight_decay.penalty");
    }
    for grafting in [
        Grafting::AdaGrad { epsilon: 0.0 },
        Grafting::Adam { epsilon: f64::NAN },
    ] {
        assert_eq!(
            field(star().with_grafting(Some(grafting)).validate()),
            "grafting.epsilon"
        );
    }
    assert_eq!(
        field(star().with_newton_iterations(0).validate()),
        "newton_iterations"
    );
    assert_eq!(
        field(star().with_newton_convergence_check(Some(0)).validate()),
        "newton_convergence_check"
    );
    // The same rules hold for the other two optimizers.
    assert_eq!(
        field(KradagradConfig::new().with_beta_2(2.0).validate()),
        "beta_2"
    );
    assert_eq!(
        field(ShampooConfig::new().with_block_size(Some(0)).validate()),
        "block_size"
    );
    assert_eq!(
        field(
            ShampooConfig::new()
                .with_inverse_exponent_override(Some(0))
                .validate()
        ),
        "inverse_exponent_override"
    );
    // Defaults and edge values are valid.
    for config in [
        star(),
        star().with_momentum(None).with_beta_2(1.0).with_block_size(None),
        star()
            .with_grafting(None)
            .with_momentum(Some(MomentumConfig::new().with_momentum(0.0)))
            .with_weight_decay(Some(WeightDecayConfig::new(0.0))),
    ] {
        assert!(config.validate().is_ok());
    }
    assert!(KradagradConfig::new().validate().is_ok());
    assert!(ShampooConfig::new().validate().is_ok());
}

/// The `try_` constructors return the validation's error instead of panicking.
#[test]
fn try_constructors_return_the_config_error() {
    type A = burn::backend::Autodiff<B>;
    type M = burn::nn::Linear<A>;
    let bad = KradagradStarConfig::new().with_matrix_eps(-1.0);
    let expected = bad.validate().expect_err("invalid");
    assert_eq!(bad.try_build().map(|_| ()), Err(expected.clone()));
    assert_eq!(bad.try_init::<A, M>().map(|_| ()), Err(expected.clone()));
    assert_eq!(bad.try_init_batched::<A, M>().map(|_| ()), Err(expected));
    let bad = ShampooConfig::new().with_beta_2(0.0);
    assert_eq!(bad.try_init::<A, M>().map(|_| ()).unwrap_err().field, "beta_2");
    let bad = KradagradConfig::new().with_statistics_compute_steps(0);
    assert_eq!(
        bad.try_init_batched::<A, M>().map(|_| ()).unwrap_err().field,
        "statistics_compute_steps"
    );
    assert!(KradagradStarConfig::new().try_init::<A, M>().is_ok());
}

#[test]
#[should_panic(expected = "invalid KradagradStarConfig: `momentum.momentum` must lie in [0, 1), got 1.5")]
fn init_panics_with_the_validation_message() {
    let _ = KradagradStarConfig::new()
        .with_momentum(Some(MomentumConfig::new().with_momentum(1.5)))
        .build();
}

#[test]
#[should_panic(expected = "invalid ShampooConfig: `preconditioning_compute_steps`")]
fn shampoo_init_panics_with_the_validation_message() {
    let _ = ShampooConfig::new().with_preconditioning_compute_steps(0).build();
}

fn random<const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
}

#[test]
#[should_panic(expected = "learning rate must be finite and non-negative, got -0.001")]
fn a_negative_learning_rate_panics() {
    let _ = KradagradStarConfig::new()
        .build()
        .step(-1e-3, random([3, 2]), random([3, 2]), None);
}

#[test]
#[should_panic(expected = "learning rate must be finite and non-negative, got inf")]
fn an_infinite_learning_rate_panics() {
    let _ = ShampooConfig::new()
        .build()
        .step(f64::INFINITY, random([3, 2]), random([3, 2]), None);
}

#[test]
#[should_panic(expected = "learning rate must be finite and non-negative, got NaN")]
fn a_nan_learning_rate_panics() {
    let _ = KradagradConfig::new()
        .build()
        .step(f64::NAN, random([3, 2]), random([3, 2]), None);
}

/// Every tensor of a state, read back, in a fixed order.
fn snapshot<const D: usize>(state: &PreconditionerState<B, D>) -> Vec<Vec<f32>> {
    let read = |t: &Tensor<B, 3>| t.to_data().to_vec::<f32>().unwrap();
    let mut out: Vec<Vec<f32>> = state
        .groups
        .iter()
        .flat_map(|g| g.statistics.iter().chain(&g.roots).map(read).collect::<Vec<_>>())
        .collect();
    for buffer in [&state.graft, &state.momentum].into_iter().flatten() {
        out.push(buffer.to_data().to_vec::<f32>().unwrap());
    }
    out
}

#[test]
fn a_non_finite_first_gradient_leaves_a_fresh_state() {
    let optimizer = KradagradStarConfig::new().build();
    let w = random([3, 4]);
    let g = Tensor::<B, 2>::full([3, 4], f32::NAN, &Default::default());
    let (w1, state) = optimizer.step(0.1, w.clone(), g, None);
    assert_eq!(w1.to_data(), w.to_data());
    let state = state.unwrap();
    let fresh = KradagradStarConfig::new()
        .build()
        .step(0.1, w.clone(), w.zeros_like(), None)
        .1
        .unwrap();
    // Zero gradient: statistics unchanged from the initial state, like the skipped step's.
    assert_eq!(snapshot(&state), snapshot(&fresh));
}

#[test]
#[should_panic(expected = "the gradient of the parameter of shape [3, 4] holds NaN or Inf")]
fn the_panic_option_names_the_shape() {
    let optimizer = KradagradStarConfig::new()
        .with_non_finite_gradients(NonFiniteGradients::Panic)
        .build();
    let g = Tensor::<B, 2>::full([3, 4], f32::INFINITY, &Default::default());
    let _ = optimizer.step(0.1, random([3, 4]), g, None);
}

#[test]
#[should_panic(
    expected = "does not match the parameter of shape [4, 6] (merged dims [4, 6]): a factor of shape [1, 6, 6] stored, [1, 4, 4] expected"
)]
fn a_state_from_another_shape_is_a_clear_error() {
    // No momentum and no merging: only the factors can tell the shapes apart
    // (merged, [6, 4] and [4, 6] would both be [24]).
    let optimizer = ShampooConfig::new()
        .with_momentum(None)
        .with_merge_dims(false)
        .build();
    let (_, state) = optimizer.step(0.1, random([6, 4]), random([6, 4]), None);
    let _ = optimizer.step(0.1, random([4, 6]), random([4, 6]), state);
}

#[test]
#[should_panic(
    expected = "does not match the parameter of shape [4, 6] (merged dims [24]): a buffer of shape [6, 4] stored"
)]
fn a_momentum_buffer_from_another_shape_is_a_clear_error() {
    let optimizer = ShampooConfig::new().build();
    let (_, state) = optimizer.step(0.1, random([6, 4]), random([6, 4]), None);
    let _ = optimizer.step(0.1, random([4, 6]), random([4, 6]), state);
}

#[test]
#[should_panic(
    expected = "was written by Kradagrad (block_size Some(128), merge_dims true) and is used by Kradagrad (block_size Some(2), merge_dims true)"
)]
fn a_state_from_another_block_size_is_a_clear_error() {
    let (_, state) = KradagradConfig::new()
        .build()
        .step(0.1, random([6, 4]), random([6, 4]), None);
    let _ = KradagradConfig::new().with_block_size(Some(2)).build().step(
        0.1,
        random([6, 4]),
        random([6, 4]),
        state,
    );
}
