//! The wgpu path: context, the fused kernel and the tree reduction.

mod context;
pub(crate) mod cross_entropy;
mod diagnostics;
mod pipelines;
pub(crate) mod reduce_partials;
mod roofline;
mod timer;

pub use context::{
    DeviceBatch, DeviceOutputs, DeviceSlice, DeviceTargets, GpuContext, GpuOptions, GradientOutput,
    PendingLoss, ReducedLoss,
};
pub use cross_entropy::KernelVariant;
pub use diagnostics::GpuDiagnostics;
pub use roofline::{LoadPattern, Roofline, Timing};

/// `shaders/partial.wgsl`: the partial and its compensated arithmetic,
/// prepended to every kernel.
const PARTIAL_SHADER: &str = include_str!("../../shaders/partial.wgsl");
const PARTIAL_TREE_SHADER: &str = include_str!("../../shaders/partial_tree.wgsl");

/// How a kernel's B×C logits or gradient sit in a storage buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Storage {
    /// `array<f32>`.
    F32,
    /// `array<f16>`, with `enable f16;` (devices with `SHADER_F16`).
    F16,
    /// f16 packed two per `u32`.
    F16Words,
    /// bf16 packed two per `u32`.
    Bf16Words,
}

impl Storage {
    #[cfg(test)]
    pub(crate) const ALL: [Storage; 4] = [
        Storage::F32,
        Storage::F16,
        Storage::F16Words,
        Storage::Bf16Words,
    ];

    /// The storage of `dtype` on a device with (`native_f16`) or without
    /// `SHADER_F16`.
    pub(crate) fn of(dtype: crate::LogitDtype, native_f16: bool) -> Storage {
        match dtype {
            crate::LogitDtype::F32 => Storage::F32,
            crate::LogitDtype::F16 if native_f16 => Storage::F16,
            crate::LogitDtype::F16 => Storage::F16Words,
            crate::LogitDtype::Bf16 => Storage::Bf16Words,
        }
    }

    /// Bytes per element.
    pub(crate) fn size(self) -> usize {
        self.dtype().size()
    }

    /// The element type it holds.
    pub(crate) fn dtype(self) -> crate::LogitDtype {
        match self {
            Storage::F32 => crate::LogitDtype::F32,
            Storage::F16 | Storage::F16Words => crate::LogitDtype::F16,
            Storage::Bf16Words => crate::LogitDtype::Bf16,
        }
    }

    /// Elements per storage word written by one gradient invocation.
    pub(crate) fn per_word(self) -> usize {
        match self {
            Storage::F32 | Storage::F16 => 1,
            Storage::F16Words | Storage::Bf16Words => 2,
        }
    }

    fn logits_library(self) -> &'static str {
        match self {
            Storage::F32 => include_str!("../../shaders/logits_f32.wgsl"),
            Storage::F16 => include_str!("../../shaders/logits_f16.wgsl"),
            Storage::F16Words => include_str!("../../shaders/logits_f16_words.wgsl"),
            Storage::Bf16Words => include_str!("../../shaders/logits_bf16_words.wgsl"),
        }
    }

    fn gradient_library(self) -> &'static str {
        match self {
            Storage::F32 => include_str!("../../shaders/gradient_f32.wgsl"),
            Storage::F16 => include_str!("../../shaders/gradient_f16.wgsl"),
            Storage::F16Words => include_str!("../../shaders/gradient_f16_words.wgsl"),
            Storage::Bf16Words => include_str!("../../shaders/gradient_bf16_words.wgsl"),
        }
    }
}

/// One compiled variant of a kernel: the kernel and the storage of its
/// logits and gradient (ignored by kernels that do not touch them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Variant {
    pub kernel: Kernel,
    pub logits: Storage,
    pub gradient: Storage,
    /// `ROW_CACHE` of the single-read wide kernel, in classes.
    pub row_cache: u32,
    /// The override constant `WG` of the kernels that have one; 0 keeps
    /// the shader's default.
    pub workgroup: u32,
    /// The override constant `FLAG_MASK`: the flags the pipeline is built
    /// for, or [`ce::ANY_FLAGS`].
    pub flags: u32,
}

impl Variant {
    /// `kernel` on f32 logits and gradient.
    pub(crate) fn f32(kernel: Kernel) -> Variant {
        Variant {
            kernel,
            logits: Storage::F32,
            gradient: Storage::F32,
            row_cache: 0,
            workgroup: 0,
            flags: ce::ANY_FLAGS,
        }
    }

    /// The same kernel with the fields it ignores reset, so that one source
    /// is built once.
    pub(crate) fn normalized(self) -> Variant {
        let mut v = self;
        if matches!(v.kernel, Kernel::Reduce | Kernel::Weights) {
            v.logits = Storage::F32;
        }
        if v.kernel == Kernel::Reduce {
            v.flags = ce::ANY_FLAGS;
        }
        if !v.kernel.writes_gradient() {
            v.gradient = Storage::F32;
        }
        if !matches!(v.kernel, Kernel::FusedWide | Kernel::FusedWideInPlace) {
            v.row_cache = 0;
        }
        // 0 is the shader's default WG; kernels without `override WG` take
        // none.
        let default = match v.kernel {
            Kernel::Subgroup | Kernel::SubgroupVec4 => Some(ce::SUBGROUP_WORKGROUP_SIZE),
            kernel if kernel.narrow_workgroup() => Some(ce::NARROW_WORKGROUP_SIZE),
            kernel if kernel.wide_workgroup() => Some(ce::WIDE_WORKGROUP_SIZE),
            Kernel::Reduce => Some(reduce_partials::WORKGROUP_SIZE),
            _ => None,
        };
        if default.is_none_or(|size| v.workgroup == size) {
            v.workgroup = 0;
        }
        v
    }
}

/// The full WGSL source of a kernel variant: an `enable f16;` where f16 is
/// stored, its libraries, then its entry file.
pub(crate) fn shader_source(variant: Variant) -> String {
    let Variant {
        kernel,
        logits,
        gradient,
        row_cache,
        workgroup: _,
        flags: _,
    } = variant;
    let mut parts: Vec<Cow<'static, str>> = Vec::new();
    let uses_gradient = kernel.writes_gradient();
    if logits == Storage::F16 || (uses_gradient && gradient == Storage::F16) {
        parts.push("enable f16;\n\n".into());
    }
    parts.push(PARTIAL_SHADER.into());
    if kernel.combines_invocation_partials() {
        parts.push(PARTIAL_TREE_SHADER.into());
    }
    if kernel == Kernel::Reduce {
        parts.push(reduce_partials::SHADER.into());
        return parts.concat();
    }
    parts.push(ce::ROW_SHADER.into());
    parts.push(logits.logits_library().into());
    if uses_gradient {
        parts.push(gradient.gradient_library().into());
    }
    let entry: &[&str] = match kernel {
        Kernel::Wide => &[ce::FORWARD_SHADER, ce::WIDE_TREE_SHADER, ce::WIDE_SHADER],
        Kernel::Narrow => &[
            ce::FORWARD_SHADER,
            ce::VEC4_SCALAR_SHADER,
            ce::PLAIN_SHADER,
            ce::NARROW_SHADER,
        ],
        Kernel::NarrowVec4 => &[
            ce::FORWARD_SHADER,
            ce::VEC4_BINDING_SHADER,
            ce::PLAIN_SHADER,
            ce::NARROW_SHADER,
        ],
        Kernel::Weights => &[ce::FORWARD_SHADER, ce::WEIGHTS_SHADER],
        Kernel::Gradient => &[ce::GRAD_ROW_SHADER, ce::GRAD_SHADER],
        Kernel::GradientInPlace => &[ce::GRAD_ROW_SHADER, ce::GRAD_IN_PLACE_SHADER],
        Kernel::FusedWide | Kernel::FusedWideInPlace => {
            parts.push(format!("const ROW_CACHE: u32 = {row_cache}u;\n\n").into());
            &[
                ce::FORWARD_SHADER,
                ce::GRAD_ROW_SHADER,
                ce::WIDE_TREE_SHADER,
                ce::FUSED_WIDE_SHADER,
            ]
        }
        Kernel::FusedNarrow | Kernel::FusedNarrowInPlace => &[
            ce::FORWARD_SHADER,
            ce::GRAD_ROW_SHADER,
            ce::FUSED_NARROW_SHADER,
        ],
        Kernel::Subgroup => &[
            ce::FORWARD_SHADER,
            ce::VEC4_SCALAR_SHADER,
            ce::PLAIN_SHADER,
            ce::SUBGROUP_SHADER,
        ],
        Kernel::SubgroupVec4 => &[
            ce::FORWARD_SHADER,
            ce::VEC4_BINDING_SHADER,
            ce::PLAIN_SHADER,
            ce::SUBGROUP_SHADER,
        ],
        Kernel::SplitRows => &[
            ce::FORWARD_SHADER,
            ce::WIDE_TREE_SHADER,
            ce::SPLIT_ROWS_SHADER,
        ],
        Kernel::SplitLanes => &[
            ce::FORWARD_SHADER,
            ce::VEC4_BINDING_SHADER,
            ce::PLAIN_SHADER,
            ce::SPLIT_LANES_SHADER,
        ],
        Kernel::SplitFinish => &[ce::FORWARD_SHADER, ce::SPLIT_FINISH_SHADER],
        Kernel::Reduce => unreachable!("returned above"),
    };
    if kernel.is_fused() {
        parts.push(if kernel.in_place() {
            ce::FUSED_IN_PLACE_SHADER.into()
        } else {
            ce::FUSED_OUT_SHADER.into()
        });
    }
    parts.extend(entry.iter().map(|&part| Cow::Borrowed(part)));
    parts.concat()
}

/// Every compute kernel of the crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    Wide,
    Narrow,
    /// The narrow kernel with the logits bound again as vec4s (plain f32
    /// rows on CPU-type adapters).
    NarrowVec4,
    Subgroup,
    SubgroupVec4,
    Reduce,
    Gradient,
    GradientInPlace,
    /// The single-read kernels' pre-pass: the reduction's denominators.
    Weights,
    FusedWide,
    FusedWideInPlace,
    FusedNarrow,
    FusedNarrowInPlace,
    /// A split row's runs (few long rows).
    SplitRows,
    /// A split plain row's runs, an invocation each, read as vec4s (long
    /// plain f32 rows on CPU-type adapters).
    SplitLanes,
    /// Merges a split row's runs and finishes it.
    SplitFinish,
}

impl Kernel {
    #[cfg(test)]
    pub(crate) const ALL: [Kernel; 16] = [
        Kernel::Wide,
        Kernel::Narrow,
        Kernel::NarrowVec4,
        Kernel::Subgroup,
        Kernel::SubgroupVec4,
        Kernel::Reduce,
        Kernel::Gradient,
        Kernel::GradientInPlace,
        Kernel::Weights,
        Kernel::FusedWide,
        Kernel::FusedWideInPlace,
        Kernel::FusedNarrow,
        Kernel::FusedNarrowInPlace,
        Kernel::SplitRows,
        Kernel::SplitLanes,
        Kernel::SplitFinish,
    ];

    fn is_fused(self) -> bool {
        matches!(
            self,
            Kernel::FusedWide
                | Kernel::FusedWideInPlace
                | Kernel::FusedNarrow
                | Kernel::FusedNarrowInPlace
        )
    }

    /// Whether the kernel runs in workgroups of the narrow kernel's size
    /// (`GpuOptions::narrow_workgroup_size`): the narrow kernel and those
    /// whose partials must come out of the same tree.
    pub(crate) fn narrow_workgroup(self) -> bool {
        matches!(
            self,
            Kernel::Narrow
                | Kernel::NarrowVec4
                | Kernel::FusedNarrow
                | Kernel::FusedNarrowInPlace
                | Kernel::Weights
        )
    }

    /// Whether the kernel runs in workgroups of the wide kernel's size
    /// (`GpuOptions::wide_workgroup_size`): those built on
    /// `cross_entropy_wide_tree.wgsl`.
    pub(crate) fn wide_workgroup(self) -> bool {
        matches!(
            self,
            Kernel::Wide | Kernel::FusedWide | Kernel::FusedWideInPlace | Kernel::SplitRows
        )
    }

    /// Whether the kernel ends with the shared-memory tree over its
    /// invocations' partials (and so includes partial_tree.wgsl).
    fn combines_invocation_partials(self) -> bool {
        matches!(
            self,
            Kernel::Narrow
                | Kernel::NarrowVec4
                | Kernel::Weights
                | Kernel::FusedNarrow
                | Kernel::FusedNarrowInPlace
                | Kernel::Subgroup
                | Kernel::SubgroupVec4
                | Kernel::SplitFinish
                | Kernel::Reduce
        )
    }

    /// Whether the kernel writes the gradient (and so includes a gradient
    /// storage library).
    pub(crate) fn writes_gradient(self) -> bool {
        self.is_fused() || matches!(self, Kernel::Gradient | Kernel::GradientInPlace)
    }

    /// Whether the gradient is written over the logits.
    pub(crate) fn in_place(self) -> bool {
        matches!(
            self,
            Kernel::GradientInPlace | Kernel::FusedWideInPlace | Kernel::FusedNarrowInPlace
        )
    }

    /// The name of its pipeline.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kernel::Wide => "cross_entropy_wide",
            Kernel::Narrow => "cross_entropy_narrow",
            Kernel::NarrowVec4 => "cross_entropy_narrow_vec4",
            Kernel::Subgroup => "cross_entropy_subgroup",
            Kernel::SubgroupVec4 => "cross_entropy_subgroup_vec4",
            Kernel::Reduce => "reduce_partials",
            Kernel::Gradient => "cross_entropy_grad",
            Kernel::GradientInPlace => "cross_entropy_grad_in_place",
            Kernel::Weights => "cross_entropy_weights",
            Kernel::FusedWide => "cross_entropy_fused_wide",
            Kernel::FusedWideInPlace => "cross_entropy_fused_wide_in_place",
            Kernel::FusedNarrow => "cross_entropy_fused_narrow",
            Kernel::FusedNarrowInPlace => "cross_entropy_fused_narrow_in_place",
            Kernel::SplitRows => "cross_entropy_split_rows",
            Kernel::SplitLanes => "cross_entropy_split_lanes",
            Kernel::SplitFinish => "cross_entropy_split_finish",
        }
    }
}

use std::borrow::Cow;

use bytemuck::{Pod, Zeroable};

use cross_entropy as ce;

use crate::output::LossStats;

/// `first_bad_row` / `first_nonfinite_row` when there is none.
pub(crate) const NO_ROW: u32 = u32::MAX;

/// One workgroup's reduced statistics.
///
/// Keep in sync with `struct Partial` in `shaders/partial.wgsl`. Float sums
/// are float-float pairs `(hi, lo)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub(crate) struct Partial {
    pub sum: [f32; 2],
    pub weight_sum: [f32; 2],
    pub sample_weight_sum: [f32; 2],
    pub count: u32,
    pub nonzero_count: u32,
    pub nonfinite_rows: u32,
    pub first_bad_row: u32,
    pub bad_label: i32,
    pub first_nonfinite_row: u32,
    pub first_bad_weight_row: u32,
    pub bad_weight: f32,
}

fn float_float(pair: [f32; 2]) -> f64 {
    if pair[0].is_finite() {
        pair[0] as f64 + pair[1] as f64
    } else {
        pair[0] as f64
    }
}

/// Builds a compute pipeline with entry point `main` over one bind group.
pub(crate) fn compute_pipeline(
    device: &wgpu::Device,
    label: &str,
    source: std::borrow::Cow<'_, str>,
    layout: &wgpu::BindGroupLayout,
) -> wgpu::ComputePipeline {
    compute_pipeline_with(device, label, source, layout, &[])
}

/// [`compute_pipeline`] with values for the shader's override constants.
pub(crate) fn compute_pipeline_with(
    device: &wgpu::Device,
    label: &str,
    source: std::borrow::Cow<'_, str>,
    layout: &wgpu::BindGroupLayout,
    constants: &[(&str, f64)],
) -> wgpu::ComputePipeline {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(label),
        source: wgpu::ShaderSource::Wgsl(source),
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(label),
        bind_group_layouts: &[Some(layout)],
        immediate_size: 0,
    });
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(label),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some("main"),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants,
            ..Default::default()
        },
        cache: None,
    })
}

/// Maps the first `size` bytes of a `MAP_READ` buffer once the submitted
/// work is done, hands them to `read`, and unmaps.
pub(crate) async fn map_read<T>(
    device: &wgpu::Device,
    buffer: &wgpu::Buffer,
    size: u64,
    read: impl FnOnce(&[u8]) -> T,
) -> crate::Result<T> {
    use crate::Error;
    let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
    buffer
        .slice(..size)
        .map_async(wgpu::MapMode::Read, move |result| {
            let _ = sender.send(result);
        });
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| Error::Gpu(e.to_string()))?;
    match receiver.receive().await {
        Some(Ok(())) => {}
        Some(Err(e)) => return Err(Error::Gpu(format!("readback failed: {e}"))),
        None => return Err(Error::Gpu("readback was dropped".into())),
    }
    let out = {
        let view = buffer
            .slice(..size)
            .get_mapped_range()
            .map_err(|e| Error::Gpu(e.to_string()))?;
        read(&view)
    };
    buffer.unmap();
    Ok(out)
}

impl Partial {
    /// The errors a partial carries: the first negative or NaN sample
    /// weight, the first bad label, and with `check_finite` the first
    /// non-finite row.
    pub(crate) fn check(&self, classes: usize, check_finite: bool) -> crate::Result<()> {
        use crate::Error;
        // Sample weights first: the host path checks them before the labels.
        if self.first_bad_weight_row != NO_ROW {
            return Err(Error::InvalidWeight {
                what: "sample weight",
                index: self.first_bad_weight_row as usize,
                value: self.bad_weight as f64,
            });
        }
        if self.first_bad_row != NO_ROW {
            return Err(Error::LabelOutOfRange {
                row: self.first_bad_row as usize,
                label: self.bad_label as i64,
                classes,
            });
        }
        if check_finite && self.first_nonfinite_row != NO_ROW {
            return Err(Error::NonFiniteLoss {
                row: self.first_nonfinite_row as usize,
            });
        }
        Ok(())
    }

    /// The stats this partial describes; the host combines each pair in f64.
    pub(crate) fn stats(&self, batch: usize) -> LossStats {
        LossStats {
            sum: float_float(self.sum),
            weight_sum: float_float(self.weight_sum),
            sample_weight_sum: float_float(self.sample_weight_sum),
            count: self.count as u64,
            nonzero_count: self.nonzero_count as u64,
            batch: batch as u64,
            nonfinite_rows: self.nonfinite_rows as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel variant parses and validates with naga; no GPU needed.
    #[test]
    fn shaders_validate_with_naga() {
        for kernel in Kernel::ALL {
            for logits in Storage::ALL {
                for gradient in Storage::ALL {
                    // In place the gradient has the logits' storage.
                    if kernel.in_place() && gradient != logits {
                        continue;
                    }
                    let variant = Variant {
                        kernel,
                        logits,
                        gradient,
                        row_cache: 512,
                        workgroup: 0,
                        flags: ce::ANY_FLAGS,
                    };
                    let name = format!("{variant:?}");
                    validate(&shader_source(variant), kernel, true)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                }
            }
        }
        for source in [roofline::LOAD_SHADER, roofline::COPY_SHADER] {
            validate(source, Kernel::Reduce, false).unwrap();
        }
    }

    /// Parses and validates `source`, with subgroups for the subgroup
    /// kernels and f16 only when `f16` is set.
    fn validate(source: &str, kernel: Kernel, f16: bool) -> Result<(), String> {
        let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
        let mut capabilities = naga::valid::Capabilities::empty();
        if f16 {
            capabilities |= naga::valid::Capabilities::SHADER_FLOAT16;
        }
        if matches!(kernel, Kernel::Subgroup | Kernel::SubgroupVec4) {
            capabilities |= naga::valid::Capabilities::SUBGROUP;
        }
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities)
            .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
            .subgroup_operations(naga::valid::SubgroupOperationSet::all())
            .validate(&module)
            .map(|_| ())
            .map_err(|e| format!("{e:?}"))
    }

    /// Without f16 storage no kernel needs `SHADER_F16` or even
    /// `SHADER_F16_IN_F32` (the packed f16 path converts with integer
    /// operations).
    #[test]
    fn packed_variants_need_no_f16() {
        for kernel in Kernel::ALL {
            for storage in [Storage::F32, Storage::F16Words, Storage::Bf16Words] {
                let source = shader_source(Variant {
                    kernel,
                    logits: storage,
                    gradient: storage,
                    row_cache: 512,
                    workgroup: 0,
                    flags: ce::ANY_FLAGS,
                });
                validate(&source, kernel, false)
                    .unwrap_or_else(|e| panic!("{kernel:?} {storage:?}: {e}"));
            }
        }
    }

    /// The WGSL workgroup sizes are the Rust constants.
    #[test]
    fn workgroup_sizes_are_in_sync() {
        for shader in [
            cross_entropy::NARROW_SHADER,
            cross_entropy::FUSED_NARROW_SHADER,
            cross_entropy::WEIGHTS_SHADER,
        ] {
            assert!(shader.contains(&format!(
                "override WG: u32 = {}u;",
                cross_entropy::NARROW_WORKGROUP_SIZE
            )));
        }
        assert!(cross_entropy::SUBGROUP_SHADER.contains(&format!(
            "override WG: u32 = {}u;",
            cross_entropy::SUBGROUP_WORKGROUP_SIZE
        )));
        for shader in [
            cross_entropy::GRAD_SHADER,
            cross_entropy::GRAD_IN_PLACE_SHADER,
        ] {
            assert!(shader.contains(&format!(
                "const WG: u32 = {}u;",
                cross_entropy::GRAD_WORKGROUP_SIZE
            )));
        }
        assert!(cross_entropy::WIDE_TREE_SHADER.contains(&format!(
            "override WG: u32 = {}u;",
            cross_entropy::WIDE_WORKGROUP_SIZE
        )));
        assert!(cross_entropy::SPLIT_FINISH_SHADER.contains(&format!(
            "const WG: u32 = {}u;",
            cross_entropy::NARROW_WORKGROUP_SIZE
        )));
        assert!(cross_entropy::SPLIT_LANES_SHADER.contains(&format!(
            "const WG: u32 = {}u;",
            cross_entropy::SPLIT_LANES_WORKGROUP_SIZE
        )));
        assert!(cross_entropy::FUSED_NARROW_SHADER.contains(&format!(
            "const NARROW_CACHE: u32 = {}u;",
            cross_entropy::NARROW_CACHE_CLASSES
        )));
        assert!(reduce_partials::SHADER.contains(&format!(
            "override WG: u32 = {}u;",
            reduce_partials::WORKGROUP_SIZE
        )));
        for shader in [roofline::LOAD_SHADER, roofline::COPY_SHADER] {
            assert!(shader.contains(&format!("const WG: u32 = {}u;", roofline::WORKGROUP_SIZE)));
        }
    }

    #[test]
    fn partial_layout_matches_wgsl() {
        assert_eq!(std::mem::size_of::<Partial>(), 56);
        assert_eq!(std::mem::size_of::<cross_entropy::Params>(), 64);
        assert_eq!(std::mem::size_of::<reduce_partials::Params>(), 16);
    }
}
