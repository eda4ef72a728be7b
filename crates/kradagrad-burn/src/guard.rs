//! Non-finite gradient handling, decided on the device (no host read unless
//! the user asked for a panic).

use burn::tensor::{backend::Backend, Bool, Tensor};

use crate::layout::tail_rows;
use crate::transforms::sum_of_mapped;

/// A one-element flag: does `grad` hold a NaN or an Inf?
///
/// `0 * x` is `0` for every finite `x` and NaN for an infinite or NaN `x`, so
/// the sum of `0 * grad` is NaN exactly when an entry is not finite: one
/// element-wise pass and one reduction (testing `is_nan` and `is_inf` took
/// four passes, two of them writing boolean tensors), and, unlike a plain sum
/// of the entries, it cannot overflow in any precision.
pub fn non_finite<B: Backend, const D: usize>(grad: &Tensor<B, D>) -> Tensor<B, 1, Bool> {
    non_finite_probe(grad.clone()).is_nan()
}

/// `sum(0 * t)`, a one-element tensor that is NaN exactly when `t` holds a
/// NaN or an Inf (see [`non_finite`]); probes of several tensors add up to a
/// probe of all of them (see [`Rollback::from_probes`]).
///
/// A small tensor is summed by one reduction: a rank-1 tensor (a flattened
/// gradient) along its one axis, so that Burn's fusion fuses the probe with
/// the work around it, others as one `[1, numel]` row (see
/// [`as_row`](crate::transforms::as_row)). A large one (see [`tail_rows`]),
/// where one reduction would run in a single GPU workgroup, is summed one
/// axis at a time on its `[rows, cols]` view
/// ([`sum_axes`](crate::transforms::sum_axes)).
pub fn non_finite_probe<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, 1> {
    if D == 1 && tail_rows(&t.dims()).is_none() {
        return t.mul_scalar(0.0).sum_dim(0).reshape([1]);
    }
    sum_of_mapped(t, |x| x.mul_scalar(0.0)).reshape([1])
}

/// `true` (`[1]`) when a [`non_finite_probe`] says its tensor is finite: a
/// finite probe is `0` (or `-0`), so `probe <= 0` holds exactly then (a
/// comparison with NaN is false).
pub fn probe_is_finite<B: Backend>(probe: Tensor<B, 1>) -> Tensor<B, 1, Bool> {
    probe.lower_equal_elem(0.0)
}

/// The guard's verdict for one step, applied to every tensor the step wrote:
/// each goes back to its old value where the flag is set.
///
/// Built once per step; [`Rollback::apply`] then costs one comparison and
/// one select per tensor, element-wise work that Burn's fusion can fuse
/// (broadcasting the flag with `expand` would end a fused kernel). In Burn
/// 0.21 the selects of a step's tail still run in a kernel of their own after
/// the fused tail (docs/performance.md, "Fewer kernels, round four").
#[derive(Debug, Clone)]
pub struct Rollback<B: Backend> {
    /// `+inf` when the step is rolled back, `-inf` when it is kept (`[1]`).
    threshold: Tensor<B, 1>,
}

impl<B: Backend> Rollback<B> {
    /// The verdict of `flag` (see [`non_finite`]), without reading it on the
    /// host.
    pub fn new(flag: Tensor<B, 1, Bool>) -> Self {
        let threshold =
            Tensor::<B, 1>::full([1], f64::NEG_INFINITY, &flag.device()).mask_fill(flag, f64::INFINITY);
        Self { threshold }
    }

    /// The verdict of a [`non_finite_probe`]: rolled back when the probe is
    /// NaN (see [`probe_is_finite`] and [`Rollback::unless`]).
    pub fn from_probe(probe: Tensor<B, 1>) -> Self {
        Self::unless(probe_is_finite(probe))
    }

    /// The verdict "rolled back unless `kept`" (`kept` from
    /// [`probe_is_finite`]): a masked fill of a fresh constant, a kernel Burn's
    /// fusion can fuse, where `is_nan` would always launch one of its own.
    ///
    /// The two halves can be issued apart: the per-parameter step compares
    /// the probe before its split (after its direction on a KrAD statistics
    /// step) and fills the constant after its direction,
    /// where the fill ends Burn's fusion stream so that the step's tail fuses;
    /// the fill itself then runs in a kernel of its own (docs/performance.md,
    /// "Fewer kernels, round five").
    pub fn unless(kept: Tensor<B, 1, Bool>) -> Self {
        let threshold =
            Tensor::<B, 1>::full([1], f64::INFINITY, &kept.device()).mask_fill(kept, f64::NEG_INFINITY);
        Self { threshold }
    }

    /// [`from_probe`](Self::from_probe) of the sum of several probes: rolled
    /// back when any tensor probed holds a NaN or an Inf. Panics on an empty
    /// list.
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
        panic!("kradagrad-burn: the gradient of the parameter of shape {shape:?} holds NaN or Inf");
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // Tests read the flag back.
mod tests {
    use super::*;
    use burn::backend::NdArray;

    fn flagged(values: &[f32]) -> bool {
        let grad = Tensor::<NdArray<f32>, 1>::from_floats(values, &Default::default());
        non_finite(&grad).into_data().to_vec::<bool>().unwrap()[0]
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
            Rollback::new(non_finite(&grad)),
            Rollback::from_probes(vec![non_finite_probe(grad.ones_like()), non_finite_probe(grad)]),
            Rollback::unless(probe_is_finite(non_finite_probe(flat))),
        ]
    }

    #[test]
    fn rollback_keeps_the_old_tensor_exactly_when_flagged() {
        let old = [1.0, -0.0, f32::MAX, -f32::MAX];
        let new = [f32::NAN, f32::INFINITY, 2.0, f32::NEG_INFINITY];
        let stepped = [5.0, -6.0, 7.0, 0.0];
        for gradient in [[1.0, f32::NAN], [f32::INFINITY, 0.0], [-1.0, f32::NEG_INFINITY]] {
            for rollback in verdicts(gradient) {
                assert_eq!(apply(rollback.clone(), &new, &old), old.map(f32::to_bits));
                assert_eq!(apply(rollback, &stepped, &old), old.map(f32::to_bits));
            }
        }
        for gradient in [[1.0, -2.0], [0.0, -0.0], [f32::MAX, f32::MAX]] {
            for rollback in verdicts(gradient) {
                assert_eq!(apply(rollback, &stepped, &old), stepped.map(f32::to_bits));
            }
        }
    }

    #[test]
    fn flags_exactly_the_non_finite_gradients() {
        assert!(!flagged(&[1.0, -2.0, 0.0]));
        // Huge finite entries whose plain sum overflows are not flagged.
        assert!(!flagged(&[f32::MAX, f32::MAX, -f32::MAX]));
        assert!(flagged(&[1.0, f32::INFINITY, 2.0]));
        assert!(flagged(&[f32::NEG_INFINITY, 3.0]));
        assert!(flagged(&[f32::INFINITY, f32::NEG_INFINITY]));
        assert!(flagged(&[0.0, f32::NAN]));
    }
}
