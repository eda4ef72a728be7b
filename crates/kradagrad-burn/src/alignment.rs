//! Matmul alignment: zero-padding factor sides up to a multiple, so that the
//! root computations and the preconditioner products run on matrix sides that
//! GPU matmul kernels tile well (ALGORITHM.md section 2's blocks of side 250
//! ran at a tenth of the batched-matmul rate of side 128 or 512 through
//! burn-wgpu: docs/performance.md).
//!
//! Both uses are exact, not approximations:
//! - a root of `diag(A, t I)` is `diag(A^r, t^r I)`, so the root of `A` is the
//!   leading block of the padded root ([`aligned_root`]; `t` is the mean
//!   eigenvalue `trace(A) / d`, which keeps the condition number, and with it
//!   the Newton iteration count and accuracy, that of `A`);
//! - with the blocks and the roots zero-padded, the mode products of the
//!   leading block are those of the unpadded blocks and the padded rows stay
//!   zero ([`pad_blocks`], [`pad_factor`], [`crop_blocks`]).

use burn::tensor::{backend::Backend, Tensor};

use crate::layout::mode_split;
use crate::roots::batch_identity;

/// `d` rounded up to a multiple of `multiple` (`multiple <= 1`: `d` itself).
pub fn aligned(d: usize, multiple: usize) -> usize {
    if multiple <= 1 {
        d
    } else {
        d.div_ceil(multiple) * multiple
    }
}

/// The block sides after alignment.
pub fn aligned_dims(block_dims: &[usize], multiple: usize) -> Vec<usize> {
    block_dims.iter().map(|&d| aligned(d, multiple)).collect()
}

/// Appends `extra` zeros along the middle axis of `t` viewed as `[n, pre, d, post]`.
fn pad_middle<B: Backend>(
    t: Tensor<B, 2>,
    (pre, d, post): (usize, usize, usize),
    extra: usize,
) -> Tensor<B, 2> {
    let n = t.dims()[0];
    let zeros = Tensor::<B, 4>::zeros([n, pre, extra, post], (&t.device(), t.dtype()));
    Tensor::cat(vec![t.reshape([n, pre, d, post]), zeros], 2).reshape([n, pre * (d + extra) * post])
}

/// Zero-pads every block `[n, numel]` of sides `block_dims` to the sides
/// `padded_dims`, one axis at a time (no axis is moved).
pub fn pad_blocks<B: Backend>(
    blocks: Tensor<B, 2>,
    block_dims: &[usize],
    padded_dims: &[usize],
) -> Tensor<B, 2> {
    let mut dims = block_dims.to_vec();
    let mut blocks = blocks;
    for i in 0..dims.len() {
        let extra = padded_dims[i] - dims[i];
        if extra > 0 {
            blocks = pad_middle(blocks, mode_split(&dims, i), extra);
            dims[i] = padded_dims[i];
        }
    }
    blocks
}

/// The leading `block_dims` part of padded blocks, the inverse of [`pad_blocks`].
pub fn crop_blocks<B: Backend>(
    blocks: Tensor<B, 2>,
    padded_dims: &[usize],
    block_dims: &[usize],
) -> Tensor<B, 2> {
    let n = blocks.dims()[0];
    let mut dims = padded_dims.to_vec();
    let mut blocks = blocks;
    for i in 0..dims.len() {
        if dims[i] > block_dims[i] {
            let (pre, d, post) = mode_split(&dims, i);
            dims[i] = block_dims[i];
            blocks = blocks
                .reshape([n, pre, d, post])
                .narrow(2, 0, block_dims[i])
                .reshape([n, pre * block_dims[i] * post]);
        }
    }
    blocks
}

/// `[n, d, d]` factors zero-padded to `[n, side, side]`.
pub fn pad_factor<B: Backend>(factor: Tensor<B, 3>, side: usize) -> Tensor<B, 3> {
    let [n, d, _] = factor.dims();
    if side == d {
        return factor;
    }
    let (device, dtype) = (factor.device(), factor.dtype());
    let right = Tensor::<B, 3>::zeros([n, d, side - d], (&device, dtype));
    let below = Tensor::<B, 3>::zeros([n, side - d, side], (&device, dtype));
    Tensor::cat(vec![Tensor::cat(vec![factor, right], 2), below], 1)
}

/// The leading `[n, d, d]` block of `[n, side, side]` matrices.
pub fn crop_factor<B: Backend>(factor: Tensor<B, 3>, d: usize) -> Tensor<B, 3> {
    let [_, side, _] = factor.dims();
    if side == d {
        return factor;
    }
    factor.narrow(1, 0, d).narrow(2, 0, d)
}

/// `root(A)` for SPD matrices `a` (`[n, d, d]`) computed on sides aligned to
/// `multiple`: `root(diag(A, t I))` cropped to its leading block, with
/// `t = trace(A) / d` per matrix.
pub fn aligned_root<B: Backend>(
    a: Tensor<B, 3>,
    multiple: usize,
    root: impl FnOnce(Tensor<B, 3>) -> Tensor<B, 3>,
) -> Tensor<B, 3> {
    let d = a.dims()[1];
    let side = aligned(d, multiple);
    if side == d {
        return root(a);
    }
    let (device, dtype) = (a.device(), a.dtype());
    let mean_eigenvalue = (a.clone() * batch_identity::<B>(1, d, &device, dtype))
        .sum_dim(2)
        .sum_dim(1)
        .div_scalar(d as f64); // [n, 1, 1]
                               // diag(0, I) of the padded side: ones on the padding's diagonal only.
    let padding_identity = batch_identity::<B>(1, side, &device, dtype)
        - pad_factor(batch_identity::<B>(1, d, &device, dtype), side);
    let padded = pad_factor(a, side) + padding_identity * mean_eigenvalue;
    crop_factor(root(padded), d)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // Tests read results back.
mod tests {
    use super::*;
    use crate::roots::{staged_newton_root, RootSpec};
    use burn::backend::NdArray;
    use burn::tensor::{DType, Distribution};

    type B = NdArray<f64>;

    fn values<const R: usize>(t: Tensor<B, R>) -> Vec<f64> {
        t.into_data().convert::<f64>().to_vec::<f64>().unwrap()
    }

    fn random<const R: usize>(shape: [usize; R]) -> Tensor<B, R> {
        Tensor::<B, R>::random(shape, Distribution::Default, &Default::default()).cast(DType::F64)
    }

    #[test]
    fn sides_round_up_to_the_multiple() {
        assert_eq!(aligned_dims(&[250, 34, 256, 1], 32), vec![256, 64, 256, 32]);
        assert_eq!(aligned_dims(&[250, 34], 1), vec![250, 34]);
    }

    #[test]
    fn padding_then_cropping_gives_the_blocks_back_with_zeros_between() {
        for dims in [vec![5], vec![3, 5], vec![2, 3, 5]] {
            let numel: usize = dims.iter().product();
            let blocks = random([4, numel]);
            let padded_dims = aligned_dims(&dims, 4);
            let padded = pad_blocks(blocks.clone(), &dims, &padded_dims);
            let padded_numel: usize = padded_dims.iter().product();
            assert_eq!(padded.dims(), [4, padded_numel]);
            // The padding holds zeros only: the sums agree.
            let (sum, padded_sum) = (values(blocks.clone().sum()), values(padded.clone().sum()));
            assert!((sum[0] - padded_sum[0]).abs() < 1e-12);
            assert_eq!(values(crop_blocks(padded, &padded_dims, &dims)), values(blocks));
        }
    }

    #[test]
    fn an_aligned_root_is_the_root() {
        // SPD with eigenvalues spread over four decades.
        let x = random([3, 10, 40]);
        let a = x.clone().matmul(x.swap_dims(1, 2))
            + batch_identity::<B>(3, 10, &Default::default(), DType::F64).mul_scalar(1e-4);
        for spec in [RootSpec::positive(4), RootSpec::inverse(2, 0.0)] {
            let plain = staged_newton_root(a.clone(), spec, 100).root;
            let aligned = aligned_root(a.clone(), 8, |p| staged_newton_root(p, spec, 100).root);
            assert_eq!(aligned.dims(), [3, 10, 10]);
            let (p, q) = (values(plain), values(aligned));
            let gap = p.iter().zip(&q).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt()
                / p.iter().map(|x| x * x).sum::<f64>().sqrt();
            assert!(gap < 1e-10, "{spec:?}: relative gap {gap:e}");
        }
    }
}
