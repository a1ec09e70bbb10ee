// Histogram counts of per-example losses with numpy.histogram's bins:
// [e_i, e_{i+1}), the last bin closed; ignored rows, non-finite losses and
// losses outside [e_0, e_N] are counted apart. One invocation per loss,
// integer atomics only (the counts are exact and order-free).
// The host passes each edge as the smallest f32 at or above it, so that the
// f32 comparisons here are exactly the f64 comparisons of the CPU twin,
// Histogram::add_losses in src/diagnostics/histogram.rs.
// Host side: src/gpu/diagnostics.rs.

// Keep in sync with gpu::diagnostics::HISTOGRAM_WORKGROUP_SIZE.
const WG: u32 = 256u;
const FLAG_IGNORE_INDEX: u32 = 1u;

// Keep in sync with gpu::diagnostics::HistogramParams.
struct Params {
    count: u32,
    bins: u32,
    flags: u32,
    ignore_index: i32,
    top: f32, // the largest f32 at or below e_N
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> losses: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<i32>;
@group(0) @binding(3) var<storage, read> lower: array<f32>; // ceil_f32(e_i), i < bins
// counts[0..bins], then below, above, non-finite, ignored
@group(0) @binding(4) var<storage, read_write> counters: array<atomic<u32>>;

fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.y * groups.x + wid.x) * WG + lid;
    if i >= params.count {
        return;
    }
    let bins = params.bins;
    if (params.flags & FLAG_IGNORE_INDEX) != 0u && labels[i] == params.ignore_index {
        atomicAdd(&counters[bins + 3u], 1u);
        return;
    }
    let x = losses[i];
    if !is_finite(x) {
        atomicAdd(&counters[bins + 2u], 1u);
        return;
    }
    if x < lower[0] {
        atomicAdd(&counters[bins], 1u);
        return;
    }
    if x > params.top {
        atomicAdd(&counters[bins + 1u], 1u);
        return;
    }
    // The number of interior edges at or below x: the first j in [1, bins)
    // with lower[j] > x, minus one.
    var lo = 1u;
    var hi = bins;
    while lo < hi {
        let mid = (lo + hi) / 2u;
        if lower[mid] <= x {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    atomicAdd(&counters[lo - 1u], 1u);
}
