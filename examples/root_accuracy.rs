//! Measures the accuracy of the matrix roots against an f64
//! eigendecomposition oracle on random SPD matrices (eigenvalues log-spaced
//! from 1 to 1/cond, random eigenvectors), and prints the markdown tables that
//! `docs/algorithm.md` quotes.
//!
//! ```text
//! cargo run --release --example root_accuracy -- [--size 64] [--iterations 40]
//! ```

use burn::backend::NdArray;
use kradagrad_burn::RootMethod;
use kradagrad_burn_suite::cli::{exit_with_usage, flag_pairs, print_help_if_asked};
use kradagrad_burn_suite::spd::{newton_error, root_error};

/// `--help`: what the example does, its flags and their defaults.
const HELP: &str = "\
root_accuracy: the accuracy of the matrix roots (device Newton iterations, and host
eigendecompositions) against an f64 oracle on random SPD matrices, by dtype, root
and condition number; prints the markdown tables docs/algorithm.md quotes.

usage: root_accuracy [--size N] [--iterations N]

  --size N         [64] matrix size
  --iterations N   [40] cap on the Newton iterations per stage
  -h, --help       this text
";

fn main() {
    let mut size = 64;
    let mut iterations = 40;
    print_help_if_asked(HELP);
    for (flag, value) in flag_pairs().unwrap_or_else(|| exit_with_usage(HELP)) {
        match (flag.as_str(), value.parse().ok()) {
            ("--size", Some(v)) => size = v,
            ("--iterations", Some(v)) => iterations = v,
            _ => exit_with_usage(HELP),
        }
    }
    println!(
        "Relative spectral-norm error of RootMethod::Newton (iterations used, all stages), \
         d = {size}, at most {iterations} iterations per stage, seed 7\n"
    );
    println!("| dtype | root | cond 1e2 | cond 1e4 | cond 1e6 | cond 1e8 |");
    println!("|---|---|---|---|---|---|");
    for dtype in ["f64", "f32"] {
        for inverse in [false, true] {
            for order in [2u32, 4, 6, 8] {
                let cells: Vec<String> = [1e2, 1e4, 1e6, 1e8]
                    .iter()
                    .map(|&cond| {
                        let (e, n) = match dtype {
                            "f64" => newton_error::<NdArray<f64>>(size, cond, order, inverse, iterations, 7),
                            _ => newton_error::<NdArray<f32>>(size, cond, order, inverse, iterations, 7),
                        };
                        format!("{e:.1e} ({n})")
                    })
                    .collect();
                let sign = if inverse { "-" } else { "" };
                println!("| {dtype} | A^({sign}1/{order}) | {} |", cells.join(" | "));
            }
        }
    }
    println!("\nf32 positive 4th root at condition 1e8 by size: device Newton vs an fp32 host");
    println!("eigendecomposition (RootMethod::Eigh), worst and median over seeds 0..6\n");
    println!("| d | Newton worst | Newton median | fp32 eigh worst | fp32 eigh median |");
    println!("|---|---|---|---|---|");
    for d in [16, 32, 64, 128] {
        let stats = |method: RootMethod| {
            let mut e: Vec<f64> = (0..6)
                .map(|seed| root_error::<NdArray<f32>>(d, 1e8, 4, false, method, iterations, seed))
                .collect();
            e.sort_by(f64::total_cmp);
            (e[5], (e[2] + e[3]) / 2.0)
        };
        let (nw, nm) = stats(RootMethod::Newton);
        let (ew, em) = stats(RootMethod::Eigh);
        println!("| {d} | {nw:.1e} | {nm:.1e} | {ew:.1e} | {em:.1e} |");
    }
}
