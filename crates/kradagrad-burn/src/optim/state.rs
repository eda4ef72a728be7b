//! Optimizer state shared by the three optimizers and both front ends: Burn
//! `Record`s.

use burn::record::Record;
use burn::tensor::{backend::Backend, DType, Tensor};

use crate::layout::BlockLayout;
use crate::roots::batch_identity;

/// What a state was written for: the optimizer and the config fields that
/// decide its layout. A state is checked against it when it is used again,
/// so that one loaded into another optimizer (KrADagrad*'s inverse
/// statistics read as Shampoo's statistics, say) or under another layout is
/// a clear error rather than a silent misreading.
#[derive(Record, Clone, Debug, PartialEq, Eq)]
pub struct StateOrigin {
    /// `KradagradStar`, `Kradagrad` or `Shampoo`.
    pub optimizer: String,
    /// The config's `block_size`.
    pub block_size: Option<usize>,
    /// The config's `merge_dims`.
    pub merge_dims: bool,
}

impl StateOrigin {
    /// Panics, naming both sides, unless `self` (read from a state) is `expected`.
    pub(crate) fn check(&self, expected: &StateOrigin, what: &str) {
        if self != expected {
            panic!(
                "kradagrad-burn: {what} was written by {} and is used by {}. Start from a fresh \
                 state, or load it into the optimizer and layout it was written by.",
                self.describe(),
                expected.describe()
            );
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} (block_size {:?}, merge_dims {})",
            self.optimizer, self.block_size, self.merge_dims
        )
    }
}

/// The factors of one region of equally shaped blocks (see [`crate::layout`]):
/// for every merged dim `i`, a `[blocks, d_i, d_i]` batch.
#[derive(Record, Clone, Debug)]
pub struct FactorGroup<B: Backend> {
    /// The statistic per dim: `S_i` (inverse statistic, KrAD) or `L_i` (Shampoo).
    pub statistics: Vec<Tensor<B, 3>>,
    /// The preconditioner per dim, last computed from `statistics`.
    pub roots: Vec<Tensor<B, 3>>,
}

impl<B: Backend> FactorGroup<B> {
    /// The factors of `blocks` fresh blocks of shape `block_dims`: statistics
    /// `scale * I`, roots `I`, in `dtype`.
    pub(crate) fn initial(
        blocks: usize,
        block_dims: &[usize],
        scale: f64,
        device: &B::Device,
        dtype: DType,
    ) -> Self {
        let eyes: Vec<_> = block_dims
            .iter()
            .map(|&d| batch_identity::<B>(blocks, d, device, dtype))
            .collect();
        Self {
            statistics: eyes.iter().map(|e| e.clone().mul_scalar(scale)).collect(),
            roots: eyes,
        }
    }

    /// Applies `f` to every statistic and root (a move between devices or
    /// backends).
    pub(crate) fn map<C: Backend>(self, f: impl Fn(Tensor<B, 3>) -> Tensor<C, 3>) -> FactorGroup<C> {
        FactorGroup {
            statistics: self.statistics.into_iter().map(&f).collect(),
            roots: self.roots.into_iter().map(&f).collect(),
        }
    }

    /// What does not fit, if the group does not hold one statistic and one
    /// root of shape `[blocks, d_i, d_i]` per entry `d_i` of `block_dims`.
    pub(crate) fn mismatch(&self, blocks: usize, block_dims: &[usize]) -> Option<String> {
        let rank = block_dims.len();
        if self.statistics.len() != rank || self.roots.len() != rank {
            return Some(format!(
                "factors for rank {} stored, rank {rank} expected",
                self.statistics.len()
            ));
        }
        for (i, &d) in block_dims.iter().enumerate() {
            let expected = [blocks, d, d];
            for t in [&self.statistics[i], &self.roots[i]] {
                if t.dims() != expected {
                    return Some(format!(
                        "a factor of shape {:?} stored, {expected:?} expected",
                        t.dims()
                    ));
                }
            }
        }
        None
    }

    /// Bytes held by the statistics and roots (reads shapes only).
    pub fn size_bytes(&self) -> usize {
        self.statistics.iter().chain(&self.roots).map(tensor_bytes).sum()
    }
}

/// The factors of the parameters stacked in one schedule class (see
/// [`BatchedOptimizer`](super::BatchedOptimizer)), or of one parameter.
#[derive(Record, Clone, Debug)]
pub struct ClassState<B: Backend> {
    /// Step counter, as [`PreconditionerState::step`].
    pub step: usize,
    /// One factor group per distinct block shape of the class.
    pub groups: Vec<FactorGroup<B>>,
    /// KrADagrad only: the dims updated since their roots were last computed.
    pub stale_dims: Vec<bool>,
}

impl<B: Backend> ClassState<B> {
    /// Applies `f` to every factor tensor (a move between devices or backends).
    pub(crate) fn map<C: Backend>(self, f: impl Fn(Tensor<B, 3>) -> Tensor<C, 3>) -> ClassState<C> {
        ClassState {
            step: self.step,
            groups: self.groups.into_iter().map(|g| g.map(&f)).collect(),
            stale_dims: self.stale_dims,
        }
    }
}

/// What does not fit, if `groups` and `stale_dims` are not the factors of
/// blocks laid out as `expected` (`(blocks, block_dims)` per group) with
/// `stale_rank` stale-dim flags (`None`: not checked).
pub(crate) fn factors_mismatch<B: Backend>(
    groups: &[FactorGroup<B>],
    stale_dims: &[bool],
    expected: &[(usize, &[usize])],
    stale_rank: Option<usize>,
) -> Option<String> {
    if groups.len() != expected.len() {
        return Some(format!(
            "{} factor groups stored, {} expected",
            groups.len(),
            expected.len()
        ));
    }
    if let Some(what) = groups
        .iter()
        .zip(expected)
        .find_map(|(group, &(blocks, block_dims))| group.mismatch(blocks, block_dims))
    {
        return Some(what);
    }
    match stale_rank {
        Some(rank) if stale_dims.len() != rank => Some(format!(
            "{} stale-dim flags stored, {rank} expected",
            stale_dims.len()
        )),
        _ => None,
    }
}

/// Bytes held by a tensor (reads its shape and dtype only).
pub(crate) fn tensor_bytes<B: Backend, const R: usize>(t: &Tensor<B, R>) -> usize {
    t.shape().num_elements() * t.dtype().size()
}

/// State of one parameter, for all three optimizers.
#[derive(Record, Clone, Debug)]
pub struct PreconditionerState<B: Backend, const D: usize> {
    /// Step counter: `tau` of KrADagrad* and Shampoo (counted from 1, incremented
    /// before use), `t` of KrADagrad (counted from 0, incremented after the step).
    pub step: usize,
    /// One factor group per region of the parameter's [`BlockLayout`].
    pub groups: Vec<FactorGroup<B>>,
    /// KrADagrad only: the dims whose statistic changed since their roots were
    /// last computed (empty for the other optimizers).
    pub stale_dims: Vec<bool>,
    /// Graft accumulator (AdaGrad's `a` or Adam's `v`), if the grafting has one.
    pub graft: Option<Tensor<B, D>>,
    /// Momentum buffer, if momentum is on.
    pub momentum: Option<Tensor<B, D>>,
    /// What the state was written for (`None` in states saved before this
    /// field existed, which are checked by their tensor shapes only).
    pub origin: Option<StateOrigin>,
}

impl<B: Backend, const D: usize> PreconditionerState<B, D> {
    /// A fresh state: statistics `scale * I`, roots `I`, no buffers, in `dtype`.
    pub(crate) fn new(
        layout: &BlockLayout,
        origin: StateOrigin,
        scale: f64,
        stale: bool,
        device: &B::Device,
        dtype: DType,
    ) -> Self {
        let groups = layout
            .regions
            .iter()
            .map(|region| FactorGroup::initial(region.num_blocks(), &region.block_dims, scale, device, dtype))
            .collect();
        Self {
            step: 0,
            groups,
            stale_dims: if stale { vec![false; layout.rank()] } else { vec![] },
            graft: None,
            momentum: None,
            origin: Some(origin),
        }
    }

    /// Panics with a clear message when the state (e.g. loaded from a
    /// checkpoint) was written by another optimizer or layout than `origin`,
    /// or does not fit the parameter's layout.
    pub(crate) fn check_fits(&self, layout: &BlockLayout, origin: &StateOrigin, stale: bool) {
        if let Some(written) = &self.origin {
            written.check(
                origin,
                &format!("the optimizer state of the parameter of shape {:?}", layout.shape),
            );
        }
        let mismatch = |what: String| -> ! {
            panic!(
                "kradagrad-burn: the optimizer state does not match the parameter of shape {:?} \
                 (merged dims {:?}): {what}. Was it saved with another parameter or another \
                 block_size/merge_dims?",
                layout.shape, layout.dims
            )
        };
        if let Some(what) = self.factors_mismatch(layout, stale) {
            mismatch(what);
        }
        for buffer in [&self.graft, &self.momentum].into_iter().flatten() {
            if buffer.dims().to_vec() != layout.shape {
                mismatch(format!("a buffer of shape {:?} stored", buffer.dims()));
            }
        }
    }

    /// What does not fit, if the factors (and, with `stale`, KrADagrad's
    /// pending-root flags) are not those of a parameter laid out as `layout`.
    pub(crate) fn factors_mismatch(&self, layout: &BlockLayout, stale: bool) -> Option<String> {
        let expected: Vec<_> = layout
            .regions
            .iter()
            .map(|region| (region.num_blocks(), region.block_dims.as_slice()))
            .collect();
        factors_mismatch(
            &self.groups,
            &self.stale_dims,
            &expected,
            stale.then_some(layout.rank()),
        )
    }

    /// Bytes held by the state's tensors: statistics, roots and the graft and
    /// momentum buffers (Adam, for comparison, holds two parameter-sized
    /// buffers). Reads shapes only, no device synchronisation.
    pub fn size_bytes(&self) -> usize {
        let factors: usize = self.groups.iter().map(FactorGroup::size_bytes).sum();
        let buffers: usize = [&self.graft, &self.momentum]
            .into_iter()
            .flatten()
            .map(tensor_bytes)
            .sum();
        factors + buffers
    }

    /// The state in float type `dtype`: unchanged when its tensors have it.
    /// Burn creates the tensors of a loaded record in the device's default
    /// float type, which one process shares between backends of different
    /// precisions; the state follows the parameter's instead. Reads the
    /// tensors' dtypes only (host metadata, no synchronisation).
    pub(crate) fn in_float_type(self, dtype: DType) -> Self {
        let tensors_3 = self
            .groups
            .iter()
            .flat_map(|g| g.statistics.iter().chain(&g.roots));
        let mismatched = tensors_3
            .map(|t| t.dtype())
            .chain(
                [&self.graft, &self.momentum]
                    .into_iter()
                    .flatten()
                    .map(|t| t.dtype()),
            )
            .any(|d| d != dtype);
        if !mismatched {
            return self;
        }
        self.map_tensors(|t| t.cast(dtype), |t| t.cast(dtype))
    }

    /// Moves every tensor to `device`.
    pub fn to_device(self, device: &B::Device) -> Self {
        self.map_tensors(|t| t.to_device(device), |t| t.to_device(device))
    }

    /// Applies `f3` to every factor and `f1` to the graft and momentum
    /// buffers (a move between devices or backends).
    pub(crate) fn map_tensors<C: Backend>(
        self,
        f3: impl Fn(Tensor<B, 3>) -> Tensor<C, 3>,
        f1: impl Fn(Tensor<B, D>) -> Tensor<C, D>,
    ) -> PreconditionerState<C, D> {
        PreconditionerState {
            step: self.step,
            groups: self.groups.into_iter().map(|g| g.map(&f3)).collect(),
            stale_dims: self.stale_dims,
            graft: self.graft.map(&f1),
            momentum: self.momentum.map(&f1),
            origin: self.origin,
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::optim::SimpleOptimizer;
    use burn::tensor::{DType, Tensor};

    use crate::KradagradStarConfig;

    #[test]
    fn size_bytes_counts_factors_and_buffers() {
        // A 300x40 weight at block 128: row blocks 128, 128, 44 (three regions), one column
        // block of 40. Factors per block: a statistic and a root per dim.
        let device = Default::default();
        let optimizer = KradagradStarConfig::new().build();
        let weight = Tensor::<NdArray<f32>, 2>::ones([300, 40], (&device, DType::F32));
        let (_, state) = SimpleOptimizer::step(&optimizer, 0.1, weight.clone(), weight, None);
        let state = state.expect("state");
        let factors = 2 * (2 * (128 * 128 + 40 * 40) + (44 * 44 + 40 * 40));
        let momentum = 300 * 40;
        assert_eq!(state.size_bytes(), 4 * (factors + momentum));
    }
}
