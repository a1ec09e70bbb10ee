//! The wgpu path: context, the fused kernel and the tree reduction.

mod context;
pub(crate) mod cross_entropy;
mod diagnostics;
pub(crate) mod reduce_partials;

pub use context::{
    DeviceBatch, DeviceOutputs, DeviceSlice, DeviceTargets, GpuContext, GpuOptions, GradientOutput,
    PendingLoss, ReducedLoss,
};
pub use cross_entropy::KernelVariant;
pub use diagnostics::GpuDiagnostics;

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
    };
    parts.concat()
}

/// Every compute kernel of the crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    Wide,
    Narrow,
    Reduce,
    Gradient,
    GradientInPlace,
}

impl Kernel {
    #[cfg(test)]
    pub(crate) const ALL: [Kernel; 5] = [
        Kernel::Wide,
        Kernel::Narrow,
        Kernel::Reduce,
        Kernel::Gradient,
        Kernel::GradientInPlace,
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

impl Partial {
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
            naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::empty(),
            )
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
        assert!(cross_entropy::GRAD_ROW_SHADER.contains(&format!(
            "const WG: u32 = {}u;",
            cross_entropy::GRAD_WORKGROUP_SIZE
        )));
        assert!(reduce_partials::SHADER.contains(&format!(
            "const WG: u32 = {}u;",
            reduce_partials::WORKGROUP_SIZE
        )));
    }

    #[test]
    fn partial_layout_matches_wgsl() {
        assert_eq!(std::mem::size_of::<Partial>(), 48);
        assert_eq!(std::mem::size_of::<cross_entropy::Params>(), 64);
        assert_eq!(std::mem::size_of::<reduce_partials::Params>(), 16);
    }
}
