//! Replays a reference-vector file through the optimizers.
//!
//! ```text
//! cargo run --release --example replay -- FILE.json [--root newton|eigh|eigh-f64] [--newton-iterations N]
//! ```
//! Prints one line per case and ends with `N passed, M failed`; exits with 1
//! if any case failed (an unsupported option counts as a failure).

use kradagrad_burn::RootMethod;
use kradagrad_burn_suite::replay::{replay, Outcome, ReplayOptions, VectorFile};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut file = None;
    let mut options = ReplayOptions::default();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--root" => {
                options.root_method = match args.next().as_deref() {
                    Some("newton") => RootMethod::Newton,
                    Some("eigh") => RootMethod::Eigh,
                    Some("eigh-f64") => RootMethod::EighF64,
                    other => usage(&format!("unknown --root {other:?}")),
                }
            }
            "--newton-iterations" => {
                options.newton_iterations = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage("--newton-iterations needs a number"))
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
    let (mut passed, mut failed) = (0, 0);
    for case in &vectors.cases {
        let outcome = replay(case, options);
        let verdict = if outcome.passed() { "ok  " } else { "FAIL" };
        match &outcome {
            Outcome::Replayed { error, tolerance } => println!(
                "{verdict} {:<28} {:<15} {:<4} error {error:.3e} (tolerance {tolerance:.0e})",
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

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("error: {problem}");
    }
    eprintln!("usage: replay FILE.json [--root newton|eigh|eigh-f64] [--newton-iterations N]");
    std::process::exit(2)
}
