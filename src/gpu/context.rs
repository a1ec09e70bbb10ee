//! Instance, adapter and device; pipelines built once; buffers reused across
//! calls; one submission and one readback per call.

use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_intrusive::sync::Mutex as AsyncMutex;

use super::cross_entropy::{self as ce, Chunk, KernelVariant, SubgroupSizes};
use super::pipelines::Pipelines;
use super::timer::Timer;
use super::{map_read, reduce_partials, Kernel, Partial, Storage, Variant};
use crate::dtype::{LogitDtype, LogitElement};
use crate::error::{Error, Result};
use crate::output::{Backend, LossOutput, LossStats, OutputBuffers};
use crate::spec::{Batch, CrossEntropy, InputKind, Targets};

/// Knobs for a [`GpuContext`].
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Use at most this many bytes per storage binding instead of the
    /// device's `max_storage_buffer_binding_size` (rounded down to a
    /// multiple of 256). Lets tests exercise chunking on small inputs.
    pub max_binding_bytes: Option<u64>,
    /// Rows each workgroup walks, instead of the planner's choice (about
    /// 4,096 workgroups per chunk on a GPU, four per hardware thread on a
    /// CPU-type adapter), still capped by the loop-trip budget. For tuning
    /// (`fused-loss bench --rows-per-group`), and for tests that need more
    /// than 65,535 workgroups.
    pub rows_per_group: Option<u32>,
    /// Use this kernel for every shape instead of choosing by class count.
    pub kernel: Option<KernelVariant>,
    /// Write the gradient over the uploaded logits instead of into a
    /// separate buffer: no extra B×C device memory.
    pub gradient_in_place: bool,
    /// Whether the gradient is computed from one read of the logits (the
    /// forward kernel keeps each row in workgroup or private memory and
    /// writes its gradient from there) or from two (a gradient kernel reads
    /// the logits again after the reduction). `Some(true)` reads once
    /// wherever the row fits; `Some(false)` always reads twice. `None` (the
    /// default) reads once where that was measured faster: rows of the wide
    /// and subgroup kernels on a CPU-type adapter (lavapipe: 1.3–1.4×); it
    /// reads twice on other adapters (an H200: 2.6× faster at 4,096×1,000,
    /// 9× at 16,384×4,096) and for the narrow kernel's rows. Both give the
    /// same bits. Out of place, one read needs a device that allows nine
    /// storage buffers per shader stage (WebGPU's default is eight;
    /// [`GpuContext::new`] asks for the adapter's limits).
    pub single_read: Option<bool>,
    /// Read and write f16 logits and gradients as packed u32 words even
    /// where the device has `SHADER_F16` (the path of devices without it).
    pub packed_f16: bool,
    /// Read f32 rows as `vec4`s in the subgroup kernel when the class count
    /// is a multiple of 4, and on a CPU-type adapter take plain f32 rows of
    /// up to 2,048 classes (a multiple of 4; no smoothing, dense targets,
    /// probabilities or gradient) a row per invocation in the narrow kernel
    /// with `vec4` loads: `None` (the default) and `Some(true)` do where
    /// the device allows the extra binding; `Some(false)` never does.
    pub vector_loads: Option<bool>,
    /// Whether the subgroup kernel's lanes share the row finishing (lane k
    /// finishes the k-th row of each subgroup's worth, and a shared-memory
    /// tree combines every invocation's partial) or lane 0 finishes every
    /// row (and the subgroups' partials are combined in order). `None` (the
    /// default) shares on CPU-type adapters, where lanes run one after
    /// another (lavapipe), and not elsewhere: on an H200 the build before
    /// shared finishing ran the subgroup kernel 1.2–1.5× faster
    /// (BENCHMARKS.md). Losses are the same bits either way; the reduced
    /// sums may differ in the last bits (another combining order). For
    /// tuning (`fused-loss bench --shared-row-finish`).
    pub shared_row_finish: Option<bool>,
    /// Time each call's compute pass with timestamp queries, where the
    /// adapter has `Features::TIMESTAMP_QUERY`; read it with
    /// [`GpuContext::last_kernel_time`].
    pub timestamps: bool,
    /// The subgroup kernel's workgroup size (its WGSL override constant
    /// `WG`): a power of two from 32 to 1024 within the device's limits;
    /// `None` is 128; ignored where the device has no subgroups. For
    /// tuning (`fused-loss bench --workgroup-size`).
    pub subgroup_workgroup_size: Option<u32>,
    /// The narrow kernel's workgroup size (the override constant `WG` of
    /// it, of its single-read twin and of the weights pre-pass, whose trees
    /// must match): a power of two from 32 to 1024 within the device's
    /// limits; `None` is 128. Each invocation takes a row, so it is also
    /// the rows a narrow workgroup works on at once; a call over fewer rows
    /// runs in the smallest power of two from 32 that holds them. For
    /// tuning (`fused-loss bench --narrow-workgroup-size`).
    pub narrow_workgroup_size: Option<u32>,
    /// The wide kernels' workgroup size (the override constant `WG` of
    /// `cross_entropy_wide_tree.wgsl`, shared by the wide kernel, its
    /// single-read twin and the split-row runs): a power of two from 32 to
    /// 1024 within the device's limits; `None` is 128, or 32 on a CPU-type
    /// adapter such as lavapipe (whose barriers cost each batch of
    /// invocations). A call whose rows would pass the loop budget at this
    /// size runs in the smallest larger one that holds them, up to what the
    /// device allows. The single-read row cache shrinks by 20 bytes of
    /// workgroup memory per invocation. For tuning (`fused-loss bench
    /// --wide-workgroup-size`).
    pub wide_workgroup_size: Option<u32>,
    /// Runs to cut each row into when the batch has too few rows to fill
    /// the device (`cross_entropy_split_rows.wgsl`, then
    /// `cross_entropy_split_finish.wgsl`): `None` chooses (about as many
    /// workgroups as the planner aims at, runs of at least 4,096 classes),
    /// `Some(1)` never splits, `Some(s)` cuts every row of logits into `s`
    /// runs (at most C). Rows read once for a gradient and probabilities are
    /// never split. On a CPU-type adapter, plain f32 rows of a multiple of 4
    /// classes longer than 2,048 are always cut, into runs an invocation each
    /// (`cross_entropy_split_lanes.wgsl`): `None` takes the fewest runs of at
    /// most 2,048 classes, `Some(s)` takes `s` (at most one per 4 classes and
    /// 1,024) where that is at least as many, and fewer leaves those rows to
    /// the workgroup runs above.
    pub row_segments: Option<u32>,
    /// Whether each kernel is built for the options of the calls it runs
    /// (the WGSL override constant `FLAG_MASK`), so that the code of every
    /// option a call does not use is compiled out, or once for any options.
    /// `None` (the default) specializes on CPU-type adapters: lavapipe runs
    /// both sides of a branch, so a call without options paid for all of
    /// them (at 65,536×10 the narrow kernel took 2.6× as long). Each new
    /// combination of options then builds its pipelines on first use. The
    /// same arithmetic runs either way. For tuning (`fused-loss bench
    /// --specialize-flags`).
    pub specialize_flags: Option<bool>,
}

/// Buffers kept between calls; each grows when a call needs more.
#[derive(Default)]
struct Buffers {
    logits: Vec<Option<wgpu::Buffer>>,
    targets: Vec<Option<wgpu::Buffer>>,
    labels: Option<wgpu::Buffer>,
    class_weights: Option<wgpu::Buffer>,
    sample_weights: Option<wgpu::Buffer>,
    per_example: Option<wgpu::Buffer>,
    partials: Option<wgpu::Buffer>,
    row_stats: Option<wgpu::Buffer>,
    gradient: Vec<Option<wgpu::Buffer>>,
    uniforms: Option<wgpu::Buffer>,
    staging: Option<wgpu::Buffer>,
    segments: Option<wgpu::Buffer>,
    bind_groups: BindGroupCache,
    /// The bind groups of the last resident call, and so its buffers.
    resident_bind_groups: BindGroupCache,
    /// Staging for calls whose host inputs fit [`BELT_CHUNK`].
    belt: Option<wgpu::util::StagingBelt>,
}

impl Buffers {
    /// Every buffer of the pool.
    fn pool(&self) -> Vec<wgpu::Buffer> {
        let singles = [
            &self.labels,
            &self.class_weights,
            &self.sample_weights,
            &self.per_example,
            &self.partials,
            &self.row_stats,
            &self.uniforms,
            &self.segments,
        ];
        let chunked = [&self.logits, &self.targets, &self.gradient];
        singles
            .into_iter()
            .flatten()
            .chain(chunked.into_iter().flatten().flatten())
            .cloned()
            .collect()
    }
}

/// What a bind group binds: its kernel (and so its layout) and each
/// binding's buffer range.
#[derive(Clone, PartialEq, Eq, Hash)]
struct BindGroupKey {
    kernel: Kernel,
    entries: Vec<(u32, wgpu::Buffer, u64, Option<NonZeroU64>)>,
}

/// The bind groups of earlier calls: a call that binds the same buffers at
/// the same sizes reuses them instead of creating new ones.
#[derive(Default)]
struct BindGroupCache {
    /// Each group with the call that last used it.
    groups: std::collections::HashMap<BindGroupKey, (wgpu::BindGroup, u64)>,
    /// The context's count of pool buffers created when the cache last
    /// dropped groups over buffers the pool had let go.
    pool_version: u64,
    /// Calls recorded with this cache.
    calls: u64,
}

impl BindGroupCache {
    /// Groups kept at most; past that the cache starts over.
    const CAPACITY: usize = 64;

    /// Forgets groups that bind buffers the pool has let go (grown or
    /// replaced), so that the cache never keeps them alive.
    fn retain_pool(&mut self, pool: &[wgpu::Buffer], placeholders: [&wgpu::Buffer; 2]) {
        self.groups.retain(|key, _| {
            key.entries
                .iter()
                .all(|(_, buffer, _, _)| placeholders.contains(&buffer) || pool.contains(buffer))
        });
    }

    /// Forgets the groups the last call did not use.
    fn retain_last_call(&mut self) {
        let last = self.calls;
        self.groups.retain(|_, (_, call)| *call == last);
    }
}

/// Where each result sits in the staging buffer of one call.
struct Readback {
    staging: wgpu::Buffer,
    size: u64,
    partial_offset: u64,
    gradient_offset: Option<u64>,
    row_lse_offset: Option<u64>,
    timestamp_offset: Option<u64>,
}

/// The pool buffer in `slot`, replaced by a new one of at least `size`
/// bytes when it is smaller (counted in [`GpuContext::objects_created`]).
fn ensure(
    slot: &mut Option<wgpu::Buffer>,
    context: &GpuContext,
    label: &'static str,
    size: u64,
    usage: wgpu::BufferUsages,
) -> wgpu::Buffer {
    let size = size.max(16).next_multiple_of(16);
    match slot {
        Some(buffer) if buffer.size() >= size => buffer.clone(),
        _ => {
            context.buffers_created.fetch_add(1, Ordering::Relaxed);
            let buffer = context.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: false,
            });
            *slot = Some(buffer.clone());
            buffer
        }
    }
}

fn binding(buffer: &wgpu::Buffer, offset: u64, size: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset,
        size: NonZeroU64::new(size),
    })
}

const STORAGE_IN: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_DST);

/// The staging belt's chunk: calls whose host inputs (uniforms included)
/// fit in it upload through the belt, whose chunks are reused, instead of
/// through `Queue::write_buffer`, which makes a staging buffer per write.
const BELT_CHUNK: u64 = 1 << 20;

/// How one call's host bytes reach their pool buffers: through the queue
/// (a new staging buffer each write) or through the context's staging belt
/// (copies recorded at the start of the call's encoder, chunks reused).
struct Uploads<'a> {
    queue: &'a wgpu::Queue,
    belt: Option<wgpu::util::StagingBelt>,
}

impl Uploads<'_> {
    /// Writes `data` (a multiple of 4 bytes, as every input is) at the
    /// start of `buffer`.
    fn write(&mut self, encoder: &mut wgpu::CommandEncoder, buffer: &wgpu::Buffer, data: &[u8]) {
        let size = NonZeroU64::new(data.len() as u64)
            .filter(|size| size.get().is_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT));
        match (&mut self.belt, size) {
            (Some(belt), Some(size)) => belt
                .write_buffer(encoder, buffer, 0, size)
                .copy_from_slice(data),
            _ => self.queue.write_buffer(buffer, 0, data),
        }
    }

    /// Closes the belt's chunks before the encoder is submitted.
    fn finish(&mut self) {
        if let Some(belt) = &mut self.belt {
            belt.finish();
        }
    }

    /// After the submission: maps the chunks again for a later call and
    /// hands the belt back to the pool.
    fn recall(mut self, buffers: &mut Buffers) {
        if let Some(mut belt) = self.belt.take() {
            belt.recall();
            buffers.belt = Some(belt);
        }
    }
}

/// A wgpu device with the fused-loss pipelines built on it.
///
/// Build it once and reuse it: pipelines and bind group layouts are created
/// here, and buffers are kept and reused between calls.
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: String,
    pipelines: Pipelines,
    gradient_in_place: bool,
    single_read: Option<bool>,
    /// A CPU-type adapter (lavapipe): `single_read: None` reads wide rows
    /// once there.
    cpu_adapter: bool,
    /// f16 is stored as f16 (the device has SHADER_F16), not packed words.
    native_f16: bool,
    /// Classes the single-read wide kernel caches (0: none fit).
    row_cache: u32,
    placeholder: wgpu::Buffer,
    /// Stands in for an unused writable binding; a buffer may not be bound
    /// read-only and writable in one dispatch.
    placeholder_writable: wgpu::Buffer,
    max_binding_bytes: u64,
    grouping: ce::Grouping,
    row_segments: Option<u32>,
    kernel: Option<KernelVariant>,
    /// The device's subgroup sizes where it has `Features::SUBGROUP` (and
    /// so the subgroup kernel).
    subgroups: Option<SubgroupSizes>,
    /// The narrow-family kernels' workgroup size (small calls run smaller).
    narrow_workgroup: u32,
    /// The wide kernels' workgroup size (rows too long for the loop budget
    /// at it run larger, up to `max_wide_workgroup`).
    wide_workgroup: u32,
    max_wide_workgroup: u32,
    vector_loads: bool,
    /// Plain f32 rows take the narrow kernel with vec4 loads (CPU-type
    /// adapters with vector loads; `ce::lane_rows_fit`).
    lane_rows: bool,
    /// Pipelines are built for each call's flags ([`GpuOptions::specialize_flags`]).
    specialize_flags: bool,
    uniform_stride: u64,
    buffers: AsyncMutex<Buffers>,
    uncaptured: Arc<Mutex<Option<String>>>,
    /// Readback buffers of resident calls whose [`PendingLoss`] is gone,
    /// for the next calls.
    reduced_pool: ReducedPool,
    timer: Option<Timer>,
    buffers_created: AtomicU64,
    bind_groups_created: AtomicU64,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.adapter)
            .field("max_binding_bytes", &self.max_binding_bytes)
            .finish_non_exhaustive()
    }
}

/// Picks the adapter as the environment says: `WGPU_ADAPTER_NAME` (a
/// case-insensitive substring of the name), `WGPU_BACKEND` (through the
/// instance) and `WGPU_POWER_PREF`.
async fn select_adapter(instance: &wgpu::Instance) -> Result<wgpu::Adapter> {
    if let Ok(wanted) = std::env::var("WGPU_ADAPTER_NAME") {
        let wanted = wanted.to_lowercase();
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
        let adapters = instance.enumerate_adapters(backends).await;
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&wanted))
            .ok_or_else(|| {
                Error::NoAdapter(format!("no adapter matches WGPU_ADAPTER_NAME={wanted:?}"))
            });
    }
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::from_env()
                .unwrap_or(wgpu::PowerPreference::HighPerformance),
            force_fallback_adapter: false,
            compatible_surface: None,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::NoAdapter(e.to_string()))
}

fn describe(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
}

impl GpuContext {
    /// Opens the adapter the environment selects and builds the pipelines.
    pub async fn new(options: GpuOptions) -> Result<Self> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = select_adapter(&instance).await?;
        let mut wanted = wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP;
        if options.timestamps {
            wanted |= wgpu::Features::TIMESTAMP_QUERY;
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("fused-loss"),
                required_features: adapter.features() & wanted,
                required_limits: adapter.limits(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::NoAdapter(format!("request_device failed: {e}")))?;
        Self::from_device(device, queue, describe(&adapter.get_info()), options).await
    }

    /// Blocking [`GpuContext::new`].
    pub fn new_blocking(options: GpuOptions) -> Result<Self> {
        pollster::block_on(Self::new(options))
    }

    /// Builds the pipelines on a caller's device. `adapter` is only a label
    /// for reports. f16 logits are stored as f16 where the device was
    /// opened with `wgpu::Features::SHADER_F16`, else as packed words; the
    /// subgroup kernel runs where it was opened with
    /// `wgpu::Features::SUBGROUP`, and calls are timed where it has
    /// `wgpu::Features::TIMESTAMP_QUERY` and [`GpuOptions::timestamps`] is set.
    ///
    /// Errors the library causes on this device are captured with error
    /// scopes; the caller's uncaptured-error handler is only replaced when
    /// the library opened the device itself.
    pub async fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter: impl Into<String>,
        options: GpuOptions,
    ) -> Result<Self> {
        let uncaptured = Arc::new(Mutex::new(None));
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        // A CPU-type adapter (lavapipe) takes its own defaults throughout.
        let cpu_adapter = device.adapter_info().device_type == wgpu::DeviceType::Cpu;
        let pipelines = Pipelines::new(&device, options.shared_row_finish.unwrap_or(cpu_adapter));
        let placeholder = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("placeholder"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let placeholder_writable = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("placeholder_writable"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        if let Some(e) = scope.pop().await {
            return Err(Error::Gpu(e.to_string()));
        }
        let limits = device.limits();
        let device_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let max_binding_bytes = options
            .max_binding_bytes
            .map_or(device_binding, |m| m.min(device_binding))
            / 256
            * 256;
        let uniform_stride = (limits.min_uniform_buffer_offset_alignment as u64).max(64);
        let native_f16 = device.features().contains(wgpu::Features::SHADER_F16);
        let partial_bytes = std::mem::size_of::<Partial>() as u64;
        let subgroups = match (pipelines.subgroups(), options.subgroup_workgroup_size) {
            (Some(sizes), Some(size)) => Some(SubgroupSizes {
                workgroup: checked_workgroup_size("subgroup", size, partial_bytes, &limits)?,
                ..sizes
            }),
            (sizes, _) => sizes,
        };
        let narrow_workgroup = match options.narrow_workgroup_size {
            Some(size) => checked_workgroup_size("narrow", size, partial_bytes, &limits)?,
            None => ce::NARROW_WORKGROUP_SIZE,
        };
        let wide_tree_bytes = ce::wide_tree_bytes(1) as u64;
        let wide_workgroup = match options.wide_workgroup_size {
            Some(size) => checked_workgroup_size("wide", size, wide_tree_bytes, &limits)?,
            None if cpu_adapter => ce::CPU_WIDE_WORKGROUP_SIZE,
            None => ce::WIDE_WORKGROUP_SIZE,
        };
        // The largest wide workgroup the device takes, for rows too long
        // for the loop budget at `wide_workgroup`.
        let max_wide_workgroup = (ce::MIN_WORKGROUP_SIZE..=1024)
            .rev()
            .filter(|size| size.is_power_of_two())
            .find(|&size| checked_workgroup_size("wide", size, wide_tree_bytes, &limits).is_ok())
            .unwrap_or(wide_workgroup)
            .max(wide_workgroup);
        let vector_loads = pipelines.has_vec4() && options.vector_loads.unwrap_or(true);
        let lane_rows = vector_loads && cpu_adapter;
        let specialize_flags = options.specialize_flags.unwrap_or(cpu_adapter);
        pipelines.build_up_front(
            &device,
            ce::Workgroups {
                subgroups: subgroups.unwrap_or(SubgroupSizes::NONE),
                narrow: narrow_workgroup,
                wide: wide_workgroup,
            },
            lane_rows,
            specialize_flags,
        );
        let timer = (options.timestamps
            && device.features().contains(wgpu::Features::TIMESTAMP_QUERY))
        .then(|| Timer::new(&device, &queue));
        Ok(GpuContext {
            row_cache: ce::row_cache_classes(
                limits.max_compute_workgroup_storage_size,
                wide_workgroup,
            ),
            device,
            queue,
            adapter: adapter.into(),
            pipelines,
            gradient_in_place: options.gradient_in_place,
            single_read: options.single_read,
            cpu_adapter,
            native_f16: native_f16 && !options.packed_f16,
            placeholder,
            placeholder_writable,
            max_binding_bytes: max_binding_bytes.max(256),
            grouping: match options.rows_per_group {
                Some(rows) => ce::Grouping::Rows(rows),
                None if cpu_adapter => ce::Grouping::Groups(ce::cpu_target_groups()),
                None => ce::Grouping::Groups(ce::GPU_TARGET_GROUPS),
            },
            row_segments: options.row_segments,
            kernel: options.kernel,
            subgroups,
            narrow_workgroup,
            wide_workgroup,
            max_wide_workgroup,
            vector_loads,
            lane_rows,
            specialize_flags,
            uniform_stride,
            buffers: AsyncMutex::new(Buffers::default(), false),
            uncaptured,
            reduced_pool: ReducedPool::default(),
            timer,
            buffers_created: AtomicU64::new(0),
            bind_groups_created: AtomicU64::new(0),
        })
    }

    /// Catches errors nobody scoped on a device the library owns, instead of
    /// wgpu's default panic.
    pub(crate) fn capture_uncaptured_errors(&self) {
        let sink = Arc::clone(&self.uncaptured);
        self.device.on_uncaptured_error(Arc::new(move |e| {
            if let Ok(mut slot) = sink.lock() {
                slot.get_or_insert_with(|| e.to_string());
            }
        }));
    }

    /// The adapter's description.
    pub fn adapter(&self) -> &str {
        &self.adapter
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The kernel forced by [`GpuOptions::kernel`], if any.
    pub fn kernel(&self) -> Option<KernelVariant> {
        self.kernel
    }

    /// Whether f16 logits and gradients are stored as f16 on this device
    /// (`SHADER_F16`, not [`GpuOptions::packed_f16`]) rather than as packed
    /// u32 words.
    pub fn native_f16(&self) -> bool {
        self.native_f16
    }

    /// The most classes a row may have for the gradient to be computed from
    /// one read of the logits with `variant` (see
    /// [`GpuOptions::single_read`]); with a packed half gradient C must also
    /// be even.
    pub fn single_read_classes(&self, variant: KernelVariant) -> usize {
        match variant {
            KernelVariant::Wide | KernelVariant::Subgroup => self.row_cache as usize,
            KernelVariant::Narrow => ce::NARROW_CACHE_CLASSES,
        }
    }

    /// How many runs each row of a `[batch, classes]` call of `spec` with
    /// labels and f32 logits is cut into (1: rows are not split; see
    /// [`GpuOptions::row_segments`]).
    pub fn row_segments_for(
        &self,
        spec: &CrossEntropy,
        batch: usize,
        classes: usize,
    ) -> Result<u32> {
        let shape = Shape {
            batch,
            classes,
            dense: false,
            sample_weights: false,
        };
        let in_place = self.gradient_in_place;
        Ok(self
            .plan_call(spec, shape, LogitDtype::F32, in_place, 1)?
            .segments)
    }

    /// Whether the adapter is a CPU-type one (lavapipe), which takes its
    /// own defaults throughout.
    pub fn is_cpu_adapter(&self) -> bool {
        self.cpu_adapter
    }

    /// Whether the device has subgroups, and so the subgroup kernel.
    pub fn has_subgroups(&self) -> bool {
        self.subgroups.is_some()
    }

    /// The kernel that computes the loss of rows of `classes` f32 logits
    /// with labels and no other option: the forced one where it can, else
    /// the default.
    pub fn kernel_for(&self, classes: usize) -> KernelVariant {
        self.kernel_for_call(&CrossEntropy::new(), classes, false, Storage::F32)
    }

    /// The kernel that computes a call of `spec` on rows of `classes`
    /// logits: [`GpuContext::kernel_for`], except that probabilities take
    /// two passes over each row (which can push a long row past the
    /// subgroup kernel's loop budget), and a gradient of logit rows that fit
    /// the single-read row cache runs on the wide kernel.
    /// (Labels and f32 logits; see [`GpuContext::kernel_for`].)
    pub fn kernel_for_spec(&self, spec: &CrossEntropy, classes: usize) -> KernelVariant {
        self.kernel_for_call(spec, classes, false, Storage::F32)
    }

    /// How a call's rows take the narrow family with vec4 loads on a
    /// CPU-type adapter with vector loads, forced to the narrow kernel or
    /// left to choose: whole rows of up to [`ce::NARROW_VEC4_MAX_CLASSES`]
    /// (`ce::lane_rows_fit`), or longer plain rows cut into runs
    /// (`ce::lane_runs`); `None` where neither applies.
    fn lanes_for(
        &self,
        spec: &CrossEntropy,
        classes: usize,
        dense: bool,
        logits: Storage,
    ) -> Option<Lanes> {
        let f32_logits = logits == Storage::F32;
        if !(self.lane_rows && matches!(self.kernel, None | Some(KernelVariant::Narrow))) {
            None
        } else if ce::lane_rows_fit(spec, classes, dense, f32_logits) {
            Some(Lanes::Rows)
        } else if ce::plain_vec4_rows(spec, classes, dense, f32_logits) {
            ce::lane_runs(classes, self.row_segments).map(Lanes::Runs)
        } else {
            None
        }
    }

    /// [`GpuContext::kernel_for_spec`] for dense targets or not and logits
    /// stored as `logits`. On a CPU-type adapter, plain f32 rows of up to
    /// [`ce::NARROW_VEC4_MAX_CLASSES`] take the narrow kernel with vec4
    /// loads: a row per invocation, so the per-row work runs across rows;
    /// longer plain rows are split into runs an invocation each.
    fn kernel_for_call(
        &self,
        spec: &CrossEntropy,
        classes: usize,
        dense: bool,
        logits: Storage,
    ) -> KernelVariant {
        if self.lanes_for(spec, classes, dense, logits).is_some() {
            return KernelVariant::Narrow;
        }
        self.kernel_without_lanes(spec, classes)
    }

    /// [`GpuContext::kernel_for_call`] where no lanes apply.
    fn kernel_without_lanes(&self, spec: &CrossEntropy, classes: usize) -> KernelVariant {
        let probabilities = spec.input == InputKind::Probabilities;
        let variant = self.variant(classes, if probabilities { 2 } else { 1 });
        if variant == KernelVariant::Subgroup
            && spec.gradient
            && !probabilities
            && classes <= self.row_cache as usize
        {
            // Gradient rows that fit workgroup memory take the wide kernel,
            // read once or twice alike (the same bits either way).
            return KernelVariant::Wide;
        }
        variant
    }

    /// The kernel for rows of `classes` with `passes` passes over each row.
    fn variant(&self, classes: usize, passes: u64) -> KernelVariant {
        self.kernel
            .unwrap_or_else(|| {
                KernelVariant::for_classes(classes, self.subgroups, self.is_cpu_adapter())
            })
            .effective(classes, passes, self.subgroups)
    }

    /// The device's subgroup sizes (a placeholder where it has none: the
    /// planner only reads them for the subgroup kernel).
    fn subgroup_sizes(&self) -> SubgroupSizes {
        self.subgroups.unwrap_or(SubgroupSizes::NONE)
    }

    /// Whether calls are timed with timestamp queries ([`GpuOptions::timestamps`]
    /// on an adapter with `TIMESTAMP_QUERY`).
    pub fn timestamps(&self) -> bool {
        self.timer.is_some()
    }

    /// The device time of the last [`GpuContext::compute`] call's compute
    /// pass (forward kernel, reduction and gradient), from timestamp
    /// queries; `None` unless [`GpuContext::timestamps`].
    pub fn last_kernel_time(&self) -> Option<std::time::Duration> {
        self.timer.as_ref()?.last()
    }

    /// Bytes of device memory the context holds in its buffer pool (uploads,
    /// outputs, partials, row stats, uniforms and staging), not counting
    /// the caller's own buffers.
    pub fn pool_bytes(&self) -> u64 {
        let buffers = pollster::block_on(self.buffers.lock());
        let one = |b: &Option<wgpu::Buffer>| b.as_ref().map_or(0, |b| b.size());
        let many = |v: &[Option<wgpu::Buffer>]| v.iter().map(one).sum::<u64>();
        many(&buffers.logits)
            + many(&buffers.targets)
            + many(&buffers.gradient)
            + [
                &buffers.labels,
                &buffers.class_weights,
                &buffers.sample_weights,
                &buffers.per_example,
                &buffers.partials,
                &buffers.row_stats,
                &buffers.uniforms,
                &buffers.staging,
            ]
            .into_iter()
            .map(one)
            .sum::<u64>()
    }

    /// How many pool buffers and bind groups the context has created. Calls
    /// that fit the pool and repeat an earlier call's bindings (same batch
    /// layout and options) create none: the count stays put in steady state.
    /// Resident calls ([`GpuContext::submit_resident`]) reuse the bind
    /// groups of the last resident call where it bound the same buffers;
    /// only those are kept, so the context holds a caller's buffer at most
    /// until the next resident call.
    pub fn objects_created(&self) -> u64 {
        self.buffers_created() + self.bind_groups_created.load(Ordering::Relaxed)
    }

    /// How many buffers the context has created: the pool's, and the
    /// readback buffers of resident calls (reused once their
    /// [`PendingLoss`] is dropped).
    pub fn buffers_created(&self) -> u64 {
        self.buffers_created.load(Ordering::Relaxed)
    }

    /// The most logits bytes bound at once; larger inputs are chunked.
    pub fn max_binding_bytes(&self) -> u64 {
        self.max_binding_bytes
    }

    /// Runs the fused kernel, the reduction and, when asked, the gradient;
    /// one submission, one readback. The logits may be `f32`, `half::f16`
    /// or `half::bf16` ([`crate::dtype`]); with [`GradientDtype::Input`]
    /// and half logits the gradient is rounded to their type on the device
    /// (and returned widened to f32).
    ///
    /// [`GradientDtype::Input`]: crate::GradientDtype::Input
    pub async fn compute<T: LogitElement>(
        &self,
        spec: &CrossEntropy,
        batch: &Batch<'_, T>,
    ) -> Result<LossOutput> {
        self.compute_reusing(spec, batch, OutputBuffers::default())
            .await
    }

    /// [`GpuContext::compute`] into `out`, reusing the memory of its
    /// vectors: the readback is decoded into them, so a loop of calls of
    /// one shape allocates no host memory for its results after the first.
    /// On an error `out` is left empty: no losses, no gradient, zero stats.
    pub async fn compute_into<T: LogitElement>(
        &self,
        spec: &CrossEntropy,
        batch: &Batch<'_, T>,
        out: &mut LossOutput,
    ) -> Result<()> {
        let buffers = out.take_buffers();
        out.store(self.compute_reusing(spec, batch, buffers).await)
    }

    /// Blocking [`GpuContext::compute_into`].
    pub fn compute_into_blocking<T: LogitElement>(
        &self,
        spec: &CrossEntropy,
        batch: &Batch<'_, T>,
        out: &mut LossOutput,
    ) -> Result<()> {
        pollster::block_on(self.compute_into(spec, batch, out))
    }

    /// [`GpuContext::compute`], decoding into `buffers`.
    async fn compute_reusing<T: LogitElement>(
        &self,
        spec: &CrossEntropy,
        batch: &Batch<'_, T>,
        buffers: OutputBuffers,
    ) -> Result<LossOutput> {
        batch.validate(spec)?;
        let OutputBuffers {
            mut per_example,
            mut gradient,
            mut row_lse,
        } = buffers;
        if batch.batch == 0 {
            let mut out = LossOutput::empty(spec.reduction, Backend::Gpu);
            out.gradient = spec.gradient.then(Vec::new);
            out.row_lse = spec.row_lse.then(Vec::new);
            return Ok(out);
        }
        let shape = Shape {
            batch: batch.batch,
            classes: batch.classes,
            dense: matches!(batch.targets, Targets::Dense(_)),
            sample_weights: batch.sample_weights.is_some(),
        };
        let in_place = spec.gradient && self.gradient_in_place;
        // Chunks of packed halves start on a word.
        let row_multiple = if T::DTYPE.size() == 2 && batch.classes % 2 == 1 {
            2
        } else {
            1
        };
        let call = self.plan_call(spec, shape, T::DTYPE, in_place, row_multiple)?;
        if spec.gradient {
            let cells = batch.batch as u64 * batch.classes as u64;
            let bytes = cells * call.gradient.size() as u64 + batch.batch as u64 * 12;
            let limit = self.device.limits().max_buffer_size;
            if bytes > limit {
                return Err(Error::BatchTooLarge {
                    batch: batch.batch,
                    max_batch: (limit / (batch.classes as u64 * call.gradient.size() as u64 + 12))
                        as usize,
                });
            }
        }

        let mut buffers = self.buffers.lock().await;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let readback = self.encode(&mut buffers, &call, batch, in_place);
        let validation = validation.pop();
        let oom = oom.pop();

        if let Some(e) = oom.await {
            return Err(Error::OutOfMemory(e.to_string()));
        }
        if let Some(e) = validation.await {
            return Err(Error::Gpu(e.to_string()));
        }
        if let Some(e) = self.uncaptured.lock().ok().and_then(|mut s| s.take()) {
            return Err(Error::Gpu(e));
        }
        let cells = batch.batch * batch.classes;
        let gradient_dtype = call.gradient.dtype();
        let partial = map_read(&self.device, &readback.staging, readback.size, |view| {
            LogitDtype::F32.decode_into(view, batch.batch, &mut per_example);
            let at = readback.partial_offset as usize;
            let partial: Partial =
                bytemuck::pod_read_unaligned(&view[at..at + std::mem::size_of::<Partial>()]);
            if let Some(offset) = readback.gradient_offset {
                gradient_dtype.decode_into(&view[offset as usize..], cells, &mut gradient);
            }
            if let Some(offset) = readback.row_lse_offset {
                LogitDtype::F32.decode_into(&view[offset as usize..], batch.batch, &mut row_lse);
            }
            if let (Some(offset), Some(timer)) = (readback.timestamp_offset, &self.timer) {
                timer.record(&view[offset as usize..offset as usize + 16]);
            }
            partial
        })
        .await?;
        drop(buffers);
        partial.check(batch.classes, spec.check_finite)?;
        let mut out = LossOutput::new(
            per_example,
            spec.reduction,
            partial.stats(batch.batch),
            Backend::Gpu,
        );
        out.gradient = readback.gradient_offset.map(|_| gradient);
        out.row_lse = readback.row_lse_offset.map(|_| row_lse);
        Ok(out)
    }

    /// Chooses the kernel, the storage of the logits and gradient, one or
    /// two reads, and the chunks and reduction passes of one call.
    fn plan_call<'a>(
        &self,
        spec: &'a CrossEntropy,
        shape: Shape,
        dtype: LogitDtype,
        in_place: bool,
        row_multiple: usize,
    ) -> Result<Call<'a>> {
        let (batch, classes) = (shape.batch, shape.classes);
        let probabilities = spec.input == InputKind::Probabilities;
        let logits = Storage::of(dtype, self.native_f16);
        let lanes = self.lanes_for(spec, classes, shape.dense, logits);
        let lane_runs = match lanes {
            Some(Lanes::Runs(runs)) => Some(runs),
            _ => None,
        };
        let variant = match lanes {
            Some(_) => KernelVariant::Narrow,
            None => self.kernel_without_lanes(spec, classes),
        };
        let vec4 = match variant {
            KernelVariant::Subgroup => {
                self.vector_loads && logits == Storage::F32 && classes.is_multiple_of(4)
            }
            KernelVariant::Narrow => lanes.is_some(),
            KernelVariant::Wide => false,
        };
        let gradient = Storage::of(
            spec.gradient_dtype.resolve(dtype, in_place),
            self.native_f16,
        );
        let single_read = spec.gradient
            && !probabilities
            && self
                .single_read
                .unwrap_or(self.cpu_adapter && variant != KernelVariant::Narrow)
            && (in_place || self.pipelines.fused_out_of_place())
            && ce::single_read_fits(variant, classes, self.row_cache, gradient.per_word());
        // The widest [B, C] array one chunk binds.
        let mut element_bytes = dtype.size();
        if shape.dense {
            element_bytes = 4;
        }
        if spec.gradient && !in_place {
            element_bytes = element_bytes.max(gradient.size());
        }
        let narrow_workgroup = ce::narrow_workgroup_for(self.narrow_workgroup, batch);
        let passes = if probabilities || single_read { 2 } else { 1 };
        let workgroups = ce::Workgroups {
            subgroups: self.subgroup_sizes(),
            narrow: narrow_workgroup,
            wide: ce::wide_workgroup_for(
                self.wide_workgroup,
                self.max_wide_workgroup,
                classes,
                passes,
            ),
        };
        let mut chunks = match lane_runs {
            Some(_) => ce::plan_lane_runs(
                batch,
                classes,
                self.max_binding_bytes,
                element_bytes as u64,
                row_multiple,
            )?,
            None => ce::plan(
                variant,
                workgroups,
                batch,
                classes,
                passes,
                self.max_binding_bytes,
                element_bytes as u64,
                self.grouping,
                row_multiple,
            )?,
        };
        let splittable = !probabilities && !single_read && variant != KernelVariant::Narrow;
        let segments = match lane_runs {
            Some(runs) => runs,
            None => match (splittable, self.row_segments) {
                (false, _) => 1,
                (true, Some(s)) => s.clamp(1, classes.clamp(1, ce::MAX_SEGMENTS) as u32),
                (true, None) => {
                    let target = match self.grouping {
                        ce::Grouping::Groups(groups) => groups,
                        ce::Grouping::Rows(_) => 1,
                    };
                    let rows = chunks.iter().map(|c| c.rows).max().unwrap_or(1);
                    ce::auto_segments(rows, classes, target)
                }
            },
        };
        // ce::plan_lane_runs groups its chunks itself.
        if segments > 1 && lane_runs.is_none() {
            ce::group_for_split_finish(&mut chunks);
        }
        let total_groups: u32 = chunks.iter().map(|c| c.groups).sum();
        let (reduce_passes, final_partial) = reduce_partials::plan(total_groups);
        let weights_partial =
            (single_read && ce::reduction_code(spec.reduction) >= 2).then_some(final_partial + 1);
        Ok(Call {
            spec,
            shape,
            variant,
            chunks,
            reduce_passes,
            final_partial,
            logits,
            gradient,
            single_read,
            weights_partial,
            segments,
            narrow_workgroup,
            wide_workgroup: workgroups.wide,
            vec4,
        })
    }

    /// Blocking [`GpuContext::compute`].
    pub fn compute_blocking<T: LogitElement>(
        &self,
        spec: &CrossEntropy,
        batch: &Batch<'_, T>,
    ) -> Result<LossOutput> {
        pollster::block_on(self.compute(spec, batch))
    }

    /// Runs one call on buffers that already live on this context's device:
    /// the forward kernel, the reduction and, when `outputs.gradient` asks
    /// for it, the gradient, in one submission. Nothing is mapped or copied
    /// to the host; the reduced values stay on the device until
    /// [`PendingLoss::read`].
    ///
    /// Buffer requirements: every slice needs `BufferUsages::STORAGE`, an
    /// offset that is a multiple of the device's
    /// `min_storage_buffer_offset_alignment` (256 on most adapters), and
    /// room for its data: logits `[B, C]` of `batch.logits_dtype` (halves
    /// rounded up to whole u32 words, see [`crate::dtype`]), dense targets
    /// `f32 [B, C]`, labels `i32 [B]`, sample weights and per-example losses
    /// `f32 [B]`, the gradient `[B, C]` of `spec.gradient_dtype` resolved
    /// against the logits' type (in place: the logits' type). `row_lse`
    /// (`f32 [B]`) is copied into, so it needs `BufferUsages::COPY_DST` and
    /// an offset that is a multiple of 4 instead. No `MAP_READ` or
    /// `COPY_SRC` is needed on any input. Class weights come from `spec`
    /// (host data, validated there). Labels and sample weights are checked
    /// on the device and a bad one is reported by [`PendingLoss::read`]
    /// (the first negative or NaN sample weight before the first label out
    /// of range, as on the host path). `spec.gradient` and `spec.row_lse`
    /// are ignored: the gradient and the row lse are written when `outputs`
    /// has somewhere to put them.
    pub async fn submit_resident(
        &self,
        spec: &CrossEntropy,
        batch: &DeviceBatch<'_>,
        outputs: &DeviceOutputs<'_>,
    ) -> Result<PendingLoss> {
        let mut spec = spec.clone();
        spec.gradient = outputs.gradient.is_some();
        spec.row_lse = outputs.row_lse.is_some();
        let (b, c) = (batch.batch, batch.classes);
        spec.validate_for(c)?;
        let dense = matches!(batch.targets, DeviceTargets::Dense(_));
        if dense && spec.ignore_index.is_some() {
            return Err(Error::IgnoreIndexWithDenseTargets);
        }
        let cells = b * c;
        let dtype = batch.logits_dtype;
        let in_place = matches!(outputs.gradient, Some(GradientOutput::InPlace));
        let gradient_dtype = spec.gradient_dtype.resolve(dtype, in_place);
        let align = self.device.limits().min_storage_buffer_offset_alignment as u64;
        batch
            .logits
            .check("logits", dtype.buffer_bytes(cells), align)?;
        match batch.targets {
            DeviceTargets::Labels(labels) => labels.check("labels", b as u64 * 4, align)?,
            DeviceTargets::Dense(targets) => targets.check("targets", cells as u64 * 4, align)?,
        }
        if let Some(weights) = batch.sample_weights {
            weights.check("sample weights", b as u64 * 4, align)?;
        }
        outputs
            .per_example
            .check("per-example losses", b as u64 * 4, align)?;
        if let Some(GradientOutput::Into(gradient)) = outputs.gradient {
            gradient.check("gradient", gradient_dtype.buffer_bytes(cells), align)?;
        }
        if let Some(row_lse) = outputs.row_lse {
            row_lse.check_copy_target("row lse", b as u64 * 4)?;
        }
        if b == 0 {
            return Ok(PendingLoss::empty(&self.device, spec.reduction));
        }
        // Every chunk of every [B, C] array starts on an aligned offset.
        let mut element_sizes = vec![dtype.size() as u64];
        if dense {
            element_sizes.push(4);
        }
        if let Some(GradientOutput::Into(_)) = outputs.gradient {
            element_sizes.push(gradient_dtype.size() as u64);
        }
        let row_multiple = element_sizes
            .iter()
            .map(|size| align / gcd(c as u64 * size, align))
            .max()
            .unwrap_or(1) as usize;
        let shape = Shape {
            batch: b,
            classes: c,
            dense,
            sample_weights: batch.sample_weights.is_some(),
        };
        let call = self.plan_call(&spec, shape, dtype, in_place, row_multiple)?;

        let mut buffers = self.buffers.lock().await;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut encoder = self.command_encoder();
        let class_weight_bytes = spec
            .class_weights
            .as_ref()
            .map_or(0, |w| w.len() as u64 * 4);
        let mut uploads =
            self.uploads(&mut buffers, self.uniform_bytes(&call) + class_weight_bytes);
        let uniforms = self.write_uniforms(&mut buffers, &call, &mut uploads, &mut encoder);
        let class_weights = spec.class_weights.as_ref().map(|w| {
            let bytes: &[u8] = bytemuck::cast_slice(w);
            let buffer = ensure(
                &mut buffers.class_weights,
                self,
                "class_weights",
                bytes.len() as u64,
                STORAGE_IN,
            );
            uploads.write(&mut encoder, &buffer, bytes);
            Range::whole(buffer, bytes.len() as u64)
        });
        let (row_stats, partials, segments) = self.internal_buffers(&mut buffers, &call);
        let chunk_range = |slice: &DeviceSlice<'_>, dtype: LogitDtype, chunk: &Chunk| Range {
            buffer: slice.buffer.clone(),
            offset: slice.offset + (chunk.first_row * c * dtype.size()) as u64,
            size: dtype.buffer_bytes(chunk.rows * c),
            bind_whole: false,
        };
        let bindings = Bindings {
            uniforms,
            labels: match batch.targets {
                DeviceTargets::Labels(labels) => Some(labels.range(b as u64 * 4)),
                DeviceTargets::Dense(_) => None,
            },
            class_weights,
            sample_weights: batch.sample_weights.map(|w| w.range(b as u64 * 4)),
            per_example: outputs.per_example.range(b as u64 * 4),
            row_stats,
            partials,
            segments,
            chunks: call
                .chunks
                .iter()
                .map(|chunk| ChunkBindings {
                    logits: chunk_range(&batch.logits, dtype, chunk),
                    targets: match batch.targets {
                        DeviceTargets::Dense(t) => Some(chunk_range(&t, LogitDtype::F32, chunk)),
                        DeviceTargets::Labels(_) => None,
                    },
                    gradient: match outputs.gradient {
                        Some(GradientOutput::Into(g)) => {
                            Some(chunk_range(&g, gradient_dtype, chunk))
                        }
                        _ => None,
                    },
                })
                .collect(),
        };
        let partial_size = std::mem::size_of::<Partial>() as u64;
        let result = self.reduced_pool.take().unwrap_or_else(|| {
            self.buffers_created.fetch_add(1, Ordering::Relaxed);
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("reduced"),
                size: partial_size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        // The last resident call's groups serve this one where it binds the
        // same buffers (a training loop's usual case); no others are kept,
        // so the context holds no caller buffer past the next call.
        buffers.resident_bind_groups.calls += 1;
        let mut encoder = self.record(
            &call,
            &bindings,
            in_place,
            &mut buffers.resident_bind_groups,
            encoder,
        );
        buffers.resident_bind_groups.retain_last_call();
        encoder.copy_buffer_to_buffer(
            &bindings.partials.buffer,
            call.final_partial as u64 * partial_size,
            &result,
            0,
            partial_size,
        );
        if let (Some(row_lse), Some(stats)) = (outputs.row_lse, &bindings.row_stats) {
            encoder.copy_buffer_to_buffer(
                &stats.buffer,
                0,
                row_lse.buffer,
                row_lse.offset,
                b as u64 * 4,
            );
        }
        uploads.finish();
        self.queue.submit([encoder.finish()]);
        uploads.recall(&mut buffers);
        let validation = validation.pop();
        let oom = oom.pop();
        drop(buffers);
        if let Some(e) = oom.await {
            return Err(Error::OutOfMemory(e.to_string()));
        }
        if let Some(e) = validation.await {
            return Err(Error::Gpu(e.to_string()));
        }
        Ok(PendingLoss {
            device: self.device.clone(),
            result: Some(result),
            reusable: AtomicBool::new(true),
            pool: Some(self.reduced_pool.clone()),
            batch: b,
            classes: c,
            reduction: spec.reduction,
            check_finite: spec.check_finite,
        })
    }

    /// Blocking [`GpuContext::submit_resident`].
    pub fn submit_resident_blocking(
        &self,
        spec: &CrossEntropy,
        batch: &DeviceBatch<'_>,
        outputs: &DeviceOutputs<'_>,
    ) -> Result<PendingLoss> {
        pollster::block_on(self.submit_resident(spec, batch, outputs))
    }

    /// The uniforms of one call: one slot per chunk, then one per reduction
    /// pass, then (with the weights pre-pass) the same again for the
    /// pre-pass, whose final partial goes to `weights_partial`.
    fn write_uniforms(
        &self,
        buffers: &mut Buffers,
        call: &Call<'_>,
        uploads: &mut Uploads<'_>,
        encoder: &mut wgpu::CommandEncoder,
    ) -> wgpu::Buffer {
        let Call { spec, shape, .. } = *call;
        let classes = shape.classes;
        let class_weight_sum = spec
            .class_weights
            .as_ref()
            .map_or(classes as f64, |w| w.iter().map(|&x| x as f64).sum());
        // The gradient's denominator: the forward reduction's final partial,
        // or the weights pre-pass's.
        let scale_partial = call.weights_partial.unwrap_or(call.final_partial);
        let chunk_params = |chunk: &Chunk| ce::Params {
            batch: shape.batch as u32,
            classes: classes as u32,
            chunk_rows: chunk.rows as u32,
            row_base: chunk.first_row as u32,
            rows_per_group: chunk.rows_per_group,
            group_base: chunk.group_base,
            flags: call.flags(),
            ignore_index: spec.ignore_index.unwrap_or(0),
            label_smoothing: spec.label_smoothing,
            class_weight_sum: class_weight_sum as f32,
            zero: 0,
            z_loss: spec.z_loss,
            softcap: spec.softcap.unwrap_or(1.0),
            final_partial: scale_partial,
            reduction: ce::reduction_code(spec.reduction),
            segments: call.segments,
        };
        let stride = self.uniform_stride as usize;
        let mut bytes = vec![0u8; call.uniform_slots() * stride];
        let mut put = |slot: usize, data: &[u8]| {
            bytes[slot * stride..slot * stride + data.len()].copy_from_slice(data);
        };
        for (i, chunk) in call.chunks.iter().enumerate() {
            put(call.chunk_slot(i), bytemuck::bytes_of(&chunk_params(chunk)));
        }
        for (i, params) in call.reduce_passes.iter().enumerate() {
            put(call.reduce_slot(i), bytemuck::bytes_of(params));
        }
        if let Some(target) = call.weights_partial {
            // The same tree as the forward pass's, but its root lands at
            // `target` (a single group's partial is the root).
            let last = call.reduce_passes.len().checked_sub(1);
            for (i, chunk) in call.chunks.iter().enumerate() {
                let mut params = chunk_params(chunk);
                if last.is_none() {
                    params.group_base += target;
                }
                params.flags = call.kernel_flags(Kernel::Weights);
                put(call.weights_chunk_slot(i), bytemuck::bytes_of(&params));
            }
            for (i, params) in call.reduce_passes.iter().enumerate() {
                let mut params = *params;
                if Some(i) == last {
                    params.out_offset = target;
                }
                put(call.weights_reduce_slot(i), bytemuck::bytes_of(&params));
            }
        }
        let uniforms = ensure(
            &mut buffers.uniforms,
            self,
            "uniforms",
            bytes.len() as u64,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        );
        uploads.write(encoder, &uniforms, &bytes);
        uniforms
    }

    /// The bytes of one call's uniforms.
    fn uniform_bytes(&self, call: &Call<'_>) -> u64 {
        call.uniform_slots() as u64 * self.uniform_stride
    }

    /// Uploads for a call whose host inputs total `bytes`: through the
    /// staging belt when they fit one of its chunks.
    fn uploads(&self, buffers: &mut Buffers, bytes: u64) -> Uploads<'_> {
        let belt = (bytes <= BELT_CHUNK).then(|| {
            buffers
                .belt
                .take()
                .unwrap_or_else(|| wgpu::util::StagingBelt::new(self.device.clone(), BELT_CHUNK))
        });
        Uploads {
            queue: &self.queue,
            belt,
        }
    }

    fn command_encoder(&self) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fused-loss"),
            })
    }

    /// The internal per-call buffers: row stats (when needed) and partials
    /// (one more for the weights pre-pass's result).
    fn internal_buffers(
        &self,
        buffers: &mut Buffers,
        call: &Call<'_>,
    ) -> (Option<Range>, Range, Option<Range>) {
        let read_back = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let row_stats_bytes = call.shape.batch as u64 * 8;
        let row_stats = call.row_stats().then(|| {
            Range::whole(
                ensure(
                    &mut buffers.row_stats,
                    self,
                    "row_stats",
                    row_stats_bytes,
                    read_back,
                ),
                row_stats_bytes,
            )
        });
        let partial_count = call.weights_partial.unwrap_or(call.final_partial) as u64 + 1;
        let partial_bytes = partial_count * std::mem::size_of::<Partial>() as u64;
        let partials = Range::whole(
            ensure(
                &mut buffers.partials,
                self,
                "partials",
                partial_bytes,
                read_back,
            ),
            partial_bytes,
        );
        let segments = (call.segments > 1).then(|| {
            let rows = call.chunks.iter().map(|c| c.rows).max().unwrap_or(0) as u64;
            let bytes = rows * call.segments as u64 * ce::SEGMENT_WORDS * 4;
            Range::whole(
                ensure(
                    &mut buffers.segments,
                    self,
                    "segments",
                    bytes,
                    wgpu::BufferUsages::STORAGE,
                ),
                bytes,
            )
        });
        (row_stats, partials, segments)
    }

    /// Uploads host slices and records and submits one call.
    fn encode<T: LogitElement>(
        &self,
        buffers: &mut Buffers,
        call: &Call<'_>,
        batch: &Batch<'_, T>,
        in_place: bool,
    ) -> Readback {
        let queue = &self.queue;
        let classes = batch.classes;
        let batch_bytes = batch.batch as u64 * 4;
        let gradient = call.spec.gradient;
        let read_back = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let cells = batch.batch * classes;
        let input_bytes = self.uniform_bytes(call)
            + T::DTYPE.buffer_bytes(cells)
            + match batch.targets {
                Targets::Labels(_) => batch_bytes,
                Targets::Dense(_) => cells as u64 * 4,
            }
            + batch.sample_weights.map_or(0, |_| batch_bytes)
            + call
                .spec
                .class_weights
                .as_ref()
                .map_or(0, |w| w.len() as u64 * 4);
        let mut encoder = self.command_encoder();
        let mut uploads = self.uploads(buffers, input_bytes);
        let uniforms = self.write_uniforms(buffers, call, &mut uploads, &mut encoder);

        let mut upload = |slot: &mut Option<wgpu::Buffer>, label, data: &[u8], usage| {
            let buffer = ensure(slot, self, label, data.len() as u64, usage);
            uploads.write(&mut encoder, &buffer, data);
            Range::whole(buffer, data.len() as u64)
        };
        let labels = match batch.targets {
            Targets::Labels(labels) => Some(upload(
                &mut buffers.labels,
                "labels",
                bytemuck::cast_slice(labels),
                STORAGE_IN,
            )),
            Targets::Dense(_) => None,
        };
        let sample_weights = batch.sample_weights.map(|w| {
            upload(
                &mut buffers.sample_weights,
                "sample_weights",
                bytemuck::cast_slice(w),
                STORAGE_IN,
            )
        });
        let class_weights = call.spec.class_weights.as_ref().map(|w| {
            upload(
                &mut buffers.class_weights,
                "class_weights",
                bytemuck::cast_slice(w),
                STORAGE_IN,
            )
        });
        let per_example = Range::whole(
            ensure(
                &mut buffers.per_example,
                self,
                "per_example",
                batch_bytes,
                read_back,
            ),
            batch_bytes,
        );
        let (row_stats, partials, segments) = self.internal_buffers(buffers, call);

        // Chunked inputs and gradient: one buffer per chunk.
        let grow =
            |v: &mut Vec<Option<wgpu::Buffer>>| v.resize(v.len().max(call.chunks.len()), None);
        grow(&mut buffers.logits);
        grow(&mut buffers.targets);
        grow(&mut buffers.gradient);
        let logits_usage = if in_place {
            read_back | wgpu::BufferUsages::COPY_DST
        } else {
            STORAGE_IN
        };
        let gradient_dtype = call.gradient.dtype();
        let mut chunks = Vec::with_capacity(call.chunks.len());
        for (i, chunk) in call.chunks.iter().enumerate() {
            let range = chunk.first_row * classes..(chunk.first_row + chunk.rows) * classes;
            let cells = chunk.rows * classes;
            if buffers.logits[i]
                .as_ref()
                .is_some_and(|b| !b.usage().contains(logits_usage))
            {
                buffers.logits[i] = None;
            }
            let logits_bytes = T::to_bytes(&batch.logits[range.clone()]);
            let logits = ensure(
                &mut buffers.logits[i],
                self,
                "logits",
                logits_bytes.len() as u64,
                logits_usage,
            );
            uploads.write(&mut encoder, &logits, &logits_bytes);
            let targets = match batch.targets {
                Targets::Dense(t) => {
                    let bytes = cells as u64 * 4;
                    let buffer =
                        ensure(&mut buffers.targets[i], self, "targets", bytes, STORAGE_IN);
                    uploads.write(&mut encoder, &buffer, bytemuck::cast_slice(&t[range]));
                    Some(Range::whole(buffer, bytes))
                }
                Targets::Labels(_) => None,
            };
            let gradient = (gradient && !in_place).then(|| {
                let bytes = gradient_dtype.buffer_bytes(cells);
                Range::whole(
                    ensure(&mut buffers.gradient[i], self, "gradient", bytes, read_back),
                    bytes,
                )
            });
            chunks.push(ChunkBindings {
                logits: Range::whole(logits, logits_bytes.len() as u64),
                targets,
                gradient,
            });
        }
        let bindings = Bindings {
            uniforms,
            labels,
            class_weights,
            sample_weights,
            per_example,
            row_stats,
            partials,
            segments,
            chunks,
        };

        // Staging: per-example losses, the final partial, then the gradient
        // and the row lse when asked for.
        let partial_size = std::mem::size_of::<Partial>() as u64;
        let partial_offset = batch_bytes.next_multiple_of(16);
        let mut staging_size = partial_offset + partial_size;
        let gradient_offset = gradient.then(|| {
            let at = staging_size.next_multiple_of(16);
            staging_size = at + gradient_dtype.buffer_bytes(batch.batch * classes);
            at
        });
        let row_lse_offset = call.spec.row_lse.then(|| {
            let at = staging_size.next_multiple_of(16);
            staging_size = at + batch_bytes;
            at
        });
        let timestamp_offset = self.timer.as_ref().map(|_| {
            let at = staging_size.next_multiple_of(16);
            staging_size = at + 16;
            at
        });
        let staging = ensure(
            &mut buffers.staging,
            self,
            "staging",
            staging_size,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );

        // Only a new pool buffer can have left groups over a let-go one.
        let pool_version = self.buffers_created.load(Ordering::Relaxed);
        if buffers.bind_groups.pool_version != pool_version {
            let pool = buffers.pool();
            buffers
                .bind_groups
                .retain_pool(&pool, [&self.placeholder, &self.placeholder_writable]);
            buffers.bind_groups.pool_version = pool_version;
        }
        let mut encoder = self.record(call, &bindings, in_place, &mut buffers.bind_groups, encoder);
        encoder.copy_buffer_to_buffer(&bindings.per_example.buffer, 0, &staging, 0, batch_bytes);
        encoder.copy_buffer_to_buffer(
            &bindings.partials.buffer,
            call.final_partial as u64 * partial_size,
            &staging,
            partial_offset,
            partial_size,
        );
        if let Some(offset) = gradient_offset {
            for (chunk, bound) in call.chunks.iter().zip(&bindings.chunks) {
                let source = bound.gradient.as_ref().unwrap_or(&bound.logits);
                // Chunks of packed halves hold an even number of elements
                // (but the last), so each starts on a word.
                let at = offset + (chunk.first_row * classes * gradient_dtype.size()) as u64;
                encoder.copy_buffer_to_buffer(
                    &source.buffer,
                    source.offset,
                    &staging,
                    at,
                    source.size,
                );
            }
        }
        if let (Some(offset), Some(stats)) = (row_lse_offset, &bindings.row_stats) {
            encoder.copy_buffer_to_buffer(&stats.buffer, 0, &staging, offset, batch_bytes);
        }
        if let (Some(offset), Some(timer)) = (timestamp_offset, &self.timer) {
            encoder.resolve_query_set(&timer.queries, 0..2, &timer.resolved, 0);
            encoder.copy_buffer_to_buffer(&timer.resolved, 0, &staging, offset, 16);
        }
        uploads.finish();
        queue.submit([encoder.finish()]);
        uploads.recall(buffers);
        Readback {
            staging,
            size: staging_size,
            partial_offset,
            gradient_offset,
            row_lse_offset,
            timestamp_offset,
        }
    }

    /// Records the forward kernel, the reduction and the gradient of one
    /// call: with two reads, forward, reduction, gradient; with one, the
    /// weights pre-pass and its reduction (where the reduction has a
    /// denominator), the single-read kernel, then the reduction.
    fn record(
        &self,
        call: &Call<'_>,
        b: &Bindings,
        in_place: bool,
        cache: &mut BindGroupCache,
        mut encoder: wgpu::CommandEncoder,
    ) -> wgpu::CommandEncoder {
        let device = &self.device;
        let mut bind_group = |kernel: Kernel, entries: &[wgpu::BindGroupEntry<'_>]| {
            self.bind_group(cache, kernel, entries)
        };
        let stride = self.uniform_stride;
        let slot = |index: usize| (index as u64 * stride) as u32;
        let whole_or = |r: &Option<Range>, placeholder: &wgpu::Buffer| match r {
            Some(r) => r.clone(),
            None => Range::whole(placeholder.clone(), 16),
        };
        let labels = whole_or(&b.labels, &self.placeholder);
        let class_weights = whole_or(&b.class_weights, &self.placeholder);
        let sample_weights = whole_or(&b.sample_weights, &self.placeholder);
        let row_stats = whole_or(&b.row_stats, &self.placeholder_writable);
        let uniform = entry(
            0,
            binding(&b.uniforms, 0, std::mem::size_of::<ce::Params>() as u64),
        );
        let subgroup_workgroup = self.subgroups.map_or(0, |s| s.workgroup);
        let variant = |kernel: Kernel| Variant {
            workgroup: if kernel.narrow_workgroup() {
                call.narrow_workgroup
            } else if kernel.wide_workgroup() {
                call.wide_workgroup
            } else {
                subgroup_workgroup
            },
            kernel,
            logits: call.logits,
            gradient: call.gradient,
            row_cache: self.row_cache,
            flags: if self.specialize_flags {
                call.kernel_flags(kernel)
            } else {
                ce::ANY_FLAGS
            },
        };
        let vec4 = call.vec4;
        // Subgroup calls never read once (plan_call hands those to the wide
        // kernel), so their fused kernel is only a placeholder.
        let (forward_kernel, fused_kernel) = match (call.variant, in_place) {
            (KernelVariant::Wide, false) => (Kernel::Wide, Kernel::FusedWide),
            (KernelVariant::Wide, true) => (Kernel::Wide, Kernel::FusedWideInPlace),
            (KernelVariant::Narrow, false) if vec4 => (Kernel::NarrowVec4, Kernel::FusedNarrow),
            (KernelVariant::Narrow, true) if vec4 => {
                (Kernel::NarrowVec4, Kernel::FusedNarrowInPlace)
            }
            (KernelVariant::Narrow, false) => (Kernel::Narrow, Kernel::FusedNarrow),
            (KernelVariant::Narrow, true) => (Kernel::Narrow, Kernel::FusedNarrowInPlace),
            (KernelVariant::Subgroup, false) if vec4 => (Kernel::SubgroupVec4, Kernel::FusedWide),
            (KernelVariant::Subgroup, true) if vec4 => {
                (Kernel::SubgroupVec4, Kernel::FusedWideInPlace)
            }
            (KernelVariant::Subgroup, false) => (Kernel::Subgroup, Kernel::FusedWide),
            (KernelVariant::Subgroup, true) => (Kernel::Subgroup, Kernel::FusedWideInPlace),
        };
        let gradient_kernel = if in_place {
            Kernel::GradientInPlace
        } else {
            Kernel::Gradient
        };
        let lane_runs = call.lane_runs();
        let runs_kernel = if lane_runs {
            Kernel::SplitLanes
        } else {
            Kernel::SplitRows
        };
        let mut forward_groups = Vec::with_capacity(b.chunks.len());
        let mut split_groups = Vec::new();
        let mut gradient_groups = Vec::new();
        for chunk in &b.chunks {
            let targets = whole_or(&chunk.targets, &self.placeholder);
            let shared = [
                chunk.logits.entry(1),
                targets.entry(2),
                labels.entry(3),
                class_weights.entry(4),
                sample_weights.entry(5),
            ];
            let mut entries = vec![uniform.clone()];
            entries.extend(shared.iter().cloned());
            entries.extend([
                b.per_example.entry(6),
                b.partials.entry(7),
                row_stats.entry(8),
            ]);
            if let Some(segments) = &b.segments {
                // The runs write the segments buffer where the row stats
                // go; the finishing pass reads it where the dense targets go.
                let mut runs = entries.clone();
                runs[8] = segments.entry(8);
                if lane_runs {
                    runs.push(chunk.logits.entry(9));
                }
                let mut finish = entries.clone();
                finish[2] = segments.entry(2);
                split_groups.push((
                    bind_group(runs_kernel, &runs),
                    bind_group(Kernel::SplitFinish, &finish),
                ));
            } else {
                let mut forward_entries = entries.clone();
                if vec4 {
                    forward_entries.push(chunk.logits.entry(9));
                }
                forward_groups.push(bind_group(forward_kernel, &forward_entries));
            }
            if call.single_read {
                if let Some(gradient) = &chunk.gradient {
                    entries.push(gradient.entry(9));
                }
                gradient_groups.push(bind_group(fused_kernel, &entries));
            } else if call.spec.gradient {
                let mut entries = vec![uniform.clone()];
                entries.extend(shared.iter().cloned());
                entries.extend([row_stats.entry(6), b.partials.entry(7)]);
                if let Some(gradient) = &chunk.gradient {
                    entries.push(gradient.entry(8));
                }
                gradient_groups.push(bind_group(gradient_kernel, &entries));
            }
        }
        let reduce_group = bind_group(
            Kernel::Reduce,
            &[
                entry(
                    0,
                    binding(
                        &b.uniforms,
                        0,
                        std::mem::size_of::<reduce_partials::Params>() as u64,
                    ),
                ),
                b.partials.entry(1),
            ],
        );
        let pipeline = |kernel: Kernel| self.pipelines.get(device, variant(kernel));
        // Each pass in its own pipeline: a last pass over few partials
        // runs in a smaller workgroup.
        let reduce_dispatch =
            |pass: &mut wgpu::ComputePass<'_>, params: &reduce_partials::Params, slot: u32| {
                let workgroup = reduce_partials::pass_workgroup(params.count);
                pass.set_pipeline(&self.pipelines.get(
                    device,
                    Variant {
                        workgroup,
                        ..Variant::f32(Kernel::Reduce)
                    },
                ));
                pass.set_bind_group(0, &reduce_group, &[slot]);
                let (x, y) = ce::dispatch_size(params.count.div_ceil(workgroup));
                pass.dispatch_workgroups(x, y, 1);
            };

        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("fused-loss"),
                timestamp_writes: self.timer.as_ref().map(Timer::writes),
            });
            if call.single_read {
                if call.weights_partial.is_some() {
                    pass.set_pipeline(&pipeline(Kernel::Weights));
                    for (i, (chunk, group)) in call.chunks.iter().zip(&forward_groups).enumerate() {
                        pass.set_bind_group(0, group, &[slot(call.weights_chunk_slot(i))]);
                        let groups = match call.variant {
                            KernelVariant::Narrow => chunk.groups,
                            KernelVariant::Wide | KernelVariant::Subgroup => {
                                chunk.groups.div_ceil(call.narrow_workgroup)
                            }
                        };
                        let (x, y) = ce::dispatch_size(groups);
                        pass.dispatch_workgroups(x, y, 1);
                    }
                    for (i, params) in call.reduce_passes.iter().enumerate() {
                        reduce_dispatch(&mut pass, params, slot(call.weights_reduce_slot(i)));
                    }
                }
                pass.set_pipeline(&pipeline(fused_kernel));
                for (i, (chunk, group)) in call.chunks.iter().zip(&gradient_groups).enumerate() {
                    pass.set_bind_group(0, group, &[slot(call.chunk_slot(i))]);
                    let (x, y) = ce::dispatch_size(chunk.groups);
                    pass.dispatch_workgroups(x, y, 1);
                }
            } else if !split_groups.is_empty() {
                let (runs_pipeline, finish_pipeline) =
                    (pipeline(runs_kernel), pipeline(Kernel::SplitFinish));
                let chunk_groups = call.chunks.iter().zip(&split_groups).enumerate();
                for (i, (chunk, (runs, finish))) in chunk_groups {
                    pass.set_pipeline(&runs_pipeline);
                    pass.set_bind_group(0, runs, &[slot(call.chunk_slot(i))]);
                    let mut run_groups = chunk.rows as u32 * call.segments;
                    if lane_runs {
                        run_groups = run_groups.div_ceil(ce::SPLIT_LANES_WORKGROUP_SIZE);
                    }
                    let (x, y) = ce::dispatch_size(run_groups);
                    pass.dispatch_workgroups(x, y, 1);
                    pass.set_pipeline(&finish_pipeline);
                    pass.set_bind_group(0, finish, &[slot(call.chunk_slot(i))]);
                    let (x, y) = ce::dispatch_size(chunk.groups);
                    pass.dispatch_workgroups(x, y, 1);
                }
            } else {
                pass.set_pipeline(&pipeline(forward_kernel));
                for (i, (chunk, group)) in call.chunks.iter().zip(&forward_groups).enumerate() {
                    pass.set_bind_group(0, group, &[slot(call.chunk_slot(i))]);
                    let (x, y) = ce::dispatch_size(chunk.groups);
                    pass.dispatch_workgroups(x, y, 1);
                }
            }
            for (i, params) in call.reduce_passes.iter().enumerate() {
                reduce_dispatch(&mut pass, params, slot(call.reduce_slot(i)));
            }
            if call.spec.gradient && !call.single_read {
                pass.set_pipeline(&pipeline(gradient_kernel));
                let per_word = call.gradient.per_word();
                for (i, (chunk, group)) in call.chunks.iter().zip(&gradient_groups).enumerate() {
                    pass.set_bind_group(0, group, &[slot(call.chunk_slot(i))]);
                    let words = (chunk.rows * call.shape.classes).div_ceil(per_word) as u32;
                    let (x, y) = ce::dispatch_size(words.div_ceil(ce::GRAD_WORKGROUP_SIZE));
                    pass.dispatch_workgroups(x, y, 1);
                }
            }
        }
        encoder
    }
}

impl GpuContext {
    /// A bind group of `kernel`'s layout over `entries`: from `cache` when
    /// an earlier call made the same one, else new (and kept there).
    fn bind_group(
        &self,
        cache: &mut BindGroupCache,
        kernel: Kernel,
        entries: &[wgpu::BindGroupEntry<'_>],
    ) -> wgpu::BindGroup {
        let create = || {
            self.bind_groups_created.fetch_add(1, Ordering::Relaxed);
            self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(kernel.label()),
                layout: self.pipelines.layout(kernel),
                entries,
            })
        };
        let key = BindGroupKey {
            kernel,
            entries: entries
                .iter()
                .map(|e| match &e.resource {
                    wgpu::BindingResource::Buffer(b) => {
                        (e.binding, b.buffer.clone(), b.offset, b.size)
                    }
                    _ => unreachable!("the kernels bind buffers only"),
                })
                .collect(),
        };
        if cache.groups.len() >= BindGroupCache::CAPACITY && !cache.groups.contains_key(&key) {
            cache.groups.clear();
        }
        let call = cache.calls;
        let (group, used) = cache.groups.entry(key).or_insert_with(|| (create(), call));
        *used = call;
        group.clone()
    }
}

/// `size` if it is a power of two from 32 to 1024 that the device's limits
/// allow for a kernel whose tree takes `bytes_per_invocation` of workgroup
/// memory per invocation.
fn checked_workgroup_size(
    kernel: &str,
    size: u32,
    bytes_per_invocation: u64,
    limits: &wgpu::Limits,
) -> Result<u32> {
    let memory = size as u64 * bytes_per_invocation;
    if !size.is_power_of_two()
        || !(ce::MIN_WORKGROUP_SIZE..=1024).contains(&size)
        || size > limits.max_compute_invocations_per_workgroup
        || size > limits.max_compute_workgroup_size_x
        || memory > limits.max_compute_workgroup_storage_size as u64
    {
        return Err(Error::InvalidArgument(format!(
            "{kernel} workgroup size {size}: must be a power of two from 32 to 1024 and \
             within the device's limits ({} invocations, {} bytes of workgroup memory)",
            limits
                .max_compute_invocations_per_workgroup
                .min(limits.max_compute_workgroup_size_x),
            limits.max_compute_workgroup_storage_size
        )));
    }
    Ok(size)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// A place in a buffer on the context's device: `offset` bytes in.
#[derive(Clone, Copy, Debug)]
pub struct DeviceSlice<'a> {
    /// The buffer.
    pub buffer: &'a wgpu::Buffer,
    /// Where the data starts, in bytes; a multiple of the device's
    /// `min_storage_buffer_offset_alignment`.
    pub offset: u64,
}

impl<'a> DeviceSlice<'a> {
    /// The buffer from its start.
    pub fn new(buffer: &'a wgpu::Buffer) -> Self {
        DeviceSlice { buffer, offset: 0 }
    }

    /// The buffer from `offset` bytes in.
    pub fn at(buffer: &'a wgpu::Buffer, offset: u64) -> Self {
        DeviceSlice { buffer, offset }
    }

    fn check(&self, what: &'static str, bytes: u64, align: u64) -> Result<()> {
        let fail = |reason: String| Err(Error::InvalidBuffer { what, reason });
        if !self.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return fail("the buffer lacks BufferUsages::STORAGE".into());
        }
        if !self.offset.is_multiple_of(align) {
            return fail(format!(
                "offset {} is not a multiple of {align}",
                self.offset
            ));
        }
        if self.offset + bytes > self.buffer.size() {
            return fail(format!(
                "needs {bytes} bytes from offset {}, the buffer has {}",
                self.offset,
                self.buffer.size()
            ));
        }
        Ok(())
    }

    /// Checks a slice that is copied into: `COPY_DST`, a 4-byte aligned
    /// offset and room for `bytes`.
    fn check_copy_target(&self, what: &'static str, bytes: u64) -> Result<()> {
        let fail = |reason: String| Err(Error::InvalidBuffer { what, reason });
        if !self.buffer.usage().contains(wgpu::BufferUsages::COPY_DST) {
            return fail("the buffer lacks BufferUsages::COPY_DST".into());
        }
        if !self.offset.is_multiple_of(4) {
            return fail(format!("offset {} is not a multiple of 4", self.offset));
        }
        if self.offset + bytes > self.buffer.size() {
            return fail(format!(
                "needs {bytes} bytes from offset {}, the buffer has {}",
                self.offset,
                self.buffer.size()
            ));
        }
        Ok(())
    }

    fn range(&self, size: u64) -> Range {
        Range {
            buffer: self.buffer.clone(),
            offset: self.offset,
            size: size.max(4),
            bind_whole: false,
        }
    }
}

/// The targets of a device batch.
#[derive(Clone, Copy, Debug)]
pub enum DeviceTargets<'a> {
    /// `i32 [B]` class indices.
    Labels(DeviceSlice<'a>),
    /// `f32 [B, C]` one-hot or soft targets.
    Dense(DeviceSlice<'a>),
}

/// A batch whose data already lives on the context's device.
#[derive(Clone, Copy, Debug)]
pub struct DeviceBatch<'a> {
    /// `[B, C]` logits (or probabilities), row-major, of `logits_dtype`.
    pub logits: DeviceSlice<'a>,
    /// The logits' element type: f32, or f16 / bf16 (two per u32 word,
    /// element `n·C + c` at byte `2·(n·C + c)`; see [`crate::dtype`]).
    pub logits_dtype: LogitDtype,
    /// B.
    pub batch: usize,
    /// C.
    pub classes: usize,
    /// Labels or dense targets.
    pub targets: DeviceTargets<'a>,
    /// `f32 [B]` sample weights.
    pub sample_weights: Option<DeviceSlice<'a>>,
}

/// Where the gradient goes.
#[derive(Clone, Copy, Debug)]
pub enum GradientOutput<'a> {
    /// Into this `[B, C]` buffer, f32 or of the logits' type as
    /// [`CrossEntropy::gradient_dtype`] says.
    Into(DeviceSlice<'a>),
    /// Over the logits themselves: no extra B×C memory.
    InPlace,
}

/// Where a device call writes its results.
#[derive(Clone, Copy, Debug)]
pub struct DeviceOutputs<'a> {
    /// `f32 [B]` per-example losses.
    pub per_example: DeviceSlice<'a>,
    /// The gradient of the reduced loss with respect to the logits.
    pub gradient: Option<GradientOutput<'a>>,
    /// Each row's log-sum-exp, `f32 [B]`, copied here (the buffer needs
    /// `BufferUsages::COPY_DST`).
    pub row_lse: Option<DeviceSlice<'a>>,
}

/// The reduced values of a [`GpuContext::submit_resident`] call, read back
/// only on request.
#[derive(Debug)]
pub struct PendingLoss {
    device: wgpu::Device,
    result: Option<wgpu::Buffer>,
    /// `result` is unmapped (no read failed halfway), so it can serve a
    /// later call once this is dropped.
    reusable: AtomicBool,
    pool: Option<ReducedPool>,
    batch: usize,
    classes: usize,
    reduction: crate::Reduction,
    check_finite: bool,
}

/// The reduced values of a device call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReducedLoss {
    /// The chosen reduction's value.
    pub loss: f64,
    /// Estimator's `average_loss`.
    pub average_loss: f64,
    /// Mergeable statistics.
    pub stats: LossStats,
}

impl PendingLoss {
    fn empty(device: &wgpu::Device, reduction: crate::Reduction) -> Self {
        PendingLoss {
            device: device.clone(),
            result: None,
            reusable: AtomicBool::new(false),
            pool: None,
            batch: 0,
            classes: 0,
            reduction,
            check_finite: false,
        }
    }

    /// Waits for the call and reads its 56-byte reduced partial: `loss`,
    /// `average_loss` and the stats. Reports a negative or NaN sample weight
    /// or a bad label found on the device (the first row of each, weights
    /// first), and a non-finite row under `check_finite`.
    pub async fn read(&self) -> Result<ReducedLoss> {
        let Some(result) = &self.result else {
            let stats = LossStats::default();
            return Ok(ReducedLoss {
                loss: stats.reduce(self.reduction),
                average_loss: stats.average_loss(),
                stats,
            });
        };
        let size = std::mem::size_of::<Partial>();
        self.reusable.store(false, Ordering::Relaxed);
        let partial: Partial = map_read(&self.device, result, size as u64, |view| {
            bytemuck::pod_read_unaligned(&view[..size])
        })
        .await?;
        self.reusable.store(true, Ordering::Relaxed);
        partial.check(self.classes, self.check_finite)?;
        let stats = partial.stats(self.batch);
        Ok(ReducedLoss {
            loss: stats.reduce(self.reduction),
            average_loss: stats.average_loss(),
            stats,
        })
    }

    /// Blocking [`PendingLoss::read`].
    pub fn read_blocking(&self) -> Result<ReducedLoss> {
        pollster::block_on(self.read())
    }
}

impl Drop for PendingLoss {
    fn drop(&mut self) {
        if let (Some(buffer), Some(pool)) = (self.result.take(), &self.pool) {
            if self.reusable.load(Ordering::Relaxed) {
                pool.give_back(buffer);
            }
        }
    }
}

/// The 56-byte readback buffers of resident calls, handed back by dropped
/// [`PendingLoss`]es, so that steady-state calls create none. A later
/// call's copy into a buffer is ordered after the earlier call's on the
/// queue, and its map waits for both.
#[derive(Clone, Default, Debug)]
struct ReducedPool(Arc<Mutex<Vec<wgpu::Buffer>>>);

impl ReducedPool {
    /// Buffers kept at most (one per call in flight).
    const CAPACITY: usize = 16;

    fn take(&self) -> Option<wgpu::Buffer> {
        self.0.lock().ok()?.pop()
    }

    fn give_back(&self, buffer: wgpu::Buffer) {
        if let Ok(mut pool) = self.0.lock() {
            if pool.len() < Self::CAPACITY {
                pool.push(buffer);
            }
        }
    }
}

/// The shape of one call's input, whatever holds it.
#[derive(Clone, Copy, Debug)]
struct Shape {
    batch: usize,
    classes: usize,
    dense: bool,
    sample_weights: bool,
}

/// How plain vec4 rows run on a CPU-type adapter (`GpuContext::lanes_for`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lanes {
    /// A whole row per invocation (the narrow kernel's vec4 variant).
    Rows,
    /// Each row cut into this many runs, an invocation each (the split
    /// lanes).
    Runs(u32),
}

/// One call's options, shape and plan.
struct Call<'a> {
    spec: &'a CrossEntropy,
    shape: Shape,
    variant: KernelVariant,
    chunks: Vec<Chunk>,
    reduce_passes: Vec<reduce_partials::Params>,
    final_partial: u32,
    /// How the logits and the gradient are stored.
    logits: Storage,
    gradient: Storage,
    /// The single-read kernel writes the gradient (no gradient kernel).
    single_read: bool,
    /// Where the weights pre-pass leaves its final partial, when it runs
    /// (single read with a reduction that has a denominator): one past the
    /// forward pass's, since the pre-pass reduces in the same partials that
    /// the forward pass then overwrites.
    weights_partial: Option<u32>,
    /// Runs per row when rows are split (1: not split).
    segments: u32,
    /// The workgroup size of the kernels that share the narrow kernel's
    /// (`ce::narrow_workgroup_for`).
    narrow_workgroup: u32,
    /// The wide kernels' (`ce::wide_workgroup_for`).
    wide_workgroup: u32,
    /// The forward kernel reads the rows as vec4s: the subgroup kernel's
    /// f32 rows of a multiple of 4 classes, and the narrow kernel's lane
    /// rows on CPU-type adapters (`ce::lane_rows_fit`).
    vec4: bool,
}

impl Call<'_> {
    /// The flags `kernel` runs with in this call: [`Call::flags`], and for
    /// the weights pre-pass the narrow partition where the forward pass is
    /// narrow.
    fn kernel_flags(&self, kernel: Kernel) -> u32 {
        if kernel == Kernel::Weights && self.variant == KernelVariant::Narrow {
            self.flags() | ce::FLAG_NARROW_PARTITION
        } else {
            self.flags()
        }
    }

    /// The call's options as the kernels' `Params::flags`.
    fn flags(&self) -> u32 {
        let (spec, shape) = (self.spec, self.shape);
        let flag_if = |on: bool, flag: u32| if on { flag } else { 0 };
        flag_if(shape.dense, ce::FLAG_DENSE)
            | flag_if(
                spec.input == InputKind::Probabilities,
                ce::FLAG_PROBABILITIES,
            )
            | flag_if(spec.class_weights.is_some(), ce::FLAG_CLASS_WEIGHTS)
            | flag_if(shape.sample_weights, ce::FLAG_SAMPLE_WEIGHTS)
            | flag_if(
                spec.ignore_index.is_some() && !shape.dense,
                ce::FLAG_IGNORE_INDEX,
            )
            | flag_if(spec.label_smoothing > 0.0, ce::FLAG_SMOOTHING)
            | flag_if(spec.softcap.is_some(), ce::FLAG_SOFTCAP)
            | flag_if(spec.z_loss > 0.0, ce::FLAG_Z_LOSS)
            | flag_if(self.row_stats(), ce::FLAG_ROW_STATS)
            | flag_if(self.vec4, ce::FLAG_VEC4)
    }

    /// Whether the rows are split into the narrow kernel's lane runs
    /// (`cross_entropy_split_lanes.wgsl`) rather than workgroup runs.
    fn lane_runs(&self) -> bool {
        self.variant == KernelVariant::Narrow && self.segments > 1
    }

    /// Whether the forward pass writes each row's (lse, Σ a_c): for the
    /// two-read gradient, and for `row_lse`.
    fn row_stats(&self) -> bool {
        (self.spec.gradient && !self.single_read) || self.spec.row_lse
    }

    fn chunk_slot(&self, i: usize) -> usize {
        i
    }

    fn reduce_slot(&self, i: usize) -> usize {
        self.chunks.len() + i
    }

    fn weights_chunk_slot(&self, i: usize) -> usize {
        self.chunks.len() + self.reduce_passes.len() + i
    }

    fn weights_reduce_slot(&self, i: usize) -> usize {
        2 * self.chunks.len() + self.reduce_passes.len() + i
    }

    fn uniform_slots(&self) -> usize {
        let slots = self.chunks.len() + self.reduce_passes.len();
        if self.weights_partial.is_some() {
            2 * slots
        } else {
            slots
        }
    }
}

/// A buffer range bound as one storage binding.
#[derive(Clone, Debug)]
struct Range {
    buffer: wgpu::Buffer,
    offset: u64,
    /// The bytes in use (copied out where results are read back).
    size: u64,
    /// Bind the whole buffer rather than `size` bytes: pool buffers, whose
    /// bind groups then serve every call that fits them (the kernels never
    /// read past the rows their uniform names).
    bind_whole: bool,
}

impl Range {
    /// `size` bytes at the start of a pool buffer, bound whole.
    fn whole(buffer: wgpu::Buffer, size: u64) -> Range {
        Range {
            buffer,
            offset: 0,
            size,
            bind_whole: true,
        }
    }

    fn entry(&self, binding_index: u32) -> wgpu::BindGroupEntry<'_> {
        let size = if self.bind_whole {
            self.buffer.size() - self.offset
        } else {
            self.size
        };
        entry(binding_index, binding(&self.buffer, self.offset, size))
    }
}

/// What one chunk of rows binds.
struct ChunkBindings {
    logits: Range,
    targets: Option<Range>,
    /// `None` when the gradient is not asked for or is written in place.
    gradient: Option<Range>,
}

/// Every buffer one call binds.
struct Bindings {
    uniforms: wgpu::Buffer,
    labels: Option<Range>,
    class_weights: Option<Range>,
    sample_weights: Option<Range>,
    per_example: Range,
    row_stats: Option<Range>,
    partials: Range,
    /// The split kernels' per-run sums.
    segments: Option<Range>,
    chunks: Vec<ChunkBindings>,
}

fn entry(binding: u32, resource: wgpu::BindingResource<'_>) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry { binding, resource }
}
