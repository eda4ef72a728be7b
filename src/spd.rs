//! Random symmetric positive definite matrices with a chosen condition number,
//! their roots known from their construction, and an f64 eigendecomposition
//! oracle for matrix roots (used by the root
//! accuracy tests and `examples/root_accuracy.rs`).

use burn::tensor::{backend::Backend, Tensor, TensorData};
use kradagrad_burn::roots::{matrix_root, staged_newton_root, RootMethod, RootSpec};
use nalgebra::DMatrix;
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

/// A random orthogonal `d x d` matrix: Q of the QR of a Gaussian matrix.
pub fn random_orthogonal(d: usize, rng: &mut StdRng) -> DMatrix<f64> {
    let g = DMatrix::<f64>::from_fn(d, d, |_, _| StandardNormal.sample(rng));
    g.qr().q()
}

/// `Q diag(lambda) Q^T` with eigenvalues log-spaced from 1 down to `1/condition`.
pub fn random_spd(d: usize, condition: f64, seed: u64) -> DMatrix<f64> {
    RandomSpd::new(d, condition, seed).matrix()
}

/// A random SPD matrix kept as its construction, `Q diag(lambda) Q^T`, so
/// that its roots are known without an eigendecomposition.
#[derive(Debug, Clone)]
pub struct RandomSpd {
    /// The orthogonal factor.
    pub q: DMatrix<f64>,
    /// The eigenvalues, log-spaced from 1 down to `1/condition`.
    pub eigenvalues: Vec<f64>,
}

impl RandomSpd {
    /// The matrix of [`random_spd`]`(d, condition, seed)`.
    pub fn new(d: usize, condition: f64, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let q = random_orthogonal(d, &mut rng);
        let eigenvalues = (0..d)
            .map(|i| condition.powf(-(i as f64) / ((d - 1).max(1) as f64)))
            .collect();
        Self { q, eigenvalues }
    }

    /// `f(Q diag(lambda) Q^T) = Q diag(f(lambda)) Q^T`, symmetrised.
    fn function(&self, f: impl Fn(f64) -> f64) -> DMatrix<f64> {
        let values =
            nalgebra::DVector::from_iterator(self.eigenvalues.len(), self.eigenvalues.iter().map(|&l| f(l)));
        let a = &self.q * DMatrix::from_diagonal(&values) * self.q.transpose();
        (&a + a.transpose()) * 0.5
    }

    /// The matrix.
    pub fn matrix(&self) -> DMatrix<f64> {
        self.function(|l| l)
    }

    /// `A^(1/p)` (or `A^(-1/p)`) from the construction: an oracle that shares
    /// no routine with the library's eigendecomposition roots.
    pub fn root(&self, order: u32, inverse: bool) -> DMatrix<f64> {
        let exponent = if inverse { -1.0 } else { 1.0 } / order as f64;
        self.function(|l| l.powf(exponent))
    }
}

/// `A^(1/p)` (or `A^(-1/p)`) by an f64 eigendecomposition.
pub fn oracle_root(a: &DMatrix<f64>, order: u32, inverse: bool) -> DMatrix<f64> {
    let eig = a.clone().symmetric_eigen();
    let exponent = if inverse { -1.0 } else { 1.0 } / order as f64;
    let powered = eig.eigenvalues.map(|e| e.max(0.0).powf(exponent));
    &eig.eigenvectors * DMatrix::from_diagonal(&powered) * eig.eigenvectors.transpose()
}

/// Spectral norm of a symmetric matrix.
pub fn spectral_norm(a: &DMatrix<f64>) -> f64 {
    a.clone()
        .symmetric_eigen()
        .eigenvalues
        .iter()
        .fold(0.0f64, |m, e| m.max(e.abs()))
}

/// Relative spectral-norm error `||X - Y|| / ||Y||`.
pub fn relative_error(x: &DMatrix<f64>, reference: &DMatrix<f64>) -> f64 {
    let diff = x - reference;
    spectral_norm(&((&diff + diff.transpose()) * 0.5)) / spectral_norm(reference)
}

/// The backend's own float dtype. Tensors must be created with it explicitly:
/// Burn 0.21 otherwise uses the device's default, which `NdArray<f32>` and
/// `NdArray<f64>` share within a process.
pub fn float_dtype<B: Backend>() -> burn::tensor::DType {
    use burn::tensor::Element;
    <B::FloatElem as Element>::dtype()
}

/// Copies a matrix into a `[1, d, d]` tensor of backend `B`.
pub fn to_tensor<B: Backend>(a: &DMatrix<f64>, device: &B::Device) -> Tensor<B, 3> {
    let d = a.nrows();
    let values: Vec<f64> = (0..d * d).map(|k| a[(k / d, k % d)]).collect();
    Tensor::from_data(TensorData::new(values, [1, d, d]), (device, float_dtype::<B>()))
}

/// Reads a `[1, d, d]` tensor back as an f64 matrix.
pub fn from_tensor<B: Backend>(t: Tensor<B, 3>) -> DMatrix<f64> {
    let [_, d, _] = t.dims();
    let values = t
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("float data");
    DMatrix::from_row_slice(d, d, &values)
}

/// A random SPD test matrix and the root to take of it.
fn problem(d: usize, condition: f64, order: u32, inverse: bool, seed: u64) -> (RandomSpd, RootSpec) {
    let spec = RootSpec {
        order,
        inverse,
        shift: 0.0,
        floor: 0.0,
    };
    (RandomSpd::new(d, condition, seed), spec)
}

/// The relative spectral-norm error of the library's root of a random SPD
/// matrix (size `d`, given condition) on backend `B`, against the root known
/// from the matrix's construction ([`RandomSpd::root`]).
pub fn root_error<B: Backend>(
    d: usize,
    condition: f64,
    order: u32,
    inverse: bool,
    method: RootMethod,
    max_iterations: usize,
    seed: u64,
) -> f64 {
    let (a, spec) = problem(d, condition, order, inverse, seed);
    let root = matrix_root(
        to_tensor::<B>(&a.matrix(), &Default::default()),
        spec,
        method,
        max_iterations,
    );
    relative_error(&from_tensor(root), &a.root(order, inverse))
}

/// Like [`root_error`] for the (staged) Newton method that
/// `RootMethod::Newton` uses, also returning the iterations the matrix took
/// (all stages together).
pub fn newton_error<B: Backend>(
    d: usize,
    condition: f64,
    order: u32,
    inverse: bool,
    max_iterations: usize,
    seed: u64,
) -> (f64, usize) {
    let (a, spec) = problem(d, condition, order, inverse, seed);
    let result = staged_newton_root(
        to_tensor::<B>(&a.matrix(), &Default::default()),
        spec,
        max_iterations,
    );
    let iterations = result
        .iterations
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("float")[0];
    let error = relative_error(&from_tensor(result.root), &a.root(order, inverse));
    (error, iterations as usize)
}
