// Library, no entry point: the uniform and the per-row math (DESIGN §2)
// shared by the forward kernels (wide, narrow) and the gradient kernels.
// The including files declare the bindings `params`, `logits`,
// `dense_targets`, `labels`, `class_weights` and `sample_weights`, and a
// logits_*.wgsl library reads the logits (`load_logit`, as f32 whatever
// their storage). The host prepends it (gpu::shader_source). CPU twin:
// src/cpu/reference.rs.

const FLAG_DENSE: u32 = 1u;
const FLAG_PROBABILITIES: u32 = 2u;
const FLAG_CLASS_WEIGHTS: u32 = 4u;
const FLAG_SAMPLE_WEIGHTS: u32 = 8u;
const FLAG_IGNORE_INDEX: u32 = 16u;
const FLAG_SMOOTHING: u32 = 32u;
const FLAG_SOFTCAP: u32 = 64u;
const FLAG_Z_LOSS: u32 = 128u;
const FLAG_ROW_STATS: u32 = 256u;
const FLAG_VEC4: u32 = 512u;       // rows may be read as vec4s (C % 4 == 0)
const FLAG_NARROW_PARTITION: u32 = 1024u; // cross_entropy_weights.wgsl only
const PROB_EPS: f32 = 1e-7;

// Keep in sync with gpu::cross_entropy::Params.
struct Params {
    batch: u32,
    classes: u32,
    chunk_rows: u32,       // rows bound in this chunk
    row_base: u32,         // global index of the chunk's first row
    rows_per_group: u32,
    group_base: u32,       // partial index of the chunk's first workgroup
    flags: u32,
    ignore_index: i32,
    label_smoothing: f32,
    class_weight_sum: f32, // Σ_c w_c
    zero: u32,             // always 0; see opaque()
    z_loss: f32,
    softcap: f32,
    final_partial: u32,    // index of the fully reduced partial (gradient)
    reduction: u32,        // gradient scaling: 0 none, 1 sum, 2 mean, 3 sobs, 4 sbnz
    segments: u32,         // runs per row in the split kernels (else 1)
}

// The flags a pipeline is built for: a pipeline-overridable constant, set
// to a call's flags on CPU-type adapters (GpuOptions::specialize_flags), so
// that the compiler drops the code of every option the call does not use
// (lavapipe runs both sides of a branch, masked); all ones elsewhere.
override FLAG_MASK: u32 = 0xffffffffu;

fn has(flag: u32) -> bool {
    return (params.flags & (FLAG_MASK & flag)) != 0u;
}

fn is_neg_inf(x: f32) -> bool {
    return bitcast<u32>(x) == 0xff800000u;
}

fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

// NaN or +inf: the row's loss is NaN.
fn is_poison(x: f32) -> bool {
    return !is_finite(x) && !is_neg_inf(x);
}

fn quiet_nan() -> f32 {
    return bitcast<f32>(0x7fc00000u | params.zero);
}

// A logit after the optional soft-cap.
fn soft_cap(x: f32) -> f32 {
    if has(FLAG_SOFTCAP) {
        return params.softcap * tanh(x / params.softcap);
    }
    return x;
}

// Logit i after the optional soft-cap.
fn logit(i: u32) -> f32 {
    return soft_cap(load_logit(i));
}

fn class_weight(c: u32) -> f32 {
    if has(FLAG_CLASS_WEIGHTS) {
        return class_weights[c];
    }
    return 1.0;
}

// a·b as a float-float; where fma is not fused the low word is 0.
fn two_prod(a: f32, b: f32) -> vec2<f32> {
    let p = opaque(a * b);
    if !is_finite(p) {
        return vec2<f32>(p, 0.0);
    }
    return vec2<f32>(p, fma(a, b, -p));
}

// Online log-sum-exp state (max, Σ exp(x − max)). One exp either way,
// e = exp(−|x − max|): a new max gives 1 + s·e, else s + e; no branch, so
// lanes that disagree do not pay for both sides. −inf adds nothing.
fn lse_push(state: vec2<f32>, x: f32) -> vec2<f32> {
    let e = exp(-abs(x - state.x));
    let rises = x > state.x;
    let pushed = vec2<f32>(max(x, state.x), select(state.y + e, 1.0 + state.y * e, rises));
    return select(pushed, state, is_neg_inf(x));
}

fn lse_merge(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let m = max(a.x, b.x);
    var s = 0.0;
    if a.y > 0.0 {
        s += a.y * exp(a.x - m);
    }
    if b.y > 0.0 {
        s += b.y * exp(b.x - m);
    }
    return vec2<f32>(m, s);
}

// One invocation's share of a row: classes lo, lo + step, ...
struct RowSums {
    lse: vec2<f32>, // online (max, Σ exp) of the logits
    acc: f32,       // Σ a_c·(x_c − pivot), or Σ a_c·ℓ_c for probabilities
    total: f32,     // Σ a_c (dense logits)
    bad: u32,       // saw NaN or +inf
}

fn row_pivot(base: u32) -> f32 {
    let x0 = logit(base);
    return select(0.0, x0, is_finite(x0));
}

// The a_c of the smoothing / dense sums, before the sample weight.
fn coefficient(base: u32, c: u32) -> f32 {
    var a = class_weight(c);
    if has(FLAG_DENSE) {
        let eps = params.label_smoothing;
        a *= (1.0 - eps) * dense_targets[base + c] + eps / f32(params.classes);
    }
    return a;
}

fn needs_class_sums() -> bool {
    return has(FLAG_DENSE) || has(FLAG_SMOOTHING);
}

fn empty_row_sums() -> RowSums {
    return RowSums(vec2<f32>(bitcast<f32>(0xff800000u), 0.0), 0.0, 0.0, 0u);
}

// Adds class c, whose stored logit is `raw`, to a share of a row's sums;
// `sums` is needs_class_sums(). The single-read kernels call it too, so that
// both paths do the same arithmetic.
fn push_logit(out: ptr<function, RowSums>, base: u32, c: u32, raw: f32, pivot: f32, sums: bool) {
    (*out).bad |= u32(is_poison(raw));
    let x = soft_cap(raw);
    (*out).lse = lse_push((*out).lse, x);
    if sums {
        let a = coefficient(base, c);
        (*out).total += a;
        if a != 0.0 {
            (*out).acc += a * (x - pivot);
        }
    }
}

fn logit_sums(base: u32, pivot: f32, lo: u32, step: u32) -> RowSums {
    var out = empty_row_sums();
    let sums = needs_class_sums();
    for (var c = lo; c < params.classes; c += step) {
        push_logit(&out, base, c, load_logit(base + c), pivot, sums);
    }
    return out;
}

// The log-sum-exp a row's gradient uses (and `row_lse` reports): NaN when
// the row saw NaN or +inf, or every logit was −inf.
fn stored_lse(sums: RowSums) -> f32 {
    let no_lse = sums.bad != 0u || sums.lse.y <= 0.0;
    return select(sums.lse.x + log(sums.lse.y), quiet_nan(), no_lse);
}

// First pass over probabilities: (Σ p, saw a non-finite value).
fn probability_total(base: u32, lo: u32, step: u32) -> vec2<f32> {
    var total = 0.0;
    var bad = 0.0;
    for (var c = lo; c < params.classes; c += step) {
        let p = load_logit(base + c);
        bad = max(bad, f32(!is_finite(p)));
        total += p;
    }
    return vec2<f32>(total, bad);
}

fn clipped_log(p: f32, total: f32) -> f32 {
    return log(clamp(p / total, PROB_EPS, 1.0 - PROB_EPS));
}

// Second pass over probabilities: Σ a_c·ℓ_c.
fn probability_sums(base: u32, total: f32, lo: u32, step: u32) -> f32 {
    var acc = 0.0;
    if needs_class_sums() {
        for (var c = lo; c < params.classes; c += step) {
            let a = coefficient(base, c);
            if a != 0.0 {
                acc += a * clipped_log(load_logit(base + c), total);
            }
        }
    }
    return acc;
}

