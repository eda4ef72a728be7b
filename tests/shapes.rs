//! Every shape class driven through Burn's `OptimizerAdaptor` and autodiff:
//! ranks 1 to 4, dims of 1, blocked and merged shapes, a conv kernel
//! `[64, 3, 3, 3]`, merged rank 0 (`[1]`), and a parameter with no gradient.

use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::{backend::Backend, Distribution, Tensor};
use kradagrad_burn::{KradagradConfig, KradagradStarConfig, ShampooConfig};

type B = Autodiff<NdArray<f32>>;

#[derive(Module, Debug)]
struct Zoo<B: Backend> {
    vector: Param<Tensor<B, 1>>,
    scalar: Param<Tensor<B, 1>>,
    blocked: Param<Tensor<B, 2>>,
    row: Param<Tensor<B, 2>>,
    cube: Param<Tensor<B, 3>>,
    conv: Param<Tensor<B, 4>>,
    ones_inside: Param<Tensor<B, 4>>,
    unused: Param<Tensor<B, 2>>,
}

fn param<const D: usize>(shape: [usize; D]) -> Param<Tensor<B, D>> {
    Param::from_tensor(Tensor::random(
        shape,
        Distribution::Normal(0.0, 1.0),
        &Default::default(),
    ))
}

fn zoo() -> Zoo<B> {
    Zoo {
        vector: param([5]),
        scalar: param([1]),
        blocked: param([10, 20]),
        row: param([1, 7]),
        cube: param([3, 4, 5]),
        conv: param([64, 3, 3, 3]),
        ones_inside: param([2, 1, 3, 1]),
        unused: param([4, 4]),
    }
}

/// A sum of quadratics `sum(c * (p - 1)^2)` with fixed per-parameter curvature,
/// so every used parameter gets a gradient and `unused` gets none.
fn loss(z: &Zoo<B>) -> Tensor<B, 1> {
    fn q<const D: usize>(p: &Param<Tensor<B, D>>, c: f64) -> Tensor<B, 1> {
        p.val().sub_scalar(1.0).square().mul_scalar(c).sum()
    }
    q(&z.vector, 1.0)
        + q(&z.scalar, 2.0)
        + q(&z.blocked, 0.5)
        + q(&z.row, 1.5)
        + q(&z.cube, 1.0)
        + q(&z.conv, 0.2)
        + q(&z.ones_inside, 3.0)
}

fn value(t: Tensor<B, 1>) -> f64 {
    t.into_data().convert::<f64>().to_vec::<f64>().unwrap()[0]
}

fn train(mut optimizer: impl Optimizer<Zoo<B>, B>, lr: f64) {
    let mut model = zoo();
    let unused_before = model.unused.val().into_data();
    let first = value(loss(&model));
    for _ in 0..30 {
        let grads = GradientsParams::from_grads(loss(&model).backward(), &model);
        model = optimizer.step(lr, model, grads);
    }
    let last = value(loss(&model));
    assert!(last.is_finite() && last < 0.5 * first, "loss {first} -> {last}");
    assert_eq!(
        model.unused.val().into_data(),
        unused_before,
        "a parameter with no gradient must not move"
    );
}

#[test]
fn kradagrad_star_trains_every_shape_class() {
    // Block size 8: [10, 20] and the conv kernel (merged [64, 27]) are blocked with remainders.
    train(
        KradagradStarConfig::new()
            .with_block_size(Some(8))
            .with_preconditioning_compute_steps(5)
            .init(),
        0.05,
    );
}

#[test]
fn kradagrad_trains_every_shape_class() {
    train(
        KradagradConfig::new()
            .with_block_size(Some(8))
            .with_preconditioning_compute_steps(5)
            .init(),
        0.02,
    );
}

#[test]
fn shampoo_trains_every_shape_class() {
    train(
        ShampooConfig::new()
            .with_block_size(Some(8))
            .with_preconditioning_compute_steps(5)
            .init(),
        0.05,
    );
}

#[test]
fn no_blocking_and_no_merging_train_too() {
    train(
        KradagradStarConfig::new()
            .with_block_size(None)
            .with_merge_dims(false)
            .init(),
        0.05,
    );
    train(
        ShampooConfig::new()
            .with_block_size(None)
            .with_preconditioning_compute_steps(3)
            .init(),
        0.05,
    );
}

#[test]
fn merged_rank_zero_takes_the_plain_grafted_direction() {
    use burn::optim::SimpleOptimizer;
    // [1] merges to rank 0: the first step is W - lr * G (SGD-norm graft of G is G itself).
    let device = Default::default();
    // (f32 like the rest of this test binary: Burn 0.21 shares one default
    // float dtype per device across NdArray<f32> and NdArray<f64>.)
    let w = Tensor::<NdArray<f32>, 1>::from_data([0.5], &device);
    let g = Tensor::<NdArray<f32>, 1>::from_data([-2.0], &device);
    let optimizer = KradagradStarConfig::new().build();
    let (w1, state) = optimizer.step(0.1, w, g.clone(), None);
    let first = w1.clone().into_data().to_vec::<f32>().unwrap()[0] as f64;
    assert!((first - 0.7).abs() < 1e-6, "{first}");
    // Second step: momentum 0.9 -> m = 0.9 * G + G.
    let (w2, _) = optimizer.step(0.1, w1, g, state);
    let got = w2.into_data().to_vec::<f32>().unwrap()[0] as f64;
    assert!((got - (0.7 + 0.1 * 2.0 * 1.9)).abs() < 1e-6, "{got}");
}
