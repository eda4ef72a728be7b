//! Per-step benchmarks, on Burn's own benchmark tooling
//! (`burn_std::benchmark`, from cubecl-common): each sample runs whole
//! preconditioner cycles (so root steps are included in their true
//! proportion), the device is synchronised before the clock is read, and
//! every row reports its ratio to Adam on the same backend, measured in the
//! same run.
//!
//! ```text
//! cargo bench --bench step                      # every group on every backend found
//! KRADAGRAD_BENCH_BACKENDS=ndarray KRADAGRAD_BENCH_GROUPS=autoencoder cargo bench --bench step
//! ```
//! Knobs (environment): `KRADAGRAD_BENCH_BACKENDS` (`ndarray,wgpu`),
//! `KRADAGRAD_BENCH_GROUPS` (`autoencoder,quadratic,scaling`; `precision`
//! and `kernels` run only when named),
//! `KRADAGRAD_BENCH_STEPS` (at least this many timed steps per row, default
//! 300), `KRADAGRAD_BENCH_ROWS` (groups (a) and (e): the optimizer rows to run,
//! matched as whole labels such as `KrADagrad*,KrADagrad* (batched),KrADagrad*
//! no root refresh`; Adam
//! and the forward and backward pass always run; default all),
//! `KRADAGRAD_BENCH_OUT` (where `step.md` is written, default
//! `target/bench`). On burn-ndarray, `MATMUL_NUM_THREADS=1` keeps
//! matrixmultiply from threading inside burn-ndarray's per-matrix parallel
//! loop, which speeds up batched matmuls and slows down single large ones
//! (docs/performance.md); the report states the setting.
//!
//! Groups: (a) `autoencoder`: 784-1000-500-250-30 mirrored, random data,
//! batch 100, block 250: full training step and optimizer time (full step
//! minus the forward and backward pass, measured alone; both, and Adam,
//! timed again after every row, each row compared with the mean of the
//! timings right before and after it) for Burn's Adam,
//! Shampoo, KrADagrad*, KrADagrad and KrADagrad* with host eigendecomposition
//! roots, in the paper's setting (statistics every step, roots every 20) and
//! an amortized one (statistics every 10, roots every 100), with optimizer
//! state bytes per parameter; (b) `quadratic`: one step on a 1536x1536
//! parameter with section 8's settings, against the step's own matmuls
//! (counted in the forms the step runs them, each form timed alone); (c)
//! `scaling`: KrADagrad* on one weight of 1024x1024, 4096x4096 and 8192x1024
//! at block sizes 128, 256 and 512, against the number of batched matmuls of
//! the same block shape that the step performs, each timed alone; (d)
//! `precision` (not in the default list): batched Grams in f32, f16 and
//! bf16 where the backend runs them, with the half types' error; (e)
//! `kernels` (not in the default list; CubeCL backends only): the kernels
//! one autoencoder step launches, per optimizer and front end, counted from
//! CubeCL's execution log: the GPU step is bound by that count.

/// burn-ndarray allocates a fresh buffer for the result of every op. glibc's
/// malloc serves buffers above its mmap threshold with `mmap` and unmaps them
/// on free, so every large op pays page faults on first touch: on the 2-core
/// development VM a `[16, 250, 250]` batched matmul took 8.5 ms that way and
/// 2.3 ms with mimalloc, which keeps freed memory for reuse (see
/// docs/performance.md). The benchmark states the allocator it ran with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::cell::RefCell;
use std::fmt::Write as _;
use std::time::Duration;

use burn::backend::{Autodiff, NdArray};
use burn::module::{AutodiffModule, Module, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::record::{AdaptorRecord, AdaptorRecordV1};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Tensor};
use burn_std::benchmark::Benchmark;
use kradagrad_burn::layout::BlockLayout;
use kradagrad_burn::roots::{newton_iteration_bound, newton_stages};
use kradagrad_burn::{
    BatchedOptimizer, Grafting, KradagradConfig, KradagradStarConfig, RootMethod, RootSpec, ShampooConfig,
};
use kradagrad_burn_suite::mlp::Mlp;

const AUTOENCODER: [usize; 9] = [784, 1000, 500, 250, 30, 250, 500, 1000, 784];
const BATCH: usize = 100;

/// The `newton_convergence_check` of the early-exit rows: a flag read back
/// every second Newton iteration of a root stage.
const EARLY_EXIT_CHECK: usize = 2;

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(str::to_string)
        .collect()
}

/// Whether group (a) runs the row labelled `label` (`KRADAGRAD_BENCH_ROWS`).
fn row_selected(label: &str) -> bool {
    match std::env::var("KRADAGRAD_BENCH_ROWS") {
        Ok(rows) => rows.split(',').any(|r| r.trim() == label),
        Err(_) => true,
    }
}

fn min_steps() -> usize {
    std::env::var("KRADAGRAD_BENCH_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// A benchmark whose sample is `cycle` consecutive calls of `step` on shared
/// state (the state persists across samples: statistics keep accumulating
/// and roots come due exactly as in training).
struct Steps<F: FnMut(), S: Fn()> {
    name: String,
    cycle: usize,
    step: RefCell<F>,
    sync: S,
}

impl<F: FnMut(), S: Fn()> Benchmark for Steps<F, S> {
    type Input = ();
    type Output = ();

    fn prepare(&self) {}

    fn execute(&self, _: ()) -> Result<(), String> {
        let mut step = self.step.borrow_mut();
        for _ in 0..self.cycle {
            (step)();
        }
        Ok(())
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn sync(&self) {
        (self.sync)()
    }
}

/// Mean time per call of `step`, over at least `min_steps()` timed calls in
/// whole cycles of `cycle` calls, after untimed warm-up cycles (at least one,
/// and more until half a second has passed: a GPU that sat idle runs its first
/// fraction of a second at low clocks, and kernels compile and autotune on
/// first use). Each sample is timed by Burn's `Benchmark::profile_full`
/// (device synchronised before starting and before reading the clock).
fn time_per_step(name: &str, cycle: usize, step: impl FnMut(), sync: impl Fn()) -> Duration {
    let samples = min_steps().div_ceil(cycle).max(1);
    let bench = Steps {
        name: name.into(),
        cycle,
        step: RefCell::new(step),
        sync,
    };
    let warm_up = std::time::Instant::now();
    loop {
        bench.execute(()).expect("warm-up cycle");
        bench.sync();
        if warm_up.elapsed() >= Duration::from_millis(500) {
            break;
        }
    }
    let mut total = Duration::ZERO;
    for _ in 0..samples {
        let profile = bench.profile_full(()).expect("sample");
        total += burn_std::future::block_on(profile.resolve()).duration();
    }
    let steps = samples * cycle;
    eprintln!(
        "  {}: {:.3} ms/step over {steps} steps",
        bench.name(),
        ms(total) / steps as f64
    );
    total / steps as u32
}

/// `optimizer / Adam's optimizer time`, or `n/r` (not resolved) when Adam's
/// optimizer time, a difference of two measured means, is under 5% of its
/// full step: on a GPU Adam's update is a few fused kernels, within the
/// run-to-run spread of the forward and backward pass, and a ratio to it
/// would be noise.
fn optimizer_ratio(optimizer: Duration, adam_optimizer: Duration, adam_step: Duration) -> String {
    if ms(adam_optimizer) < 0.05 * ms(adam_step) {
        "n/r".into()
    } else {
        format!("{:.2}", ms(optimizer) / ms(adam_optimizer))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The report, row by row, as markdown.
#[derive(Default)]
struct Report {
    text: String,
}

impl Report {
    fn line(&mut self, line: impl AsRef<str>) {
        println!("{}", line.as_ref());
        let _ = writeln!(self.text, "{}", line.as_ref());
    }
}

/// Optimizer state bytes of a model's parameters under one of this crate's optimizers.
trait StateBytes {
    fn state_bytes(&self) -> usize;
}

macro_rules! state_bytes_for {
    ($($optimizer:ty),*) => {$(
        impl<B: AutodiffBackend, M: AutodiffModule<B>> StateBytes for OptimizerAdaptor<$optimizer, M, B> {
            fn state_bytes(&self) -> usize {
                self.to_record()
                    .into_values()
                    .map(|record| match record {
                        AdaptorRecord::V1(AdaptorRecordV1::Rank1(s)) => s.size_bytes(),
                        AdaptorRecord::V1(AdaptorRecordV1::Rank2(s)) => s.size_bytes(),
                        _ => panic!("the benchmarked models have only rank-1 and rank-2 parameters"),
                    })
                    .sum()
            }
        }
    )*};
}

state_bytes_for!(kradagrad_burn::PerParameterOptimizer);

impl<B: AutodiffBackend, M> StateBytes for BatchedOptimizer<M, B> {
    fn state_bytes(&self) -> usize {
        self.state().map_or(0, |state| state.size_bytes())
    }
}

/// A model's training step, timed: the forward and backward pass alone, Adam's
/// full step, and any optimizer's full step, all on the same data.
struct ModelBench<B: AutodiffBackend> {
    /// The report's name for the backend.
    backend: String,
    /// The report's name for the model.
    name: String,
    model: Mlp<B>,
    x: Tensor<B, 2>,
    y: Tensor<B, 2>,
    device: B::Device,
}

impl<B: AutodiffBackend> ModelBench<B> {
    /// An MLP of widths `dims` regressing random targets from random inputs.
    fn new(backend: &str, name: &str, dims: &[usize], batch: usize, device: &B::Device) -> Self {
        B::seed(device, 0);
        let model = Mlp::<B>::new(dims, device);
        let x = Tensor::<B, 2>::random([batch, dims[0]], Distribution::Uniform(0.0, 1.0), device);
        let y = Tensor::<B, 2>::random(
            [batch, dims[dims.len() - 1]],
            Distribution::Uniform(0.0, 1.0),
            device,
        );
        Self {
            backend: backend.into(),
            name: name.into(),
            model,
            x,
            y,
            device: device.clone(),
        }
    }

    fn sync(&self) -> impl Fn() + '_ {
        || {
            let _ = B::sync(&self.device);
        }
    }

    /// Forward and backward alone: subtracted from a full step to give the
    /// optimizer's time.
    fn forward_backward(&self) -> Duration {
        let (model, x, y) = (self.model.clone(), self.x.clone(), self.y.clone());
        time_per_step(
            &format!("{} {} forward+backward", self.backend, self.name),
            20,
            move || {
                let loss = model.mse(x.clone(), y.clone());
                let _ = GradientsParams::from_grads(loss.backward(), &model);
            },
            self.sync(),
        )
    }

    /// A full training step with `optimizer`, timed over whole cycles of `cycle` steps.
    fn full_step(
        &self,
        label: &str,
        cycle: usize,
        mut optimizer: impl FnMut(Mlp<B>, GradientsParams) -> Mlp<B>,
    ) -> Duration {
        let state = RefCell::new(Some(self.model.clone()));
        let (x, y) = (self.x.clone(), self.y.clone());
        time_per_step(
            &format!("{} {} {label}", self.backend, self.name),
            cycle,
            move || {
                let current = state.borrow_mut().take().expect("model");
                let loss = current.mse(x.clone(), y.clone());
                let grads = GradientsParams::from_grads(loss.backward(), &current);
                *state.borrow_mut() = Some(optimizer(current, grads));
            },
            self.sync(),
        )
    }

    /// A full step of one of this crate's optimizers, with its state's bytes
    /// after the timed steps.
    fn optimizer_step<O>(&self, label: &str, cycle: usize, optimizer: O) -> (Duration, f64)
    where
        O: Optimizer<Mlp<B>, B> + StateBytes,
    {
        let optimizer = RefCell::new(optimizer);
        let time = self.full_step(label, cycle, |m, g| optimizer.borrow_mut().step(1e-3, m, g));
        let bytes = optimizer.borrow().state_bytes() as f64;
        (time, bytes)
    }

    /// The forward and backward pass and Adam's full step, timed together.
    fn baseline(&self) -> Baseline {
        let forward_backward = self.forward_backward();
        let mut adam = AdamConfig::new().init::<B, Mlp<B>>();
        let adam = self.full_step("adam", 20, move |m, g| adam.step(1e-3, m, g));
        Baseline {
            forward_backward,
            adam,
        }
    }

    /// The baseline around a row just timed: the mean of `before` and a new
    /// timing, which becomes the next row's `before`.
    fn around(&self, before: &mut Baseline) -> Baseline {
        let after = self.baseline();
        let around = before.mean(&after);
        *before = after;
        around
    }

    /// Adam's state: two moments of every parameter, in f32.
    fn adam_state_bytes(&self) -> f64 {
        (2 * self.model.num_params() * 4) as f64
    }
}

/// Group (a): the autoencoder's training step.
fn autoencoder<B: AutodiffBackend>(backend: &str, device: &B::Device, report: &mut Report) {
    let bench = ModelBench::<B>::new(backend, "autoencoder", &AUTOENCODER, BATCH, device);
    let params = bench.model.num_params();
    // The baseline, timed at the start and again after every row: each row
    // is compared with the mean of the baselines timed right before and right
    // after it, so that a machine whose speed drifts during the run (a shared
    // VM's moved Adam by 23% between runs) shifts a row and its reference
    // together.
    let mut baseline = bench.baseline();
    report.line(format!(
        "\n### (a) Autoencoder 784-1000-500-250-30 mirrored, batch {BATCH}, block 250, {params} parameters ({backend})\n"
    ));
    report.line(format!(
        "Forward + backward alone, at the start: {:.2} ms. Forward + backward and Adam are timed again after every row; a row's optimizer time is its full step minus the forward and backward pass, and its ratios are to Adam, each the mean of the timings right before and right after the row (the `Adam around it` column). Adam's state: 2 x params x 4 B = {:.1} MB.\n",
        ms(baseline.forward_backward),
        (2 * params * 4) as f64 / 1e6
    ));
    report.line("| optimizer | setting | full step ms | optimizer ms | Adam around it, ms | full / Adam | optimizer / Adam's | state MB | state / Adam's |");
    report.line("|---|---|---|---|---|---|---|---|---|");
    let adam_state = bench.adam_state_bytes();
    report.line(format!(
        "| Adam | - | {:.2} | {:.2} | - | 1.00 | 1.00 | {:.1} | 1.00 |",
        ms(baseline.adam),
        ms(baseline.adam_optimizer()),
        adam_state / 1e6
    ));
    // One row of the table: a full step's time against the baseline around it.
    let mut row_line = |label: &str, setting: &str, time: Duration, around: Baseline, state: Option<f64>| {
        report.line(format!(
            "| {label} | {setting} | {} |",
            cost_cells(time, around, state, adam_state)
        ));
    };
    for (setting, stats, roots) in [
        ("paper (stats 1, roots 20)", 1, 20),
        ("amortized (stats 10, roots 100)", 10, 100),
    ] {
        macro_rules! row {
            ($label:expr, $config:expr) => {
                row!($label, $config, init)
            };
            ($label:expr, $config:expr, $init:ident) => {
                if row_selected($label) {
                    row!(@run $label, $config, $init)
                }
            };
            (@run $label:expr, $config:expr, $init:ident) => {{
                let config = $config
                    .with_block_size(Some(250))
                    .with_statistics_compute_steps(stats)
                    .with_preconditioning_compute_steps(roots);
                let (time, bytes) =
                    bench.optimizer_step(&format!("{} {setting}", $label), roots, config.$init::<B, Mlp<B>>());
                let around = bench.around(&mut baseline);
                row_line($label, setting, time, around, Some(bytes));
            }};
        }
        row!("Shampoo", ShampooConfig::new());
        row!("KrADagrad*", KradagradStarConfig::new());
        row!("KrADagrad", KradagradConfig::new());
        // The same KrADagrad* with its roots by the host eigendecomposition
        // (f32, one matrix per core): the root method to pick on a CPU.
        row!(
            "KrADagrad* (eigh roots)",
            KradagradStarConfig::new().with_root_method(RootMethod::Eigh)
        );
        // The whole-model front end: factors stacked across parameters by block shape.
        row!("Shampoo (batched)", ShampooConfig::new(), init_batched);
        row!("KrADagrad* (batched)", KradagradStarConfig::new(), init_batched);
        row!("KrADagrad (batched)", KradagradConfig::new(), init_batched);
        // Both: few stacks per refresh, so few host reads (the GPU candidate).
        // No comma in a label: KRADAGRAD_BENCH_ROWS is a comma-separated list.
        row!(
            "KrADagrad* (batched with early-exit roots)",
            KradagradStarConfig::new().with_newton_convergence_check(Some(EARLY_EXIT_CHECK)),
            init_batched
        );
        // After the batched rows, which a short GPU run should reach first:
        // Newton roots whose stages end once every matrix has converged (a
        // flag read back every `EARLY_EXIT_CHECK` iterations): the same roots.
        row!(
            "Shampoo (early-exit roots)",
            ShampooConfig::new().with_newton_convergence_check(Some(EARLY_EXIT_CHECK))
        );
        row!(
            "KrADagrad* (early-exit roots)",
            KradagradStarConfig::new().with_newton_convergence_check(Some(EARLY_EXIT_CHECK))
        );
        row!(
            "KrADagrad (early-exit roots)",
            KradagradConfig::new().with_newton_convergence_check(Some(EARLY_EXIT_CHECK))
        );
    }
    // What the root refreshes cost: the same KrADagrad* step with roots never recomputed
    // (first due at step 10^9), statistics every step.
    if !row_selected("KrADagrad* no root refresh") {
        return;
    }
    let config = KradagradStarConfig::new()
        .with_block_size(Some(250))
        .with_preconditioning_compute_steps(1_000_000_000);
    let (time, _) = bench.optimizer_step("KrADagrad* no root refresh", 20, config.init::<B, Mlp<B>>());
    let around = bench.around(&mut baseline);
    row_line("KrADagrad*", "no root refresh (stats 1)", time, around, None);
}

/// A row's cells after its labels: full step ms, optimizer ms, Adam's full
/// step around it, full / Adam, optimizer / Adam's, state MB, state / Adam's.
fn cost_cells(time: Duration, around: Baseline, state: Option<f64>, adam_state: f64) -> String {
    let opt = time.saturating_sub(around.forward_backward);
    let state = state.map_or("- | -".to_string(), |bytes| {
        format!("{:.1} | {:.2}", bytes / 1e6, bytes / adam_state)
    });
    format!(
        "{:.2} | {:.2} | {:.2} | {:.2} | {} | {state}",
        ms(time),
        ms(opt),
        ms(around.adam),
        ms(time) / ms(around.adam),
        optimizer_ratio(opt, around.adam_optimizer(), around.adam),
    )
}

/// Group (f)'s models: name, widths, batch.
const SIZED_MODELS: [(&str, &[usize], usize); 3] = [
    ("small MLP", &[64, 256, 256, 10], 64),
    ("MNIST-sized MLP", &[784, 1024, 1024, 10], 64),
    ("wide MLP", &[2048, 2048, 2048, 2048], 64),
];

/// Group (f)'s settings: name, statistics every, roots every.
const SETTINGS: [(&str, usize, usize); 2] = [
    ("defaults (stats 1, roots 20)", 1, 20),
    ("amortized (stats 10, roots 100)", 10, 100),
];

/// The number of distinct block shapes among an MLP's parameters (weights
/// `[in, out]`, biases `[out]`) at `block_size`: the number of stacks the
/// whole-model front end keeps.
fn distinct_block_shapes(dims: &[usize], block_size: usize) -> usize {
    let shapes: std::collections::BTreeSet<Vec<usize>> = dims
        .windows(2)
        .flat_map(|w| [vec![w[0], w[1]], vec![w[1]]])
        .flat_map(|shape| BlockLayout::new(&shape, Some(block_size), true).regions)
        .map(|region| region.block_dims)
        .collect();
    shapes.len()
}

/// Group (f): what a KrADagrad* step costs against Adam as the model grows,
/// as the block size grows, and as the number of distinct block shapes
/// grows at a similar size.
fn sizes<B: AutodiffBackend>(backend: &str, device: &B::Device, report: &mut Report) {
    report.line(format!(
        "\n### (f) KrADagrad* against Adam by model size, block size and block shapes ({backend})\n"
    ));
    report.line("ReLU MLPs on random data. A row's optimizer time is its full step minus the forward and backward pass; its ratios are to Adam timed right before and right after it. Block 128 unless stated.\n");
    report.line("| model | parameters | distinct block shapes | optimizer | setting | full step ms | optimizer ms | Adam around it, ms | full / Adam | optimizer / Adam's | state MB | state / Adam's |");
    report.line("|---|---|---|---|---|---|---|---|---|---|---|---|");
    // The shape-count pair: eight layers of one width (one block shape) and
    // eight of decreasing widths (a shape per layer), near the same size.
    let uniform: Vec<usize> = vec![256; 9];
    let mixed: Vec<usize> = (0..9).map(|i| 288 - 8 * i).collect();
    let shape_models = [
        ("8 x 256", uniform.as_slice(), 64),
        ("8 of 288..224", mixed.as_slice(), 64),
    ];
    for (name, dims, batch) in SIZED_MODELS.into_iter().chain(shape_models) {
        let bench = ModelBench::<B>::new(backend, name, dims, batch, device);
        let params = bench.model.num_params();
        let adam_state = bench.adam_state_bytes();
        let mut baseline = bench.baseline();
        let mut row = |label: &str, setting: &str, block: usize, time: Duration, bytes: f64| {
            let around = bench.around(&mut baseline);
            let shapes = distinct_block_shapes(dims, block);
            report.line(format!(
                "| {name} | {params} | {shapes} | {label} | {setting} | {} |",
                cost_cells(time, around, Some(bytes), adam_state)
            ));
        };
        let is_shape_pair = dims.len() == 9;
        for (setting, stats, roots) in SETTINGS {
            // The shape-count pair needs one setting.
            if is_shape_pair && stats != 1 {
                continue;
            }
            let config = KradagradStarConfig::new()
                .with_statistics_compute_steps(stats)
                .with_preconditioning_compute_steps(roots);
            // Both front ends: per parameter, then the whole model.
            for (label, batched) in [("KrADagrad*", false), ("KrADagrad* (batched)", true)] {
                if !row_selected(label) {
                    continue;
                }
                let timed = format!("{label} {setting}");
                let (time, bytes) = if batched {
                    bench.optimizer_step(&timed, roots, config.init_batched::<B, Mlp<B>>())
                } else {
                    bench.optimizer_step(&timed, roots, config.init::<B, Mlp<B>>())
                };
                row(label, setting, 128, time, bytes);
            }
        }
        // Larger blocks on the widest model, in the amortized setting.
        if name != "wide MLP" || !row_selected("KrADagrad* (larger blocks)") {
            continue;
        }
        let (setting, stats, roots) = SETTINGS[1];
        for block in [256, 512] {
            let config = KradagradStarConfig::new()
                .with_block_size(Some(block))
                .with_statistics_compute_steps(stats)
                .with_preconditioning_compute_steps(roots);
            let label = format!("KrADagrad* block {block}");
            let (time, bytes) =
                bench.optimizer_step(&format!("{label} {setting}"), roots, config.init::<B, Mlp<B>>());
            row(&label, setting, block, time, bytes);
        }
    }
}

/// Group (a)'s reference: the forward and backward pass alone and Adam's
/// full step, timed together.
#[derive(Clone, Copy)]
struct Baseline {
    forward_backward: Duration,
    adam: Duration,
}

impl Baseline {
    /// The mean of two timings of the baseline (before and after a row).
    fn mean(&self, other: &Baseline) -> Baseline {
        Baseline {
            forward_backward: (self.forward_backward + other.forward_backward) / 2,
            adam: (self.adam + other.adam) / 2,
        }
    }

    /// Adam's optimizer time: its full step minus the forward and backward pass.
    fn adam_optimizer(&self) -> Duration {
        self.adam.saturating_sub(self.forward_backward)
    }
}

/// One parameter, as a module, for the optimizer-only groups.
#[derive(Module, Debug)]
struct Weight<B: Backend> {
    w: Param<Tensor<B, 2>>,
}

/// Mean optimizer step time on one `[rows, cols]` parameter with a fixed random gradient.
fn optimizer_step<B: AutodiffBackend, O: Optimizer<Weight<B>, B> + 'static>(
    name: &str,
    shape: [usize; 2],
    cycle: usize,
    optimizer: O,
    device: &B::Device,
) -> Duration {
    let weight = Weight {
        w: Param::from_tensor(Tensor::<B, 2>::random(shape, Distribution::Default, device)),
    };
    let grad = Tensor::<B::InnerBackend, 2>::random(shape, Distribution::Default, device);
    let state = RefCell::new(Some((weight, optimizer)));
    time_per_step(
        name,
        cycle,
        move || {
            let (weight, mut optimizer) = state.borrow_mut().take().expect("state");
            let mut grads = GradientsParams::new();
            grads.register(weight.w.id, grad.clone());
            let weight = optimizer.step(1e-3, weight, grads);
            *state.borrow_mut() = Some((weight, optimizer));
        },
        || {
            let _ = B::sync(device);
        },
    )
}

/// Mean time of one batched matmul `[batch, d, d] x [batch, d, d]`.
fn batched_matmul<B: Backend>(name: &str, batch: usize, d: usize, device: &B::Device) -> Duration {
    let a = Tensor::<B, 3>::random([batch, d, d], Distribution::Default, device);
    let b = Tensor::<B, 3>::random([batch, d, d], Distribution::Default, device);
    time_per_step(
        name,
        10,
        move || {
            let _ = a.clone().matmul(b.clone());
        },
        || {
            let _ = B::sync(device);
        },
    )
}

/// The `n x n` matmuls of one quadratic step with a fixed Newton schedule
/// (no convergence check), in the two forms the step runs them: `[1, n, n]`
/// products (each factor's statistics update and its application to the
/// gradient) and `[2, n, n]` products (the two factors' roots, stacked by
/// `refresh_roots` because they share a size).
#[derive(Clone, Copy)]
struct QuadraticMatmuls {
    /// `[1, n, n]` matmuls per step.
    single: f64,
    /// `[2, n, n]` matmuls per step.
    stacked: f64,
}

impl QuadraticMatmuls {
    /// Matmuls of a step that updates and applies both factors every step
    /// (`per_factor` `[1, n, n]` products each) and refreshes both roots every
    /// `root_every` steps, `per_iteration` stacked products per Newton
    /// iteration, iterations per stage as `roots::newton_iteration_bound`
    /// sets them for f32 (capped by the config's `newton_iterations`).
    fn new(
        n: usize,
        spec: RootSpec,
        per_iteration: f64,
        per_factor: f64,
        root_every: usize,
        cap: usize,
    ) -> Self {
        let u = f32::EPSILON as f64;
        let iterations: usize = newton_stages(spec, u)
            .into_iter()
            .map(|(order, condition)| newton_iteration_bound(order, n, condition, u).min(cap))
            .sum();
        Self {
            single: 2.0 * per_factor,
            stacked: per_iteration * iterations as f64 / root_every as f64,
        }
    }

    /// In `n x n` matmul-times: a stacked product is two.
    fn count(&self) -> f64 {
        self.single + 2.0 * self.stacked
    }

    /// The time of these matmuls run alone, given one `[1, n, n]` and one
    /// `[2, n, n]` matmul's time.
    fn time(&self, single: Duration, stacked: Duration) -> f64 {
        self.single * ms(single) + self.stacked * ms(stacked)
    }
}

/// Group (b): the 1536x1536 quadratic's optimizer step with section 8's
/// settings, against the step's own matmuls timed alone.
///
/// The measure of a good step here is how close it comes to its own matmuls
/// timed alone: everything else it does is overhead. Those are counted for the rows with a fixed Newton schedule
/// ([`QuadraticMatmuls`]; the early-exit rows run a data-dependent number).
/// The single matmul is timed in both forms before and after the optimizer
/// rows (the first GPU work of a process meets idle clocks and autotuning),
/// and the faster of each pair is used: the strictest reading.
fn quadratic<B: AutodiffBackend>(backend: &str, device: &B::Device, report: &mut Report) {
    const N: usize = 1536;
    const ROOT_EVERY: usize = 3;
    report.line(format!(
        "\n### (b) One step on a {N}x{N} parameter, section 8's settings ({backend})\n"
    ));
    let matmuls = |tag: &str| {
        (
            batched_matmul::<B::InnerBackend>(&format!("{backend} matmul [1, {N}, {N}] {tag}"), 1, N, device),
            batched_matmul::<B::InnerBackend>(&format!("{backend} matmul [2, {N}, {N}] {tag}"), 2, N, device),
        )
    };
    let before = matmuls("before");
    let adam = optimizer_step::<B, _>(
        &format!("{backend} quadratic adam"),
        [N, N],
        ROOT_EVERY,
        AdamConfig::new().init(),
        device,
    );
    let mut rows: Vec<(&str, Duration, Option<QuadraticMatmuls>)> = vec![("Adam", adam, None)];
    macro_rules! row {
        ($label:expr, $config:expr, $matmuls:expr) => {{
            let config = $config
                .with_matrix_eps(1e-8)
                .with_block_size(None)
                .with_preconditioning_compute_steps(ROOT_EVERY)
                .with_start_preconditioning_step(3);
            let cap = config.newton_iterations;
            let time = optimizer_step::<B, _>(
                &format!("{backend} quadratic {}", $label),
                [N, N],
                ROOT_EVERY,
                config.init(),
                device,
            );
            rows.push(($label, time, ($matmuls)(cap)));
        }};
    }
    let none = |_: usize| None;
    // Shampoo: per factor a Gram and an application; the inverse 4th root in
    // one stage of five matmuls per iteration (`T^3` by two, `X T`, `T^3 T M`).
    row!(
        "Shampoo (Newton root)",
        ShampooConfig::new().with_grafting(Some(Grafting::SgdNorm)),
        |cap| Some(QuadraticMatmuls::new(
            N,
            RootSpec::inverse(4, 1e-8),
            5.0,
            2.0,
            ROOT_EVERY,
            cap
        ))
    );
    // KrADagrad*: per factor the block-form update (`S X`, `Y Y^T`) and an
    // application; the 4th root as two square-root stages of three each.
    row!("KrADagrad*", KradagradStarConfig::new(), |cap| Some(
        QuadraticMatmuls::new(N, RootSpec::positive(4), 3.0, 3.0, ROOT_EVERY, cap)
    ));
    row!("KrADagrad", KradagradConfig::new(), none);
    row!(
        "Shampoo (Newton root, early exit)",
        ShampooConfig::new()
            .with_grafting(Some(Grafting::SgdNorm))
            .with_newton_convergence_check(Some(EARLY_EXIT_CHECK)),
        none
    );
    row!(
        "KrADagrad* (early-exit roots)",
        KradagradStarConfig::new().with_newton_convergence_check(Some(EARLY_EXIT_CHECK)),
        none
    );
    row!(
        "KrADagrad (early-exit roots)",
        KradagradConfig::new().with_newton_convergence_check(Some(EARLY_EXIT_CHECK)),
        none
    );
    let after = matmuls("after");
    let (single, stacked) = (before.0.min(after.0), before.1.min(after.1));
    let tflops = |t: Duration, batch: f64| batch * 2.0 * (N as f64).powi(3) / t.as_secs_f64() / 1e12;
    report.line(format!(
        "One {N}x{N} f32 matmul alone: `[1, n, n]` {:.3} ms before the rows, {:.3} after ({:.2} TFLOP/s at the faster); \
         `[2, n, n]` {:.3} ms before, {:.3} after ({:.1} TFLOP/s). The 2 ms target needs about 30 TFLOP/s.\n",
        ms(before.0),
        ms(after.0),
        tflops(single, 1.0),
        ms(before.1),
        ms(after.1),
        tflops(stacked, 2.0),
    ));
    report.line(
        "| optimizer | ms/step | / Adam | in `[1, n, n]` matmul-times | matmuls per step (`[1,n,n]` + `[2,n,n]`) | those alone, ms | step / its matmuls alone |",
    );
    report.line("|---|---|---|---|---|---|---|");
    for (label, time, counted) in rows {
        let (count, alone, ratio) = match counted {
            Some(m) => {
                let alone = m.time(single, stacked);
                (
                    format!("{:.1} ({:.1} + {:.1})", m.count(), m.single, m.stacked),
                    format!("{alone:.2}"),
                    format!("{:.2}", ms(time) / alone),
                )
            }
            None => ("-".into(), "-".into(), "-".into()),
        };
        report.line(format!(
            "| {label} | {:.2} | {:.2} | {:.1} | {count} | {alone} | {ratio} |",
            ms(time),
            ms(time) / ms(adam),
            ms(time) / ms(single),
        ));
    }
}

/// Batched `[blocks, b, b]` matmuls in one KrADagrad* step on a 2-D weight
/// cut into `b x b` blocks, statistics every step and roots every
/// `root_every` steps, for f32: per factor (two) the statistics update in
/// its block form for square blocks (`S X` and `(S X)(S X)^T`, two matmuls;
/// `krad::krad_star_update_from_blocks`) and one matmul applying the root,
/// plus three matmuls per Newton iteration of the two square-root stages of
/// the fourth root, spread over `root_every` steps.
fn matmuls_per_step(b: usize, root_every: usize) -> f64 {
    let u = f32::EPSILON as f64;
    let cap = KradagradStarConfig::new().newton_iterations;
    // KrADagrad*'s P = S^(1/(2k)) with k = 2 runs as square-root stages,
    // three matmuls per iteration each.
    let iterations: usize = newton_stages(RootSpec::positive(4), u)
        .into_iter()
        .map(|(order, condition)| {
            assert_eq!(order, 2, "square-root stages");
            newton_iteration_bound(order, b, condition, u).min(cap)
        })
        .sum();
    2.0 * 3.0 + 2.0 * 3.0 * iterations as f64 / root_every as f64
}

/// Group (c): KrADagrad* on big weights at several block sizes.
fn scaling<B: AutodiffBackend>(backend: &str, device: &B::Device, report: &mut Report) {
    // The config's own root interval sets the timed cycle and the matmul count.
    let roots_every = KradagradStarConfig::new().preconditioning_compute_steps;
    report.line(format!(
        "\n### (c) KrADagrad* on one weight, statistics every step, roots every {roots_every} ({backend})\n"
    ));
    report.line(format!(
        "Matmuls per step, counted in batched matmuls `[blocks, b, b] x [blocks, b, b]`: per factor two in \
         the KrAD update (`S X` and `(S X)(S X)^T`), one applying the root, and three per Newton iteration every \
         {roots_every}th step (iterations: `roots::newton_iteration_bound` for the two f32 square-root stages). \
         A step near 1x that many batched matmuls timed alone spends its time in the products.\n",
    ));
    report.line("| weight | block | blocks | ms/step | one batched matmul of the blocks, ms | matmuls per step | step / (matmuls x one) | / Adam |");
    report.line("|---|---|---|---|---|---|---|---|");
    for shape in [[1024, 1024], [4096, 4096], [8192, 1024]] {
        let adam = optimizer_step::<B, _>(
            &format!("{backend} scaling adam {shape:?}"),
            shape,
            20,
            AdamConfig::new().init(),
            device,
        );
        for block in [128, 256, 512] {
            let blocks = (shape[0] / block) * (shape[1] / block);
            let config = KradagradStarConfig::new().with_block_size(Some(block));
            let time = optimizer_step::<B, _>(
                &format!("{backend} scaling {shape:?} block {block}"),
                shape,
                roots_every,
                config.init(),
                device,
            );
            let matmul = batched_matmul::<B::InnerBackend>(
                &format!("{backend} matmul [{blocks}, {block}, {block}]"),
                blocks,
                block,
                device,
            );
            let matmuls = matmuls_per_step(block, roots_every);
            report.line(format!(
                "| {}x{} | {block} | {blocks} | {:.2} | {:.3} | {matmuls:.1} | {:.2} | {:.1} |",
                shape[0],
                shape[1],
                ms(time),
                ms(matmul),
                ms(time) / (matmuls * ms(matmul)),
                ms(time) / ms(adam)
            ));
        }
    }
}

/// Group (d): what a half-precision statistics product would buy. Batched
/// `[batch, d, d]` matmuls in f32, f16 and bf16 (each where the backend runs
/// it), and the relative Frobenius error of a Gram `X X^T` of `X` rounded to
/// the half type (the PSD-preserving form a precision policy would use)
/// against the f32 Gram. Inputs are cast once, outside the timed region.
fn precision<B: AutodiffBackend>(backend: &str, device: &B::Device, report: &mut Report) {
    use burn::tensor::{DType, ElementConversion, FloatDType};
    use kradagrad_burn::transforms::norm;
    report.line(format!(
        "\n### (d) Statistics precision: one batched Gram `X X^T`, `[batch, d, d]` ({backend})\n"
    ));
    report.line("| batch x d | dtype | ms | / f32 | Gram rel. error vs f32 |");
    report.line("|---|---|---|---|---|");
    for (batch, d) in [(16, 250), (16, 256), (1, 1536), (1024, 128), (64, 512)] {
        let x = Tensor::<B::InnerBackend, 3>::random([batch, d, d], Distribution::Default, device);
        let reference = x.clone().matmul(x.clone().swap_dims(1, 2));
        let frobenius = |t: Tensor<B::InnerBackend, 3>| norm(t).into_scalar().elem::<f64>();
        let reference_norm = frobenius(reference.clone());
        let mut f32_time = None;
        for (label, dtype, float) in [
            ("f32", DType::F32, FloatDType::F32),
            ("f16", DType::F16, FloatDType::F16),
            ("bf16", DType::BF16, FloatDType::BF16),
        ] {
            if !B::InnerBackend::supports_dtype(device, dtype) {
                report.line(format!("| {batch} x {d} | {label} | not supported | - | - |"));
                continue;
            }
            let a = x.clone().cast(float);
            let at = a.clone().swap_dims(1, 2);
            let gram = a.clone().matmul(at.clone()).cast(FloatDType::F32);
            let error = frobenius(gram - reference.clone()) / reference_norm;
            let time = time_per_step(
                &format!("{backend} gram [{batch}, {d}, {d}] {label}"),
                10,
                move || {
                    let _ = a.clone().matmul(at.clone());
                },
                || {
                    let _ = B::sync(device);
                },
            );
            let base = *f32_time.get_or_insert(time);
            report.line(format!(
                "| {batch} x {d} | {label} | {:.3} | {:.2} | {error:.1e} |",
                ms(time),
                ms(time) / ms(base)
            ));
        }
    }
}

/// Where CubeCL's execution log goes when group (e) runs (set before the
/// runtime starts, see [`main`]).
const KERNEL_LOG: &str = "KRADAGRAD_BENCH_KERNEL_LOG";

/// Turns on CubeCL's execution log (one line per kernel run, no timing) at
/// the file named by `KERNEL_LOG`. Must run before the first CubeCL client
/// exists: the runtime reads its configuration once.
#[cfg(feature = "wgpu")]
fn enable_kernel_log(path: &std::path::Path) {
    use cubecl_runtime::config::{profiling::ProfilingLogLevel, CubeClRuntimeConfig, RuntimeConfig};
    let _ = std::fs::remove_file(path);
    let mut config = CubeClRuntimeConfig::default();
    config.profiling.logger.level = ProfilingLogLevel::Minimal;
    config.profiling.logger.file = Some(path.to_path_buf());
    CubeClRuntimeConfig::set(config);
}

/// Group (e): kernels a training step of the autoencoder launches on a
/// CubeCL backend (counted from the execution log, so independent of the
/// card's speed): Adam's whole step, and for each optimizer and front end a
/// step that only applies the roots, the extra kernels of a statistics update
/// and of a root refresh.
fn kernels<B: AutodiffBackend>(backend: &str, device: &B::Device, report: &mut Report) {
    let Ok(log) = std::env::var(KERNEL_LOG) else {
        report.line(format!(
            "\n(e) kernels skipped on {backend}: not a CubeCL backend"
        ));
        return;
    };
    // The logger writes from its own task: give it time before counting.
    let lines = || {
        let _ = B::sync(device);
        std::thread::sleep(Duration::from_millis(1500));
        std::fs::read_to_string(&log).map_or(0, |s| s.lines().count())
    };
    let x = Tensor::<B, 2>::random([BATCH, AUTOENCODER[0]], Distribution::Uniform(0.0, 1.0), device);
    // Kernels per step over `n` steps after `warm` (compilation and autotuning launch their own).
    let count = |mut step: Box<dyn FnMut(Mlp<B>, GradientsParams) -> Mlp<B> + '_>, warm: usize, n: usize| {
        B::seed(device, 0);
        let mut model = Mlp::<B>::new(&AUTOENCODER, device);
        let mut run = |model: Mlp<B>| {
            let loss = model.mse(x.clone(), x.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            step(model, grads)
        };
        for _ in 0..warm {
            model = run(model);
        }
        let before = lines();
        for _ in 0..n {
            model = run(model);
        }
        (lines() - before) as f64 / n as f64
    };
    let mut adam = AdamConfig::new().init::<B, Mlp<B>>();
    let adam_kernels = count(Box::new(move |m, g| adam.step(1e-3, m, g)), 2, 2);
    report.line(format!(
        "\n### (e) Kernels per autoencoder training step ({backend}), from CubeCL's execution log\n"
    ));
    report.line(format!(
        "Adam's whole step (forward, backward, update): {adam_kernels:.0} kernels.\n"
    ));
    report.line("| optimizer | front end | step applying the roots | + statistics update | + root refresh |");
    report.line("|---|---|---|---|---|");
    let never = 1_000_000_000;
    macro_rules! rows {
        ($label:expr, $config:expr) => {{
            let config = $config.with_block_size(Some(250));
            let apply = config
                .clone()
                .with_statistics_compute_steps(never)
                .with_preconditioning_compute_steps(never);
            let stats = config.clone().with_preconditioning_compute_steps(never);
            let roots = config.with_preconditioning_compute_steps(1);
            macro_rules! front {
                ($init:ident) => {{
                    let mut o = apply.$init::<B, Mlp<B>>();
                    let a = count(Box::new(move |m, g| o.step(1e-3, m, g)), 2, 2);
                    let mut o = stats.$init::<B, Mlp<B>>();
                    let s = count(Box::new(move |m, g| o.step(1e-3, m, g)), 2, 2);
                    let mut o = roots.$init::<B, Mlp<B>>();
                    let r = count(Box::new(move |m, g| o.step(1e-3, m, g)), 1, 1);
                    (a, s - a, r - s)
                }};
            }
            for (front, (a, s, r)) in [
                ("per parameter (`init`)", front!(init)),
                ("batched (`init_batched`)", front!(init_batched)),
            ] {
                report.line(format!("| {} | {front} | {a:.0} | {s:.0} | {r:.0} |", $label));
            }
        }};
    }
    for label in ["KrADagrad*", "Shampoo", "KrADagrad"]
        .into_iter()
        .filter(|l| row_selected(l))
    {
        match label {
            "KrADagrad*" => rows!(label, KradagradStarConfig::new()),
            "Shampoo" => rows!(label, ShampooConfig::new()),
            _ => rows!(label, KradagradConfig::new()),
        }
    }
}

fn run_groups<B: AutodiffBackend>(backend: &str, device: &B::Device, report: &mut Report) {
    let groups = env_list("KRADAGRAD_BENCH_GROUPS", "autoencoder,quadratic,scaling");
    for group in &groups {
        match group.as_str() {
            "autoencoder" => autoencoder::<B>(backend, device, report),
            "quadratic" => quadratic::<B>(backend, device, report),
            "scaling" => scaling::<B>(backend, device, report),
            "precision" => precision::<B>(backend, device, report),
            "kernels" => kernels::<B>(backend, device, report),
            "sizes" => sizes::<B>(backend, device, report),
            other => panic!("KRADAGRAD_BENCH_GROUPS: unknown group {other}"),
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let mut report = Report::default();
    // Group (e) counts kernels from CubeCL's execution log, which must be
    // configured before the runtime starts.
    #[cfg(feature = "wgpu")]
    if env_list("KRADAGRAD_BENCH_GROUPS", "")
        .iter()
        .any(|g| g == "kernels")
    {
        let log = std::env::temp_dir().join(format!("kradagrad-bench-kernels-{}.log", std::process::id()));
        enable_kernel_log(&log);
        std::env::set_var(KERNEL_LOG, &log);
    }
    // burn-ndarray runs a batched matmul's matrices in parallel (rayon) and
    // each matrix through matrixmultiply, itself threaded unless
    // MATMUL_NUM_THREADS=1 (read once, at the first matmul): the setting
    // changes every CPU row, so the report states it.
    let matmul_threads = std::env::var("MATMUL_NUM_THREADS").unwrap_or_else(|_| "unset".into());
    report.line(format!(
        "## Step benchmarks: at least {} timed steps per row, whole root cycles, device synchronised before each clock read, mimalloc as the global allocator, MATMUL_NUM_THREADS={matmul_threads}",
        min_steps()
    ));
    for backend in env_list("KRADAGRAD_BENCH_BACKENDS", "ndarray,wgpu") {
        match backend.as_str() {
            "ndarray" => run_groups::<Autodiff<NdArray<f32>>>("ndarray", &Default::default(), &mut report),
            "wgpu" => run_wgpu(&mut report),
            other => panic!("KRADAGRAD_BENCH_BACKENDS: unknown backend {other}"),
        }
    }
    let out = std::path::PathBuf::from(
        std::env::var("KRADAGRAD_BENCH_OUT").unwrap_or_else(|_| "target/bench".into()),
    );
    std::fs::create_dir_all(&out).expect("create the output folder");
    std::fs::write(out.join("step.md"), &report.text).expect("write step.md");
    println!("\nwrote {}", out.join("step.md").display());
}

#[cfg(feature = "wgpu")]
fn run_wgpu(report: &mut Report) {
    match kradagrad_burn_suite::backends::wgpu_adapter() {
        Ok(name) => {
            let label = format!("wgpu: {name}");
            run_groups::<Autodiff<burn::backend::Wgpu<f32, i32>>>(&label, &Default::default(), report)
        }
        Err(reason) => report.line(format!("\nwgpu skipped: no adapter ({reason})")),
    }
}

#[cfg(not(feature = "wgpu"))]
fn run_wgpu(report: &mut Report) {
    report.line("\nwgpu skipped: built without the `wgpu` feature");
}
