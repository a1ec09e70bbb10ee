// Fused per-example cross-entropy (DESIGN §2). One workgroup walks
// `rows_per_group` consecutive rows; for each row its threads stride over the
// classes with an online log-sum-exp, then thread 0 finishes the row, writes
// L_n and folds it into the workgroup's compensated partial.
// Host side: src/gpu/cross_entropy.rs. CPU twin: src/cpu/reference.rs.

// Keep in sync with gpu::cross_entropy::WORKGROUP_SIZE.
const WG: u32 = 128u;

const FLAG_DENSE: u32 = 1u;
const FLAG_PROBABILITIES: u32 = 2u;
const FLAG_CLASS_WEIGHTS: u32 = 4u;
const FLAG_SAMPLE_WEIGHTS: u32 = 8u;
const FLAG_IGNORE_INDEX: u32 = 16u;
const FLAG_SMOOTHING: u32 = 32u;
const NO_ROW: u32 = 0xffffffffu;
const PROB_EPS: f32 = 1e-7;

// Keep in sync with gpu::cross_entropy::Params.
struct Params {
    batch: u32,
    classes: u32,
    chunk_rows: u32,      // rows bound in this chunk
    row_base: u32,        // global index of the chunk's first row
    rows_per_group: u32,
    group_base: u32,      // partial index of the chunk's first workgroup
    flags: u32,
    ignore_index: i32,
    label_smoothing: f32,
    class_weight_sum: f32, // Σ_c w_c
    _pad0: u32,           // always 0; see opaque()
    _pad1: u32,
}

// Keep in sync with gpu::Partial (and reduce_partials.wgsl).
struct Partial {
    sum: vec2<f32>,               // float-float Σ L_n
    weight_sum: vec2<f32>,        // float-float Σ ω_n
    sample_weight_sum: vec2<f32>, // float-float Σ s_n over rows not ignored
    count: u32,
    nonzero_count: u32,
    nonfinite_rows: u32,
    first_bad_row: u32,
    bad_label: i32,
    first_nonfinite_row: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> dense_targets: array<f32>;
@group(0) @binding(3) var<storage, read> labels: array<i32>;
@group(0) @binding(4) var<storage, read> class_weights: array<f32>;
@group(0) @binding(5) var<storage, read> sample_weights: array<f32>;
@group(0) @binding(6) var<storage, read_write> per_example: array<f32>;
@group(0) @binding(7) var<storage, read_write> partials: array<Partial>;

var<workgroup> sh_max: array<f32, WG>;
var<workgroup> sh_sum: array<f32, WG>;
var<workgroup> sh_acc: array<f32, WG>;
var<workgroup> sh_tot: array<f32, WG>;
var<workgroup> sh_bad: array<u32, WG>;

fn has(flag: u32) -> bool {
    return (params.flags & flag) != 0u;
}

fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

fn is_neg_inf(x: f32) -> bool {
    return bitcast<u32>(x) == 0xff800000u;
}

// NaN or +inf: the row's loss is NaN.
fn is_poison(x: f32) -> bool {
    return !is_finite(x) && !is_neg_inf(x);
}

// Built from a uniform so that no compiler folds it away.
fn quiet_nan() -> f32 {
    return bitcast<f32>(0x7fc00000u | (params.flags & 0u));
}

fn class_weight(c: u32) -> f32 {
    if has(FLAG_CLASS_WEIGHTS) {
        return class_weights[c];
    }
    return 1.0;
}

// An identity the compiler cannot see through: the uniform word is always 0.
// Without it, fast-math rewrites ((a + b) - a) to b and erases the two-sum.
fn opaque(x: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) ^ params._pad0);
}

// Error-free sum of two float-floats (Knuth two-sum, then renormalise).
fn ff_add(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let s = opaque(a.x + b.x);
    if !is_finite(s) {
        return vec2<f32>(s, 0.0);
    }
    let bb = opaque(s - a.x);
    let e = (a.x - opaque(s - bb)) + (b.x - bb);
    let t = opaque(e + a.y + b.y);
    let hi = opaque(s + t);
    return vec2<f32>(hi, t - opaque(hi - s));
}

// a·b as a float-float; where fma is not fused the low word is 0.
fn two_prod(a: f32, b: f32) -> vec2<f32> {
    let p = opaque(a * b);
    if !is_finite(p) {
        return vec2<f32>(p, 0.0);
    }
    return vec2<f32>(p, fma(a, b, -p));
}

// Online log-sum-exp state (max, Σ exp(x − max)).
fn lse_push(state: vec2<f32>, x: f32) -> vec2<f32> {
    if is_neg_inf(x) {
        return state;
    }
    if x > state.x {
        var s = 1.0;
        if state.y > 0.0 {
            s += state.y * exp(state.x - x);
        }
        return vec2<f32>(x, s);
    }
    return vec2<f32>(state.x, state.y + exp(x - state.x));
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

// Tree-reduces the shared arrays into slot 0; call from uniform control flow.
fn reduce_workgroup(lid: u32) {
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
    let classes = params.classes;
    let dense = has(FLAG_DENSE);
    let probabilities = has(FLAG_PROBABILITIES);
    let smoothing = has(FLAG_SMOOTHING);
    let eps = params.label_smoothing;
    let eps_per_class = eps / f32(classes);
    let last = min(first + params.rows_per_group, params.chunk_rows);

    var acc_sum = vec2<f32>(0.0);
    var acc_weight = vec2<f32>(0.0);
    var acc_sample_weight = vec2<f32>(0.0);
    var count = 0u;
    var nonzero = 0u;
    var nonfinite = 0u;
    var first_bad = NO_ROW;
    var bad_label = 0i;
    var first_nonfinite = NO_ROW;

    for (var local_row = first; local_row < last; local_row++) {
        let base = local_row * classes;
        var bad = 0u;
        var lse = vec2<f32>(bitcast<f32>(0xff800000u), 0.0);
        var acc = 0.0;   // Σ a_c·(x_c − pivot), or Σ a_c·ℓ_c for probabilities
        var total = 0.0; // Σ a_c (dense logits only)
        var pivot = 0.0;
        var prob_sum = 0.0;

        if probabilities {
            for (var c = lid; c < classes; c += WG) {
                let p = logits[base + c];
                bad |= u32(!is_finite(p));
                prob_sum += p;
            }
            sh_acc[lid] = prob_sum;
            sh_max[lid] = 0.0;
            sh_sum[lid] = 0.0;
            sh_tot[lid] = 0.0;
            sh_bad[lid] = bad;
            reduce_workgroup(lid);
            prob_sum = sh_acc[0];
            bad = sh_bad[0];
            if dense || smoothing {
                for (var c = lid; c < classes; c += WG) {
                    var a = class_weight(c);
                    if dense {
                        a *= (1.0 - eps) * dense_targets[base + c] + eps_per_class;
                    }
                    if a != 0.0 {
                        acc += a * log(clamp(logits[base + c] / prob_sum, PROB_EPS, 1.0 - PROB_EPS));
                    }
                }
            }
        } else {
            let x0 = logits[base];
            pivot = select(0.0, x0, is_finite(x0));
            for (var c = lid; c < classes; c += WG) {
                let x = logits[base + c];
                bad |= u32(is_poison(x));
                lse = lse_push(lse, x);
                if dense || smoothing {
                    var a = class_weight(c);
                    if dense {
                        a *= (1.0 - eps) * dense_targets[base + c] + eps_per_class;
                        total += a;
                    }
                    if a != 0.0 {
                        acc += a * (x - pivot);
                    }
                }
            }
        }
        // Workgroup-uniform exit of the row; the reduction below is shared.
        workgroupBarrier();
        sh_max[lid] = lse.x;
        sh_sum[lid] = lse.y;
        sh_acc[lid] = acc;
        sh_tot[lid] = total;
        sh_bad[lid] = bad;
        reduce_workgroup(lid);

        if lid == 0u {
            let row = params.row_base + local_row;
            let m = sh_max[0];
            let s = sh_sum[0];
            let a_sum = sh_acc[0];
            var poisoned = sh_bad[0] != 0u;
            if !probabilities && s <= 0.0 {
                poisoned = true; // every logit is −inf
            }
            var sw = 1.0;
            if has(FLAG_SAMPLE_WEIGHTS) {
                sw = sample_weights[row];
            }
            var counted = true;
            var loss = 0.0;
            var omega = vec2<f32>(sw, 0.0);
            if dense {
                if probabilities {
                    loss = -a_sum;
                } else {
                    loss = ((m - pivot) + log(s)) * sh_tot[0] - a_sum;
                }
            } else {
                let y = labels[row];
                if has(FLAG_IGNORE_INDEX) && y == params.ignore_index {
                    counted = false;
                    poisoned = false;
                    omega = vec2<f32>(0.0);
                } else if y < 0 || u32(y) >= classes {
                    counted = false;
                    poisoned = false;
                    omega = vec2<f32>(0.0);
                    if first_bad == NO_ROW {
                        first_bad = row;
                        bad_label = y;
                    }
                } else {
                    let wy = class_weight(u32(y));
                    omega = two_prod(sw, wy);
                    let hard = (1.0 - eps) * wy;
                    var nll = 0.0;
                    var smoothed = 0.0;
                    if probabilities {
                        let ly = log(clamp(logits[base + u32(y)] / prob_sum, PROB_EPS, 1.0 - PROB_EPS));
                        if hard != 0.0 {
                            nll = -hard * ly;
                        }
                        smoothed = -eps_per_class * a_sum;
                    } else {
                        if hard != 0.0 {
                            nll = hard * ((m - logits[base + u32(y)]) + log(s));
                        }
                        if smoothing {
                            smoothed = eps_per_class * (((m - pivot) + log(s)) * params.class_weight_sum - a_sum);
                        }
                    }
                    loss = nll + smoothed;
                }
            }
            if counted {
                if sw == 0.0 {
                    loss = 0.0;
                } else {
                    loss *= sw;
                }
            }
            if poisoned {
                loss = quiet_nan();
            }
            per_example[row] = loss;
            if !is_finite(loss) {
                nonfinite += 1u;
                if first_nonfinite == NO_ROW {
                    first_nonfinite = row;
                }
            }
            acc_sum = ff_add(acc_sum, vec2<f32>(loss, 0.0));
            acc_weight = ff_add(acc_weight, omega);
            if counted {
                acc_sample_weight = ff_add(acc_sample_weight, vec2<f32>(sw, 0.0));
                count += 1u;
                nonzero += u32(sw != 0.0);
            }
        }
    }

    if lid == 0u {
        partials[params.group_base + group] = Partial(
            acc_sum,
            acc_weight,
            acc_sample_weight,
            count,
            nonzero,
            nonfinite,
            first_bad,
            bad_label,
            first_nonfinite,
        );
    }
}
