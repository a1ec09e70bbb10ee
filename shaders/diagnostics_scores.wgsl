// Per-example label-quality scores: self-confidence p_y, margin
// p_y − max_{k≠y} p_k and the predicted class (first argmax of the input),
// one invocation per row in one pass over the row. With a soft-cap the
// probabilities are those of cap·tanh(x/cap), as in the loss. CPU twin: src/diagnostics/scores.rs
// (`scores`). Host side: src/gpu/diagnostics.rs.

// Keep in sync with gpu::diagnostics::SCORES_WORKGROUP_SIZE.
const WG: u32 = 64u;
const FLAG_PROBABILITIES: u32 = 1u;
const FLAG_IGNORE_INDEX: u32 = 2u;
const FLAG_SOFTCAP: u32 = 4u;
const NO_CLASS: i32 = -1;

// Keep in sync with gpu::diagnostics::ScoresParams.
struct Params {
    rows: u32,
    classes: u32,
    flags: u32,
    ignore_index: i32,
    zero: u32, // always 0; keeps the NaN below a run-time value
    softcap: f32,
    _pad0: u32,
    _pad1: u32,
}

// Keep in sync with gpu::diagnostics::GpuScore.
struct Score {
    confidence: f32,
    margin: f32,
    predicted: i32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>; // these rows
@group(0) @binding(2) var<storage, read> labels: array<i32>; // these rows
@group(0) @binding(3) var<storage, read_write> scores: array<Score>;

fn bits(x: f32) -> u32 {
    return bitcast<u32>(x);
}

fn is_finite(x: f32) -> bool {
    return (bits(x) & 0x7f800000u) != 0x7f800000u;
}

fn is_nan(x: f32) -> bool {
    return (bits(x) & 0x7fffffffu) > 0x7f800000u;
}

fn is_neg_inf(x: f32) -> bool {
    return bits(x) == 0xff800000u;
}

fn is_pos_inf(x: f32) -> bool {
    return bits(x) == 0x7f800000u;
}

fn quiet_nan() -> f32 {
    return bitcast<f32>(0x7fc00000u | params.zero);
}

// A logit after the optional soft-cap: −inf gives −cap, and tanh is ±1 in
// f32 well inside the clamp.
fn soft_cap(x: f32) -> f32 {
    if (params.flags & FLAG_SOFTCAP) == 0u {
        return x;
    }
    if is_neg_inf(x) {
        return -params.softcap;
    }
    return params.softcap * tanh(clamp(x / params.softcap, -20.0, 20.0));
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = (wid.y * groups.x + wid.x) * WG + lid;
    if row >= params.rows {
        return;
    }
    let classes = params.classes;
    let base = row * classes;
    let y = labels[row];
    let valid = y >= 0 && u32(y) < classes;
    let ignored = !valid || ((params.flags & FLAG_IGNORE_INDEX) != 0u && y == params.ignore_index);
    let probabilities = (params.flags & FLAG_PROBABILITIES) != 0u;

    let neg_inf = bitcast<f32>(0xff800000u);
    var best = neg_inf;
    var best_k = NO_CLASS;
    var other = neg_inf; // max over k != y
    var poisoned = false;
    var m = neg_inf; // online log-sum-exp (m, s)
    var s = 0.0;
    var total = 0.0; // Σ p
    for (var c = 0u; c < classes; c += 1u) {
        let x = logits[base + c];
        if is_nan(x) {
            poisoned = true;
            continue;
        }
        if best_k == NO_CLASS || x > best {
            best = x;
            best_k = i32(c);
        }
        if i32(c) != y && x > other {
            other = x;
        }
        if probabilities {
            poisoned = poisoned || !is_finite(x);
            total += x;
        } else if is_pos_inf(x) {
            poisoned = true;
        } else {
            let z = soft_cap(x);
            if is_neg_inf(z) {
                continue;
            }
            if z > m {
                s = select(1.0, s * exp(m - z) + 1.0, s > 0.0);
                m = z;
            } else {
                s += exp(z - m);
            }
        }
    }

    var out = Score(quiet_nan(), quiet_nan(), NO_CLASS);
    if probabilities {
        poisoned = poisoned || !(total > 0.0);
    } else {
        poisoned = poisoned || !(s > 0.0);
    }
    if !poisoned {
        out.predicted = best_k;
        if !ignored {
            let xy = logits[base + u32(y)];
            var py = 0.0;
            var po = 0.0;
            if probabilities {
                py = xy / total;
                if !is_neg_inf(other) {
                    po = other / total;
                }
            } else {
                // The cap is monotone: the capped maximum is the cap of the
                // maximum.
                let lse = m + log(s);
                let zy = soft_cap(xy);
                let zo = soft_cap(other);
                if !is_neg_inf(zy) {
                    py = exp(zy - lse);
                }
                if classes > 1u && !is_neg_inf(zo) {
                    po = exp(zo - lse);
                }
            }
            out.confidence = py;
            out.margin = py - po;
        }
    }
    scores[row] = out;
}
