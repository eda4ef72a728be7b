//! Reproduction of the Burn 0.21 fused-reduction panic (docs/performance.md, "Why the rows
//! version failed under minimal autotune"). Not built by Cargo. To run it: `git apply
//! docs/repro/rows-tail.patch` (puts `engine::finish` on `[1, numel]` rows when `KRAD_ROWS` is
//! set), copy this file to `examples/`, `cargo build --example two_params --features wgpu`, then
//! `CUBECL_AUTOTUNE_LEVEL=minimal KRAD_ROWS=1 target/debug/examples/two_params both` (panics in
//! step 1); without `KRAD_ROWS`, with `row` instead of `both` or without the autotune variable it
//! runs all 8 steps.
use burn::backend::{Autodiff, Wgpu};
use burn::module::{Module, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::{Distribution, Tensor};
use kradagrad_burn::{Grafting, KradagradStarConfig};
type B = Autodiff<Wgpu>;
#[derive(Module, Debug)]
struct M<B: burn::tensor::backend::Backend> {
    blocked: Param<Tensor<B, 2>>,
    row: Param<Tensor<B, 2>>,
}
fn main() {
    let which = std::env::args().nth(1).unwrap_or("both".into());
    let d = Default::default();
    let mut m = M::<B> {
        blocked: Param::from_tensor(Tensor::random([10, 20], Distribution::Normal(0., 1.), &d)),
        row: Param::from_tensor(Tensor::random([1, 7], Distribution::Normal(0., 1.), &d)),
    };
    let cfg = KradagradStarConfig::new()
        .with_block_size(Some(8))
        .with_preconditioning_compute_steps(3)
        .with_grafting(Grafting::Adam)
        .with_nesterov(true)
        .with_weight_decay(0.01);
    let mut opt = cfg.init_batched();
    for s in 0..8 {
        let loss = match which.as_str() {
            "row" => m.row.val().sub_scalar(1.0).square().mul_scalar(1.5).sum(),
            _ => {
                m.blocked.val().sub_scalar(1.0).square().mul_scalar(0.5).sum()
                    + m.row.val().sub_scalar(1.0).square().mul_scalar(1.5).sum()
            }
        };
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        m = opt.step(0.05, m, grads);
        eprintln!("step {s}");
    }
    println!("{:?}", m.row.val().into_data());
}
