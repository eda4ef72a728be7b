//! The paper's ill-conditioned quadratic (its section 8), run with the
//! paper's settings for every method, beside the reference implementation's
//! numbers.
//!
//! ```text
//! cargo run --release --example ill_conditioned -- [--n 1536] [--log-cond 4] [--steps 250]
//!     [--seed 0] [--backend ndarray|wgpu] [--root newton|eigh]
//!     [--momentum reference|heavy-ball|nesterov] [--newton-iterations 40]
//!     [--methods sgd,adam,...] [--out target/results/ill_conditioned]
//! ```
//! `f(X) = sum(X .* (H0 X H1))`, both factors with condition `10^log_cond`; the
//! loss and gradient are computed in fp64 (on the run's backend where it has
//! fp64, otherwise on the CPU) and the gradient is cast to the run's precision.
//! Methods: SGD and Adam (Burn's own); Shampoo fp64; Shampoo fp32 with the fp32
//! eigendecomposition root (the paper's fp32 baseline); Shampoo fp32 with the
//! device Newton root; KrADagrad* fp32 and KrADagrad fp32 (device roots;
//! `--root eigh` moves every preconditioned method to eigendecompositions,
//! fp64 ones for Shampoo fp64, and drops the then redundant Newton row).
//! Writes `losses.csv` (`method,step,loss`), `loss.svg` and `table.md` into
//! `--out`.

use std::path::PathBuf;
use std::time::Instant;

use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};
use indicatif::ProgressBar;
use kradagrad_burn::{
    Grafting, KradagradConfig, KradagradStarConfig, MomentumConfig, MomentumForm, RootMethod, ShampooConfig,
};
use kradagrad_burn_suite::cli::{
    exit_with_usage, flag_pairs, named_items, print_help_if_asked, value_or_usage,
};
use kradagrad_burn_suite::quadratic::{QuadraticOnDevice, QuadraticProblem};
use kradagrad_burn_suite::report::{plot_log_y, progress_bar, sig3, write_csv, Series};

/// The optimized matrix, as a module so every optimizer runs through Burn's
/// `Optimizer` API exactly as in a training loop.
#[derive(Module, Debug)]
struct Weight<B: Backend> {
    x: Param<Tensor<B, 2>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    Sgd,
    Adam,
    ShampooF64,
    ShampooF32Eigh,
    ShampooF32Newton,
    KradagradStar,
    Kradagrad,
}

const ALL: [Method; 7] = [
    Method::Sgd,
    Method::Adam,
    Method::ShampooF64,
    Method::ShampooF32Eigh,
    Method::ShampooF32Newton,
    Method::KradagradStar,
    Method::Kradagrad,
];

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Sgd => "sgd",
            Method::Adam => "adam",
            Method::ShampooF64 => "shampoo_fp64",
            Method::ShampooF32Eigh => "shampoo_fp32_eigh",
            Method::ShampooF32Newton => "shampoo_fp32_newton",
            Method::KradagradStar => "kradagrad_star_fp32",
            Method::Kradagrad => "kradagrad_fp32",
        }
    }

    /// Section 8's learning rates.
    fn lr(self) -> f64 {
        match self {
            Method::Sgd => 1e-3,
            Method::Adam => 1.0,
            Method::Kradagrad => 1e-2,
            _ => 5e-3,
        }
    }

    /// The root method a run of this method uses under `--root`.
    fn root(self, eigh: bool) -> Option<RootMethod> {
        match self {
            Method::Sgd | Method::Adam => None,
            Method::ShampooF32Eigh => Some(RootMethod::Eigh),
            Method::ShampooF32Newton => Some(RootMethod::Newton),
            _ if eigh => Some(RootMethod::Eigh),
            _ => Some(RootMethod::Newton),
        }
    }

    fn describe_root(self, eigh: bool) -> &'static str {
        let f64 = self == Method::ShampooF64;
        match (self.root(eigh), f64) {
            (None, _) => "-",
            (Some(RootMethod::Newton), true) => "Newton fp64 (device)",
            (Some(RootMethod::Newton), false) => "Newton fp32 (device)",
            (Some(_), true) => "eigh fp64 (host)",
            (Some(_), false) => "eigh fp32 (host)",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Momentum {
    Reference,
    HeavyBall,
    Nesterov,
}

/// The reference implementation's losses at steps 50, 100 and 250 (section 8),
/// where it reported them for this n, condition and momentum.
fn reference(method: Method, n: usize, log_cond: f64, momentum: Momentum) -> [Option<f64>; 3] {
    use Method::*;
    if log_cond != 4.0 {
        return [None; 3];
    }
    let at250 = |v: f64| [None, None, Some(v)];
    match (method, momentum, n) {
        // SGD and Adam do not use the preconditioned methods' momentum setting.
        (Sgd, _, 256) => at250(5.64e3),
        (Sgd, _, 512) => at250(2.22e4),
        (Sgd, _, 1536) => [Some(1.02e6), Some(5.06e5), Some(2.01e5)],
        (Adam, _, 256) => at250(73.2),
        (Adam, _, 512) => at250(298.0),
        (Adam, _, 1536) => [Some(1.62e5), Some(1.25e4), Some(2.65e3)],
        (ShampooF64, Momentum::Reference, 256) => at250(3.00),
        (ShampooF64, Momentum::Reference, 512) => at250(12.0),
        (ShampooF64, Momentum::Reference, 1536) => [Some(575.0), Some(122.0), Some(107.0)],
        (ShampooF32Eigh, Momentum::Reference, 256) => at250(22.2),
        (ShampooF32Eigh, Momentum::Reference, 512) => at250(4.12e3),
        (ShampooF32Eigh, Momentum::Reference, 1536) => [Some(5.0e6), Some(2.99e6), Some(1.20e6)],
        (ShampooF32Newton, Momentum::Reference, 512) => at250(16.5),
        (ShampooF32Newton, Momentum::Reference, 1536) => at250(151.0),
        (KradagradStar, Momentum::Reference, 256) => at250(96.8),
        (KradagradStar, Momentum::Reference, 512) => at250(387.0),
        (KradagradStar, Momentum::Reference, 1536) => [Some(2.03e4), Some(9.51e3), Some(3.44e3)],
        (Kradagrad, Momentum::Reference, 256) => at250(130.0),
        (Kradagrad, Momentum::Reference, 512) => at250(464.0),
        (Kradagrad, Momentum::Reference, 1536) => [Some(1.26e4), Some(5.38e3), Some(3.48e3)],
        (ShampooF64, Momentum::HeavyBall, 512) => at250(1.13),
        (ShampooF64, Momentum::HeavyBall, 1536) => at250(10.3),
        (ShampooF32Eigh, Momentum::HeavyBall, 512) => at250(3.2e7),
        (ShampooF32Eigh, Momentum::HeavyBall, 1536) => at250(5.8e8),
        (ShampooF32Newton, Momentum::HeavyBall, 512) => at250(2.48),
        (ShampooF32Newton, Momentum::HeavyBall, 1536) => at250(21.3),
        (KradagradStar, Momentum::HeavyBall, 512) => at250(385.0),
        (KradagradStar, Momentum::HeavyBall, 1536) => at250(3.43e3),
        (Kradagrad, Momentum::HeavyBall, 512) => at250(398.0),
        (Kradagrad, Momentum::HeavyBall, 1536) => at250(2.82e3),
        _ => [None; 3],
    }
}

struct Args {
    n: usize,
    log_cond: f64,
    steps: usize,
    seed: u64,
    backend: String,
    eigh: bool,
    momentum: Momentum,
    newton_iterations: usize,
    methods: Vec<Method>,
    out: PathBuf,
}

/// `--help`: what the example does, its flags and their defaults.
fn help() -> String {
    format!(
        "\
ill_conditioned: the paper's ill-conditioned quadratic f(X) = sum(X .* (H0 X H1)),
every method at the paper's settings, beside the authors' reported numbers. Writes
losses.csv, loss.svg and table.md into --out.

usage: ill_conditioned [FLAGS]

  --n N                   [1536] X is n x n (512 or 256 run on a CPU in minutes)
  --log-cond X            [4] each factor's condition is 10^X
  --steps N               [250]
  --seed N                [0]
  --backend ndarray|wgpu  [ndarray]
  --root newton|eigh      [newton] root method of the preconditioned methods
  --momentum reference|heavy-ball|nesterov   [reference] the authors' recurrence
  --newton-iterations N   [40] cap per Newton stage
  --methods LIST          [{}]
  --out DIR               [target/results/ill_conditioned]
  -h, --help              this text
",
        ALL.map(Method::name).join(",")
    )
}

fn usage() -> ! {
    exit_with_usage(&help())
}

fn parse() -> Args {
    let mut args = Args {
        n: 1536,
        log_cond: 4.0,
        steps: 250,
        seed: 0,
        backend: "ndarray".into(),
        eigh: false,
        momentum: Momentum::Reference,
        newton_iterations: 40,
        methods: ALL.to_vec(),
        out: PathBuf::from("target/results/ill_conditioned"),
    };
    print_help_if_asked(&help());
    for (flag, value) in flag_pairs().unwrap_or_else(|| usage()) {
        let value = value.as_str();
        match flag.as_str() {
            "--n" => args.n = value_or_usage(value, usage),
            "--log-cond" => args.log_cond = value_or_usage(value, usage),
            "--steps" => args.steps = value_or_usage(value, usage),
            "--seed" => args.seed = value_or_usage(value, usage),
            "--newton-iterations" => args.newton_iterations = value_or_usage(value, usage),
            "--backend" if ["ndarray", "wgpu"].contains(&value) => args.backend = value.into(),
            "--root" if value == "newton" || value == "eigh" => args.eigh = value == "eigh",
            "--momentum" => {
                args.momentum = match value {
                    "reference" => Momentum::Reference,
                    "heavy-ball" => Momentum::HeavyBall,
                    "nesterov" => Momentum::Nesterov,
                    _ => usage(),
                }
            }
            "--methods" => args.methods = named_items(value, &ALL, Method::name).unwrap_or_else(|| usage()),
            "--out" => args.out = PathBuf::from(value),
            _ => usage(),
        }
    }
    if args.eigh {
        // Every preconditioned method already uses eigendecompositions.
        args.methods.retain(|&m| m != Method::ShampooF32Newton);
    }
    if args.n < 2 || args.steps == 0 || args.newton_iterations == 0 {
        usage();
    }
    args
}

/// One method's run: the loss before the first step and after every step.
struct Curve {
    method: Method,
    losses: Vec<f64>,
    seconds: f64,
}

/// What every method's run shares: the start, the step count, the loss and
/// gradient evaluation, and the progress bar.
struct Descent<'a> {
    x0: &'a [f32],
    n: usize,
    steps: usize,
    evaluate: &'a dyn Fn(TensorData) -> (f64, TensorData),
    bar: &'a ProgressBar,
}

impl Descent<'_> {
    /// Runs `steps` full-batch steps of `optimizer` from `x0` in `dtype`.
    fn run<B: AutodiffBackend, O: Optimizer<Weight<B>, B>>(
        &self,
        mut optimizer: O,
        lr: f64,
        dtype: DType,
        device: &B::Device,
    ) -> Vec<f64> {
        let start = TensorData::new(self.x0.to_vec(), [self.n, self.n]).convert_dtype(dtype);
        let mut weight = Weight {
            x: Param::from_tensor(Tensor::<B, 2>::from_data(start, (device, dtype))),
        };
        let mut losses = Vec::with_capacity(self.steps + 1);
        for step in 0..=self.steps {
            let (loss, gradient) = (self.evaluate)(weight.x.val().inner().into_data());
            losses.push(loss);
            if step == self.steps {
                break;
            }
            let gradient =
                Tensor::<B::InnerBackend, 2>::from_data(gradient.convert_dtype(dtype), (device, dtype));
            let mut grads = GradientsParams::new();
            grads.register(weight.x.id, gradient);
            weight = optimizer.step(lr, weight, grads);
            self.bar.inc(1);
        }
        losses
    }
}

/// Section 8's settings for the preconditioned methods.
macro_rules! paper_settings {
    ($config:expr, $args:expr, $root:expr) => {{
        let form = match $args.momentum {
            Momentum::Reference => MomentumForm::ReferenceNesterov,
            Momentum::Nesterov => MomentumForm::Nesterov,
            Momentum::HeavyBall => MomentumForm::HeavyBall,
        };
        $config
            .with_matrix_eps(1e-8)
            .with_block_size(None)
            .with_beta_2(1.0)
            .with_statistics_compute_steps(1)
            .with_preconditioning_compute_steps(3)
            .with_start_preconditioning_step(3)
            .with_momentum(Some(MomentumConfig::new().with_momentum(0.9).with_form(form)))
            .with_root_method($root)
            .with_newton_iterations($args.newton_iterations)
    }};
}

/// Runs every selected method: fp32 ones on `B32`, fp64 ones on `B64` (when
/// `device64` is given), loss and gradient by `evaluator`.
fn run_all<B32: AutodiffBackend, B64: AutodiffBackend, M: Backend>(
    args: &Args,
    problem: &QuadraticProblem,
    evaluator: &QuadraticOnDevice<M>,
    device32: &B32::Device,
    device64: Option<&B64::Device>,
) -> Vec<Curve> {
    let methods: Vec<Method> = args
        .methods
        .iter()
        .copied()
        .filter(|&m| {
            let runnable = m != Method::ShampooF64 || device64.is_some();
            if !runnable {
                println!("shampoo_fp64 skipped: this backend has no f64 variant on this adapter");
            }
            runnable
        })
        .collect();
    let bar = progress_bar((methods.len() * args.steps) as u64);
    let evaluate = |x: TensorData| evaluator.loss_and_gradient(x);
    let descent = Descent {
        x0: &problem.x0,
        n: problem.n,
        steps: args.steps,
        evaluate: &evaluate,
        bar: &bar,
    };
    let mut curves = Vec::new();
    for method in methods {
        bar.set_message(method.name());
        let start = Instant::now();
        let root = method.root(args.eigh).unwrap_or(RootMethod::Newton);
        let lr = method.lr();
        // A macro, not a closure: each arm passes another optimizer type.
        macro_rules! f32_run {
            ($optimizer:expr $(,)?) => {
                descent.run::<B32, _>($optimizer, lr, DType::F32, device32)
            };
        }
        let losses = match method {
            Method::Sgd => f32_run!(SgdConfig::new().init()),
            Method::Adam => f32_run!(AdamConfig::new()
                .with_beta_1(0.9)
                .with_beta_2(0.999)
                .with_epsilon(1e-8)
                .init(),),
            Method::ShampooF64 => descent.run::<B64, _>(
                paper_settings!(ShampooConfig::new(), args, root)
                    .with_grafting(Some(Grafting::SgdNorm))
                    .init(),
                lr,
                DType::F64,
                device64.expect("filtered above"),
            ),
            Method::ShampooF32Eigh | Method::ShampooF32Newton => {
                f32_run!(paper_settings!(ShampooConfig::new(), args, root)
                    .with_grafting(Some(Grafting::SgdNorm))
                    .init(),)
            }
            Method::KradagradStar => f32_run!(paper_settings!(KradagradStarConfig::new(), args, root)
                .with_grafting(Some(Grafting::SgdNorm))
                .init(),),
            Method::Kradagrad => f32_run!(paper_settings!(KradagradConfig::new(), args, root)
                .with_grafting(None)
                .init(),),
        };
        let seconds = start.elapsed().as_secs_f64();
        bar.suspend(|| {
            println!(
                "{:<22} loss {} -> {}  ({seconds:.1} s)",
                method.name(),
                sig3(losses[0]),
                sig3(*losses.last().expect("losses"))
            )
        });
        curves.push(Curve {
            method,
            losses,
            seconds,
        });
    }
    bar.finish_and_clear();
    curves
}

/// The markdown table of losses at steps 50, 100 and 250 beside the reference.
fn table(args: &Args, backend: &str, curves: &[Curve]) -> String {
    let momentum = match args.momentum {
        Momentum::Reference => "the reference's Nesterov recurrence (section 6)",
        Momentum::HeavyBall => "heavy ball",
        Momentum::Nesterov => "textbook Nesterov",
    };
    let mut text = format!(
        "Ill-conditioned quadratic, n = {}, condition 1e{} per factor, seed {}, {} steps, backend {backend}.\n\
         Momentum of the preconditioned methods: {momentum}. Initial loss {}.\n\
         Reference: the authors' implementation, as reported in the paper's section 8{}.\n\n\
         | method | root | loss @50 | @100 | @250 | final (@{}) | reference @50 | @100 | @250 | ours / reference @250 | wall s |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
        args.n,
        args.log_cond,
        args.seed,
        args.steps,
        curves.first().map_or("-".into(), |c| sig3(c.losses[0])),
        if args.log_cond == 4.0 { "" } else { ": none at this condition" },
        args.steps,
    );
    let cell = |v: Option<f64>| v.map_or("-".to_string(), sig3);
    for curve in curves {
        let ours = [50, 100, 250].map(|s| curve.losses.get(s).copied());
        let reference = reference(curve.method, args.n, args.log_cond, args.momentum);
        let ratio = match (ours[2], reference[2]) {
            (Some(a), Some(b)) => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        text += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {ratio} | {:.1} |\n",
            curve.method.name(),
            curve.method.describe_root(args.eigh),
            cell(ours[0]),
            cell(ours[1]),
            cell(ours[2]),
            cell(curve.losses.last().copied()),
            cell(reference[0]),
            cell(reference[1]),
            cell(reference[2]),
            curve.seconds
        );
    }
    text
}

fn main() {
    let args = parse();
    println!(
        "building the problem: n = {}, condition 1e{} per factor, seed {}",
        args.n, args.log_cond, args.seed
    );
    let problem = QuadraticProblem::new(args.n, args.log_cond, args.seed);
    let (backend, curves) = match args.backend.as_str() {
        "ndarray" => {
            type Cpu32 = Autodiff<NdArray<f32>>;
            type Cpu64 = Autodiff<NdArray<f64>>;
            let device = Default::default();
            let evaluator = problem.on_device::<NdArray<f64>>(&device, DType::F64);
            let curves =
                run_all::<Cpu32, Cpu64, NdArray<f64>>(&args, &problem, &evaluator, &device, Some(&device));
            ("ndarray (CPU)".to_string(), curves)
        }
        _ => run_wgpu(&args, &problem),
    };
    std::fs::create_dir_all(&args.out).expect("create --out");
    let series: Vec<Series> = curves
        .iter()
        .map(|c| Series {
            name: c.method.name().into(),
            points: c.losses.iter().enumerate().map(|(s, &l)| (s as f64, l)).collect(),
        })
        .collect();
    write_csv(&args.out.join("losses.csv"), "method,step,loss", &series).expect("write losses.csv");
    plot_log_y(
        &args.out.join("loss.svg"),
        &format!(
            "Ill-conditioned quadratic, n = {}, condition 1e{} per factor ({backend})",
            args.n, args.log_cond
        ),
        "step",
        "loss",
        &series,
    )
    .expect("write loss.svg");
    let table = table(&args, &backend, &curves);
    std::fs::write(args.out.join("table.md"), &table).expect("write table.md");
    println!("\n{table}");
    println!(
        "wrote losses.csv, loss.svg and table.md into {}",
        args.out.display()
    );
}

#[cfg(feature = "wgpu")]
fn run_wgpu(args: &Args, problem: &QuadraticProblem) -> (String, Vec<Curve>) {
    use burn::backend::wgpu::WgpuDevice;
    use kradagrad_burn_suite::backends::{wgpu_adapter, wgpu_has_f64, Wgpu64};
    type Gpu32 = Autodiff<burn::backend::Wgpu<f32, i32>>;
    type Gpu64 = Autodiff<Wgpu64>;
    let name = wgpu_adapter().unwrap_or_else(|reason| {
        eprintln!("wgpu is unavailable: {reason}");
        std::process::exit(1)
    });
    let device = WgpuDevice::default();
    let backend = format!("wgpu ({name})");
    if wgpu_has_f64() {
        let evaluator = problem.on_device::<Wgpu64>(&device, DType::F64);
        let curves = run_all::<Gpu32, Gpu64, Wgpu64>(args, problem, &evaluator, &device, Some(&device));
        (backend, curves)
    } else {
        println!("this wgpu adapter has no f64: the loss and gradient are computed in fp64 on the CPU");
        let evaluator = problem.on_device::<NdArray<f64>>(&Default::default(), DType::F64);
        let curves = run_all::<Gpu32, Gpu64, NdArray<f64>>(args, problem, &evaluator, &device, None);
        (backend + ", no f64", curves)
    }
}

#[cfg(not(feature = "wgpu"))]
fn run_wgpu(_: &Args, _: &QuadraticProblem) -> (String, Vec<Curve>) {
    eprintln!("built without the `wgpu` feature");
    std::process::exit(1)
}
