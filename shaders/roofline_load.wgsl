// Load-only roofline: every invocation streams vec4s from a storage buffer
// and checks its own sum, so the loads can't be dropped and no barrier slows
// it down. With `run` 0 the grid strides over the buffer (neighbouring
// invocations read neighbouring vec4s: GPUs); else invocation t reads the
// `run` vec4s from t·run on (a contiguous run each, as the narrow kernel's
// rows and lane runs are read: CPU-type adapters). The source holds ones,
// so invocation t must sum to 4 × (the vec4s it visited); any other sum
// flags the run as wrong. It reads the bytes the loss kernels read, and
// nothing else.
// Host side: src/gpu/roofline.rs.

// Keep in sync with gpu::roofline::WORKGROUP_SIZE.
const WG: u32 = 256u;

// Keep in sync with gpu::roofline::Params.
struct Params {
    count: u32,     // vec4s bound
    threads: u32,   // invocations in the grid
    run: u32,       // vec4s per invocation, or 0 for a grid stride
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> source: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> wrong: array<u32>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let thread = (wid.y * groups.x + wid.x) * WG + lid;
    var acc = vec4<f32>(0.0);
    var visited = 0u;
    if params.run == 0u {
        for (var i = thread; i < params.count; i += params.threads) {
            acc += source[i];
            visited += 1u;
        }
    } else {
        let first = thread * params.run;
        let last = min(first + params.run, params.count);
        for (var i = first; i < last; i += 1u) {
            acc += source[i];
            visited += 1u;
        }
    }
    if acc.x + acc.y + acc.z + acc.w != 4.0 * f32(visited) {
        wrong[0] = 1u;
    }
}
