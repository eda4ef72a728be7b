//! Options shared by the three optimizers, their validation, and the macro
//! that declares each optimizer's `#[derive(Config)]` struct with them.

use core::fmt;

use burn::config::Config;

use crate::roots::RootMethod;
use crate::transforms::{Grafting, MomentumForm, NesterovStyle, WeightDecayStyle};

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
    /// The offending field.
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

/// The options every optimizer of this crate runs on, gathered from its config.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Options {
    pub matrix_eps: f64,
    pub block_size: Option<usize>,
    pub merge_dims: bool,
    pub beta2: f64,
    pub statistics_compute_steps: usize,
    pub preconditioning_compute_steps: usize,
    pub start_preconditioning_step: usize,
    pub grafting: Grafting,
    pub momentum: f64,
    pub momentum_form: MomentumForm,
    pub nesterov: bool,
    pub nesterov_style: NesterovStyle,
    pub weight_decay: f64,
    pub weight_decay_style: WeightDecayStyle,
    pub diagonal_eps: f64,
    pub root_method: RootMethod,
    pub newton_iterations: usize,
    pub newton_convergence_check: usize,
    pub non_finite_gradients: NonFiniteGradients,
    pub inverse_exponent_override: u32,
}

impl Options {
    /// The Newton iteration limits of a root refresh.
    pub fn newton_schedule(&self) -> crate::roots::NewtonSchedule {
        crate::roots::NewtonSchedule {
            max_iterations: self.newton_iterations,
            convergence_check: self.newton_convergence_check,
        }
    }

    /// Checks every rule; the first broken one is reported.
    pub fn validate(&self, config: &'static str) -> Result<(), ConfigError> {
        let fail = |field: &'static str, rule: String| Err(ConfigError { config, field, rule });
        if self.block_size == Some(0) {
            return fail(
                "block_size",
                "must be at least 1 (use None for no blocking), got Some(0)".into(),
            );
        }
        if !(self.matrix_eps.is_finite() && self.matrix_eps > 0.0) {
            return fail(
                "matrix_eps",
                format!("must be positive and finite, got {}", self.matrix_eps),
            );
        }
        if !(self.beta2 > 0.0 && self.beta2 <= 1.0) {
            return fail("beta2", format!("must lie in (0, 1], got {}", self.beta2));
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
        if !(self.momentum >= 0.0 && self.momentum < 1.0) {
            return fail("momentum", format!("must lie in [0, 1), got {}", self.momentum));
        }
        if self.momentum_form == MomentumForm::FirstMoment && self.nesterov {
            return fail(
                "nesterov",
                "must be false with MomentumForm::FirstMoment (Adam's first moment has no Nesterov form here)"
                    .into(),
            );
        }
        if let Grafting::BiasCorrectedAdam { beta2, epsilon } = self.grafting {
            if !(0.0..1.0).contains(&beta2) {
                return fail(
                    "grafting",
                    format!("BiasCorrectedAdam's beta2 must lie in [0, 1), got {beta2}"),
                );
            }
            if !(epsilon.is_finite() && epsilon > 0.0) {
                return fail(
                    "grafting",
                    format!("BiasCorrectedAdam's epsilon must be positive and finite, got {epsilon}"),
                );
            }
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return fail(
                "weight_decay",
                format!("must be non-negative and finite, got {}", self.weight_decay),
            );
        }
        if !(self.diagonal_eps.is_finite() && self.diagonal_eps > 0.0) {
            return fail(
                "diagonal_eps",
                format!("must be positive and finite, got {}", self.diagonal_eps),
            );
        }
        if self.root_method == RootMethod::Newton && self.newton_iterations == 0 {
            return fail(
                "newton_iterations",
                "must be at least 1 with RootMethod::Newton, got 0".into(),
            );
        }
        Ok(())
    }
}

/// Declares an optimizer config with the shared options. `$grafting` is the
/// default grafting (a string holding a `Grafting` expression); extra fields
/// follow in braces.
macro_rules! preconditioned_config {
    (
        $(#[$meta:meta])*
        $name:ident => $(#[$ometa:meta])* $optim:ident ($variant:expr), grafting = $grafting:literal, grafting_doc = $grafting_doc:literal,
        { $($(#[$fmeta:meta])* pub $field:ident : $ty:ty,)* }
        inverse_exponent_override = |$cfg:ident| $override:expr
    ) => {
        $(#[$meta])*
        #[derive(burn::config::Config, Debug)]
        pub struct $name {
            /// Damping `eps` of the factors (ALGORITHM.md sections 3 to 5). Default: `1e-6`.
            #[config(default = 1e-6)]
            pub matrix_eps: f64,
            /// Largest block side; bigger merged dims are split into blocks of this size
            /// (section 2). `None` means no blocking (and no merging). Default: `Some(128)`.
            #[config(default = "Some(128)")]
            pub block_size: Option<usize>,
            /// Merge adjacent small dims while their product fits in `block_size`. Default: `true`.
            #[config(default = true)]
            pub merge_dims: bool,
            /// Decay of the statistics; `1` accumulates them forever. Must lie in `(0, 1]`.
            /// Default: `1.0`.
            #[config(default = 1.0)]
            pub beta2: f64,
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
            pub grafting: crate::transforms::Grafting,
            /// Momentum `mu` in `[0, 1)`. Default: `0.9`.
            #[config(default = 0.9)]
            pub momentum: f64,
            /// How `momentum` filters the step: heavy ball on the grafted direction (the
            /// reference's), or Adam's bias-corrected first moment of the gradient taken
            /// before preconditioning (for starting from an Adam setup, with
            /// [`Grafting::BiasCorrectedAdam`](crate::transforms::Grafting::BiasCorrectedAdam)).
            /// Default: heavy ball.
            #[config(default = "crate::transforms::MomentumForm::HeavyBall")]
            pub momentum_form: crate::transforms::MomentumForm,
            /// Nesterov momentum (see `nesterov_style`). Default: `false`.
            #[config(default = false)]
            pub nesterov: bool,
            /// Which Nesterov recurrence `nesterov = true` uses. Default: textbook.
            #[config(default = "crate::transforms::NesterovStyle::Textbook")]
            pub nesterov_style: crate::transforms::NesterovStyle,
            /// Weight decay factor (non-negative). Default: `0.0`.
            #[config(default = 0.0)]
            pub weight_decay: f64,
            /// How weight decay enters the update. Default: the reference's L2 term after
            /// preconditioning.
            #[config(default = "crate::transforms::WeightDecayStyle::L2AfterPreconditioning")]
            pub weight_decay_style: crate::transforms::WeightDecayStyle,
            /// `eps` of the AdaGrad and Adam graft directions. Default: `1e-6`.
            #[config(default = 1e-6)]
            pub diagonal_eps: f64,
            /// How matrix roots are computed. Default: device Newton iterations.
            #[config(default = "crate::roots::RootMethod::Newton")]
            pub root_method: crate::roots::RootMethod,
            /// Most Newton iterations per root stage (each matrix stops on its own earlier, on
            /// the device). Fewer run when the precision cannot use more: see
            /// [`newton_iteration_bound`](crate::roots::newton_iteration_bound). Default: `40`.
            #[config(default = 40)]
            pub newton_iterations: usize,
            /// Every this many Newton iterations of a root stage, read one flag back to the
            /// host and end the stage once every matrix in it has converged; `0` never reads,
            /// so every stage runs its full iteration count without a host synchronisation.
            /// The roots are the same either way (a converged matrix is frozen, so the
            /// iterations skipped could not change it); only the work differs. On the
            /// autoencoder of docs/performance.md a stage's matrices converge in 4 to 11 of its
            /// 17 to 27 iterations. A read costs nothing on a CPU backend and one device round
            /// trip on a GPU, during root refreshes only. Default: `0`.
            #[config(default = 0)]
            pub newton_convergence_check: usize,
            /// What a step does with a NaN or Inf gradient, or one whose
            /// squared norm overflows. Default: skip it.
            #[config(default = "crate::config::NonFiniteGradients::Skip")]
            pub non_finite_gradients: crate::config::NonFiniteGradients,
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl $name {
            /// Checks the config; the error names the field and the rule.
            pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
                self.options().validate(stringify!($name))
            }

            pub(crate) fn options(&self) -> crate::config::Options {
                let $cfg = self;
                crate::config::Options {
                    matrix_eps: self.matrix_eps,
                    block_size: self.block_size,
                    merge_dims: self.merge_dims,
                    beta2: self.beta2,
                    statistics_compute_steps: self.statistics_compute_steps,
                    preconditioning_compute_steps: self.preconditioning_compute_steps,
                    start_preconditioning_step: self.start_preconditioning_step,
                    grafting: self.grafting,
                    momentum: self.momentum,
                    momentum_form: self.momentum_form,
                    nesterov: self.nesterov,
                    nesterov_style: self.nesterov_style,
                    weight_decay: self.weight_decay,
                    weight_decay_style: self.weight_decay_style,
                    diagonal_eps: self.diagonal_eps,
                    root_method: self.root_method,
                    newton_iterations: self.newton_iterations,
                    newton_convergence_check: self.newton_convergence_check,
                    non_finite_gradients: self.non_finite_gradients,
                    inverse_exponent_override: $override,
                }
            }

            /// Validates the config and builds the optimizer.
            ///
            /// # Panics
            /// With the [`ConfigError`](crate::ConfigError) message if the config is invalid.
            pub fn build(&self) -> $optim {
                if let Err(error) = self.validate() {
                    panic!("{error}");
                }
                $optim { options: self.options() }
            }

            /// Validates the config and returns an optimizer for a module, used like
            /// `AdamConfig::init()`.
            ///
            /// # Panics
            /// With the [`ConfigError`](crate::ConfigError) message if the config is invalid.
            pub fn init<B, M>(&self) -> burn::optim::adaptor::OptimizerAdaptor<$optim, M, B>
            where
                B: burn::tensor::backend::AutodiffBackend,
                M: burn::module::AutodiffModule<B>,
            {
                burn::optim::adaptor::OptimizerAdaptor::from(self.build())
            }

            /// Initializes one optimizer for a whole module that batches the
            /// factors of equal block shape across all its parameters (see
            /// [`BatchedOptimizer`](crate::optim::BatchedOptimizer)): the
            /// faster front end where every parameter gets a gradient at every
            /// step. Panics with the field's name if the config is invalid.
            pub fn init_batched<B, M>(&self) -> crate::optim::BatchedOptimizer<M, B>
            where
                B: burn::tensor::backend::AutodiffBackend,
                M: burn::module::AutodiffModule<B>,
            {
                if let Err(error) = self.validate() {
                    panic!("{error}");
                }
                crate::optim::BatchedOptimizer::new(self.options(), $variant)
            }
        }

        $(#[$ometa])*
        #[derive(Clone, Debug)]
        pub struct $optim {
            options: crate::config::Options,
        }

        impl<B: burn::tensor::backend::Backend> burn::optim::SimpleOptimizer<B> for $optim {
            type State<const D: usize> = crate::optim::PreconditionerState<B, D>;

            fn step<const D: usize>(
                &self,
                lr: burn::optim::LearningRate,
                tensor: burn::tensor::Tensor<B, D>,
                grad: burn::tensor::Tensor<B, D>,
                state: Option<Self::State<D>>,
            ) -> (burn::tensor::Tensor<B, D>, Option<Self::State<D>>) {
                crate::optim::engine::step(&self.options, $variant, lr, tensor, grad, state)
            }

            fn to_device<const D: usize>(
                state: Self::State<D>,
                device: &B::Device,
            ) -> Self::State<D> {
                state.to_device(device)
            }
        }
    };
}

pub(crate) use preconditioned_config;
