// Library, no entry point: the forward kernels' bindings and the end of a
// row, shared by cross_entropy_wide.wgsl, cross_entropy_narrow.wgsl, the
// single-read kernels and cross_entropy_weights.wgsl. Prepended after
// partial.wgsl, cross_entropy_row.wgsl and a logits_*.wgsl library; the
// including file declares binding 1, `logits: array<LogitWord>` (read-only,
// or read_write where the gradient is written over it).

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> dense_targets: array<f32>; // this chunk
@group(0) @binding(3) var<storage, read> labels: array<i32>;        // whole batch
@group(0) @binding(4) var<storage, read> class_weights: array<f32>;
@group(0) @binding(5) var<storage, read> sample_weights: array<f32>;
@group(0) @binding(6) var<storage, read_write> per_example: array<f32>;
@group(0) @binding(7) var<storage, read_write> partials: array<Partial>;
// Planar: lse of row n at n, Σ_c w_c·t'_c (dense) at batch + n.
@group(0) @binding(8) var<storage, read_write> row_stats: array<f32>;

// What a row weighs, whatever its logits.
struct RowWeight {
    sw: f32,          // s_n
    omega: vec2<f32>, // ω_n as a float-float
    counted: bool,    // not ignored, label in range
    label: i32,
}

// Reads row `row`'s sample weight and label; a negative or NaN sample
// weight and a label out of range are recorded in `partial`.
fn row_weight(row: u32, partial: ptr<function, Partial>) -> RowWeight {
    var w = RowWeight(1.0, vec2<f32>(0.0), true, 0i);
    if has(FLAG_SAMPLE_WEIGHTS) {
        w.sw = sample_weights[row];
        if (is_nan(w.sw) || w.sw < 0.0) && row < (*partial).first_bad_weight_row {
            (*partial).first_bad_weight_row = row;
            (*partial).bad_weight = w.sw;
        }
    }
    w.omega = vec2<f32>(w.sw, 0.0);
    if !has(FLAG_DENSE) {
        let y = labels[row];
        w.label = y;
        if has(FLAG_IGNORE_INDEX) && y == params.ignore_index {
            w.counted = false;
        } else if y < 0 || u32(y) >= params.classes {
            w.counted = false;
            if row < (*partial).first_bad_row {
                (*partial).first_bad_row = row;
                (*partial).bad_label = y;
            }
        } else {
            w.omega = two_prod(w.sw, class_weight(u32(y)));
        }
        if !w.counted {
            w.omega = vec2<f32>(0.0);
        }
    }
    return w;
}

// Folds a row's weights into `partial`: Σ ω_n, and for counted rows Σ s_n,
// V and Z. The same sequence in every kernel, so that the weights pre-pass
// reduces to the same bits as the forward pass.
fn fold_weight(w: RowWeight, partial: ptr<function, Partial>) {
    (*partial).weight_sum = ff_add((*partial).weight_sum, w.omega);
    if w.counted {
        (*partial).sample_weight_sum = ff_add((*partial).sample_weight_sum, vec2<f32>(w.sw, 0.0));
        (*partial).count += 1u;
        (*partial).nonzero_count += u32(w.sw != 0.0);
    }
}

// Finishes row `local_row` from its combined sums: writes L_n and folds the
// row into `partial`. For logits `prob_total` is unused; for probabilities
// `lse` and `pivot` are.
fn finish_row(local_row: u32, sums: RowSums, pivot: f32, prob_total: f32, partial: ptr<function, Partial>) {
    let row = params.row_base + local_row;
    let base = local_row * params.classes;
    let probabilities = has(FLAG_PROBABILITIES);
    let eps = params.label_smoothing;
    let eps_per_class = eps / f32(params.classes);
    let m = sums.lse.x;
    let s = sums.lse.y;
    let w = row_weight(row, partial);
    let sw = w.sw;
    // NaN or +inf, or all −inf; an ignored row stays 0.
    let poisoned = w.counted && (sums.bad != 0u || (!probabilities && s <= 0.0));
    var loss = 0.0;
    if w.counted {
        if has(FLAG_DENSE) {
            if probabilities {
                loss = -sums.acc;
            } else {
                loss = ((m - pivot) + log(s)) * sums.total - sums.acc;
            }
        } else {
            let y = u32(w.label);
            let hard = (1.0 - eps) * class_weight(y);
            var nll = 0.0;
            var smoothed = 0.0;
            if probabilities {
                if hard != 0.0 {
                    nll = -hard * clipped_log(load_logit(base + y), prob_total);
                }
                smoothed = -eps_per_class * sums.acc;
            } else {
                if hard != 0.0 {
                    nll = hard * ((m - logit(base + y)) + log(s));
                }
                if has(FLAG_SMOOTHING) {
                    smoothed = eps_per_class * (((m - pivot) + log(s)) * params.class_weight_sum - sums.acc);
                }
            }
            loss = nll + smoothed;
        }
    }
    let lse = m + log(s);
    if w.counted && has(FLAG_Z_LOSS) {
        loss += params.z_loss * lse * lse;
    }
    if w.counted {
        loss = select(loss * sw, 0.0, sw == 0.0);
    }
    if poisoned {
        loss = quiet_nan();
    }
    per_example[row] = loss;
    if has(FLAG_ROW_STATS) {
        row_stats[row] = stored_lse(sums);
        row_stats[params.batch + row] = sums.total;
    }
    if !is_finite(loss) {
        (*partial).nonfinite_rows += 1u;
        (*partial).first_nonfinite_row = min((*partial).first_nonfinite_row, row);
    }
    (*partial).sum = ff_add((*partial).sum, vec2<f32>(loss, 0.0));
    fold_weight(w, partial);
}
