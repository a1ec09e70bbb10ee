// Library, no entry point: one invocation's share of a plain row (no class
// sums: no smoothing, no dense targets), its online (max, Σ exp) four or
// sixteen classes a trip with one rescale each. Used by the subgroup kernel
// (a lane's share), by the narrow kernel on CPU-type adapters (a whole
// row, read as vec4s) and by cross_entropy_split_lanes.wgsl (a run of a
// row). Prepended after cross_entropy_row.wgsl and a logits_vec4_*.wgsl
// library (`load4`). CPU twin: src/cpu/reference.rs.

// A lane's online (max, Σ exp) over classes lo, lo + step, ... when no class
// sums are needed: four loads a trip and one rescale per four classes.
fn plain_logit_sums(base: u32, lo: u32, step: u32) -> RowSums {
    var state = vec2<f32>(bitcast<f32>(0xff800000u), 0.0);
    var seen = nothing_seen();
    var bad = 0u;
    let classes = params.classes;
    var c = lo;
    for (; c + 3u * step < classes; c += 4u * step) {
        let r0 = load_logit(base + c);
        let r1 = load_logit(base + c + step);
        let r2 = load_logit(base + c + 2u * step);
        let r3 = load_logit(base + c + 3u * step);
        let r = vec4<f32>(r0, r1, r2, r3);
        seen = see(seen, r);
        state = push4(state, soft_cap4(r));
    }
    for (; c < classes; c += step) {
        let raw = load_logit(base + c);
        bad |= u32(is_poison(raw));
        state = lse_push(state, soft_cap(raw));
    }
    return RowSums(state, 0.0, 0.0, bad | poison_seen(seen));
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

// The bits of a lane's values, as two integer maxima, enough to tell
// whether NaN or +inf was among them: as u32 only a negative NaN lies above
// −inf (0xff800000), as i32 only +inf and positive NaNs reach 0x7f800000.
// Two integer ops a value, where is_poison takes five or so; no float rule
// can reorder or drop them.
struct Seen {
    unsigned: vec4<u32>,
    signed: vec4<i32>,
}

fn nothing_seen() -> Seen {
    return Seen(vec4<u32>(0u), vec4<i32>(bitcast<i32>(0x80000000u)));
}

fn see(seen: Seen, r: vec4<f32>) -> Seen {
    return Seen(max(seen.unsigned, bitcast<vec4<u32>>(r)), max(seen.signed, bitcast<vec4<i32>>(r)));
}

fn poison_seen(seen: Seen) -> u32 {
    let u = seen.unsigned;
    let i = seen.signed;
    let top_unsigned = max(max(u.x, u.y), max(u.z, u.w));
    let top_signed = max(max(i.x, i.y), max(i.z, i.w));
    return u32(top_unsigned > 0xff800000u || top_signed >= 0x7f800000);
}

fn soft_cap4(r: vec4<f32>) -> vec4<f32> {
    if has(FLAG_SOFTCAP) {
        return params.softcap * tanh(r / params.softcap);
    }
    return r;
}

// `plain_logit_sums` over vec4s: lane `lo` takes vec4s lo, lo + step, ...,
// four loads a trip and one rescale per sixteen classes. The row starts at
// a multiple of 4 (FLAG_VEC4).
fn plain_logit_sums_vec4(base: u32, lo: u32, step: u32) -> RowSums {
    return plain_vec4_sums(base / 4u, lo, params.classes / 4u, step);
}

// The same over the `count` vec4s from vec4 `first` (a whole row, or one
// run of a split row).
fn plain_vec4_sums(first: u32, lo: u32, count: u32, step: u32) -> RowSums {
    var state = vec2<f32>(bitcast<f32>(0xff800000u), 0.0);
    var seen = nothing_seen();
    var v = lo;
    for (; v + 3u * step < count; v += 4u * step) {
        let r0 = load4(first + v);
        let r1 = load4(first + v + step);
        let r2 = load4(first + v + 2u * step);
        let r3 = load4(first + v + 3u * step);
        seen = see(see(see(see(seen, r0), r1), r2), r3);
        state = push16(state, soft_cap4(r0), soft_cap4(r1), soft_cap4(r2), soft_cap4(r3));
    }
    for (; v < count; v += step) {
        let r = load4(first + v);
        seen = see(seen, r);
        state = push4(state, soft_cap4(r));
    }
    return RowSums(state, 0.0, 0.0, poison_seen(seen));
}

// Folds sixteen soft-capped logits into a lane's (max, Σ exp) with one
// rescale.
fn push16(state: vec2<f32>, a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32>) -> vec2<f32> {
    let top = max(max(a, b), max(c, d));
    let raised = raise_max(state, max(max(top.x, top.y), max(top.z, top.w)));
    if is_neg_inf(raised.x) {
        return raised;
    }
    let m = vec4<f32>(raised.x);
    let e = (exp(a - m) + exp(b - m)) + (exp(c - m) + exp(d - m));
    return vec2<f32>(raised.x, raised.y + ((e.x + e.y) + (e.z + e.w)));
}
