// Deterministic tree reduction of workgroup partials. Pass k reads `count`
// partials at `in_offset` and writes one per workgroup at `out_offset`; the
// host chains passes until one partial is left. Float sums stay float-float;
// no atomics, fixed order. Prepended with partial.wgsl and partial_tree.wgsl.
// Host side: src/gpu/reduce_partials.rs.

// The default is gpu::reduce_partials::WORKGROUP_SIZE; a last pass over
// fewer partials runs smaller (reduce_partials::pass_workgroup).
override WG: u32 = 256u;

// Keep in sync with gpu::reduce_partials::Params.
struct Params {
    count: u32,
    in_offset: u32,
    out_offset: u32,
    zero: u32, // always 0; see opaque()
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> partials: array<Partial>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = wid.y * groups.x + wid.x;
    let index = group * WG + lid;
    var value = identity_partial();
    if index < params.count {
        value = partials[params.in_offset + index];
    }
    combine_workgroup_partials(lid, value);
    if lid == 0u && group * WG < params.count {
        partials[params.out_offset + group] = shared_partials[0];
    }
}
