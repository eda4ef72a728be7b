//! Training past one device, in two parts.
//!
//! 1. burn-train's `Learner` under `ExecutionStrategy::MultiDevice` (with
//!    `MultiDeviceOptim::OptimSharded`) against `SingleDevice`, KrADagrad*
//!    through the whole-model front end: the per-step losses and the time
//!    per step. NdArray has one device, so its "devices" are replicas on it
//!    (`--replicas`, one worker thread each).
//! 2. Data-parallel replicas over burn-collective (one thread each, the
//!    gradients all-reduced every step) with the root refresh shared
//!    (`SharedRootsConfig`) and not: the time per step with a refresh on
//!    every step, for 1, 2 and 4 replicas.
//!
//! ```text
//! cargo run --release --example multi_device -- [--replicas 2] [--steps 8]
//! ```

use std::time::Instant;

use burn::backend::{Autodiff, NdArray};
use burn::train::{ExecutionStrategy, MultiDeviceOptim};
use kradagrad_burn::{KradagradStarConfig, SharedRootsConfig};
use kradagrad_burn_suite::cli::{exit_with_usage, flag_pairs, print_help_if_asked, value_or_usage};
use kradagrad_burn_suite::parallel::{
    batched_state, collective_replicas, learner_run, max_gap, Problem, Regressor,
};
use kradagrad_burn_suite::report::progress_bar;

type B = Autodiff<NdArray<f32>>;

const HELP: &str = "\
Usage: cargo run --release --example multi_device -- [--replicas N] [--steps N]

  --replicas N   devices (replicas) of the Learner part (default 2)
  --steps N      steps of each run (default 8)";

fn usage() -> ! {
    exit_with_usage(HELP)
}

fn main() {
    print_help_if_asked(HELP);
    let (mut replicas, mut steps) = (2usize, 8usize);
    for (flag, value) in flag_pairs().unwrap_or_else(|| usage()) {
        match flag.as_str() {
            "--replicas" => replicas = value_or_usage(&value, usage),
            "--steps" => steps = value_or_usage(&value, usage),
            _ => usage(),
        }
    }
    if replicas == 0 || steps == 0 {
        usage();
    }
    learner_part(replicas, steps);
    sharing_part(steps);
}

/// Part 1: the Learner on `replicas` devices against one.
fn learner_part(replicas: usize, steps: usize) {
    let device = Default::default();
    let problem = Problem {
        dims: vec![16, 256, 256, 4],
        batch: 32,
        shards: replicas,
        steps,
    };
    let config = KradagradStarConfig::new().with_preconditioning_compute_steps(4);
    let directory = std::env::temp_dir().join(format!("kradagrad-multi-device-{}", std::process::id()));
    let bar = progress_bar(2);
    bar.set_message("Learner runs");
    let started = Instant::now();
    let one = learner_run(
        &problem,
        ExecutionStrategy::SingleDevice(device),
        config.init_batched::<B, Regressor<B>>(),
        0.05,
        &directory,
    );
    let one_time = started.elapsed().as_secs_f64() / steps as f64;
    bar.inc(1);
    let started = Instant::now();
    let multi = learner_run(
        &problem,
        ExecutionStrategy::MultiDevice(vec![device; replicas], MultiDeviceOptim::OptimSharded),
        config.init_batched::<B, Regressor<B>>(),
        0.05,
        &directory,
    );
    let multi_time = started.elapsed().as_secs_f64() / steps as f64;
    bar.finish_and_clear();
    println!(
        "Learner, KrADagrad* (whole model), global batch {}, {steps} steps:",
        problem.batch * replicas
    );
    println!("| step | one device | {replicas} replicas (OptimSharded) |");
    println!("|---|---|---|");
    for (k, (a, b)) in one.losses.iter().zip(&multi.losses).enumerate() {
        println!("| {} | {a:.6} | {b:.6} |", k + 1);
    }
    println!(
        "time per step: one device {:.1} ms, {replicas} replicas {:.1} ms; largest relative gap: \
         losses {:.1e}, parameters {:.1e}\n",
        one_time * 1e3,
        multi_time * 1e3,
        max_gap(&one.losses, &multi.losses),
        max_gap(&one.params, &multi.params),
    );
}

/// Part 2: replicas over burn-collective, refresh shared or not.
fn sharing_part(steps: usize) {
    let device = Default::default();
    let peer_counts = [1usize, 2, 4];
    let bar = progress_bar(2 * peer_counts.len() as u64);
    bar.set_message("replicas over burn-collective");
    let mut rows = vec![];
    for peers in peer_counts {
        let problem = Problem {
            dims: vec![64, 512, 512, 64],
            batch: 16,
            shards: peers,
            steps,
        };
        // A refresh on every step: the cost a step shares.
        let config = KradagradStarConfig::new().with_preconditioning_compute_steps(1);
        let mut times = vec![];
        for shared in [false, true] {
            let started = Instant::now();
            let runs = collective_replicas::<B, _>(
                &problem,
                peers,
                &device,
                |peer| {
                    let sharing = shared.then(|| SharedRootsConfig::new(peer as u32, peers as u32));
                    config
                        .clone()
                        .with_shared_roots(sharing)
                        .init_batched::<B, Regressor<B>>()
                },
                0.05,
                batched_state,
            );
            times.push(started.elapsed().as_secs_f64() / steps as f64);
            // With a shared refresh every replica holds the same roots, so
            // the replicas stay identical.
            let spread = runs
                .iter()
                .map(|r| max_gap(&r.params, &runs[0].params))
                .fold(0.0, f64::max);
            assert!(
                !shared || spread == 0.0,
                "replicas sharing their roots drifted apart by {spread:e}"
            );
            bar.inc(1);
        }
        rows.push((peers, times[0], times[1]));
    }
    bar.finish_and_clear();
    println!(
        "Replicas over burn-collective, KrADagrad* (whole model, blocks of 128), a root refresh every step:"
    );
    println!(
        "| replicas | roots each computes | step, every root (ms) | step, shared refresh (ms) | ratio |"
    );
    println!("|---|---|---|---|---|");
    for (peers, alone, shared) in rows {
        println!(
            "| {peers} | 1/{peers} | {:.0} | {:.0} | {:.2}x |",
            alone * 1e3,
            shared * 1e3,
            alone / shared
        );
    }
    println!(
        "(threads on one machine share its cores: {} here)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
}
