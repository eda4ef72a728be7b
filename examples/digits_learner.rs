//! burn-train's `Learner` with KrADagrad* on real data: the UCI handwritten
//! digits (1797 8x8 images, embedded in the `smartcore` crate), classified by
//! a 64-128-10 MLP with an 80/20 train/test split, against Burn's Adam;
//! KrADagrad* runs twice, per parameter (`init`) and through the whole-model
//! front end (`init_batched`).
//!
//! ```text
//! cargo run --release --example digits_learner -- [--epochs 15] [--backend ndarray|wgpu]
//! ```
//! Burn's training dashboard shows the loss and accuracy per epoch (in a
//! terminal); a final table compares the two optimizers on the test split.

use burn::backend::{Autodiff, NdArray};
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::{AdamConfig, Optimizer};
use burn::record::CompactRecorder;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{ClassificationOutput, InferenceStep, Learner, SupervisedTraining, TrainOutput, TrainStep};
use kradagrad_burn::KradagradStarConfig;
use kradagrad_burn_suite::datasets::{uci_digits, Images};

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

/// 64 -> 128 -> 10 with ReLU.
#[derive(Module, Debug)]
struct DigitNet<B: Backend> {
    hidden: Linear<B>,
    output: Linear<B>,
    activation: Relu,
}

impl<B: Backend> DigitNet<B> {
    fn new(device: &B::Device) -> Self {
        Self {
            hidden: LinearConfig::new(64, 128).init(device),
            output: LinearConfig::new(128, 10).init(device),
            activation: Relu::new(),
        }
    }

    fn classify(&self, batch: DigitBatch<B>) -> ClassificationOutput<B> {
        let logits = self
            .output
            .forward(self.activation.forward(self.hidden.forward(batch.images)));
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

/// Trains with burn-train's supervised `Learner` and returns the model.
fn fit<B, O>(
    name: &str,
    optimizer: O,
    lr: f64,
    epochs: usize,
    device: &B::Device,
) -> DigitNet<B::InnerBackend>
where
    B: AutodiffBackend,
    O: Optimizer<DigitNet<B>, B> + 'static,
{
    let (train, test) = load_digits();
    B::seed(device, 8);
    let train_loader = DataLoaderBuilder::new(DigitBatcher)
        .batch_size(64)
        .shuffle(8)
        .build(InMemDataset::new(train));
    let valid_loader = DataLoaderBuilder::new(DigitBatcher)
        .batch_size(360)
        .build(InMemDataset::new(test));
    let directory = std::path::Path::new("target/digits_learner").join(name);
    let training = SupervisedTraining::new(&directory, train_loader, valid_loader)
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .metric_train_numeric(AccuracyMetric::new())
        .metric_valid_numeric(AccuracyMetric::new())
        .num_epochs(epochs)
        // Every epoch's model and optimizer state (the optimizers' Burn records) go to
        // <directory>/checkpoint.
        .with_file_checkpointer(CompactRecorder::new())
        .summary();
    let learner = Learner::new(DigitNet::<B>::new(device), optimizer, lr);
    training.launch(learner).model
}

fn run<B: AutodiffBackend>(epochs: usize, device: B::Device) {
    let (_, test) = load_digits();
    println!("UCI digits: 1437 training and 360 test images; {epochs} epochs; batch 64\n");
    let star = fit::<B, _>(
        "kradagrad_star",
        KradagradStarConfig::new().init(),
        0.05,
        epochs,
        &device,
    );
    // The same optimizer through the whole-model front end (factors stacked
    // across the layers by block shape): what a GPU run would use.
    let batched = fit::<B, _>(
        "kradagrad_star_batched",
        KradagradStarConfig::new().init_batched(),
        0.05,
        epochs,
        &device,
    );
    let adam = fit::<B, _>("adam", AdamConfig::new().init(), 1e-3, epochs, &device);
    let inner = device.clone();
    let (star_loss, star_acc) = evaluate(&star, &test, &inner);
    let (batched_loss, batched_acc) = evaluate(&batched, &test, &inner);
    let (adam_loss, adam_acc) = evaluate(&adam, &test, &inner);
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

fn main() {
    let mut epochs = 15;
    let mut backend = "ndarray".to_string();
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        match (pair[0].as_str(), pair.get(1)) {
            ("--epochs", Some(v)) => epochs = v.parse().expect("--epochs takes a number"),
            ("--backend", Some(v)) => backend = v.clone(),
            _ => {
                eprintln!("usage: digits_learner [--epochs N] [--backend ndarray|wgpu]");
                std::process::exit(2);
            }
        }
    }
    match backend.as_str() {
        "ndarray" => run::<Autodiff<NdArray<f32>>>(epochs, Default::default()),
        #[cfg(feature = "wgpu")]
        "wgpu" => run::<Autodiff<burn::backend::Wgpu>>(epochs, Default::default()),
        other => {
            eprintln!("unknown or disabled backend {other}");
            std::process::exit(2);
        }
    }
}
