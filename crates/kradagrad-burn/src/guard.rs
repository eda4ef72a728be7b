//! The guard against unusable gradients, decided on the device (no host read
//! unless the user asked for a panic).
//!
//! A gradient is unusable when it holds a NaN or an Inf, or when its squared
//! norm overflows the float type: its statistics (`G G^T` and the like) and
//! the grafting's norms would then be infinite, and the parameter would
//! follow (an f32 gradient with an entry of `1e30`, finite, did that before
//! the probe summed squares). The test is one element-wise pass and one
//! reduction: `sum(g^2)` is finite exactly when the gradient is usable.

use burn::tensor::{backend::Backend, Bool, DType, Tensor};

use crate::layout::rows_view;
use crate::transforms::squared_norm;

/// A one-element flag: is `grad` unusable, holding a NaN or an Inf, or
/// entries whose squares sum past the float type's largest value (see the
/// module's documentation)?
pub fn unusable_gradient<B: Backend, const D: usize>(grad: &Tensor<B, D>) -> Tensor<B, 1, Bool> {
    probe_is_finite(squared_norm_probe(grad.clone())).bool_not()
}

/// `sum(t^2)`, a one-element tensor that is finite exactly when `t` is
/// usable: NaN when `t` holds a NaN, `+inf` when it holds an Inf or when its
/// squared norm overflows (see [`unusable_gradient`]). Probes of several
/// tensors add up to a probe of all of them (see [`Rollback::from_probes`]),
/// that of a model its whole squared norm.
///
/// A small tensor is summed by one reduction: a rank-1 tensor (a flattened
/// gradient) along its one axis, so that Burn's fusion fuses the probe with
/// the work around it, others as one `[1, numel]` row (see
/// [`as_row`](crate::transforms::as_row)). A large one (see [`rows_view`]),
/// where one reduction would run in a single GPU workgroup, is summed one
/// axis at a time on its `[rows, cols]` view
/// ([`sum_axes`](crate::transforms::sum_axes)).
pub fn squared_norm_probe<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, 1> {
    if D == 1 && rows_view(&t.dims()).is_none() {
        return t.square().sum_dim(0).reshape([1]);
    }
    squared_norm(t).reshape([1])
}

/// `true` (`[1]`) when a [`squared_norm_probe`] says its tensor is usable:
/// `probe < +inf`, which holds exactly for a finite probe (a comparison with
/// NaN is false).
pub fn probe_is_finite<B: Backend>(probe: Tensor<B, 1>) -> Tensor<B, 1, Bool> {
    probe.lower_elem(f64::INFINITY)
}

/// The guard's verdict for one step, applied to every tensor the step wrote:
/// each goes back to its old value where the flag is set.
///
/// Built once per step; [`Rollback::apply`] then costs one comparison and
/// one select per tensor, element-wise work that Burn's fusion can fuse
/// (broadcasting the flag with `expand` would end a fused kernel). In Burn
/// 0.21 the selects of a step's tail still run in a kernel of their own after
/// the fused tail.
#[derive(Debug, Clone)]
pub struct Rollback<B: Backend> {
    /// `+inf` when the step is rolled back, `-inf` when it is kept (`[1]`).
    threshold: Tensor<B, 1>,
}

impl<B: Backend> Rollback<B> {
    /// The verdict of `flag` (see [`unusable_gradient`]), without reading it
    /// on the host, held in float type `dtype` (the gradient's: Burn would
    /// otherwise create it in the device's default float type).
    pub fn new(flag: Tensor<B, 1, Bool>, dtype: DType) -> Self {
        let threshold = Tensor::<B, 1>::full([1], f64::NEG_INFINITY, (&flag.device(), dtype))
            .mask_fill(flag, f64::INFINITY);
        Self { threshold }
    }

    /// The verdict of a [`squared_norm_probe`]: rolled back unless the probe
    /// is finite (see [`probe_is_finite`] and [`Rollback::unless`]).
    pub fn from_probe(probe: Tensor<B, 1>) -> Self {
        let dtype = probe.dtype();
        Self::unless(probe_is_finite(probe), dtype)
    }

    /// The verdict "rolled back unless `kept`" (`kept` from
    /// [`probe_is_finite`]): a masked fill of a fresh constant, a kernel Burn's
    /// fusion can fuse, where `is_nan` would always launch one of its own.
    ///
    /// The two halves can be issued apart: a step may compare the probe
    /// before it cuts the gradient into blocks and fill the constant after
    /// its direction, where the fill ends Burn's fusion stream so that the
    /// step's update fuses; the fill itself then runs in a kernel of its own.
    pub fn unless(kept: Tensor<B, 1, Bool>, dtype: DType) -> Self {
        let threshold = Tensor::<B, 1>::full([1], f64::INFINITY, (&kept.device(), dtype))
            .mask_fill(kept, f64::NEG_INFINITY);
        Self { threshold }
    }

    /// [`from_probe`](Self::from_probe) of the sum of several probes: rolled
    /// back when any tensor probed holds a NaN or an Inf, or when their
    /// squares together overflow. Panics on an empty list.
    pub fn from_probes(probes: Vec<Tensor<B, 1>>) -> Self {
        let mut probes = probes.into_iter();
        let first = probes.next().expect("at least one probe");
        Self::from_probe(probes.fold(first, |sum, p| sum + p))
    }

    /// `old` where the flag is set and `new` otherwise.
    ///
    /// The per-entry mask is `old < threshold`: true everywhere under `+inf`
    /// for a finite `old` (the state before this step, which the guard keeps
    /// finite), false everywhere under `-inf`.
    pub fn apply<const R: usize>(&self, new: Tensor<B, R>, old: Tensor<B, R>) -> Tensor<B, R> {
        let threshold = self.threshold.clone().cast(old.dtype()).reshape([1; R]);
        let mask = old.clone().lower(threshold);
        new.mask_where(mask, old)
    }
}

/// Panics, naming the parameter's shape, when `flag` is set. Reads the flag
/// back to the host: only used under `NonFiniteGradients::Panic`.
#[allow(clippy::disallowed_methods)] // The user asked for a panic, which needs the flag on the host.
pub fn panic_if_set<B: Backend>(flag: Tensor<B, 1, Bool>, shape: &[usize]) {
    let set = flag
        .int()
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .map(|v| v[0] != 0);
    if set.unwrap_or(false) {
        panic!(
            "kradagrad-burn: the gradient of the parameter of shape {shape:?} holds NaN or Inf, \
             or its squared norm overflows"
        );
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // Tests read the flag back.
mod tests {
    use super::*;
    use burn::backend::NdArray;

    fn flagged(values: &[f32]) -> bool {
        let grad = Tensor::<NdArray<f32>, 1>::from_floats(values, &Default::default());
        unusable_gradient(&grad).into_data().to_vec::<bool>().unwrap()[0]
    }

    fn tensor(values: &[f32]) -> Tensor<NdArray<f32>, 2> {
        Tensor::from_floats(
            [[values[0], values[1]], [values[2], values[3]]],
            &Default::default(),
        )
    }

    fn apply(rollback: Rollback<NdArray<f32>>, new: &[f32], old: &[f32]) -> Vec<u32> {
        let values = rollback
            .apply(tensor(new), tensor(old))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        values.into_iter().map(f32::to_bits).collect()
    }

    /// The verdict on a step whose gradient holds `gradient`, taken every
    /// way: from the boolean flag, from probes (of it and of a finite tensor)
    /// and, as the per-parameter step does, from the comparison of its
    /// flattened probe.
    fn verdicts(gradient: [f32; 2]) -> [Rollback<NdArray<f32>>; 3] {
        let grad = Tensor::<NdArray<f32>, 2>::from_floats([gradient], &Default::default());
        let flat = crate::layout::flatten(grad.clone());
        [
            Rollback::new(unusable_gradient(&grad), DType::F32),
            Rollback::from_probes(vec![
                squared_norm_probe(grad.ones_like()),
                squared_norm_probe(grad),
            ]),
            Rollback::unless(probe_is_finite(squared_norm_probe(flat)), DType::F32),
        ]
    }

    #[test]
    fn rollback_keeps_the_old_tensor_exactly_when_flagged() {
        let old = [1.0, -0.0, f32::MAX, -f32::MAX];
        let new = [f32::NAN, f32::INFINITY, 2.0, f32::NEG_INFINITY];
        let stepped = [5.0, -6.0, 7.0, 0.0];
        let flagged_gradients = [
            [1.0, f32::NAN],
            [f32::INFINITY, 0.0],
            [-1.0, f32::NEG_INFINITY],
            [f32::MAX, f32::MAX],
            [1e30, 0.0],
        ];
        for gradient in flagged_gradients {
            for rollback in verdicts(gradient) {
                assert_eq!(apply(rollback.clone(), &new, &old), old.map(f32::to_bits));
                assert_eq!(apply(rollback, &stepped, &old), old.map(f32::to_bits));
            }
        }
        for gradient in [[1.0, -2.0], [0.0, -0.0], [1e19, -1e19]] {
            for rollback in verdicts(gradient) {
                assert_eq!(apply(rollback, &stepped, &old), stepped.map(f32::to_bits));
            }
        }
    }

    #[test]
    fn flags_exactly_the_unusable_gradients() {
        assert!(!flagged(&[1.0, -2.0, 0.0]));
        // Squares up to f32::MAX (3.4e38) in all are usable: 2e38 here.
        assert!(!flagged(&[1e19, -1e19, 0.0]));
        // Squares that overflow, one by one or only in their sum (4e38).
        assert!(flagged(&[f32::MAX, -f32::MAX]));
        assert!(flagged(&[1e30, 1.0]));
        assert!(flagged(&[1e19, -1e19, 1e19, -1e19]));
        assert!(flagged(&[1.0, f32::INFINITY, 2.0]));
        assert!(flagged(&[f32::NEG_INFINITY, 3.0]));
        assert!(flagged(&[f32::INFINITY, f32::NEG_INFINITY]));
        assert!(flagged(&[0.0, f32::NAN]));
    }
}
