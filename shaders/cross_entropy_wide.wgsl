// Fused per-example cross-entropy for wide rows: one workgroup walks
// `rows_per_group` consecutive rows; for each row its threads stride over
// the classes, a shared-memory tree combines them, and thread 0 finishes the
// row into the workgroup's partial. Prepended with partial.wgsl and
// cross_entropy_row.wgsl. Host side: src/gpu/cross_entropy.rs.

// Keep in sync with gpu::cross_entropy::WIDE_WORKGROUP_SIZE.
const WG: u32 = 128u;

var<workgroup> sh_max: array<f32, WG>;
var<workgroup> sh_sum: array<f32, WG>;
var<workgroup> sh_acc: array<f32, WG>;
var<workgroup> sh_tot: array<f32, WG>;
var<workgroup> sh_bad: array<u32, WG>;

fn share(lid: u32, sums: RowSums) {
    sh_max[lid] = sums.lse.x;
    sh_sum[lid] = sums.lse.y;
    sh_acc[lid] = sums.acc;
    sh_tot[lid] = sums.total;
    sh_bad[lid] = sums.bad;
}

// Tree-reduces the shared arrays into slot 0; call from uniform control flow.
fn reduce_workgroup(lid: u32) -> RowSums {
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if lid < stride {
            let merged = lse_merge(
                vec2<f32>(sh_max[lid], sh_sum[lid]),
                vec2<f32>(sh_max[lid + stride], sh_sum[lid + stride]),
            );
            sh_max[lid] = merged.x;
            sh_sum[lid] = merged.y;
            sh_acc[lid] += sh_acc[lid + stride];
            sh_tot[lid] += sh_tot[lid + stride];
            sh_bad[lid] |= sh_bad[lid + stride];
        }
    }
    workgroupBarrier();
    let out = RowSums(vec2<f32>(sh_max[0], sh_sum[0]), sh_acc[0], sh_tot[0], sh_bad[0]);
    // Everyone has read slot 0 before the next row overwrites it.
    workgroupBarrier();
    return out;
}

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
            pivot = row_pivot(base);
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
