//! The paper's ill-conditioned synthetic problem (its section 8):
//! `f(X) = sum(X .* (H0 X H1))` with `H_i = Q_i diag(lambda) Q_i^T`, used by
//! `examples/ill_conditioned.rs` and benchmarked by `benches/step.rs`.

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use nalgebra::DMatrix;
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use crate::spd::random_orthogonal;

/// The factor spectrum of section 8: `lambda_j = 10^(-x_j^2)` with
/// `x_j = linspace(0, -sqrt(log_cond), n)`, scaled so the largest is 10. Each
/// factor then has condition `10^log_cond` (the paper: `log_cond = 4`, so
/// eigenvalues in `[1e-3, 10]`).
pub fn factor_spectrum(n: usize, log_cond: f64) -> Vec<f64> {
    let end = -log_cond.sqrt();
    let raw: Vec<f64> = (0..n)
        .map(|j| {
            let x = if n == 1 {
                0.0
            } else {
                end * j as f64 / (n - 1) as f64
            };
            10f64.powf(-x * x)
        })
        .collect();
    let max = raw.iter().cloned().fold(f64::MIN, f64::max);
    raw.into_iter().map(|l| 10.0 * l / max).collect()
}

/// The problem on the host: both Hessian factors in fp64 and the fp32 start.
#[derive(Debug, Clone)]
pub struct QuadraticProblem {
    /// Side of the square parameter `X`.
    pub n: usize,
    /// Left factor `H0` (symmetric positive definite).
    pub h0: DMatrix<f64>,
    /// Right factor `H1` (symmetric positive definite).
    pub h1: DMatrix<f64>,
    /// `X0 ~ N(0, 1)` in fp32, row-major.
    pub x0: Vec<f32>,
}

impl QuadraticProblem {
    /// Draws the problem: `Q0`, then `Q1` (QR of fp64 Gaussians), then `X0`,
    /// all from one generator seeded with `seed`.
    pub fn new(n: usize, log_cond: f64, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let lambda = DMatrix::from_diagonal(&nalgebra::DVector::from_vec(factor_spectrum(n, log_cond)));
        let factor = |rng: &mut StdRng| {
            let q = random_orthogonal(n, rng);
            let h = &q * &lambda * q.transpose();
            (&h + h.transpose()) * 0.5
        };
        let h0 = factor(&mut rng);
        let h1 = factor(&mut rng);
        let x0 = (0..n * n).map(|_| StandardNormal.sample(&mut rng)).collect();
        Self { n, h0, h1, x0 }
    }

    /// `f(X)` on the host in fp64, for a row-major `X`.
    pub fn loss(&self, x: &[f64]) -> f64 {
        let x = DMatrix::from_row_slice(self.n, self.n, x);
        x.component_mul(&(&self.h0 * &x * &self.h1)).sum()
    }

    /// Moves the factors onto a device in `dtype` (fp64 where the backend has it).
    pub fn on_device<M: Backend>(&self, device: &M::Device, dtype: DType) -> QuadraticOnDevice<M> {
        let tensor = |h: &DMatrix<f64>| {
            // nalgebra is column-major; H is symmetric, but transpose anyway so
            // the layout is right for any matrix.
            let row_major: Vec<f64> = h.transpose().iter().copied().collect();
            Tensor::<M, 2>::from_data(
                TensorData::new(row_major, [self.n, self.n]).convert_dtype(dtype),
                (device, dtype),
            )
        };
        QuadraticOnDevice {
            h0: tensor(&self.h0),
            h1: tensor(&self.h1),
            dtype,
        }
    }
}

/// The factors on a device, for loss and gradient evaluations there.
#[derive(Debug, Clone)]
pub struct QuadraticOnDevice<M: Backend> {
    h0: Tensor<M, 2>,
    h1: Tensor<M, 2>,
    dtype: DType,
}

impl<M: Backend> QuadraticOnDevice<M> {
    /// The precision the loss and gradient are computed in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `f(X)` and its gradient `2 H0 X H1` for a row-major `X` in any float
    /// precision (converted to this evaluator's dtype first).
    pub fn loss_and_gradient(&self, x: TensorData) -> (f64, TensorData) {
        let device = self.h0.device();
        let x = Tensor::<M, 2>::from_data(x.convert_dtype(self.dtype), (&device, self.dtype));
        let hxh = self.h0.clone().matmul(x.clone()).matmul(self.h1.clone());
        let loss = (x * hxh.clone())
            .sum()
            .into_data()
            .convert::<f64>()
            .to_vec::<f64>()
            .expect("loss")[0];
        (loss, (hxh * 2.0).into_data())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn spectrum_matches_section_8() {
        let l = factor_spectrum(1536, 4.0);
        assert_eq!(l.len(), 1536);
        assert!((l[0] - 10.0).abs() < 1e-12);
        assert!((l[1535] - 1e-3).abs() < 1e-15, "smallest {}", l[1535]);
        assert!(l.windows(2).all(|w| w[1] < w[0]), "decreasing");
        let l2 = factor_spectrum(64, 2.0);
        assert!((l2[0] / l2[63] - 100.0).abs() < 1e-9);
    }

    #[test]
    fn factors_have_the_spectrum_and_the_gradient_is_exact() {
        let problem = QuadraticProblem::new(24, 4.0, 7);
        let mut eig: Vec<f64> = problem
            .h1
            .clone()
            .symmetric_eigen()
            .eigenvalues
            .iter()
            .copied()
            .collect();
        eig.sort_by(|a, b| b.partial_cmp(a).unwrap());
        for (e, l) in eig.iter().zip(factor_spectrum(24, 4.0)) {
            assert!((e - l).abs() <= 1e-12 * 10.0, "{e} vs {l}");
        }
        // Gradient against central differences of the host loss (fp64, quadratic: exact
        // up to rounding), and the device loss against the host loss.
        let device = Default::default();
        let on_device = problem.on_device::<NdArray<f64>>(&device, DType::F64);
        let x: Vec<f64> = problem.x0.iter().map(|&v| v as f64).collect();
        let (loss, grad) = on_device.loss_and_gradient(TensorData::new(x.clone(), [24, 24]));
        assert!((loss - problem.loss(&x)).abs() <= 1e-12 * loss.abs());
        let grad = grad.to_vec::<f64>().unwrap();
        for k in [0, 5, 100, 24 * 24 - 1] {
            let h = 1e-3;
            let (mut plus, mut minus) = (x.clone(), x.clone());
            plus[k] += h;
            minus[k] -= h;
            let numeric = (problem.loss(&plus) - problem.loss(&minus)) / (2.0 * h);
            assert!(
                (numeric - grad[k]).abs() <= 1e-6 * (1.0 + grad[k].abs()),
                "{k}: {numeric} vs {}",
                grad[k]
            );
        }
    }
}
