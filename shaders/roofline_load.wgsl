// Load-only roofline: every invocation streams vec4s from a storage buffer
// and checks its own sum, so the loads can't be dropped and no barrier slows
// it down. With `run` 0 the grid strides over the buffer (neighbouring
// invocations read neighbouring vec4s: GPUs); else invocation t reads the
// `run` vec4s from t·run on (a contiguous run each, as the narrow kernel's
// rows and lane runs are read: CPU-type adapters). The source holds ones,
// so invocation t must sum to 4 × (the vec4s it visited); any other sum
// flags the run as wrong. It reads the bytes the loss kernels read, and
// nothing else. Built with EXP, it passes each value through one exp first
// (exp(x − 1) = 1 for the ones; the sum is checked within 0.1 %, which
// catches a misread run but not a single value): the least work
// any log-sum-exp kernel does per class, the "exp floor".
// Host side: src/gpu/roofline.rs.

// Keep in sync with gpu::roofline::WORKGROUP_SIZE.
const WG: u32 = 256u;

// A pipeline-overridable constant, so the load-only build has no exp code
// (lavapipe runs both sides of a branch).
override EXP: bool = false;

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

fn value(x: vec4<f32>) -> vec4<f32> {
    if EXP {
        return exp(x - vec4<f32>(1.0));
    }
    return x;
}

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
            acc += value(source[i]);
            visited += 1u;
        }
    } else {
        let first = thread * params.run;
        let last = min(first + params.run, params.count);
        for (var i = first; i < last; i += 1u) {
            acc += value(source[i]);
            visited += 1u;
        }
    }
    let expected = 4.0 * f32(visited);
    // Sums of ones are exact; exp(0) may be off by an ulp.
    let tolerance = select(0.0, 1e-3 * expected, EXP);
    if abs(acc.x + acc.y + acc.z + acc.w - expected) > tolerance {
        wrong[0] = 1u;
    }
}
