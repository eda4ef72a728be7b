//! The inversion-free KrAD update of an inverse statistic (docs/algorithm.md,
//! "The idea"), batched over blocks.
//!
//! `KrAD(S, M; nu, c) = S - S M S / (c (1 + nu(S M)))`, where `nu` bounds the
//! spectral radius of `S M`. It keeps `S` symmetric positive definite, never
//! increases it, and stays above the exact `(S^-1 + M)^-1`.

use burn::tensor::{backend::Backend, Tensor};

use crate::layout::{mode_cross, mode_gram, mode_product, rows_view, ROWS_VIEW_MIN_ENTRIES};

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
    sum_per_matrix(a * b_symmetric)
}

/// Per-matrix sum of all entries, as a `[n, 1, 1]` tensor: one reduction
/// over the flattened matrix (a reshape of the contiguous product), where
/// summing rows then columns would launch two. Except for matrices of at
/// least [`ROWS_VIEW_MIN_ENTRIES`] entries (the 1536x1536 statistic of the
/// paper's quadratic): a CubeCL backend runs each output of a reduction in
/// one workgroup, so those sum their rows first (`n * rows` outputs spread
/// over the device) and then the row sums.
fn sum_per_matrix<B: Backend>(a: Tensor<B, 3>) -> Tensor<B, 3> {
    let [n, rows, cols] = a.dims();
    if rows * cols >= ROWS_VIEW_MIN_ENTRIES {
        a.sum_dim(2).sum_dim(1)
    } else {
        a.reshape([n, 1, rows * cols]).sum_dim(2)
    }
}

/// Per-block sum of a batch of flattened blocks `[n, numel]`, as a `[n, 1,
/// 1]` tensor: one reduction along the row, except for blocks of at least
/// [`ROWS_VIEW_MIN_ENTRIES`] entries, which [`sum_per_matrix`] sums on their
/// [`rows_view`] view (one output per block would run in one GPU workgroup).
fn sum_per_block<B: Backend>(a: Tensor<B, 2>) -> Tensor<B, 3> {
    let [n, numel] = a.dims();
    match rows_view(&[numel]) {
        Some([rows, cols]) => sum_per_matrix(a.reshape([n, rows, cols])),
        None => a.sum_dim(1).reshape([n, 1, 1]),
    }
}

/// Per-matrix Frobenius norm, as a `[n, 1, 1]` tensor.
pub fn frobenius_norm<B: Backend>(a: Tensor<B, 3>) -> Tensor<B, 3> {
    sum_per_matrix(a.square()).sqrt()
}

/// Decays an inverse statistic by `beta2`: `S / beta2` is the inverse of the
/// decayed statistic `beta2 L` (KrADagrad* and KrADagrad with `beta_2 < 1`).
/// The identity at `beta2 = 1`.
pub fn decay_inverse<B: Backend>(s: Tensor<B, 3>, beta2: f64) -> Tensor<B, 3> {
    if beta2 < 1.0 {
        s.div_scalar(beta2)
    } else {
        s
    }
}

/// KrADagrad* update: `S - S C S / (d (1 + trace(C S)))` for a
/// batch of inverse statistics `s` and Gram matrices `gram`, `[n, d, d]`.
pub fn krad_star_update<B: Backend>(s: Tensor<B, 3>, gram: Tensor<B, 3>) -> Tensor<B, 3> {
    let trace = trace_of_product(gram.clone(), s.clone());
    let sms = s.clone().matmul(gram).matmul(s.clone());
    krad_star_step(s, sms, trace)
}

/// The KrADagrad* step shared by both forms: `S - S C S / (d (1 + trace(C S)))`,
/// symmetrised, given `S C S` and `trace(C S)` (`[n, 1, 1]`).
fn krad_star_step<B: Backend>(s: Tensor<B, 3>, sms: Tensor<B, 3>, trace: Tensor<B, 3>) -> Tensor<B, 3> {
    let d = s.dims()[1] as f64;
    // `d (1 + trace)` as `d trace + d`, the trace first multiplied by `d` as
    // a fresh constant tensor rather than a scalar (the same values):
    // multiplying by it joins two independent chains of operations, where
    // Burn 0.21's fusion ends the stream it is exploring, so that the
    // element-wise work below (`+ d` included) starts a stream of its own and
    // fuses. Without it, that work hangs off the split's slices, which
    // cannot fuse, and runs one operation per kernel.
    let d_constant = Tensor::<B, 3>::full(trace.dims(), d, &trace.device()).cast(trace.dtype());
    let denominator = trace.mul(d_constant).add_scalar(d);
    // `sym(S - A / c) = sym(S) - sym(A) / c`, each operand symmetrised on its
    // own: Burn's fusion reads a transposed operand only from a kernel's
    // inputs, so transposing the difference would end the fused kernel.
    symmetrize(s) - symmetrize(sms) / denominator
}

/// KrADagrad* update of the mode-`i` inverse statistics `s`,
/// `[blocks, d, d]`, by the mode-`i` Grams of a batch of blocks
/// `[blocks, numel]` — [`krad_star_update`] with `C = X X^T`, `X` the mode-`i`
/// unfolding, in whichever of two equal forms needs fewer FLOPs.
///
/// With `Y = S X` (one mode product, no axis moved), `S C S = Y Y^T` and
/// `trace(C S) = sum(X .* Y)`: `4 d^2 m` FLOPs for `m = numel / d` against the
/// Gram form's `2 d^2 m + 4 d^3` (the Gram, then `S C S`). The sandwich wins
/// when `m < 2 d`: square blocks of a matrix (a third fewer FLOPs) and,
/// above all, vectors and thin blocks (`m = 1` for a bias: two matrix-vector
/// products instead of two `d x d` matmuls). `Y Y^T` is symmetric positive
/// semi-definite by construction, like the `C` it replaces.
pub fn krad_star_update_from_blocks<B: Backend>(
    s: Tensor<B, 3>,
    blocks: Tensor<B, 2>,
    block_dims: &[usize],
    i: usize,
) -> Tensor<B, 3> {
    let d = s.dims()[1];
    let m = blocks.dims()[1] / d;
    if m >= 2 * d {
        return krad_star_update(s, mode_gram(blocks, block_dims, i));
    }
    let y = mode_product(blocks.clone(), s.clone(), block_dims, i);
    let trace = sum_per_block(blocks * y.clone());
    krad_star_step(s, mode_gram(y, block_dims, i), trace)
}

/// KrADagrad update: damping `S' = S - eps S S^T`, then
/// `S' - (S' M) S'^T / (1 + ||S' M||_F)`.
pub fn krad_mm_update<B: Backend>(s: Tensor<B, 3>, gram: Tensor<B, 3>, eps: f64) -> Tensor<B, 3> {
    let damped = damp(s, eps);
    let a = damped.clone().matmul(gram);
    let sms = a.clone().matmul(damped.clone().swap_dims(1, 2));
    krad_mm_step(damped, sms, a)
}

/// The KrADagrad step shared by both forms: `S' - S' M S'^T / (1 + ||S' M||_F)`,
/// symmetrised, given the damped `S'`, `S' M S'^T` and `S' M`.
fn krad_mm_step<B: Backend>(damped: Tensor<B, 3>, sms: Tensor<B, 3>, sm: Tensor<B, 3>) -> Tensor<B, 3> {
    let denominator = frobenius_norm(sm).add_scalar(1.0);
    symmetrize(damped - sms / denominator)
}

/// KrADagrad's damping `S - eps S S^T`.
fn damp<B: Backend>(s: Tensor<B, 3>, eps: f64) -> Tensor<B, 3> {
    let s_t = s.clone().swap_dims(1, 2);
    s.clone() - s.matmul(s_t).mul_scalar(eps)
}

/// KrADagrad update of the mode-`i` inverse statistics `s` by
/// the mode-`i` Grams of a batch of blocks `[blocks, numel]` (the gradient
/// with every other mode preconditioned): [`krad_mm_update`] with
/// `M = X X^T`, in whichever of two equal forms needs fewer FLOPs.
///
/// With `Y = S' X`, `S' M S'^T = Y Y^T` and `S' M = Y X^T`: `6 d^2 m` FLOPs
/// after the damping for `m = numel / d`, against `2 d^2 m + 4 d^3` for the
/// Gram form. The block form wins when `m < d`: vectors (three times fewer
/// FLOPs in all) and thin blocks; square blocks keep the Gram form.
pub fn krad_mm_update_from_blocks<B: Backend>(
    s: Tensor<B, 3>,
    blocks: Tensor<B, 2>,
    block_dims: &[usize],
    i: usize,
    eps: f64,
) -> Tensor<B, 3> {
    let d = s.dims()[1];
    let m = blocks.dims()[1] / d;
    if m >= d {
        return krad_mm_update(s, mode_gram(blocks, block_dims, i), eps);
    }
    let damped = damp(s, eps);
    // The mode product takes the factor as symmetric; S' is, up to round-off.
    let y = mode_product(blocks.clone(), damped.clone(), block_dims, i);
    let sm = mode_cross(y.clone(), blocks, block_dims, i);
    krad_mm_step(damped, mode_gram(y, block_dims, i), sm)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // Tests read results back.
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::{DType, TensorData};

    type B = NdArray<f64>;

    fn values<const R: usize>(t: Tensor<B, R>) -> Vec<f64> {
        t.into_data().to_vec::<f64>().unwrap()
    }

    /// A deterministic `[n, len]` tensor with distinct entries.
    fn wave(n: usize, len: usize, phase: f64) -> Tensor<B, 2> {
        let v: Vec<f64> = (0..n * len).map(|k| (k as f64 * 0.37 + phase).sin()).collect();
        Tensor::from_data(TensorData::new(v, [n, len]), (&Default::default(), DType::F64))
    }

    #[test]
    fn per_matrix_sums_on_both_sides_of_the_size_threshold() {
        // [3, 5, 7]: one reduction per matrix; [2, 520, 520] (270400 entries
        // each, over ROWS_VIEW_MIN_ENTRIES): rows first, then the row sums.
        for [n, rows, cols] in [[3, 5, 7], [2, 520, 520]] {
            let len = rows * cols;
            let a = wave(n, len, 0.5).reshape([n, rows, cols]);
            let expected: Vec<f64> = values(wave(n, len, 0.5))
                .chunks(len)
                .map(|m| m.iter().map(|x| x * x).sum::<f64>().sqrt())
                .collect();
            let norms = frobenius_norm(a);
            assert_eq!(norms.dims(), [n, 1, 1]);
            for (got, want) in values(norms).iter().zip(&expected) {
                assert!(
                    (got - want).abs() <= 1e-12 * want,
                    "{rows}x{cols}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn per_block_sums_on_both_sides_of_the_size_threshold() {
        // 35 entries per block: one reduction per row; 270400 (over
        // ROWS_VIEW_MIN_ENTRIES, a 520x520 view): rows first, then row sums.
        for [n, numel] in [[3, 35], [2, 520 * 520]] {
            let a = wave(n, numel, 0.25);
            let expected: Vec<f64> = values(a.clone())
                .chunks(numel)
                .map(|block| block.iter().sum())
                .collect();
            let sums = sum_per_block(a);
            assert_eq!(sums.dims(), [n, 1, 1]);
            for (got, want) in values(sums).iter().zip(&expected) {
                assert!((got - want).abs() <= 1e-9, "{numel}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn block_form_of_a_block_over_the_sum_threshold_matches_the_gram_form() {
        // A 520x520 block (270400 entries, over ROWS_VIEW_MIN_ENTRIES): the
        // block form's trace sums it on its rows_view view; both modes.
        let (d, n) = (520, 2);
        let blocks = wave(n, d * d, 0.3).mul_scalar(0.1);
        for i in 0..2 {
            let a = wave(n, d * d, 1.7).reshape([n, d, d]).mul_scalar(0.05);
            let s = a.clone().matmul(a.swap_dims(1, 2)).add(
                Tensor::<B, 2>::eye(d, &Default::default())
                    .cast(DType::F64)
                    .unsqueeze::<3>(),
            );
            let expected = values(krad_star_update(s.clone(), mode_gram(blocks.clone(), &[d, d], i)));
            let got = values(krad_star_update_from_blocks(s, blocks.clone(), &[d, d], i));
            let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (g, e) in got.iter().zip(&expected) {
                assert!((g - e).abs() <= 1e-10 * scale, "mode {i}: {g} vs {e}");
            }
        }
    }

    #[test]
    fn block_forms_match_the_gram_forms() {
        // Both branches of both updates (block form when m < 2d for KrADagrad*,
        // m < d for KrADagrad; Gram form otherwise) on every mode of vector,
        // matrix, thin and rank-3 blocks, three blocks each, against the
        // updates given `Gram_i(X)`, with an SPD `S` of spread-out scale.
        for dims in [
            vec![6],
            vec![5, 7],
            vec![2, 9],
            vec![2, 3, 4],
            vec![3, 1, 4],
            vec![2, 5, 2],
        ] {
            let numel: usize = dims.iter().product();
            let blocks = wave(3, numel, 0.0);
            for (i, &d) in dims.iter().enumerate() {
                let a = wave(3, d * d, 1.0).reshape([3, d, d]);
                let s = a.clone().matmul(a.swap_dims(1, 2)).add(
                    Tensor::<B, 2>::eye(d, &Default::default())
                        .cast(DType::F64)
                        .unsqueeze::<3>()
                        .mul_scalar(0.1),
                );
                let gram = mode_gram(blocks.clone(), &dims, i);
                let pairs = [
                    (
                        krad_star_update(s.clone(), gram.clone()),
                        krad_star_update_from_blocks(s.clone(), blocks.clone(), &dims, i),
                    ),
                    (
                        krad_mm_update(s.clone(), gram, 0.01),
                        krad_mm_update_from_blocks(s, blocks.clone(), &dims, i, 0.01),
                    ),
                ];
                for (k, (expected, got)) in pairs.into_iter().enumerate() {
                    let (expected, got) = (values(expected), values(got));
                    let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                    for (g, e) in got.iter().zip(&expected) {
                        assert!(
                            (g - e).abs() <= 1e-12 * scale,
                            "{dims:?} mode {i}, form {k}: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }
}
