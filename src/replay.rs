//! Replays reference trajectories (`reference_vectors.json` and
//! `reference_vectors_options.json`; format in docs/algorithm.md, "Reference
//! vectors") through the public API: config -> optimizer ->
//! `SimpleOptimizer::step`, on `NdArray<f64>` or `NdArray<f32>`.
//!
//! A case may carry its own error bounds, one per root method (`bounds`):
//! the copies in `tests/data` do, set to 100 times the error measured on
//! burn-ndarray (at least 1e-12 for f64 cases and 1e-6 for f32 cases) by
//! `cargo run --release --example replay -- FILE --write-bounds OUT` (and at
//! most the format's tolerance), so that a regression of two orders of
//! magnitude fails. A case without one is held to the format's tolerance:
//! 1e-6 for f64 and 1e-3 for f32.

use burn::backend::NdArray;
use burn::optim::SimpleOptimizer;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use kradagrad_burn::{
    Grafting, KradagradConfig, KradagradStarConfig, MomentumConfig, MomentumForm, RootMethod, ShampooConfig,
    WeightDecayConfig, WeightDecayStyle,
};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A file of reference cases.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct VectorFile {
    /// Where the vectors came from.
    #[serde(default)]
    pub source: Option<String>,
    /// The cases.
    pub cases: Vec<Case>,
}

/// One reference trajectory.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Case {
    /// Case name.
    pub name: String,
    /// `kradagrad_star`, `kradagrad` or `shampoo`.
    pub optimizer: String,
    /// Parameter shape.
    pub shape: Vec<usize>,
    /// `f64` or `f32`.
    pub dtype: String,
    /// Learning rate.
    pub lr: f64,
    /// Momentum.
    pub momentum: f64,
    /// Reference hyper-parameters (reference names; absent = reference default).
    #[serde(default)]
    pub hyperparams: Map<String, Value>,
    /// Number of steps.
    pub steps: usize,
    /// Initial parameter, flattened row-major.
    pub init: Vec<f64>,
    /// Gradient of every step.
    pub grads: Vec<Vec<f64>>,
    /// Parameter after every step.
    pub params: Vec<Vec<f64>>,
    /// The case's own error bound per root method (keys: [`root_name`]);
    /// absent in the reference files, where the format's tolerance holds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bounds: BTreeMap<String, f64>,
}

impl Case {
    /// The error bound of the case replayed with `root_method` on
    /// burn-ndarray: its own bound if it has one, else the format's tolerance
    /// (1e-6 for f64 cases, 1e-3 for f32 cases).
    pub fn bound(&self, root_method: RootMethod) -> f64 {
        self.bound_on(root_method, NDARRAY)
    }

    /// The error bound of the case replayed with `root_method` on `backend`
    /// ([`NDARRAY`] or [`WGPU`]): the bound measured there ([`bound_key`]),
    /// else the one measured on burn-ndarray, else the format's tolerance.
    /// (An f32 GPU sums in another order than burn-ndarray, and a case's
    /// round-off grows over its steps differently: `mm_mat_6x4_f32` ends
    /// 158 times further from the reference on lavapipe.)
    pub fn bound_on(&self, root_method: RootMethod, backend: &str) -> f64 {
        let measured = |key: &str| self.bounds.get(key).copied();
        measured(&bound_key(root_method, backend))
            .or_else(|| measured(root_name(root_method)))
            .unwrap_or_else(|| format_tolerance(&self.dtype))
    }
}

/// The backend the bounds without a suffix were measured on.
pub const NDARRAY: &str = "ndarray";

/// burn-wgpu (`Wgpu<f32>` for f32 cases, the unfused f64 wgpu backend for
/// f64 cases), whose bounds carry the suffix `@wgpu`.
pub const WGPU: &str = "wgpu";

/// The key of a case's bound for `root_method` on `backend`: the root's name
/// on burn-ndarray, `name@backend` elsewhere.
pub fn bound_key(root_method: RootMethod, backend: &str) -> String {
    match backend {
        NDARRAY => root_name(root_method).to_string(),
        other => format!("{}@{other}", root_name(root_method)),
    }
}

/// The format's tolerance for a case of `dtype` (docs/algorithm.md,
/// "Reference vectors").
pub fn format_tolerance(dtype: &str) -> f64 {
    if dtype == "f64" {
        1e-6
    } else {
        1e-3
    }
}

/// The smallest bound [`bound_from_error`] gives a case of `dtype`.
pub fn bound_floor(dtype: &str) -> f64 {
    if dtype == "f64" {
        1e-12
    } else {
        1e-6
    }
}

/// A case's bound from the error measured on burn-ndarray: 100 times it, at
/// least [`bound_floor`] and at most the format's tolerance.
pub fn bound_from_error(error: f64, dtype: &str) -> f64 {
    (100.0 * error)
        .max(bound_floor(dtype))
        .min(format_tolerance(dtype))
}

/// The name of a root method in a case's `bounds` and on the replay tool's
/// command line.
pub fn root_name(root_method: RootMethod) -> &'static str {
    match root_method {
        RootMethod::Newton => "newton",
        RootMethod::Eigh => "eigh",
        RootMethod::EighF64 => "eigh-f64",
    }
}

/// Every root method, in the order the bounds are written.
pub const ROOT_METHODS: [RootMethod; 3] = [RootMethod::Newton, RootMethod::Eigh, RootMethod::EighF64];

/// The result of replaying one case.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Replayed; the error by the format's metric.
    Replayed {
        /// `max over steps of max|W - W_ref| / max|W_ref|`.
        error: f64,
        /// The case's bound for the root method used (see [`Case::bound`]).
        tolerance: f64,
    },
    /// The case needs something this replay does not support.
    Unsupported(String),
}

impl Outcome {
    /// Whether the case passed.
    pub fn passed(&self) -> bool {
        matches!(self, Outcome::Replayed { error, tolerance } if error <= tolerance)
    }
}

/// The optimizer a case asks for, configured.
enum Built {
    Star(KradagradStarConfig),
    Mm(KradagradConfig),
    Shampoo(ShampooConfig),
}

/// Reads a reference hyper-parameter with the reference's default.
fn number(h: &Map<String, Value>, key: &str, default: f64) -> Result<f64, String> {
    match h.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_f64()
            .or_else(|| v.as_bool().map(|b| b as u8 as f64))
            .ok_or_else(|| format!("unsupported: {key}={v}")),
    }
}

fn count(h: &Map<String, Value>, key: &str, default: usize) -> Result<usize, String> {
    let v = number(h, key, default as f64)?;
    if v < 0.0 || v.fract() != 0.0 {
        return Err(format!("unsupported: {key}={v}"));
    }
    Ok(v as usize)
}

/// Keys of section 9; anything else makes the case unsupported.
const KNOWN_KEYS: &[&str] = &[
    "matrix_eps",
    "block_size",
    "graft_type",
    "weight_decay",
    "beta2",
    "statistics_compute_steps",
    "preconditioning_compute_steps",
    "start_preconditioning_step",
    "nesterov",
    "diagonal_eps",
    "double",
    "inverse_exponent_override",
];

macro_rules! apply_common {
    ($config:expr, $common:expr, $root:expr, $iterations:expr) => {{
        let c = $common;
        $config
            .with_matrix_eps(c.matrix_eps)
            .with_block_size(c.block_size)
            .with_merge_dims(c.block_size.is_some())
            .with_beta_2(c.beta2)
            .with_statistics_compute_steps(c.statistics_compute_steps)
            .with_preconditioning_compute_steps(c.preconditioning_compute_steps)
            .with_start_preconditioning_step(c.start_preconditioning_step)
            .with_momentum(Some(MomentumConfig::new().with_momentum(c.momentum).with_form(
                match c.nesterov {
                    true => MomentumForm::ReferenceNesterov,
                    false => MomentumForm::HeavyBall,
                },
            )))
            .with_weight_decay(Some(
                WeightDecayConfig::new(c.weight_decay).with_style(WeightDecayStyle::L2AfterPreconditioning),
            ))
            .with_root_method($root)
            .with_newton_iterations($iterations)
    }};
}

struct Common {
    matrix_eps: f64,
    block_size: Option<usize>,
    beta2: f64,
    statistics_compute_steps: usize,
    preconditioning_compute_steps: usize,
    start_preconditioning_step: usize,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
    diagonal_eps: f64,
}

/// Root options of a replay, and the backend whose bounds hold.
#[derive(Debug, Clone, Copy)]
pub struct ReplayOptions {
    /// Root method (the reference used an eigendecomposition; the library's
    /// default is Newton on the device).
    pub root_method: RootMethod,
    /// Newton iteration cap.
    pub newton_iterations: usize,
    /// The backend the case runs on, whose bounds it is held to
    /// ([`NDARRAY`] or [`WGPU`]; see [`Case::bound_on`]).
    pub backend: &'static str,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            root_method: RootMethod::Newton,
            newton_iterations: 40,
            backend: NDARRAY,
        }
    }
}

fn build(case: &Case, options: ReplayOptions) -> Result<Built, String> {
    let h = &case.hyperparams;
    if let Some(key) = h.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
        return Err(format!("unsupported: {key}"));
    }
    let block = count(h, "block_size", 128)?;
    let graft_type = count(h, "graft_type", 1)?;
    if graft_type > 3 {
        return Err(format!("unsupported: graft_type={graft_type}"));
    }
    let double = number(h, "double", 0.0)? != 0.0;
    if double != (case.dtype == "f64") {
        return Err(format!("unsupported: double={double} with dtype {}", case.dtype));
    }
    let common = Common {
        matrix_eps: number(h, "matrix_eps", 1e-12)?,
        block_size: (block > 0).then_some(block),
        beta2: number(h, "beta2", 1.0)?,
        statistics_compute_steps: count(h, "statistics_compute_steps", 1)?,
        preconditioning_compute_steps: count(h, "preconditioning_compute_steps", 1)?,
        start_preconditioning_step: count(h, "start_preconditioning_step", 1)?,
        momentum: case.momentum,
        // The reference's Shampoo hyper-parameters default to nesterov = true.
        nesterov: number(h, "nesterov", 1.0)? != 0.0,
        weight_decay: number(h, "weight_decay", 0.0)?,
        diagonal_eps: number(h, "diagonal_eps", 1e-6)?,
    };
    let override_ = count(h, "inverse_exponent_override", 0)?;
    let (root, iters) = (options.root_method, options.newton_iterations);
    let built = match case.optimizer.as_str() {
        "kradagrad_star" => {
            // The reference grafts KrADagrad* to Adam for graft_type 3, else to the SGD norm.
            let grafting = if graft_type == 3 {
                Grafting::Adam {
                    epsilon: common.diagonal_eps,
                }
            } else {
                Grafting::SgdNorm
            };
            Built::Star(
                apply_common!(KradagradStarConfig::new(), &common, root, iters).with_grafting(Some(grafting)),
            )
        }
        "kradagrad" => {
            Built::Mm(apply_common!(KradagradConfig::new(), &common, root, iters).with_grafting(None))
        }
        "shampoo" => {
            let grafting = if graft_type == 2 {
                Grafting::AdaGrad {
                    epsilon: common.diagonal_eps,
                }
            } else {
                Grafting::SgdNorm
            };
            Built::Shampoo(
                apply_common!(ShampooConfig::new(), &common, root, iters)
                    .with_grafting(Some(grafting))
                    .with_inverse_exponent_override((override_ != 0).then_some(override_ as u32)),
            )
        }
        other => return Err(format!("unsupported: optimizer {other}")),
    };
    if override_ != 0 && case.optimizer != "shampoo" {
        return Err("unsupported: inverse_exponent_override outside Shampoo".into());
    }
    let validation = match &built {
        Built::Star(c) => c.validate(),
        Built::Mm(c) => c.validate(),
        Built::Shampoo(c) => c.validate(),
    };
    validation.map_err(|e| format!("unsupported: {e}"))?;
    Ok(built)
}

/// Replays one case on the backend `options` names: `NdArray<f64>` or
/// `NdArray<f32>` for [`NDARRAY`]; for [`WGPU`] (feature `wgpu`), `Wgpu<f32>`
/// for f32 cases and the unfused f64 wgpu backend for f64 cases.
pub fn replay(case: &Case, options: ReplayOptions) -> Outcome {
    match (options.backend, case.dtype.as_str()) {
        (NDARRAY, "f64") => replay_on::<NdArray<f64>>(case, options, &Default::default()),
        (NDARRAY, "f32") => replay_on::<NdArray<f32>>(case, options, &Default::default()),
        #[cfg(feature = "wgpu")]
        (WGPU, "f64") => replay_on::<crate::backends::Wgpu64>(case, options, &Default::default()),
        #[cfg(feature = "wgpu")]
        (WGPU, "f32") => replay_on::<burn::backend::Wgpu>(case, options, &Default::default()),
        (backend, dtype) => Outcome::Unsupported(format!("unsupported: dtype {dtype} on {backend}")),
    }
}

/// Replays one case on backend `B`, whose float type must be the case's
/// dtype, against the case's bound (see [`Case::bound`]).
pub fn replay_on<B: Backend>(case: &Case, options: ReplayOptions, device: &B::Device) -> Outcome {
    let built = match build(case, options) {
        Ok(b) => b,
        Err(reason) => return Outcome::Unsupported(reason),
    };
    let numel: usize = case.shape.iter().product();
    let sizes_ok = case.init.len() == numel
        && case.grads.len() == case.steps
        && case.params.len() == case.steps
        && case.grads.iter().chain(&case.params).all(|v| v.len() == numel);
    if !sizes_ok {
        return Outcome::Unsupported("unsupported: inconsistent sizes in the case".into());
    }
    let expected_dtype = match case.dtype.as_str() {
        "f64" => burn::tensor::DType::F64,
        "f32" => burn::tensor::DType::F32,
        other => return Outcome::Unsupported(format!("unsupported: dtype {other}")),
    };
    if crate::spd::float_dtype::<B>() != expected_dtype {
        return Outcome::Unsupported(format!(
            "unsupported: a {} case on a {:?} backend",
            case.dtype,
            crate::spd::float_dtype::<B>()
        ));
    }
    match by_rank::<B>(case, &built, device) {
        Ok(error) => Outcome::Replayed {
            error,
            tolerance: case.bound_on(options.root_method, options.backend),
        },
        Err(reason) => Outcome::Unsupported(reason),
    }
}

fn by_rank<B: Backend>(case: &Case, built: &Built, device: &B::Device) -> Result<f64, String> {
    match case.shape.len() {
        1 => Ok(by_optimizer::<B, 1>(case, built, device)),
        2 => Ok(by_optimizer::<B, 2>(case, built, device)),
        3 => Ok(by_optimizer::<B, 3>(case, built, device)),
        4 => Ok(by_optimizer::<B, 4>(case, built, device)),
        5 => Ok(by_optimizer::<B, 5>(case, built, device)),
        6 => Ok(by_optimizer::<B, 6>(case, built, device)),
        r => Err(format!("unsupported: rank {r}")),
    }
}

fn by_optimizer<B: Backend, const D: usize>(case: &Case, built: &Built, device: &B::Device) -> f64 {
    match built {
        Built::Star(c) => trajectory_error::<B, D, _>(case, &c.build(), device),
        Built::Mm(c) => trajectory_error::<B, D, _>(case, &c.build(), device),
        Built::Shampoo(c) => trajectory_error::<B, D, _>(case, &c.build(), device),
    }
}

fn tensor<B: Backend, const D: usize>(values: &[f64], shape: &[usize], device: &B::Device) -> Tensor<B, D> {
    let data = TensorData::new(values.to_vec(), shape.to_vec());
    Tensor::from_data(data, (device, crate::spd::float_dtype::<B>()))
}

/// Runs the trajectory and returns the section 9 error.
fn trajectory_error<B: Backend, const D: usize, O: SimpleOptimizer<B>>(
    case: &Case,
    optim: &O,
    device: &B::Device,
) -> f64 {
    let mut param: Tensor<B, D> = tensor(&case.init, &case.shape, device);
    let mut state = None;
    let mut worst = 0.0f64;
    for (grad, expected) in case.grads.iter().zip(&case.params) {
        let (next, next_state) = optim.step(case.lr, param, tensor(grad, &case.shape, device), state);
        param = next;
        state = next_state;
        assert_eq!(
            param.dtype(),
            crate::spd::float_dtype::<B>(),
            "the parameter kept its dtype"
        );
        let got = param
            .to_data()
            .convert::<f64>()
            .to_vec::<f64>()
            .expect("f64 data");
        let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let diff = got
            .iter()
            .zip(expected)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        let error = if scale > 0.0 { diff / scale } else { diff };
        worst = if error.is_nan() {
            f64::INFINITY
        } else {
            worst.max(error)
        };
    }
    worst
}
