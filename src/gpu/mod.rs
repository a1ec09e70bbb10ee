//! The wgpu path: context, the fused kernel and the tree reduction.

mod context;
pub(crate) mod cross_entropy;
pub(crate) mod reduce_partials;

pub use context::{GpuContext, GpuOptions};

use bytemuck::{Pod, Zeroable};

use crate::output::LossStats;

/// `first_bad_row` / `first_nonfinite_row` when there is none.
pub(crate) const NO_ROW: u32 = u32::MAX;

/// One workgroup's reduced statistics.
///
/// Keep in sync with `struct Partial` in `shaders/cross_entropy.wgsl` and
/// `shaders/reduce_partials.wgsl`. Float sums are float-float pairs
/// `(hi, lo)`.
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
        for (name, source) in [
            ("cross_entropy", cross_entropy::SHADER),
            ("reduce_partials", reduce_partials::SHADER),
        ] {
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

    /// The WGSL workgroup sizes are the Rust constants.
    #[test]
    fn workgroup_sizes_are_in_sync() {
        assert!(cross_entropy::SHADER.contains(&format!(
            "const WG: u32 = {}u;",
            cross_entropy::WORKGROUP_SIZE
        )));
        assert!(reduce_partials::SHADER.contains(&format!(
            "const WG: u32 = {}u;",
            reduce_partials::WORKGROUP_SIZE
        )));
    }

    #[test]
    fn partial_layout_matches_wgsl() {
        assert_eq!(std::mem::size_of::<Partial>(), 48);
        assert_eq!(std::mem::size_of::<cross_entropy::Params>(), 48);
        assert_eq!(std::mem::size_of::<reduce_partials::Params>(), 16);
    }
}
