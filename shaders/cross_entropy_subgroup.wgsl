// Fused per-example cross-entropy with a subgroup per row: the lanes of a
// subgroup stride over a row's classes (neighbouring lanes read neighbouring
// floats) and subgroup operations combine them. The k-th row a subgroup
// walks is finished by lane k mod (subgroup size), a subgroup's worth of
// rows at a time, so that every lane does that work. No barrier per row; a
// shared-memory tree combines the invocations' partials once per
// workgroup. Needs `Features::SUBGROUP`. Subgroup s of a workgroup takes
// rows first + s, first + s + num_subgroups, ... Prepended with
// partial.wgsl, partial_tree.wgsl, cross_entropy_row.wgsl and
// cross_entropy_forward.wgsl.
// Prepended also with a logits_*.wgsl library (`load_logit`) and with
// logits_vec4_binding.wgsl (f32 logits only) or logits_vec4_scalar.wgsl
// (`load4`). Host side: src/gpu/cross_entropy.rs.

// The workgroup size: a pipeline-overridable constant, set from
// GpuOptions::subgroup_workgroup_size; the default is
// gpu::cross_entropy::SUBGROUP_WORKGROUP_SIZE.
override WG: u32 = 128u;

@group(0) @binding(1) var<storage, read> logits: array<LogitWord>; // this chunk

// A row's combined sums, held by the lane that will finish it.
struct HeldRow {
    row: u32,
    sums: RowSums,
    pivot: f32,
    prob_total: f32,
}

// A lane's online (max, Σ exp) over classes lo, lo + step, ... when no class
// sums are needed: four loads a trip and one rescale per four classes.
fn plain_logit_sums(base: u32, lo: u32, step: u32) -> RowSums {
    var state = vec2<f32>(bitcast<f32>(0xff800000u), 0.0);
    var bad = 0u;
    let classes = params.classes;
    var c = lo;
    for (; c + 3u * step < classes; c += 4u * step) {
        let r0 = load_logit(base + c);
        let r1 = load_logit(base + c + step);
        let r2 = load_logit(base + c + 2u * step);
        let r3 = load_logit(base + c + 3u * step);
        let r = vec4<f32>(r0, r1, r2, r3);
        bad |= poison4(r);
        state = push4(state, soft_cap4(r));
    }
    for (; c < classes; c += step) {
        let raw = load_logit(base + c);
        bad |= u32(is_poison(raw));
        state = lse_push(state, soft_cap(raw));
    }
    return RowSums(state, 0.0, 0.0, bad);
}

// A lane's (max, Σ exp) with the max raised to `top` where that is
// higher: one rescale of the sum.
fn raise_max(state: vec2<f32>, top: f32) -> vec2<f32> {
    if top > state.x {
        var s = state.y;
        if s > 0.0 {
            s *= exp(state.x - top);
        }
        return vec2<f32>(top, s);
    }
    return state;
}

// Folds four soft-capped logits into a lane's (max, Σ exp) with one rescale.
fn push4(state: vec2<f32>, x: vec4<f32>) -> vec2<f32> {
    let raised = raise_max(state, max(max(x.x, x.y), max(x.z, x.w)));
    if is_neg_inf(raised.x) {
        return raised;
    }
    let e = exp(x - vec4<f32>(raised.x));
    return vec2<f32>(raised.x, raised.y + ((e.x + e.y) + (e.z + e.w)));
}

fn poison4(r: vec4<f32>) -> u32 {
    return u32(is_poison(r.x)) | u32(is_poison(r.y)) | u32(is_poison(r.z)) | u32(is_poison(r.w));
}

fn soft_cap4(r: vec4<f32>) -> vec4<f32> {
    if has(FLAG_SOFTCAP) {
        return params.softcap * tanh(r / params.softcap);
    }
    return r;
}

// `plain_logit_sums` over vec4s: lane `lo` takes vec4s lo, lo + step, ...,
// two loads a trip and one rescale per eight classes. The row starts at a
// multiple of 4 (FLAG_VEC4).
fn plain_logit_sums_vec4(base: u32, lo: u32, step: u32) -> RowSums {
    var state = vec2<f32>(bitcast<f32>(0xff800000u), 0.0);
    var bad = 0u;
    let first = base / 4u;
    let count = params.classes / 4u;
    var v = lo;
    for (; v + step < count; v += 2u * step) {
        let r0 = load4(first + v);
        let r1 = load4(first + v + step);
        bad |= poison4(r0) | poison4(r1);
        state = push8(state, soft_cap4(r0), soft_cap4(r1));
    }
    if v < count {
        let r = load4(first + v);
        bad |= poison4(r);
        state = push4(state, soft_cap4(r));
    }
    return RowSums(state, 0.0, 0.0, bad);
}

// Folds eight soft-capped logits into a lane's (max, Σ exp) with one
// rescale.
fn push8(state: vec2<f32>, x: vec4<f32>, y: vec4<f32>) -> vec2<f32> {
    let both = max(x, y);
    let raised = raise_max(state, max(max(both.x, both.y), max(both.z, both.w)));
    if is_neg_inf(raised.x) {
        return raised;
    }
    let m = vec4<f32>(raised.x);
    let e = exp(x - m) + exp(y - m);
    return vec2<f32>(raised.x, raised.y + ((e.x + e.y) + (e.z + e.w)));
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
        if lane == filled {
            held = HeldRow(local_row, sums, pivot, prob_total);
        }
        filled += 1u;
        if filled == lanes {
            finish_row(held.row, held.sums, held.pivot, held.prob_total, &partial);
            filled = 0u;
        }
    }
    if lane < filled {
        finish_row(held.row, held.sums, held.pivot, held.prob_total, &partial);
    }
    combine_workgroup_partials(lid, partial);
    if lid == 0u {
        partials[params.group_base + group] = shared_partials[0];
    }
}
