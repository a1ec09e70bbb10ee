// Deterministic tree reduction of workgroup partials. Pass k reads
// `count` partials at `in_offset` and writes one per workgroup at
// `out_offset`; the host chains passes until one partial is left.
// Float sums stay float-float (two-sum); no atomics, fixed order.
// Host side: src/gpu/reduce_partials.rs. CPU twin: gpu::Partial::combine.

// Keep in sync with gpu::reduce_partials::WORKGROUP_SIZE.
const WG: u32 = 256u;
const NO_ROW: u32 = 0xffffffffu;

// Keep in sync with gpu::reduce_partials::Params.
struct Params {
    count: u32,
    in_offset: u32,
    out_offset: u32,
    _pad: u32, // always 0; see opaque()
}

// Keep in sync with gpu::Partial (and cross_entropy.wgsl).
struct Partial {
    sum: vec2<f32>,
    weight_sum: vec2<f32>,
    sample_weight_sum: vec2<f32>,
    count: u32,
    nonzero_count: u32,
    nonfinite_rows: u32,
    first_bad_row: u32,
    bad_label: i32,
    first_nonfinite_row: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> partials: array<Partial>;

var<workgroup> shared_partials: array<Partial, WG>;

fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// An identity the compiler cannot see through: the uniform word is always 0.
// Without it, fast-math rewrites ((a + b) - a) to b and erases the two-sum.
fn opaque(x: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) ^ params._pad);
}

// Error-free sum of two float-floats (Knuth two-sum, then renormalise).
fn ff_add(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let s = opaque(a.x + b.x);
    if !is_finite(s) {
        return vec2<f32>(s, 0.0);
    }
    let bb = opaque(s - a.x);
    let e = (a.x - opaque(s - bb)) + (b.x - bb);
    let t = opaque(e + a.y + b.y);
    let hi = opaque(s + t);
    return vec2<f32>(hi, t - opaque(hi - s));
}

// `a` covers lower rows than `b`.
fn combine(a: Partial, b: Partial) -> Partial {
    var out = a;
    out.sum = ff_add(a.sum, b.sum);
    out.weight_sum = ff_add(a.weight_sum, b.weight_sum);
    out.sample_weight_sum = ff_add(a.sample_weight_sum, b.sample_weight_sum);
    out.count = a.count + b.count;
    out.nonzero_count = a.nonzero_count + b.nonzero_count;
    out.nonfinite_rows = a.nonfinite_rows + b.nonfinite_rows;
    if a.first_bad_row == NO_ROW {
        out.first_bad_row = b.first_bad_row;
        out.bad_label = b.bad_label;
    }
    out.first_nonfinite_row = min(a.first_nonfinite_row, b.first_nonfinite_row);
    return out;
}

fn identity() -> Partial {
    return Partial(vec2<f32>(0.0), vec2<f32>(0.0), vec2<f32>(0.0), 0u, 0u, 0u, NO_ROW, 0i, NO_ROW);
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = wid.y * groups.x + wid.x;
    let index = group * WG + lid;
    var value = identity();
    if index < params.count {
        value = partials[params.in_offset + index];
    }
    shared_partials[lid] = value;
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if lid < stride {
            shared_partials[lid] = combine(shared_partials[lid], shared_partials[lid + stride]);
        }
    }
    if lid == 0u && group * WG < params.count {
        partials[params.out_offset + group] = shared_partials[0];
    }
}
