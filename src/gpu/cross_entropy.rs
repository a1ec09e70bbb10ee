//! Host side of `shaders/cross_entropy_wide.wgsl` and
//! `shaders/cross_entropy_narrow.wgsl` (both built on
//! `shaders/cross_entropy_row.wgsl`): the uniform, the bind group layout, the
//! choice of kernel, and how a batch is cut into chunks and workgroups.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::spec::{CrossEntropy, InputKind};

/// Threads per workgroup of the wide kernels by default; keep in sync with
/// `WG` in `cross_entropy_wide_tree.wgsl`.
pub(crate) const WIDE_WORKGROUP_SIZE: u32 = 128;
/// The wide kernels' default workgroup size on a CPU-type adapter, where
/// every barrier step costs each batch of invocations a coroutine switch
/// (lavapipe ran the wide kernel 2.6× faster at 32 than at 128).
pub(crate) const CPU_WIDE_WORKGROUP_SIZE: u32 = 32;
/// Threads per workgroup of the narrow kernel; keep in sync with `WG` in
/// `cross_entropy_narrow.wgsl`.
pub(crate) const NARROW_WORKGROUP_SIZE: u32 = 128;
/// The smallest workgroup any tree kernel runs in (a warp).
pub(crate) const MIN_WORKGROUP_SIZE: u32 = 32;
/// Threads per workgroup of the subgroup kernel; keep in sync with `WG` in
/// `cross_entropy_subgroup.wgsl`.
pub(crate) const SUBGROUP_WORKGROUP_SIZE: u32 = 128;
/// Rows of at most this many classes go to the narrow kernel by default.
pub(crate) const NARROW_DEFAULT_MAX_CLASSES: usize = 64;
/// The same on CPU-type adapters: every row the narrow kernel takes. On
/// lavapipe its kernel time for rows of 66–250 classes (not a multiple of
/// 4) was 1.04–1.7× shorter than the subgroup kernel's (1.3–2× with label
/// smoothing), and with a gradient 1.5–4× shorter than the wide kernel's
/// (BENCHMARKS.md).
pub(crate) const CPU_NARROW_DEFAULT_MAX_CLASSES: usize = NARROW_MAX_CLASSES;
/// The narrow kernel sums a row sequentially in one invocation; past this
/// many classes its f32 sums lose the core's accuracy, so wider rows always
/// use the wide kernel.
pub(crate) const NARROW_MAX_CLASSES: usize = 256;

/// The most classes a row may have in the narrow kernel's vec4 variant
/// (CPU-type adapters, [`lane_rows_fit`]): sixteen classes a trip (four
/// for the last few), so its running sum takes at most 131 additions, fewer
/// than the scalar narrow kernel's 256 at [`NARROW_MAX_CLASSES`].
pub(crate) const NARROW_VEC4_MAX_CLASSES: usize = 8 * NARROW_MAX_CLASSES;

/// Whether a call's rows are plain vec4 rows, which the narrow kernel's
/// vec4 variant and the split lanes take on CPU-type adapters: f32 logits
/// in rows of a multiple of 4 classes, with no class sums (no smoothing, no
/// dense targets), no probabilities and no gradient (whose single-read and
/// two-read paths must keep giving the same bits).
pub(crate) fn plain_vec4_rows(
    spec: &CrossEntropy,
    classes: usize,
    dense: bool,
    f32_logits: bool,
) -> bool {
    f32_logits
        && classes.is_multiple_of(4)
        && !dense
        && spec.label_smoothing == 0.0
        && spec.input == InputKind::Logits
        && !spec.gradient
}

/// Whether a call's rows can take the narrow kernel's vec4 variant: plain
/// vec4 rows ([`plain_vec4_rows`]) of at most [`NARROW_VEC4_MAX_CLASSES`].
pub(crate) fn lane_rows_fit(
    spec: &CrossEntropy,
    classes: usize,
    dense: bool,
    f32_logits: bool,
) -> bool {
    classes <= NARROW_VEC4_MAX_CLASSES && plain_vec4_rows(spec, classes, dense, f32_logits)
}

/// Runs a plain vec4 row longer than [`NARROW_VEC4_MAX_CLASSES`] is cut
/// into for the split lanes (`cross_entropy_split_lanes.wgsl`), an
/// invocation each: `requested` (`GpuOptions::row_segments`, at most one
/// run per vec4 and [`MAX_SEGMENTS`]) or else the fewest runs of at most
/// that many classes; `None` when `requested` is fewer, or when the row
/// needs more than [`MAX_SEGMENTS`] runs.
pub(crate) fn lane_runs(classes: usize, requested: Option<u32>) -> Option<u32> {
    let fewest = classes.div_ceil(NARROW_VEC4_MAX_CLASSES);
    let runs = match requested {
        None => fewest,
        Some(s) => (s as usize).min(classes / 4).min(MAX_SEGMENTS),
    };
    (classes > NARROW_VEC4_MAX_CLASSES && runs >= fewest && runs <= MAX_SEGMENTS)
        .then_some(runs as u32)
}

/// Threads per workgroup of the gradient kernels; keep in sync with `WG` in
/// `cross_entropy_grad_row.wgsl`.
pub(crate) const GRAD_WORKGROUP_SIZE: u32 = 256;

pub(crate) const ROW_SHADER: &str = include_str!("../../shaders/cross_entropy_row.wgsl");
pub(crate) const FORWARD_SHADER: &str = include_str!("../../shaders/cross_entropy_forward.wgsl");
pub(crate) const GRAD_ROW_SHADER: &str = include_str!("../../shaders/cross_entropy_grad_row.wgsl");
pub(crate) const GRAD_SHADER: &str = include_str!("../../shaders/cross_entropy_grad.wgsl");
pub(crate) const GRAD_IN_PLACE_SHADER: &str =
    include_str!("../../shaders/cross_entropy_grad_in_place.wgsl");
pub(crate) const WIDE_SHADER: &str = include_str!("../../shaders/cross_entropy_wide.wgsl");
pub(crate) const WIDE_TREE_SHADER: &str =
    include_str!("../../shaders/cross_entropy_wide_tree.wgsl");
pub(crate) const NARROW_SHADER: &str = include_str!("../../shaders/cross_entropy_narrow.wgsl");
pub(crate) const SUBGROUP_SHADER: &str = include_str!("../../shaders/cross_entropy_subgroup.wgsl");
pub(crate) const PLAIN_SHADER: &str = include_str!("../../shaders/cross_entropy_plain.wgsl");
pub(crate) const VEC4_BINDING_SHADER: &str = include_str!("../../shaders/logits_vec4_binding.wgsl");
pub(crate) const VEC4_SCALAR_SHADER: &str = include_str!("../../shaders/logits_vec4_scalar.wgsl");

pub(crate) const SPLIT_ROWS_SHADER: &str =
    include_str!("../../shaders/cross_entropy_split_rows.wgsl");
pub(crate) const SPLIT_LANES_SHADER: &str =
    include_str!("../../shaders/cross_entropy_split_lanes.wgsl");
/// Invocations per workgroup of the split lanes; keep in sync with `WG` in
/// `cross_entropy_split_lanes.wgsl`.
pub(crate) const SPLIT_LANES_WORKGROUP_SIZE: u32 = 128;
pub(crate) const SPLIT_FINISH_SHADER: &str =
    include_str!("../../shaders/cross_entropy_split_finish.wgsl");
/// Words per run in the split kernels' segments buffer; keep in sync with
/// `SEGMENT_WORDS` in both split shaders.
pub(crate) const SEGMENT_WORDS: u64 = 5;
/// The most runs a row is split into (the finishing pass walks them in a
/// loop, within the trip budget).
pub(crate) const MAX_SEGMENTS: usize = 1024;
/// A split row's runs hold at least this many classes.
pub(crate) const MIN_SEGMENT_CLASSES: usize = 4096;

/// Runs to cut each row of a chunk of `rows` rows of `classes` into, so that
/// about `target_groups` workgroups have work: 1 (no split) unless the rows
/// are too few and long enough for two runs of [`MIN_SEGMENT_CLASSES`].
pub(crate) fn auto_segments(rows: usize, classes: usize, target_groups: usize) -> u32 {
    let by_rows = target_groups.div_ceil(rows.max(1));
    let by_classes = classes / MIN_SEGMENT_CLASSES;
    by_rows.min(by_classes).clamp(1, u32::MAX as usize) as u32
}

pub(crate) const WEIGHTS_SHADER: &str = include_str!("../../shaders/cross_entropy_weights.wgsl");
pub(crate) const FUSED_WIDE_SHADER: &str =
    include_str!("../../shaders/cross_entropy_fused_wide.wgsl");
pub(crate) const FUSED_NARROW_SHADER: &str =
    include_str!("../../shaders/cross_entropy_fused_narrow.wgsl");
pub(crate) const FUSED_OUT_SHADER: &str =
    include_str!("../../shaders/cross_entropy_fused_out.wgsl");
pub(crate) const FUSED_IN_PLACE_SHADER: &str =
    include_str!("../../shaders/cross_entropy_fused_in_place.wgsl");

/// The subgroup sizes an adapter may use, where it has `Features::SUBGROUP`,
/// and the subgroup kernel's workgroup size (its override constant `WG`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SubgroupSizes {
    pub min: u32,
    pub max: u32,
    pub workgroup: u32,
}

impl SubgroupSizes {
    /// Stands in where the device has no subgroups (and so no subgroup
    /// kernel, the only reader of these sizes).
    pub(crate) const NONE: SubgroupSizes = SubgroupSizes {
        min: 1,
        max: 1,
        workgroup: SUBGROUP_WORKGROUP_SIZE,
    };
}

/// The workgroup sizes the planner sizes a call's workgroups by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Workgroups {
    pub subgroups: SubgroupSizes,
    /// The narrow kernel's (and the weights pre-pass's).
    pub narrow: u32,
    /// The wide kernels' (`cross_entropy_wide_tree.wgsl`).
    pub wide: u32,
}

/// Classes a row may have for the single-read narrow kernel (its private
/// row cache); keep in sync with `NARROW_CACHE` in
/// `cross_entropy_fused_narrow.wgsl`.
pub(crate) const NARROW_CACHE_CLASSES: usize = 64;
/// The single-read wide kernel caches at most this many classes.
pub(crate) const MAX_ROW_CACHE_CLASSES: u32 = 4096;
/// Workgroup memory the wide tree takes besides the row cache: five arrays
/// of a word per invocation.
pub(crate) fn wide_tree_bytes(wide_workgroup: u32) -> u32 {
    5 * 4 * wide_workgroup
}

/// The row cache of the single-read wide kernel in workgroups of
/// `wide_workgroup` on a device with `workgroup_bytes` of workgroup memory:
/// a multiple of the workgroup size, at most [`MAX_ROW_CACHE_CLASSES`]; 0
/// when not even one stride fits.
pub(crate) fn row_cache_classes(workgroup_bytes: u32, wide_workgroup: u32) -> u32 {
    let classes = workgroup_bytes.saturating_sub(wide_tree_bytes(wide_workgroup)) / 4;
    (classes / wide_workgroup * wide_workgroup).min(MAX_ROW_CACHE_CLASSES)
}

/// Whether one call can take the single-read path: logits (not
/// probabilities), a row that fits the variant's cache, and for a packed
/// half gradient an even C (so that no storage word spans two rows).
pub(crate) fn single_read_fits(
    variant: KernelVariant,
    classes: usize,
    row_cache: u32,
    gradient_per_word: usize,
) -> bool {
    let cache = match variant {
        KernelVariant::Wide => row_cache as usize,
        // Gradient rows that fit the cache run on the wide kernel instead.
        KernelVariant::Subgroup => 0,
        KernelVariant::Narrow => NARROW_CACHE_CLASSES,
    };
    classes <= cache && classes.is_multiple_of(gradient_per_word)
}

/// Which fused kernel computes the rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelVariant {
    /// A workgroup per row, threads striding over the classes, with a
    /// shared-memory tree per row. For wide rows.
    Wide,
    /// An invocation per row with no barrier per row. For narrow rows (at
    /// most 256 classes; wider rows use [`KernelVariant::Wide`]), and on
    /// CPU-type adapters for plain f32 rows of a multiple of 4 classes,
    /// read as `vec4`s: up to 2,048 classes a row per invocation, longer
    /// rows cut into runs of at most 2,048 an invocation each and merged by
    /// a second pass (`GpuOptions::row_segments`).
    Narrow,
    /// A subgroup per row, combined with subgroup operations: no barrier
    /// per row. Needs `Features::SUBGROUP`; without it, or for rows too
    /// long for its loop budget, [`KernelVariant::Wide`] runs instead, and
    /// so it does for a gradient of rows that fit the single-read row cache
    /// (so that one read and two give the same bits).
    Subgroup,
}

impl KernelVariant {
    /// The default choice for `classes` on an adapter with or without
    /// subgroups, CPU-type or not.
    pub(crate) fn for_classes(
        classes: usize,
        subgroups: Option<SubgroupSizes>,
        cpu_adapter: bool,
    ) -> KernelVariant {
        let narrow_max = if cpu_adapter {
            CPU_NARROW_DEFAULT_MAX_CLASSES
        } else {
            NARROW_DEFAULT_MAX_CLASSES
        };
        if classes <= narrow_max {
            KernelVariant::Narrow
        } else if subgroups.is_some() {
            KernelVariant::Subgroup
        } else {
            KernelVariant::Wide
        }
    }

    /// The kernel that runs when `self` is asked for: the narrow kernel
    /// only takes rows of at most 256 classes, and the subgroup kernel needs
    /// subgroups and rows within its loop budget.
    pub(crate) fn effective(
        self,
        classes: usize,
        passes: u64,
        subgroups: Option<SubgroupSizes>,
    ) -> KernelVariant {
        match self {
            KernelVariant::Narrow if classes > NARROW_MAX_CLASSES => KernelVariant::Wide,
            KernelVariant::Subgroup => match subgroups {
                Some(sizes) if classes <= subgroup_max_classes(passes, sizes) => self,
                _ => KernelVariant::Wide,
            },
            _ => self,
        }
    }
}

/// The most classes a row may have in the subgroup kernel: the lanes of the
/// smallest subgroup walk it within the loop budget.
fn subgroup_max_classes(passes: u64, sizes: SubgroupSizes) -> usize {
    ((TRIP_BUDGET - 4) / passes * sizes.min as u64) as usize
}

pub(crate) const FLAG_DENSE: u32 = 1;
pub(crate) const FLAG_PROBABILITIES: u32 = 2;
pub(crate) const FLAG_CLASS_WEIGHTS: u32 = 4;
pub(crate) const FLAG_SAMPLE_WEIGHTS: u32 = 8;
pub(crate) const FLAG_IGNORE_INDEX: u32 = 16;
pub(crate) const FLAG_SMOOTHING: u32 = 32;
pub(crate) const FLAG_SOFTCAP: u32 = 64;
pub(crate) const FLAG_Z_LOSS: u32 = 128;
pub(crate) const FLAG_ROW_STATS: u32 = 256;
pub(crate) const FLAG_VEC4: u32 = 512;
pub(crate) const FLAG_NARROW_PARTITION: u32 = 1024;
/// The `FLAG_MASK` of a pipeline built for any flags (the shader's
/// default).
pub(crate) const ANY_FLAGS: u32 = u32::MAX;

/// Loop iterations one invocation may run. lavapipe silently stops a loop
/// after 65,535 (DESIGN §5); this leaves a wide margin.
pub(crate) const TRIP_BUDGET: u64 = 30_000;
/// Aim for about this many workgroups per chunk on a GPU.
pub(crate) const GPU_TARGET_GROUPS: usize = 4096;

/// Workgroups per chunk to aim for on a CPU-type adapter: a few per
/// hardware thread, so that each workgroup walks many rows (lavapipe runs
/// workgroups one at a time per thread, and each pays its barriers and
/// setup; at 65,536×10 this was about 4× faster than the GPU figure).
pub(crate) fn cpu_target_groups() -> usize {
    4 * std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// How the planner sizes workgroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Grouping {
    /// This many rows each (still capped by the loop-trip budget).
    Rows(u32),
    /// About this many workgroups per chunk.
    Groups(usize),
}
/// Most workgroups in one dispatch dimension.
pub(crate) const MAX_GROUPS_PER_DIMENSION: u32 = 65_535;

/// Keep in sync with `struct Params` in `shaders/cross_entropy.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct Params {
    pub batch: u32,
    pub classes: u32,
    pub chunk_rows: u32,
    pub row_base: u32,
    pub rows_per_group: u32,
    pub group_base: u32,
    pub flags: u32,
    pub ignore_index: i32,
    pub label_smoothing: f32,
    pub class_weight_sum: f32,
    /// Always 0: the shaders' `opaque()` XORs with it.
    pub zero: u32,
    pub z_loss: f32,
    pub softcap: f32,
    pub final_partial: u32,
    pub reduction: u32,
    /// Runs per row in the split kernels; 1 elsewhere.
    pub segments: u32,
}

/// A run of rows whose logits fit one storage binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub first_row: usize,
    pub rows: usize,
    pub rows_per_group: u32,
    pub groups: u32,
    pub group_base: u32,
}

/// The loop trips one row costs the invocations that work on it: the class
/// loops plus, for the wide kernel, the workgroup trees.
fn trips_per_row(variant: KernelVariant, classes: usize, passes: u64, sizes: Workgroups) -> u64 {
    match variant {
        KernelVariant::Wide => {
            passes * (classes as u64).div_ceil(sizes.wide as u64) + wide_tree_trips(sizes.wide)
        }
        KernelVariant::Narrow => passes * classes as u64 + 4,
        KernelVariant::Subgroup => {
            passes * (classes as u64).div_ceil(sizes.subgroups.min as u64) + 4
        }
    }
}

/// The most classes a wide row may have within the loop budget in
/// workgroups of `wide_workgroup`.
fn wide_budget_classes(wide_workgroup: u32, passes: u64) -> u64 {
    (TRIP_BUDGET - wide_tree_trips(wide_workgroup)) / passes * wide_workgroup as u64
}

/// The wide workgroup size of a call: `configured`, doubled (up to `max`)
/// while rows of `classes` would pass the loop budget.
pub(crate) fn wide_workgroup_for(configured: u32, max: u32, classes: usize, passes: u64) -> u32 {
    let mut size = configured;
    while size < max && classes as u64 > wide_budget_classes(size, passes) {
        size *= 2;
    }
    size
}

/// The trips of a wide row's two workgroup trees and its bookkeeping.
fn wide_tree_trips(wide_workgroup: u32) -> u64 {
    2 * (wide_workgroup.ilog2() as u64 + 1) + 4
}

/// The narrow workgroup size of a call over `batch` rows: `configured`, or
/// the smallest power of two (at least [`MIN_WORKGROUP_SIZE`]) that holds
/// every row when that is smaller. A small batch then runs as one small
/// workgroup instead of one large, mostly idle one whose tree still pays
/// for every invocation (about 1.2 µs an 8-lane step on lavapipe).
pub(crate) fn narrow_workgroup_for(configured: u32, batch: usize) -> u32 {
    let fits = (batch.clamp(1, 1 << 16) as u32).next_power_of_two();
    configured.min(fits.max(MIN_WORKGROUP_SIZE))
}

/// Rows a workgroup works on at once: one for the wide kernel, an
/// invocation each for the narrow one, and a subgroup each (counting the
/// fewest subgroups a workgroup can have) for the subgroup kernel.
fn rows_at_once(variant: KernelVariant, sizes: Workgroups) -> usize {
    match variant {
        KernelVariant::Wide => 1,
        KernelVariant::Narrow => sizes.narrow as usize,
        KernelVariant::Subgroup => {
            (sizes.subgroups.workgroup / sizes.subgroups.max).max(1) as usize
        }
    }
}

/// The most classes one row may have with this kernel on a device whose
/// bindings hold `max_binding_bytes`, for `element_bytes` per element of the
/// widest `[B, C]` array a chunk binds.
pub(crate) fn max_classes(
    variant: KernelVariant,
    passes: u64,
    max_binding_bytes: u64,
    element_bytes: u64,
    sizes: Workgroups,
) -> usize {
    let by_trips = match variant {
        KernelVariant::Wide => wide_budget_classes(sizes.wide, passes),
        KernelVariant::Narrow => (TRIP_BUDGET - 4) / passes,
        KernelVariant::Subgroup => subgroup_max_classes(passes, sizes.subgroups) as u64,
    };
    by_trips.min(max_binding_bytes / element_bytes) as usize
}

/// Cuts `batch` rows into chunks whose `[B, C]` arrays (`element_bytes` per
/// element in the widest) fit `max_binding_bytes` and chooses each chunk's
/// workgroups as `grouping` says, within the loop-trip budget, for narrow
/// workgroups of `sizes`. Every chunk but the last
/// has a multiple of `row_multiple` rows, so that chunk offsets inside one
/// buffer stay aligned.
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan(
    variant: KernelVariant,
    sizes: Workgroups,
    batch: usize,
    classes: usize,
    passes: u64,
    max_binding_bytes: u64,
    element_bytes: u64,
    grouping: Grouping,
    row_multiple: usize,
) -> Result<Vec<Chunk>> {
    let max_classes = max_classes(variant, passes, max_binding_bytes, element_bytes, sizes);
    if classes > max_classes {
        return Err(Error::RowTooLarge {
            classes,
            max_classes,
        });
    }
    let rows_per_chunk = rows_per_chunk(
        batch,
        classes,
        max_binding_bytes,
        element_bytes,
        row_multiple,
    )?;
    // Rows one invocation walks per workgroup row.
    let lanes = rows_at_once(variant, sizes);
    let max_rows_per_group =
        lanes * (TRIP_BUDGET / trips_per_row(variant, classes, passes, sizes)).max(1) as usize;
    let mut chunks = Vec::new();
    let (mut first_row, mut group_base) = (0usize, 0u32);
    while first_row < batch {
        let rows = rows_per_chunk.min(batch - first_row);
        let wanted = match grouping {
            Grouping::Rows(r) => r as usize,
            Grouping::Groups(groups) => lanes * rows.div_ceil(lanes * groups.max(1)),
        };
        let rows_per_group = wanted.clamp(1, max_rows_per_group);
        let groups = rows.div_ceil(rows_per_group) as u32;
        chunks.push(Chunk {
            first_row,
            rows,
            rows_per_group: rows_per_group as u32,
            groups,
            group_base,
        });
        first_row += rows;
        group_base += groups;
    }
    Ok(chunks)
}

/// The rows of a chunk whose `[B, C]` arrays (`element_bytes` per element
/// in the widest) fit `max_binding_bytes`, a multiple of `row_multiple`.
fn rows_per_chunk(
    batch: usize,
    classes: usize,
    max_binding_bytes: u64,
    element_bytes: u64,
    row_multiple: usize,
) -> Result<usize> {
    let max_batch = (max_binding_bytes / 4).min(u32::MAX as u64 / 2) as usize;
    if batch > max_batch {
        return Err(Error::BatchTooLarge { batch, max_batch });
    }
    let row_bytes = classes as u64 * element_bytes;
    let rows = (max_binding_bytes / row_bytes) as usize / row_multiple * row_multiple;
    if rows == 0 {
        return Err(Error::RowTooLarge {
            classes,
            max_classes: (max_binding_bytes / element_bytes / row_multiple as u64) as usize,
        });
    }
    Ok(rows)
}

/// [`plan`] for the split lanes (`cross_entropy_split_lanes.wgsl`): rows cut
/// into chunks that fit the bindings, grouped for the finishing pass. The
/// runs need no trip check: each is at most [`NARROW_VEC4_MAX_CLASSES`]
/// classes ([`lane_runs`]), two vec4s a trip.
pub(crate) fn plan_lane_runs(
    batch: usize,
    classes: usize,
    max_binding_bytes: u64,
    element_bytes: u64,
    row_multiple: usize,
) -> Result<Vec<Chunk>> {
    let rows_per_chunk = rows_per_chunk(
        batch,
        classes,
        max_binding_bytes,
        element_bytes,
        row_multiple,
    )?;
    let mut chunks: Vec<Chunk> = (0..batch)
        .step_by(rows_per_chunk)
        .map(|first_row| Chunk {
            first_row,
            rows: rows_per_chunk.min(batch - first_row),
            rows_per_group: 0,
            groups: 0,
            group_base: 0,
        })
        .collect();
    group_for_split_finish(&mut chunks);
    Ok(chunks)
}

/// Regroups planned chunks for the split kernels' finishing pass, which
/// takes a row per invocation like the narrow kernel (its partials are the
/// ones the reduction reads).
pub(crate) fn group_for_split_finish(chunks: &mut [Chunk]) {
    let mut group_base = 0;
    for chunk in chunks {
        chunk.rows_per_group = NARROW_WORKGROUP_SIZE;
        chunk.groups = chunk.rows.div_ceil(NARROW_WORKGROUP_SIZE as usize) as u32;
        chunk.group_base = group_base;
        group_base += chunk.groups;
    }
}

/// A 2-D dispatch covering `groups` workgroups.
pub(crate) fn dispatch_size(groups: u32) -> (u32, u32) {
    let x = groups.clamp(1, MAX_GROUPS_PER_DIMENSION);
    (x, groups.div_ceil(x))
}

pub(crate) fn uniform_entry(binding: u32, size: usize) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: wgpu::BufferSize::new(size as u64),
        },
        count: None,
    }
}

pub(crate) fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

/// The forward kernels' bindings (`cross_entropy_forward.wgsl`).
pub(crate) fn layout(device: &wgpu::Device) -> wgpu::BindGroupLayout {
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("cross_entropy"),
        entries: &[
            uniform_entry(0, std::mem::size_of::<Params>()),
            storage_entry(1, true),  // logits chunk
            storage_entry(2, true),  // dense targets chunk
            storage_entry(3, true),  // labels
            storage_entry(4, true),  // class weights
            storage_entry(5, true),  // sample weights
            storage_entry(6, false), // per-example losses
            storage_entry(7, false), // partials
            storage_entry(8, false), // row stats (lse, Σ a_c / s)
        ],
    })
}

/// The subgroup kernel's bindings with vec4 loads: the forward bindings and
/// the logits chunk again, as vec4s.
pub(crate) fn vec4_layout(device: &wgpu::Device) -> wgpu::BindGroupLayout {
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("cross_entropy_vec4"),
        entries: &[
            uniform_entry(0, std::mem::size_of::<Params>()),
            storage_entry(1, true),
            storage_entry(2, true),
            storage_entry(3, true),
            storage_entry(4, true),
            storage_entry(5, true),
            storage_entry(6, false),
            storage_entry(7, false),
            storage_entry(8, false),
            storage_entry(9, true), // the logits chunk as vec4s
        ],
    })
}

/// Storage buffers the out-of-place single-read kernels bind in one stage
/// (WebGPU's default limit is 8).
pub(crate) const FUSED_STORAGE_BUFFERS: u32 = 9;

/// The single-read kernels' bindings: the forward kernels' and, out of
/// place, the gradient chunk; in place, the logits are written.
pub(crate) fn fused_layout(device: &wgpu::Device, in_place: bool) -> wgpu::BindGroupLayout {
    let mut entries = vec![
        uniform_entry(0, std::mem::size_of::<Params>()),
        storage_entry(1, !in_place), // logits chunk
        storage_entry(2, true),      // dense targets chunk
        storage_entry(3, true),      // labels
        storage_entry(4, true),      // class weights
        storage_entry(5, true),      // sample weights
        storage_entry(6, false),     // per-example losses
        storage_entry(7, false),     // partials
        storage_entry(8, false),     // row stats
    ];
    if !in_place {
        entries.push(storage_entry(9, false)); // gradient chunk
    }
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(if in_place {
            "cross_entropy_fused_in_place"
        } else {
            "cross_entropy_fused"
        }),
        entries: &entries,
    })
}

/// The gradient kernels' bindings; in place, the logits are written and
/// there is no separate gradient buffer.
pub(crate) fn gradient_layout(device: &wgpu::Device, in_place: bool) -> wgpu::BindGroupLayout {
    let mut entries = vec![
        uniform_entry(0, std::mem::size_of::<Params>()),
        storage_entry(1, !in_place), // logits chunk
        storage_entry(2, true),      // dense targets chunk
        storage_entry(3, true),      // labels
        storage_entry(4, true),      // class weights
        storage_entry(5, true),      // sample weights
        storage_entry(6, true),      // row stats
        storage_entry(7, true),      // partials
    ];
    if !in_place {
        entries.push(storage_entry(8, false)); // gradient chunk
    }
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(if in_place {
            "cross_entropy_grad_in_place"
        } else {
            "cross_entropy_grad"
        }),
        entries: &entries,
    })
}

/// The code the gradient kernels scale by (see `gradient_scale` in WGSL).
pub(crate) fn reduction_code(reduction: crate::Reduction) -> u32 {
    use crate::Reduction;
    match reduction {
        Reduction::None => 0,
        Reduction::Sum => 1,
        Reduction::Mean => 2,
        Reduction::SumOverBatchSize => 3,
        Reduction::SumByNonzeroWeights => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAVAPIPE: Workgroups = Workgroups {
        subgroups: SubgroupSizes {
            min: 8,
            max: 8,
            workgroup: SUBGROUP_WORKGROUP_SIZE,
        },
        narrow: NARROW_WORKGROUP_SIZE,
        wide: WIDE_WORKGROUP_SIZE,
    };

    #[test]
    fn plan_chunks_by_binding_size() {
        let chunks = plan(
            KernelVariant::Wide,
            LAVAPIPE,
            64,
            600_000,
            1,
            128 << 20,
            4,
            Grouping::Groups(GPU_TARGET_GROUPS),
            1,
        )
        .unwrap();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].rows, 55);
        assert_eq!(chunks[1].first_row, 55);
        assert_eq!(chunks[1].group_base, chunks[0].groups);
        assert!(chunks.iter().all(|c| c.rows_per_group == 1));
    }

    #[test]
    fn plan_keeps_trip_count_under_budget() {
        let variants = [
            KernelVariant::Wide,
            KernelVariant::Narrow,
            KernelVariant::Subgroup,
        ];
        let small = Workgroups {
            narrow: 32,
            wide: 32,
            ..LAVAPIPE
        };
        let large = Workgroups {
            subgroups: SubgroupSizes {
                min: 4,
                max: 128,
                workgroup: 1024,
            },
            narrow: 1024,
            wide: 1024,
        };
        for classes in [1, 10, 64, 1000, 50_000, 600_000] {
            for (variant, sizes) in variants
                .into_iter()
                .flat_map(|v| [small, LAVAPIPE, large].map(|s| (v, s)))
            {
                let Ok(chunks) = plan(
                    variant,
                    sizes,
                    200_000,
                    classes,
                    2,
                    u64::MAX / 4,
                    4,
                    Grouping::Groups(GPU_TARGET_GROUPS),
                    1,
                ) else {
                    assert!(classes > max_classes(variant, 2, u64::MAX / 4, 4, sizes));
                    continue;
                };
                // The fewest rows at once means the most rows per invocation.
                let lanes = rows_at_once(variant, sizes) as u64;
                for chunk in chunks {
                    let rows_per_invocation = (chunk.rows_per_group as u64).div_ceil(lanes);
                    let trips = rows_per_invocation * trips_per_row(variant, classes, 2, sizes);
                    assert!(
                        trips <= TRIP_BUDGET,
                        "{variant:?} C={classes}: {trips} trips"
                    );
                }
            }
        }
    }

    #[test]
    fn long_rows_take_a_larger_wide_workgroup() {
        assert_eq!(wide_workgroup_for(32, 1024, 900_000, 1), 32);
        assert_eq!(wide_workgroup_for(32, 1024, 1_000_000, 1), 64);
        assert_eq!(wide_workgroup_for(32, 1024, 1_000_000, 2), 128);
        assert_eq!(wide_workgroup_for(128, 1024, 4_000_000, 1), 256);
        assert_eq!(wide_workgroup_for(128, 512, 40_000_000, 1), 512);
        assert_eq!(wide_workgroup_for(256, 1024, 10, 1), 256);
        for (configured, classes, passes) in [(32, 2_000_000, 1), (128, 7_000_000, 2)] {
            let size = wide_workgroup_for(configured, 1024, classes, passes);
            assert!(classes as u64 <= wide_budget_classes(size, passes));
            assert!(classes as u64 > wide_budget_classes(size / 2, passes));
        }
    }

    #[test]
    fn small_batches_take_a_small_narrow_workgroup() {
        let cases = [
            (128, 0, 32),
            (128, 1, 32),
            (128, 32, 32),
            (128, 33, 64),
            (128, 100, 128),
            (128, 1 << 20, 128),
            (64, 100, 64),
            (512, 300, 512),
            (1024, usize::MAX, 1024),
        ];
        for (configured, batch, size) in cases {
            assert_eq!(
                narrow_workgroup_for(configured, batch),
                size,
                "{batch} rows"
            );
        }
    }

    #[test]
    fn plan_aligns_chunks_when_asked() {
        // 10 classes of f32 are 40 bytes: 32 rows make 1280 bytes, a multiple of 256.
        let chunks = plan(
            KernelVariant::Narrow,
            LAVAPIPE,
            1000,
            10,
            1,
            10_000,
            4,
            Grouping::Groups(GPU_TARGET_GROUPS),
            32,
        )
        .unwrap();
        assert!(chunks.iter().all(|c| c.first_row % 32 == 0));
        assert_eq!(chunks[0].rows, 224);
    }

    #[test]
    fn lane_runs_are_chunked_by_binding_and_grouped_for_the_finish() {
        // 262,144 classes: 1 MiB rows, 3 to a 3.5 MiB binding, in pairs.
        let chunks = plan_lane_runs(9, 262_144, 7 << 19, 4, 2).unwrap();
        let rows: Vec<usize> = chunks.iter().map(|c| c.rows).collect();
        assert_eq!(rows, [2, 2, 2, 2, 1]);
        let mut group_base = 0;
        for (i, chunk) in chunks.iter().enumerate() {
            assert_eq!(chunk.first_row, 2 * i);
            assert_eq!(chunk.rows_per_group, NARROW_WORKGROUP_SIZE);
            assert_eq!(chunk.groups, 1);
            assert_eq!(chunk.group_base, group_base);
            group_base += chunk.groups;
        }
        assert!(matches!(
            plan_lane_runs(1, 262_144, 1 << 19, 4, 1),
            Err(Error::RowTooLarge { .. })
        ));
    }

    #[test]
    fn plan_rejects_huge_rows() {
        assert!(matches!(
            plan(
                KernelVariant::Wide,
                LAVAPIPE,
                1,
                100_000_000,
                1,
                1 << 40,
                4,
                Grouping::Groups(GPU_TARGET_GROUPS),
                1
            ),
            Err(Error::RowTooLarge { .. })
        ));
    }

    #[test]
    fn row_cache_follows_workgroup_memory() {
        assert_eq!(row_cache_classes(16_384, 128), 3456);
        assert_eq!(row_cache_classes(16_384, 256), 2816);
        assert_eq!(row_cache_classes(16_384, 32), 3936);
        assert_eq!(row_cache_classes(32_768, 128), MAX_ROW_CACHE_CLASSES);
        assert_eq!(row_cache_classes(2048, 128), 0);
        assert_eq!(row_cache_classes(16_384, 1024), 0);
        assert!(single_read_fits(KernelVariant::Wide, 3456, 3456, 2));
        assert!(!single_read_fits(KernelVariant::Wide, 3457, 3456, 1));
        assert!(!single_read_fits(KernelVariant::Wide, 33, 3456, 2));
        assert!(single_read_fits(KernelVariant::Narrow, 64, 0, 1));
        assert!(!single_read_fits(KernelVariant::Narrow, 65, 4096, 1));
    }

    #[test]
    fn half_chunks_hold_twice_the_rows() {
        let f32_chunks = plan(
            KernelVariant::Narrow,
            LAVAPIPE,
            1000,
            10,
            1,
            10_240,
            4,
            Grouping::Groups(GPU_TARGET_GROUPS),
            1,
        )
        .unwrap();
        let half_chunks = plan(
            KernelVariant::Narrow,
            LAVAPIPE,
            1000,
            10,
            1,
            10_240,
            2,
            Grouping::Groups(GPU_TARGET_GROUPS),
            1,
        )
        .unwrap();
        assert_eq!(f32_chunks[0].rows, 256);
        assert_eq!(half_chunks[0].rows, 512);
    }

    #[test]
    fn dispatch_covers_groups() {
        assert_eq!(dispatch_size(1), (1, 1));
        assert_eq!(dispatch_size(65_536), (65_535, 2));
    }
}
