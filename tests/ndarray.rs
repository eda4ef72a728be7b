//! The generic optimizer tests (tests/common) on burn-ndarray.

mod common;

use burn::backend::NdArray;

backend_tests!(
    NdArray<f32>,
    NdArray<f64>,
    burn::backend::ndarray::NdArrayDevice::Cpu,
    Some(()),
    Some(()),
    bounds = kradagrad_burn_suite::replay::NDARRAY,
    resume_tolerance = None
);
