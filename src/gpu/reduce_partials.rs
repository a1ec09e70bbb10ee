//! Host side of `shaders/reduce_partials.wgsl`: the deterministic tree over
//! workgroup partials.

use bytemuck::{Pod, Zeroable};

/// Threads per workgroup of every pass but a last one over fewer partials
/// (see [`pass_workgroup`]); keep in sync with `WG` in the shader.
pub(crate) const WORKGROUP_SIZE: u32 = 256;

pub(crate) const SHADER: &str = include_str!("../../shaders/reduce_partials.wgsl");

/// Keep in sync with `struct Params` in `shaders/reduce_partials.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct Params {
    pub count: u32,
    pub in_offset: u32,
    pub out_offset: u32,
    /// Always 0: the shader's `opaque()` XORs with it.
    pub zero: u32,
}

/// The passes that take `count` partials (stored at offset 0) down to one.
/// Returns each pass's params and the offset of the final partial.
pub(crate) fn plan(count: u32) -> (Vec<Params>, u32) {
    let mut passes = Vec::new();
    let (mut count, mut offset) = (count, 0u32);
    while count > 1 {
        let out = count.div_ceil(WORKGROUP_SIZE);
        passes.push(Params {
            count,
            in_offset: offset,
            out_offset: offset + count,
            zero: 0,
        });
        offset += count;
        count = out;
    }
    (passes, offset)
}

/// The workgroup size of a pass over `count` partials: [`WORKGROUP_SIZE`],
/// or for a last pass over fewer, the smallest power of two that holds them
/// (at least 32). The smaller tree only drops identity partials, whose exact
/// zeros change no sum, and costs less where barriers are dear.
pub(crate) fn pass_workgroup(count: u32) -> u32 {
    count
        .next_power_of_two()
        .clamp(super::cross_entropy::MIN_WORKGROUP_SIZE, WORKGROUP_SIZE)
}

pub(crate) fn layout(device: &wgpu::Device) -> wgpu::BindGroupLayout {
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("reduce_partials"),
        entries: &[
            super::cross_entropy::uniform_entry(0, std::mem::size_of::<Params>()),
            super::cross_entropy::storage_entry(1, false),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_reduces_to_one() {
        assert!(plan(1).0.is_empty());
        let (passes, last) = plan(70_000);
        assert_eq!(passes.len(), 3);
        assert_eq!(passes[0].out_offset, 70_000);
        assert_eq!(passes[2].count, 2);
        assert_eq!(last, 70_000 + 274 + 2);
        let sizes: Vec<u32> = passes.iter().map(|p| pass_workgroup(p.count)).collect();
        assert_eq!(sizes, [256, 256, 32]);
        assert_eq!(pass_workgroup(200), 256);
        assert_eq!(pass_workgroup(100), 128);
    }
}
