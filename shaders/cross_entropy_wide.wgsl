// Fused per-example cross-entropy for wide rows: one workgroup walks
// `rows_per_group` consecutive rows; for each row its threads stride over
// the classes, a shared-memory tree combines them, and thread 0 finishes the
// row into the workgroup's partial. Prepended with partial.wgsl,
// cross_entropy_row.wgsl, a logits_*.wgsl library, cross_entropy_forward.wgsl
// and cross_entropy_wide_tree.wgsl. Host side: src/gpu/cross_entropy.rs.

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
    for (var local_row = first; local_row < last; local_row++) {
        let base = local_row * params.classes;
        var pivot = 0.0;
        var prob_total = 0.0;
        var sums: RowSums;
        if has(FLAG_PROBABILITIES) {
            let first_pass = probability_total(base, lid, WG);
            share(lid, RowSums(vec2<f32>(0.0), first_pass.x, 0.0, u32(first_pass.y)));
            let totals = reduce_workgroup(lid);
            prob_total = totals.acc;
            sums = RowSums(vec2<f32>(0.0), probability_sums(base, prob_total, lid, WG), 0.0, totals.bad);
        } else {
            if needs_class_sums() {
                pivot = row_pivot(base);
            }
            sums = logit_sums(base, pivot, lid, WG);
        }
        share(lid, sums);
        let row_sums = reduce_workgroup(lid);
        if lid == 0u {
            finish_row(local_row, row_sums, pivot, prob_total, &partial);
        }
    }
    if lid == 0u {
        partials[params.group_base + group] = partial;
    }
}
