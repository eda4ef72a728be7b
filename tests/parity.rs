//! Parity with the reference implementation by host eigendecomposition roots,
//! and the replay tool's own behaviour: every case of
//! `tests/data/reference_vectors.json` replayed through the public API
//! (config -> optimizer -> `SimpleOptimizer::step`) on `NdArray<f64>` (f64
//! cases, error <= 1e-6) and `NdArray<f32>` (f32 cases, error <= 1e-3). The
//! default device Newton roots are checked on every backend by
//! `tests/ndarray.rs` and `tests/wgpu.rs`. The error metric is ALGORITHM.md
//! section 9's.

use kradagrad_burn::RootMethod;
use kradagrad_burn_suite::replay::{replay, Outcome, ReplayOptions, VectorFile};

fn vectors() -> VectorFile {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/reference_vectors.json"
    ))
    .expect("reference vectors");
    serde_json::from_str(&text).expect("valid vector file")
}

fn all_cases_pass(root_method: RootMethod) {
    let vectors = vectors();
    assert_eq!(vectors.cases.len(), 21);
    let options = ReplayOptions {
        root_method,
        ..ReplayOptions::default()
    };
    let failures: Vec<String> = vectors
        .cases
        .iter()
        .filter_map(|case| {
            let outcome = replay(case, options);
            (!outcome.passed()).then(|| format!("{}: {outcome:?}", case.name))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "failed cases with {root_method:?}: {failures:#?}"
    );
}

#[test]
fn reference_vectors_with_host_eigendecomposition() {
    all_cases_pass(RootMethod::Eigh);
}

#[test]
fn reference_vectors_with_f64_host_eigendecomposition() {
    all_cases_pass(RootMethod::EighF64);
}

#[test]
fn a_perturbed_case_fails() {
    let mut case = vectors().cases.remove(0);
    case.params[3][5] += 1e-3;
    let outcome = replay(&case, ReplayOptions::default());
    assert!(!outcome.passed(), "{outcome:?}");
    assert!(matches!(outcome, Outcome::Replayed { error, .. } if error > 1e-4));
}

#[test]
fn unknown_options_are_reported_unsupported() {
    let mut case = vectors().cases.remove(0);
    case.hyperparams
        .insert("exotic_option".into(), serde_json::json!(3));
    assert_eq!(
        replay(&case, ReplayOptions::default()),
        Outcome::Unsupported("unsupported: exotic_option".into())
    );
    let mut case = vectors().cases.remove(0);
    case.optimizer = "lion".into();
    assert!(matches!(replay(&case, ReplayOptions::default()), Outcome::Unsupported(r) if r.contains("lion")));
}
