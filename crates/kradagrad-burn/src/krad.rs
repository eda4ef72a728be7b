//! The inversion-free KrAD update of an inverse statistic (ALGORITHM.md
//! section 1), batched over blocks.
//!
//! `KrAD(S, M; nu, c) = S - S M S / (c (1 + nu(S M)))`, where `nu` bounds the
//! spectral radius of `S M`. It keeps `S` symmetric positive definite, never
//! increases it, and stays above the exact `(S^-1 + M)^-1`.

use burn::tensor::{backend::Backend, Tensor};

/// Symmetrises a batch of matrices: `(A + A^T) / 2`.
pub fn symmetrize<B: Backend>(a: Tensor<B, 3>) -> Tensor<B, 3> {
    symmetrize_scaled(a, 1.0)
}

/// `c (A + A^T) / 2` for a batch of matrices, the scale folded into the
/// symmetrisation's one scaling pass.
pub fn symmetrize_scaled<B: Backend>(a: Tensor<B, 3>, c: f64) -> Tensor<B, 3> {
    (a.clone() + a.swap_dims(1, 2)).mul_scalar(0.5 * c)
}

/// Per-matrix trace of `A B` for symmetric `B`, as a `[n, 1, 1]` tensor
/// (`trace(A B) = sum(A .* B^T)`, no matmul needed).
pub fn trace_of_product<B: Backend>(a: Tensor<B, 3>, b_symmetric: Tensor<B, 3>) -> Tensor<B, 3> {
    (a * b_symmetric).sum_dim(2).sum_dim(1)
}

/// Per-matrix Frobenius norm, as a `[n, 1, 1]` tensor.
pub fn frobenius_norm<B: Backend>(a: Tensor<B, 3>) -> Tensor<B, 3> {
    a.square().sum_dim(2).sum_dim(1).sqrt()
}

/// Decays an inverse statistic by `beta2`: `S / beta2` is the inverse of the
/// decayed statistic `beta2 L` (sections 3 and 4). The identity at `beta2 = 1`.
pub fn decay_inverse<B: Backend>(s: Tensor<B, 3>, beta2: f64) -> Tensor<B, 3> {
    if beta2 < 1.0 {
        s.div_scalar(beta2)
    } else {
        s
    }
}

/// KrADagrad* update (section 3): `S - S C S / (d (1 + trace(C S)))` for a
/// batch of inverse statistics `s` and Gram matrices `gram`, `[n, d, d]`.
pub fn krad_star_update<B: Backend>(s: Tensor<B, 3>, gram: Tensor<B, 3>) -> Tensor<B, 3> {
    let d = s.dims()[1] as f64;
    let trace = trace_of_product(gram.clone(), s.clone());
    let sms = s.clone().matmul(gram).matmul(s.clone());
    let denominator = trace.add_scalar(1.0).mul_scalar(d);
    symmetrize(s - sms / denominator)
}

/// KrADagrad update (section 4): damping `S' = S - eps S S^T`, then
/// `S' - (S' M) S'^T / (1 + ||S' M||_F)`.
pub fn krad_mm_update<B: Backend>(s: Tensor<B, 3>, gram: Tensor<B, 3>, eps: f64) -> Tensor<B, 3> {
    let s_t = s.clone().swap_dims(1, 2);
    let damped = s.clone() - s.matmul(s_t).mul_scalar(eps);
    let a = damped.clone().matmul(gram);
    let denominator = frobenius_norm(a.clone()).add_scalar(1.0);
    let update = a.matmul(damped.clone().swap_dims(1, 2)) / denominator;
    symmetrize(damped - update)
}
