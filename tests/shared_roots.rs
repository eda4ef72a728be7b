//! Root refreshes shared by data-parallel replicas over burn-collective
//! (`SharedRootsConfig`), on NdArray replicas in threads: the shared
//! refresh gives every replica exactly the roots it would compute alone,
//! replicas that all-reduce their gradients train as one device does, and a
//! replica that never joins a refresh ends the others with a clear error
//! instead of a hang. The tests hold one lock: burn-collective keeps one
//! collective server per backend type in a process.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use burn::backend::{Autodiff, NdArray};
use kradagrad_burn::{KradagradStarConfig, ShampooConfig, SharedRootsConfig};
use kradagrad_burn_suite::parallel::{
    adaptor_state, batched_state, collective_replicas, plain_run, Gather, Problem, Regressor, Run,
};

type AB = Autodiff<NdArray<f32>>;

static COLLECTIVE: Mutex<()> = Mutex::new(());

fn problem(shards: usize) -> Problem {
    Problem {
        dims: vec![6, 40, 24, 3],
        batch: 8,
        shards,
        steps: 5,
    }
}

/// Runs of `$peers` replicas on `$shards` shards (see `replica_run`) of
/// `$config`, with `with_shared_roots` as `$shared` gives it for each peer,
/// through the front end `$init`.
macro_rules! replicas {
    ($peers:expr, $shards:expr, $config:expr, $init:ident, $state:ident, $shared:expr) => {{
        let device = Default::default();
        let peers = $peers;
        let shared = $shared;
        collective_replicas::<AB, _>(
            &problem($shards),
            peers,
            &device,
            |peer| {
                $config
                    .clone()
                    .with_shared_roots(shared(peer, peers))
                    .$init::<AB, Regressor<AB>>()
            },
            0.05,
            $state,
        )
    }};
}

fn shared(peer: usize, peers: usize) -> Option<SharedRootsConfig> {
    Some(SharedRootsConfig::new(peer as u32, peers as u32).with_timeout_secs(20.0))
}

fn alone(_: usize, _: usize) -> Option<SharedRootsConfig> {
    None
}

/// Every replica's run with shared roots equals, bit for bit, its run
/// computing every root itself; and all replicas end the same. The
/// replicas hold the same gradients (one shard), so that only the roots'
/// computation differs between the two.
fn assert_bitwise(name: &str, with: &[Run], without: &[Run]) {
    let same =
        |x: &[f64], y: &[f64]| x.len() == y.len() && x.iter().zip(y).all(|(u, v)| u.to_bits() == v.to_bits());
    for (peer, (a, b)) in with.iter().zip(without).enumerate() {
        let [losses, params, state] = a.gaps(b);
        assert!(
            same(&a.losses, &b.losses),
            "{name}, peer {peer}: losses differ by {losses:e}"
        );
        assert!(
            same(&a.params, &b.params),
            "{name}, peer {peer}: parameters differ by {params:e}"
        );
        let states = a.state.len() == b.state.len() && a.state.iter().zip(&b.state).all(|(x, y)| same(x, y));
        assert!(
            states,
            "{name}, peer {peer}: optimizer state differs by {state:e}"
        );
        assert!(
            same(&a.params, &with[0].params),
            "{name}: peer {peer} differs from peer 0"
        );
    }
}

#[test]
fn shared_refreshes_give_every_replica_its_own_roots_bit_for_bit() {
    let _collective = COLLECTIVE.lock().unwrap_or_else(|p| p.into_inner());
    let star = || {
        KradagradStarConfig::new()
            .with_block_size(Some(16))
            .with_preconditioning_compute_steps(2)
    };
    let shampoo = || {
        ShampooConfig::new()
            .with_block_size(Some(16))
            .with_preconditioning_compute_steps(2)
    };
    for peers in [2, 3] {
        let with = replicas!(peers, 1, star(), init, adaptor_state, shared);
        let without = replicas!(peers, 1, star(), init, adaptor_state, alone);
        assert_bitwise(
            &format!("KrADagrad* per-parameter, {peers} peers"),
            &with,
            &without,
        );
        let with = replicas!(peers, 1, star(), init_batched, batched_state, shared);
        let without = replicas!(peers, 1, star(), init_batched, batched_state, alone);
        assert_bitwise(&format!("KrADagrad* batched, {peers} peers"), &with, &without);
        let with = replicas!(peers, 1, shampoo(), init, adaptor_state, shared);
        let without = replicas!(peers, 1, shampoo(), init, adaptor_state, alone);
        assert_bitwise(&format!("Shampoo per-parameter, {peers} peers"), &with, &without);
        let with = replicas!(peers, 1, shampoo(), init_batched, batched_state, shared);
        let without = replicas!(peers, 1, shampoo(), init_batched, batched_state, alone);
        assert_bitwise(&format!("Shampoo batched, {peers} peers"), &with, &without);
    }
}

/// Replicas that all-reduce their gradients over burn-collective, with
/// shared refreshes, train as one device at the global batch: losses and
/// parameters within 1e-5 relative, state within 1e-5 (Frobenius); the runs
/// differ only in the order of float additions (measured: 1.3e-7).
#[test]
fn collective_replicas_with_shared_roots_train_as_one_device() {
    let _collective = COLLECTIVE.lock().unwrap_or_else(|p| p.into_inner());
    let device = burn::backend::ndarray::NdArrayDevice::Cpu;
    let star = KradagradStarConfig::new()
        .with_block_size(Some(16))
        .with_preconditioning_compute_steps(2);
    let check = |front_end: &str, one: Run, replicas: Vec<Run>| {
        let gaps = one.gaps(&replicas[0]);
        eprintln!("KrADagrad* {front_end}, 2 replicas against one device: {gaps:?}");
        assert!(gaps.iter().all(|g| *g <= 1e-5), "{front_end}: {gaps:?}");
    };
    let one_device = [device];
    check(
        "per-parameter",
        plain_run(
            &problem(2),
            &one_device,
            Gather::MainDevice,
            star.init::<AB, Regressor<AB>>(),
            0.05,
            adaptor_state,
        ),
        replicas!(2, 2, star, init, adaptor_state, shared),
    );
    check(
        "batched",
        plain_run(
            &problem(2),
            &one_device,
            Gather::MainDevice,
            star.init_batched::<AB, Regressor<AB>>(),
            0.05,
            batched_state,
        ),
        replicas!(2, 2, star, init_batched, batched_state, shared),
    );
}

/// A replica that registers and then never steps: the other's first shared
/// refresh fails after its timeout with a message naming the setting,
/// well within a bounded time.
#[test]
fn a_replica_that_never_joins_fails_the_others_clearly() {
    use burn::collective::{register, reset_collective, CollectiveConfig, PeerId};
    type Inner = NdArray<f32>;
    let _collective = COLLECTIVE.lock().unwrap_or_else(|p| p.into_inner());
    reset_collective::<Inner>();
    let device = Default::default();
    let config = CollectiveConfig::default().with_num_devices(2);
    let started = Instant::now();
    let message = std::thread::scope(|scope| {
        let quitter = scope.spawn(|| register::<Inner>(PeerId(1), device, config.clone()));
        let stepper = scope.spawn(|| {
            register::<Inner>(PeerId(0), device, config.clone()).expect("peer 0 registers");
            let shared = SharedRootsConfig::new(0, 2).with_timeout_secs(2.0);
            let optimizer = KradagradStarConfig::new()
                .with_block_size(Some(16))
                .with_preconditioning_compute_steps(2)
                .with_shared_roots(Some(shared))
                .init::<AB, Regressor<AB>>();
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                plain_run(
                    &problem(1),
                    &[device],
                    Gather::MainDevice,
                    optimizer,
                    0.05,
                    |_, _| vec![],
                )
            }))
        });
        quitter
            .join()
            .expect("peer 1 registers")
            .expect("peer 1 registers");
        let outcome = stepper.join().expect("peer 0's thread");
        match outcome {
            Ok(_) => panic!("peer 0 must fail without its peer"),
            Err(payload) => kradagrad_burn_suite::backends::panic_text(payload.as_ref()).unwrap_or_default(),
        }
    });
    let elapsed = started.elapsed();
    reset_collective::<Inner>();
    assert!(
        message.contains("shared_roots.timeout_secs") && message.contains("did not join"),
        "unclear message: {message}"
    );
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
}
