//! Examples and integration tests for kradagrad-burn.
