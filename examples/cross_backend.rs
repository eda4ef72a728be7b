//! The same model, data, seed and optimizer trained on burn-ndarray (CPU) and
//! burn-wgpu (any GPU wgpu finds), side by side.
//!
//! ```text
//! cargo run --release --example cross_backend -- [--backend both|ndarray|wgpu]
//!     [--optimizer kradagrad-star|kradagrad|shampoo|adam] [--steps 320]
//! ```
//! Prints one row per epoch: the training loss on each backend, their
//! relative difference and the wall time per step. Without a usable wgpu
//! adapter it says so and runs the CPU part only.

use std::time::{Duration, Instant};

use burn::backend::{Autodiff, NdArray};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use kradagrad_burn::{KradagradConfig, KradagradStarConfig, ShampooConfig};
#[cfg(feature = "wgpu")]
use kradagrad_burn_suite::backends::wgpu_adapter;
use kradagrad_burn_suite::mlp::{regression_data, scalar, Mlp};

type Cpu = Autodiff<NdArray<f32>>;
#[cfg(feature = "wgpu")]
type Gpu = Autodiff<burn::backend::Wgpu<f32, i32>>;

const DIMS: [usize; 4] = [16, 128, 128, 4];
const SAMPLES: usize = 2048;
const BATCH: usize = 128;

/// One backend's training run.
struct Run<B: AutodiffBackend, O: Optimizer<Mlp<B>, B>> {
    model: Option<Mlp<B>>,
    optimizer: O,
    data: (Tensor<B, 2>, Tensor<B, 2>),
    device: B::Device,
    step_time: Duration,
}

impl<B: AutodiffBackend, O: Optimizer<Mlp<B>, B>> Run<B, O> {
    fn new(model: Mlp<B>, optimizer: O, device: B::Device) -> Self {
        let data = regression_data(SAMPLES, DIMS[0], DIMS[3], 2026, &device);
        Self {
            model: Some(model),
            optimizer,
            data,
            device,
            step_time: Duration::ZERO,
        }
    }

    /// One pass over the data in minibatches; returns the mean minibatch loss.
    fn epoch(&mut self, lr: f64, bar: &ProgressBar) -> f64 {
        let start = Instant::now();
        let mut losses = Vec::new();
        for b in 0..SAMPLES / BATCH {
            let x = self.data.0.clone().narrow(0, b * BATCH, BATCH);
            let y = self.data.1.clone().narrow(0, b * BATCH, BATCH);
            let model = self.model.take().expect("model");
            let loss = model.mse(x, y);
            losses.push(loss.clone().inner());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            self.model = Some(self.optimizer.step(lr, model, grads));
            bar.inc(1);
        }
        // Reading the losses synchronises the device before the clock is read.
        let mean = losses.into_iter().map(scalar).sum::<f64>() / (SAMPLES / BATCH) as f64;
        let _ = B::sync(&self.device);
        self.step_time = start.elapsed() / (SAMPLES / BATCH) as u32;
        mean
    }
}

struct Args {
    cpu: bool,
    gpu: bool,
    optimizer: String,
    steps: usize,
}

fn parse() -> Args {
    let mut args = Args {
        cpu: true,
        gpu: true,
        optimizer: "kradagrad-star".into(),
        steps: 320,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    for pair in raw.chunks(2) {
        match (pair[0].as_str(), pair.get(1).map(String::as_str)) {
            ("--backend", Some("both")) => (args.cpu, args.gpu) = (true, true),
            ("--backend", Some("ndarray")) => (args.cpu, args.gpu) = (true, false),
            ("--backend", Some("wgpu")) => (args.cpu, args.gpu) = (false, true),
            ("--optimizer", Some(o)) => args.optimizer = o.to_string(),
            ("--steps", Some(n)) if n.parse::<usize>().is_ok() => args.steps = n.parse().unwrap(),
            _ => {
                eprintln!(
                    "usage: cross_backend [--backend both|ndarray|wgpu] \
                     [--optimizer kradagrad-star|kradagrad|shampoo|adam] [--steps N]"
                );
                std::process::exit(2);
            }
        }
    }
    args
}

/// Trains on the selected backends and prints the table.
fn compare<OC, OG>(args: &Args, cpu_optimizer: OC, gpu_optimizer: Option<OG>, lr: f64)
where
    OC: Optimizer<Mlp<Cpu>, Cpu>,
    OG: GpuOptimizer,
{
    let epochs = args.steps.div_ceil(SAMPLES / BATCH).max(1);
    let cpu_device = Default::default();
    let cpu_model = Mlp::<Cpu>::new(&DIMS, &cpu_device);
    let mut gpu = gpu_optimizer.map(|o| o.start(&cpu_model));
    let mut cpu = args.cpu.then(|| Run::new(cpu_model, cpu_optimizer, cpu_device));
    let steps_total = epochs * (SAMPLES / BATCH) * (cpu.is_some() as usize + gpu.is_some() as usize);
    let bar = ProgressBar::new(steps_total as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} steps {elapsed_precise} (eta {eta})")
            .expect("template"),
    );
    let header = format!(
        "{:>5} | {:>12} | {:>12} | {:>9} | {:>12} | {:>12}",
        "epoch", "loss ndarray", "loss wgpu", "rel diff", "ms/step cpu", "ms/step gpu"
    );
    // `suspend` + `println!`: the rows must reach stdout even when it is not a
    // terminal (indicatif then hides the bar, and its own `println` with it).
    let say = |line: String| bar.suspend(|| println!("{line}"));
    say(header.clone());
    say("-".repeat(header.len()));
    let cell = |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$e}"));
    for epoch in 1..=epochs {
        let c = cpu.as_mut().map(|r| (r.epoch(lr, &bar), r.step_time));
        let g = gpu.as_mut().map(|r| r.epoch(lr, &bar));
        let diff = match (c, g) {
            (Some((a, _)), Some((b, _))) => Some((a - b).abs() / a.abs()),
            _ => None,
        };
        say(format!(
            "{epoch:>5} | {:>12} | {:>12} | {:>9} | {:>12} | {:>12}",
            cell(c.map(|x| x.0), 5),
            cell(g.map(|x| x.0), 5),
            cell(diff, 2),
            c.map_or("-".into(), |x| format!("{:.2}", x.1.as_secs_f64() * 1e3)),
            g.map_or("-".into(), |x| format!("{:.2}", x.1.as_secs_f64() * 1e3)),
        ));
    }
    bar.finish_and_clear();
}

/// The GPU half, boxed so the example builds without the `wgpu` feature.
trait GpuOptimizer {
    fn start(self, cpu_model: &Mlp<Cpu>) -> Box<dyn GpuRun>;
}

trait GpuRun {
    fn epoch(&mut self, lr: f64, bar: &ProgressBar) -> (f64, Duration);
}

#[cfg(feature = "wgpu")]
impl<O: Optimizer<Mlp<Gpu>, Gpu> + 'static> GpuOptimizer for O {
    fn start(self, cpu_model: &Mlp<Cpu>) -> Box<dyn GpuRun> {
        let device = burn::backend::wgpu::WgpuDevice::default();
        // Same initial weights: moved through a full-precision record.
        let model =
            kradagrad_burn_suite::mlp::transfer(cpu_model.clone(), Mlp::<Gpu>::new(&DIMS, &device), &device);
        Box::new(Run::new(model, self, device))
    }
}

#[cfg(feature = "wgpu")]
impl<O: Optimizer<Mlp<Gpu>, Gpu>> GpuRun for Run<Gpu, O> {
    fn epoch(&mut self, lr: f64, bar: &ProgressBar) -> (f64, Duration) {
        let loss = Run::epoch(self, lr, bar);
        (loss, self.step_time)
    }
}

/// Stands in for the GPU optimizer when the `wgpu` feature is off.
#[cfg(not(feature = "wgpu"))]
struct NoGpu;

#[cfg(not(feature = "wgpu"))]
impl GpuOptimizer for NoGpu {
    fn start(self, _: &Mlp<Cpu>) -> Box<dyn GpuRun> {
        unreachable!("never started")
    }
}

fn main() {
    let args = parse();
    Cpu::seed(&Default::default(), 2026);
    #[cfg(feature = "wgpu")]
    let gpu_ok = args.gpu
        && match wgpu_adapter() {
            Ok(name) => {
                println!("wgpu adapter: {name}");
                true
            }
            Err(reason) => {
                println!("wgpu is unavailable ({reason}); running the CPU part only");
                false
            }
        };
    #[cfg(not(feature = "wgpu"))]
    let gpu_ok = {
        if args.gpu {
            println!("wgpu is unavailable (built without the `wgpu` feature); running the CPU part only");
        }
        false
    };
    if !args.cpu && !gpu_ok {
        eprintln!("nothing to run");
        std::process::exit(1);
    }
    println!(
        "MLP {DIMS:?}, {SAMPLES} samples, batch {BATCH}, {} steps, optimizer {}",
        args.steps, args.optimizer
    );
    macro_rules! go {
        ($config:expr, $lr:expr) => {{
            #[cfg(feature = "wgpu")]
            let gpu = gpu_ok.then(|| $config.init::<Gpu, Mlp<Gpu>>());
            #[cfg(not(feature = "wgpu"))]
            let gpu: Option<NoGpu> = None;
            compare(&args, $config.init::<Cpu, Mlp<Cpu>>(), gpu, $lr)
        }};
    }
    match args.optimizer.as_str() {
        "kradagrad-star" => go!(KradagradStarConfig::new(), 0.05),
        "kradagrad" => go!(KradagradConfig::new(), 0.02),
        "shampoo" => go!(ShampooConfig::new(), 0.05),
        "adam" => go!(AdamConfig::new(), 0.003),
        other => {
            eprintln!("unknown optimizer {other}");
            std::process::exit(2);
        }
    }
}
