//! The one point where the step engine dispatches to an algorithm: each
//! algorithm's file owns its initial factor, statistics update, roots and
//! schedule, and this enum names which one a step runs.

use burn::tensor::{backend::Backend, Tensor};

use super::preconditioner::{kronecker_statistics_due, update_every_dim, ClassFactors, StatisticsUpdate};
use super::{kradagrad, kradagrad_star, shampoo, StateOrigin};
use crate::config::Options;
use crate::layout::BlockLayout;

/// Which optimizer a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    /// KrADagrad*: every inverse statistic every step, Shampoo-shaped.
    KradagradStar,
    /// KrADagrad: one inverse statistic per step.
    Kradagrad,
    /// Shampoo: statistics and their inverse roots.
    Shampoo,
}

impl Algorithm {
    /// The optimizer's type name, as states record it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Algorithm::KradagradStar => "KradagradStar",
            Algorithm::Kradagrad => "Kradagrad",
            Algorithm::Shampoo => "Shampoo",
        }
    }

    /// What a state written by this optimizer under `options` records of
    /// its origin.
    pub(crate) fn origin(self, options: &Options) -> StateOrigin {
        StateOrigin {
            optimizer: self.name().to_string(),
            block_size: options.block_size,
            merge_dims: options.merge_dims,
        }
    }

    /// The scale of the initial statistic (`scale * I`).
    pub(crate) fn initial_scale(self, options: &Options) -> f64 {
        match self {
            Algorithm::KradagradStar => kradagrad_star::initial_scale(options),
            Algorithm::Kradagrad => kradagrad::initial_scale(options),
            Algorithm::Shampoo => shampoo::initial_scale(options),
        }
    }

    /// Whether the state records which dims' roots are pending (KrADagrad's
    /// stale-dim flags).
    pub(crate) fn tracks_stale_dims(self) -> bool {
        self == Algorithm::Kradagrad
    }

    /// Whether the step taken after `step` steps updates the statistics.
    pub(crate) fn statistics_due(self, step: usize, options: &Options) -> bool {
        match self {
            Algorithm::Kradagrad => kradagrad::statistics_due(step, options),
            Algorithm::KradagradStar | Algorithm::Shampoo => kronecker_statistics_due(step, options),
        }
    }

    /// Whether this step's statistics update is a KrAD update (KrADagrad*,
    /// KrADagrad on a statistics step), which reads the whole gradient
    /// before anything else does.
    pub(crate) fn krad_update_due(self, step: usize, options: &Options) -> bool {
        self != Algorithm::Shampoo && self.statistics_due(step, options)
    }

    /// What parameters stacked in one class must share besides their step
    /// and pending roots (`layout` of merged rank 1 or more).
    pub(crate) fn class_key(self, layout: &BlockLayout) -> (usize, usize) {
        match self {
            Algorithm::Kradagrad => kradagrad::schedule_key(layout),
            Algorithm::KradagradStar | Algorithm::Shampoo => (layout.rank(), 0),
        }
    }

    /// One class's statistics update: advances its step counter, updates
    /// the statistics when due, and says which roots are due and how the
    /// direction is formed. `blocks[g]` is the `[blocks, block_numel]` batch
    /// of `factors.groups[g]`, of block shape `block_dims[g]`; `dims` are the
    /// class's merged dims.
    pub(crate) fn update_statistics<B: Backend>(
        self,
        options: &Options,
        dims: &[usize],
        block_dims: &[&[usize]],
        factors: ClassFactors<'_, B>,
        blocks: &[Tensor<B, 2>],
    ) -> StatisticsUpdate<B> {
        let rank = dims.len();
        match self {
            Algorithm::Kradagrad => kradagrad::update_statistics(options, dims, block_dims, factors, blocks),
            Algorithm::KradagradStar => update_every_dim(
                options,
                rank,
                block_dims,
                factors,
                blocks,
                kradagrad_star::update_statistic,
                kradagrad_star::root_spec,
            ),
            Algorithm::Shampoo => update_every_dim(
                options,
                rank,
                block_dims,
                factors,
                blocks,
                shampoo::update_statistic,
                shampoo::root_spec,
            ),
        }
    }
}
