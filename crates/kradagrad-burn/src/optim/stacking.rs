//! How a set of parameters maps onto stacked factors: parameters that share
//! a schedule are one class, and within a class the blocks of one shape,
//! from every member, are one batch (host-only bookkeeping, rebuilt from the
//! shapes).

use crate::config::Options;
use crate::layout::BlockLayout;

/// One region of one parameter inside a stacked batch.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// Index of the parameter in the set.
    pub param: usize,
    /// Index of the region in the parameter's layout.
    pub region: usize,
    /// Number of blocks of the region.
    pub blocks: usize,
}

/// The blocks of one shape stacked across the members of a class.
#[derive(Debug, Clone)]
pub(crate) struct StackedGroup {
    /// The shape of every block.
    pub block_dims: Vec<usize>,
    /// Whose blocks, in stacking order.
    pub members: Vec<Member>,
}

impl StackedGroup {
    /// Blocks in the batch.
    pub(crate) fn num_blocks(&self) -> usize {
        self.members.iter().map(|m| m.blocks).sum()
    }

    /// Blocks of each member, in stacking order.
    pub(crate) fn counts(&self) -> Vec<usize> {
        self.members.iter().map(|m| m.blocks).collect()
    }
}

/// Parameters preconditioned together: same merged rank (and, for KrADagrad,
/// same dim schedule), same step counter and, for KrADagrad, the same
/// pending roots.
#[derive(Debug, Clone)]
pub(crate) struct StackedClass {
    /// The merged dims of the class's first parameter: what KrADagrad's
    /// schedule reads (rank and position of the largest dim), shared by all.
    pub dims: Vec<usize>,
    /// One batch per distinct block shape.
    pub groups: Vec<StackedGroup>,
}

impl StackedClass {
    /// The block shape of each group.
    pub(crate) fn block_dims(&self) -> Vec<&[usize]> {
        self.groups.iter().map(|g| g.block_dims.as_slice()).collect()
    }
}

/// The stacking of a set of parameters.
#[derive(Debug, Clone)]
pub(crate) struct Stacking {
    /// Each parameter's block layout.
    pub layouts: Vec<BlockLayout>,
    /// The classes, in order of their first member.
    pub classes: Vec<StackedClass>,
}

impl Stacking {
    /// One parameter on its own: one class of its regions (none at merged
    /// rank 0).
    pub(crate) fn single(layout: BlockLayout) -> Self {
        let class_of = [(layout.rank() > 0).then_some(0)];
        Self::with_classes(vec![layout], &class_of)
    }

    /// The stacking of parameters of `shapes`, classed by `key` (parameters
    /// of equal keys share a class; `key` is only asked for parameters of
    /// merged rank 1 or more), with the class of each parameter (`None` at
    /// merged rank 0).
    pub(crate) fn by_key<K: PartialEq>(
        shapes: &[Vec<usize>],
        options: &Options,
        mut key: impl FnMut(usize, &BlockLayout) -> K,
    ) -> (Self, Vec<Option<usize>>) {
        let layouts: Vec<_> = shapes
            .iter()
            .map(|s| BlockLayout::new(s, options.block_size, options.merge_dims))
            .collect();
        let mut keys: Vec<K> = vec![];
        let class_of: Vec<Option<usize>> = layouts
            .iter()
            .enumerate()
            .map(|(p, layout)| {
                if layout.rank() == 0 {
                    return None;
                }
                let k = key(p, layout);
                Some(match keys.iter().position(|known| *known == k) {
                    Some(c) => c,
                    None => {
                        keys.push(k);
                        keys.len() - 1
                    }
                })
            })
            .collect();
        (Self::with_classes(layouts, &class_of), class_of)
    }

    /// The stacking of parameters laid out as `layouts`, in the classes
    /// `class_of` names.
    pub(crate) fn with_classes(layouts: Vec<BlockLayout>, class_of: &[Option<usize>]) -> Self {
        let count = class_of.iter().flatten().map(|&c| c + 1).max().unwrap_or(0);
        let mut classes: Vec<Option<StackedClass>> = vec![None; count];
        for (p, (layout, class)) in layouts.iter().zip(class_of).enumerate() {
            let Some(&c) = class.as_ref() else { continue };
            let class = classes[c].get_or_insert_with(|| StackedClass {
                dims: layout.dims.clone(),
                groups: vec![],
            });
            for (r, region) in layout.regions.iter().enumerate() {
                let member = Member {
                    param: p,
                    region: r,
                    blocks: region.num_blocks(),
                };
                match class
                    .groups
                    .iter_mut()
                    .find(|g| g.block_dims == region.block_dims)
                {
                    Some(g) => g.members.push(member),
                    None => class.groups.push(StackedGroup {
                        block_dims: region.block_dims.clone(),
                        members: vec![member],
                    }),
                }
            }
        }
        let classes = classes
            .into_iter()
            .map(|c| c.expect("every class index has a member"))
            .collect();
        Self { layouts, classes }
    }

    /// The number of stacked batches plus the parameters in none (merged
    /// rank 0): the whole-tensor reductions a per-batch pass takes.
    pub(crate) fn num_batches(&self) -> usize {
        let stacked: usize = self.classes.iter().map(|c| c.groups.len()).sum();
        stacked + self.layouts.iter().filter(|l| l.rank() == 0).count()
    }
}
