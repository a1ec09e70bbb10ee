// Library, no entry point: the forward kernels' bindings and the end of a
// row, shared by cross_entropy_wide.wgsl and cross_entropy_narrow.wgsl.
// Prepended after partial.wgsl and cross_entropy_row.wgsl.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;        // this chunk
@group(0) @binding(2) var<storage, read> dense_targets: array<f32>; // this chunk
@group(0) @binding(3) var<storage, read> labels: array<i32>;        // whole batch
@group(0) @binding(4) var<storage, read> class_weights: array<f32>;
@group(0) @binding(5) var<storage, read> sample_weights: array<f32>;
@group(0) @binding(6) var<storage, read_write> per_example: array<f32>;
@group(0) @binding(7) var<storage, read_write> partials: array<Partial>;
@group(0) @binding(8) var<storage, read_write> row_stats: array<vec2<f32>>; // (lse, Σ_c w_c·t'_c)

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
    var poisoned = sums.bad != 0u || (!probabilities && s <= 0.0); // all −inf
    var sw = 1.0;
    if has(FLAG_SAMPLE_WEIGHTS) {
        sw = sample_weights[row];
    }
    var counted = true;
    var loss = 0.0;
    var omega = vec2<f32>(sw, 0.0);
    if has(FLAG_DENSE) {
        if probabilities {
            loss = -sums.acc;
        } else {
            loss = ((m - pivot) + log(s)) * sums.total - sums.acc;
        }
    } else {
        let y = labels[row];
        if has(FLAG_IGNORE_INDEX) && y == params.ignore_index {
            counted = false;
        } else if y < 0 || u32(y) >= params.classes {
            counted = false;
            if row < (*partial).first_bad_row {
                (*partial).first_bad_row = row;
                (*partial).bad_label = y;
            }
        } else {
            let wy = class_weight(u32(y));
            omega = two_prod(sw, wy);
            let hard = (1.0 - eps) * wy;
            var nll = 0.0;
            var smoothed = 0.0;
            if probabilities {
                if hard != 0.0 {
                    nll = -hard * clipped_log(logits[base + u32(y)], prob_total);
                }
                smoothed = -eps_per_class * sums.acc;
            } else {
                if hard != 0.0 {
                    nll = hard * ((m - logit(base + u32(y))) + log(s));
                }
                if has(FLAG_SMOOTHING) {
                    smoothed = eps_per_class * (((m - pivot) + log(s)) * params.class_weight_sum - sums.acc);
                }
            }
            loss = nll + smoothed;
        }
        if !counted {
            poisoned = false;
            omega = vec2<f32>(0.0);
        }
    }
    let lse = m + log(s);
    if counted && has(FLAG_Z_LOSS) {
        loss += params.z_loss * lse * lse;
    }
    if counted {
        loss = select(loss * sw, 0.0, sw == 0.0);
    }
    if poisoned {
        loss = quiet_nan();
    }
    per_example[row] = loss;
    if has(FLAG_ROW_STATS) {
        let no_lse = sums.bad != 0u || s <= 0.0;
        row_stats[row] = vec2<f32>(select(lse, quiet_nan(), no_lse), sums.total);
    }
    if !is_finite(loss) {
        (*partial).nonfinite_rows += 1u;
        (*partial).first_nonfinite_row = min((*partial).first_nonfinite_row, row);
    }
    (*partial).sum = ff_add((*partial).sum, vec2<f32>(loss, 0.0));
    (*partial).weight_sum = ff_add((*partial).weight_sum, omega);
    if counted {
        (*partial).sample_weight_sum = ff_add((*partial).sample_weight_sum, vec2<f32>(sw, 0.0));
        (*partial).count += 1u;
        (*partial).nonzero_count += u32(sw != 0.0);
    }
}
