// Fused per-example cross-entropy with a subgroup per row: the lanes of a
// subgroup stride over a row's classes (neighbouring lanes read neighbouring
// floats), subgroup operations combine them, and lane 0 finishes the row.
// No barrier per row; one per workgroup combines the subgroups' partials in
// subgroup order. Needs `Features::SUBGROUP`. Subgroup s of a workgroup
// takes rows first + s, first + s + num_subgroups, ... Prepended with
// partial.wgsl, cross_entropy_row.wgsl and cross_entropy_forward.wgsl.
// Host side: src/gpu/cross_entropy.rs.

// Keep in sync with gpu::cross_entropy::SUBGROUP_WORKGROUP_SIZE.
const WG: u32 = 128u;

// One slot per subgroup; subgroups hold at least one invocation.
var<workgroup> subgroup_partials: array<Partial, WG>;

// Combines the lanes' shares of a row of logits.
fn subgroup_logit_sums(local: RowSums) -> RowSums {
    let m = subgroupMax(local.lse.x);
    var s = 0.0;
    if local.lse.y > 0.0 {
        s = local.lse.y * exp(local.lse.x - m);
    }
    return RowSums(
        vec2<f32>(m, subgroupAdd(s)),
        subgroupAdd(local.acc),
        subgroupAdd(local.total),
        subgroupOr(local.bad),
    );
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) lanes: u32,
) {
    let group = wid.y * groups.x + wid.x;
    let first = group * params.rows_per_group;
    if first >= params.chunk_rows {
        return;
    }
    let last = min(first + params.rows_per_group, params.chunk_rows);
    var partial = identity_partial();
    for (var local_row = first + subgroup; local_row < last; local_row += subgroups) {
        let base = local_row * params.classes;
        var pivot = 0.0;
        var prob_total = 0.0;
        var sums: RowSums;
        if has(FLAG_PROBABILITIES) {
            let first_pass = probability_total(base, lane, lanes);
            prob_total = subgroupAdd(first_pass.x);
            let bad = subgroupMax(first_pass.y);
            let acc = subgroupAdd(probability_sums(base, prob_total, lane, lanes));
            sums = RowSums(vec2<f32>(0.0), acc, 0.0, u32(bad));
        } else {
            pivot = row_pivot(base);
            sums = subgroup_logit_sums(logit_sums(base, pivot, lane, lanes));
        }
        if lane == 0u {
            finish_row(local_row, sums, pivot, prob_total, &partial);
        }
    }
    if lane == 0u {
        subgroup_partials[subgroup] = partial;
    }
    workgroupBarrier();
    if lid == 0u {
        var total = subgroup_partials[0];
        for (var s = 1u; s < subgroups; s++) {
            total = combine(total, subgroup_partials[s]);
        }
        partials[params.group_base + group] = total;
    }
}
