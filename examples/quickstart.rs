//! Quickstart: train a small MLP with KrADagrad* on the CPU (burn-ndarray)
//! through Burn's autodiff and `OptimizerAdaptor`, printing the loss as it falls.
//!
//! ```text
//! cargo run --release --example quickstart -- [--optimizer kradagrad-star|kradagrad|shampoo|adam] [--steps 300]
//! ```

use burn::backend::{Autodiff, NdArray};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::{backend::Backend, Distribution, Tensor};
use kradagrad_burn::{KradagradConfig, KradagradStarConfig, ShampooConfig};
use kradagrad_burn_suite::cli::{exit_with_usage, flag_pairs, print_help_if_asked, value_or_usage};

type B = Autodiff<NdArray<f32>>;

/// A 2 -> 64 -> 64 -> 1 ReLU network.
#[derive(Module, Debug)]
struct Mlp<B: Backend> {
    input: Linear<B>,
    hidden: Linear<B>,
    output: Linear<B>,
    activation: Relu,
}

impl<B: Backend> Mlp<B> {
    fn new(device: &B::Device) -> Self {
        Self {
            input: LinearConfig::new(2, 64).init(device),
            hidden: LinearConfig::new(64, 64).init(device),
            output: LinearConfig::new(64, 1).init(device),
            activation: Relu::new(),
        }
    }

    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let x = self.activation.forward(self.input.forward(x));
        let x = self.activation.forward(self.hidden.forward(x));
        self.output.forward(x)
    }
}

/// Regression target `sin(3 x0) + x1^2` on 512 points of `[-1, 1]^2`.
fn data(device: &burn::backend::ndarray::NdArrayDevice) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let x = Tensor::<B, 2>::random([512, 2], Distribution::Uniform(-1.0, 1.0), device);
    let x0 = x.clone().narrow(1, 0, 1);
    let x1 = x.clone().narrow(1, 1, 1);
    let y = x0.mul_scalar(3.0).sin() + x1.square();
    (x, y)
}

fn train<O: Optimizer<Mlp<B>, B>>(mut optimizer: O, lr: f64, steps: usize) {
    let device = Default::default();
    let (x, y) = data(&device);
    let mut model = Mlp::<B>::new(&device);
    for step in 0..=steps {
        let loss = (model.forward(x.clone()) - y.clone()).square().mean();
        if step % (steps / 12).max(1) == 0 || step == steps {
            let value = loss.clone().into_data().convert::<f64>().to_vec::<f64>().unwrap()[0];
            println!("step {step:>4}  loss {value:.6}");
        }
        if step == steps {
            break;
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(lr, model, grads);
    }
}

/// `--help`: what the example does, its flags and their defaults.
const HELP: &str = "\
quickstart: the smallest training loop. A 2-64-64-1 MLP regresses sin(3 x0) + x1^2
on burn-ndarray with one optimizer at the library's defaults, printing the loss
every few steps.

usage: quickstart [--optimizer kradagrad-star|kradagrad|shampoo|adam] [--steps N]

  --optimizer NAME   [kradagrad-star]
  --steps N          [300]
  -h, --help         this text
";

fn usage() -> ! {
    exit_with_usage(HELP)
}

fn main() {
    let mut optimizer = "kradagrad-star".to_string();
    let mut steps = 300usize;
    print_help_if_asked(HELP);
    for (flag, value) in flag_pairs().unwrap_or_else(|| usage()) {
        match flag.as_str() {
            "--optimizer" => optimizer = value,
            "--steps" => steps = value_or_usage(&value, usage),
            _ => usage(),
        }
    }
    B::seed(&Default::default(), 42);
    println!("Training a 2-64-64-1 MLP with {optimizer} on burn-ndarray for {steps} steps");
    match optimizer.as_str() {
        // Library defaults: SGD-norm grafting, momentum 0.9, roots every 20 steps.
        "kradagrad-star" => train(KradagradStarConfig::new().init(), 0.05, steps),
        "kradagrad" => train(KradagradConfig::new().init(), 0.02, steps),
        "shampoo" => train(ShampooConfig::new().init(), 0.05, steps),
        "adam" => train(AdamConfig::new().init(), 0.01, steps),
        other => {
            eprintln!("unknown optimizer {other}");
            usage();
        }
    }
}
