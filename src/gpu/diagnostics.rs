//! Host side of `shaders/diagnostics_scores.wgsl` and
//! `shaders/diagnostics_histogram.wgsl`: label-quality scores and histogram
//! counts in one extra pass, with their own pipelines built once on a
//! [`GpuContext`]'s device.

use std::borrow::Cow;
use std::num::NonZeroU64;

use bytemuck::{Pod, Zeroable};

use super::cross_entropy::{dispatch_size, storage_entry, MAX_GROUPS_PER_DIMENSION};
use super::{compute_pipeline, map_read, GpuContext};
use crate::diagnostics::{score_labels, Histogram, RowScore};
use crate::error::{Error, Result};
use crate::spec::{check_labels, Batch, CrossEntropy, InputKind, Targets};

pub(crate) const SCORES_SHADER: &str = include_str!("../../shaders/diagnostics_scores.wgsl");
pub(crate) const HISTOGRAM_SHADER: &str = include_str!("../../shaders/diagnostics_histogram.wgsl");

/// Threads per workgroup of the scores kernel; keep in sync with `WG` in
/// `diagnostics_scores.wgsl`.
pub(crate) const SCORES_WORKGROUP_SIZE: u32 = 64;
/// Threads per workgroup of the histogram kernel; keep in sync with `WG` in
/// `diagnostics_histogram.wgsl`.
pub(crate) const HISTOGRAM_WORKGROUP_SIZE: u32 = 256;

/// One invocation walks a whole row; lavapipe silently stops a loop after
/// 65,535 trips (DESIGN §5), so rows stay well below that.
const MAX_SCORE_CLASSES: usize = 29_000;

const FLAG_PROBABILITIES: u32 = 1;
const FLAG_SCORES_IGNORE: u32 = 2;
const FLAG_HISTOGRAM_IGNORE: u32 = 1;

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
    pub _pad: [u32; 3],
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

/// The diagnostics kernels on a [`GpuContext`]'s device: per-example scores
/// ([`RowScore`]) and histogram counts ([`Histogram`]), each checked against
/// its CPU twin ([`crate::diagnostics::scores`],
/// [`Histogram::add_losses`]) in the tests.
///
/// Build it once per context and reuse it; the pipelines are built here.
/// Results are deterministic: the scores are per row, the histogram counts
/// exact integers.
///
/// - Scores: within about 1e-6 of the f64 twin (f32 softmax); `predicted`
///   is identical (it compares the inputs themselves). Rows of more than
///   [`GpuDiagnostics::max_classes`] classes are [`Error::RowTooLarge`]
///   ([`Scorer`](crate::diagnostics::Scorer) scores them on the CPU).
/// - Histogram: the same counts as the CPU twin, bit for bit: each f64 edge
///   is passed as the nearest f32 on the side that keeps every comparison
///   exact.
pub struct GpuDiagnostics {
    device: wgpu::Device,
    queue: wgpu::Queue,
    scores_layout: wgpu::BindGroupLayout,
    scores_pipeline: wgpu::ComputePipeline,
    histogram_layout: wgpu::BindGroupLayout,
    histogram_pipeline: wgpu::ComputePipeline,
    placeholder: wgpu::Buffer,
    max_binding_bytes: u64,
}

impl std::fmt::Debug for GpuDiagnostics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuDiagnostics")
            .field("max_binding_bytes", &self.max_binding_bytes)
            .finish_non_exhaustive()
    }
}

fn uniform_entry(binding: u32, size: usize) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: wgpu::BufferSize::new(size as u64),
        },
        count: None,
    }
}

fn pipeline(
    device: &wgpu::Device,
    label: &str,
    source: &'static str,
    layout: &wgpu::BindGroupLayout,
) -> wgpu::ComputePipeline {
    compute_pipeline(device, label, Cow::Borrowed(source), layout)
}

fn binding(buffer: &wgpu::Buffer, size: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset: 0,
        size: NonZeroU64::new(size),
    })
}

fn padded(size: u64) -> u64 {
    size.max(16).next_multiple_of(16)
}

impl GpuDiagnostics {
    /// Builds the pipelines on `context`'s device and queue.
    pub fn new(context: &GpuContext) -> Result<Self> {
        let device = context.device().clone();
        let queue = context.queue().clone();
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let scores_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("diagnostics_scores"),
            entries: &[
                uniform_entry(0, std::mem::size_of::<ScoresParams>()),
                storage_entry(1, true),  // logits
                storage_entry(2, true),  // labels
                storage_entry(3, false), // scores
            ],
        });
        let histogram_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("diagnostics_histogram"),
            entries: &[
                uniform_entry(0, std::mem::size_of::<HistogramParams>()),
                storage_entry(1, true),  // losses
                storage_entry(2, true),  // labels
                storage_entry(3, true),  // lower edges
                storage_entry(4, false), // counters
            ],
        });
        let scores_pipeline =
            pipeline(&device, "diagnostics_scores", SCORES_SHADER, &scores_layout);
        let histogram_pipeline = pipeline(
            &device,
            "diagnostics_histogram",
            HISTOGRAM_SHADER,
            &histogram_layout,
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
        Ok(GpuDiagnostics {
            device,
            queue,
            scores_layout,
            scores_pipeline,
            histogram_layout,
            histogram_pipeline,
            placeholder,
            max_binding_bytes: context.max_binding_bytes(),
        })
    }

    /// The widest row [`GpuDiagnostics::scores`] takes.
    pub fn max_classes(&self) -> usize {
        MAX_SCORE_CLASSES.min((self.max_binding_bytes / 4) as usize)
    }

    /// Rows per dispatch: within one binding and one 2-D grid.
    fn rows_per_dispatch(&self, row_bytes: u64, workgroup: u32) -> usize {
        let by_binding = self.max_binding_bytes / row_bytes.max(1);
        let by_grid =
            MAX_GROUPS_PER_DIMENSION as u64 * MAX_GROUPS_PER_DIMENSION as u64 * workgroup as u64;
        by_binding.min(by_grid).clamp(1, 1 << 30) as usize
    }

    fn storage(&self, label: &'static str, bytes: &[u8]) -> wgpu::Buffer {
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: padded(bytes.len() as u64),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&buffer, 0, bytes);
        buffer
    }

    fn uniform(&self, bytes: &[u8]) -> wgpu::Buffer {
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("diagnostics params"),
            size: padded(bytes.len() as u64),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&buffer, 0, bytes);
        buffer
    }

    /// Records one dispatch that writes `output` (of `size` bytes), copies it
    /// to a staging buffer, submits, and reads it back.
    async fn run(
        &self,
        pipeline: &wgpu::ComputePipeline,
        group: &wgpu::BindGroup,
        groups: u32,
        output: &wgpu::Buffer,
        size: u64,
        clear: bool,
    ) -> Result<Vec<u8>> {
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("diagnostics staging"),
            size: padded(size),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("diagnostics"),
            });
        if clear {
            encoder.clear_buffer(output, 0, None);
        }
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("diagnostics"),
                timestamp_writes: None,
            });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, group, &[]);
            let (x, y) = dispatch_size(groups);
            pass.dispatch_workgroups(x, y, 1);
        }
        encoder.copy_buffer_to_buffer(output, 0, &staging, 0, padded(size));
        self.queue.submit([encoder.finish()]);

        map_read(&self.device, &staging, staging.size(), |view| {
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
    /// (the argmax of dense targets), the same conventions.
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
        if spec.input == InputKind::Probabilities {
            flags |= FLAG_PROBABILITIES;
        }
        if ignore.is_some() {
            flags |= FLAG_SCORES_IGNORE;
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
                _pad: [0; 3],
            };
            let logits = &batch.logits[first * classes..(first + rows) * classes];
            let row_labels = &labels[first..first + rows];
            let bytes = self
                .scoped(async {
                    let uniform = self.uniform(bytemuck::bytes_of(&params));
                    let logits = self.storage("diagnostics logits", bytemuck::cast_slice(logits));
                    let labels_buffer =
                        self.storage("diagnostics labels", bytemuck::cast_slice(row_labels));
                    let size = (rows * std::mem::size_of::<GpuScore>()) as u64;
                    let output = self.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("diagnostics scores"),
                        size: padded(size),
                        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                        mapped_at_creation: false,
                    });
                    let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("diagnostics_scores"),
                        layout: &self.scores_layout,
                        entries: &[
                            entry(
                                0,
                                binding(&uniform, std::mem::size_of::<ScoresParams>() as u64),
                            ),
                            entry(1, binding(&logits, logits.size())),
                            entry(2, binding(&labels_buffer, padded(rows as u64 * 4))),
                            entry(3, binding(&output, padded(size))),
                        ],
                    });
                    let groups = (rows as u32).div_ceil(SCORES_WORKGROUP_SIZE);
                    self.run(&self.scores_pipeline, &group, groups, &output, size, false)
                        .await
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
            if labels.len() != losses.len() {
                return Err(Error::ShapeMismatch {
                    what: "labels",
                    expected: losses.len(),
                    actual: labels.len(),
                });
            }
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
            let bytes = self
                .scoped(async {
                    let uniform = self.uniform(bytemuck::bytes_of(&params));
                    let losses_buffer =
                        self.storage("diagnostics losses", bytemuck::cast_slice(chunk));
                    let labels_buffer = chunk_labels
                        .map(|l| self.storage("diagnostics labels", bytemuck::cast_slice(l)));
                    let (labels_ref, labels_size) = match &labels_buffer {
                        Some(b) => (b, padded(count as u64 * 4)),
                        None => (&self.placeholder, 16),
                    };
                    let lower_buffer =
                        self.storage("diagnostics edges", bytemuck::cast_slice(&lower));
                    let size = ((bins + 4) * 4) as u64;
                    let output = self.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("diagnostics counters"),
                        size: padded(size),
                        usage: wgpu::BufferUsages::STORAGE
                            | wgpu::BufferUsages::COPY_SRC
                            | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    });
                    let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("diagnostics_histogram"),
                        layout: &self.histogram_layout,
                        entries: &[
                            entry(
                                0,
                                binding(&uniform, std::mem::size_of::<HistogramParams>() as u64),
                            ),
                            entry(1, binding(&losses_buffer, padded(count as u64 * 4))),
                            entry(2, binding(labels_ref, labels_size)),
                            entry(3, binding(&lower_buffer, padded(bins as u64 * 4))),
                            entry(4, binding(&output, padded(size))),
                        ],
                    });
                    let groups = (count as u32).div_ceil(HISTOGRAM_WORKGROUP_SIZE);
                    self.run(
                        &self.histogram_pipeline,
                        &group,
                        groups,
                        &output,
                        size,
                        true,
                    )
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
}

fn entry(binding: u32, resource: wgpu::BindingResource<'_>) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry { binding, resource }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both shaders parse and validate with naga; no GPU needed.
    #[test]
    fn shaders_validate_with_naga() {
        for (name, source) in [("scores", SCORES_SHADER), ("histogram", HISTOGRAM_SHADER)] {
            let module = naga::front::wgsl::parse_str(source)
                .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
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
        assert!(SCORES_SHADER.contains(&format!("const WG: u32 = {SCORES_WORKGROUP_SIZE}u;")));
        assert!(HISTOGRAM_SHADER.contains(&format!("const WG: u32 = {HISTOGRAM_WORKGROUP_SIZE}u;")));
    }
}
