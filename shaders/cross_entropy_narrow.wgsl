// Fused per-example cross-entropy for narrow rows: one invocation per row,
// no barrier per row. Thread t of a workgroup takes rows first + t,
// first + t + WG, ...; a shared-memory tree combines the threads' partials
// once per workgroup. Prepended with partial.wgsl, partial_tree.wgsl, cross_entropy_row.wgsl,
// a logits_*.wgsl library, cross_entropy_forward.wgsl, logits_vec4_binding.wgsl
// or logits_vec4_scalar.wgsl, and cross_entropy_plain.wgsl. With FLAG_VEC4
// (CPU-type adapters: f32 rows of a multiple of 4 classes, no class sums)
// a row is read as vec4s, sixteen classes a trip.
// Host side: src/gpu/cross_entropy.rs.

// The workgroup size: a pipeline-overridable constant, set from
// GpuOptions::narrow_workgroup_size (the same for the narrow, single-read
// narrow and weights kernels, whose trees must match); the default is
// gpu::cross_entropy::NARROW_WORKGROUP_SIZE.
override WG: u32 = 128u;

@group(0) @binding(1) var<storage, read> logits: array<LogitWord>; // this chunk

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = wid.y * groups.x + wid.x;
    let first = group * params.rows_per_group;
    if first >= params.chunk_rows {
        return;
    }
    let last = min(first + params.rows_per_group, params.chunk_rows);
    var partial = identity_partial();
    for (var local_row = first + lid; local_row < last; local_row += WG) {
        let base = local_row * params.classes;
        var pivot = 0.0;
        var prob_total = 0.0;
        var sums: RowSums;
        if has(FLAG_PROBABILITIES) {
            let first_pass = probability_total(base, 0u, 1u);
            prob_total = first_pass.x;
            sums = RowSums(vec2<f32>(0.0), probability_sums(base, prob_total, 0u, 1u), 0.0, u32(first_pass.y));
        } else {
            if needs_class_sums() {
                pivot = row_pivot(base);
                sums = logit_sums(base, pivot, 0u, 1u);
            } else if has(FLAG_VEC4) {
                sums = plain_logit_sums_vec4(base, 0u, 1u);
            } else {
                sums = logit_sums(base, 0.0, 0u, 1u);
            }
        }
        finish_row(local_row, sums, pivot, prob_total, &partial);
    }
    combine_workgroup_partials(lid, partial);
    if lid == 0u {
        partials[params.group_base + group] = shared_partials[0];
    }
}
