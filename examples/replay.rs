//! Replays a reference-vector file through the optimizers.
//!
//! ```text
//! cargo run --release --example replay -- FILE.json [--root newton|eigh|eigh-f64] [--newton-iterations N]
//! cargo run --release --example replay -- FILE.json --write-bounds OUT.json
//! ```
//! Prints one line per case and ends with `N passed, M failed`; exits with 1
//! if any case failed (an unsupported option counts as a failure). A case
//! is held to its own bound for the root method when it has one, else to the
//! format's tolerance (1e-6 for f64 cases, 1e-3 for f32 cases).
//!
//! `--write-bounds` replays every case with each root method on
//! burn-ndarray and writes the file again with each case's bounds: 100 times
//! the error measured (at least 1e-12 for f64 cases and 1e-6 for f32 cases,
//! at most the format's tolerance).
//! It refuses to write bounds for a case that fails the format's tolerance.

use kradagrad_burn_suite::replay::{
    bound_from_error, format_tolerance, replay, root_name, Outcome, ReplayOptions, VectorFile, ROOT_METHODS,
};

fn main() {
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
            "--write-bounds" => {
                write_bounds = Some(
                    args.next()
                        .unwrap_or_else(|| usage("--write-bounds needs a path")),
                )
            }
            "-h" | "--help" => usage(""),
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
    for case in &vectors.cases {
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
    for case in &mut vectors.cases {
        case.bounds.clear();
        for method in ROOT_METHODS {
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
            println!(
                "{:<28} {:<8} error {error:.3e} -> bound {bound:.1e}",
                case.name,
                root_name(method)
            );
            case.bounds.insert(root_name(method).to_string(), bound);
        }
    }
    let text = serde_json::to_string(&vectors).expect("serializable");
    std::fs::write(out, text).unwrap_or_else(|e| {
        eprintln!("error: cannot write {out}: {e}");
        std::process::exit(2)
    });
    println!("wrote {out}");
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("error: {problem}");
    }
    eprintln!(
        "usage: replay FILE.json [--root newton|eigh|eigh-f64] [--newton-iterations N] [--write-bounds OUT.json]"
    );
    std::process::exit(2)
}
