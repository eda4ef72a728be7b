//! The generic optimizer tests (tests/common) on burn-wgpu, plus the
//! cross-backend checks (NdArray against Wgpu).
//!
//! Without a wgpu adapter these tests print one line saying they were
//! skipped and why; with `KRADAGRAD_REQUIRE_WGPU=1` (as CI sets) a missing
//! adapter fails them instead. All wgpu tests of this binary hold one lock:
//! running `Wgpu<f32>` and `Wgpu<f64>` tests at the same time in one process
//! was seen to give wrong results.
#![cfg(feature = "wgpu")]

mod common;

use std::io::Write;
use std::sync::{Mutex, MutexGuard, OnceLock};

use burn::backend::wgpu::WgpuDevice;
use burn::backend::{Autodiff, NdArray, Wgpu};
use burn::module::Module;
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::Backend;
use kradagrad_burn::{Grafting, KradagradConfig, KradagradStarConfig, ShampooConfig};
use kradagrad_burn_suite::backends::{wgpu_adapter, wgpu_has_f64, Wgpu64};
use kradagrad_burn_suite::mlp::{regression_data, train, transfer, Mlp};

type W32 = Wgpu<f32, i32>;
/// f64 runs on wgpu *without* Burn's fusion: burn-cubecl-fusion 0.21 panics
/// with "Unsupported precision for fusion: f64" as soon as it fuses f64 ops.
type W64 = Wgpu64;

static LOCK: Mutex<()> = Mutex::new(());

/// Writes a line that `cargo test` does not capture.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Whether a wgpu adapter answers; decided once per process.
fn adapter() -> &'static Result<String, String> {
    static ADAPTER: OnceLock<Result<String, String>> = OnceLock::new();
    ADAPTER.get_or_init(wgpu_adapter)
}

/// `Some(lock)` when wgpu can run; `None` (after one line saying why) when it
/// cannot and `KRADAGRAD_REQUIRE_WGPU` is not `1`.
fn ready() -> Option<MutexGuard<'static, ()>> {
    let guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    static REPORTED: OnceLock<()> = OnceLock::new();
    match adapter() {
        Ok(name) => {
            REPORTED.get_or_init(|| say(&format!("wgpu tests run on: {name}")));
            Some(guard)
        }
        Err(reason) => {
            if std::env::var("KRADAGRAD_REQUIRE_WGPU").as_deref() == Ok("1") {
                panic!("KRADAGRAD_REQUIRE_WGPU=1 but no wgpu adapter could be used: {reason}");
            }
            REPORTED.get_or_init(|| {
                say(&format!(
                    "wgpu tests SKIPPED: no wgpu adapter could be used ({reason}); install a Vulkan \
                     driver (e.g. Mesa's lavapipe: mesa-vulkan-drivers + libvulkan1) or set \
                     KRADAGRAD_REQUIRE_WGPU=1 to make this an error"
                ))
            });
            None
        }
    }
}

/// [`ready`], and the adapter supports f64 shaders. Under
/// `KRADAGRAD_REQUIRE_WGPU=1` an adapter without them fails the f64 tests
/// (lavapipe has them) instead of skipping them.
fn ready_f64() -> Option<MutexGuard<'static, ()>> {
    let guard = ready()?;
    if wgpu_has_f64() {
        Some(guard)
    } else if std::env::var("KRADAGRAD_REQUIRE_WGPU").as_deref() == Ok("1") {
        drop(guard);
        panic!("KRADAGRAD_REQUIRE_WGPU=1 but the wgpu adapter has no f64 shader support");
    } else {
        static REPORTED: OnceLock<()> = OnceLock::new();
        REPORTED.get_or_init(|| say("wgpu f64 tests SKIPPED: this adapter has no f64 shader support"));
        None
    }
}

backend_tests!(
    W32,
    W64,
    WgpuDevice::default(),
    ready(),
    ready_f64(),
    bounds = kradagrad_burn_suite::replay::WGPU,
    resume_tolerance = Some(1e-5)
);

type Cpu = Autodiff<NdArray<f32>>;
type Gpu = Autodiff<W32>;

/// Per-step losses of one optimizer on NdArray and Wgpu from the same weights
/// (moved through a record) and data: within 1e-3 relative over 50 steps.
fn same_trajectory<OC, OG>(name: &str, cpu_optimizer: OC, gpu_optimizer: OG, lr: f64)
where
    OC: Optimizer<Mlp<Cpu>, Cpu>,
    OG: Optimizer<Mlp<Gpu>, Gpu>,
{
    let (cpu_device, gpu_device) = (Default::default(), WgpuDevice::default());
    // Seeded (under the lock every wgpu test holds) so the comparison is reproducible.
    Cpu::seed(&cpu_device, 2026);
    let cpu_model = Mlp::<Cpu>::new(&[4, 32, 32, 2], &cpu_device);
    let gpu_model = transfer(
        cpu_model.clone(),
        Mlp::<Gpu>::new(&[4, 32, 32, 2], &gpu_device),
        &gpu_device,
    );
    let cpu = train(
        cpu_model,
        cpu_optimizer,
        &regression_data(128, 4, 2, 7, &cpu_device),
        lr,
        50,
    )
    .2;
    let gpu = train(
        gpu_model,
        gpu_optimizer,
        &regression_data(128, 4, 2, 7, &gpu_device),
        lr,
        50,
    )
    .2;
    let worst = cpu
        .iter()
        .zip(&gpu)
        .map(|(c, g)| (c - g).abs() / c.abs())
        .fold(0.0, f64::max);
    say(&format!(
        "{name}: NdArray vs Wgpu per-step loss gap over 50 steps: {worst:.2e} (final {:.4e} vs {:.4e})",
        cpu[49], gpu[49]
    ));
    assert!(
        worst <= 1e-3,
        "{name}: per-step losses differ by {worst:e} relative"
    );
    assert!(cpu[49] < 0.5 * cpu[0], "{name}: the loss must fall");
}

#[test]
fn ndarray_and_wgpu_train_the_same_way() {
    let Some(_guard) = ready() else { return };
    same_trajectory(
        "kradagrad*",
        KradagradStarConfig::new().init(),
        KradagradStarConfig::new().init(),
        0.05,
    );
    same_trajectory(
        "kradagrad",
        KradagradConfig::new().init(),
        KradagradConfig::new().init(),
        0.02,
    );
    // Shampoo preconditions with fp32 *inverse* roots of L = eps I + sum G G^T. With the default
    // eps = 1e-6 the statistics of this MLP reach condition ~1e6, where an fp32 inverse 4th root
    // is only good to ~1e-3 (docs/algorithm.md), so the two backends' different summation orders
    // are amplified: measured per-step gaps of 5.3e-4, 6.1e-4 and 4.0e-3 on three initialisations
    // (docs/backends.md). That is the paper's point about fp32 Shampoo, not a backend difference;
    // this check uses eps = 1e-4 (condition ~1e4), where the roots are good to ~3e-5.
    let shampoo = || ShampooConfig::new().with_matrix_eps(1e-4);
    same_trajectory("shampoo", shampoo().init(), shampoo().init(), 0.05);
}

/// Optimizer state saved on one backend loads on the other and continues
/// within 1e-4 relative of the run that stayed.
#[test]
fn state_saved_on_one_backend_continues_on_the_other() {
    let Some(_guard) = ready() else { return };
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let config = KradagradStarConfig::new()
        .with_preconditioning_compute_steps(4)
        .with_grafting(Some(Grafting::Adam { epsilon: 1e-6 }));
    let (cpu_device, gpu_device) = (Default::default(), WgpuDevice::default());
    let cpu_data = regression_data(128, 4, 2, 7, &cpu_device);
    let gpu_data = regression_data(128, 4, 2, 7, &gpu_device);
    Cpu::seed(&cpu_device, 2026);
    let model = Mlp::<Cpu>::new(&[4, 32, 32, 2], &cpu_device);
    let (model, optimizer, _) = train(model, config.init(), &cpu_data, 0.05, 6);
    let dir = std::env::temp_dir().join(format!("kradagrad-burn-cross-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    recorder
        .record(model.clone().into_record(), dir.join("model"))
        .unwrap();
    recorder
        .record(optimizer.to_record(), dir.join("optimizer"))
        .unwrap();
    let stayed = train(model, optimizer, &cpu_data, 0.05, 6).2;

    let gpu_model = Mlp::<Gpu>::new(&[4, 32, 32, 2], &gpu_device)
        .load_record(recorder.load(dir.join("model"), &gpu_device).unwrap());
    let gpu_optimizer = config
        .init::<Gpu, Mlp<Gpu>>()
        .load_record(recorder.load(dir.join("optimizer"), &gpu_device).unwrap());
    let moved = train(gpu_model, gpu_optimizer, &gpu_data, 0.05, 6).2;
    let worst = stayed
        .iter()
        .zip(&moved)
        .map(|(a, b)| (a - b).abs() / a.abs())
        .fold(0.0, f64::max);
    say(&format!(
        "state moved NdArray -> Wgpu: continued losses within {worst:.2e} relative"
    ));
    assert!(worst <= 1e-4, "continued losses differ by {worst:e}");
}
