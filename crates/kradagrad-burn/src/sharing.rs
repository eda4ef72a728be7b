//! Root refreshes shared by data-parallel replicas
//! ([`SharedRootsConfig`](crate::SharedRootsConfig)): the matrices of a
//! refresh are split into one contiguous share per replica, even in FLOPs;
//! each replica computes the roots of its own share, and one burn-collective
//! all-reduce gives every replica all of them.

use std::ops::Range;

use burn::tensor::{backend::Backend, Tensor};

use crate::roots::{matrix_roots, NewtonSchedule, RootMethod, RootSpec};

/// Each peer's share of a refresh: per peer, per input stack, the range of
/// the stack's matrices it computes. Matrices are taken in order (stack by
/// stack, matrix by matrix) and a matrix of size `d` costs `d^3` (every
/// method is cubic in `d`, with the same iteration count for every size):
/// peer `p` takes the matrices whose cost midpoint falls in the `p`-th of
/// `peers` equal parts of the total, so every share is within one matrix of
/// `1 / peers` of the work.
pub(crate) fn partition(stacks: &[(usize, usize)], peers: usize) -> Vec<Vec<Range<usize>>> {
    let cost = |d: usize| (d as f64).powi(3);
    let total: f64 = stacks.iter().map(|&(n, d)| n as f64 * cost(d)).sum();
    let owner = |midpoint: f64| ((midpoint / total * peers as f64) as usize).min(peers - 1);
    let mut shares = vec![vec![0..0; stacks.len()]; peers];
    let mut done = 0.0;
    for (s, &(n, d)) in stacks.iter().enumerate() {
        for m in 0..n {
            let p = owner(done + cost(d) / 2.0);
            let range = &mut shares[p][s];
            let start = if range.start == range.end { m } else { range.start };
            *range = start..m + 1;
            done += cost(d);
        }
    }
    shares
}

/// [`matrix_roots`] of `inputs` (stacks `[n, d, d]`) with the work shared
/// by `peers` replicas, as replica `peer`: the roots of its share, then an
/// exchange of every share through burn-collective. Returns every root, the
/// same as [`matrix_roots`] would on each replica alone.
pub(crate) fn shared_matrix_roots<B: Backend>(
    inputs: Vec<(Tensor<B, 3>, RootSpec)>,
    method: RootMethod,
    schedule: NewtonSchedule,
    shared: &crate::SharedRootsConfig,
) -> Vec<Tensor<B, 3>> {
    let dims: Vec<(usize, usize)> = inputs.iter().map(|(t, _)| (t.dims()[0], t.dims()[1])).collect();
    let shares = partition(&dims, shared.peers as usize);
    let mine = &shares[shared.peer as usize];
    let (device, dtype) = (inputs[0].0.device(), inputs[0].0.dtype());
    let own_inputs: Vec<_> = inputs
        .iter()
        .zip(mine)
        .filter(|(_, range)| !range.is_empty())
        .map(|((stack, spec), range)| (stack.clone().narrow(0, range.start, range.len()), *spec))
        .collect();
    let mut own_roots = matrix_roots(own_inputs, method, schedule).into_iter();

    // The contribution: every stack's segment, this peer's roots at their
    // place and -0.0 elsewhere. x + (-0.0) == x bit for bit for every x
    // (+0.0 and -0.0 included), so the sum over peers, in any order, is
    // each root exactly as its owner computed it.
    let mut segments = vec![];
    for (&(n, d), range) in dims.iter().zip(mine) {
        let filler = |count: usize| Tensor::<B, 1>::full([count * d * d], -0.0, &device).cast(dtype);
        // An empty share is `0..0`: the whole segment is filler.
        if range.start > 0 {
            segments.push(filler(range.start));
        }
        if !range.is_empty() {
            let roots = own_roots.next().expect("one root stack per own share");
            segments.push(roots.reshape([range.len() * d * d]));
        }
        if range.end < n {
            segments.push(filler(n - range.end));
        }
    }
    let contribution = Tensor::cat(segments, 0);
    let all = match shared.peers {
        1 => contribution,
        _ => exchange::all_reduce_sum(contribution, shared),
    };
    let mut offset = 0;
    dims.iter()
        .map(|&(n, d)| {
            let len = n * d * d;
            let stack = all.clone().narrow(0, offset, len).reshape([n, d, d]);
            offset += len;
            stack
        })
        .collect()
}

#[cfg(feature = "collective")]
mod exchange {
    use std::sync::mpsc;
    use std::time::Duration;

    use burn::collective::{all_reduce, PeerId, ReduceOperation};
    use burn::tensor::{backend::Backend, Tensor, TensorPrimitive};

    use crate::SharedRootsConfig;

    /// The sum of `tensor` over every peer, through burn-collective. The call
    /// runs on a thread of its own so that a peer that never joins (failed,
    /// left, or stepping other parameters) ends this one with an error after
    /// `timeout_secs` instead of blocking it for ever.
    pub(super) fn all_reduce_sum<B: Backend>(
        tensor: Tensor<B, 1>,
        shared: &SharedRootsConfig,
    ) -> Tensor<B, 1> {
        let (peer, peers) = (shared.peer, shared.peers);
        let primitive = tensor.into_primitive().tensor();
        let (sender, receiver) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("kradagrad-roots-{peer}"))
            .spawn(move || {
                let _ = sender.send(all_reduce::<B>(PeerId(peer), primitive, ReduceOperation::Sum));
            })
            .expect("kradagrad-burn: could not start the root exchange thread");
        match receiver.recv_timeout(Duration::from_secs_f64(shared.timeout_secs)) {
            Ok(Ok(sum)) => Tensor::from_primitive(TensorPrimitive::Float(sum)),
            Ok(Err(error)) => panic!(
                "kradagrad-burn: the shared root refresh of peer {peer} (of {peers}) failed in \
                 burn-collective: {error:?}. Every replica must register with burn-collective \
                 (the inner backend, {peers} devices in all) before its first step and step the \
                 same parameters."
            ),
            Err(_) => panic!(
                "kradagrad-burn: the shared root refresh of peer {peer} waited {} s \
                 (shared_roots.timeout_secs) for the other {} peer(s), which did not join: a \
                 replica failed, left, or is not stepping the same parameters.",
                shared.timeout_secs,
                peers - 1
            ),
        }
    }
}

#[cfg(not(feature = "collective"))]
mod exchange {
    use burn::tensor::{backend::Backend, Tensor};

    /// Unreachable: config validation refuses shared roots without the
    /// `collective` feature.
    pub(super) fn all_reduce_sum<B: Backend>(_: Tensor<B, 1>, _: &crate::SharedRootsConfig) -> Tensor<B, 1> {
        unreachable!("shared roots need the `collective` feature (checked by config validation)")
    }
}

#[cfg(test)]
mod tests {
    use super::partition;

    #[test]
    fn shares_cover_every_matrix_once_and_balance_flops() {
        let stacks = [(5, 32), (1, 128), (40, 8), (0, 16), (3, 64)];
        for peers in 1..=6 {
            let shares = partition(&stacks, peers);
            let mut flops = vec![0.0; peers];
            for (s, &(n, d)) in stacks.iter().enumerate() {
                let mut seen = vec![0; n];
                for (p, share) in shares.iter().enumerate() {
                    for m in share[s].clone() {
                        seen[m] += 1;
                        flops[p] += (d as f64).powi(3);
                    }
                }
                assert!(
                    seen.iter().all(|&c| c == 1),
                    "{peers} peers: stack {s} covered {seen:?}"
                );
            }
            let total: f64 = flops.iter().sum();
            let largest = 128f64.powi(3);
            for f in &flops {
                assert!(
                    (f - total / peers as f64).abs() <= largest,
                    "{peers} peers: shares {flops:?} of {total}"
                );
            }
        }
    }
}
