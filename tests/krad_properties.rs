//! Property tests (fixed seed) of the bare KrAD update of ALGORITHM.md
//! section 1 on random SPD `S` and PSD `M`:
//! 1. `S_new` stays symmetric positive definite,
//! 2. `S - S_new` is PSD (the update never increases `S`),
//! 3. `S_new - (S^-1 + M)^-1` is PSD (the implied statistic is dominated).
//!
//! Checked for both denominators (trace with `c = d`, KrADagrad*; Frobenius
//! with `c = 1`, KrADagrad with no damping), in f64 with condition up to 1e8
//! and in f32 up to 1e4. Tolerances are relative to `||S||` (spectral):
//! 1e-12 in f64 and 1e-5 in f32 (round-off of `d`-term sums, d <= 24).

use burn::backend::NdArray;
use burn::tensor::backend::Backend;
use kradagrad_burn::krad::{krad_mm_update, krad_star_update};
use kradagrad_burn_suite::spd::{float_dtype, from_tensor, random_orthogonal, spectral_norm, to_tensor};
use nalgebra::{DMatrix, DVector};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

/// A random SPD matrix with eigenvalues log-uniform over `[scale / cond, scale]`.
fn spd(d: usize, log_cond: f64, log_scale: f64, seed: u64) -> DMatrix<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let q = random_orthogonal(d, &mut rng);
    let lambda = DVector::from_fn(d, |i, _| {
        10f64.powf(log_scale - log_cond * i as f64 / (d - 1).max(1) as f64)
    });
    let a = &q * DMatrix::from_diagonal(&lambda) * q.transpose();
    (&a + a.transpose()) * 0.5
}

/// A random PSD Gram matrix `G G^T / r` of rank `r`, scaled by `10^log_scale`.
fn gram(d: usize, rank: usize, log_scale: f64, seed: u64) -> DMatrix<f64> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let g = DMatrix::<f64>::from_fn(d, rank, |_, _| StandardNormal.sample(&mut rng));
    let m = &g * g.transpose() * (10f64.powf(log_scale) / rank as f64);
    (&m + m.transpose()) * 0.5
}

fn min_eigenvalue(a: &DMatrix<f64>) -> f64 {
    let sym = (a + a.transpose()) * 0.5;
    sym.symmetric_eigen()
        .eigenvalues
        .iter()
        .fold(f64::INFINITY, |m, &e| m.min(e))
}

/// `(S^-1 + M)^-1 = S^(1/2) (I + S^(1/2) M S^(1/2))^-1 S^(1/2)`, stable for
/// ill-conditioned `S` because the inverted matrix is `>= I`.
fn exact_accumulation(s: &DMatrix<f64>, m: &DMatrix<f64>) -> DMatrix<f64> {
    let eig = s.clone().symmetric_eigen();
    let half = &eig.eigenvectors
        * DMatrix::from_diagonal(&eig.eigenvalues.map(f64::sqrt))
        * eig.eigenvectors.transpose();
    let d = s.nrows();
    let inner = DMatrix::<f64>::identity(d, d) + &half * m * &half;
    let inv = inner.try_inverse().expect("I + PSD is invertible");
    &half * inv * &half
}

#[derive(Debug, Clone, Copy)]
enum Update {
    /// nu = trace, c = d.
    Trace,
    /// nu = Frobenius norm, c = 1, no damping.
    Frobenius,
}

fn check<B: Backend>(
    update: Update,
    s: &DMatrix<f64>,
    m: &DMatrix<f64>,
    tolerance: f64,
) -> Result<(), TestCaseError> {
    let device = Default::default();
    // The inputs as the backend holds them (rounded to its precision).
    let s_in = from_tensor(to_tensor::<B>(s, &device));
    let m_in = from_tensor(to_tensor::<B>(m, &device));
    let (st, mt) = (to_tensor::<B>(&s_in, &device), to_tensor::<B>(&m_in, &device));
    prop_assert_eq!(st.dtype(), float_dtype::<B>());
    let s_new = from_tensor(match update {
        Update::Trace => krad_star_update(st, mt),
        Update::Frobenius => krad_mm_update(st, mt, 0.0),
    });
    let norm = spectral_norm(&s_in);
    let tol = tolerance * norm;
    let asym = (&s_new - s_new.transpose()).abs().max();
    prop_assert!(asym <= tol, "not symmetric: {asym:e} > {tol:e}");
    prop_assert!(
        min_eigenvalue(&s_new) > 0.0,
        "not positive definite: {:e}",
        min_eigenvalue(&s_new)
    );
    let decrease = min_eigenvalue(&(&s_in - &s_new));
    prop_assert!(decrease >= -tol, "S - S_new not PSD: {decrease:e} < -{tol:e}");
    let dominance = min_eigenvalue(&(&s_new - exact_accumulation(&s_in, &m_in)));
    prop_assert!(
        dominance >= -tol,
        "S_new - (S^-1 + M)^-1 not PSD: {dominance:e} < -{tol:e}"
    );
    Ok(())
}

fn config() -> Config {
    Config {
        cases: 64,
        rng_seed: RngSeed::Fixed(20230530),
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn f64_updates_keep_the_krad_properties(
        d in 2usize..24, rank in 1usize..8, log_cond in 0.0f64..8.0,
        log_s in -3.0f64..3.0, log_m in -3.0f64..3.0, seed in any::<u64>(), frobenius in any::<bool>(),
    ) {
        let s = spd(d, log_cond, log_s, seed);
        // Scale M so that S M ranges from negligible to dominant.
        let m = gram(d, rank.min(d), log_m - log_s, seed);
        let update = if frobenius { Update::Frobenius } else { Update::Trace };
        check::<NdArray<f64>>(update, &s, &m, 1e-12)?;
    }

    #[test]
    fn f32_updates_keep_the_krad_properties(
        d in 2usize..24, rank in 1usize..8, log_cond in 0.0f64..4.0,
        log_s in -2.0f64..2.0, log_m in -2.0f64..2.0, seed in any::<u64>(), frobenius in any::<bool>(),
    ) {
        let s = spd(d, log_cond, log_s, seed);
        let m = gram(d, rank.min(d), log_m - log_s, seed);
        let update = if frobenius { Update::Frobenius } else { Update::Trace };
        check::<NdArray<f32>>(update, &s, &m, 1e-5)?;
    }
}
