// Adds the slices diagnostics_per_class.wgsl wrote into the running totals,
// one invocation per class: the slices in order (a fixed shape), then the
// result into the total, and each slice back to zero for the next round.
// Prepended with partial.wgsl (ff_add, opaque). Host side:
// src/gpu/diagnostics.rs.

// Keep in sync with gpu::diagnostics::PER_CLASS_REDUCE_WORKGROUP_SIZE.
const WG: u32 = 256u;

// Keep in sync with gpu::diagnostics::PerClassReduceParams.
struct Params {
    classes: u32,
    slices: u32,
    zero: u32, // always 0; see opaque()
    _pad: u32,
}

// Keep in sync with gpu::diagnostics::ClassPartial.
struct ClassPartial {
    sum: vec2<f32>,
    count: u32,
    nonfinite: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> slices: array<ClassPartial>;
@group(0) @binding(2) var<storage, read_write> totals: array<ClassPartial>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = (wid.y * groups.x + wid.x) * WG + lid;
    if c >= params.classes {
        return;
    }
    let empty = ClassPartial(vec2<f32>(0.0), 0u, 0u);
    var s = slices[c];
    slices[c] = empty;
    for (var j = 1u; j < params.slices; j += 1u) {
        let at = j * params.classes + c;
        let q = slices[at];
        s.sum = ff_add(s.sum, q.sum);
        s.count += q.count;
        s.nonfinite += q.nonfinite;
        slices[at] = empty;
    }
    var t = totals[c];
    t.sum = ff_add(t.sum, s.sum);
    t.count += s.count;
    t.nonfinite += s.nonfinite;
    totals[c] = t;
}
