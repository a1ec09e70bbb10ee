//! Instance, adapter and device; pipelines built once; buffers reused across
//! calls; one submission and one readback per call.

use std::borrow::Cow;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex};

use futures_intrusive::sync::Mutex as AsyncMutex;

use super::cross_entropy::{self as ce, Chunk, KernelVariant, SubgroupSizes};
use super::timer::Timer;
use super::{compute_pipeline, map_read, reduce_partials, shader_source, Kernel, Partial};
use crate::error::{Error, Result};
use crate::output::{Backend, LossOutput, LossStats};
use crate::spec::{Batch, CrossEntropy, InputKind, Targets};

/// Knobs for a [`GpuContext`].
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Use at most this many bytes per storage binding instead of the
    /// device's `max_storage_buffer_binding_size` (rounded down to a
    /// multiple of 256). Lets tests exercise chunking on small inputs.
    pub max_binding_bytes: Option<u64>,
    /// Rows each workgroup walks, instead of the planner's choice (still
    /// capped by the loop-trip budget). For tuning, and for tests that need
    /// more than 65,535 workgroups.
    pub rows_per_group: Option<u32>,
    /// Use this kernel for every shape instead of choosing by class count.
    pub kernel: Option<KernelVariant>,
    /// Write the gradient over the uploaded logits instead of into a
    /// separate buffer: no extra B×C device memory.
    pub gradient_in_place: bool,
    /// Read rows as `vec4`s in the subgroup kernel when the class count is
    /// a multiple of 4: `None` chooses by adapter (on for GPUs, off for
    /// CPU-type adapters such as lavapipe, whose vector units prefer scalar
    /// loads across lanes).
    pub vector_loads: Option<bool>,
    /// Time each call's compute pass with timestamp queries, where the
    /// adapter has `Features::TIMESTAMP_QUERY`; read it with
    /// [`GpuContext::last_kernel_time`].
    pub timestamps: bool,
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
}

/// Where each result sits in the staging buffer of one call.
struct Readback {
    staging: wgpu::Buffer,
    size: u64,
    partial_offset: u64,
    gradient_offset: Option<u64>,
    row_stats_offset: Option<u64>,
    timestamp_offset: Option<u64>,
}

fn ensure(
    slot: &mut Option<wgpu::Buffer>,
    device: &wgpu::Device,
    label: &'static str,
    size: u64,
    usage: wgpu::BufferUsages,
) -> wgpu::Buffer {
    let size = size.max(16).next_multiple_of(16);
    match slot {
        Some(buffer) if buffer.size() >= size => buffer.clone(),
        _ => {
            let buffer = device.create_buffer(&wgpu::BufferDescriptor {
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

/// A wgpu device with the fused-loss pipelines built on it.
///
/// Build it once and reuse it: pipelines and bind group layouts are created
/// here, and buffers are kept and reused between calls.
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: String,
    cross_entropy_layout: wgpu::BindGroupLayout,
    wide_pipeline: wgpu::ComputePipeline,
    narrow_pipeline: wgpu::ComputePipeline,
    /// Built where the device has `Features::SUBGROUP`.
    subgroup_pipeline: Option<(wgpu::ComputePipeline, SubgroupSizes)>,
    /// The subgroup kernel with vec4 loads and its layout, where the device
    /// has subgroups and 9 storage bindings per stage.
    subgroup_vec4: Option<(wgpu::ComputePipeline, wgpu::BindGroupLayout)>,
    reduce_layout: wgpu::BindGroupLayout,
    reduce_pipeline: wgpu::ComputePipeline,
    gradient_layout: wgpu::BindGroupLayout,
    gradient_pipeline: wgpu::ComputePipeline,
    gradient_in_place_layout: wgpu::BindGroupLayout,
    gradient_in_place_pipeline: wgpu::ComputePipeline,
    gradient_in_place: bool,
    placeholder: wgpu::Buffer,
    /// Stands in for an unused writable binding; a buffer may not be bound
    /// read-only and writable in one dispatch.
    placeholder_writable: wgpu::Buffer,
    max_binding_bytes: u64,
    rows_per_group: Option<u32>,
    kernel: Option<KernelVariant>,
    vector_loads: bool,
    uniform_stride: u64,
    buffers: AsyncMutex<Buffers>,
    uncaptured: Arc<Mutex<Option<String>>>,
    timer: Option<Timer>,
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
        let wanted = if options.timestamps {
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP
        } else {
            wgpu::Features::SUBGROUP
        };
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
    /// for reports.
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
        let cross_entropy_layout = ce::layout(&device);
        let reduce_layout = reduce_partials::layout(&device);
        let wide_pipeline = pipeline(&device, Kernel::Wide, &cross_entropy_layout);
        let narrow_pipeline = pipeline(&device, Kernel::Narrow, &cross_entropy_layout);
        let subgroup_pipeline = device
            .features()
            .contains(wgpu::Features::SUBGROUP)
            .then(|| {
                let info = device.adapter_info();
                let sizes = SubgroupSizes {
                    min: info.subgroup_min_size.max(1),
                    max: info.subgroup_max_size.max(info.subgroup_min_size).max(1),
                };
                let pipeline = pipeline(&device, Kernel::Subgroup, &cross_entropy_layout);
                (pipeline, sizes)
            });
        let reduce_pipeline = pipeline(&device, Kernel::Reduce, &reduce_layout);
        let subgroup_vec4 = (subgroup_pipeline.is_some()
            && device.limits().max_storage_buffers_per_shader_stage >= 9)
            .then(|| {
                let layout = ce::vec4_layout(&device);
                (pipeline(&device, Kernel::SubgroupVec4, &layout), layout)
            });
        let gradient_layout = ce::gradient_layout(&device, false);
        let gradient_pipeline = pipeline(&device, Kernel::Gradient, &gradient_layout);
        let gradient_in_place_layout = ce::gradient_layout(&device, true);
        let gradient_in_place_pipeline =
            pipeline(&device, Kernel::GradientInPlace, &gradient_in_place_layout);
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
        let vector_loads = subgroup_vec4.is_some()
            && options
                .vector_loads
                .unwrap_or(device.adapter_info().device_type != wgpu::DeviceType::Cpu);
        let timer = (options.timestamps
            && device.features().contains(wgpu::Features::TIMESTAMP_QUERY))
        .then(|| Timer::new(&device, &queue));
        Ok(GpuContext {
            device,
            queue,
            adapter: adapter.into(),
            cross_entropy_layout,
            wide_pipeline,
            narrow_pipeline,
            subgroup_pipeline,
            subgroup_vec4,
            reduce_layout,
            reduce_pipeline,
            gradient_layout,
            gradient_pipeline,
            gradient_in_place_layout,
            gradient_in_place_pipeline,
            gradient_in_place: options.gradient_in_place,
            placeholder,
            placeholder_writable,
            max_binding_bytes: max_binding_bytes.max(256),
            rows_per_group: options.rows_per_group,
            kernel: options.kernel,
            vector_loads,
            uniform_stride,
            buffers: AsyncMutex::new(Buffers::default(), false),
            uncaptured,
            timer,
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

    /// Whether the device has subgroups, and so the subgroup kernel.
    pub fn has_subgroups(&self) -> bool {
        self.subgroup_pipeline.is_some()
    }

    /// The kernel that computes rows of `classes` with `passes` passes over
    /// each row: the forced one where it can, else the default.
    pub fn kernel_for(&self, classes: usize) -> KernelVariant {
        self.variant(classes, 1)
    }

    fn variant(&self, classes: usize, passes: u64) -> KernelVariant {
        let sizes = self.subgroup_pipeline.as_ref().map(|(_, sizes)| *sizes);
        self.kernel
            .unwrap_or_else(|| KernelVariant::for_classes(classes, sizes))
            .effective(classes, passes, sizes)
    }

    /// The device's subgroup sizes (a placeholder where it has none: the
    /// planner only reads them for the subgroup kernel).
    fn subgroup_sizes(&self) -> SubgroupSizes {
        self.subgroup_pipeline
            .as_ref()
            .map_or(SubgroupSizes { min: 1, max: 1 }, |(_, sizes)| *sizes)
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

    /// The most logits bytes bound at once; larger inputs are chunked.
    pub fn max_binding_bytes(&self) -> u64 {
        self.max_binding_bytes
    }

    /// Runs the fused kernel, the reduction and, when asked, the gradient;
    /// one submission, one readback.
    pub async fn compute(&self, spec: &CrossEntropy, batch: &Batch<'_>) -> Result<LossOutput> {
        batch.validate(spec)?;
        if batch.batch == 0 {
            let stats = LossStats::default();
            let mut out = LossOutput::new(Vec::new(), spec.reduction, stats, Backend::Gpu);
            out.gradient = spec.gradient.then(Vec::new);
            out.row_lse = spec.row_lse.then(Vec::new);
            return Ok(out);
        }
        let passes = if spec.input == InputKind::Probabilities {
            2
        } else {
            1
        };
        let variant = self.variant(batch.classes, passes);
        let chunks = ce::plan(
            variant,
            self.subgroup_sizes(),
            batch.batch,
            batch.classes,
            passes,
            self.max_binding_bytes,
            self.rows_per_group,
            1,
        )?;
        let total_groups: u32 = chunks.iter().map(|c| c.groups).sum();
        let (reduce_passes, final_partial) = reduce_partials::plan(total_groups);
        if spec.gradient {
            let bytes = (batch.batch * batch.classes * 4 + batch.batch * 12) as u64;
            let limit = self.device.limits().max_buffer_size;
            if bytes > limit {
                return Err(Error::BatchTooLarge {
                    batch: batch.batch,
                    max_batch: (limit / (batch.classes as u64 * 4 + 12)) as usize,
                });
            }
        }

        let mut buffers = self.buffers.lock().await;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let call = Call {
            spec,
            shape: Shape {
                batch: batch.batch,
                classes: batch.classes,
                dense: matches!(batch.targets, Targets::Dense(_)),
                sample_weights: batch.sample_weights.is_some(),
            },
            variant,
            chunks: &chunks,
            reduce_passes: &reduce_passes,
            final_partial,
        };
        let readback = self.encode(&mut buffers, &call, batch);
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
        let (per_example, partial, gradient, row_lse) =
            map_read(&self.device, &readback.staging, readback.size, |view| {
                let floats = |offset: u64, count: usize| -> Vec<f32> {
                    bytemuck::cast_slice(&view[offset as usize..offset as usize + count * 4])
                        .to_vec()
                };
                let per_example = floats(0, batch.batch);
                let at = readback.partial_offset as usize;
                let partial: Partial =
                    bytemuck::pod_read_unaligned(&view[at..at + std::mem::size_of::<Partial>()]);
                let gradient = readback
                    .gradient_offset
                    .map(|offset| floats(offset, batch.batch * batch.classes));
                let row_lse = readback.row_stats_offset.map(|offset| {
                    floats(offset, batch.batch * 2)
                        .chunks_exact(2)
                        .map(|pair| pair[0])
                        .collect::<Vec<f32>>()
                });
                if let (Some(offset), Some(timer)) = (readback.timestamp_offset, &self.timer) {
                    timer.record(&view[offset as usize..offset as usize + 16]);
                }
                (per_example, partial, gradient, row_lse)
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
        out.gradient = gradient;
        out.row_lse = if spec.row_lse { row_lse } else { None };
        Ok(out)
    }

    /// Blocking [`GpuContext::compute`].
    pub fn compute_blocking(&self, spec: &CrossEntropy, batch: &Batch<'_>) -> Result<LossOutput> {
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
    /// room for its data: logits and dense targets `f32 [B, C]`, labels
    /// `i32 [B]`, sample weights and per-example losses `f32 [B]`, the
    /// gradient `f32 [B, C]`. No `MAP_READ` or `COPY_SRC` is needed on any
    /// input. Class weights come from `spec` (host data, validated there).
    /// Labels are checked on the device and reported by
    /// [`PendingLoss::read`]; sample weights on the device are not checked
    /// for sign or NaN. `spec.gradient` and `spec.row_lse` are ignored: the
    /// gradient is written when `outputs.gradient` is set.
    pub async fn submit_resident(
        &self,
        spec: &CrossEntropy,
        batch: &DeviceBatch<'_>,
        outputs: &DeviceOutputs<'_>,
    ) -> Result<PendingLoss> {
        let mut spec = spec.clone();
        spec.gradient = outputs.gradient.is_some();
        spec.row_lse = false;
        let (b, c) = (batch.batch, batch.classes);
        spec.validate_for(c)?;
        let dense = matches!(batch.targets, DeviceTargets::Dense(_));
        if dense && spec.ignore_index.is_some() {
            return Err(Error::IgnoreIndexWithDenseTargets);
        }
        let cells = (b as u64) * (c as u64) * 4;
        let align = self.device.limits().min_storage_buffer_offset_alignment as u64;
        let in_place = matches!(outputs.gradient, Some(GradientOutput::InPlace));
        batch.logits.check("logits", cells, align)?;
        match batch.targets {
            DeviceTargets::Labels(labels) => labels.check("labels", b as u64 * 4, align)?,
            DeviceTargets::Dense(targets) => targets.check("targets", cells, align)?,
        }
        if let Some(weights) = batch.sample_weights {
            weights.check("sample weights", b as u64 * 4, align)?;
        }
        outputs
            .per_example
            .check("per-example losses", b as u64 * 4, align)?;
        if let Some(GradientOutput::Into(gradient)) = outputs.gradient {
            gradient.check("gradient", cells, align)?;
        }
        if b == 0 {
            return Ok(PendingLoss::empty(&self.device, spec.reduction));
        }
        let passes = if spec.input == InputKind::Probabilities {
            2
        } else {
            1
        };
        let variant = self.variant(c, passes);
        let row_bytes = c as u64 * 4;
        let row_multiple = (align / gcd(row_bytes, align)) as usize;
        let chunks = ce::plan(
            variant,
            self.subgroup_sizes(),
            b,
            c,
            passes,
            self.max_binding_bytes,
            self.rows_per_group,
            row_multiple,
        )?;
        let total_groups: u32 = chunks.iter().map(|c| c.groups).sum();
        let (reduce_passes, final_partial) = reduce_partials::plan(total_groups);
        let call = Call {
            spec: &spec,
            shape: Shape {
                batch: b,
                classes: c,
                dense,
                sample_weights: batch.sample_weights.is_some(),
            },
            variant,
            chunks: &chunks,
            reduce_passes: &reduce_passes,
            final_partial,
        };

        let mut buffers = self.buffers.lock().await;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let uniforms = self.write_uniforms(&mut buffers, &call);
        let class_weights = spec.class_weights.as_ref().map(|w| {
            let bytes: &[u8] = bytemuck::cast_slice(w);
            let buffer = ensure(
                &mut buffers.class_weights,
                &self.device,
                "class_weights",
                bytes.len() as u64,
                STORAGE_IN,
            );
            self.queue.write_buffer(&buffer, 0, bytes);
            Range::whole(buffer, bytes.len() as u64)
        });
        let (row_stats, partials) = self.internal_buffers(&mut buffers, &call);
        let chunk_range = |slice: &DeviceSlice<'_>, chunk: &Chunk| Range {
            buffer: slice.buffer.clone(),
            offset: slice.offset + chunk.first_row as u64 * row_bytes,
            size: chunk.rows as u64 * row_bytes,
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
            chunks: chunks
                .iter()
                .map(|chunk| ChunkBindings {
                    logits: chunk_range(&batch.logits, chunk),
                    targets: match batch.targets {
                        DeviceTargets::Dense(t) => Some(chunk_range(&t, chunk)),
                        DeviceTargets::Labels(_) => None,
                    },
                    gradient: match outputs.gradient {
                        Some(GradientOutput::Into(g)) => Some(chunk_range(&g, chunk)),
                        _ => None,
                    },
                })
                .collect(),
        };
        let partial_size = std::mem::size_of::<Partial>() as u64;
        let result = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("reduced"),
            size: partial_size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.record(&call, &bindings, in_place);
        encoder.copy_buffer_to_buffer(
            &bindings.partials.buffer,
            final_partial as u64 * partial_size,
            &result,
            0,
            partial_size,
        );
        self.queue.submit([encoder.finish()]);
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
    /// pass.
    fn write_uniforms(&self, buffers: &mut Buffers, call: &Call<'_>) -> wgpu::Buffer {
        let Call { spec, shape, .. } = *call;
        let classes = shape.classes;
        let flag_if = |on: bool, flag: u32| if on { flag } else { 0 };
        let flags = flag_if(shape.dense, ce::FLAG_DENSE)
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
            | flag_if(call.row_stats(), ce::FLAG_ROW_STATS)
            | flag_if(call.vec4(self.vector_loads), ce::FLAG_VEC4);
        let class_weight_sum = spec
            .class_weights
            .as_ref()
            .map_or(classes as f64, |w| w.iter().map(|&x| x as f64).sum());
        let stride = self.uniform_stride as usize;
        let slots = call.chunks.len() + call.reduce_passes.len();
        let mut bytes = vec![0u8; slots * stride];
        for (i, chunk) in call.chunks.iter().enumerate() {
            let params = ce::Params {
                batch: shape.batch as u32,
                classes: classes as u32,
                chunk_rows: chunk.rows as u32,
                row_base: chunk.first_row as u32,
                rows_per_group: chunk.rows_per_group,
                group_base: chunk.group_base,
                flags,
                ignore_index: spec.ignore_index.unwrap_or(0),
                label_smoothing: spec.label_smoothing,
                class_weight_sum: class_weight_sum as f32,
                zero: 0,
                z_loss: spec.z_loss,
                softcap: spec.softcap.unwrap_or(1.0),
                final_partial: call.final_partial,
                reduction: ce::reduction_code(spec.reduction),
                _pad: 0,
            };
            let at = i * stride;
            bytes[at..at + std::mem::size_of::<ce::Params>()]
                .copy_from_slice(bytemuck::bytes_of(&params));
        }
        for (i, params) in call.reduce_passes.iter().enumerate() {
            let at = (call.chunks.len() + i) * stride;
            bytes[at..at + std::mem::size_of::<reduce_partials::Params>()]
                .copy_from_slice(bytemuck::bytes_of(params));
        }
        let uniforms = ensure(
            &mut buffers.uniforms,
            &self.device,
            "uniforms",
            bytes.len() as u64,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        );
        self.queue.write_buffer(&uniforms, 0, &bytes);
        uniforms
    }

    /// The internal per-call buffers: row stats (when needed) and partials.
    fn internal_buffers(&self, buffers: &mut Buffers, call: &Call<'_>) -> (Option<Range>, Range) {
        let read_back = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let row_stats_bytes = call.shape.batch as u64 * 8;
        let row_stats = call.row_stats().then(|| {
            Range::whole(
                ensure(
                    &mut buffers.row_stats,
                    &self.device,
                    "row_stats",
                    row_stats_bytes,
                    read_back,
                ),
                row_stats_bytes,
            )
        });
        let partial_bytes = (call.final_partial as u64 + 1) * std::mem::size_of::<Partial>() as u64;
        let partials = Range::whole(
            ensure(
                &mut buffers.partials,
                &self.device,
                "partials",
                partial_bytes,
                read_back,
            ),
            partial_bytes,
        );
        (row_stats, partials)
    }

    /// Uploads host slices and records and submits one call.
    fn encode(&self, buffers: &mut Buffers, call: &Call<'_>, batch: &Batch<'_>) -> Readback {
        let device = &self.device;
        let queue = &self.queue;
        let classes = batch.classes;
        let row_bytes = classes as u64 * 4;
        let batch_bytes = batch.batch as u64 * 4;
        let gradient = call.spec.gradient;
        let in_place = gradient && self.gradient_in_place;
        let read_back = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let uniforms = self.write_uniforms(buffers, call);

        let upload = |slot: &mut Option<wgpu::Buffer>, label, data: &[u8], usage| {
            let buffer = ensure(slot, device, label, data.len() as u64, usage);
            queue.write_buffer(&buffer, 0, data);
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
                device,
                "per_example",
                batch_bytes,
                read_back,
            ),
            batch_bytes,
        );
        let (row_stats, partials) = self.internal_buffers(buffers, call);

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
        let mut chunks = Vec::with_capacity(call.chunks.len());
        for (i, chunk) in call.chunks.iter().enumerate() {
            let range = chunk.first_row * classes..(chunk.first_row + chunk.rows) * classes;
            let chunk_bytes = chunk.rows as u64 * row_bytes;
            if buffers.logits[i]
                .as_ref()
                .is_some_and(|b| !b.usage().contains(logits_usage))
            {
                buffers.logits[i] = None;
            }
            let logits = ensure(
                &mut buffers.logits[i],
                device,
                "logits",
                chunk_bytes,
                logits_usage,
            );
            queue.write_buffer(
                &logits,
                0,
                bytemuck::cast_slice(&batch.logits[range.clone()]),
            );
            let targets = match batch.targets {
                Targets::Dense(t) => {
                    let buffer = ensure(
                        &mut buffers.targets[i],
                        device,
                        "targets",
                        chunk_bytes,
                        STORAGE_IN,
                    );
                    queue.write_buffer(&buffer, 0, bytemuck::cast_slice(&t[range]));
                    Some(Range::whole(buffer, chunk_bytes))
                }
                Targets::Labels(_) => None,
            };
            let gradient = (gradient && !in_place).then(|| {
                Range::whole(
                    ensure(
                        &mut buffers.gradient[i],
                        device,
                        "gradient",
                        chunk_bytes,
                        read_back,
                    ),
                    chunk_bytes,
                )
            });
            chunks.push(ChunkBindings {
                logits: Range::whole(logits, chunk_bytes),
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
            chunks,
        };

        // Staging: per-example losses, the final partial, then the gradient
        // and the row stats when asked for.
        let partial_size = std::mem::size_of::<Partial>() as u64;
        let partial_offset = batch_bytes.next_multiple_of(16);
        let mut staging_size = partial_offset + partial_size;
        let gradient_offset = gradient.then(|| {
            let at = staging_size;
            staging_size += batch_bytes * classes as u64;
            at
        });
        let row_stats_offset = bindings.row_stats.as_ref().map(|_| {
            let at = staging_size.next_multiple_of(16);
            staging_size = at + batch_bytes * 2;
            at
        });
        let timestamp_offset = self.timer.as_ref().map(|_| {
            let at = staging_size.next_multiple_of(16);
            staging_size = at + 16;
            at
        });
        let staging = ensure(
            &mut buffers.staging,
            device,
            "staging",
            staging_size,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );

        let mut encoder = self.record(call, &bindings, in_place);
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
                let at = offset + (chunk.first_row * classes) as u64 * 4;
                encoder.copy_buffer_to_buffer(
                    &source.buffer,
                    source.offset,
                    &staging,
                    at,
                    source.size,
                );
            }
        }
        if let (Some(offset), Some(stats)) = (row_stats_offset, &bindings.row_stats) {
            encoder.copy_buffer_to_buffer(&stats.buffer, 0, &staging, offset, stats.size);
        }
        if let (Some(offset), Some(timer)) = (timestamp_offset, &self.timer) {
            encoder.resolve_query_set(&timer.queries, 0..2, &timer.resolved, 0);
            encoder.copy_buffer_to_buffer(&timer.resolved, 0, &staging, offset, 16);
        }
        queue.submit([encoder.finish()]);
        Readback {
            staging,
            size: staging_size,
            partial_offset,
            gradient_offset,
            row_stats_offset,
            timestamp_offset,
        }
    }

    /// Records the forward kernel, the reduction and the gradient of one call.
    fn record(&self, call: &Call<'_>, b: &Bindings, in_place: bool) -> wgpu::CommandEncoder {
        let device = &self.device;
        let stride = self.uniform_stride;
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
        let mut forward_groups = Vec::with_capacity(b.chunks.len());
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
            let vec4 = call.vec4(self.vector_loads);
            if vec4 {
                entries.push(chunk.logits.entry(9));
            }
            forward_groups.push(device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("cross_entropy"),
                layout: match &self.subgroup_vec4 {
                    Some((_, layout)) if vec4 => layout,
                    _ => &self.cross_entropy_layout,
                },
                entries: &entries,
            }));
            if call.spec.gradient {
                let mut entries = vec![uniform.clone()];
                entries.extend(shared.iter().cloned());
                entries.extend([row_stats.entry(6), b.partials.entry(7)]);
                if let Some(gradient) = &chunk.gradient {
                    entries.push(gradient.entry(8));
                }
                gradient_groups.push(device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("cross_entropy_grad"),
                    layout: if in_place {
                        &self.gradient_in_place_layout
                    } else {
                        &self.gradient_layout
                    },
                    entries: &entries,
                }));
            }
        }
        let reduce_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("reduce_partials"),
            layout: &self.reduce_layout,
            entries: &[
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
        });

        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("fused-loss"),
        });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("fused-loss"),
                timestamp_writes: self.timer.as_ref().map(Timer::writes),
            });
            pass.set_pipeline(
                match (call.variant, &self.subgroup_pipeline, &self.subgroup_vec4) {
                    (KernelVariant::Narrow, _, _) => &self.narrow_pipeline,
                    (KernelVariant::Subgroup, _, Some((vec4, _)))
                        if call.vec4(self.vector_loads) =>
                    {
                        vec4
                    }
                    (KernelVariant::Subgroup, Some((subgroup, _)), _) => subgroup,
                    _ => &self.wide_pipeline,
                },
            );
            for (i, (chunk, group)) in call.chunks.iter().zip(&forward_groups).enumerate() {
                pass.set_bind_group(0, group, &[(i as u64 * stride) as u32]);
                let (x, y) = ce::dispatch_size(chunk.groups);
                pass.dispatch_workgroups(x, y, 1);
            }
            pass.set_pipeline(&self.reduce_pipeline);
            for (i, params) in call.reduce_passes.iter().enumerate() {
                let slot = (call.chunks.len() + i) as u64 * stride;
                pass.set_bind_group(0, &reduce_group, &[slot as u32]);
                let groups = params.count.div_ceil(reduce_partials::WORKGROUP_SIZE);
                let (x, y) = ce::dispatch_size(groups);
                pass.dispatch_workgroups(x, y, 1);
            }
            if call.spec.gradient {
                pass.set_pipeline(if in_place {
                    &self.gradient_in_place_pipeline
                } else {
                    &self.gradient_pipeline
                });
                for (i, (chunk, group)) in call.chunks.iter().zip(&gradient_groups).enumerate() {
                    pass.set_bind_group(0, group, &[(i as u64 * stride) as u32]);
                    let elements = (chunk.rows * call.shape.classes) as u32;
                    let (x, y) = ce::dispatch_size(elements.div_ceil(ce::GRAD_WORKGROUP_SIZE));
                    pass.dispatch_workgroups(x, y, 1);
                }
            }
        }
        encoder
    }
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

    fn range(&self, size: u64) -> Range {
        Range {
            buffer: self.buffer.clone(),
            offset: self.offset,
            size: size.max(4),
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
    /// `f32 [B, C]` logits (or probabilities), row-major.
    pub logits: DeviceSlice<'a>,
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
    /// Into this `f32 [B, C]` buffer.
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
}

/// The reduced values of a [`GpuContext::submit_resident`] call, read back
/// only on request.
#[derive(Debug)]
pub struct PendingLoss {
    device: wgpu::Device,
    result: Option<wgpu::Buffer>,
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
            batch: 0,
            classes: 0,
            reduction,
            check_finite: false,
        }
    }

    /// Waits for the call and reads its 48-byte reduced partial: `loss`,
    /// `average_loss` and the stats. Reports a bad label found on the
    /// device, and a non-finite row under `check_finite`.
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
        let partial: Partial = map_read(&self.device, result, size as u64, |view| {
            bytemuck::pod_read_unaligned(&view[..size])
        })
        .await?;
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

/// The shape of one call's input, whatever holds it.
#[derive(Clone, Copy, Debug)]
struct Shape {
    batch: usize,
    classes: usize,
    dense: bool,
    sample_weights: bool,
}

/// One call's options, shape and plan.
#[derive(Clone, Copy)]
struct Call<'a> {
    spec: &'a CrossEntropy,
    shape: Shape,
    variant: KernelVariant,
    chunks: &'a [Chunk],
    reduce_passes: &'a [reduce_partials::Params],
    final_partial: u32,
}

impl Call<'_> {
    /// Whether the forward pass writes each row's (lse, Σ a_c).
    fn row_stats(&self) -> bool {
        self.spec.gradient || self.spec.row_lse
    }

    /// Whether the subgroup kernel reads the rows as vec4s.
    fn vec4(&self, vector_loads: bool) -> bool {
        vector_loads
            && self.variant == KernelVariant::Subgroup
            && self.shape.classes.is_multiple_of(4)
    }
}

/// A buffer range bound as one storage binding.
#[derive(Clone, Debug)]
struct Range {
    buffer: wgpu::Buffer,
    offset: u64,
    size: u64,
}

impl Range {
    fn whole(buffer: wgpu::Buffer, size: u64) -> Range {
        Range {
            buffer,
            offset: 0,
            size,
        }
    }

    fn entry(&self, binding_index: u32) -> wgpu::BindGroupEntry<'_> {
        entry(binding_index, binding(&self.buffer, self.offset, self.size))
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
    chunks: Vec<ChunkBindings>,
}

fn entry(binding: u32, resource: wgpu::BindingResource<'_>) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry { binding, resource }
}

fn pipeline(
    device: &wgpu::Device,
    kernel: Kernel,
    layout: &wgpu::BindGroupLayout,
) -> wgpu::ComputePipeline {
    let label = match kernel {
        Kernel::Wide => "cross_entropy_wide",
        Kernel::Narrow => "cross_entropy_narrow",
        Kernel::Subgroup => "cross_entropy_subgroup",
        Kernel::SubgroupVec4 => "cross_entropy_subgroup_vec4",
        Kernel::Reduce => "reduce_partials",
        Kernel::Gradient => "cross_entropy_grad",
        Kernel::GradientInPlace => "cross_entropy_grad_in_place",
        Kernel::RooflineLoad => "roofline_load",
        Kernel::RooflineCopy => "roofline_copy",
    };
    compute_pipeline(device, label, Cow::Owned(shader_source(kernel)), layout)
}
