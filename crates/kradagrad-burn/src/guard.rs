//! Non-finite gradient handling, decided on the device (no host read unless
//! the user asked for a panic).

use burn::tensor::{backend::Backend, Bool, Tensor};

/// A one-element flag: does `grad` hold a NaN or an Inf?
pub fn non_finite<B: Backend, const D: usize>(grad: &Tensor<B, D>) -> Tensor<B, 1, Bool> {
    grad.clone().is_nan().any().bool_or(grad.clone().is_inf().any())
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
