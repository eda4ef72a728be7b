//! Measures the accuracy of the matrix roots against an f64
//! eigendecomposition oracle on random SPD matrices, and prints the markdown
//! table that `docs/algorithm.md` quotes.
//!
//! ```text
//! cargo run --release --example root_accuracy -- [--size 64] [--iterations 40]
//! ```

use burn::backend::NdArray;
use kradagrad_burn_suite::spd::newton_error;

fn main() {
    let mut size = 64;
    let mut iterations = 40;
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        match (pair[0].as_str(), pair.get(1).and_then(|v| v.parse().ok())) {
            ("--size", Some(v)) => size = v,
            ("--iterations", Some(v)) => iterations = v,
            _ => {
                eprintln!("usage: root_accuracy [--size N] [--iterations N]");
                std::process::exit(2);
            }
        }
    }
    println!("Relative spectral-norm error of the device Newton root (iterations used), d = {size}, at most {iterations} iterations\n");
    println!("| dtype | root | p | cond 1e2 | cond 1e4 | cond 1e6 | cond 1e8 |");
    println!("|---|---|---|---|---|---|---|");
    for dtype in ["f64", "f32"] {
        for inverse in [false, true] {
            for order in [2u32, 4, 6, 8] {
                let errors: Vec<String> = [1e2, 1e4, 1e6, 1e8]
                    .iter()
                    .map(|&cond| {
                        let (e, n) = match dtype {
                            "f64" => newton_error::<NdArray<f64>>(size, cond, order, inverse, iterations, 7),
                            _ => newton_error::<NdArray<f32>>(size, cond, order, inverse, iterations, 7),
                        };
                        format!("{e:.1e} ({n})")
                    })
                    .collect();
                let root = if inverse {
                    format!("A^(-1/{order})")
                } else {
                    format!("A^(1/{order})")
                };
                println!("| {dtype} | {root} | {order} | {} |", errors.join(" | "));
            }
        }
    }
}
