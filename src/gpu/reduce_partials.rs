//! Host side of `shaders/reduce_partials.wgsl`: the deterministic tree over
//! workgroup partials.

use bytemuck::{Pod, Zeroable};

/// Threads per workgroup; keep in sync with `WG` in the shader.
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
    }
}
