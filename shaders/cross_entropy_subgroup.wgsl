// Fused per-example cross-entropy with a subgroup per row: the lanes of a
// subgroup stride over a row's classes (neighbouring lanes read neighbouring
// floats) and subgroup operations combine them. With SHARED_FINISH the k-th
// row a subgroup walks is finished by lane k mod (subgroup size), a
// subgroup's worth of rows at a time, so that every lane does that work,
// and a shared-memory tree combines the invocations' partials once per
// workgroup; without it lane 0 finishes each row and invocation 0 combines
// the subgroups' partials in order. No barrier per row. Needs
// `Features::SUBGROUP`. Subgroup s of a workgroup takes rows first + s,
// first + s + num_subgroups, ... Prepended with
// partial.wgsl, partial_tree.wgsl, cross_entropy_row.wgsl and
// cross_entropy_forward.wgsl.
// Prepended also with a logits_*.wgsl library (`load_logit`), with
// logits_vec4_binding.wgsl (f32 logits only) or logits_vec4_scalar.wgsl
// (`load4`), and with cross_entropy_plain.wgsl. Host side:
// src/gpu/cross_entropy.rs.

// The workgroup size: a pipeline-overridable constant, set from
// GpuOptions::subgroup_workgroup_size; the default is
// gpu::cross_entropy::SUBGROUP_WORKGROUP_SIZE.
override WG: u32 = 128u;
// Whether the lanes share the row finishing (set from
// GpuOptions::shared_row_finish; by default on CPU-type adapters only).
override SHARED_FINISH: bool = true;

@group(0) @binding(1) var<storage, read> logits: array<LogitWord>; // this chunk

// A row's combined sums, held by the lane that will finish it.
struct HeldRow {
    row: u32,
    sums: RowSums,
    pivot: f32,
    prob_total: f32,
}

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
    var held: HeldRow;
    var filled = 0u; // lanes holding a row, uniform across the subgroup
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
            if needs_class_sums() {
                pivot = row_pivot(base);
                sums = subgroup_logit_sums(logit_sums(base, pivot, lane, lanes));
            } else if has(FLAG_VEC4) {
                sums = subgroup_logit_sums(plain_logit_sums_vec4(base, lane, lanes));
            } else {
                sums = subgroup_logit_sums(plain_logit_sums(base, lane, lanes));
            }
        }
        if !SHARED_FINISH {
            if lane == 0u {
                finish_row(local_row, sums, pivot, prob_total, &partial);
            }
            continue;
        }
        if lane == filled {
            held = HeldRow(local_row, sums, pivot, prob_total);
        }
        filled += 1u;
        if filled == lanes {
            finish_row(held.row, held.sums, held.pivot, held.prob_total, &partial);
            filled = 0u;
        }
    }
    if SHARED_FINISH {
        if lane < filled {
            finish_row(held.row, held.sums, held.pivot, held.prob_total, &partial);
        }
        combine_workgroup_partials(lid, partial);
        if lid == 0u {
            partials[params.group_base + group] = shared_partials[0];
        }
        return;
    }
    if lane == 0u {
        shared_partials[subgroup] = partial;
    }
    workgroupBarrier();
    if lid == 0u {
        var total = shared_partials[0];
        for (var s = 1u; s < subgroups; s++) {
            total = combine(total, shared_partials[s]);
        }
        partials[params.group_base + group] = total;
    }
}
