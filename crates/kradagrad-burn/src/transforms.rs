//! Small gradient transformations shared by all three optimizers, in the
//! spirit of optax: grafting, weight decay and momentum (docs/algorithm.md,
//! "Shared transforms"), each a plain function of tensors and its own state,
//! and `update_parameter`, the step's tail that composes them.

use burn::tensor::{backend::Backend, Tensor};

use crate::config::{Grafting, MomentumForm, Options, WeightDecayStyle};

/// Frobenius norm of a whole tensor, as a one-element tensor on its device.
///
/// One reduction of the `[1, numel]` row for a small tensor; a large one (see
/// [`rows_view`](crate::layout::rows_view)) is summed one axis at a time on
/// its `[rows, cols]` view, since a reduction with one output runs in one GPU
/// workgroup.
pub fn norm<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, 1> {
    squared_norm(t).sqrt().reshape([1])
}

/// `sum(t^2)` over the whole tensor, as a `[1, 1]` tensor (unlike
/// [`sum_of_squares`], which keeps the tensor's rank for the grafting): on the
/// `[1, numel]` row (see [`as_row`]) for a small tensor, one reduction; on
/// the [`rows_view`](crate::layout::rows_view) view for a large one, one
/// reduction per axis ([`sum_axes`]), since a reduction with one output runs
/// in one GPU workgroup. Used by [`norm`] and the guard's probe
/// ([`squared_norm_probe`](crate::guard::squared_norm_probe)).
pub(crate) fn squared_norm<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, 2> {
    match crate::layout::rows_view(&t.dims()) {
        Some(rows) => sum_axes(crate::layout::reshape(t, rows).square()),
        None => as_row(t).square().sum_dim(1),
    }
}

/// The tensor as one row, `[1, numel]` (a view of a contiguous tensor).
///
/// Whole-tensor reductions go through this shape: Burn's fusion fuses a sum
/// along an axis with the element-wise work before it when both have the
/// same rank, where a whole-tensor `sum`, or a reshape between the two,
/// launches kernels of their own.
pub fn as_row<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, 2> {
    let numel = t.shape().num_elements();
    t.reshape([1, numel])
}

/// A grafting together with what it needs this step: the norm a
/// preconditioned direction borrows, with the accumulator of the diagonal
/// graftings held inside (so a diagonal grafting without one cannot be built).
#[derive(Debug, Clone)]
pub enum GraftNorm<B: Backend, const D: usize> {
    /// No grafting: the direction is used as it is.
    None,
    /// [`Grafting::SgdNorm`]: the norm of the raw gradient.
    SgdNorm,
    /// [`Grafting::AdaGrad`] or [`Grafting::Adam`]: the norm of
    /// `G / (sqrt(accumulator) + epsilon)`.
    Diagonal {
        /// AdaGrad's `a` or Adam's `v`, already updated with this step's gradient.
        accumulator: Tensor<B, D>,
        /// Added to `sqrt(accumulator)` before dividing.
        epsilon: f64,
    },
    /// [`Grafting::BiasCorrectedAdam`]: the norm of Adam's direction
    /// `G / (sqrt(v * bias_correction) + epsilon)`, which is also the step's
    /// direction where nothing is preconditioned.
    BiasCorrectedAdam {
        /// Adam's `v`, already updated with this step's gradient.
        second_moment: Tensor<B, D>,
        /// `1 / (1 - beta_2^t)`.
        bias_correction: f64,
        /// Added to `sqrt(v_hat)` before dividing.
        epsilon: f64,
    },
}

impl<B: Backend, const D: usize> GraftNorm<B, D> {
    /// The accumulator to keep in the optimizer state (`None` for the
    /// graftings without one).
    pub fn into_accumulator(self) -> Option<Tensor<B, D>> {
        match self {
            GraftNorm::Diagonal { accumulator, .. } => Some(accumulator),
            GraftNorm::BiasCorrectedAdam { second_moment, .. } => Some(second_moment),
            GraftNorm::None | GraftNorm::SgdNorm => None,
        }
    }
}

/// This step's [`GraftNorm`] for `grafting`: the accumulator of a diagonal
/// grafting is updated with `grad` (AdaGrad: `a += G*G`; Adam:
/// `v = beta_2 v + G*G` with the statistics' `beta_2`; bias-corrected Adam:
/// `v = b2 v + (1 - b2) G*G` with its own `b2`; from zero when `accumulator`
/// is `None`). `step` counts this step from 1 (the bias correction's `t`).
pub fn accumulate_graft<B: Backend, const D: usize>(
    grafting: Option<Grafting>,
    accumulator: Option<Tensor<B, D>>,
    grad: &Tensor<B, D>,
    statistics_beta_2: f64,
    step: usize,
) -> GraftNorm<B, D> {
    let squared = || grad.clone().square();
    let (accumulator, epsilon) = match grafting {
        None => return GraftNorm::None,
        Some(Grafting::SgdNorm) => return GraftNorm::SgdNorm,
        Some(Grafting::BiasCorrectedAdam { beta_2, epsilon }) => {
            let fresh = squared().mul_scalar(1.0 - beta_2);
            return GraftNorm::BiasCorrectedAdam {
                second_moment: match accumulator {
                    Some(v) => v.mul_scalar(beta_2) + fresh,
                    None => fresh,
                },
                bias_correction: 1.0 / (1.0 - beta_2.powi(step.min(i32::MAX as usize) as i32)),
                epsilon,
            };
        }
        Some(Grafting::AdaGrad { epsilon }) => match accumulator {
            Some(a) => (a + squared(), epsilon),
            None => (squared(), epsilon),
        },
        Some(Grafting::Adam { epsilon }) => match accumulator {
            Some(v) => (v.mul_scalar(statistics_beta_2) + squared(), epsilon),
            None => (squared(), epsilon),
        },
    };
    GraftNorm::Diagonal { accumulator, epsilon }
}

/// Rescales `direction` to the norm that `norm` names (identity for
/// [`GraftNorm::None`]). `direction` is `None` where nothing was
/// preconditioned: the step then takes `grad` rescaled, or, for
/// [`GraftNorm::BiasCorrectedAdam`], Adam's direction itself.
pub fn graft<B: Backend, const D: usize>(
    norm: &GraftNorm<B, D>,
    direction: Option<Tensor<B, D>>,
    grad: &Tensor<B, D>,
) -> Tensor<B, D> {
    if let GraftNorm::BiasCorrectedAdam {
        second_moment,
        bias_correction,
        epsilon,
    } = norm
    {
        let adam = grad.clone()
            / second_moment
                .clone()
                .mul_scalar(*bias_correction)
                .sqrt()
                .add_scalar(*epsilon);
        return match direction {
            None => adam,
            Some(direction) => {
                let scale =
                    sum_of_squares(adam).sqrt() / sum_of_squares(direction.clone()).sqrt().add_scalar(1e-16);
                direction * scale
            }
        };
    }
    let direction = direction.unwrap_or_else(|| grad.clone());
    // The sums of squares keep the tensor's rank (`[1; D]`), so that their
    // square roots and the rescaling broadcast without a reshape: Burn 0.21's
    // fusion ends a fused kernel at a reshape of a computed value, and
    // reshaping the inputs to `[1, numel]` rows instead fails in Burn 0.21's
    // fusion.
    let graft_squares = match norm {
        GraftNorm::None => return direction,
        GraftNorm::SgdNorm => sum_of_squares(grad.clone()),
        GraftNorm::Diagonal { accumulator, epsilon } => {
            sum_of_squares(grad.clone() / accumulator.clone().sqrt().add_scalar(*epsilon))
        }
        GraftNorm::BiasCorrectedAdam { .. } => unreachable!("returned above"),
    };
    let direction_squares = sum_of_squares(direction.clone());
    let scale = graft_squares.sqrt() / direction_squares.sqrt().add_scalar(1e-16);
    direction * scale
}

/// The sum of the squared entries of a tensor, at the tensor's rank (`[1; D]`;
/// see [`sum_axes`]).
fn sum_of_squares<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    sum_axes(t.square())
}

/// The sum of a tensor's entries at the tensor's rank (`[1; D]`): one
/// reduction per axis longer than 1, innermost first (the first one fuses
/// with the element-wise work before it). Each reduction has as many outputs
/// as the axes it leaves, so on a `[rows, cols]` view the sum is spread over
/// the device (see [`rows_view`](crate::layout::rows_view)); on a flat tensor
/// it is one reduction with one output.
pub fn sum_axes<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    let dims = t.dims();
    (0..D)
        .rev()
        .filter(|&axis| dims[axis] > 1)
        .fold(t, |sum, axis| sum.sum_dim(axis))
}

/// [`MomentumForm::FirstMoment`]: the new buffer `m = mu m + (1 - mu) G`
/// (from zero when `buffer` is `None`) and the bias-corrected first moment
/// `m / (1 - mu^t)` the step uses in place of `G`; `step` is `t`, counting
/// this step from 1.
pub fn first_moment<B: Backend, const D: usize>(
    momentum: f64,
    buffer: Option<Tensor<B, D>>,
    grad: &Tensor<B, D>,
    step: usize,
) -> (Tensor<B, D>, Tensor<B, D>) {
    let fresh = grad.clone().mul_scalar(1.0 - momentum);
    let m = match buffer {
        Some(m) => m.mul_scalar(momentum) + fresh,
        None => fresh,
    };
    let bias_correction = 1.0 / (1.0 - momentum.powi(step.min(i32::MAX as usize) as i32));
    (m.clone(), m.mul_scalar(bias_correction))
}

/// Heavy-ball momentum in one of its forms (docs/algorithm.md,
/// "Shared transforms"). Returns the update to subtract (times the learning
/// rate) and the new buffer (`None` when `momentum == 0`).
/// [`MomentumForm::FirstMoment`] is taken before preconditioning instead
/// ([`first_moment`]); here it passes the direction through, with no buffer.
///
/// The composition of [`decay_momentum`] and [`add_momentum`].
pub fn apply_momentum<B: Backend, const D: usize>(
    momentum: f64,
    form: MomentumForm,
    buffer: Option<Tensor<B, D>>,
    direction: Tensor<B, D>,
) -> (Tensor<B, D>, Option<Tensor<B, D>>) {
    let decayed = decay_momentum(momentum, form, buffer);
    add_momentum(momentum, form, decayed, direction)
}

/// The first half of [`apply_momentum`]: the old buffer times its decay
/// (`mu`, or `mu^2` for [`MomentumForm::ReferenceNesterov`]); `None` when
/// there is no buffer yet or `momentum == 0`.
///
/// Split off so that a step can issue it before the work that produces the
/// direction: Burn's fusion then runs it inside the step's last element-wise
/// kernel rather than in a kernel of its own.
pub fn decay_momentum<B: Backend, const D: usize>(
    momentum: f64,
    form: MomentumForm,
    buffer: Option<Tensor<B, D>>,
) -> Option<Tensor<B, D>> {
    if momentum == 0.0 || form == MomentumForm::FirstMoment {
        return None;
    }
    let factor = match form {
        MomentumForm::ReferenceNesterov => momentum * momentum,
        _ => momentum,
    };
    buffer.map(|m| m.mul_scalar(factor))
}

/// The second half of [`apply_momentum`], given the [`decay_momentum`] of
/// the old buffer: the update and the new buffer.
pub fn add_momentum<B: Backend, const D: usize>(
    momentum: f64,
    form: MomentumForm,
    decayed: Option<Tensor<B, D>>,
    direction: Tensor<B, D>,
) -> (Tensor<B, D>, Option<Tensor<B, D>>) {
    if momentum == 0.0 {
        return (direction, None);
    }
    match form {
        MomentumForm::HeavyBall => {
            let m = add_opt(decayed, direction);
            (m.clone(), Some(m))
        }
        // The first moment's buffer is `first_moment`'s, taken before preconditioning.
        MomentumForm::FirstMoment => (direction, None),
        MomentumForm::Nesterov => {
            let m = add_opt(decayed, direction.clone());
            (direction + m.clone().mul_scalar(momentum), Some(m))
        }
        MomentumForm::ReferenceNesterov => {
            let m = add_opt(decayed, direction.mul_scalar(1.0 + momentum));
            (m.clone(), Some(m))
        }
    }
}

fn add_opt<B: Backend, const D: usize>(a: Option<Tensor<B, D>>, b: Tensor<B, D>) -> Tensor<B, D> {
    match a {
        Some(a) => a + b,
        None => b,
    }
}

/// What the step's tail ([`update_parameter`]) works on, all in one shape.
pub(crate) struct UpdateInputs<B: Backend, const D: usize> {
    /// The parameter.
    pub param: Tensor<B, D>,
    /// The raw gradient.
    pub grad: Tensor<B, D>,
    /// The preconditioned direction; `None` where nothing was preconditioned.
    pub direction: Option<Tensor<B, D>>,
    /// The graft accumulator before the step.
    pub graft: Option<Tensor<B, D>>,
    /// The momentum buffer before the step.
    pub momentum: Option<Tensor<B, D>>,
    /// Under [`Options::filters_gradient`]: the momentum buffer after the
    /// step and the bias-corrected first moment that stands in for the
    /// gradient (see [`first_moment`]).
    pub first_moment: Option<(Tensor<B, D>, Tensor<B, D>)>,
    /// This step, counted from 1 (the bias corrections' `t`).
    pub step: usize,
}

/// What the step's tail leaves: the new parameter and the new graft and
/// momentum buffers.
pub(crate) struct UpdateOutputs<B: Backend, const D: usize> {
    /// The parameter after the step.
    pub param: Tensor<B, D>,
    /// The graft accumulator after the step, if the grafting has one.
    pub graft: Option<Tensor<B, D>>,
    /// The momentum buffer after the step, if momentum is on.
    pub momentum: Option<Tensor<B, D>>,
}

impl<B: Backend, const D: usize> UpdateInputs<B, D> {
    /// The same inputs with every tensor passed through `f` (a reshape).
    pub fn map<const E: usize>(self, f: impl Fn(Tensor<B, D>) -> Tensor<B, E>) -> UpdateInputs<B, E> {
        UpdateInputs {
            param: f(self.param),
            grad: f(self.grad),
            direction: self.direction.map(&f),
            graft: self.graft.map(&f),
            momentum: self.momentum.map(&f),
            first_moment: self.first_moment.map(|(m, filtered)| (f(m), f(filtered))),
            step: self.step,
        }
    }
}

impl<B: Backend, const D: usize> UpdateOutputs<B, D> {
    /// The same outputs with every tensor passed through `f` (a reshape).
    pub fn map<const E: usize>(self, f: impl Fn(Tensor<B, D>) -> Tensor<B, E>) -> UpdateOutputs<B, E> {
        UpdateOutputs {
            param: f(self.param),
            graft: self.graft.map(&f),
            momentum: self.momentum.map(&f),
        }
    }
}

/// The step's tail, what every optimizer does after preconditioning
/// (docs/algorithm.md, "Shared transforms"): graft the direction, add weight
/// decay, filter with momentum, and take the step at learning rate `lr`.
pub(crate) fn update_parameter<B: Backend, const D: usize>(
    options: &Options,
    lr: f64,
    inputs: UpdateInputs<B, D>,
) -> UpdateOutputs<B, D> {
    let UpdateInputs {
        param,
        grad,
        direction,
        graft: graft_buffer,
        momentum: momentum_buffer,
        first_moment,
        step,
    } = inputs;
    let mu = options.momentum_factor();
    let form = options.momentum.map_or(MomentumForm::HeavyBall, |m| m.form);
    // The momentum's decay first: issued after the grafting's norms, it would
    // run in a kernel of its own (see `decay_momentum`).
    let decayed = decay_momentum(mu, form, momentum_buffer);
    let graft_norm = accumulate_graft(options.grafting, graft_buffer, &grad, options.beta_2, step);
    // The graft direction is that of the gradient the step preconditioned:
    // the first moment where there is one.
    let (new_first_moment, source) = match first_moment {
        Some((buffer, filtered)) => (Some(buffer), filtered),
        None => (None, grad),
    };
    let mut direction = graft(&graft_norm, direction, &source);
    let graft_buffer = graft_norm.into_accumulator();
    let mut updated = param.clone();
    if let Some(decay) = options.weight_decay.filter(|d| d.penalty != 0.0) {
        match decay.style {
            WeightDecayStyle::L2AfterPreconditioning => {
                direction = direction + param.mul_scalar(decay.penalty)
            }
            WeightDecayStyle::Decoupled => updated = updated - param.mul_scalar(lr * decay.penalty),
        }
    }
    let (update, momentum_buffer) = match new_first_moment {
        Some(buffer) => (direction, Some(buffer)),
        None => add_momentum(mu, form, decayed, direction),
    };
    UpdateOutputs {
        param: updated - update.mul_scalar(lr),
        graft: graft_buffer,
        momentum: momentum_buffer,
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // Tests read results back.
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray<f64>;

    fn t(v: f64) -> Tensor<B, 1> {
        Tensor::from_data([v], (&Default::default(), burn::tensor::DType::F64))
    }

    fn v(t: Tensor<B, 1>) -> f64 {
        t.into_data().to_vec::<f64>().unwrap()[0]
    }

    #[test]
    fn momentum_recurrences_follow_section_6() {
        let mu = 0.9;
        // Heavy ball: m = mu m + D, step m.
        let (u, m) = apply_momentum(mu, MomentumForm::HeavyBall, Some(t(1.0)), t(2.0));
        assert!((v(u) - 2.9).abs() < 1e-12 && (v(m.unwrap()) - 2.9).abs() < 1e-12);
        // Textbook Nesterov: m = mu m + D, step D + mu m.
        let (u, m) = apply_momentum(mu, MomentumForm::Nesterov, Some(t(1.0)), t(2.0));
        assert!((v(u) - (2.0 + 0.9 * 2.9)).abs() < 1e-12 && (v(m.unwrap()) - 2.9).abs() < 1e-12);
        // The reference's recurrence: m = mu^2 m + (1 + mu) D, step m.
        let (u, m) = apply_momentum(mu, MomentumForm::ReferenceNesterov, Some(t(1.0)), t(2.0));
        let expected = 0.81 + 1.9 * 2.0;
        assert!((v(u) - expected).abs() < 1e-12 && (v(m.unwrap()) - expected).abs() < 1e-12);
        // No momentum: no buffer.
        let (u, m) = apply_momentum(0.0, MomentumForm::Nesterov, None, t(2.0));
        assert_eq!((v(u), m.is_none()), (2.0, true));
    }

    #[test]
    fn norm_of_small_and_large_tensors() {
        // [3, 4]: one row; [600, 500] (over ROWS_VIEW_MIN_ENTRIES): per axis.
        for [rows, cols] in [[3, 4], [600, 500]] {
            let values: Vec<f64> = (0..rows * cols).map(|k| (k as f64 * 0.37).sin()).collect();
            let expected = values.iter().map(|x| x * x).sum::<f64>().sqrt();
            let tensor = Tensor::<B, 2>::from_data(
                burn::tensor::TensorData::new(values, [rows, cols]),
                (&Default::default(), burn::tensor::DType::F64),
            );
            let got = v(norm(tensor));
            assert!(
                (got - expected).abs() <= 1e-12 * expected,
                "{rows}x{cols}: {got} vs {expected}"
            );
        }
    }

    #[test]
    fn grafting_rescales_to_the_graft_norm() {
        let grad: Tensor<B, 1> =
            Tensor::from_data([3.0, 4.0], (&Default::default(), burn::tensor::DType::F64));
        let direction: Tensor<B, 1> =
            Tensor::from_data([0.0, 10.0], (&Default::default(), burn::tensor::DType::F64));
        let sgd = graft(&GraftNorm::SgdNorm, Some(direction.clone()), &grad);
        assert_eq!(sgd.into_data().to_vec::<f64>().unwrap(), vec![0.0, 5.0]);
        let none = graft(&GraftNorm::None, Some(direction.clone()), &grad);
        assert_eq!(none.into_data().to_vec::<f64>().unwrap(), vec![0.0, 10.0]);
        assert!(accumulate_graft(Some(Grafting::SgdNorm), None, &grad, 1.0, 1)
            .into_accumulator()
            .is_none());
        // AdaGrad after one step: a = G^2, graft direction G / (|G| + eps) has norm ~ sqrt(2).
        let ada_norm = accumulate_graft(Some(Grafting::AdaGrad { epsilon: 1e-6 }), None, &grad, 1.0, 1);
        let ada = graft(&ada_norm, Some(direction), &grad);
        let got = ada.into_data().to_vec::<f64>().unwrap()[1];
        assert!((got - 2f64.sqrt()).abs() < 1e-6, "{got}");
        // Adam accumulator decays by beta_2 and adds G^2 without (1 - beta2).
        let acc = ada_norm.into_accumulator();
        let adam =
            accumulate_graft(Some(Grafting::Adam { epsilon: 1e-6 }), acc, &grad, 0.5, 2).into_accumulator();
        assert_eq!(
            adam.unwrap().into_data().to_vec::<f64>().unwrap(),
            vec![4.5 + 9.0, 8.0 + 16.0]
        );
    }
}
