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
    t.mul_scalar(0.0).sum()
}

/// The flag of a set of [`non_finite_probe`]s: set when any tensor probed
/// holds a NaN or an Inf. Panics on an empty list.
pub fn probes_flag<B: Backend>(probes: Vec<Tensor<B, 1>>) -> Tensor<B, 1, Bool> {
    let mut probes = probes.into_iter();
    let first = probes.next().expect("at least one probe");
    probes.fold(first, |sum, p| sum + p).is_nan()
}

/// Returns `old` where `flag` is set and `new` otherwise, without reading the
/// flag on the host.
pub fn keep_if<B: Backend, const R: usize>(
    flag: &Tensor<B, 1, Bool>,
    new: Tensor<B, R>,
    old: Tensor<B, R>,
) -> Tensor<B, R> {
    let mask = flag.clone().reshape([1; R]).expand(new.dims());
    new.mask_where(mask, old)
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
