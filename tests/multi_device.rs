//! Data-parallel training on two devices against one: plain loops that
//! gather as burn-train's `MultiDeviceOptim::OptimMainDevice` and
//! `OptimSharded` do, and burn-train's `Learner` under
//! `ExecutionStrategy::MultiDevice`, for KrADagrad* and Shampoo through both
//! front ends. NdArray has one device, so its two "devices" are two replicas
//! on it (two worker threads under the `Learner`); tests/wgpu.rs runs the
//! same comparison on two wgpu devices.

use burn::backend::{Autodiff, NdArray};
use kradagrad_burn_suite::parallel::{multi_device_gaps, Problem};

type AB = Autodiff<NdArray<f32>>;

/// Largest relative gap allowed between two replicas and one device over 6
/// steps, in losses and parameters (entry by entry) and in optimizer state
/// (tensor by tensor, Frobenius). The runs differ only in the order of float
/// additions (two half-batch sums against one).
const TOLERANCE: f64 = 1e-5;

#[test]
fn two_replicas_train_as_one_device() {
    let problem = Problem {
        dims: vec![4, 24, 24, 2],
        batch: 8,
        shards: 2,
        steps: 6,
    };
    let device = Default::default();
    let directory = std::env::temp_dir().join(format!("kradagrad-multi-device-{}", std::process::id()));
    let gaps = multi_device_gaps::<AB>(&problem, &[device, device], &directory);
    for gap in &gaps {
        eprintln!(
            "{:<60} losses {:.1e}  params {:.1e}  state {:.1e}",
            gap.what, gap.gaps[0], gap.gaps[1], gap.gaps[2]
        );
    }
    for gap in &gaps {
        assert!(
            gap.gaps.iter().all(|g| g.is_nan() || *g <= TOLERANCE),
            "{}: {:?} exceeds {TOLERANCE:e}",
            gap.what,
            gap.gaps
        );
    }
}
