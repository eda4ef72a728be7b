//! A deep fully connected ReLU autoencoder, in the spirit of the paper's MNIST
//! autoencoder, trained with SGD, Adam, Shampoo, KrADagrad* and KrADagrad over
//! several seeds with a small learning-rate sweep per method.
//!
//! ```text
//! cargo run --release --example autoencoder -- [--seeds 5] [--epochs 40] [--batch 100]
//!     [--methods sgd,adam,shampoo,kradagrad_star,kradagrad] [--backend ndarray|wgpu]
//!     [--mnist DIR] [--out target/results/autoencoder]
//! ```
//! By default it trains 64-128-64-32-8-32-64-128-64 on the UCI digits that
//! `smartcore` embeds (1437 train, 360 test images). `--mnist DIR` trains the
//! paper's 784-1000-500-250-30 (mirrored) on MNIST IDX files found in `DIR`
//! (`train-images-idx3-ubyte` and `t10k-images-idx3-ubyte`, uncompressed).
//! ReLU between layers, a linear code layer and a linear output; the loss is
//! the mean squared reconstruction error. Weights start from He's
//! initialisation (`--init burn` for Burn's default). Every method runs each
//! learning rate of its grid on every seed (the seed sets the initial weights
//! and the batch order, identical across methods); the table reports, per
//! method, the learning rate with the lowest mean best-test-loss and the
//! spread over seeds there. Writes `runs.csv`
//! (`method,lr,seed,epoch,test_loss`), `test_loss.svg` and `table.md` into `--out`.

use std::path::PathBuf;
use std::time::Instant;

use burn::backend::{Autodiff, NdArray};
use burn::module::{AutodiffModule, Initializer, Module};
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use indicatif::ProgressBar;
use kradagrad_burn::{KradagradConfig, KradagradStarConfig, ShampooConfig};
use kradagrad_burn_suite::cli::{flag_pairs, named_items, value_or_usage};
use kradagrad_burn_suite::datasets::{mnist, uci_digits, Images};
use kradagrad_burn_suite::mlp::{scalar, Mlp};
use kradagrad_burn_suite::report::{plot_log_y, progress_bar, sig3, write_csv, Series};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    Sgd,
    Adam,
    Shampoo,
    KradagradStar,
    Kradagrad,
}

const ALL: [Method; 5] = [
    Method::Sgd,
    Method::Adam,
    Method::Shampoo,
    Method::KradagradStar,
    Method::Kradagrad,
];

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Sgd => "sgd",
            Method::Adam => "adam",
            Method::Shampoo => "shampoo",
            Method::KradagradStar => "kradagrad_star",
            Method::Kradagrad => "kradagrad",
        }
    }

    /// The learning-rate grid: half a decade apart, bracketing the best value
    /// of a one-seed pilot (SGD-norm grafting gives Shampoo and KrADagrad*
    /// SGD's step scale; 0.3 diverges for SGD, Shampoo and KrADagrad*).
    fn grid(self) -> [f64; 3] {
        match self {
            Method::Sgd | Method::Shampoo | Method::KradagradStar | Method::Kradagrad => [0.03, 0.1, 0.3],
            Method::Adam => [1e-3, 3e-3, 1e-2],
        }
    }
}

struct Args {
    seeds: u64,
    epochs: usize,
    batch: usize,
    methods: Vec<Method>,
    backend: String,
    mnist: Option<PathBuf>,
    out: PathBuf,
    /// He initialisation (`true`) or Burn's default for `Linear`.
    he_init: bool,
    /// Learning-rate grids given with `--lrs METHOD=a,b,c`.
    grids: Vec<(Method, Vec<f64>)>,
}

impl Args {
    fn grid(&self, method: Method) -> Vec<f64> {
        self.grids
            .iter()
            .find(|(m, _)| *m == method)
            .map_or_else(|| method.grid().to_vec(), |(_, g)| g.clone())
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: autoencoder [--seeds 5] [--epochs 40] [--batch 100] [--methods {}] \
         [--backend ndarray|wgpu] [--init he|burn] [--lrs METHOD=a,b,c]... [--mnist DIR] [--out DIR]",
        ALL.map(Method::name).join(",")
    );
    std::process::exit(2)
}

fn parse() -> Args {
    let mut args = Args {
        seeds: 5,
        epochs: 40,
        batch: 100,
        methods: ALL.to_vec(),
        backend: "ndarray".into(),
        mnist: None,
        out: PathBuf::from("target/results/autoencoder"),
        he_init: true,
        grids: Vec::new(),
    };
    for (flag, value) in flag_pairs().unwrap_or_else(|| usage()) {
        let value = value.as_str();
        match flag.as_str() {
            "--seeds" => args.seeds = value_or_usage(value, usage),
            "--epochs" => args.epochs = value_or_usage(value, usage),
            "--batch" => args.batch = value_or_usage(value, usage),
            "--backend" if ["ndarray", "wgpu"].contains(&value) => args.backend = value.into(),
            "--mnist" => args.mnist = Some(PathBuf::from(value)),
            "--out" => args.out = PathBuf::from(value),
            "--init" if value == "he" || value == "burn" => args.he_init = value == "he",
            "--lrs" => {
                let (method, grid) = value.split_once('=').unwrap_or_else(|| usage());
                let method = ALL
                    .into_iter()
                    .find(|a| a.name() == method)
                    .unwrap_or_else(|| usage());
                let grid: Vec<f64> = grid.split(',').map(|v| value_or_usage(v, usage)).collect();
                args.grids.push((method, grid));
            }
            "--methods" => args.methods = named_items(value, &ALL, Method::name).unwrap_or_else(|| usage()),
            _ => usage(),
        }
    }
    if args.seeds == 0 || args.epochs == 0 || args.batch == 0 {
        usage();
    }
    args
}

/// Encoder and decoder, ReLU between layers, linear code and linear output.
#[derive(Module, Debug)]
struct Autoencoder<B: Backend> {
    encoder: Mlp<B>,
    decoder: Mlp<B>,
}

impl<B: Backend> Autoencoder<B> {
    /// `dims` runs input to code; the decoder mirrors it.
    fn new(dims: &[usize], he_init: bool, device: &B::Device) -> Self {
        let mirrored: Vec<usize> = dims.iter().rev().copied().collect();
        let half = |dims: &[usize]| {
            if he_init {
                let he = Initializer::KaimingNormal {
                    gain: std::f64::consts::SQRT_2,
                    fan_out_only: false,
                };
                Mlp::with_initializer(dims, he, device)
            } else {
                Mlp::new(dims, device)
            }
        };
        Self {
            encoder: half(dims),
            decoder: half(&mirrored),
        }
    }

    /// Mean squared reconstruction error.
    fn loss(&self, x: Tensor<B, 2>) -> Tensor<B, 1> {
        (self.decoder.forward(self.encoder.forward(x.clone())) - x)
            .square()
            .mean()
    }
}

/// One training run: the test loss before training and after every epoch.
struct Run {
    method: Method,
    lr: f64,
    seed: u64,
    test_losses: Vec<f64>,
    seconds: f64,
}

impl Run {
    fn best(&self) -> f64 {
        self.test_losses.iter().copied().fold(f64::INFINITY, f64::min)
    }
}

/// Mean reconstruction error over `images`, in batches.
fn test_loss<B: AutodiffBackend>(
    model: &Autoencoder<B::InnerBackend>,
    images: &Images,
    device: &B::Device,
) -> f64 {
    let chunk = 1000;
    let mut total = 0.0;
    for start in (0..images.len()).step_by(chunk) {
        let rows = chunk.min(images.len() - start);
        let x = Tensor::<B::InnerBackend, 2>::from_data(
            TensorData::new(
                images.pixels[start * images.dim..(start + rows) * images.dim].to_vec(),
                [rows, images.dim],
            ),
            device,
        );
        total += scalar(model.loss(x)) * rows as f64;
    }
    total / images.len() as f64
}

/// What every run of a sweep shares.
struct Trainer<'a, B: AutodiffBackend> {
    dims: &'a [usize],
    data: (&'a Images, &'a Images),
    args: &'a Args,
    device: &'a B::Device,
    bar: &'a ProgressBar,
}

impl<B: AutodiffBackend> Trainer<'_, B> {
    /// Trains one model from `seed`; returns the test loss before training and
    /// after every epoch. A diverged run (non-finite test loss) stops there.
    fn train<O: Optimizer<Autoencoder<B>, B>>(&self, mut optimizer: O, lr: f64, seed: u64) -> Vec<f64> {
        let ((train, test), device, epochs) = (self.data, self.device, self.args.epochs);
        B::seed(device, seed);
        let mut model = Autoencoder::<B>::new(self.dims, self.args.he_init, device);
        let mut order: Vec<usize> = (0..train.len()).collect();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut losses = vec![test_loss::<B>(&model.valid(), test, device)];
        for _ in 0..epochs {
            order.shuffle(&mut rng);
            for batch in order.chunks(self.args.batch) {
                let pixels = TensorData::new(train.gather(batch), [batch.len(), train.dim]);
                let loss = model.loss(Tensor::<B, 2>::from_data(pixels, device));
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = optimizer.step(lr, model, grads);
            }
            let test = test_loss::<B>(&model.valid(), test, device);
            losses.push(test);
            self.bar.inc(1);
            if !test.is_finite() {
                self.bar.inc((epochs + 1 - losses.len()) as u64);
                break;
            }
        }
        losses
    }
}

/// Every method, learning rate and seed on backend `B`.
fn sweep<B: AutodiffBackend>(
    args: &Args,
    dims: &[usize],
    data: (&Images, &Images),
    device: &B::Device,
) -> Vec<Run> {
    let total = args.methods.iter().map(|&m| args.grid(m).len()).sum::<usize>() as u64
        * args.seeds
        * args.epochs as u64;
    let bar = progress_bar(total);
    let trainer = Trainer::<B> {
        dims,
        data,
        args,
        device,
        bar: &bar,
    };
    let mut runs = Vec::new();
    for &method in &args.methods {
        let start = Instant::now();
        for lr in args.grid(method) {
            for seed in 0..args.seeds {
                bar.set_message(format!("{} lr {lr} seed {seed}", method.name()));
                let run_start = Instant::now();
                let test_losses = match method {
                    Method::Sgd => {
                        let momentum = MomentumConfig {
                            momentum: 0.9,
                            dampening: 0.0,
                            nesterov: false,
                        };
                        trainer.train(SgdConfig::new().with_momentum(Some(momentum)).init(), lr, seed)
                    }
                    Method::Adam => trainer.train(AdamConfig::new().with_epsilon(1e-8).init(), lr, seed),
                    Method::Shampoo => trainer.train(ShampooConfig::new().init(), lr, seed),
                    Method::KradagradStar => trainer.train(KradagradStarConfig::new().init(), lr, seed),
                    Method::Kradagrad => trainer.train(KradagradConfig::new().init(), lr, seed),
                };
                let seconds = run_start.elapsed().as_secs_f64();
                runs.push(Run {
                    method,
                    lr,
                    seed,
                    test_losses,
                    seconds,
                });
            }
        }
        bar.suspend(|| {
            println!(
                "{:<15} {} runs in {:.1} s",
                method.name(),
                args.grid(method).len() as u64 * args.seeds,
                start.elapsed().as_secs_f64()
            )
        });
    }
    bar.finish_and_clear();
    runs
}

fn mean_std(values: &[f64]) -> (f64, f64) {
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (values.len().max(2) - 1) as f64;
    (mean, var.sqrt())
}

/// Per method: its best learning rate by mean best test loss, and the runs there.
fn best_per_method<'a>(args: &Args, runs: &'a [Run]) -> Vec<(Method, f64, Vec<&'a Run>)> {
    args.methods
        .iter()
        .map(|&method| {
            let at = |lr: f64| {
                runs.iter()
                    .filter(|r| r.method == method && r.lr == lr)
                    .collect::<Vec<_>>()
            };
            let score = |lr: f64| {
                let bests: Vec<f64> = at(lr).iter().map(|r| r.best()).collect();
                let (mean, _) = mean_std(&bests);
                if mean.is_finite() {
                    mean
                } else {
                    f64::INFINITY
                }
            };
            let lr = args
                .grid(method)
                .into_iter()
                .min_by(|a, b| score(*a).total_cmp(&score(*b)))
                .expect("grid");
            (method, lr, at(lr))
        })
        .collect()
}

fn table(
    args: &Args,
    problem: &str,
    backend: &str,
    runs: &[Run],
    best: &[(Method, f64, Vec<&Run>)],
) -> String {
    let mut text = format!(
        "Autoencoder {problem}, {} epochs, batch {}, {} seeds per learning rate, {} initialisation, backend {backend}.\n\
         Test loss = mean squared reconstruction error on the held-out images; \"best\" = lowest over epochs.\n\n\
         | method | best lr | best test loss, mean | std | min | max | final test loss, mean | wall s per run |\n\
         |---|---|---|---|---|---|---|---|\n",
        args.epochs,
        args.batch,
        args.seeds,
        if args.he_init { "He (Kaiming normal, gain sqrt 2)" } else { "Burn's default Linear" }
    );
    for (method, lr, at) in best {
        let bests: Vec<f64> = at.iter().map(|r| r.best()).collect();
        let finals: Vec<f64> = at
            .iter()
            .map(|r| *r.test_losses.last().expect("losses"))
            .collect();
        let (mean, std) = mean_std(&bests);
        let min = bests.iter().copied().fold(f64::INFINITY, f64::min);
        let max = bests.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let seconds: Vec<f64> = at.iter().map(|r| r.seconds).collect();
        text += &format!(
            "| {} | {lr} | {} | {} | {} | {} | {} | {} |\n",
            method.name(),
            sig3(mean),
            sig3(std),
            sig3(min),
            sig3(max),
            sig3(mean_std(&finals).0),
            sig3(mean_std(&seconds).0)
        );
    }
    text += "\nEvery learning rate (mean best test loss over seeds):\n\n| method | lr | mean | std |\n|---|---|---|---|\n";
    for &method in &args.methods {
        for lr in args.grid(method) {
            let bests: Vec<f64> = runs
                .iter()
                .filter(|r| r.method == method && r.lr == lr)
                .map(|r| r.best())
                .collect();
            let (mean, std) = mean_std(&bests);
            text += &format!("| {} | {lr} | {} | {} |\n", method.name(), sig3(mean), sig3(std));
        }
    }
    text
}

fn main() {
    let args = parse();
    let (problem, dims, (train_set, test_set)) = match &args.mnist {
        Some(dir) => {
            let data = mnist(dir).unwrap_or_else(|e| {
                eprintln!("--mnist: {e}");
                std::process::exit(1)
            });
            (
                "784-1000-500-250-30 (mirrored) on MNIST",
                vec![784, 1000, 500, 250, 30],
                data,
            )
        }
        None => (
            "64-128-64-32-8 (mirrored) on the UCI digits",
            vec![64, 128, 64, 32, 8],
            uci_digits(),
        ),
    };
    println!(
        "{problem}: {} train, {} test images; methods {}",
        train_set.len(),
        test_set.len(),
        args.methods
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let data = (&train_set, &test_set);
    let (backend, runs) = match args.backend.as_str() {
        "ndarray" => (
            "ndarray (CPU)".to_string(),
            sweep::<Autodiff<NdArray<f32>>>(&args, &dims, data, &Default::default()),
        ),
        _ => run_wgpu(&args, &dims, data),
    };
    let best = best_per_method(&args, &runs);
    std::fs::create_dir_all(&args.out).expect("create --out");
    let all: Vec<Series> = runs
        .iter()
        .map(|r| Series {
            name: format!("{},{},{}", r.method.name(), r.lr, r.seed),
            points: r
                .test_losses
                .iter()
                .enumerate()
                .map(|(e, &l)| (e as f64, l))
                .collect(),
        })
        .collect();
    write_csv(&args.out.join("runs.csv"), "method,lr,seed,epoch,test_loss", &all).expect("write runs.csv");
    // The plot: per method, the mean test-loss curve over seeds at its best learning rate.
    let curves: Vec<Series> = best
        .iter()
        .map(|(method, lr, at)| Series {
            name: format!("{} (lr {lr})", method.name()),
            points: (0..=args.epochs)
                .map(|e| {
                    let values: Vec<f64> = at.iter().filter_map(|r| r.test_losses.get(e).copied()).collect();
                    (
                        e as f64,
                        if values.len() == at.len() {
                            mean_std(&values).0
                        } else {
                            f64::NAN
                        },
                    )
                })
                .collect(),
        })
        .collect();
    plot_log_y(
        &args.out.join("test_loss.svg"),
        &format!("Autoencoder {problem}: test loss, mean of {} seeds", args.seeds),
        "epoch",
        "test MSE",
        &curves,
    )
    .expect("write test_loss.svg");
    let table = table(&args, problem, &backend, &runs, &best);
    std::fs::write(args.out.join("table.md"), &table).expect("write table.md");
    println!("\n{table}");
    println!(
        "wrote runs.csv, test_loss.svg and table.md into {}",
        args.out.display()
    );
}

#[cfg(feature = "wgpu")]
fn run_wgpu(args: &Args, dims: &[usize], data: (&Images, &Images)) -> (String, Vec<Run>) {
    let name = kradagrad_burn_suite::backends::wgpu_adapter().unwrap_or_else(|reason| {
        eprintln!("wgpu is unavailable: {reason}");
        std::process::exit(1)
    });
    let runs = sweep::<Autodiff<burn::backend::Wgpu<f32, i32>>>(args, dims, data, &Default::default());
    (format!("wgpu ({name})"), runs)
}

#[cfg(not(feature = "wgpu"))]
fn run_wgpu(_: &Args, _: &[usize], _: (&Images, &Images)) -> (String, Vec<Run>) {
    eprintln!("built without the `wgpu` feature");
    std::process::exit(1)
}
