//! Replays a reference-vector file through the optimizers.
//!
//! ```text
//! cargo run --release --example replay -- FILE.json [--root newton|eigh|eigh-f64] [--newton-iterations N] [--backend ndarray|wgpu]
//! cargo run --release --example replay -- FILE.json [--backend ndarray|wgpu] --write-bounds OUT.json
//! ```
//! Prints one line per case and ends with `N passed, M failed`; exits with 1
//! if any case failed (an unsupported option counts as a failure). A case
//! is held to its own bound for the root method when it has one, else to the
//! format's tolerance (1e-6 for f64 cases, 1e-3 for f32 cases).
//!
//! `--write-bounds` replays every case with each root method on the backend
//! (burn-ndarray by default) and writes the file again with each case's
//! bounds for that backend: 100 times the error measured (at least 1e-12 for
//! f64 cases and 1e-6 for f32 cases, at most the format's tolerance). On
//! wgpu, only the default Newton roots (the eigendecomposition runs on the
//! host either way); bounds measured elsewhere are kept.
//! It refuses to write bounds for a case that fails the format's tolerance.

use kradagrad_burn::RootMethod;
use kradagrad_burn_suite::cli::{exit_with_usage, print_help_if_asked};
use kradagrad_burn_suite::replay::{
    bound_from_error, bound_key, format_tolerance, replay, root_name, Outcome, ReplayOptions, VectorFile,
    NDARRAY, ROOT_METHODS, WGPU,
};

fn main() {
    print_help_if_asked(HELP);
    let mut args = std::env::args().skip(1);
    let mut file = None;
    let mut write_bounds = None;
    let mut options = ReplayOptions::default();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--root" => {
                let name = args.next();
                options.root_method = ROOT_METHODS
                    .into_iter()
                    .find(|&m| Some(root_name(m)) == name.as_deref())
                    .unwrap_or_else(|| usage(&format!("unknown --root {name:?}")));
            }
            "--newton-iterations" => {
                options.newton_iterations = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage("--newton-iterations needs a number"))
            }
            "--backend" => {
                options.backend = match args.next().as_deref() {
                    Some("ndarray") => NDARRAY,
                    Some("wgpu") => WGPU,
                    other => usage(&format!("unknown --backend {other:?}")),
                }
            }
            "--write-bounds" => {
                write_bounds = Some(
                    args.next()
                        .unwrap_or_else(|| usage("--write-bounds needs a path")),
                )
            }
            _ if file.is_none() => file = Some(arg),
            _ => usage(&format!("unexpected argument {arg}")),
        }
    }
    let file = file.unwrap_or_else(|| usage("missing FILE.json"));
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
        eprintln!("error: cannot read {file}: {e}");
        std::process::exit(2)
    });
    let vectors: VectorFile = serde_json::from_str(&text).unwrap_or_else(|e| {
        eprintln!("error: {file} is not a reference-vector file: {e}");
        std::process::exit(2)
    });
    match write_bounds {
        Some(out) => write_bounds_to(vectors, &out, options),
        None => check(&vectors, options),
    }
}

/// Replays every case against its bound and reports; exits with 1 on a failure.
fn check(vectors: &VectorFile, options: ReplayOptions) {
    let (mut passed, mut failed) = (0, 0);
    for case in f32_first(vectors).map(|c| &vectors.cases[c]) {
        let outcome = replay(case, options);
        let verdict = if outcome.passed() { "ok  " } else { "FAIL" };
        match &outcome {
            Outcome::Replayed { error, tolerance } => println!(
                "{verdict} {:<28} {:<15} {:<4} error {error:.3e} (bound {tolerance:.1e})",
                case.name, case.optimizer, case.dtype
            ),
            Outcome::Unsupported(reason) => {
                println!(
                    "{verdict} {:<28} {:<15} {:<4} {reason}",
                    case.name, case.optimizer, case.dtype
                )
            }
        }
        if outcome.passed() {
            passed += 1
        } else {
            failed += 1
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

/// Measures every case with every root method and writes the file with the
/// bounds beside each case.
fn write_bounds_to(mut vectors: VectorFile, out: &str, options: ReplayOptions) {
    let methods: &[RootMethod] = match options.backend {
        NDARRAY => &ROOT_METHODS,
        _ => &[RootMethod::Newton],
    };
    for c in f32_first(&vectors).collect::<Vec<_>>() {
        let case = &mut vectors.cases[c];
        for &method in methods {
            let run = ReplayOptions {
                root_method: method,
                ..options
            };
            let error = match replay(case, run) {
                Outcome::Replayed { error, .. } if error <= format_tolerance(&case.dtype) => error,
                outcome => {
                    eprintln!(
                        "error: {} with {}: {outcome:?}; no bound written",
                        case.name,
                        root_name(method)
                    );
                    std::process::exit(1)
                }
            };
            let bound = bound_from_error(error, &case.dtype);
            let key = bound_key(method, options.backend);
            println!(
                "{:<28} {key:<14} error {error:.3e} -> bound {bound:.1e}",
                case.name
            );
            case.bounds.insert(key, bound);
        }
    }
    let text = serde_json::to_string(&vectors).expect("serializable");
    std::fs::write(out, text).unwrap_or_else(|e| {
        eprintln!("error: cannot write {out}: {e}");
        std::process::exit(2)
    });
    println!("wrote {out}");
}

/// The indices of the cases, f32 cases first: Burn 0.21 creates some tensors
/// in the device's default float type, set by the first backend used on the
/// device in the process; on wgpu, an f64 default then reaches Burn's f32
/// fusion, which has no f64 and panics.
fn f32_first(vectors: &VectorFile) -> impl Iterator<Item = usize> {
    let mut order: Vec<usize> = (0..vectors.cases.len()).collect();
    order.sort_by_key(|&c| vectors.cases[c].dtype != "f32");
    order.into_iter()
}

/// `--help`: what the example does, its flags and their defaults.
const HELP: &str = "\
replay: replays trajectories from the authors' implementation (a reference-vector
JSON file, such as tests/data/reference_vectors.json) through the public API. Prints
one line per case and 'N passed, M failed'; exits with 1 if any case failed.

usage: replay FILE.json [--root newton|eigh|eigh-f64] [--newton-iterations N] [--backend ndarray|wgpu]
       replay FILE.json [--backend ndarray|wgpu] --write-bounds OUT.json

  --root METHOD            [newton] the root method
  --newton-iterations N    [40] cap per Newton stage
  --backend ndarray|wgpu   [ndarray]
  --write-bounds OUT.json  replay with every root method and write the file again
                           with each case's bounds (100x the error measured)
  -h, --help               this text
";

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("error: {problem}");
    }
    exit_with_usage(HELP)
}
