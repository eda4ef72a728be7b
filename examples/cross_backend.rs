//! The main example: a preconditioned optimizer (KrADagrad* by default) and
//! Burn's Adam train the same MLP from the same initial weights on the same
//! data. The preconditioned run goes on burn-ndarray (CPU) and on burn-wgpu
//! (any GPU wgpu finds) side by side, so the two backends can be compared
//! step for step; Adam runs on the CPU as the reference line.
//!
//! ```text
//! cargo run --release --example cross_backend -- [--backend both|ndarray|wgpu]
//!     [--optimizer kradagrad-star|kradagrad|shampoo] [--lr X] [--adam-lr 0.01] [--epochs 25] [--out DIR]
//! ```
//! Prints one row per epoch (the training loss of each run, the relative
//! difference between the backends, the time per step) and writes
//! `losses.csv` and `loss.svg` into `--out`. Without a usable wgpu adapter it
//! says so in one line and runs the CPU part.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use burn::backend::{Autodiff, NdArray};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use indicatif::ProgressBar;
use kradagrad_burn::{KradagradConfig, KradagradStarConfig, ShampooConfig};
#[cfg(feature = "wgpu")]
use kradagrad_burn_suite::backends::wgpu_adapter;
use kradagrad_burn_suite::cli::{exit_with_usage, flag_pairs, print_help_if_asked, value_or_usage};
use kradagrad_burn_suite::mlp::{regression_data, scalar, Mlp};
use kradagrad_burn_suite::report::{plot_log_y, progress_bar, write_csv, Series};

type Cpu = Autodiff<NdArray<f32>>;
#[cfg(feature = "wgpu")]
type Gpu = Autodiff<burn::backend::Wgpu<f32, i32>>;

const DIMS: [usize; 4] = [4, 64, 64, 2];
const SAMPLES: usize = 1024;
const BATCH: usize = 128;
const STEPS_PER_EPOCH: usize = SAMPLES / BATCH;
/// Adam's default learning rate here, the best of a half-decade grid on this
/// problem over the default 25 epochs.
const ADAM_LR: f64 = 1e-2;

/// `--help`: what the example does, its flags and their defaults.
const HELP: &str = "\
cross_backend: KrADagrad* (or --optimizer) and Burn's Adam train the same MLP
(4-64-64-2, 1024 samples of a smooth regression, minibatches of 128) from the same
initial weights. The preconditioned run goes on burn-ndarray (CPU) and burn-wgpu
(GPU) side by side; Adam runs on the CPU as the reference. Prints the training loss
per epoch and writes losses.csv and loss.svg into --out.

usage: cross_backend [--backend both|ndarray|wgpu] [--optimizer NAME] [--lr X] [--adam-lr X] [--epochs N] [--out DIR]

  --backend both|ndarray|wgpu   [both] where the preconditioned run goes
                                (without a wgpu adapter, both means ndarray)
  --optimizer kradagrad-star|kradagrad|shampoo   [kradagrad-star], library defaults
  --lr X                        [KrADagrad* 0.3, KrADagrad 0.6, Shampoo 0.3]
  --adam-lr X                   [0.01]
  --epochs N                    [25], 8 steps each
  --out DIR                     [target/results/cross_backend]
  -h, --help                    this text
";

fn usage() -> ! {
    exit_with_usage(HELP)
}

/// One training run on one backend.
struct Run<B: AutodiffBackend, O: Optimizer<Mlp<B>, B>> {
    model: Option<Mlp<B>>,
    optimizer: O,
    lr: f64,
    data: (Tensor<B, 2>, Tensor<B, 2>),
    device: B::Device,
}

impl<B: AutodiffBackend, O: Optimizer<Mlp<B>, B>> Run<B, O> {
    fn new(model: Mlp<B>, optimizer: O, lr: f64, device: B::Device) -> Self {
        let data = regression_data(SAMPLES, DIMS[0], DIMS[3], 2026, &device);
        Self {
            model: Some(model),
            optimizer,
            lr,
            data,
            device,
        }
    }

    /// One pass over the data in minibatches: the mean minibatch loss and the
    /// wall time per step.
    fn epoch(&mut self, bar: &ProgressBar) -> (f64, Duration) {
        let start = Instant::now();
        let mut losses = Vec::new();
        for b in 0..STEPS_PER_EPOCH {
            let x = self.data.0.clone().narrow(0, b * BATCH, BATCH);
            let y = self.data.1.clone().narrow(0, b * BATCH, BATCH);
            let model = self.model.take().expect("model");
            let loss = model.mse(x, y);
            losses.push(loss.clone().inner());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            self.model = Some(self.optimizer.step(self.lr, model, grads));
            bar.inc(1);
        }
        // Reading the losses synchronises the device before the clock is read.
        let mean = losses.into_iter().map(scalar).sum::<f64>() / STEPS_PER_EPOCH as f64;
        let _ = B::sync(&self.device);
        (mean, start.elapsed() / STEPS_PER_EPOCH as u32)
    }
}

/// An epoch of any run, whatever its backend and optimizer.
trait Epoch {
    fn epoch(&mut self, bar: &ProgressBar) -> (f64, Duration);
}

impl<B: AutodiffBackend, O: Optimizer<Mlp<B>, B>> Epoch for Run<B, O> {
    fn epoch(&mut self, bar: &ProgressBar) -> (f64, Duration) {
        Run::epoch(self, bar)
    }
}

struct Args {
    cpu: bool,
    gpu: bool,
    optimizer: String,
    lr: Option<f64>,
    adam_lr: f64,
    epochs: usize,
    out: PathBuf,
}

fn parse() -> Args {
    print_help_if_asked(HELP);
    let mut args = Args {
        cpu: true,
        gpu: true,
        optimizer: "kradagrad-star".into(),
        lr: None,
        adam_lr: ADAM_LR,
        epochs: 25,
        out: PathBuf::from("target/results/cross_backend"),
    };
    for (flag, value) in flag_pairs().unwrap_or_else(|| usage()) {
        match (flag.as_str(), value.as_str()) {
            ("--backend", "both") => (args.cpu, args.gpu) = (true, true),
            ("--backend", "ndarray") => (args.cpu, args.gpu) = (true, false),
            ("--backend", "wgpu") => (args.cpu, args.gpu) = (false, true),
            ("--optimizer", "kradagrad-star" | "kradagrad" | "shampoo") => args.optimizer = value,
            ("--lr", x) => args.lr = Some(value_or_usage(x, usage)),
            ("--adam-lr", x) => args.adam_lr = value_or_usage(x, usage),
            ("--epochs", n) => args.epochs = value_or_usage(n, usage),
            ("--out", dir) => args.out = PathBuf::from(dir),
            _ => usage(),
        }
    }
    args
}

/// The preconditioned optimizer's display name and default learning rate:
/// the best of a half-decade grid on this problem over the default 25 epochs,
/// as Adam's.
fn method(name: &str) -> (&'static str, f64) {
    match name {
        "kradagrad-star" => ("KrADagrad*", 0.3),
        "kradagrad" => ("KrADagrad", 0.6),
        _ => ("Shampoo", 0.3),
    }
}

/// A run of the preconditioned optimizer at its library defaults, boxed so
/// that both backends' runs have one type.
fn preconditioned<B: AutodiffBackend>(
    optimizer: &str,
    lr: f64,
    model: Mlp<B>,
    device: B::Device,
) -> Box<dyn Epoch> {
    match optimizer {
        "kradagrad-star" => Box::new(Run::new(model, KradagradStarConfig::new().init(), lr, device)),
        "kradagrad" => Box::new(Run::new(model, KradagradConfig::new().init(), lr, device)),
        _ => Box::new(Run::new(model, ShampooConfig::new().init(), lr, device)),
    }
}

/// The wgpu half: the same initial weights, moved through a full-precision record.
#[cfg(feature = "wgpu")]
fn gpu_run(optimizer: &str, lr: f64, cpu_model: &Mlp<Cpu>) -> Box<dyn Epoch> {
    let device = burn::backend::wgpu::WgpuDevice::default();
    let model =
        kradagrad_burn_suite::mlp::transfer(cpu_model.clone(), Mlp::<Gpu>::new(&DIMS, &device), &device);
    preconditioned(optimizer, lr, model, device)
}

/// Whether the wgpu half can run: one line saying why not when it cannot.
fn gpu_available(asked: bool) -> bool {
    if !asked {
        return false;
    }
    #[cfg(feature = "wgpu")]
    match wgpu_adapter() {
        Ok(name) => {
            println!("wgpu adapter: {name}");
            true
        }
        Err(reason) => {
            println!(
                "wgpu: no usable GPU adapter ({}), running the CPU part only \
                 (for a software Vulkan driver: apt-get install mesa-vulkan-drivers libvulkan1)",
                first_clause(&reason)
            );
            false
        }
    }
    #[cfg(not(feature = "wgpu"))]
    {
        println!("wgpu: built without the `wgpu` feature; running the CPU part only");
        false
    }
}

/// The first clause of a runtime's panic message: without the lines after it
/// and the debug dump after a colon.
#[cfg(feature = "wgpu")]
fn first_clause(message: &str) -> &str {
    let line = message.lines().next().unwrap_or(message);
    let end = [". ", ": ", " {"]
        .iter()
        .filter_map(|stop| line.find(stop))
        .min()
        .unwrap_or(line.len());
    line[..end].trim()
}

fn main() {
    let args = parse();
    Cpu::seed(&Default::default(), 2026);
    let gpu_ok = gpu_available(args.gpu);
    if !args.cpu && !gpu_ok {
        eprintln!("nothing to run: --backend wgpu without a usable wgpu adapter");
        std::process::exit(1);
    }
    let (name, default_lr) = method(&args.optimizer);
    let lr = args.lr.unwrap_or(default_lr);
    println!(
        "MLP {DIMS:?}, {SAMPLES} samples, batch {BATCH}, {} epochs of {STEPS_PER_EPOCH} steps: \
         {name} (lr {lr}, library defaults) against Adam (lr {})",
        args.epochs, args.adam_lr
    );
    let cpu_model = Mlp::<Cpu>::new(&DIMS, &Default::default());
    #[cfg(feature = "wgpu")]
    let mut gpu = gpu_ok.then(|| gpu_run(&args.optimizer, lr, &cpu_model));
    #[cfg(not(feature = "wgpu"))]
    let mut gpu: Option<Box<dyn Epoch>> = None;
    let mut cpu = args
        .cpu
        .then(|| preconditioned(&args.optimizer, lr, cpu_model.clone(), Default::default()));
    let mut adam = Run::new(
        cpu_model,
        AdamConfig::new().init::<Cpu, Mlp<Cpu>>(),
        args.adam_lr,
        Default::default(),
    );

    let runs = 1 + cpu.is_some() as usize + gpu.is_some() as usize;
    let bar = progress_bar((args.epochs * STEPS_PER_EPOCH * runs) as u64);
    bar.set_message("training");
    let header = format!(
        "{:>5} | {:>13} | {:>13} | {:>9} | {:>13} | {:>13} | {:>13} | {:>13}",
        "epoch",
        format!("{name} cpu"),
        format!("{name} gpu"),
        "cpu vs gpu",
        "Adam cpu",
        "ms/step cpu",
        "ms/step gpu",
        "ms/step Adam"
    );
    // `suspend` + `println!`: the rows reach stdout even when it is not a
    // terminal (indicatif then hides the bar, and its own `println` with it).
    let say = |line: String| bar.suspend(|| println!("{line}"));
    say(header.clone());
    say("-".repeat(header.len()));
    let loss = |v: Option<(f64, Duration)>| v.map_or("-".to_string(), |(l, _)| format!("{l:.5e}"));
    let time = |v: Option<(f64, Duration)>| {
        v.map_or("-".to_string(), |(_, t)| format!("{:.2}", t.as_secs_f64() * 1e3))
    };
    let mut curves = [
        (format!("{name} ndarray"), vec![]),
        (format!("{name} wgpu"), vec![]),
        ("Adam ndarray".to_string(), vec![]),
    ];
    for epoch in 1..=args.epochs {
        let rows = [
            cpu.as_mut().map(|r| r.epoch(&bar)),
            gpu.as_mut().map(|r| r.epoch(&bar)),
            Some(adam.epoch(&bar)),
        ];
        for (i, row) in rows.iter().enumerate() {
            if let Some((l, _)) = row {
                curves[i].1.push(((epoch * STEPS_PER_EPOCH) as f64, *l));
            }
        }
        let diff = match (rows[0], rows[1]) {
            (Some((a, _)), Some((b, _))) => format!("{:.2e}", (a - b).abs() / a.abs()),
            _ => "-".into(),
        };
        say(format!(
            "{epoch:>5} | {:>13} | {:>13} | {diff:>9} | {:>13} | {:>13} | {:>13} | {:>13}",
            loss(rows[0]),
            loss(rows[1]),
            loss(rows[2]),
            time(rows[0]),
            time(rows[1]),
            time(rows[2]),
        ));
    }
    bar.finish_and_clear();
    for (label, points) in &curves {
        if let (Some(&(_, first)), Some(&(_, last))) = (points.first(), points.last()) {
            println!(
                "{label}: mean loss {first:.4} in the first epoch, {last:.4} in the last ({:.1}x lower)",
                first / last
            );
        }
    }
    let series: Vec<Series> = curves
        .into_iter()
        .filter(|(_, points)| !points.is_empty())
        .map(|(name, points)| Series { name, points })
        .collect();
    std::fs::create_dir_all(&args.out).expect("create the output folder");
    write_csv(&args.out.join("losses.csv"), "run,step,loss", &series).expect("write losses.csv");
    plot_log_y(
        &args.out.join("loss.svg"),
        "Training loss (mean over each epoch's minibatches)",
        "step",
        "loss",
        &series,
    )
    .expect("write loss.svg");
    println!(
        "wrote {} and {}",
        args.out.join("losses.csv").display(),
        args.out.join("loss.svg").display()
    );
}
