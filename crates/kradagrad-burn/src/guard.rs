//! Non-finite gradient handling, decided on the device (no host read unless
//! the user asked for a panic).

use burn::tensor::{backend::Backend, Bool, Tensor};

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
/// probe of all of them, read by [`probes_flag`].
pub fn non_finite_probe<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, 1> {
    crate::transforms::as_row(t)
        .mul_scalar(0.0)
        .sum_dim(1)
        .reshape([1])
}

/// The flag of a set of [`non_finite_probe`]s: set when any tensor probed
/// holds a NaN or an Inf. Panics on an empty list.
pub fn probes_flag<B: Backend>(probes: Vec<Tensor<B, 1>>) -> Tensor<B, 1, Bool> {
    let mut probes = probes.into_iter();
    let first = probes.next().expect("at least one probe");
    probes.fold(first, |sum, p| sum + p).is_nan()
}

/// The guard's verdict for one step, applied to every tensor the step wrote:
/// each goes back to its old value where the flag is set.
///
/// Built once per step from the flag; [`Rollback::apply`] then costs one
/// comparison and one select per tensor, both of which Burn's fusion fuses
/// with the work that produced the new value (broadcasting the flag with
/// `expand` would end the fused kernel).
#[derive(Debug, Clone)]
pub struct Rollback<B: Backend> {
    /// `+inf` where the flag is set, `-inf` where it is not (`[1]`).
    threshold: Tensor<B, 1>,
}

impl<B: Backend> Rollback<B> {
    /// The verdict of `flag` (see [`non_finite`], [`probes_flag`]), without
    /// reading it on the host.
    pub fn new(flag: Tensor<B, 1, Bool>) -> Self {
        let threshold =
            Tensor::<B, 1>::full([1], f64::NEG_INFINITY, &flag.device()).mask_fill(flag, f64::INFINITY);
        Self { threshold }
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

    fn rolled_back(flag: bool, new: &[f32], old: &[f32]) -> Vec<f32> {
        let device = Default::default();
        let flag = Tensor::<NdArray<f32>, 1, Bool>::from_data([flag], &device);
        let new = Tensor::<NdArray<f32>, 2>::from_floats([[new[0], new[1]], [new[2], new[3]]], &device);
        let old = Tensor::<NdArray<f32>, 2>::from_floats([[old[0], old[1]], [old[2], old[3]]], &device);
        Rollback::new(flag)
            .apply(new, old)
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    }

    #[test]
    fn rollback_keeps_the_old_tensor_exactly_when_flagged() {
        let old = [1.0, -0.0, f32::MAX, -f32::MAX];
        let new = [f32::NAN, f32::INFINITY, 2.0, f32::NEG_INFINITY];
        let kept = rolled_back(true, &new, &old);
        assert_eq!(
            kept.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            old.map(f32::to_bits)
        );
        let stepped = rolled_back(false, &[5.0, -6.0, 7.0, 0.0], &old);
        assert_eq!(stepped, vec![5.0, -6.0, 7.0, 0.0]);
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
