// Copy roofline: every invocation copies vec4s from one storage buffer to
// another (grid-stride). Reads and writes the same number of bytes.
// Host side: src/gpu/roofline.rs (its CPU twin is a slice copy).

// Keep in sync with gpu::roofline::WORKGROUP_SIZE.
const WG: u32 = 256u;

// Keep in sync with gpu::roofline::Params.
struct Params {
    count: u32,     // vec4s bound
    threads: u32,   // invocations in the grid
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> source: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> destination: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = wid.y * groups.x + wid.x;
    for (var i = group * WG + lid; i < params.count; i += params.threads) {
        destination[i] = source[i];
    }
}
