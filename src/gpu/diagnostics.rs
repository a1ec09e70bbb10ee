//! Host side of the `shaders/diagnostics_*.wgsl` kernels: label-quality
//! scores, histogram counts, the top-k losses and per-class loss sums, with
//! their own pipelines built once on a [`GpuContext`]'s device and one pool
//! of buffers reused across calls.

use std::borrow::Cow;
use std::num::NonZeroU64;

use bytemuck::{Pod, Zeroable};
use futures_intrusive::sync::Mutex as AsyncMutex;

use super::cross_entropy::{dispatch_size, storage_entry, uniform_entry, MAX_GROUPS_PER_DIMENSION};
use super::{compute_pipeline, map_read, GpuContext, PARTIAL_SHADER};
use crate::diagnostics::{score_labels, Histogram, PerClassLoss, Ranked, RowScore, TopK};
use crate::error::{Error, Result};
use crate::spec::{check_labels, Batch, CrossEntropy, InputKind, Targets};

pub(crate) const SCORES_SHADER: &str = include_str!("../../shaders/diagnostics_scores.wgsl");
pub(crate) const HISTOGRAM_SHADER: &str = include_str!("../../shaders/diagnostics_histogram.wgsl");
pub(crate) const TOP_K_SHADER: &str = include_str!("../../shaders/diagnostics_top_k.wgsl");
pub(crate) const PER_CLASS_SHADER: &str = include_str!("../../shaders/diagnostics_per_class.wgsl");
pub(crate) const PER_CLASS_REDUCE_SHADER: &str =
    include_str!("../../shaders/diagnostics_per_class_reduce.wgsl");

/// Threads per workgroup of the scores kernel; keep in sync with `WG` in
/// `diagnostics_scores.wgsl`.
pub(crate) const SCORES_WORKGROUP_SIZE: u32 = 64;
/// Threads per workgroup of the histogram kernel; keep in sync with `WG` in
/// `diagnostics_histogram.wgsl`.
pub(crate) const HISTOGRAM_WORKGROUP_SIZE: u32 = 256;
/// Threads per workgroup of the top-k kernel; keep in sync with `WG` in
/// `diagnostics_top_k.wgsl`.
pub(crate) const TOP_K_WORKGROUP_SIZE: u32 = 256;
/// Entries each top-k workgroup sorts; keep in sync with `TILE` in
/// `diagnostics_top_k.wgsl`.
pub(crate) const TOP_K_TILE: u32 = 2048;
/// Threads per workgroup of the per-class kernel; keep in sync with `WG` in
/// `diagnostics_per_class.wgsl`.
pub(crate) const PER_CLASS_WORKGROUP_SIZE: u32 = 256;
/// Rows per per-class tile; keep in sync with `TILE` in
/// `diagnostics_per_class.wgsl`.
pub(crate) const PER_CLASS_TILE: u32 = 1024;
/// Threads per workgroup of the per-class reduction; keep in sync with `WG`
/// in `diagnostics_per_class_reduce.wgsl`.
pub(crate) const PER_CLASS_REDUCE_WORKGROUP_SIZE: u32 = 256;

// Each thread takes whole pairs of a top-k tile and whole rows of a
// per-class tile.
const _: () = assert!(TOP_K_TILE.is_multiple_of(2 * TOP_K_WORKGROUP_SIZE));
const _: () = assert!(PER_CLASS_TILE.is_multiple_of(2 * PER_CLASS_WORKGROUP_SIZE));

/// One invocation walks a whole row; lavapipe silently stops a loop after
/// 65,535 trips (DESIGN §5), so rows stay well below that.
const MAX_SCORE_CLASSES: usize = 29_000;
/// The largest k of the GPU top-k: one list is at most half a tile.
const MAX_TOP_K: usize = TOP_K_TILE as usize / 2;
/// Workgroup memory the top-k tile takes (keys and rows).
const TOP_K_SHARED_BYTES: u32 = TOP_K_TILE * 8;
/// The per-class sort key keeps the label in 21 bits; the all-ones key
/// marks an empty place.
const MAX_PER_CLASS_CLASSES: usize = (1 << 21) - 1;
/// Tiles one per-class workgroup adds up in order (about 250 loop trips
/// each, far inside the trip budget).
const PER_CLASS_MAX_TILES: u32 = 16;
/// Slices (workgroups) per per-class round.
const PER_CLASS_MAX_SLICES: u32 = 32;
/// Device memory for the slices of one round.
const PER_CLASS_SLICE_BUDGET: u64 = 32 << 20;
/// Rounds per submission, each one partials pass and one reduction; the
/// host adds the submissions' totals in f64. Keeps each sum's float-float
/// additions at most 10 + 16 + 32 + 8 (see `per_class`).
const PER_CLASS_MAX_ROUNDS: u32 = 8;

const FLAG_PROBABILITIES: u32 = 1;
const FLAG_SCORES_IGNORE: u32 = 2;
const FLAG_SOFTCAP: u32 = 4;
const FLAG_HISTOGRAM_IGNORE: u32 = 1;
const FLAG_TOP_K_LOSSES: u32 = 1;
const FLAG_TOP_K_IGNORE: u32 = 2;
const FLAG_PER_CLASS_IGNORE: u32 = 1;

/// Keep in sync with `struct Params` in `shaders/diagnostics_scores.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct ScoresParams {
    pub rows: u32,
    pub classes: u32,
    pub flags: u32,
    pub ignore_index: i32,
    /// Always 0.
    pub zero: u32,
    pub softcap: f32,
    pub _pad: [u32; 2],
}

/// Keep in sync with `struct Score` in `shaders/diagnostics_scores.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct GpuScore {
    pub confidence: f32,
    pub margin: f32,
    pub predicted: i32,
}

/// Keep in sync with `struct Params` in `shaders/diagnostics_histogram.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct HistogramParams {
    pub count: u32,
    pub bins: u32,
    pub flags: u32,
    pub ignore_index: i32,
    pub top: f32,
    pub _pad: [u32; 3],
}

/// Keep in sync with `struct Params` in `shaders/diagnostics_top_k.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub(crate) struct TopKParams {
    pub count: u32,
    pub list: u32,
    pub first_size: u32,
    pub flags: u32,
    pub ignore_index: i32,
    pub in_offset: u32,
    pub out_offset: u32,
    pub _pad: u32,
}

/// Keep in sync with `struct Params` in `shaders/diagnostics_per_class.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub(crate) struct PerClassParams {
    pub rows: u32,
    pub first: u32,
    pub classes: u32,
    pub tiles: u32,
    pub slices: u32,
    pub flags: u32,
    pub ignore_index: i32,
    /// Always 0.
    pub zero: u32,
}

/// Keep in sync with `struct Params` in
/// `shaders/diagnostics_per_class_reduce.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct PerClassReduceParams {
    pub classes: u32,
    pub slices: u32,
    /// Always 0.
    pub zero: u32,
    pub _pad: u32,
}

/// Keep in sync with `struct ClassPartial` in both per-class shaders.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct ClassPartial {
    pub sum: [f32; 2],
    pub count: u32,
    pub nonfinite: u32,
}

/// Buffers kept between calls; each grows when a call needs more.
#[derive(Default)]
struct Pool {
    /// Logits or losses.
    values: Option<wgpu::Buffer>,
    labels: Option<wgpu::Buffer>,
    edges: Option<wgpu::Buffer>,
    /// Scores, counters, top-k lists or per-class totals.
    output: Option<wgpu::Buffer>,
    /// Per-class slices.
    work: Option<wgpu::Buffer>,
    uniforms: Option<wgpu::Buffer>,
    staging: Option<wgpu::Buffer>,
    created: u64,
}

impl Pool {
    fn bytes(&self) -> u64 {
        [
            &self.values,
            &self.labels,
            &self.edges,
            &self.output,
            &self.work,
            &self.uniforms,
            &self.staging,
        ]
        .into_iter()
        .map(|b| b.as_ref().map_or(0, |b| b.size()))
        .sum()
    }
}

const STORAGE_IN: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_DST);
const STORAGE_OUT: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// The pool's buffer in `slot`, grown to at least `size` bytes.
fn ensure(
    device: &wgpu::Device,
    created: &mut u64,
    slot: &mut Option<wgpu::Buffer>,
    label: &'static str,
    size: u64,
    usage: wgpu::BufferUsages,
) -> wgpu::Buffer {
    let size = padded(size);
    match slot {
        Some(buffer) if buffer.size() >= size => buffer.clone(),
        _ => {
            let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: false,
            });
            *created += 1;
            *slot = Some(buffer.clone());
            buffer
        }
    }
}

/// One dispatch of a call: its pipeline, bind group, uniform slot and
/// workgroup count.
struct Dispatch<'a> {
    pipeline: &'a wgpu::ComputePipeline,
    group: &'a wgpu::BindGroup,
    slot: u32,
    groups: u32,
}

/// The diagnostics kernels on a [`GpuContext`]'s device, each checked
/// against its CPU twin in the tests:
///
/// - [`GpuDiagnostics::scores`] ([`RowScore`], twin
///   [`crate::diagnostics::scores`]): within about 1e-6 of the f64 twin
///   (f32 softmax); `predicted` is identical (it compares the inputs
///   themselves). Rows of more than [`GpuDiagnostics::max_classes`] classes
///   are [`Error::RowTooLarge`].
/// - [`GpuDiagnostics::histogram`] (twin [`Histogram::add_losses`]): the
///   same counts, bit for bit: each f64 edge is passed as the nearest f32 on
///   the side that keeps every comparison exact.
/// - [`GpuDiagnostics::top_k`] (twin [`crate::diagnostics::top_k`]): the
///   same rows and losses, exactly (integer keys, a total order); k up to
///   [`GpuDiagnostics::max_top_k`].
/// - [`GpuDiagnostics::per_class`] (twin [`PerClassLoss::add_losses`]): the
///   same counts; sums in float-float, within 1e-12 relative of the f64 twin
///   for non-negative losses (see the method); up to
///   [`GpuDiagnostics::max_per_class_classes`] classes.
///
/// [`Scorer`](crate::diagnostics::Scorer) runs each on the CPU where the
/// GPU version does not take the input. Every result is deterministic:
/// no float atomics, fixed orders of summation.
///
/// Build it once per context and reuse it: the pipelines are built here and
/// buffers are kept between calls, grown when a call needs more
/// ([`GpuDiagnostics::pool_bytes`], [`GpuDiagnostics::buffers_created`]).
pub struct GpuDiagnostics {
    device: wgpu::Device,
    queue: wgpu::Queue,
    scores_layout: wgpu::BindGroupLayout,
    scores_pipeline: wgpu::ComputePipeline,
    histogram_layout: wgpu::BindGroupLayout,
    histogram_pipeline: wgpu::ComputePipeline,
    top_k_layout: wgpu::BindGroupLayout,
    top_k_pipeline: wgpu::ComputePipeline,
    per_class_layout: wgpu::BindGroupLayout,
    per_class_pipeline: wgpu::ComputePipeline,
    per_class_reduce_layout: wgpu::BindGroupLayout,
    per_class_reduce_pipeline: wgpu::ComputePipeline,
    placeholder: wgpu::Buffer,
    max_binding_bytes: u64,
    uniform_stride: u64,
    top_k_fits: bool,
    pool: AsyncMutex<Pool>,
}

impl std::fmt::Debug for GpuDiagnostics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuDiagnostics")
            .field("max_binding_bytes", &self.max_binding_bytes)
            .finish_non_exhaustive()
    }
}

fn binding(buffer: &wgpu::Buffer, size: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset: 0,
        size: NonZeroU64::new(padded(size)),
    })
}

fn entry(binding: u32, resource: wgpu::BindingResource<'_>) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry { binding, resource }
}

fn padded(size: u64) -> u64 {
    size.max(16).next_multiple_of(16)
}

fn check_len(what: &'static str, expected: usize, actual: usize) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            what,
            expected,
            actual,
        })
    }
}

/// The passes of one top-k call over `rows` losses keeping lists of `list`
/// entries, the offset of the final list and the entries all passes write.
pub(crate) fn top_k_plan(
    rows: u32,
    list: u32,
    ignore_index: Option<i32>,
) -> (Vec<TopKParams>, u32, u32) {
    let mut flags = FLAG_TOP_K_LOSSES;
    if ignore_index.is_some() {
        flags |= FLAG_TOP_K_IGNORE;
    }
    let mut passes = vec![TopKParams {
        count: rows,
        list,
        first_size: 2,
        flags,
        ignore_index: ignore_index.unwrap_or(0),
        ..Default::default()
    }];
    let mut lists = rows.div_ceil(TOP_K_TILE);
    let mut offset = 0;
    while lists > 1 {
        let count = lists * list;
        passes.push(TopKParams {
            count,
            list,
            first_size: 2 * list,
            in_offset: offset,
            out_offset: offset + count,
            ..Default::default()
        });
        offset += count;
        lists = count.div_ceil(TOP_K_TILE);
    }
    (passes, offset, offset + list)
}

/// The rounds of one per-class submission over `rows` rows: each round's
/// params (with `first` counted from the submission's first row).
pub(crate) fn per_class_plan(
    rows: u32,
    classes: u32,
    max_slices: u32,
    ignore_index: Option<i32>,
) -> Vec<PerClassParams> {
    let tiles = rows
        .div_ceil(max_slices * PER_CLASS_TILE)
        .clamp(1, PER_CLASS_MAX_TILES);
    let per_slice = tiles * PER_CLASS_TILE;
    let per_round = per_slice * max_slices;
    let flags = if ignore_index.is_some() {
        FLAG_PER_CLASS_IGNORE
    } else {
        0
    };
    (0..rows.div_ceil(per_round))
        .map(|round| {
            let first = round * per_round;
            let rows = per_round.min(rows - first);
            PerClassParams {
                rows,
                first,
                classes,
                tiles,
                slices: rows.div_ceil(per_slice),
                flags,
                ignore_index: ignore_index.unwrap_or(0),
                zero: 0,
            }
        })
        .collect()
}

impl GpuDiagnostics {
    /// Builds the pipelines on `context`'s device and queue.
    pub fn new(context: &GpuContext) -> Result<Self> {
        let device = context.device().clone();
        let queue = context.queue().clone();
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let layout = |label: &str, entries: &[wgpu::BindGroupLayoutEntry]| {
            device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(label),
                entries,
            })
        };
        let scores_layout = layout(
            "diagnostics_scores",
            &[
                uniform_entry(0, std::mem::size_of::<ScoresParams>()),
                storage_entry(1, true),  // logits
                storage_entry(2, true),  // labels
                storage_entry(3, false), // scores
            ],
        );
        let histogram_layout = layout(
            "diagnostics_histogram",
            &[
                uniform_entry(0, std::mem::size_of::<HistogramParams>()),
                storage_entry(1, true),  // losses
                storage_entry(2, true),  // labels
                storage_entry(3, true),  // lower edges
                storage_entry(4, false), // counters
            ],
        );
        let top_k_layout = layout(
            "diagnostics_top_k",
            &[
                uniform_entry(0, std::mem::size_of::<TopKParams>()),
                storage_entry(1, true),  // losses
                storage_entry(2, true),  // labels
                storage_entry(3, false), // lists
            ],
        );
        let per_class_layout = layout(
            "diagnostics_per_class",
            &[
                uniform_entry(0, std::mem::size_of::<PerClassParams>()),
                storage_entry(1, true),  // losses
                storage_entry(2, true),  // labels
                storage_entry(3, false), // slices
            ],
        );
        let per_class_reduce_layout = layout(
            "diagnostics_per_class_reduce",
            &[
                uniform_entry(0, std::mem::size_of::<PerClassReduceParams>()),
                storage_entry(1, false), // slices
                storage_entry(2, false), // totals
            ],
        );
        let pipeline = |label: &str, source: Cow<'static, str>, layout: &wgpu::BindGroupLayout| {
            compute_pipeline(&device, label, source, layout)
        };
        let scores_pipeline = pipeline(
            "diagnostics_scores",
            Cow::Borrowed(SCORES_SHADER),
            &scores_layout,
        );
        let histogram_pipeline = pipeline(
            "diagnostics_histogram",
            Cow::Borrowed(HISTOGRAM_SHADER),
            &histogram_layout,
        );
        let top_k_pipeline = pipeline(
            "diagnostics_top_k",
            Cow::Borrowed(TOP_K_SHADER),
            &top_k_layout,
        );
        let per_class_pipeline = pipeline(
            "diagnostics_per_class",
            Cow::Owned(per_class_source()),
            &per_class_layout,
        );
        let per_class_reduce_pipeline = pipeline(
            "diagnostics_per_class_reduce",
            Cow::Owned(per_class_reduce_source()),
            &per_class_reduce_layout,
        );
        let placeholder = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("diagnostics placeholder"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(e.to_string()));
        }
        let limits = device.limits();
        Ok(GpuDiagnostics {
            scores_layout,
            scores_pipeline,
            histogram_layout,
            histogram_pipeline,
            top_k_layout,
            top_k_pipeline,
            per_class_layout,
            per_class_pipeline,
            per_class_reduce_layout,
            per_class_reduce_pipeline,
            placeholder,
            max_binding_bytes: context.max_binding_bytes(),
            uniform_stride: (limits.min_uniform_buffer_offset_alignment as u64).max(64),
            top_k_fits: limits.max_compute_workgroup_storage_size >= TOP_K_SHARED_BYTES
                && limits.max_compute_invocations_per_workgroup >= TOP_K_WORKGROUP_SIZE,
            pool: AsyncMutex::new(Pool::default(), false),
            device,
            queue,
        })
    }

    /// The widest row [`GpuDiagnostics::scores`] takes.
    pub fn max_classes(&self) -> usize {
        MAX_SCORE_CLASSES.min((self.max_binding_bytes / 4) as usize)
    }

    /// The largest k [`GpuDiagnostics::top_k`] takes: 1024 (one list is half
    /// a 2048-entry tile), less when the binding limit is tiny, and 0 on a
    /// device with less than 16 KiB of workgroup memory.
    pub fn max_top_k(&self) -> usize {
        if !self.top_k_fits {
            return 0;
        }
        // A chunk of at least one tile must fit (see top_k_rows).
        let by_binding = (self.max_binding_bytes / 32) as usize;
        if by_binding == 0 {
            return 0;
        }
        let power = 1usize << by_binding.ilog2();
        MAX_TOP_K.min(power)
    }

    /// The most classes [`GpuDiagnostics::per_class`] takes: 2,097,151 (the
    /// sort key keeps labels in 21 bits), less when one class partial per
    /// class (16 bytes) would exceed the binding limit.
    pub fn max_per_class_classes(&self) -> usize {
        MAX_PER_CLASS_CLASSES.min((self.max_binding_bytes / 16) as usize)
    }

    /// Bytes of device memory in the buffer pool.
    pub fn pool_bytes(&self) -> u64 {
        pollster::block_on(self.pool.lock()).bytes()
    }

    /// How many buffers the pool has created so far. A call that needs no
    /// more memory than an earlier one creates none.
    pub fn buffers_created(&self) -> u64 {
        pollster::block_on(self.pool.lock()).created
    }

    /// Rows per dispatch: within one binding and one 2-D grid.
    fn rows_per_dispatch(&self, row_bytes: u64, workgroup: u32) -> usize {
        let by_binding = self.max_binding_bytes / row_bytes.max(1);
        let by_grid =
            MAX_GROUPS_PER_DIMENSION as u64 * MAX_GROUPS_PER_DIMENSION as u64 * workgroup as u64;
        by_binding.min(by_grid).clamp(1, 1 << 30) as usize
    }

    /// Rows per top-k submission for lists of `list` entries: the losses
    /// within one binding, and every pass's lists together within another
    /// (they shrink by half or more each pass).
    fn top_k_rows(&self, list: u32) -> usize {
        let tiles = (self.max_binding_bytes / (32 * list as u64)).max(1);
        let by_lists = tiles * TOP_K_TILE as u64;
        (self.max_binding_bytes / 4).min(by_lists).min(1 << 30) as usize
    }

    /// Writes one uniform per slot (`uniform_stride` apart) into the pool.
    fn uniforms(&self, pool: &mut Pool, slots: &[&[u8]]) -> wgpu::Buffer {
        let stride = self.uniform_stride as usize;
        let mut bytes = vec![0u8; slots.len().max(1) * stride];
        for (i, slot) in slots.iter().enumerate() {
            bytes[i * stride..i * stride + slot.len()].copy_from_slice(slot);
        }
        let buffer = ensure(
            &self.device,
            &mut pool.created,
            &mut pool.uniforms,
            "diagnostics params",
            bytes.len() as u64,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        );
        self.queue.write_buffer(&buffer, 0, &bytes);
        buffer
    }

    /// The pool's buffer in one of its input slots, holding `bytes`.
    fn upload(
        &self,
        pool: &mut Pool,
        slot: fn(&mut Pool) -> &mut Option<wgpu::Buffer>,
        label: &'static str,
        bytes: &[u8],
    ) -> wgpu::Buffer {
        let mut created = pool.created;
        let buffer = ensure(
            &self.device,
            &mut created,
            slot(pool),
            label,
            bytes.len() as u64,
            STORAGE_IN,
        );
        pool.created = created;
        self.queue.write_buffer(&buffer, 0, bytes);
        buffer
    }

    /// The pool's output-like buffer in `slot`, at least `size` bytes.
    fn scratch(
        &self,
        pool: &mut Pool,
        slot: fn(&mut Pool) -> &mut Option<wgpu::Buffer>,
        label: &'static str,
        size: u64,
    ) -> wgpu::Buffer {
        let mut created = pool.created;
        let buffer = ensure(
            &self.device,
            &mut created,
            slot(pool),
            label,
            size,
            STORAGE_OUT,
        );
        pool.created = created;
        buffer
    }

    /// Records the clears and the dispatches of one call, copies `size`
    /// bytes of `output` from `offset` to the pool's staging buffer,
    /// submits, and reads them back.
    async fn run(
        &self,
        pool: &mut Pool,
        clears: &[(&wgpu::Buffer, u64)],
        dispatches: &[Dispatch<'_>],
        output: &wgpu::Buffer,
        offset: u64,
        size: u64,
    ) -> Result<Vec<u8>> {
        let staging = ensure(
            &self.device,
            &mut pool.created,
            &mut pool.staging,
            "diagnostics staging",
            size,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("diagnostics"),
            });
        for &(buffer, bytes) in clears {
            encoder.clear_buffer(buffer, 0, Some(padded(bytes)));
        }
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("diagnostics"),
                timestamp_writes: None,
            });
            for d in dispatches {
                pass.set_pipeline(d.pipeline);
                pass.set_bind_group(0, d.group, &[d.slot * self.uniform_stride as u32]);
                let (x, y) = dispatch_size(d.groups);
                pass.dispatch_workgroups(x, y, 1);
            }
        }
        let copied = padded(size);
        encoder.copy_buffer_to_buffer(output, offset, &staging, 0, copied);
        self.queue.submit([encoder.finish()]);
        map_read(&self.device, &staging, copied, |view| {
            view[..size as usize].to_vec()
        })
        .await
    }

    /// Runs `body` inside validation and out-of-memory error scopes.
    async fn scoped<T>(&self, body: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let result = body.await;
        let validation = validation.pop();
        let oom = oom.pop();
        if let Some(e) = oom.await {
            return Err(Error::OutOfMemory(e.to_string()));
        }
        if let Some(e) = validation.await {
            return Err(Error::Gpu(e.to_string()));
        }
        result
    }

    /// The scores of every row, the GPU twin of
    /// [`crate::diagnostics::scores`]: the same validation, the same labels
    /// (the argmax of dense targets), the same conventions, the soft-cap
    /// included.
    pub async fn scores(&self, spec: &CrossEntropy, batch: &Batch<'_>) -> Result<Vec<RowScore>> {
        batch.validate(spec)?;
        let classes = batch.classes;
        let ignore = match batch.targets {
            Targets::Labels(labels) => {
                check_labels(labels, classes, spec.ignore_index)?;
                spec.ignore_index
            }
            Targets::Dense(_) => None,
        };
        if classes > self.max_classes() {
            return Err(Error::RowTooLarge {
                classes,
                max_classes: self.max_classes(),
            });
        }
        let labels = score_labels(batch);
        let mut flags = 0;
        let probabilities = spec.input == InputKind::Probabilities;
        if probabilities {
            flags |= FLAG_PROBABILITIES;
        }
        if ignore.is_some() {
            flags |= FLAG_SCORES_IGNORE;
        }
        let softcap = spec.softcap.filter(|_| !probabilities);
        if softcap.is_some() {
            flags |= FLAG_SOFTCAP;
        }
        let per_dispatch = self.rows_per_dispatch(
            (classes as u64 * 4).max(std::mem::size_of::<GpuScore>() as u64),
            SCORES_WORKGROUP_SIZE,
        );
        let mut out = Vec::with_capacity(batch.batch);
        let mut first = 0;
        while first < batch.batch {
            let rows = per_dispatch.min(batch.batch - first);
            let params = ScoresParams {
                rows: rows as u32,
                classes: classes as u32,
                flags,
                ignore_index: ignore.unwrap_or(0),
                zero: 0,
                softcap: softcap.unwrap_or(1.0),
                _pad: [0; 2],
            };
            let logits = &batch.logits[first * classes..(first + rows) * classes];
            let row_labels = &labels[first..first + rows];
            let size = (rows * std::mem::size_of::<GpuScore>()) as u64;
            let bytes = self
                .scoped(async {
                    let mut pool = self.pool.lock().await;
                    let pool = &mut *pool;
                    let uniform = self.uniforms(pool, &[bytemuck::bytes_of(&params)]);
                    let logits_buffer = self.upload(
                        pool,
                        |p| &mut p.values,
                        "diagnostics values",
                        bytemuck::cast_slice(logits),
                    );
                    let labels_buffer = self.upload(
                        pool,
                        |p| &mut p.labels,
                        "diagnostics labels",
                        bytemuck::cast_slice(row_labels),
                    );
                    let output = self.scratch(pool, |p| &mut p.output, "diagnostics output", size);
                    let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("diagnostics_scores"),
                        layout: &self.scores_layout,
                        entries: &[
                            entry(0, binding(&uniform, uniform_size::<ScoresParams>())),
                            entry(1, binding(&logits_buffer, logits.len() as u64 * 4)),
                            entry(2, binding(&labels_buffer, rows as u64 * 4)),
                            entry(3, binding(&output, size)),
                        ],
                    });
                    let dispatch = Dispatch {
                        pipeline: &self.scores_pipeline,
                        group: &group,
                        slot: 0,
                        groups: (rows as u32).div_ceil(SCORES_WORKGROUP_SIZE),
                    };
                    self.run(pool, &[], &[dispatch], &output, 0, size).await
                })
                .await?;
            let gpu = bytes
                .chunks_exact(std::mem::size_of::<GpuScore>())
                .map(bytemuck::pod_read_unaligned::<GpuScore>);
            out.extend(gpu.zip(row_labels).map(|(s, &label)| RowScore {
                label,
                predicted: s.predicted,
                confidence: s.confidence,
                margin: s.margin,
            }));
            first += rows;
        }
        Ok(out)
    }

    /// Blocking [`GpuDiagnostics::scores`].
    pub fn scores_blocking(&self, spec: &CrossEntropy, batch: &Batch<'_>) -> Result<Vec<RowScore>> {
        pollster::block_on(self.scores(spec, batch))
    }

    /// Adds `losses` to `histogram`, the GPU twin of
    /// [`Histogram::add_losses`]: identical counts. `labels`, when given,
    /// must have one label per loss.
    pub async fn histogram(
        &self,
        histogram: &mut Histogram,
        losses: &[f32],
        labels: Option<&[i32]>,
        ignore_index: Option<i32>,
    ) -> Result<()> {
        if let Some(labels) = labels {
            check_len("labels", losses.len(), labels.len())?;
        }
        let edges = histogram.edges();
        let bins = edges.len() - 1;
        let lower: Vec<f32> = edges[..bins]
            .iter()
            .map(|&e| crate::diagnostics::ceil_f32(e))
            .collect();
        let top = crate::diagnostics::floor_f32(edges[bins]);
        let ignore = labels.and(ignore_index);
        let flags = if ignore.is_some() {
            FLAG_HISTOGRAM_IGNORE
        } else {
            0
        };
        let per_dispatch = self.rows_per_dispatch(4, HISTOGRAM_WORKGROUP_SIZE);
        let mut totals = vec![0u64; bins + 4];
        let mut first = 0;
        while first < losses.len() {
            let count = per_dispatch.min(losses.len() - first);
            let params = HistogramParams {
                count: count as u32,
                bins: bins as u32,
                flags,
                ignore_index: ignore.unwrap_or(0),
                top,
                _pad: [0; 3],
            };
            let chunk = &losses[first..first + count];
            let chunk_labels = labels
                .filter(|_| ignore.is_some())
                .map(|l| &l[first..first + count]);
            let size = ((bins + 4) * 4) as u64;
            let bytes = self
                .scoped(async {
                    let mut pool = self.pool.lock().await;
                    let pool = &mut *pool;
                    let uniform = self.uniforms(pool, &[bytemuck::bytes_of(&params)]);
                    let losses_buffer = self.upload(
                        pool,
                        |p| &mut p.values,
                        "diagnostics values",
                        bytemuck::cast_slice(chunk),
                    );
                    let labels_buffer = chunk_labels.map(|l| {
                        self.upload(
                            pool,
                            |p| &mut p.labels,
                            "diagnostics labels",
                            bytemuck::cast_slice(l),
                        )
                    });
                    let (labels_ref, labels_size) = match &labels_buffer {
                        Some(b) => (b, count as u64 * 4),
                        None => (&self.placeholder, 16),
                    };
                    let lower_buffer = self.upload(
                        pool,
                        |p| &mut p.edges,
                        "diagnostics edges",
                        bytemuck::cast_slice(&lower),
                    );
                    let output = self.scratch(pool, |p| &mut p.output, "diagnostics output", size);
                    let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("diagnostics_histogram"),
                        layout: &self.histogram_layout,
                        entries: &[
                            entry(0, binding(&uniform, uniform_size::<HistogramParams>())),
                            entry(1, binding(&losses_buffer, count as u64 * 4)),
                            entry(2, binding(labels_ref, labels_size)),
                            entry(3, binding(&lower_buffer, bins as u64 * 4)),
                            entry(4, binding(&output, size)),
                        ],
                    });
                    let dispatch = Dispatch {
                        pipeline: &self.histogram_pipeline,
                        group: &group,
                        slot: 0,
                        groups: (count as u32).div_ceil(HISTOGRAM_WORKGROUP_SIZE),
                    };
                    self.run(pool, &[(&output, size)], &[dispatch], &output, 0, size)
                        .await
                })
                .await?;
            let counters = bytes
                .chunks_exact(4)
                .map(bytemuck::pod_read_unaligned::<u32>);
            for (t, c) in totals.iter_mut().zip(counters) {
                *t += c as u64;
            }
            first += count;
        }
        histogram.add_counts(
            &totals[..bins],
            totals[bins],
            totals[bins + 1],
            totals[bins + 2],
            totals[bins + 3],
        );
        Ok(())
    }

    /// Blocking [`GpuDiagnostics::histogram`].
    pub fn histogram_blocking(
        &self,
        histogram: &mut Histogram,
        losses: &[f32],
        labels: Option<&[i32]>,
        ignore_index: Option<i32>,
    ) -> Result<()> {
        pollster::block_on(self.histogram(histogram, losses, labels, ignore_index))
    }

    /// The `k` largest finite losses of the rows not ignored, largest first
    /// and on equal losses lower row first, the GPU twin of
    /// [`crate::diagnostics::top_k`]: the same rows and the same losses,
    /// exactly. Rows count from the start of `losses`; a row is ignored when
    /// `labels` is given and its label is `ignore_index`.
    ///
    /// Each workgroup sorts 2048 (key, row) pairs with a bitonic network and
    /// keeps the best `k` (rounded up to a power of two); merge passes sort
    /// those lists again until one is left. Inputs larger than a binding are
    /// cut into chunks whose lists are merged on the host. `k` above
    /// [`GpuDiagnostics::max_top_k`] is [`Error::InvalidArgument`]
    /// ([`Scorer`](crate::diagnostics::Scorer) runs it on the CPU).
    pub async fn top_k(
        &self,
        losses: &[f32],
        labels: Option<&[i32]>,
        ignore_index: Option<i32>,
        k: usize,
    ) -> Result<Vec<Ranked<()>>> {
        if let Some(labels) = labels {
            check_len("labels", losses.len(), labels.len())?;
        }
        if k > self.max_top_k() {
            return Err(Error::InvalidArgument(format!(
                "top-k on the GPU takes k up to {}, got {k}",
                self.max_top_k()
            )));
        }
        let mut top = TopK::new(k);
        if k == 0 || losses.is_empty() {
            return Ok(top.into_sorted());
        }
        let ignore = labels.and(ignore_index);
        let list = k.next_power_of_two() as u32;
        let per_chunk = self.top_k_rows(list);
        let mut first = 0;
        while first < losses.len() {
            let rows = per_chunk.min(losses.len() - first);
            let chunk = &losses[first..first + rows];
            let chunk_labels = labels
                .filter(|_| ignore.is_some())
                .map(|l| &l[first..first + rows]);
            let (passes, final_offset, entries) = top_k_plan(rows as u32, list, ignore);
            let size = list as u64 * 8;
            let bytes = self
                .scoped(async {
                    let mut pool = self.pool.lock().await;
                    let pool = &mut *pool;
                    let slots: Vec<&[u8]> = passes.iter().map(bytemuck::bytes_of).collect();
                    let uniform = self.uniforms(pool, &slots);
                    let losses_buffer = self.upload(
                        pool,
                        |p| &mut p.values,
                        "diagnostics values",
                        bytemuck::cast_slice(chunk),
                    );
                    let labels_buffer = chunk_labels.map(|l| {
                        self.upload(
                            pool,
                            |p| &mut p.labels,
                            "diagnostics labels",
                            bytemuck::cast_slice(l),
                        )
                    });
                    let (labels_ref, labels_size) = match &labels_buffer {
                        Some(b) => (b, rows as u64 * 4),
                        None => (&self.placeholder, 16),
                    };
                    let lists_bytes = entries as u64 * 8;
                    // Room to copy the final list's padded size.
                    let lists = self.scratch(
                        pool,
                        |p| &mut p.output,
                        "diagnostics output",
                        lists_bytes + 16,
                    );
                    let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("diagnostics_top_k"),
                        layout: &self.top_k_layout,
                        entries: &[
                            entry(0, binding(&uniform, uniform_size::<TopKParams>())),
                            entry(1, binding(&losses_buffer, rows as u64 * 4)),
                            entry(2, binding(labels_ref, labels_size)),
                            entry(3, binding(&lists, lists_bytes)),
                        ],
                    });
                    let dispatches: Vec<Dispatch> = passes
                        .iter()
                        .enumerate()
                        .map(|(i, p)| Dispatch {
                            pipeline: &self.top_k_pipeline,
                            group: &group,
                            slot: i as u32,
                            groups: p.count.div_ceil(TOP_K_TILE),
                        })
                        .collect();
                    let at = final_offset as u64 * 8;
                    self.run(pool, &[], &dispatches, &lists, at, size).await
                })
                .await?;
            for pair in bytes.chunks_exact(8).take(k) {
                let [key, row]: [u32; 2] = bytemuck::pod_read_unaligned(pair);
                if key == 0 {
                    break; // the rest are empty places
                }
                let n = first + row as usize;
                top.push(n as u64, losses[n], ());
            }
            first += rows;
        }
        Ok(top.into_sorted())
    }

    /// Blocking [`GpuDiagnostics::top_k`].
    pub fn top_k_blocking(
        &self,
        losses: &[f32],
        labels: Option<&[i32]>,
        ignore_index: Option<i32>,
        k: usize,
    ) -> Result<Vec<Ranked<()>>> {
        pollster::block_on(self.top_k(losses, labels, ignore_index, k))
    }

    /// Adds losses to `per_class` by label, the GPU twin of
    /// [`PerClassLoss::add_losses`]: the same validation (a label out of
    /// range is [`Error::LabelOutOfRange`] and nothing is added), the same
    /// counts.
    ///
    /// Each workgroup owns a slice of up to 16 tiles of 1024 rows; it sorts
    /// each tile by label, sums each label's run with a segmented
    /// float-float scan and adds it into the slice's per-class partial; a
    /// second kernel adds up to 32 slices per class into running totals,
    /// over up to 8 rounds per submission, and the host adds the
    /// submissions' totals in f64. Every sum has a fixed shape and no float
    /// atomics: the same input gives the same bits on every run. Each
    /// float-float addition is within 2^-46 relative of its exact sum and a
    /// loss passes through at most 10 + 16 + 32 + 8 of them, so for
    /// non-negative losses the sums are within 66·2^-46 ≈ 9.4e-13 relative
    /// of the f64 twin. A sum past the f32 range overflows to infinity.
    /// More than [`GpuDiagnostics::max_per_class_classes`] classes is
    /// [`Error::InvalidArgument`] ([`Scorer`](crate::diagnostics::Scorer)
    /// runs it on the CPU).
    pub async fn per_class(
        &self,
        per_class: &mut PerClassLoss,
        losses: &[f32],
        labels: &[i32],
        ignore_index: Option<i32>,
    ) -> Result<()> {
        check_len("labels", losses.len(), labels.len())?;
        let classes = per_class.classes();
        check_labels(labels, classes, ignore_index)?;
        if classes > self.max_per_class_classes() {
            return Err(Error::InvalidArgument(format!(
                "per-class sums on the GPU take up to {} classes, got {classes}",
                self.max_per_class_classes()
            )));
        }
        if losses.is_empty() || classes == 0 {
            return Ok(());
        }
        let class_bytes = classes as u64 * std::mem::size_of::<ClassPartial>() as u64;
        let max_slices = (PER_CLASS_SLICE_BUDGET.min(self.max_binding_bytes) / class_bytes)
            .clamp(1, PER_CLASS_MAX_SLICES as u64) as u32;
        let per_round = max_slices as u64 * (PER_CLASS_MAX_TILES * PER_CLASS_TILE) as u64;
        let per_chunk = (self.max_binding_bytes / 4)
            .min(per_round * PER_CLASS_MAX_ROUNDS as u64)
            .min(1 << 30) as usize;
        let mut added = PerClassLoss::new(classes);
        let mut first = 0;
        while first < losses.len() {
            let rows = per_chunk.min(losses.len() - first);
            let chunk = &losses[first..first + rows];
            let chunk_labels = &labels[first..first + rows];
            let rounds = per_class_plan(rows as u32, classes as u32, max_slices, ignore_index);
            let reduce: Vec<PerClassReduceParams> = rounds
                .iter()
                .map(|r| PerClassReduceParams {
                    classes: classes as u32,
                    slices: r.slices,
                    zero: 0,
                    _pad: 0,
                })
                .collect();
            let slices_used = rounds.iter().map(|r| r.slices).max().unwrap_or(1);
            let bytes = self
                .scoped(async {
                    let mut pool = self.pool.lock().await;
                    let pool = &mut *pool;
                    // Slot 2i: round i's partials; slot 2i + 1: its reduction.
                    let slots: Vec<&[u8]> = rounds
                        .iter()
                        .zip(&reduce)
                        .flat_map(|(r, q)| [bytemuck::bytes_of(r), bytemuck::bytes_of(q)])
                        .collect();
                    let uniform = self.uniforms(pool, &slots);
                    let losses_buffer = self.upload(
                        pool,
                        |p| &mut p.values,
                        "diagnostics values",
                        bytemuck::cast_slice(chunk),
                    );
                    let labels_buffer = self.upload(
                        pool,
                        |p| &mut p.labels,
                        "diagnostics labels",
                        bytemuck::cast_slice(chunk_labels),
                    );
                    let slices_bytes = slices_used as u64 * class_bytes;
                    let slices =
                        self.scratch(pool, |p| &mut p.work, "diagnostics slices", slices_bytes);
                    let totals =
                        self.scratch(pool, |p| &mut p.output, "diagnostics output", class_bytes);
                    let partials_group =
                        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                            label: Some("diagnostics_per_class"),
                            layout: &self.per_class_layout,
                            entries: &[
                                entry(0, binding(&uniform, uniform_size::<PerClassParams>())),
                                entry(1, binding(&losses_buffer, rows as u64 * 4)),
                                entry(2, binding(&labels_buffer, rows as u64 * 4)),
                                entry(3, binding(&slices, slices_bytes)),
                            ],
                        });
                    let reduce_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("diagnostics_per_class_reduce"),
                        layout: &self.per_class_reduce_layout,
                        entries: &[
                            entry(0, binding(&uniform, uniform_size::<PerClassReduceParams>())),
                            entry(1, binding(&slices, slices_bytes)),
                            entry(2, binding(&totals, class_bytes)),
                        ],
                    });
                    let class_groups = (classes as u32).div_ceil(PER_CLASS_REDUCE_WORKGROUP_SIZE);
                    let dispatches: Vec<Dispatch> = rounds
                        .iter()
                        .enumerate()
                        .flat_map(|(i, r)| {
                            [
                                Dispatch {
                                    pipeline: &self.per_class_pipeline,
                                    group: &partials_group,
                                    slot: 2 * i as u32,
                                    groups: r.slices,
                                },
                                Dispatch {
                                    pipeline: &self.per_class_reduce_pipeline,
                                    group: &reduce_group,
                                    slot: 2 * i as u32 + 1,
                                    groups: class_groups,
                                },
                            ]
                        })
                        .collect();
                    let clears = [(&slices, slices_bytes), (&totals, class_bytes)];
                    self.run(pool, &clears, &dispatches, &totals, 0, class_bytes)
                        .await
                })
                .await?;
            let partials = bytes
                .chunks_exact(std::mem::size_of::<ClassPartial>())
                .map(bytemuck::pod_read_unaligned::<ClassPartial>);
            for (c, p) in partials.enumerate() {
                added.add_partial(c, p.sum, p.count as u64, p.nonfinite as u64);
            }
            first += rows;
        }
        per_class.merge(&added)
    }

    /// Blocking [`GpuDiagnostics::per_class`].
    pub fn per_class_blocking(
        &self,
        per_class: &mut PerClassLoss,
        losses: &[f32],
        labels: &[i32],
        ignore_index: Option<i32>,
    ) -> Result<()> {
        pollster::block_on(self.per_class(per_class, losses, labels, ignore_index))
    }
}

/// The bytes of one uniform slot's params.
fn uniform_size<T>() -> u64 {
    std::mem::size_of::<T>() as u64
}

/// `diagnostics_per_class.wgsl` with `partial.wgsl` (its float-float sum)
/// in front.
pub(crate) fn per_class_source() -> String {
    [PARTIAL_SHADER, PER_CLASS_SHADER].concat()
}

/// `diagnostics_per_class_reduce.wgsl` with `partial.wgsl` in front.
pub(crate) fn per_class_reduce_source() -> String {
    [PARTIAL_SHADER, PER_CLASS_REDUCE_SHADER].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every diagnostics shader parses and validates with naga; no GPU
    /// needed.
    #[test]
    fn shaders_validate_with_naga() {
        for (name, source) in [
            ("scores", SCORES_SHADER.to_string()),
            ("histogram", HISTOGRAM_SHADER.to_string()),
            ("top_k", TOP_K_SHADER.to_string()),
            ("per_class", per_class_source()),
            ("per_class_reduce", per_class_reduce_source()),
        ] {
            let module = naga::front::wgsl::parse_str(&source)
                .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&source)));
            naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::empty(),
            )
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
    }

    #[test]
    fn layouts_and_workgroup_sizes_are_in_sync() {
        assert_eq!(std::mem::size_of::<ScoresParams>(), 32);
        assert_eq!(std::mem::size_of::<HistogramParams>(), 32);
        assert_eq!(std::mem::size_of::<GpuScore>(), 12);
        assert_eq!(std::mem::size_of::<TopKParams>(), 32);
        assert_eq!(std::mem::size_of::<PerClassParams>(), 32);
        assert_eq!(std::mem::size_of::<PerClassReduceParams>(), 16);
        assert_eq!(std::mem::size_of::<ClassPartial>(), 16);
        let wg = |n: u32| format!("const WG: u32 = {n}u;");
        let tile = |n: u32| format!("const TILE: u32 = {n}u;");
        assert!(SCORES_SHADER.contains(&wg(SCORES_WORKGROUP_SIZE)));
        assert!(HISTOGRAM_SHADER.contains(&wg(HISTOGRAM_WORKGROUP_SIZE)));
        assert!(TOP_K_SHADER.contains(&wg(TOP_K_WORKGROUP_SIZE)));
        assert!(TOP_K_SHADER.contains(&tile(TOP_K_TILE)));
        assert!(PER_CLASS_SHADER.contains(&wg(PER_CLASS_WORKGROUP_SIZE)));
        assert!(PER_CLASS_SHADER.contains(&tile(PER_CLASS_TILE)));
        assert!(PER_CLASS_SHADER.contains(&format!(
            "const ROW_BITS: u32 = {}u;",
            PER_CLASS_TILE.ilog2()
        )));
        assert!(PER_CLASS_REDUCE_SHADER.contains(&wg(PER_CLASS_REDUCE_WORKGROUP_SIZE)));
        // The sort key (label, non-finite bit, row in the tile) of the
        // largest label stays below the empty key, all ones.
        let bits = PER_CLASS_TILE.ilog2();
        let largest = ((MAX_PER_CLASS_CLASSES as u64 - 1) << (bits + 1))
            | (1 << bits)
            | (PER_CLASS_TILE as u64 - 1);
        assert!(largest < u32::MAX as u64);
        assert_eq!(
            MAX_PER_CLASS_CLASSES as u64 + 1,
            (u32::MAX as u64 + 1) >> (bits + 1)
        );
    }

    #[test]
    fn top_k_plan_merges_down_to_one_list() {
        let (passes, last, entries) = top_k_plan(100, 16, None);
        assert_eq!(passes.len(), 1);
        assert_eq!((last, entries), (0, 16));
        // 70,000 rows: 35 tiles of 2048, then 35 lists of 1024 in 18 tiles,
        // 18 lists in 9, ... down to one list.
        let (passes, last, entries) = top_k_plan(70_000, 1024, Some(-1));
        let counts: Vec<u32> = passes.iter().map(|p| p.count).collect();
        assert_eq!(
            counts,
            [
                70_000,
                35 * 1024,
                18 * 1024,
                9 * 1024,
                5 * 1024,
                3 * 1024,
                2 * 1024
            ]
        );
        assert_eq!(passes[0].flags, FLAG_TOP_K_LOSSES | FLAG_TOP_K_IGNORE);
        assert!(passes[1..]
            .iter()
            .all(|p| p.flags == 0 && p.first_size == 2048));
        for w in passes.windows(2) {
            assert_eq!(w[1].in_offset, w[0].out_offset);
        }
        assert_eq!(entries, last + 1024);
        // Small lists shrink fast: 1,000,000 rows keeping 16 take 3 passes.
        let (passes, _, _) = top_k_plan(1_000_000, 16, None);
        assert_eq!(passes.len(), 3);
    }

    #[test]
    fn per_class_plan_covers_every_row_once() {
        for (rows, classes, slices) in [
            (1, 3, 32),
            (5000, 10, 32),
            (3_000_000, 10, 32),
            (70_000, 3_000_000, 1),
        ] {
            let rounds = per_class_plan(rows, classes, slices, None);
            let mut next = 0;
            for r in &rounds {
                assert_eq!(r.first, next);
                assert!(r.slices >= 1 && r.slices <= slices);
                assert!(r.tiles >= 1 && r.tiles <= PER_CLASS_MAX_TILES);
                assert!(r.slices * r.tiles * PER_CLASS_TILE >= r.rows);
                next += r.rows;
            }
            assert_eq!(next, rows);
        }
        // Spread over the slices first: 5,000 rows take 5 slices of 1 tile.
        let rounds = per_class_plan(5000, 10, 32, Some(-100));
        assert_eq!((rounds.len(), rounds[0].slices, rounds[0].tiles), (1, 5, 1));
        assert_eq!(rounds[0].flags, FLAG_PER_CLASS_IGNORE);
    }
}
