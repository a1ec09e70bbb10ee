// Library, no entry point: one element of the gradient of the reduced loss
// with respect to the logits, shared by cross_entropy_grad.wgsl and
// cross_entropy_grad_in_place.wgsl. Prepended after partial.wgsl and
// cross_entropy_row.wgsl; the including file declares the bindings, with
// `row_stats` (lse, Σ_c w_c·t'_c per row, from the forward pass) and the
// reduced `partials` readable. CPU twin: the gradient in src/cpu/reference.rs.

// Keep in sync with gpu::cross_entropy::GRAD_WORKGROUP_SIZE.
const WG: u32 = 256u;

// 1 / the reduction's denominator, or 0 where it is 0 (div_no_nan).
fn gradient_scale() -> f32 {
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

// ∂(reduced loss)/∂x for element `c` of chunk row `local_row`:
// ((Σ_k a_k)·p_c − a_c + 2·s·z·lse·p_c)·(1 − (z_c/cap)²) / denominator.
fn gradient_at(local_row: u32, c: u32, scale: f32) -> f32 {
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
        total = row_stats[row].y;
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
    let lse = row_stats[row].x;
    if is_nan(lse) {
        return quiet_nan(); // NaN or +inf input, or every logit −inf
    }
    if sw == 0.0 {
        return 0.0;
    }
    let z = logit(base + c);
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
