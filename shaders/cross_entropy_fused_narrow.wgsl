// Single-read forward and gradient for narrow rows: cross_entropy_narrow.wgsl's
// walk (same arithmetic, same partials and per-example losses to the bit)
// in which each invocation keeps its row's stored logits in a private array
// and then writes the row's gradient from it, so the logits are read once.
// The reduction's denominator comes from the weights pre-pass
// (cross_entropy_weights.wgsl) at final_partial. Prepended like
// cross_entropy_fused_wide.wgsl, without the wide tree and with
// partial_tree.wgsl. Logits only; rows of
// at most NARROW_CACHE classes, a multiple of GRAD_PER_WORD.

// The workgroup size: a pipeline-overridable constant, set from
// GpuOptions::narrow_workgroup_size (the same for the narrow, single-read
// narrow and weights kernels, whose trees must match); the default is
// gpu::cross_entropy::NARROW_WORKGROUP_SIZE.
override WG: u32 = 128u;
// Keep in sync with gpu::cross_entropy::NARROW_CACHE_CLASSES.
const NARROW_CACHE: u32 = 64u;

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
    let last = min(first + params.rows_per_group, params.chunk_rows);
    let scale = gradient_scale();
    let class_sums = needs_class_sums();
    let words = params.classes / GRAD_PER_WORD;
    var partial = identity_partial();
    var cache: array<f32, NARROW_CACHE>;
    for (var local_row = first + lid; local_row < last; local_row += WG) {
        let base = local_row * params.classes;
        let pivot = row_pivot(base);
        var sums = empty_row_sums();
        for (var c = 0u; c < params.classes; c++) {
            let raw = load_logit(base + c);
            cache[c] = raw;
            push_logit(&sums, base, c, raw, pivot, class_sums);
        }
        finish_row(local_row, sums, pivot, 0.0, &partial);
        let lse = stored_lse(sums);
        for (var word = 0u; word < words; word++) {
            let c = word * GRAD_PER_WORD;
            var values = vec2<f32>(0.0);
            for (var k = 0u; k < GRAD_PER_WORD; k++) {
                values[k] = gradient_value(local_row, c + k, cache[c + k], lse, sums.total, scale);
            }
            store_gradient((base + c) / GRAD_PER_WORD, gradient_word(values));
        }
    }
    combine_workgroup_partials(lid, partial);
    if lid == 0u {
        partials[params.group_base + group] = shared_partials[0];
    }
}
