//! burn-train's `Learner` with KrADagrad* on real data: the UCI handwritten
//! digits (1797 8x8 images, embedded in the `smartcore` crate) with an 80/20
//! train/test split, classified by a 64-128-10 MLP or a small convnet (two
//! 3x3 convolutions of 16 and 32 channels, 2x2 max pooling, a linear layer).
//!
//! ```text
//! cargo run --release --example digits_learner -- [--epochs 15] [--backend ndarray|wgpu] [--model mlp|convnet]
//! cargo run --release --example digits_learner -- --study defaults --model convnet [--seeds 3] [--epochs 15] [--out DIR]
//! ```
//! The first form trains KrADagrad* per parameter (`init`), KrADagrad* through
//! the whole-model front end (`init_batched`) and Burn's Adam, with Burn's
//! training dashboard (in a terminal), then prints the three on the test split.
//!
//! `--study defaults` measures the library's defaults: KrADagrad* started from
//! an SGD setup (SGD-norm grafting, heavy-ball momentum: the defaults) and from
//! an Adam setup (bias-corrected Adam grafting, first-moment momentum), each at
//! its defaults and with one schedule setting moved (roots every 5 or 100
//! steps, statistics every 10 with roots every 100, preconditioning from step
//! 101, statistics decay 0.999), against Adam; every setup at four learning
//! rates half a decade apart, every point on `--seeds` seeds. It shows a
//! progress bar and writes `runs.csv` and `table.md` into `--out`
//! (default `target/digits_learner/study`).

use std::path::PathBuf;
use std::time::Instant;

use burn::backend::{Autodiff, NdArray};
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::optim::{AdamConfig, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::PadMode;
use burn::tensor::{Int, Tensor, TensorData};
use burn::train::metric::{AccuracyMetric, LossMetric, MetricDefinition};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};
use burn::train::{
    ClassificationOutput, InferenceStep, Learner, LearnerSummary, SupervisedTraining, TrainOutput, TrainStep,
};
use kradagrad_burn::{Grafting, KradagradStarConfig, MomentumConfig, MomentumForm};
use kradagrad_burn_suite::cli::{exit_with_usage, flag_pairs, print_help_if_asked, value_or_usage};
use kradagrad_burn_suite::datasets::{uci_digits, Images};
use kradagrad_burn_suite::report::{mean_std, progress_bar, sig3, spread, strictly_inside};

/// One 8x8 image (64 values in [0, 1]) and its digit.
#[derive(Clone, Debug)]
struct Digit {
    pixels: [f32; 64],
    label: i64,
}

/// The digits set, shuffled with a fixed seed and split 80/20.
fn load_digits() -> (Vec<Digit>, Vec<Digit>) {
    let items = |images: Images| {
        (0..images.len())
            .map(|i| Digit {
                pixels: images.image(i).try_into().expect("64 values"),
                label: images.labels[i] as i64,
            })
            .collect()
    };
    let (train, test) = uci_digits();
    (items(train), items(test))
}

/// A batch: images `[batch, 64]` and labels `[batch]`.
#[derive(Clone, Debug)]
struct DigitBatch<B: Backend> {
    images: Tensor<B, 2>,
    labels: Tensor<B, 1, Int>,
}

#[derive(Clone, Default)]
struct DigitBatcher;

impl<B: Backend> Batcher<B, Digit, DigitBatch<B>> for DigitBatcher {
    fn batch(&self, items: Vec<Digit>, device: &B::Device) -> DigitBatch<B> {
        let n = items.len();
        let pixels: Vec<f32> = items.iter().flat_map(|d| d.pixels).collect();
        let labels: Vec<i64> = items.iter().map(|d| d.label).collect();
        DigitBatch {
            images: Tensor::from_data(TensorData::new(pixels, [n, 64]), device),
            labels: Tensor::from_data(TensorData::new(labels, [n]), device),
        }
    }
}

/// Which network classifies the digits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Model {
    /// 64 -> 128 -> 10 with ReLU.
    Mlp,
    /// Two 3x3 convolutions (16 and 32 channels, ReLU), 2x2 max pooling, 512 -> 10.
    ConvNet,
}

/// The convnet's feature extractor: `[n, 1, 8, 8]` -> `[n, 32, 4, 4]`.
#[derive(Module, Debug)]
struct ConvFeatures<B: Backend> {
    first: Conv2d<B>,
    second: Conv2d<B>,
    pool: MaxPool2d,
}

/// `conv` (a 3x3 `Conv2d` with "same" padding, stride 1) applied to `x`
/// `[n, in, h, w]` as one matmul of its weight `[out, in * 9]` with the nine
/// shifted copies of the zero-padded input: the sums of a direct convolution,
/// whose backward pass burn-ndarray computes element by element (about 0.3 s a
/// step for this network) where this takes a few milliseconds.
fn same_3x3<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, channels, h, w] = x.dims();
    let [out, _, _, _] = conv.weight.dims();
    let padded = x.pad([(0, 0), (0, 0), (1, 1), (1, 1)], PadMode::Constant(0.0));
    // Offset (dy, dx) at index dy * 3 + dx: the weight's own order within a channel.
    let shifted: Vec<Tensor<B, 4>> = (0..9)
        .map(|k| {
            padded
                .clone()
                .slice([0..n, 0..channels, k / 3..k / 3 + h, k % 3..k % 3 + w])
        })
        .collect();
    let patches = Tensor::stack::<5>(shifted, 2) // [n, in, 9, h, w]
        .reshape([n, channels * 9, h * w])
        .swap_dims(1, 2)
        .reshape([n * h * w, channels * 9]);
    let mut y = patches.matmul(conv.weight.val().reshape([out, channels * 9]).transpose());
    if let Some(bias) = &conv.bias {
        y = y + bias.val().unsqueeze_dim(0);
    }
    y.reshape([n, h, w, out]).permute([0, 3, 1, 2])
}

/// The classifier: convolutional features (convnet) or a hidden layer (MLP),
/// then a linear layer to the 10 digits.
#[derive(Module, Debug)]
struct DigitNet<B: Backend> {
    convs: Option<ConvFeatures<B>>,
    hidden: Option<Linear<B>>,
    output: Linear<B>,
    activation: Relu,
}

impl<B: Backend> DigitNet<B> {
    fn new(model: Model, device: &B::Device) -> Self {
        let conv = |channels| {
            Conv2dConfig::new(channels, [3, 3])
                .with_padding(PaddingConfig2d::Same)
                .init(device)
        };
        match model {
            Model::Mlp => Self {
                convs: None,
                hidden: Some(LinearConfig::new(64, 128).init(device)),
                output: LinearConfig::new(128, 10).init(device),
                activation: Relu::new(),
            },
            Model::ConvNet => Self {
                convs: Some(ConvFeatures {
                    first: conv([1, 16]),
                    second: conv([16, 32]),
                    pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
                }),
                hidden: None,
                output: LinearConfig::new(32 * 4 * 4, 10).init(device),
                activation: Relu::new(),
            },
        }
    }

    fn logits(&self, images: Tensor<B, 2>) -> Tensor<B, 2> {
        let features = match (&self.convs, &self.hidden) {
            (Some(convs), _) => {
                let n = images.dims()[0];
                let x = self
                    .activation
                    .forward(same_3x3(&convs.first, images.reshape([n, 1, 8, 8])));
                let x = self.activation.forward(same_3x3(&convs.second, x));
                convs.pool.forward(x).reshape([n, 32 * 4 * 4])
            }
            (None, Some(hidden)) => self.activation.forward(hidden.forward(images)),
            (None, None) => unreachable!("a network has convolutions or a hidden layer"),
        };
        self.output.forward(features)
    }

    fn classify(&self, batch: DigitBatch<B>) -> ClassificationOutput<B> {
        let logits = self.logits(batch.images);
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.labels.clone());
        ClassificationOutput::new(loss, logits, batch.labels)
    }
}

impl<B: AutodiffBackend> TrainStep for DigitNet<B> {
    type Input = DigitBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: DigitBatch<B>) -> TrainOutput<ClassificationOutput<B>> {
        let output = self.classify(batch);
        TrainOutput::new(self, output.loss.backward(), output)
    }
}

impl<B: Backend> InferenceStep for DigitNet<B> {
    type Input = DigitBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: DigitBatch<B>) -> ClassificationOutput<B> {
        self.classify(batch)
    }
}

/// Test-split loss and accuracy of a trained network.
fn evaluate<B: Backend>(model: &DigitNet<B>, test: &[Digit], device: &B::Device) -> (f64, f64) {
    let batch: DigitBatch<B> = DigitBatcher.batch(test.to_vec(), device);
    let labels = batch.labels.clone();
    let output = model.classify(batch);
    let loss = output.loss.into_data().convert::<f64>().to_vec::<f64>().unwrap()[0];
    let predicted = output.output.argmax(1).reshape([test.len()]);
    let correct = predicted
        .equal(labels)
        .int()
        .sum()
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .unwrap()[0];
    (loss, correct as f64 / test.len() as f64)
}

/// A renderer for the study's many runs: the study's own progress bar
/// replaces the per-run dashboard.
struct Quiet;

impl MetricsRendererTraining for Quiet {
    fn update_train(&mut self, _: MetricState) {}
    fn update_valid(&mut self, _: MetricState) {}
    fn render_train(&mut self, _: TrainingProgress, _: Vec<ProgressType>) {}
    fn render_valid(&mut self, _: TrainingProgress, _: Vec<ProgressType>) {}
    fn on_train_end(&mut self, _: Option<LearnerSummary>) -> Result<(), Box<dyn std::error::Error>> {
        Ok(())
    }
}

impl MetricsRendererEvaluation for Quiet {
    fn render_test(&mut self, _: EvaluationProgress, _: Vec<ProgressType>) {}
    fn update_test(&mut self, _: EvaluationName, _: MetricState) {}
}

impl MetricsRenderer for Quiet {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, _: MetricDefinition) {}
}

/// What every training run shares.
struct Training {
    /// The training and test splits, loaded once.
    data: (Vec<Digit>, Vec<Digit>),
    model: Model,
    epochs: usize,
    /// Per-run dashboard and summary (`false`: silent, for the study).
    dashboard: bool,
    directory: PathBuf,
}

impl Training {
    /// Trains from `seed` (initial weights and batch order) with burn-train's
    /// supervised `Learner` and returns the model.
    fn fit<B, O>(
        &self,
        name: &str,
        optimizer: O,
        lr: f64,
        seed: u64,
        device: &B::Device,
    ) -> DigitNet<B::InnerBackend>
    where
        B: AutodiffBackend,
        O: Optimizer<DigitNet<B>, B> + 'static,
    {
        let (train, test) = self.data.clone();
        B::seed(device, seed);
        let train_loader = DataLoaderBuilder::new(DigitBatcher)
            .batch_size(64)
            .shuffle(seed)
            .build(InMemDataset::new(train));
        let valid_loader = DataLoaderBuilder::new(DigitBatcher)
            .batch_size(360)
            .build(InMemDataset::new(test));
        let training = SupervisedTraining::new(self.directory.join(name), train_loader, valid_loader)
            .metric_train_numeric(LossMetric::new())
            .metric_valid_numeric(LossMetric::new())
            .metric_train_numeric(AccuracyMetric::new())
            .metric_valid_numeric(AccuracyMetric::new())
            .num_epochs(self.epochs)
            // Every epoch's model and optimizer state (the optimizers' Burn records) go to
            // <directory>/<name>/checkpoint, in full precision: a half-precision recorder
            // would round the preconditioner factors on every save.
            .with_file_checkpointer(NamedMpkFileRecorder::<FullPrecisionSettings>::new());
        let training = match self.dashboard {
            true => training.summary(),
            false => training.renderer(Quiet),
        };
        let learner = Learner::new(DigitNet::<B>::new(self.model, device), optimizer, lr);
        training.launch(learner).model
    }
}

fn compare<B: AutodiffBackend>(model: Model, epochs: usize, device: B::Device) {
    println!("UCI digits: 1437 training and 360 test images; {model:?}; {epochs} epochs; batch 64\n");
    let training = Training {
        data: load_digits(),
        model,
        epochs,
        dashboard: true,
        directory: PathBuf::from("target/digits_learner"),
    };
    let star = training.fit::<B, _>(
        "kradagrad_star",
        KradagradStarConfig::new().init(),
        0.05,
        8,
        &device,
    );
    // The same optimizer through the whole-model front end (factors stacked
    // across the layers by block shape): what a GPU run would use.
    let batched = training.fit::<B, _>(
        "kradagrad_star_batched",
        KradagradStarConfig::new().init_batched(),
        0.05,
        8,
        &device,
    );
    let adam = training.fit::<B, _>("adam", AdamConfig::new().init(), 1e-3, 8, &device);
    let test = &training.data.1;
    let (star_loss, star_acc) = evaluate(&star, test, &device);
    let (batched_loss, batched_acc) = evaluate(&batched, test, &device);
    let (adam_loss, adam_acc) = evaluate(&adam, test, &device);
    println!("\n| optimizer | lr | test loss | test accuracy |");
    println!("|---|---|---|---|");
    println!(
        "| KrADagrad* | 0.05 | {star_loss:.4} | {:.2}% |",
        100.0 * star_acc
    );
    println!(
        "| KrADagrad* (batched front end) | 0.05 | {batched_loss:.4} | {:.2}% |",
        100.0 * batched_acc
    );
    println!("| Adam | 0.001 | {adam_loss:.4} | {:.2}% |", 100.0 * adam_acc);
}

/// Adam's `epsilon` in the study, for Adam and for the Adam grafting.
const ADAM_EPSILON: f32 = 1e-8;

/// Which working setup KrADagrad* starts from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Start {
    /// The library's defaults: SGD-norm grafting, heavy-ball momentum 0.9.
    FromSgd,
    /// Bias-corrected Adam grafting (betas 0.9/0.999), first-moment momentum.
    FromAdam,
}

/// One schedule setting moved from the defaults (or none).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Schedule {
    Defaults,
    RootsEvery5,
    RootsEvery100,
    Amortized,
    StartAt101,
    Beta2,
}

const SCHEDULES: [Schedule; 6] = [
    Schedule::Defaults,
    Schedule::RootsEvery5,
    Schedule::RootsEvery100,
    Schedule::Amortized,
    Schedule::StartAt101,
    Schedule::Beta2,
];

impl Schedule {
    fn describe(self) -> &'static str {
        match self {
            Schedule::Defaults => "defaults (stats every 1, roots every 20, beta2 1, from step 1)",
            Schedule::RootsEvery5 => "roots every 5",
            Schedule::RootsEvery100 => "roots every 100",
            Schedule::Amortized => "stats every 10, roots every 100",
            Schedule::StartAt101 => "preconditioning from step 101",
            Schedule::Beta2 => "beta2 0.999",
        }
    }
}

/// One optimizer of the study.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Setup {
    Adam,
    KradagradStar(Start, Schedule),
}

impl Setup {
    fn all() -> Vec<Setup> {
        let star = |start| SCHEDULES.map(|s| Setup::KradagradStar(start, s));
        [
            vec![Setup::Adam],
            star(Start::FromSgd).to_vec(),
            star(Start::FromAdam).to_vec(),
        ]
        .concat()
    }

    fn name(self) -> String {
        match self {
            Setup::Adam => "Adam".into(),
            Setup::KradagradStar(Start::FromSgd, s) => {
                format!("KrADagrad*, SGD-norm grafting: {}", s.describe())
            }
            Setup::KradagradStar(Start::FromAdam, s) => {
                format!("KrADagrad*, Adam grafting: {}", s.describe())
            }
        }
    }

    /// Four learning rates half a decade apart, around where each kind of
    /// step length works: Adam's, or the SGD step's.
    fn lrs(self) -> [f64; 4] {
        match self {
            Setup::Adam | Setup::KradagradStar(Start::FromAdam, _) => [3e-3, 1e-2, 3e-2, 0.1],
            Setup::KradagradStar(Start::FromSgd, _) => [0.03, 0.1, 0.3, 1.0],
        }
    }

    fn kradagrad_star(start: Start, schedule: Schedule) -> KradagradStarConfig {
        let config = match start {
            Start::FromSgd => KradagradStarConfig::new(),
            Start::FromAdam => KradagradStarConfig::new()
                .with_grafting(Some(Grafting::BiasCorrectedAdam {
                    beta_2: 0.999,
                    epsilon: ADAM_EPSILON as f64,
                }))
                .with_momentum(Some(MomentumConfig::new().with_form(MomentumForm::FirstMoment))),
        };
        match schedule {
            Schedule::Defaults => config,
            Schedule::RootsEvery5 => config.with_preconditioning_compute_steps(5),
            Schedule::RootsEvery100 => config.with_preconditioning_compute_steps(100),
            Schedule::Amortized => config
                .with_statistics_compute_steps(10)
                .with_preconditioning_compute_steps(100),
            Schedule::StartAt101 => config.with_start_preconditioning_step(101),
            Schedule::Beta2 => config.with_beta_2(0.999),
        }
    }
}

/// One finished run of the study.
struct Run {
    setup: Setup,
    lr: f64,
    seed: u64,
    loss: f64,
    accuracy: f64,
    seconds: f64,
}

fn study<B: AutodiffBackend>(model: Model, epochs: usize, seeds: u64, out: PathBuf, device: B::Device) {
    let training = Training {
        data: load_digits(),
        model,
        epochs,
        dashboard: false,
        directory: out.join("checkpoints"),
    };
    let setups = Setup::all();
    let bar = progress_bar((setups.len() * setups[0].lrs().len()) as u64 * seeds);
    let mut runs = Vec::new();
    for (index, &setup) in setups.iter().enumerate() {
        for lr in setup.lrs() {
            for seed in 0..seeds {
                bar.set_message(format!("setup {} lr {lr:.0e} seed {seed}", index + 1));
                let name = format!("{index}_{lr:e}_{seed}");
                let started = Instant::now();
                let trained = match setup {
                    Setup::Adam => {
                        let adam = AdamConfig::new().with_epsilon(ADAM_EPSILON).init();
                        training.fit::<B, _>(&name, adam, lr, seed, &device)
                    }
                    Setup::KradagradStar(start, schedule) => {
                        let config = Setup::kradagrad_star(start, schedule);
                        training.fit::<B, _>(&name, config.init(), lr, seed, &device)
                    }
                };
                let (loss, accuracy) = evaluate(&trained, &training.data.1, &device);
                let seconds = started.elapsed().as_secs_f64();
                runs.push(Run {
                    setup,
                    lr,
                    seed,
                    loss,
                    accuracy,
                    seconds,
                });
                bar.inc(1);
            }
        }
    }
    bar.finish();
    std::fs::create_dir_all(&out).expect("output folder");
    let mut csv = String::from("setup,lr,seed,test_loss,test_accuracy,seconds\n");
    for r in &runs {
        csv += &format!(
            "\"{}\",{},{},{:e},{},{:.3}\n",
            r.setup.name(),
            r.lr,
            r.seed,
            r.loss,
            r.accuracy,
            r.seconds
        );
    }
    std::fs::write(out.join("runs.csv"), csv).expect("runs.csv");
    let command = format!(
        "cargo run --release --example digits_learner -- --study defaults --model {} --seeds {seeds} --epochs {epochs}",
        match model {
            Model::Mlp => "mlp",
            Model::ConvNet => "convnet",
        }
    );
    let table = study_table(
        &setups,
        &runs,
        seeds as usize,
        &format!("{model:?}, {epochs} epochs, batch 64"),
        &command,
    );
    std::fs::write(out.join("table.md"), &table).expect("table.md");
    println!("{table}\nwrote runs.csv and table.md into {}", out.display());
}

/// The study's markdown: per setup, its best learning rate (lowest mean test
/// loss after the last epoch) and whether that lies inside its grid; then
/// every point.
fn study_table(setups: &[Setup], runs: &[Run], seeds: usize, what: &str, command: &str) -> String {
    let point = |setup: Setup, lr: f64| {
        let at: Vec<&Run> = runs.iter().filter(|r| r.setup == setup && r.lr == lr).collect();
        let of = |f: fn(&Run) -> f64| mean_std(&at.iter().map(|r| f(r)).collect::<Vec<_>>());
        (of(|r| r.loss), of(|r| 100.0 * r.accuracy), of(|r| r.seconds).0)
    };
    let row = |setup: Setup, lr: f64, note: &str| {
        let ((loss, loss_std), (acc, acc_std), seconds) = point(setup, lr);
        format!(
            "| {} | {} | {} | {} | {:.2} | {} | {:.1} |{note}\n",
            setup.name(),
            sig3(lr),
            sig3(loss),
            spread(loss_std, seeds),
            acc,
            spread(acc_std, seeds),
            seconds
        )
    };
    let header = "| setup | lr | test loss, mean | std | test accuracy %, mean | std | seconds per run |";
    let rule = "|---|---|---|---|---|---|---|";
    let mut text = format!(
        "UCI digits classification through burn-train's `Learner`: {what}, {seeds} seed(s), burn-ndarray (CPU), f32.\n\
         Test loss and accuracy of the model after the last epoch, on the 360 held-out images.\n\
         Command: `{command}`\n\nEach setup at its best learning rate:\n\n{header} best lr inside the grid |\n{rule}---|\n"
    );
    for &setup in setups {
        let lrs = setup.lrs();
        let scored: Vec<(f64, f64)> = lrs.iter().map(|&lr| (lr, point(setup, lr).0 .0)).collect();
        let (best, _) = *scored
            .iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("a learning-rate grid");
        let inside = match strictly_inside(&lrs, best) {
            true => " yes |",
            false => " NO: on the edge |",
        };
        text += &row(setup, best, inside);
    }
    text += &format!("\nEvery point:\n\n{header}\n{rule}\n");
    for &setup in setups {
        for lr in setup.lrs() {
            text += &row(setup, lr, "");
        }
    }
    text
}

/// `--help`: what the example does, its flags and their defaults.
const HELP: &str = "\
digits_learner: burn-train's Learner with KrADagrad* on the UCI handwritten digits
(1797 8x8 images, 80/20 split). Trains KrADagrad* (init), KrADagrad* (init_batched)
and Adam with Burn's dashboard, checkpointing each run with a full-precision
recorder, then prints their test loss and accuracy.

usage: digits_learner [--epochs N] [--backend ndarray|wgpu] [--model mlp|convnet]
       digits_learner --study defaults [--model mlp|convnet] [--seeds N] [--epochs N] [--out DIR]

  --epochs N              [15]
  --backend ndarray|wgpu  [ndarray]
  --model mlp|convnet     [mlp] a 64-128-10 MLP or a small convnet
  --study defaults        measure the library's defaults and one-setting changes
                          against Adam over learning rates and seeds (ndarray only)
  --seeds N               [3] seeds per point of the study
  --out DIR               [target/digits_learner/study] where the study writes
  -h, --help              this text
";

fn usage() -> ! {
    exit_with_usage(HELP)
}

fn main() {
    let (mut epochs, mut backend, mut model, mut defaults_study, mut seeds) =
        (15, "ndarray".to_string(), Model::Mlp, false, 3);
    let mut out = PathBuf::from("target/digits_learner/study");
    print_help_if_asked(HELP);
    for (flag, value) in flag_pairs().unwrap_or_else(|| usage()) {
        match flag.as_str() {
            "--epochs" => epochs = value_or_usage(&value, usage),
            "--backend" => backend = value,
            "--model" => {
                model = match value.as_str() {
                    "mlp" => Model::Mlp,
                    "convnet" => Model::ConvNet,
                    _ => usage(),
                }
            }
            "--study" if value == "defaults" => defaults_study = true,
            "--seeds" => seeds = value_or_usage(&value, usage),
            "--out" => out = PathBuf::from(value),
            _ => usage(),
        }
    }
    if defaults_study {
        if backend != "ndarray" {
            eprintln!("--study runs on burn-ndarray");
            std::process::exit(2);
        }
        return study::<Autodiff<NdArray<f32>>>(model, epochs, seeds, out, Default::default());
    }
    match backend.as_str() {
        "ndarray" => compare::<Autodiff<NdArray<f32>>>(model, epochs, Default::default()),
        #[cfg(feature = "wgpu")]
        "wgpu" => compare::<Autodiff<burn::backend::Wgpu>>(model, epochs, Default::default()),
        other => {
            eprintln!("unknown or disabled backend {other}");
            std::process::exit(2);
        }
    }
}
