//! The wgpu path: context, the fused kernel and the tree reduction.

mod context;
pub(crate) mod cross_entropy;
mod diagnostics;
pub(crate) mod reduce_partials;
mod roofline;
mod timer;

pub use context::{
    DeviceBatch, DeviceOutputs, DeviceSlice, DeviceTargets, GpuContext, GpuOptions, GradientOutput,
    PendingLoss, ReducedLoss,
};
pub use cross_entropy::KernelVariant;
pub use diagnostics::GpuDiagnostics;
pub use roofline::{Roofline, Timing};

/// `shaders/partial.wgsl`: the partial and its compensated arithmetic,
/// prepended to every kernel.
const PARTIAL_SHADER: &str = include_str!("../../shaders/partial.wgsl");

/// The full WGSL source of a kernel: its libraries, then its entry file.
pub(crate) fn shader_source(kernel: Kernel) -> String {
    let parts: &[&str] = match kernel {
        Kernel::Wide => &[
            PARTIAL_SHADER,
            ce::ROW_SHADER,
            ce::FORWARD_SHADER,
            ce::WIDE_SHADER,
        ],
        Kernel::Narrow => &[
            PARTIAL_SHADER,
            ce::ROW_SHADER,
            ce::FORWARD_SHADER,
            ce::NARROW_SHADER,
        ],
        Kernel::Subgroup => &[
            PARTIAL_SHADER,
            ce::ROW_SHADER,
            ce::FORWARD_SHADER,
            ce::VEC4_SCALAR_SHADER,
            ce::SUBGROUP_SHADER,
        ],
        Kernel::SubgroupVec4 => &[
            PARTIAL_SHADER,
            ce::ROW_SHADER,
            ce::FORWARD_SHADER,
            ce::VEC4_BINDING_SHADER,
            ce::SUBGROUP_SHADER,
        ],
        Kernel::Reduce => &[PARTIAL_SHADER, reduce_partials::SHADER],
        Kernel::Gradient => &[
            PARTIAL_SHADER,
            ce::ROW_SHADER,
            ce::GRAD_ROW_SHADER,
            ce::GRAD_SHADER,
        ],
        Kernel::GradientInPlace => &[
            PARTIAL_SHADER,
            ce::ROW_SHADER,
            ce::GRAD_ROW_SHADER,
            ce::GRAD_IN_PLACE_SHADER,
        ],
        Kernel::RooflineLoad => &[roofline::LOAD_SHADER],
        Kernel::RooflineCopy => &[roofline::COPY_SHADER],
    };
    parts.concat()
}

/// Every compute kernel of the crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    Wide,
    Narrow,
    Subgroup,
    SubgroupVec4,
    Reduce,
    Gradient,
    GradientInPlace,
    RooflineLoad,
    RooflineCopy,
}

impl Kernel {
    #[cfg(test)]
    pub(crate) const ALL: [Kernel; 9] = [
        Kernel::Wide,
        Kernel::Narrow,
        Kernel::Subgroup,
        Kernel::SubgroupVec4,
        Kernel::Reduce,
        Kernel::Gradient,
        Kernel::GradientInPlace,
        Kernel::RooflineLoad,
        Kernel::RooflineCopy,
    ];
}

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
        compilation_options: Default::default(),
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
    /// The errors a partial carries: the first bad label, and with
    /// `check_finite` the first non-finite row.
    pub(crate) fn check(&self, classes: usize, check_finite: bool) -> crate::Result<()> {
        use crate::Error;
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

    /// Every shader parses and validates with naga; no GPU needed.
    #[test]
    fn shaders_validate_with_naga() {
        for kernel in Kernel::ALL {
            let name = format!("{kernel:?}");
            let source = shader_source(kernel);
            let module = naga::front::wgsl::parse_str(&source)
                .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&source)));
            let capabilities = if matches!(kernel, Kernel::Subgroup | Kernel::SubgroupVec4) {
                naga::valid::Capabilities::SUBGROUP
            } else {
                naga::valid::Capabilities::empty()
            };
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities)
                .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
                .subgroup_operations(naga::valid::SubgroupOperationSet::all())
                .validate(&module)
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
    }

    /// The WGSL workgroup sizes are the Rust constants.
    #[test]
    fn workgroup_sizes_are_in_sync() {
        assert!(cross_entropy::WIDE_SHADER.contains(&format!(
            "const WG: u32 = {}u;",
            cross_entropy::WIDE_WORKGROUP_SIZE
        )));
        assert!(cross_entropy::NARROW_SHADER.contains(&format!(
            "const WG: u32 = {}u;",
            cross_entropy::NARROW_WORKGROUP_SIZE
        )));
        assert!(cross_entropy::SUBGROUP_SHADER.contains(&format!(
            "const WG: u32 = {}u;",
            cross_entropy::SUBGROUP_WORKGROUP_SIZE
        )));
        assert!(cross_entropy::GRAD_ROW_SHADER.contains(&format!(
            "const WG: u32 = {}u;",
            cross_entropy::GRAD_WORKGROUP_SIZE
        )));
        assert!(reduce_partials::SHADER.contains(&format!(
            "const WG: u32 = {}u;",
            reduce_partials::WORKGROUP_SIZE
        )));
        for shader in [roofline::LOAD_SHADER, roofline::COPY_SHADER] {
            assert!(shader.contains(&format!("const WG: u32 = {}u;", roofline::WORKGROUP_SIZE)));
        }
    }

    #[test]
    fn partial_layout_matches_wgsl() {
        assert_eq!(std::mem::size_of::<Partial>(), 48);
        assert_eq!(std::mem::size_of::<cross_entropy::Params>(), 64);
        assert_eq!(std::mem::size_of::<reduce_partials::Params>(), 16);
    }
}
