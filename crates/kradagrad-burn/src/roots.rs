//! Matrix p-th roots and inverse p-th roots of batches of SPD matrices
//! (docs/algorithm.md, "Matrix roots").
//!
//! The default method runs coupled Newton iterations (Guo and Higham 2006) on
//! the device with matmuls only, in the backend's float type, and decides when
//! to stop on the device: nothing is read back to the host. With the `eigh`
//! feature, roots can also be taken by a host eigendecomposition (nalgebra),
//! which reproduces the reference implementation's numerics.

use burn::config::Config;
use burn::tensor::{backend::Backend, DType, ElementConversion, Tensor};

use crate::krad::{symmetrize, symmetrize_scaled};
use crate::layout::{stack, unstack};

/// How the optimizers compute matrix roots.
///
/// ```
/// use kradagrad_burn::{KradagradStarConfig, RootMethod};
///
/// // On a GPU: coupled Newton iterations on the device (the default), here
/// // stopping a stage once every matrix has converged (a flag read back
/// // every 2 iterations).
/// let gpu = KradagradStarConfig::new().with_newton_convergence_check(Some(2));
/// assert_eq!(gpu.root_method, RootMethod::Newton);
/// // On a CPU, with the `eigh` feature: a host eigendecomposition per factor.
/// # #[cfg(feature = "eigh")]
/// let cpu = KradagradStarConfig::new().with_root_method(RootMethod::Eigh);
/// ```
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum RootMethod {
    /// Coupled Newton iterations on the device, in the backend's float type
    /// (matmuls only, no host synchronisation). The default.
    Newton,
    /// Host eigendecomposition in the parameter's precision (f32 for f32
    /// backends), as the reference implementation and the paper do. Exists
    /// only with the `eigh` Cargo feature; reads the statistics back to the
    /// host.
    #[cfg(feature = "eigh")]
    Eigh,
    /// Host eigendecomposition in f64 whatever the backend's precision.
    /// Exists only with the `eigh` Cargo feature; reads the statistics back to
    /// the host.
    #[cfg(feature = "eigh")]
    EighF64,
}

/// Which matrix function a root computation evaluates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RootSpec {
    /// The root's order `p` (`A^(1/p)` or `A^(-1/p)`), at least 1.
    pub order: u32,
    /// `true` for the inverse root `A^(-1/p)`.
    pub inverse: bool,
    /// Added to the diagonal before the root (the reference's `1e-8` for KrAD;
    /// for Shampoo with `beta2 < 1`, what keeps its statistic at least `eps / 2`).
    pub shift: f64,
    /// Eigenvalues are clamped below at this value by the eigendecomposition
    /// method (0 for KrAD, `matrix_eps` for Shampoo). The Newton method has no
    /// eigenvalues to clamp; the optimizers only pass it matrices that are
    /// bounded below once `shift` is added (Shampoo's `L + shift I >= eps/2 I`,
    /// with EMA statistics too: see docs/algorithm.md, "EMA statistics").
    pub floor: f64,
}

impl RootSpec {
    /// KrAD's positive root `(S + 1e-8 I)^(1/p)`.
    pub fn positive(order: u32) -> Self {
        Self {
            order,
            inverse: false,
            shift: 1e-8,
            floor: 0.0,
        }
    }

    /// Shampoo's inverse root `L^(-1/p)` with eigenvalues clamped below at `floor`.
    pub fn inverse(order: u32, floor: f64) -> Self {
        Self {
            order,
            inverse: true,
            shift: 0.0,
            floor,
        }
    }
}

/// How many Newton iterations a root stage may run, and whether it may end
/// early. A plain `usize` converts to the fixed schedule with that cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewtonSchedule {
    /// At most this many iterations per stage ([`newton_iteration_bound`] may
    /// allow fewer).
    pub max_iterations: usize,
    /// Every this many iterations, read back whether every matrix of the
    /// stage has converged (frozen), and end the stage if so. `None`: never
    /// read, run the full count with no host synchronisation. The result is
    /// the same either way: iterations on frozen matrices change nothing.
    pub convergence_check: Option<usize>,
}

impl NewtonSchedule {
    /// The fixed schedule: up to `max_iterations` per stage, nothing read back.
    pub fn fixed(max_iterations: usize) -> Self {
        Self {
            max_iterations,
            convergence_check: None,
        }
    }

    /// The same cap, with a convergence check every `every` iterations (at
    /// least 1).
    pub fn with_convergence_check(self, every: usize) -> Self {
        Self {
            convergence_check: Some(every.max(1)),
            ..self
        }
    }
}

impl From<usize> for NewtonSchedule {
    fn from(max_iterations: usize) -> Self {
        Self::fixed(max_iterations)
    }
}

/// Computes the root described by `spec` of every matrix in `a` (`[n, d, d]`,
/// symmetric positive definite).
///
/// `schedule` bounds the Newton iterations (a `usize` is the fixed cap; see
/// [`NewtonSchedule`]); the eigendecomposition methods ignore it.
pub fn matrix_root<B: Backend>(
    a: Tensor<B, 3>,
    spec: RootSpec,
    method: RootMethod,
    schedule: impl Into<NewtonSchedule>,
) -> Tensor<B, 3> {
    match method {
        RootMethod::Newton => staged_newton_root(a, spec, schedule).root,
        #[cfg(feature = "eigh")]
        RootMethod::Eigh | RootMethod::EighF64 => eigh_root(a, spec, method == RootMethod::EighF64),
    }
}

/// [`matrix_root`] of several batches at once, each with its own spec (the
/// roots in the inputs' order). With the Newton method the stages that
/// batches of one size share run once for all of them (see
/// [`staged_newton_roots`]); the eigendecomposition methods take one batch at
/// a time.
pub fn matrix_roots<B: Backend>(
    inputs: Vec<(Tensor<B, 3>, RootSpec)>,
    method: RootMethod,
    schedule: impl Into<NewtonSchedule>,
) -> Vec<Tensor<B, 3>> {
    match method {
        RootMethod::Newton => staged_newton_roots(inputs, schedule),
        #[cfg(feature = "eigh")]
        RootMethod::Eigh | RootMethod::EighF64 => inputs
            .into_iter()
            .map(|(a, spec)| eigh_root(a, spec, method == RootMethod::EighF64))
            .collect(),
    }
}

/// A batch of identity matrices `[n, d, d]` of float type `dtype`.
///
/// The dtype is explicit because Burn 0.21 creates tensors in the *device's*
/// default float type, which one process shares between `NdArray<f32>` and
/// `NdArray<f64>` (the first backend used wins): the optimizers always follow
/// the parameter's own dtype instead.
pub fn batch_identity<B: Backend>(n: usize, d: usize, device: &B::Device, dtype: DType) -> Tensor<B, 3> {
    Tensor::<B, 2>::eye(d, device)
        .cast(dtype)
        .unsqueeze::<3>()
        .repeat_dim(0, n)
}

/// `t^e` by repeated squaring (`e >= 0`; `t^0` is the identity).
fn matrix_power<B: Backend>(t: Tensor<B, 3>, e: u32) -> Tensor<B, 3> {
    let [n, d, _] = t.dims();
    let mut result: Option<Tensor<B, 3>> = None;
    let mut base = t;
    let mut e = e;
    while e > 0 {
        if e & 1 == 1 {
            result = Some(match result {
                None => base.clone(),
                Some(r) => r.matmul(base.clone()),
            });
        }
        e >>= 1;
        if e > 0 {
            base = base.clone().matmul(base);
        }
    }
    result.unwrap_or_else(|| batch_identity(n, d, &base.device(), base.dtype()))
}

/// Newton roots in stages: a positive root `A^(1/p)` with `p = 2^s q` is
/// computed as `s` square roots followed by the `q`-th root of a matrix whose
/// condition number is `cond(A)^(1/2^s)`. Inverse roots run in one stage.
///
/// For positive roots in fp32 the stages are more accurate and, above all,
/// free of the occasional bad outlier of one order-`p` iteration: there the
/// components along the smallest eigenvalues must grow from `~lambda_min` to
/// `lambda_min^(1/p)`, and round-off leaked into them early grows with them.
/// For inverse roots the stages measured worse (the final inverse root then
/// amplifies the first stage's error), so they are not used there. See
/// docs/algorithm.md for the measurements.
pub fn staged_newton_root<B: Backend>(
    a: Tensor<B, 3>,
    spec: RootSpec,
    schedule: impl Into<NewtonSchedule>,
) -> NewtonRoot<B> {
    let schedule = schedule.into();
    let mut root = a;
    let mut iterations: Option<Tensor<B, 1>> = None;
    let mut residual = None;
    let mut iterations_run = 0;
    for (stage_spec, condition) in stage_specs(spec, round_off(&root)) {
        let stage = bounded_newton_root(root, stage_spec, schedule, condition);
        root = stage.root;
        iterations = Some(iterations.map_or(stage.iterations.clone(), |t| t + stage.iterations));
        residual = Some(stage.residual);
        iterations_run += stage.iterations_run;
    }
    NewtonRoot {
        root,
        iterations: iterations.expect("at least one stage"),
        residual: residual.expect("at least one stage"),
        iterations_run,
    }
}

/// [`staged_newton_root`] of several batches at once, each with its own
/// spec (the roots only, in the inputs' order).
///
/// A stage that batches of one matrix size and float type share (the same
/// [`stage_specs`] entry) runs once for all of them, stacked along the batch
/// axis: KrADagrad*'s fourth roots (two square roots) and its square roots
/// of one size, for instance, share their first stage. Every matrix still
/// converges and freezes on its own, so the roots are those of
/// [`staged_newton_root`] run batch by batch.
pub fn staged_newton_roots<B: Backend>(
    inputs: Vec<(Tensor<B, 3>, RootSpec)>,
    schedule: impl Into<NewtonSchedule>,
) -> Vec<Tensor<B, 3>> {
    let schedule = schedule.into();
    let mut jobs: Vec<StagedJob<B>> = inputs
        .into_iter()
        .map(|(a, spec)| StagedJob {
            stages: stage_specs(spec, round_off(&a)),
            matrices: a,
            next: 0,
        })
        .collect();
    while let Some(due) = jobs.iter().find_map(StagedJob::due) {
        let members: Vec<usize> = (0..jobs.len()).filter(|&j| jobs[j].due() == Some(due)).collect();
        let counts: Vec<usize> = members.iter().map(|&j| jobs[j].matrices.dims()[0]).collect();
        let stacked = stack(members.iter().map(|&j| jobs[j].matrices.clone()).collect());
        let (_, _, (stage_spec, condition)) = due;
        let roots = bounded_newton_root(stacked, stage_spec, schedule, condition).root;
        for (&j, root) in members.iter().zip(unstack(roots, &counts)) {
            jobs[j].matrices = root;
            jobs[j].next += 1;
        }
    }
    jobs.into_iter().map(|job| job.matrices).collect()
}

/// One input of [`staged_newton_roots`] on its way through its stages.
struct StagedJob<B: Backend> {
    /// The input after the stages run so far.
    matrices: Tensor<B, 3>,
    /// Its [`stage_specs`].
    stages: Vec<(RootSpec, f64)>,
    /// The next stage to run.
    next: usize,
}

impl<B: Backend> StagedJob<B> {
    /// What the next stage batches on (matrix size, float type, stage), or
    /// `None` when every stage has run.
    fn due(&self) -> Option<(usize, DType, (RootSpec, f64))> {
        let stage = *self.stages.get(self.next)?;
        Some((self.matrices.dims()[1], self.matrices.dtype(), stage))
    }
}

/// The Newton iterations [`staged_newton_root`] runs for `spec` on input
/// stored with unit round-off `round_off`: per stage of [`newton_stages`],
/// its own spec (the shift applies to the input, the inverse and the floor
/// to the last stage) and the condition bound of its input.
pub fn stage_specs(spec: RootSpec, round_off: f64) -> Vec<(RootSpec, f64)> {
    let stages = newton_stages(spec, round_off);
    let last = stages.len() - 1;
    stages
        .into_iter()
        .enumerate()
        .map(|(k, (order, condition))| {
            let stage_spec = RootSpec {
                order,
                inverse: k == last && spec.inverse,
                shift: if k == 0 { spec.shift } else { 0.0 },
                floor: if k == last { spec.floor } else { 0.0 },
            };
            (stage_spec, condition)
        })
        .collect()
}

/// The stages [`staged_newton_root`] runs for `spec` on input stored with
/// unit round-off `round_off`: `(order, condition)` per stage, where
/// `condition` bounds the condition number of that stage's input (the
/// largest the input can resolve, `1 / round_off`; each square root halves
/// its log) and sets the stage's [`newton_iteration_bound`].
pub fn newton_stages(spec: RootSpec, round_off: f64) -> Vec<(u32, f64)> {
    let mut order = spec.order.max(1);
    let mut condition = 1.0 / round_off;
    let mut stages = Vec::new();
    while !spec.inverse && order.is_multiple_of(2) && order > 2 {
        stages.push((2, condition));
        condition = condition.sqrt();
        order /= 2;
    }
    stages.push((order, condition));
    stages
}

/// Coupled Newton iteration for `A^(-1/p)` or `A^(1/p)`.
///
/// With `M_0 = z A` (`z = (p+1) / (2 lambda)`, `lambda` the Wolkowicz-Styan
/// upper bound on the largest eigenvalue, at most `||A||_F`, so every
/// eigenvalue of `M_0` lies in `(0, (p+1)/2]`) and `T_k = ((p+1) I - M_k) / p`:
/// `M_{k+1} = T_k^p M_k -> I` and, for the inverse root,
/// `X_{k+1} = X_k T_k -> A^(-1/p)` from `X_0 = z^(1/p) I`. For the positive root
/// the iterate `Y_k = A X_k^(p-1)` obeys `Y_{k+1} = Y_k T_k^(p-1) -> A^(1/p)` from
/// `Y_0 = z^((p-1)/p) A`, still inversion-free.
///
/// Each iterate is symmetrised. Stopping is decided per matrix on the device:
/// a matrix is frozen once the residual `||M - I||_F` grows by more than 20%
/// (the new iterate is discarded: past the fp32 round-off floor the plain
/// iteration diverges), once it stops halving below 0.1 (it has
/// reached its round-off floor), or once it falls below the precision's
/// round-off level. Frozen matrices still ride along in the batched matmuls.
/// With the fixed schedule the cost is fixed and nothing is read back: the
/// number of iterations run is the schedule's `max_iterations` or
/// [`newton_iteration_bound`] for the input's precision, whichever is
/// smaller. A schedule with a convergence check ends sooner once every matrix
/// is frozen, with the same result.
pub fn newton_root<B: Backend>(
    a: Tensor<B, 3>,
    spec: RootSpec,
    schedule: impl Into<NewtonSchedule>,
) -> NewtonRoot<B> {
    let condition = 1.0 / round_off(&a);
    bounded_newton_root(a, spec, schedule.into(), condition)
}

/// Iterations the coupled Newton iteration for a `p`-th root needs, at most,
/// to bring every eigenvalue of `M` to within `tolerance` of 1 for a `d x d`
/// SPD input whose condition number is at most `condition`.
///
/// It is computed on the host by running the iteration's scalar map,
/// `mu <- mu ((p + 1 - mu) / p)^p`, from the two extreme starting
/// eigenvalues: `(p + 1) / 2` for the largest (when the start scale equals
/// it) and `(p + 1) / (2 sqrt(d) condition)` for the smallest (the scale is at
/// most `||A||_F <= sqrt(d) lambda_max`). Small eigenvalues grow by
/// `((p + 1) / p)^p` (2.25 for a square root) per iteration before the
/// quadratic phase, so the bound is about
/// `log(sqrt(d) condition) / log(((p + 1) / p)^p)` plus five. The
/// optimizers take `condition` as the reciprocal round-off of the float
/// type (eigenvalues below it are noise in the stored statistic): 27
/// iterations for an f32 square root at `d = 250` instead of a fixed cap.
pub fn newton_iteration_bound(order: u32, d: usize, condition: f64, tolerance: f64) -> usize {
    let p = order.max(1) as f64;
    let start = (p + 1.0) / 2.0;
    let smallest = start / ((d.max(1) as f64).sqrt() * condition.max(1.0));
    let tolerance = tolerance.max(4.0 * f64::EPSILON);
    [smallest, start]
        .into_iter()
        .map(|mut mu: f64| {
            let mut k = 0;
            while (mu - 1.0).abs() > tolerance && k < 10_000 {
                mu *= ((p + 1.0 - mu) / p).powf(p);
                k += 1;
            }
            k
        })
        .max()
        .unwrap_or(0)
}

/// [`newton_root`] for an input of condition number at most `condition`.
fn bounded_newton_root<B: Backend>(
    a: Tensor<B, 3>,
    spec: RootSpec,
    schedule: NewtonSchedule,
    condition: f64,
) -> NewtonRoot<B> {
    let [n, d, _] = a.dims();
    let device = a.device();
    let p = spec.order.max(1);
    let pf = p as f64;
    let identity = batch_identity::<B>(n, d, &device, a.dtype());
    let a = if spec.shift != 0.0 {
        symmetrize(a) + identity.clone().mul_scalar(spec.shift)
    } else {
        symmetrize(a)
    };
    // Scale so that every eigenvalue of M_0 = s^p A lies in (0, (p+1)/2]:
    // s ~ z^(1/p) with z = (p+1) / (2 lambda), lambda an upper bound on A's
    // largest eigenvalue (`largest_eigenvalue_bound`: close to it for a
    // narrow spectrum, so a near-scalar statistic starts next to
    // convergence). Only M_0 = X_0^p A must hold exactly, not the value of s,
    // so s is taken in f32 (GPU shading languages have no f64
    // `pow`/`exp`/`log`) and its powers by multiplication. The clamp guards
    // against an all-zero matrix (z would be infinite): its root is 0
    // (positive) and undefined (inverse); the optimizers never pass one.
    let largest = largest_eigenvalue_bound(a.clone(), identity.clone()).clamp_min(f64::MIN_POSITIVE.sqrt());
    let z = largest.recip().mul_scalar((pf + 1.0) / 2.0); // [n, 1, 1]
    let s = scalar_root(z, p);
    let s_pm1 = scalar_power(s.clone(), p - 1);
    let mut m = a.clone() * (s_pm1.clone() * s.clone());
    let mut x = if spec.inverse {
        identity.clone() * s
    } else {
        a * s_pm1
    };
    let tolerance = round_off(&m) * (d as f64).sqrt();
    let mut error = crate::krad::frobenius_norm(m.clone() - identity.clone());
    // The stopping state is kept as float 0/1 flags on `[n, 1, 1]` tensors and
    // updated with comparisons, `mask_fill` and `mask_where` only: Burn's
    // fusion fuses those, not boolean `and`/`or`/`not`, so the bookkeeping of
    // an iteration runs in a few fused kernels instead of one per operation.
    let mut frozen = error
        .zeros_like()
        .mask_fill(error.clone().lower_equal_elem(tolerance), 1.0);
    let mut iterations = error.zeros_like();
    let bound = newton_iteration_bound(p, d, condition, round_off(&m));
    // T is carried unscaled, as p T = (p+1) I - M (one pass instead of three),
    // and its powers of p are divided out in the symmetrisation's factor 1/2
    // (exact for the power-of-two orders the optimizers use).
    let shifted_identity = identity.clone().mul_scalar(pf + 1.0);
    let zero_matrices = identity.zeros_like();
    let iteration_count = schedule.max_iterations.min(bound);
    let mut iterations_run = iteration_count;
    for k in 1..=iteration_count {
        let t = shifted_identity.clone() - m.clone();
        let t_pm1 = matrix_power(t.clone(), p - 1);
        // The order below is the one Burn's fusion turns into the fewest
        // kernels on wgpu: the products first, then M's residual and the
        // stopping flags, then X's symmetrisation, which fuses with the two
        // freezing selects.
        let (x_product, x_scale) = if spec.inverse {
            (x.clone().matmul(t.clone()), 1.0 / pf)
        } else {
            (x.clone().matmul(t_pm1.clone()), pf.powi(1 - p as i32))
        };
        let m_next = symmetrize_scaled(t_pm1.matmul(t.clone()).matmul(m.clone()), pf.powi(-(p as i32)));
        let error_next = crate::krad::frobenius_norm(m_next.clone() - identity.clone());
        // Freeze a matrix whose residual grows: it is past its round-off floor.
        let diverging = error_next.clone().greater(error.clone().mul_scalar(1.2));
        frozen = frozen.mask_fill(diverging, 1.0);
        iterations = iterations - frozen.clone() + 1.0;
        // The frozen flag per matrix entry, by a broadcasting comparison (an
        // `expand` would end the fused kernel).
        let keep_matrix = zero_matrices.clone().lower(frozen.clone());
        // Converged: in the quadratic phase (residual below 0.1) the residual
        // should shrink many times per iteration; once it no longer halves, it
        // sits on the round-off floor and further iterations only add noise.
        // `stalled` = (not halving) and (below 0.1), as a masked fill.
        let not_halving = error_next.clone().greater(error.clone().mul_scalar(0.5));
        let small = error_next.clone().lower_elem(0.1);
        error = error_next.mask_where(frozen.clone().greater_elem(0.5), error);
        let frozen_or_small = frozen.clone().mask_fill(small, 1.0);
        frozen = frozen
            .mask_where(not_halving, frozen_or_small)
            .mask_fill(error.clone().lower_equal_elem(tolerance), 1.0);
        let x_next = symmetrize_scaled(x_product, x_scale);
        x = x_next.mask_where(keep_matrix.clone(), x);
        m = m_next.mask_where(keep_matrix, m);
        // Optional early end (the only host read of a root computation): once
        // every matrix is frozen, the remaining iterations are no-ops.
        let every = schedule.convergence_check;
        if every.is_some_and(|every| k.is_multiple_of(every))
            && k < iteration_count
            && all_frozen(frozen.clone())
        {
            iterations_run = k;
            break;
        }
    }
    NewtonRoot {
        root: x,
        iterations: iterations.reshape([n]),
        residual: error.reshape([n]),
        iterations_run,
    }
}

/// An upper bound on the largest eigenvalue of each symmetric matrix in `a`
/// (`identity` of its shape), `[n, 1, 1]`: the Wolkowicz-Styan bound
/// `m + sqrt((d - 1) (||A||_F^2 / d - m^2))` with `m = tr(A) / d`, never above
/// `||A||_F` (the scale the iteration used before) and equal to the eigenvalue
/// for a multiple of the identity. In floating point the difference under the
/// root can lose up to a few `u ||A||_F^2` (`u` the unit round-off) and
/// understate the spread, so `4 u ||A||_F^2` is added to it; the result is
/// capped at `||A||_F`.
fn largest_eigenvalue_bound<B: Backend>(a: Tensor<B, 3>, identity: Tensor<B, 3>) -> Tensor<B, 3> {
    let d = a.dims()[1] as f64;
    let u = round_off(&a);
    let norm = crate::krad::frobenius_norm(a.clone());
    let norm_sq = norm.clone().square();
    let mean = crate::krad::trace_of_product(a, identity).div_scalar(d);
    let spread_sq = (norm_sq.clone().div_scalar(d) - mean.clone().square())
        .clamp_min(0.0)
        .mul_scalar(d - 1.0)
        + norm_sq.mul_scalar(4.0 * u);
    (mean + spread_sq.sqrt()).min_pair(norm)
}

/// Whether every `[n, 1, 1]` freeze flag is set: reads one scalar back to the host.
#[allow(clippy::disallowed_methods)] // Only with a convergence check, which the user opts into.
fn all_frozen<B: Backend>(frozen: Tensor<B, 3>) -> bool {
    frozen.min().into_scalar().elem::<f64>() > 0.5
}

/// The result of [`newton_root`], everything still on the device.
#[derive(Debug, Clone)]
pub struct NewtonRoot<B: Backend> {
    /// The roots, `[n, d, d]`.
    pub root: Tensor<B, 3>,
    /// Iterations each matrix took before it froze, `[n]`.
    pub iterations: Tensor<B, 1>,
    /// Final residual `||M - I||_F` of each matrix, `[n]`.
    pub residual: Tensor<B, 1>,
    /// Iterations the batch ran, all stages (known on the host: the loop
    /// count; below the bound only when a convergence check ended a stage).
    pub iterations_run: usize,
}

/// `t^(1/p)` for positive scalars `t` (`[n, 1, 1]`), good to f32 precision in
/// any float type: computed in f32, where every backend has `powf` (the
/// Vulkan and WGSL shading languages have no f64 `pow`, `exp` or `log`). `t`
/// is clamped to the f32 range, so matrices with norms beyond about `1e38` or
/// below `1e-38` converge slowly or not at all.
fn scalar_root<B: Backend>(t: Tensor<B, 3>, p: u32) -> Tensor<B, 3> {
    let dtype = t.dtype();
    let t32 = t
        .cast(burn::tensor::FloatDType::F32)
        .clamp(f32::MIN_POSITIVE as f64, f32::MAX as f64);
    t32.powf_scalar(1.0 / p as f64).cast(dtype)
}

/// `t^e` for scalars `t` (`[n, 1, 1]`) by repeated multiplication (`t^0 = 1`).
fn scalar_power<B: Backend>(t: Tensor<B, 3>, e: u32) -> Tensor<B, 3> {
    (0..e).fold(t.ones_like(), |acc, _| acc * t.clone())
}

/// Unit round-off of the tensor's float type.
fn round_off<B: Backend>(t: &Tensor<B, 3>) -> f64 {
    match t.dtype() {
        DType::F64 => f64::EPSILON,
        DType::F16 | DType::BF16 => 1e-3,
        _ => f32::EPSILON as f64,
    }
}

#[cfg(feature = "eigh")]
#[allow(clippy::disallowed_methods)] // The host method reads the matrices back by design.
fn eigh_root<B: Backend>(a: Tensor<B, 3>, spec: RootSpec, force_f64: bool) -> Tensor<B, 3> {
    use burn::tensor::TensorData;
    use rayon::prelude::*;
    let [n, d, _] = a.dims();
    let device = a.device();
    let dtype = a.dtype();
    let in_f64 = force_f64 || dtype == DType::F64;
    let data = a.into_data();
    let exponent = if spec.inverse {
        -1.0 / spec.order as f64
    } else {
        1.0 / spec.order as f64
    };
    // One matrix per task, spread over the host's cores.
    let values: Vec<f64> = if in_f64 {
        let flat = data.convert::<f64>().to_vec::<f64>().expect("f64 data");
        let roots: Vec<Vec<f64>> = flat
            .par_chunks(d * d)
            .map(|m| eigh_one::<f64>(m, d, spec, exponent))
            .collect();
        roots.concat()
    } else {
        let flat = data.convert::<f32>().to_vec::<f32>().expect("f32 data");
        let roots: Vec<Vec<f32>> = flat
            .par_chunks(d * d)
            .map(|m| eigh_one::<f32>(m, d, spec, exponent))
            .collect();
        roots.concat().into_iter().map(|v| v as f64).collect()
    };
    Tensor::from_data(TensorData::new(values, [n, d, d]), (&device, dtype))
}

/// Root of one matrix by eigendecomposition in precision `T`: eigenvalues of
/// `A + shift I`, clamped below at `floor`, raised to `exponent`.
#[cfg(feature = "eigh")]
fn eigh_one<T>(m: &[T], d: usize, spec: RootSpec, exponent: f64) -> Vec<T>
where
    T: nalgebra::RealField + Copy,
{
    use nalgebra::DMatrix;
    let mut a = DMatrix::<T>::from_row_slice(d, d, m);
    a = (a.clone() + a.transpose()) * nalgebra::convert::<f64, T>(0.5);
    for i in 0..d {
        a[(i, i)] += nalgebra::convert::<f64, T>(spec.shift);
    }
    let eig = a.symmetric_eigen();
    let floor = nalgebra::convert::<f64, T>(spec.floor);
    let powered = eig.eigenvalues.map(|e| {
        let e = if e < floor { floor } else { e };
        if e <= T::zero() {
            T::zero()
        } else {
            e.powf(nalgebra::convert::<f64, T>(exponent))
        }
    });
    let v = &eig.eigenvectors;
    let r = v * DMatrix::from_diagonal(&powered) * v.transpose();
    // Row-major out.
    let mut out = Vec::with_capacity(d * d);
    for i in 0..d {
        for j in 0..d {
            out.push(r[(i, j)]);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // Tests read results back.
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::TensorData;

    type B = NdArray<f64>;

    #[test]
    fn the_iteration_bound_grows_with_the_condition_number() {
        let eps32 = f32::EPSILON as f64;
        // An f32 square root of a 250 x 250 factor: small eigenvalues grow by
        // ((p + 1) / p)^p = 2.25 per iteration from 1 / (sqrt(d) condition),
        // then a few quadratic iterations finish (the doc's estimate, plus five).
        let estimate = ((250f64).sqrt() / eps32).ln() / 2.25f64.ln() + 5.0;
        let bound = newton_iteration_bound(2, 250, 1.0 / eps32, eps32) as f64;
        assert!(
            (bound - estimate).abs() <= 2.0,
            "bound {bound}, estimate {estimate}"
        );
        let bound = |condition| newton_iteration_bound(2, 16, condition, 1e-12);
        assert!(bound(1e2) < bound(1e4) && bound(1e4) < bound(1e8));
        // Higher orders grow small eigenvalues faster.
        assert!(newton_iteration_bound(4, 16, 1e6, 1e-12) < newton_iteration_bound(2, 16, 1e6, 1e-12));
    }

    #[test]
    fn a_matrix_within_the_condition_bound_converges_within_the_iteration_bound() {
        // Eigenvalues log-spaced over six decades in a rotated basis (so that
        // ||A||_F is not the largest eigenvalue), run with no practical cap.
        let d = 16;
        let q = {
            let a = Tensor::<B, 2>::from_data(
                TensorData::new(
                    (0..d * d).map(|k| ((k * 7 + 3) as f64).sin()).collect::<Vec<_>>(),
                    [d, d],
                ),
                (&Default::default(), DType::F64),
            );
            // Symmetric orthogonal: I - 2 v v^T / |v|^2 from the first column.
            let v = a.narrow(1, 0, 1);
            let vv = v.clone().matmul(v.clone().transpose());
            let norm2 = v.square().sum().into_scalar();
            Tensor::<B, 2>::eye(d, &Default::default()).cast(DType::F64) - vv.mul_scalar(2.0 / norm2)
        };
        let eigenvalues: Vec<f64> = (0..d)
            .map(|i| 10f64.powf(-6.0 * i as f64 / (d - 1) as f64))
            .collect();
        let diagonal = Tensor::<B, 1>::from_data(
            TensorData::new(eigenvalues.clone(), [d]),
            (&Default::default(), DType::F64),
        );
        let a = (q.clone() * diagonal.clone().unsqueeze::<2>())
            .matmul(q.clone())
            .unsqueeze::<3>();
        let square_root = RootSpec {
            order: 2,
            inverse: false,
            shift: 0.0,
            floor: 0.0,
        };
        let root = bounded_newton_root(a, square_root, NewtonSchedule::fixed(10_000), 1e30);
        let taken = root.iterations.into_scalar();
        let bound = newton_iteration_bound(2, d, 1e6, f64::EPSILON);
        assert!(taken <= bound as f64, "took {taken} iterations, bound {bound}");
        let expected = (q.clone() * diagonal.sqrt().unsqueeze::<2>()).matmul(q);
        let error = (root.root.squeeze_dim::<2>(0) - expected)
            .abs()
            .max()
            .into_scalar();
        assert!(error < 1e-10, "error {error}");
    }
}
