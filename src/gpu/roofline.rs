//! Host side of `shaders/roofline_load.wgsl` and `shaders/roofline_copy.wgsl`:
//! the memory limits the loss kernels are measured against on the same
//! adapter (load-only and copy bandwidth), the same loads with one `exp`
//! per value (the least work of any log-sum-exp kernel), and a bare
//! submit-and-readback round trip for host overhead.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};

use super::cross_entropy as ce;
use super::timer::Timer;
use super::{compute_pipeline, compute_pipeline_with, map_read, GpuContext};
use crate::error::{Error, Result};

/// Threads per workgroup; keep in sync with `WG` in both shaders.
pub(crate) const WORKGROUP_SIZE: u32 = 256;
/// At most this many workgroups; the grid strides over the rest.
const MAX_GROUPS: u32 = 8192;

pub(crate) const LOAD_SHADER: &str = include_str!("../../shaders/roofline_load.wgsl");
pub(crate) const COPY_SHADER: &str = include_str!("../../shaders/roofline_copy.wgsl");

/// Keep in sync with `struct Params` in both shaders.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
struct Params {
    count: u32,
    threads: u32,
    /// vec4s per invocation (load-only, [`LoadPattern::Runs`]); 0 strides.
    run: u32,
    _pad: u32,
}

/// How the load-only kernel's invocations walk the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadPattern {
    /// A grid stride: neighbouring invocations read neighbouring `vec4`s,
    /// as GPUs like it.
    Strided,
    /// A contiguous run per invocation, four workgroups per hardware
    /// thread: how the narrow kernel's rows and lane runs are read on
    /// CPU-type adapters (lavapipe gathers each lane's loads on its own).
    Runs,
}

/// What one bandwidth run does.
#[derive(Clone, Copy)]
enum Work {
    Load(LoadPattern),
    ExpFloor(LoadPattern),
    Copy,
}

/// One timed run: device time of the pass (timestamp queries, where the
/// context has them) and host wall time from submit to readback.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Device time of the compute pass; `None` without timestamps.
    pub kernel: Option<Duration>,
    /// Submit, wait and readback, seen from the host.
    pub wall: Duration,
}

#[derive(Default)]
struct Buffers {
    source: Option<wgpu::Buffer>,
    target: Option<wgpu::Buffer>,
    flag: Option<wgpu::Buffer>,
    staging: Option<wgpu::Buffer>,
    upload: Option<wgpu::Buffer>,
}

/// Memory-limit kernels on a [`GpuContext`]'s device, built once.
pub struct Roofline<'a> {
    context: &'a GpuContext,
    layout: wgpu::BindGroupLayout,
    load: wgpu::ComputePipeline,
    exp_floor: wgpu::ComputePipeline,
    copy: wgpu::ComputePipeline,
    uniforms: wgpu::Buffer,
    timer: Option<Timer>,
    buffers: Mutex<Buffers>,
}

fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
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

fn buffer(
    slot: &mut Option<wgpu::Buffer>,
    device: &wgpu::Device,
    label: &'static str,
    size: u64,
    usage: wgpu::BufferUsages,
) -> wgpu::Buffer {
    match slot {
        Some(b) if b.size() >= size && b.usage() == usage => b.clone(),
        _ => {
            let b = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: size.max(16),
                usage,
                mapped_at_creation: false,
            });
            *slot = Some(b.clone());
            b
        }
    }
}

impl<'a> Roofline<'a> {
    /// Builds the three pipelines on `context`'s device.
    pub fn new(context: &'a GpuContext) -> Result<Self> {
        let device = context.device();
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("roofline"),
            entries: &[
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
                storage_entry(1, true),
                storage_entry(2, false),
            ],
        });
        let load = compute_pipeline(device, "roofline_load", LOAD_SHADER.into(), &layout);
        let exp_floor = compute_pipeline_with(
            device,
            "roofline_exp_floor",
            LOAD_SHADER.into(),
            &layout,
            &[("EXP", 1.0)],
        );
        let copy = compute_pipeline(device, "roofline_copy", COPY_SHADER.into(), &layout);
        let uniforms = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("roofline_params"),
            size: std::mem::size_of::<Params>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(e.to_string()));
        }
        Ok(Roofline {
            context,
            layout,
            load,
            exp_floor,
            copy,
            uniforms,
            timer: context
                .timestamps()
                .then(|| Timer::new(device, context.queue())),
            buffers: Mutex::new(Buffers::default()),
        })
    }

    /// The largest byte count one run can bind (the device's binding limit).
    pub fn max_bytes(&self) -> u64 {
        self.context.max_binding_bytes() / 16 * 16
    }

    /// Reads `bytes` (rounded up to 16) once; each invocation checks the sum
    /// of what it read (the source holds ones). The pattern is the
    /// adapter's: [`LoadPattern::Runs`] on a CPU-type adapter (on lavapipe
    /// 1.8–2.3× the strided pattern's bandwidth, BENCHMARKS.md), else
    /// [`LoadPattern::Strided`].
    pub fn load(&self, bytes: u64) -> Result<Timing> {
        self.load_with(bytes, self.default_pattern())
    }

    /// [`Roofline::load`] in a given pattern.
    pub fn load_with(&self, bytes: u64, pattern: LoadPattern) -> Result<Timing> {
        self.run(bytes, Work::Load(pattern))
    }

    /// [`Roofline::load`] with one `exp` per value: the least any
    /// log-sum-exp kernel does per class, so the most its bandwidth can be
    /// where the `exp` is not free. On lavapipe it reads at about 0.8 of the
    /// load-only bandwidth (BENCHMARKS.md: 0.75–0.87 at C ≥ 1,000 on an
    /// Intel 2-core machine). On a GPU, where an `exp` is cheap next to a
    /// load, the two should be close; that is not measured yet.
    pub fn exp_floor(&self, bytes: u64) -> Result<Timing> {
        self.exp_floor_with(bytes, self.default_pattern())
    }

    /// [`Roofline::exp_floor`] in a given pattern.
    pub fn exp_floor_with(&self, bytes: u64, pattern: LoadPattern) -> Result<Timing> {
        self.run(bytes, Work::ExpFloor(pattern))
    }

    /// Copies `bytes` (rounded up to 16) from one buffer to another; the
    /// copy moves `2·bytes` through memory.
    pub fn copy(&self, bytes: u64) -> Result<Timing> {
        self.run(bytes, Work::Copy)
    }

    /// The pattern [`Roofline::load`] and [`Roofline::exp_floor`] read in
    /// on this adapter.
    pub fn default_pattern(&self) -> LoadPattern {
        if self.context.is_cpu_adapter() {
            LoadPattern::Runs
        } else {
            LoadPattern::Strided
        }
    }

    fn run(&self, bytes: u64, work: Work) -> Result<Timing> {
        let copy = matches!(work, Work::Copy);
        let bytes = bytes.max(16).next_multiple_of(16);
        if bytes > self.max_bytes() {
            return Err(Error::InvalidArgument(format!(
                "roofline run of {bytes} bytes exceeds the {}-byte binding limit",
                self.max_bytes()
            )));
        }
        let device = self.context.device();
        let queue = self.context.queue();
        let count = (bytes / 16) as u32;
        let (groups, run) = match work {
            Work::Load(LoadPattern::Runs) | Work::ExpFloor(LoadPattern::Runs) => {
                // Runs within the loss kernels' loop budget (lavapipe stops
                // a loop at 65,535 trips).
                let threads = count
                    .div_ceil(ce::TRIP_BUDGET as u32)
                    .max(ce::cpu_target_groups() as u32 * WORKGROUP_SIZE);
                let groups = threads.div_ceil(WORKGROUP_SIZE).clamp(1, MAX_GROUPS);
                (groups, count.div_ceil(groups * WORKGROUP_SIZE))
            }
            _ => (count.div_ceil(WORKGROUP_SIZE).clamp(1, MAX_GROUPS), 0),
        };
        let params = Params {
            count,
            threads: groups * WORKGROUP_SIZE,
            run,
            _pad: 0,
        };
        let mut buffers = self
            .buffers
            .lock()
            .map_err(|_| Error::Gpu("poisoned".into()))?;
        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let fresh_source = buffers.source.as_ref().is_none_or(|b| b.size() < bytes);
        let source = buffer(
            &mut buffers.source,
            device,
            "roofline_source",
            bytes,
            storage,
        );
        if fresh_source {
            queue.write_buffer(
                &source,
                0,
                bytemuck::cast_slice(&vec![1.0f32; (source.size() / 4) as usize]),
            );
        }
        let flag_bytes = 16u64;
        let read_back = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let output = if copy {
            buffer(
                &mut buffers.target,
                device,
                "roofline_target",
                bytes,
                wgpu::BufferUsages::STORAGE,
            )
        } else {
            let flag = buffer(
                &mut buffers.flag,
                device,
                "roofline_wrong",
                flag_bytes,
                read_back,
            );
            queue.write_buffer(&flag, 0, &[0u8; 16]);
            flag
        };
        let staging_bytes = 32u64;
        let staging = buffer(
            &mut buffers.staging,
            device,
            "roofline_staging",
            staging_bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        queue.write_buffer(&self.uniforms, 0, bytemuck::bytes_of(&params));
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("roofline"),
            layout: &self.layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: self.uniforms.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &source,
                        offset: 0,
                        size: wgpu::BufferSize::new(bytes),
                    }),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &output,
                        offset: 0,
                        size: wgpu::BufferSize::new(if copy { bytes } else { flag_bytes }),
                    }),
                },
            ],
        });
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("roofline"),
                timestamp_writes: self.timer.as_ref().map(Timer::writes),
            });
            pass.set_pipeline(match work {
                Work::Load(_) => &self.load,
                Work::ExpFloor(_) => &self.exp_floor,
                Work::Copy => &self.copy,
            });
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups, 1, 1);
        }
        let flag_at = 16u64;
        if !copy {
            encoder.copy_buffer_to_buffer(&output, 0, &staging, flag_at, flag_bytes);
        }
        if let Some(timer) = &self.timer {
            encoder.resolve_query_set(&timer.queries, 0..2, &timer.resolved, 0);
            encoder.copy_buffer_to_buffer(&timer.resolved, 0, &staging, 0, 16);
        }
        let start = Instant::now();
        queue.submit([encoder.finish()]);
        let wrong = pollster::block_on(map_read(device, &staging, staging_bytes, |view| {
            if let Some(timer) = &self.timer {
                timer.record(&view[..16]);
            }
            !copy && view[flag_at as usize..].iter().any(|&b| b != 0)
        }))?;
        let wall = start.elapsed();
        if wrong {
            let kernel = match work {
                Work::ExpFloor(_) => "exp-floor",
                _ => "load-only",
            };
            return Err(Error::Gpu(format!(
                "the {kernel} kernel misread {bytes} bytes of ones"
            )));
        }
        Ok(Timing {
            kernel: self.timer.as_ref().and_then(Timer::last),
            wall,
        })
    }

    /// A bare round trip: upload `upload` bytes with `write_buffer`, copy
    /// `readback` bytes to a staging buffer, submit, map and read. What
    /// any GPU call of that size costs the host at least.
    pub fn round_trip(&self, upload: &[u8], readback: u64) -> Result<Duration> {
        let device = self.context.device();
        let queue = self.context.queue();
        let mut buffers = self
            .buffers
            .lock()
            .map_err(|_| Error::Gpu("poisoned".into()))?;
        let upload_bytes = (upload.len() as u64).max(readback).next_multiple_of(16);
        let usage = wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
        let input = buffer(
            &mut buffers.upload,
            device,
            "round_trip",
            upload_bytes,
            usage,
        );
        let readback = readback.max(16).next_multiple_of(16);
        let staging = buffer(
            &mut buffers.staging,
            device,
            "roofline_staging",
            readback.max(32),
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        let start = Instant::now();
        let padded = upload.len().next_multiple_of(4);
        if padded == upload.len() {
            queue.write_buffer(&input, 0, upload);
        } else {
            let mut data = upload.to_vec();
            data.resize(padded, 0);
            queue.write_buffer(&input, 0, &data);
        }
        let mut encoder = device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(&input, 0, &staging, 0, readback);
        queue.submit([encoder.finish()]);
        pollster::block_on(map_read(device, &staging, readback, |view| view[0]))?;
        Ok(start.elapsed())
    }
}
