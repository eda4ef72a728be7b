//! Accuracy of the matrix roots against an f64 eigendecomposition oracle on
//! random SPD matrices (relative spectral-norm error), with the bounds of the
//! core-library issue:
//! - f64, positive and inverse roots, p = 2, 4, 6, 8, condition up to 1e8: <= 1e-8;
//! - f32 positive 4th root: <= 1e-4 at condition 1e4, <= 1e-2 at 1e8 (at d = 32;
//!   see the test's comment for other sizes);
//! - f32 inverse 4th root: <= 1e-4 at condition 1e4.
//!
//! The condition-1e4 f32 bounds run on every backend (tests/common).
//! `examples/root_accuracy.rs` prints the full table quoted in docs/algorithm.md.

use burn::backend::NdArray;
use kradagrad_burn::roots::{matrix_root, RootMethod, RootSpec};
use kradagrad_burn_suite::spd::{
    from_tensor, oracle_root, random_spd, relative_error, root_error, to_tensor,
};

const D: usize = 48;
const ITERATIONS: usize = 40;

#[test]
fn f64_newton_roots_are_accurate_to_1e_8_up_to_condition_1e8() {
    for inverse in [false, true] {
        for order in [2, 4, 6, 8] {
            for cond in [1e2, 1e4, 1e6, 1e8] {
                let e = root_error::<NdArray<f64>>(
                    D,
                    cond,
                    order,
                    inverse,
                    RootMethod::Newton,
                    ITERATIONS,
                    order as u64,
                );
                assert!(
                    e <= 1e-8,
                    "p = {order}, inverse = {inverse}, cond = {cond:e}: {e:e}"
                );
            }
        }
    }
}

/// Worst error over seeds 0..6 of the f32 positive 4th root at condition 1e8.
fn worst_f32_fourth_root_at_1e8(d: usize, method: RootMethod) -> f64 {
    (0..6)
        .map(|seed| root_error::<NdArray<f32>>(d, 1e8, 4, false, method, ITERATIONS, seed))
        .fold(0.0, f64::max)
}

/// At condition 1e8 an fp32 4th root sits on the fp32 floor (ALGORITHM.md
/// section 7: about 1e-2 whatever the method), which grows with the size. The
/// issue's bound (<= 1e-2) is checked at d = 32 over six seeds; at the other
/// sizes the device iteration must stay within 2.5x of what an fp32
/// eigendecomposition achieves on the same matrices (docs/algorithm.md has the
/// table).
#[test]
fn f32_newton_fourth_root_at_condition_1e8_is_on_the_fp32_floor() {
    let at_32 = worst_f32_fourth_root_at_1e8(32, RootMethod::Newton);
    assert!(at_32 <= 1e-2, "positive 4th root, cond 1e8, d = 32: {at_32:e}");
    for d in [16, 64, 128] {
        let newton = worst_f32_fourth_root_at_1e8(d, RootMethod::Newton);
        let eigh = worst_f32_fourth_root_at_1e8(d, RootMethod::Eigh);
        assert!(
            newton <= 2.5 * eigh,
            "d = {d}: Newton {newton:e} vs fp32 eigendecomposition {eigh:e}"
        );
    }
}

#[test]
fn host_eigendecomposition_roots_match_the_oracle() {
    let f64_error = root_error::<NdArray<f64>>(D, 1e8, 4, false, RootMethod::Eigh, 0, 3);
    assert!(f64_error <= 1e-8, "{f64_error:e}");
    let forced = root_error::<NdArray<f32>>(D, 1e4, 4, true, RootMethod::EighF64, 0, 3);
    assert!(forced <= 1e-4, "{forced:e}");
}

#[test]
fn shampoo_eigendecomposition_clamps_eigenvalues_at_the_floor() {
    // diag(1, 1e-12): with floor 1e-6 the inverse square root is diag(1, 1e3).
    let a = nalgebra::DMatrix::from_diagonal(&nalgebra::DVector::from_vec(vec![1.0, 1e-12]));
    let spec = RootSpec::inverse(2, 1e-6);
    let root = from_tensor(matrix_root(
        to_tensor::<NdArray<f64>>(&a, &Default::default()),
        spec,
        RootMethod::EighF64,
        0,
    ));
    assert!(
        (root[(1, 1)] - 1e3).abs() < 1e-9 && (root[(0, 0)] - 1.0).abs() < 1e-12,
        "{root}"
    );
}

#[test]
fn a_batch_is_rooted_matrix_by_matrix() {
    // Two matrices of very different conditions in one batch: each converges on its own.
    let (a, b) = (random_spd(16, 1e2, 1), random_spd(16, 1e7, 2));
    let device = Default::default();
    let batch = burn::tensor::Tensor::cat(
        vec![
            to_tensor::<NdArray<f64>>(&a, &device),
            to_tensor::<NdArray<f64>>(&b, &device),
        ],
        0,
    );
    let roots = matrix_root(
        batch,
        RootSpec {
            order: 4,
            inverse: false,
            shift: 0.0,
            floor: 0.0,
        },
        RootMethod::Newton,
        ITERATIONS,
    );
    for (i, m) in [a, b].iter().enumerate() {
        let got = from_tensor(roots.clone().narrow(0, i, 1));
        let e = relative_error(&got, &oracle_root(m, 4, false));
        assert!(e <= 1e-8, "matrix {i}: {e:e}");
    }
}
