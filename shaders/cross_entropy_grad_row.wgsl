// Library, no entry point: one element of the gradient of the reduced loss
// with respect to the logits, shared by the two-read gradient kernels
// (cross_entropy_grad.wgsl, cross_entropy_grad_in_place.wgsl) and the
// single-read kernels (cross_entropy_fused_*.wgsl). Prepended after
// partial.wgsl, cross_entropy_row.wgsl and the logits and gradient storage
// libraries; the including file declares the bindings, with `row_stats`
// (planar: lse at n, Σ_c w_c·t'_c at batch + n) and the reduced `partials`
// readable. CPU twin: the gradient in src/cpu/reference.rs.

// 1 / the reduction's denominator, or 0 where it is 0 (div_no_nan). The
// denominator is read from the fully reduced partial at final_partial.
fn gradient_scale() -> f32 {
    if params.reduction <= 1u {
        return 1.0; // none, sum
    }
    let p = partials[params.final_partial];
    var denominator = 1.0;
    switch params.reduction {
        case 2u: { denominator = p.weight_sum.x + p.weight_sum.y; }
        case 3u: { denominator = f32(p.count); }
        case 4u: { denominator = f32(p.nonzero_count); }
        default: {}
    }
    return select(1.0 / denominator, 0.0, denominator == 0.0);
}

// ∂(reduced loss)/∂x for element `c` of chunk row `local_row`, whose stored
// logit is `raw`, from the row's `lse` and dense Σ_c w_c·t'_c:
// ((Σ_k a_k)·p_c − a_c + 2·s·z·lse·p_c)·(1 − (z_c/cap)²) / denominator.
fn gradient_value(local_row: u32, c: u32, raw: f32, lse: f32, dense_total: f32, scale: f32) -> f32 {
    let row = params.row_base + local_row;
    let base = local_row * params.classes;
    var sw = 1.0;
    if has(FLAG_SAMPLE_WEIGHTS) {
        sw = sample_weights[row];
    }
    let eps = params.label_smoothing;
    let eps_per_class = eps / f32(params.classes);
    var total = 0.0; // Σ_k a_k / s
    var own = 0.0;   // a_c / s
    if has(FLAG_DENSE) {
        total = dense_total;
        own = coefficient(base, c);
    } else {
        let y = labels[row];
        if has(FLAG_IGNORE_INDEX) && y == params.ignore_index {
            return 0.0;
        }
        let wy = class_weight(u32(y));
        total = (1.0 - eps) * wy + eps_per_class * params.class_weight_sum;
        own = eps_per_class * class_weight(c);
        if u32(y) == c {
            own += (1.0 - eps) * wy;
        }
    }
    if is_nan(lse) {
        return quiet_nan(); // NaN or +inf input, or every logit −inf
    }
    if sw == 0.0 {
        return 0.0;
    }
    let z = soft_cap(raw);
    let p = exp(z - lse);
    var dz = sw * (total * p - own);
    if has(FLAG_Z_LOSS) {
        dz += 2.0 * sw * params.z_loss * lse * p;
    }
    if has(FLAG_SOFTCAP) {
        let t = z / params.softcap;
        dz *= 1.0 - t * t;
    }
    return dz * scale;
}

// gradient_value for element `c` of chunk row `local_row`, reading the
// logit and the row stats from memory.
fn gradient_at(local_row: u32, c: u32, scale: f32) -> f32 {
    let row = params.row_base + local_row;
    let raw = load_logit(local_row * params.classes + c);
    return gradient_value(local_row, c, raw, row_stats[row], row_stats[params.batch + row], scale);
}

// The gradient of elements first and first + 1 (when `count` is 2) of the
// chunk, in the two lanes of a vec2.
fn gradient_pair(first: u32, count: u32, scale: f32) -> vec2<f32> {
    var values = vec2<f32>(0.0);
    for (var k = 0u; k < count; k++) {
        let element = first + k;
        let local_row = element / params.classes;
        values[k] = gradient_at(local_row, element - local_row * params.classes, scale);
    }
    return values;
}
