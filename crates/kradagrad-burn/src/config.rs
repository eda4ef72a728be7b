//! The optimizers' configurations, in Burn's idiom: `#[derive(Config)]`
//! structs with documented defaults and nested optional sub-configs, and
//! their validation. Data only: the optimizers are built from them in
//! [`optim`](crate::optim).

use core::fmt;

use burn::config::Config;
use burn::grad_clipping::GradientClippingConfig;

use crate::roots::{NewtonSchedule, RootMethod};

/// What a step does with a gradient that holds NaN or Inf, or whose squared
/// norm overflows the float type (in f32, an entry of `1e30`: its statistics
/// would be infinite).
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum NonFiniteGradients {
    /// Leave the parameter and every state tensor exactly as they were,
    /// decided on the device without a host synchronisation (the step counter
    /// still advances). The default.
    Skip,
    /// Panic with a message naming the parameter's shape. This reads one flag
    /// back to the host on every step.
    Panic,
}

/// An invalid configuration: names the field and the rule it breaks.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The config type, e.g. `KradagradStarConfig`.
    pub config: &'static str,
    /// The offending field (`momentum.momentum` for a field of a sub-config).
    pub field: &'static str,
    /// The rule, and the value that broke it.
    pub rule: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: `{}` {}", self.config, self.field, self.rule)
    }
}

impl std::error::Error for ConfigError {}

/// Whose step size the preconditioned direction borrows (layer-wise
/// grafting, docs/algorithm.md "Shared transforms").
///
/// The direction `D` is rescaled to the Frobenius norm of the graft direction:
/// `D * ||graft|| / (||D|| + 1e-16)`. Before preconditioning starts, and for a
/// parameter that is not preconditioned, the step is the gradient rescaled
/// to that norm (Adam's direction itself for [`Grafting::BiasCorrectedAdam`]).
///
/// ```
/// use kradagrad_burn::{Grafting, KradagradStarConfig};
///
/// // Steps as long as Adam's (with Adam's beta_2 and epsilon); `None` takes
/// // the preconditioner's own step length.
/// let config = KradagradStarConfig::new()
///     .with_grafting(Some(Grafting::BiasCorrectedAdam { beta_2: 0.999, epsilon: 1e-8 }));
/// assert!(config.validate().is_ok());
/// ```
#[derive(Config, Debug, Copy, PartialEq)]
pub enum Grafting {
    /// The norm of the raw gradient (SGD's step size).
    SgdNorm,
    /// The norm of AdaGrad's direction `G / (sqrt(a) + epsilon)`, `a += G*G`.
    AdaGrad {
        /// Added to `sqrt(a)` before dividing (the reference uses `1e-6`).
        epsilon: f64,
    },
    /// The norm of the reference's Adam-style direction
    /// `G / (sqrt(v) + epsilon)`, `v = beta_2 v + G*G` (no bias correction),
    /// with the statistics' `beta_2`: the form the paper's experiments ran.
    Adam {
        /// Added to `sqrt(v)` before dividing (the reference uses `1e-6`).
        epsilon: f64,
    },
    /// Adam's own direction, with its own second-moment decay and epsilon:
    /// `v = beta_2 v + (1 - beta_2) G*G`, graft direction
    /// `G / (sqrt(v / (1 - beta_2^t)) + epsilon)` at step `t` (counted from 1).
    /// Before preconditioning starts (and for a parameter of merged rank 0)
    /// the step takes this direction itself, so that with
    /// [`MomentumForm::FirstMoment`] and Adam's learning rate, betas and
    /// epsilon those steps are Adam's (AdamW's with decoupled weight decay);
    /// afterwards the preconditioned direction takes its norm. `G` is the
    /// first-moment filtered gradient under [`MomentumForm::FirstMoment`];
    /// `v` always sees the raw gradient.
    BiasCorrectedAdam {
        /// Decay of the second moment `v`, in `[0, 1)` (Adam's `beta_2`).
        beta_2: f64,
        /// Added to `sqrt(v_hat)` before dividing (Adam's `epsilon`).
        epsilon: f64,
    },
}

/// How momentum filters the step (docs/algorithm.md, "Shared transforms").
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum MomentumForm {
    /// Heavy ball on the grafted direction `D`: `m = mu m + D`, step along `m`.
    /// The reference's form.
    HeavyBall,
    /// Textbook Nesterov: `m = mu m + D`, step along `D + mu m` (Burn's
    /// `nesterov: true`, without dampening).
    Nesterov,
    /// The reference implementation's Nesterov recurrence
    /// `m = mu^2 m + (1 + mu) D`, step along `m`: use it only to re-run
    /// published experiments.
    ReferenceNesterov,
    /// Adam's first moment of the gradient, bias-corrected, taken before
    /// preconditioning: `m = mu m + (1 - mu) G`, and the step preconditions
    /// and grafts `m / (1 - mu^t)` in place of `G` (the statistics still see
    /// the raw `G`). Together with [`Grafting::BiasCorrectedAdam`] this turns
    /// the steps before preconditioning into Adam's.
    FirstMoment,
}

/// Momentum of the step. Burn's own `MomentumConfig` has a `dampening` and a
/// `nesterov` flag; here the four forms, which exclude each other, are one
/// [`MomentumForm`].
///
/// ```
/// use kradagrad_burn::{KradagradConfig, MomentumConfig, MomentumForm};
///
/// let momentum = MomentumConfig::new().with_momentum(0.95).with_form(MomentumForm::Nesterov);
/// let config = KradagradConfig::new().with_momentum(Some(momentum));
/// assert!(config.validate().is_ok());
/// // Out of range: the error names the field.
/// let bad = KradagradConfig::new().with_momentum(Some(MomentumConfig::new().with_momentum(1.5)));
/// assert!(bad.validate().unwrap_err().to_string().contains("momentum.momentum"));
/// ```
#[derive(Config, Debug, Copy, PartialEq)]
pub struct MomentumConfig {
    /// Momentum `mu` in `[0, 1)`; `0` keeps no buffer. Default: `0.9`.
    #[config(default = 0.9)]
    pub momentum: f64,
    /// How the buffer filters the step. Default: heavy ball.
    #[config(default = "MomentumForm::HeavyBall")]
    pub form: MomentumForm,
}

/// How weight decay enters the update.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum WeightDecayStyle {
    /// The reference's L2 term added after preconditioning and grafting:
    /// `D = D + penalty * W`.
    L2AfterPreconditioning,
    /// Decoupled (AdamW-style): `W = W - lr * penalty * W` before the update.
    Decoupled,
}

/// Weight decay of the step (Burn's `WeightDecayConfig`, with a style).
///
/// ```
/// use kradagrad_burn::{ShampooConfig, WeightDecayConfig, WeightDecayStyle};
///
/// // AdamW-style decay of 1e-4, applied before the update.
/// let decay = WeightDecayConfig::new(1e-4).with_style(WeightDecayStyle::Decoupled);
/// let config = ShampooConfig::new().with_weight_decay(Some(decay));
/// assert!(config.validate().is_ok());
/// ```
#[derive(Config, Debug, Copy, PartialEq)]
pub struct WeightDecayConfig {
    /// The decay factor, non-negative (Burn's name).
    pub penalty: f64,
    /// How the decay enters the update. Default: the reference's L2 term after
    /// preconditioning.
    #[config(default = "WeightDecayStyle::L2AfterPreconditioning")]
    pub style: WeightDecayStyle,
}

/// Root refreshes shared by the replicas of data-parallel training: on a
/// root step each replica computes the roots of its share of the factors (an
/// even share of the work, counted in FLOPs) and the replicas exchange them
/// through burn-collective, so that a refresh costs each about `1 / peers`
/// of the whole. The roots are the ones each replica would compute alone.
///
/// Every replica steps the same parameters with the same (all-reduced)
/// gradients and registers with burn-collective before its first step (see
/// docs/distributed.md). Needs the crate's `collective` feature.
///
/// ```
/// use kradagrad_burn::{KradagradStarConfig, SharedRootsConfig};
///
/// // Replica 1 of 4.
/// let config = KradagradStarConfig::new().with_shared_roots(Some(SharedRootsConfig::new(1, 4)));
/// # #[cfg(feature = "collective")]
/// assert!(config.validate().is_ok());
/// // A peer outside 0..peers: the error names the field.
/// let bad = KradagradStarConfig::new().with_shared_roots(Some(SharedRootsConfig::new(4, 4)));
/// assert!(bad.validate().unwrap_err().to_string().contains("shared_roots"));
/// ```
#[derive(Config, Debug, Copy, PartialEq)]
pub struct SharedRootsConfig {
    /// This replica's burn-collective peer id, in `0..peers`.
    pub peer: u32,
    /// The number of replicas sharing the refreshes (every peer registered
    /// with burn-collective, on all nodes).
    pub peers: u32,
    /// How long a refresh waits for the other replicas before it fails
    /// (a replica that failed or left), in seconds. Default: `300`.
    #[config(default = 300.0)]
    pub timeout_secs: f64,
}

/// The settings every optimizer of this crate runs on, gathered from its
/// config (the front ends' gradient clipping aside).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Options {
    pub matrix_eps: f64,
    pub block_size: Option<usize>,
    pub merge_dims: bool,
    pub beta_2: f64,
    pub statistics_compute_steps: usize,
    pub preconditioning_compute_steps: usize,
    pub start_preconditioning_step: usize,
    pub grafting: Option<Grafting>,
    pub momentum: Option<MomentumConfig>,
    pub weight_decay: Option<WeightDecayConfig>,
    pub root_method: RootMethod,
    pub newton: NewtonSchedule,
    pub non_finite_gradients: NonFiniteGradients,
    pub inverse_exponent_override: Option<u32>,
    pub shared_roots: Option<SharedRootsConfig>,
}

impl Options {
    /// The momentum `mu` (`0` without momentum).
    pub fn momentum_factor(&self) -> f64 {
        self.momentum.map_or(0.0, |m| m.momentum)
    }

    /// Whether the step filters the gradient with Adam's first moment
    /// ([`MomentumForm::FirstMoment`] with a non-zero `momentum`).
    pub fn filters_gradient(&self) -> bool {
        matches!(self.momentum, Some(m) if m.form == MomentumForm::FirstMoment && m.momentum > 0.0)
    }

    /// Checks every rule; the first broken one is reported.
    pub fn validate(&self, config: &'static str) -> Result<(), ConfigError> {
        let fail = |field: &'static str, rule: String| Err(ConfigError { config, field, rule });
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if self.block_size == Some(0) {
            return fail(
                "block_size",
                "must be at least 1 (use None for no blocking), got Some(0)".into(),
            );
        }
        if !positive(self.matrix_eps) {
            return fail(
                "matrix_eps",
                format!("must be positive and finite, got {}", self.matrix_eps),
            );
        }
        if !(self.beta_2 > 0.0 && self.beta_2 <= 1.0) {
            return fail("beta_2", format!("must lie in (0, 1], got {}", self.beta_2));
        }
        if self.statistics_compute_steps == 0 {
            return fail("statistics_compute_steps", "must be at least 1, got 0".into());
        }
        if self.preconditioning_compute_steps == 0 {
            return fail(
                "preconditioning_compute_steps",
                "must be at least 1, got 0".into(),
            );
        }
        match self.grafting {
            Some(Grafting::AdaGrad { epsilon } | Grafting::Adam { epsilon }) if !positive(epsilon) => {
                return fail(
                    "grafting.epsilon",
                    format!("must be positive and finite, got {epsilon}"),
                );
            }
            Some(Grafting::BiasCorrectedAdam { beta_2, epsilon }) => {
                if !(0.0..1.0).contains(&beta_2) {
                    return fail("grafting.beta_2", format!("must lie in [0, 1), got {beta_2}"));
                }
                if !positive(epsilon) {
                    return fail(
                        "grafting.epsilon",
                        format!("must be positive and finite, got {epsilon}"),
                    );
                }
            }
            _ => {}
        }
        if let Some(momentum) = self.momentum {
            if !(momentum.momentum >= 0.0 && momentum.momentum < 1.0) {
                return fail(
                    "momentum.momentum",
                    format!("must lie in [0, 1), got {}", momentum.momentum),
                );
            }
        }
        if let Some(decay) = self.weight_decay {
            if !(decay.penalty.is_finite() && decay.penalty >= 0.0) {
                return fail(
                    "weight_decay.penalty",
                    format!("must be non-negative and finite, got {}", decay.penalty),
                );
            }
        }
        if self.root_method == RootMethod::Newton && self.newton.max_iterations == 0 {
            return fail(
                "newton_iterations",
                "must be at least 1 with RootMethod::Newton, got 0".into(),
            );
        }
        if self.newton.convergence_check == Some(0) {
            return fail(
                "newton_convergence_check",
                "must be at least 1 (None never checks), got Some(0)".into(),
            );
        }
        if self.inverse_exponent_override == Some(0) {
            return fail(
                "inverse_exponent_override",
                "must be at least 1 (None keeps -1/(2k)), got Some(0)".into(),
            );
        }
        if let Some(shared) = self.shared_roots {
            if shared.peers == 0 {
                return fail("shared_roots.peers", "must be at least 1, got 0".into());
            }
            if shared.peer >= shared.peers {
                return fail(
                    "shared_roots.peer",
                    format!("must lie in 0..{} (peers), got {}", shared.peers, shared.peer),
                );
            }
            if !positive(shared.timeout_secs) {
                return fail(
                    "shared_roots.timeout_secs",
                    format!("must be positive and finite, got {}", shared.timeout_secs),
                );
            }
            if !cfg!(feature = "collective") {
                return fail(
                    "shared_roots",
                    "needs kradagrad-burn's `collective` feature (burn-collective exchanges the roots)"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

/// Declares an optimizer config: the fields every optimizer shares, then
/// the optimizer's own (`extra`), with `validate()` and the [`Options`] it
/// runs on. `$grafting` is the default grafting (an expression in a string)
/// and `$grafting_doc` its field's doc.
macro_rules! optimizer_config {
    (
        $(#[$meta:meta])*
        $name:ident,
        grafting = $grafting:literal, grafting_doc = $grafting_doc:literal,
        { $($(#[$fmeta:meta])* pub $field:ident : $ty:ty,)* }
        inverse_exponent_override = |$cfg:ident| $override:expr
    ) => {
        $(#[$meta])*
        #[derive(Config, Debug)]
        pub struct $name {
            /// Damping `eps` of the factors (docs/algorithm.md, "The three
            /// optimizers"). The paper's name. Default: `1e-6`.
            #[config(default = 1e-6)]
            pub matrix_eps: f64,
            /// Largest block side; bigger merged dims are split into blocks of this size
            /// (docs/algorithm.md, "Shapes, blocks and batching"). `None` means no blocking (and no merging).
            /// Default: `Some(128)`.
            #[config(default = "Some(128)")]
            pub block_size: Option<usize>,
            /// Merge adjacent small dims while their product fits in `block_size`. Default: `true`.
            #[config(default = true)]
            pub merge_dims: bool,
            /// Decay of the statistics, in `(0, 1]`; `1` accumulates them forever (Burn's
            /// Adam calls its second-moment decay `beta_2` too). Default: `1.0`.
            #[config(default = 1.0)]
            pub beta_2: f64,
            /// Update the statistics every this many steps. Default: `1`.
            #[config(default = 1)]
            pub statistics_compute_steps: usize,
            /// Recompute the matrix roots every this many steps. Default: `20`.
            #[config(default = 20)]
            pub preconditioning_compute_steps: usize,
            /// First step counter value at which the preconditioner is applied. Default: `1`.
            #[config(default = 1)]
            pub start_preconditioning_step: usize,
            #[doc = $grafting_doc]
            #[config(default = $grafting)]
            pub grafting: Option<Grafting>,
            /// Momentum of the step; `None` keeps no buffer. Default: heavy ball with
            /// `momentum = 0.9`.
            #[config(default = "Some(MomentumConfig::new())")]
            pub momentum: Option<MomentumConfig>,
            /// Weight decay; `None` for none. Default: `None`.
            #[config(default = "None")]
            pub weight_decay: Option<WeightDecayConfig>,
            /// Gradient clipping, applied to every gradient before the step as Burn's
            /// optimizers apply theirs. Default: `None`.
            #[config(default = "None")]
            pub grad_clipping: Option<GradientClippingConfig>,
            /// How matrix roots are computed. Default: device Newton iterations.
            #[config(default = "RootMethod::Newton")]
            pub root_method: RootMethod,
            /// Most Newton iterations per root stage (each matrix stops on its own earlier, on
            /// the device). Fewer run when the precision cannot use more: see
            /// [`newton_iteration_bound`](crate::roots::newton_iteration_bound). Default: `40`.
            #[config(default = 40)]
            pub newton_iterations: usize,
            /// Every this many Newton iterations of a root stage, read one flag back to the
            /// host and end the stage once every matrix in it has converged; `None` never
            /// reads, so every stage runs its full iteration count without a host
            /// synchronisation. The roots are the same either way (a converged matrix is
            /// frozen, so the iterations skipped could not change it); only the work differs.
            /// A read costs nothing on a CPU backend and one device round trip on a GPU,
            /// during root refreshes only. Default: `None`.
            #[config(default = "None")]
            pub newton_convergence_check: Option<usize>,
            /// What a step does with a NaN or Inf gradient, or one whose
            /// squared norm overflows. Default: skip it.
            #[config(default = "NonFiniteGradients::Skip")]
            pub non_finite_gradients: NonFiniteGradients,
            /// Root refreshes shared by data-parallel replicas, each computing
            /// a share (see [`SharedRootsConfig`]); `None` computes every
            /// root. Default: `None`.
            #[config(default = "None")]
            pub shared_roots: Option<SharedRootsConfig>,
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl $name {
            /// Checks the config; the error names the field and the rule.
            pub fn validate(&self) -> Result<(), ConfigError> {
                self.options().validate(stringify!($name))
            }

            /// The settings the optimizers run on.
            pub(crate) fn options(&self) -> Options {
                let $cfg = self;
                Options {
                    matrix_eps: self.matrix_eps,
                    block_size: self.block_size,
                    merge_dims: self.merge_dims,
                    beta_2: self.beta_2,
                    statistics_compute_steps: self.statistics_compute_steps,
                    preconditioning_compute_steps: self.preconditioning_compute_steps,
                    start_preconditioning_step: self.start_preconditioning_step,
                    grafting: self.grafting,
                    momentum: self.momentum,
                    weight_decay: self.weight_decay,
                    root_method: self.root_method,
                    newton: NewtonSchedule {
                        max_iterations: self.newton_iterations,
                        convergence_check: self.newton_convergence_check,
                    },
                    non_finite_gradients: self.non_finite_gradients,
                    inverse_exponent_override: $override,
                    shared_roots: self.shared_roots,
                }
            }
        }
    };
}

optimizer_config! {
    /// Configuration of the KrADagrad* optimizer, with the library's
    /// defaults (see the field docs). Use it like Burn's `AdamConfig`:
    ///
    /// ```
    /// use kradagrad_burn::{KradagradStarConfig, WeightDecayConfig};
    /// let config = KradagradStarConfig::new()
    ///     .with_block_size(Some(256))
    ///     .with_weight_decay(Some(WeightDecayConfig::new(1e-4)));
    /// assert!(config.validate().is_ok());
    /// ```
    KradagradStarConfig,
    grafting = "Some(Grafting::SgdNorm)",
    grafting_doc = "Grafting of the preconditioned direction; `None` uses it as it is. Default: the SGD norm (the reference always grafts KrADagrad*).",
    {}
    inverse_exponent_override = |_config| None
}

optimizer_config! {
    /// Configuration of the KrADagrad optimizer, with the library's defaults
    /// (see the field docs). Use it like Burn's `AdamConfig`:
    ///
    /// ```
    /// use kradagrad_burn::{KradagradConfig, MomentumConfig};
    /// let config = KradagradConfig::new().with_momentum(Some(MomentumConfig::new().with_momentum(0.95)));
    /// assert!(config.validate().is_ok());
    /// ```
    KradagradConfig,
    grafting = "None",
    grafting_doc = "Grafting of the preconditioned direction; `None` uses it as it is. Default: `None` (the reference never grafts KrADagrad).",
    {}
    inverse_exponent_override = |_config| None
}

optimizer_config! {
    /// Configuration of the Shampoo optimizer, with the library's defaults
    /// (see the field docs). Use it like Burn's `AdamConfig`:
    ///
    /// ```
    /// use kradagrad_burn::ShampooConfig;
    /// let config = ShampooConfig::new().with_inverse_exponent_override(Some(2));
    /// assert!(config.validate().is_ok());
    /// ```
    ShampooConfig,
    grafting = "Some(Grafting::SgdNorm)",
    grafting_doc = "Grafting of the preconditioned direction; `None` uses it as it is. Default: the SGD norm.",
    {
        /// Roots `L^(-1/p)` with this `p` instead of `L^(-1/(2k))`. Default: `None`.
        #[config(default = "None")]
        pub inverse_exponent_override: Option<u32>,
    }
    inverse_exponent_override = |config| config.inverse_exponent_override
}
