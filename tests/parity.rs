//! Parity with the reference implementation by host eigendecomposition roots,
//! and the replay tool's own behaviour: every case of both vector files in
//! `tests/data` replayed through the public API (config -> optimizer ->
//! `SimpleOptimizer::step`) on `NdArray<f64>` (f64 cases) and `NdArray<f32>`
//! (f32 cases), each held to its own bound for the root method (100 times
//! the error measured when the bounds were written; see
//! `kradagrad_burn_suite::replay`). The default device Newton roots are
//! checked on every backend by `tests/ndarray.rs` and `tests/wgpu.rs`.

use kradagrad_burn::RootMethod;
use kradagrad_burn_suite::replay::{
    bound_floor, bound_key, format_tolerance, replay, root_name, Outcome, ReplayOptions, VectorFile,
    ROOT_METHODS, WGPU,
};

/// The vector files in `tests/data`, with the number of cases each holds.
const FILES: [(&str, usize); 2] = [
    ("reference_vectors.json", 21),
    ("reference_vectors_options.json", 10),
];

fn vectors(file: &str) -> VectorFile {
    let path = format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("reference vectors");
    serde_json::from_str(&text).expect("valid vector file")
}

fn all_cases_pass(root_method: RootMethod) {
    for (file, count) in FILES {
        let vectors = vectors(file);
        assert_eq!(vectors.cases.len(), count, "{file}");
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
            "{file}: failed cases with {root_method:?}: {failures:#?}"
        );
    }
}

#[test]
fn every_case_has_its_own_bound_for_every_root_method_and_wgpu() {
    for (file, _) in FILES {
        for case in vectors(file).cases {
            let keys = ROOT_METHODS
                .into_iter()
                .map(root_name)
                .map(String::from)
                .chain([bound_key(RootMethod::Newton, WGPU)]);
            for key in keys {
                let bound = case.bounds.get(&key).copied();
                let (floor, limit) = (bound_floor(&case.dtype), format_tolerance(&case.dtype));
                assert!(
                    bound.is_some_and(|b| (floor..=limit).contains(&b)),
                    "{file}: {} has bound {bound:?} for {key}",
                    case.name
                );
            }
        }
    }
}

#[test]
fn a_two_orders_of_magnitude_regression_fails() {
    // A parameter off by 100 times the case's bound (scaled to the case's
    // largest entry) fails every case it is put in.
    for (file, _) in FILES {
        for mut case in vectors(file).cases {
            let bound = case.bound(RootMethod::EighF64);
            let scale = case.params[2].iter().fold(0.0f64, |m, v| m.max(v.abs()));
            case.params[2][0] += 100.0 * bound * scale;
            let options = ReplayOptions {
                root_method: RootMethod::EighF64,
                ..ReplayOptions::default()
            };
            let outcome = replay(&case, options);
            assert!(!outcome.passed(), "{file}: {}: {outcome:?}", case.name);
        }
    }
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
    let mut case = vectors(FILES[0].0).cases.remove(0);
    case.params[3][5] += 1e-3;
    let outcome = replay(&case, ReplayOptions::default());
    assert!(!outcome.passed(), "{outcome:?}");
    assert!(matches!(outcome, Outcome::Replayed { error, .. } if error > 1e-4));
}

#[test]
fn unknown_options_are_reported_unsupported() {
    let mut case = vectors(FILES[0].0).cases.remove(0);
    case.hyperparams
        .insert("exotic_option".into(), serde_json::json!(3));
    assert_eq!(
        replay(&case, ReplayOptions::default()),
        Outcome::Unsupported("unsupported: exotic_option".into())
    );
    let mut case = vectors(FILES[0].0).cases.remove(0);
    case.optimizer = "lion".into();
    assert!(matches!(replay(&case, ReplayOptions::default()), Outcome::Unsupported(r) if r.contains("lion")));
}
