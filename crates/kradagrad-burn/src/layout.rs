//! Shape handling shared by all three optimizers (docs/algorithm.md,
//! "Shapes, blocks and batching").
//!
//! A parameter of any rank is first viewed through its *merged* shape (small
//! adjacent dims multiplied together), then every merged dim larger than the
//! block size is cut into chunks. Instead of one tensor per block, blocks of
//! equal shape are grouped into *regions*: along every dim a region takes
//! either the run of full chunks or the remainder chunk, so a parameter has at
//! most `2^k` regions and each region's blocks are stacked in one
//! `[blocks, block_numel]` tensor. Every later operation (Gram matrices,
//! factor products) is then one batched matmul per region, whatever the number
//! of blocks.
//!
//! All reshapes go through tensors of rank at most 4, so the code works for any
//! merged rank without const-generic dispatch.

use burn::tensor::{backend::Backend, Tensor};

/// Merges adjacent small dims of `shape` while their product stays `<= max`
/// (docs/algorithm.md, "Shapes, blocks and batching", step 1). Size-1 dims disappear; `[1]` gives `[]`.
///
/// ```
/// use kradagrad_burn::layout::merge_dims;
/// assert_eq!(merge_dims(&[4, 3, 3, 3], 16), vec![12, 9]);
/// assert_eq!(merge_dims(&[3, 4, 5], 8), vec![3, 4, 5]);
/// assert_eq!(merge_dims(&[1], 128), Vec::<usize>::new());
/// ```
pub fn merge_dims(shape: &[usize], max: usize) -> Vec<usize> {
    let mut merged = Vec::new();
    let mut product = 1usize;
    for &dim in shape {
        if product.saturating_mul(dim) <= max {
            product *= dim;
        } else {
            if product > 1 {
                merged.push(product);
            }
            product = dim;
        }
    }
    if product > 1 {
        merged.push(product);
    }
    merged
}

/// A set of equally shaped blocks: along every merged dim, either the run of
/// full chunks or the remainder chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// Start of the region along each merged dim.
    pub offsets: Vec<usize>,
    /// Number of blocks along each merged dim.
    pub counts: Vec<usize>,
    /// Size of one block along each merged dim (the factor sizes).
    pub block_dims: Vec<usize>,
}

impl Region {
    /// Number of blocks in the region.
    pub fn num_blocks(&self) -> usize {
        self.counts.iter().product()
    }

    /// Number of entries in one block.
    pub fn block_numel(&self) -> usize {
        self.block_dims.iter().product()
    }

    /// Extent of the region along merged dim `i`.
    pub fn extent(&self, i: usize) -> usize {
        self.counts[i] * self.block_dims[i]
    }
}

/// How one parameter is cut into preconditioned blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockLayout {
    /// The parameter's shape as given.
    pub shape: Vec<usize>,
    /// The shape the factors refer to (merged, or `shape` itself).
    pub dims: Vec<usize>,
    /// Groups of equally shaped blocks, dim 0 outermost, full chunks before
    /// the remainder along every dim.
    pub regions: Vec<Region>,
}

/// The pieces of one merged dim: `(offset, count, block size)`.
fn dim_parts(dim: usize, block_size: Option<usize>) -> Vec<(usize, usize, usize)> {
    match block_size {
        Some(b) if dim > b => {
            let full = dim / b;
            let rem = dim % b;
            let mut parts = vec![(0, full, b)];
            if rem > 0 {
                parts.push((full * b, 1, rem));
            }
            parts
        }
        _ => vec![(0, 1, dim)],
    }
}

impl BlockLayout {
    /// Builds the layout of a parameter.
    ///
    /// `block_size: None` means no blocking. Merging uses the block size as its
    /// limit, so it happens only when `merge` is set and blocking is on (the
    /// reference's `block_size = 0` means neither).
    pub fn new(shape: &[usize], block_size: Option<usize>, merge: bool) -> Self {
        let dims = match (merge, block_size) {
            (true, Some(b)) => merge_dims(shape, b),
            _ => shape.to_vec(),
        };
        let parts: Vec<_> = dims.iter().map(|&d| dim_parts(d, block_size)).collect();
        let mut regions = vec![Region {
            offsets: vec![],
            counts: vec![],
            block_dims: vec![],
        }];
        for dim_parts in &parts {
            regions = regions
                .into_iter()
                .flat_map(|r| {
                    dim_parts.iter().map(move |&(offset, count, size)| {
                        let mut r = r.clone();
                        r.offsets.push(offset);
                        r.counts.push(count);
                        r.block_dims.push(size);
                        r
                    })
                })
                .collect();
        }
        if dims.is_empty() {
            regions.clear();
        }
        Self {
            shape: shape.to_vec(),
            dims,
            regions,
        }
    }

    /// Merged rank `k`: the number of factors per block.
    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    /// Number of entries of the parameter.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Cuts a flattened tensor of this layout into one `[blocks, block_numel]`
    /// tensor per region (blocks in row-major order of their block indices).
    pub fn split<B: Backend>(&self, flat: Tensor<B, 1>) -> Vec<Tensor<B, 2>> {
        self.regions
            .iter()
            .map(|region| {
                // 1. Cut the region out, one dim at a time, through [pre, d, post] views.
                let mut extents = self.dims.clone();
                let mut t = flat.clone();
                for i in 0..self.rank() {
                    let ext = region.extent(i);
                    if ext != extents[i] {
                        let pre: usize = extents[..i].iter().product();
                        let post: usize = extents[i + 1..].iter().product();
                        t = narrow_middle(t, [pre, extents[i], post], region.offsets[i], ext);
                        extents[i] = ext;
                    }
                }
                // 2. Move each dim's chunk index out to the batch axis; the
                //    last move lands at `[blocks, block_numel]` (a flat result
                //    reshaped would be one more copy on burn-ndarray, see
                //    [`reshape`]).
                let numel = region.num_blocks() * region.block_numel();
                let mut swaps = vec![];
                let mut batch = 1;
                for i in 0..self.rank() {
                    let count = region.counts[i];
                    if count > 1 {
                        let pre: usize = region.block_dims[..i].iter().product();
                        swaps.push([batch, pre, count, numel / (batch * pre * count)]);
                        batch *= count;
                    }
                }
                let blocks = [batch, numel / batch];
                match swaps.pop() {
                    Some(last) => {
                        let t = swaps.into_iter().fold(t, |t, swap| swap_middle(t, swap));
                        swap_middle_to(t, last, blocks)
                    }
                    None => t.reshape(blocks),
                }
            })
            .collect()
    }

    /// Inverse of [`split`](Self::split): puts the regions' blocks, each
    /// region flattened (`[blocks * block_numel]`, see [`flatten`]), back into
    /// one tensor of shape `dims` (the parameter's own, or its flattened
    /// `[numel]`).
    ///
    /// Burn 0.21's fusion fuses a reshape with the work after it only when it
    /// reshapes a block's input (not the result of another reshape) and does
    /// not lower the rank. So the result comes from a single reshape of the
    /// last computed tensor, and the regions come flat (lowering
    /// `[blocks, block_numel]` to one axis happens where the blocks are
    /// computed, see `optim::batched`). A layout of one region whose blocks
    /// are already in row-major order (a single block, or blocks cut along the
    /// first dim only) is that single reshape, a view.
    pub fn assemble<B: Backend, const D: usize>(
        &self,
        regions: Vec<Tensor<B, 1>>,
        dims: [usize; D],
    ) -> Tensor<B, D> {
        assert_eq!(regions.len(), self.regions.len(), "one tensor per region");
        let numel = self.numel();
        assert_eq!(
            dims.iter().product::<usize>(),
            numel,
            "assemble: {dims:?} does not hold the layout"
        );
        let in_order = |region: &Region| {
            (0..self.rank())
                .all(|i| region.counts[i] == 1 || region.block_dims[..i].iter().product::<usize>() == 1)
        };
        if self.regions.len() == 1 && in_order(&self.regions[0]) {
            return reshape(regions.into_iter().next().expect("one region"), dims);
        }
        // Undo the blocking of every region.
        let mut flats: Vec<Option<Tensor<B, 1>>> = regions
            .into_iter()
            .zip(&self.regions)
            .map(|(blocks, region)| {
                let numel = region.num_blocks() * region.block_numel();
                let mut batch = region.num_blocks();
                let mut t = blocks;
                for i in (0..self.rank()).rev() {
                    let count = region.counts[i];
                    if count > 1 {
                        batch /= count;
                        let pre: usize = region.block_dims[..i].iter().product();
                        let rest = numel / (batch * pre * count);
                        t = swap_middle(t, [batch, count, pre, rest]);
                    }
                }
                Some(t)
            })
            .collect();
        reshape(self.join(0, 0, &mut flats), dims)
    }

    /// Concatenates the regions whose index starts with the digits chosen so
    /// far, along merged dim `i` (regions are numbered in mixed radix, dim 0
    /// most significant).
    fn join<B: Backend>(&self, i: usize, prefix: usize, flats: &mut [Option<Tensor<B, 1>>]) -> Tensor<B, 1> {
        if i == self.rank() {
            return flats[prefix].take().expect("each region used once");
        }
        let radix = self.radix(i);
        if radix == 1 {
            return self.join(i + 1, prefix, flats);
        }
        let stride: usize = (i + 1..self.rank()).map(|j| self.radix(j)).product();
        // Extents of dims < i are those of this sub-region's own parts.
        let first = &self.regions[prefix * radix * stride];
        let pre: usize = (0..i).map(|j| first.extent(j)).product();
        let post: usize = self.dims[i + 1..].iter().product();
        let pieces: Vec<(Tensor<B, 1>, usize)> = (0..radix)
            .map(|part| {
                let region = &self.regions[(prefix * radix + part) * stride];
                (self.join(i + 1, prefix * radix + part, flats), region.extent(i))
            })
            .collect();
        cat_middle(pieces, pre, post)
    }

    /// Number of parts (1 or 2) of merged dim `i`.
    fn radix(&self, i: usize) -> usize {
        let b = self.regions[0].block_dims[i];
        if self.dims[i] > b && !self.dims[i].is_multiple_of(b) {
            2
        } else {
            1
        }
    }
}

/// `[pre, ext, post] -> [pre, len, post]` (entries `offset..offset + len` of
/// the middle axis) of a row-major tensor, flattened.
///
/// Size-1 outer axes are dropped first: burn-ndarray copies a strided view
/// whose innermost axis has size 1 one element at a time, about ten times
/// slower than a view with contiguous rows.
fn narrow_middle<B: Backend>(
    t: Tensor<B, 1>,
    [pre, ext, post]: [usize; 3],
    offset: usize,
    len: usize,
) -> Tensor<B, 1> {
    if pre == 1 {
        t.narrow(0, offset * post, len * post)
    } else if post == 1 {
        t.reshape([pre, ext]).narrow(1, offset, len).reshape([pre * len])
    } else {
        t.reshape([pre, ext, post])
            .narrow(1, offset, len)
            .reshape([pre * len * post])
    }
}

/// Concatenates `[pre, ext_j, post]` pieces (given flattened, with their
/// `ext_j`) along the middle axis, flattened; size-1 outer axes dropped as in
/// [`narrow_middle`].
fn cat_middle<B: Backend>(pieces: Vec<(Tensor<B, 1>, usize)>, pre: usize, post: usize) -> Tensor<B, 1> {
    let numel = pre * post * pieces.iter().map(|(_, ext)| ext).sum::<usize>();
    if pre == 1 {
        Tensor::cat(pieces.into_iter().map(|(t, _)| t).collect(), 0)
    } else if post == 1 {
        let pieces = pieces.into_iter().map(|(t, ext)| t.reshape([pre, ext])).collect();
        Tensor::cat(pieces, 1).reshape([numel])
    } else {
        let pieces = pieces
            .into_iter()
            .map(|(t, ext)| t.reshape([pre, ext, post]))
            .collect();
        Tensor::cat(pieces, 1).reshape([numel])
    }
}

/// `[a, b, c, d] -> [a, c, b, d]` of a row-major tensor of any rank holding
/// `a * b * c * d` entries, flattened, through the lowest-rank view that
/// expresses it: nothing moves when `b` or `c` is 1, and size-1 outer axes
/// are dropped (see [`narrow_middle`]).
fn swap_middle<B: Backend, const R: usize>(t: Tensor<B, R>, abcd: [usize; 4]) -> Tensor<B, 1> {
    swap_middle_to(t, abcd, [abcd.iter().product()])
}

/// [`swap_middle`], the result reshaped to `dims` (holding `a * b * c * d`
/// entries) by the reshape that moves the entries.
fn swap_middle_to<B: Backend, const R: usize, const S: usize>(
    t: Tensor<B, R>,
    [a, b, c, d]: [usize; 4],
    dims: [usize; S],
) -> Tensor<B, S> {
    if b == 1 || c == 1 {
        return reshape(t, dims);
    }
    match (a == 1, d == 1) {
        (true, true) => t.reshape([b, c]).swap_dims(0, 1).reshape(dims),
        (true, false) => t.reshape([b, c, d]).swap_dims(0, 1).reshape(dims),
        (false, true) => t.reshape([a, b, c]).swap_dims(1, 2).reshape(dims),
        (false, false) => t.reshape([a, b, c, d]).swap_dims(1, 2).reshape(dims),
    }
}

/// Concatenates batches along the batch axis (a single batch is returned as
/// it is, without a copy).
pub(crate) fn stack<B: Backend, const R: usize>(parts: Vec<Tensor<B, R>>) -> Tensor<B, R> {
    match parts.len() {
        1 => parts.into_iter().next().expect("one part"),
        _ => Tensor::cat(parts, 0),
    }
}

/// Inverse of [`stack`]: the consecutive batches of `counts` entries along
/// the batch axis (views; the whole tensor when there is one).
pub(crate) fn unstack<B: Backend, const R: usize>(
    stacked: Tensor<B, R>,
    counts: &[usize],
) -> Vec<Tensor<B, R>> {
    if counts.len() == 1 {
        return vec![stacked];
    }
    let mut offset = 0;
    counts
        .iter()
        .map(|&n| {
            let part = stacked.clone().narrow(0, offset, n);
            offset += n;
            part
        })
        .collect()
}

/// A tensor's entries as one axis (a view of a contiguous tensor; the
/// tensor itself when it has one axis already, see [`reshape`]).
pub fn flatten<B: Backend, const R: usize>(t: Tensor<B, R>) -> Tensor<B, 1> {
    let numel = t.shape().num_elements();
    reshape(t, [numel])
}

/// `t` reshaped to `dims`, or `t` itself when it has that shape already.
///
/// Burn 0.21's burn-ndarray copies the whole tensor on every reshape, to the
/// tensor's own shape too (its `reshape!` turns the borrowed view that
/// `to_shape` returns into an owned array; fixed upstream after 0.21, in
/// tracel-ai/burn pull request 5067), where a CubeCL backend only rewrites
/// the shape. So the layout's reshapes that may be identities go through
/// this, and an identity costs nothing on either.
pub fn reshape<B: Backend, const R: usize, const S: usize>(
    t: Tensor<B, R>,
    dims: [usize; S],
) -> Tensor<B, S> {
    if t.dims()[..] == dims[..] {
        // Same rank and shape: only the rank in the type changes.
        Tensor::from_primitive(t.into_primitive())
    } else {
        t.reshape(dims)
    }
}

/// Entries from which a tensor's whole-tensor sums (the grafting's norms, the
/// non-finite guard's probe, [`transforms::norm`](crate::transforms::norm))
/// and the step's tail around them run on a `[rows, cols]` view instead of a
/// flat one (see [`rows_view`]); also the matrix size from which the per-matrix
/// sums of the KrAD updates and Newton roots sum rows first (one output of a
/// reduction runs in one GPU workgroup).
pub const ROWS_VIEW_MIN_ENTRIES: usize = 1 << 18;

/// The shortest side of a [`rows_view`] view.
const ROWS_VIEW_MIN_SIDE: usize = 32;

/// The `[rows, cols]` view in which the step's tail (grafting, weight decay,
/// momentum, update, the guard's probe) runs for a tensor of shape `shape`,
/// or `None` for the flat `[numel]` view.
///
/// On a flat tensor each whole-tensor sum is one reduction with one output,
/// which Burn's fusion fuses with the element-wise work around it (the
/// whole tail in one kernel), but which a CubeCL backend runs in a single
/// workgroup, on one of the GPU's multiprocessors, so its cost grows with
/// the tensor's size however wide the GPU. On
/// `[rows, cols]` the sums are one reduction per axis, `rows` outputs and
/// then one, spread over the GPU, for a few kernels more. So tensors of at
/// least [`ROWS_VIEW_MIN_ENTRIES`] entries get rows: a 2-D shape with both
/// sides of at least 32 is its own view (no copy on burn-ndarray), any
/// other the split of `numel` into the divisor nearest its square root
/// (`rows <= cols`); `None` where that divisor is below 32 (a prime count,
/// say), for which the flat tail is the only one.
pub fn rows_view(shape: &[usize]) -> Option<[usize; 2]> {
    let numel: usize = shape.iter().product();
    if numel < ROWS_VIEW_MIN_ENTRIES {
        return None;
    }
    if let [a, b] = *shape {
        if a.min(b) >= ROWS_VIEW_MIN_SIDE {
            return Some([a, b]);
        }
    }
    let rows = (1..=numel.isqrt()).rev().find(|r| numel.is_multiple_of(*r))?;
    (rows >= ROWS_VIEW_MIN_SIDE).then_some([rows, numel / rows])
}

/// [`unstack`] of a flattened `[batch, width]` stack into flat parts
/// (`[count * width]`). The stack comes flattened from the work that
/// computed it: a rank-lowering reshape right after that work, not in the
/// fused work that reads the parts (see [`BlockLayout::assemble`]).
pub(crate) fn unstack_flat<B: Backend>(
    stacked: Tensor<B, 1>,
    width: usize,
    counts: &[usize],
) -> Vec<Tensor<B, 1>> {
    let lengths: Vec<usize> = counts.iter().map(|&n| n * width).collect();
    unstack(stacked, &lengths)
}

/// `(pre, d, post)`: the block axes before mode `i`, mode `i`'s size, and the
/// axes after it.
fn mode_split(block_dims: &[usize], i: usize) -> (usize, usize, usize) {
    let pre = block_dims[..i].iter().product();
    let post = block_dims[i + 1..].iter().product();
    (pre, block_dims[i], post)
}

/// Mode-`i` unfolding of a batch of blocks: `[blocks, d_i, numel / d_i]`.
pub fn unfold<B: Backend>(blocks: Tensor<B, 2>, block_dims: &[usize], i: usize) -> Tensor<B, 3> {
    let n = blocks.dims()[0];
    let (pre, d, post) = mode_split(block_dims, i);
    swap_middle(blocks, [n, pre, d, post]).reshape([n, d, pre * post])
}

/// Inverse of [`unfold`].
pub fn fold<B: Backend>(unfolded: Tensor<B, 3>, block_dims: &[usize], i: usize) -> Tensor<B, 2> {
    let n = unfolded.dims()[0];
    let (pre, d, post) = mode_split(block_dims, i);
    swap_middle(unfolded, [n, d, pre, post]).reshape([n, pre * d * post])
}

/// Mode-`i` Gram matrices of a batch of blocks: the block
/// contracted with itself over every axis but `i`, `[blocks, d_i, d_i]`.
///
/// The first and last modes need no unfolding: with the block viewed as
/// `[d, post]` the Gram is `X X^T`, as `[pre, d]` it is `X^T X`.
pub fn mode_gram<B: Backend>(blocks: Tensor<B, 2>, block_dims: &[usize], i: usize) -> Tensor<B, 3> {
    mode_cross(blocks.clone(), blocks, block_dims, i)
}

/// Mode-`i` cross products of two batches of blocks of the same shape:
/// `unfold_i(A) unfold_i(B)^T`, `[blocks, d_i, d_i]` ([`mode_gram`] is
/// `A = B`). The last mode needs no unfolding (`A^T B` on `[pre, d]` views).
pub fn mode_cross<B: Backend>(
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    block_dims: &[usize],
    i: usize,
) -> Tensor<B, 3> {
    let n = a.dims()[0];
    let (pre, d, post) = mode_split(block_dims, i);
    if post == 1 {
        a.reshape([n, pre, d])
            .swap_dims(1, 2)
            .matmul(b.reshape([n, pre, d]))
    } else {
        unfold(a, block_dims, i).matmul(unfold(b, block_dims, i).swap_dims(1, 2))
    }
}

/// Multiplies mode `i` of every block by its symmetric factor
/// `[blocks, d_i, d_i]`.
///
/// No axis is moved: with the block viewed as `[pre, d, post]`, the product is
/// `F X` for the first mode (`pre = 1`), `X F` for the last (`post = 1`; `F`
/// is symmetric) and, between them, `F` broadcast over `pre`.
pub fn mode_product<B: Backend>(
    blocks: Tensor<B, 2>,
    factor: Tensor<B, 3>,
    block_dims: &[usize],
    i: usize,
) -> Tensor<B, 2> {
    let [n, numel] = blocks.dims();
    mode_product_as(blocks, factor, block_dims, i, [n, numel])
}

/// [`mode_product`], the result reshaped straight from the product to
/// `dims` (e.g. flat, `[blocks * block_numel]`: reshaping the
/// `[blocks, block_numel]` result again would be one more copy on
/// burn-ndarray, see [`reshape`]).
pub(crate) fn mode_product_as<B: Backend, const S: usize>(
    blocks: Tensor<B, 2>,
    factor: Tensor<B, 3>,
    block_dims: &[usize],
    i: usize,
    dims: [usize; S],
) -> Tensor<B, S> {
    let n = blocks.dims()[0];
    let (pre, d, post) = mode_split(block_dims, i);
    if pre == 1 {
        factor.matmul(blocks.reshape([n, d, post])).reshape(dims)
    } else if post == 1 {
        blocks.reshape([n, pre, d]).matmul(factor).reshape(dims)
    } else {
        factor
            .unsqueeze_dim::<4>(1)
            .matmul(blocks.reshape([n, pre, d, post]))
            .reshape(dims)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // Tests read results back.
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::TensorData;

    type B = NdArray<f64>;

    fn iota(n: usize) -> Tensor<B, 1> {
        let values: Vec<f64> = (0..n).map(|v| v as f64).collect();
        Tensor::from_data(
            TensorData::new(values, [n]),
            (&Default::default(), burn::tensor::DType::F64),
        )
    }

    fn values<const R: usize>(t: Tensor<B, R>) -> Vec<f64> {
        t.into_data().to_vec::<f64>().unwrap()
    }

    #[test]
    fn rows_view_spread_large_tensors_over_rows() {
        let min = ROWS_VIEW_MIN_ENTRIES;
        // Small tensors keep the flat (fused, one-workgroup) tail.
        assert_eq!(rows_view(&[min - 1]), None);
        assert_eq!(rows_view(&[784, 100]), None);
        // A matrix with two long sides is its own view.
        assert_eq!(rows_view(&[4096, 4096]), Some([4096, 4096]));
        assert_eq!(rows_view(&[8192, 1024]), Some([8192, 1024]));
        assert_eq!(rows_view(&[784, 1000]), Some([784, 1000]));
        // Anything else: the divisor nearest the square root, rows <= cols.
        assert_eq!(rows_view(&[min]), Some([512, 512]));
        assert_eq!(rows_view(&[16, 1 << 20]), Some([4096, 4096]));
        assert_eq!(rows_view(&[64, 64, 3, 3, 10]), Some([576, 640]));
        // 2 * 131101 (a prime): no divisor of 32 or more up to its root.
        assert_eq!(rows_view(&[2 * 131_101]), None);
        for shape in [[300_000usize, 1], [1, 300_000], [30, 10_000]] {
            let [rows, cols] = rows_view(&shape).expect("a divisor near the root");
            assert_eq!(rows * cols, 300_000);
            assert!(
                (ROWS_VIEW_MIN_SIDE..=cols).contains(&rows),
                "{shape:?}: {rows} x {cols}"
            );
        }
    }

    #[test]
    fn reshape_keeps_the_entries_and_skips_identities() {
        let matrix: Tensor<B, 2> = iota(6).reshape([2, 3]);
        // An identity (same rank and shape) hands the tensor back.
        let same: Tensor<B, 2> = reshape(matrix.clone(), [2, 3]);
        assert_eq!((same.dims(), values(same)), ([2, 3], values(matrix.clone())));
        let flat = flatten(iota(6));
        assert_eq!((flat.dims(), values(flat)), ([6], values(iota(6))));
        // Anything else is Burn's reshape: same entries, in row-major order.
        let cube: Tensor<B, 3> = reshape(matrix.clone(), [3, 1, 2]);
        assert_eq!((cube.dims(), values(cube)), ([3, 1, 2], values(iota(6))));
        let transposed: Tensor<B, 2> = reshape(matrix.swap_dims(0, 1), [2, 3]);
        assert_eq!(values(transposed), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    }

    #[test]
    fn merges_as_the_reference_does() {
        assert_eq!(merge_dims(&[4, 3, 3, 3], 16), vec![12, 9]);
        assert_eq!(merge_dims(&[3, 4, 5], 8), vec![3, 4, 5]);
        assert_eq!(merge_dims(&[1], 128), Vec::<usize>::new());
        assert_eq!(merge_dims(&[1, 1], 128), Vec::<usize>::new());
        assert_eq!(merge_dims(&[64, 3, 3, 3], 128), vec![64, 27]);
        assert_eq!(merge_dims(&[1, 7, 1], 4), vec![7]);
    }

    #[test]
    fn regions_cover_the_blocks() {
        let layout = BlockLayout::new(&[10, 20], Some(8), true);
        assert_eq!(layout.dims, vec![10, 20]);
        let shapes: Vec<_> = layout
            .regions
            .iter()
            .map(|r| (r.counts.clone(), r.block_dims.clone()))
            .collect();
        assert_eq!(
            shapes,
            vec![
                (vec![1, 2], vec![8, 8]),
                (vec![1, 1], vec![8, 4]),
                (vec![1, 2], vec![2, 8]),
                (vec![1, 1], vec![2, 4]),
            ]
        );
        let no_blocking = BlockLayout::new(&[1, 300], None, true);
        assert_eq!(no_blocking.dims, vec![1, 300]);
        assert_eq!(no_blocking.regions.len(), 1);
        assert_eq!(BlockLayout::new(&[1], Some(128), true).regions.len(), 0);
    }

    #[test]
    fn blocks_hold_the_right_entries() {
        // [4, 6] with block 2: region 0 has 2 x 3 blocks of 2 x 2, dim 0 outermost.
        let layout = BlockLayout::new(&[4, 6], Some(2), false);
        let blocks = layout.split(iota(24));
        assert_eq!(blocks.len(), 1);
        let v = values(blocks[0].clone());
        assert_eq!(&v[0..4], &[0.0, 1.0, 6.0, 7.0]); // block (0, 0)
        assert_eq!(&v[4..8], &[2.0, 3.0, 8.0, 9.0]); // block (0, 1)
        assert_eq!(&v[12..16], &[12.0, 13.0, 18.0, 19.0]); // block (1, 0)
    }

    #[test]
    fn split_then_assemble_is_the_identity() {
        let cases: &[(&[usize], Option<usize>, bool)] = &[
            (&[5], Some(2), true),
            (&[10, 20], Some(8), true),
            (&[3, 4, 5], Some(2), true),
            (&[7, 1, 9], Some(3), false),
            (&[4, 3, 3, 3], Some(16), true),
            (&[64, 3, 3, 3], Some(8), true),
            (&[2, 3, 5, 7], Some(3), false),
            (&[300, 5], Some(128), true),
            (&[6, 4], None, false),
        ];
        for &(shape, block, merge) in cases {
            let layout = BlockLayout::new(shape, block, merge);
            let n = layout.numel();
            let blocks = layout.split(iota(n));
            let total: usize = blocks.iter().map(|b| b.dims()[0] * b.dims()[1]).sum();
            assert_eq!(total, n, "{shape:?}");
            let back = values(layout.assemble(blocks.into_iter().map(flatten).collect(), [layout.numel()]));
            assert_eq!(back, values(iota(n)), "{shape:?} block {block:?}");
        }
    }

    /// A batch of `n` symmetric `[d, d]` matrices with distinct entries.
    fn symmetric(n: usize, d: usize) -> Tensor<B, 3> {
        let a = iota(n * d * d).reshape([n, d, d]).sin();
        a.clone() + a.swap_dims(1, 2)
    }

    #[test]
    fn mode_products_and_grams_match_the_unfolded_definitions() {
        // Every mode of rank-1, rank-2 and rank-3 blocks (first, middle, last
        // and only mode), three blocks each, against `fold(F unfold(X))` and
        // `unfold(X) unfold(X)^T` written out.
        for dims in [vec![6], vec![5, 7], vec![2, 3, 4], vec![3, 1, 4]] {
            let numel: usize = dims.iter().product();
            let blocks = iota(3 * numel).reshape([3, numel]).cos();
            for i in 0..dims.len() {
                let d = dims[i];
                let factor = symmetric(3, d);
                let x = unfold(blocks.clone(), &dims, i);
                let expected = fold(factor.clone().matmul(x.clone()), &dims, i);
                let got = mode_product(blocks.clone(), factor, &dims, i);
                let expected_gram = x.clone().matmul(x.swap_dims(1, 2));
                let gram = mode_gram(blocks.clone(), &dims, i);
                for (a, b) in values(got).iter().zip(values(expected)) {
                    assert!(
                        (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                        "{dims:?} mode {i}: {a} vs {b}"
                    );
                }
                for (a, b) in values(gram).iter().zip(values(expected_gram)) {
                    assert!(
                        (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                        "{dims:?} gram {i}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn unfold_and_fold_are_inverse_and_gram_matches_the_definition() {
        let dims = [2, 3, 4];
        let blocks = iota(24).reshape([1, 24]);
        for i in 0..3 {
            let back = fold(unfold(blocks.clone(), &dims, i), &dims, i);
            assert_eq!(values(back), values(blocks.clone()));
        }
        // Mode-1 Gram by the definition: sum over a, c of X[a, j, c] X[a, l, c].
        let x: Vec<f64> = (0..24).map(|v| v as f64).collect();
        let gram = values(mode_gram(blocks, &dims, 1));
        for j in 0..3 {
            for l in 0..3 {
                let mut expected = 0.0;
                for a in 0..2 {
                    for c in 0..4 {
                        expected += x[a * 12 + j * 4 + c] * x[a * 12 + l * 4 + c];
                    }
                }
                assert_eq!(gram[j * 3 + l], expected);
            }
        }
    }
}
