// Library, no entry point: one invocation's share of a plain row (no class
// sums: no smoothing, no dense targets), its online (max, Σ exp) four or
// eight classes a trip with one rescale each. Used by the subgroup kernel
// (a lane's share), by the narrow kernel on CPU-type adapters (a whole
// row, read as vec4s) and by cross_entropy_split_lanes.wgsl (a run of a
// row). Prepended after cross_entropy_row.wgsl and a logits_vec4_*.wgsl
// library (`load4`). CPU twin: src/cpu/reference.rs.

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
    return plain_vec4_sums(base / 4u, lo, params.classes / 4u, step);
}

// The same over the `count` vec4s from vec4 `first` (a whole row, or one
// run of a split row).
fn plain_vec4_sums(first: u32, lo: u32, count: u32, step: u32) -> RowSums {
    var state = vec2<f32>(bitcast<f32>(0xff800000u), 0.0);
    var bad = 0u;
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
