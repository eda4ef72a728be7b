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

fn main() {
    let mut optimizer = "kradagrad-star".to_string();
    let mut steps = 300usize;
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        match (pair[0].as_str(), pair.get(1)) {
            ("--optimizer", Some(v)) => optimizer = v.clone(),
            ("--steps", Some(v)) => steps = v.parse().expect("--steps takes a number"),
            _ => {
                eprintln!(
                    "usage: quickstart [--optimizer kradagrad-star|kradagrad|shampoo|adam] [--steps N]"
                );
                std::process::exit(2);
            }
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
            std::process::exit(2);
        }
    }
}
