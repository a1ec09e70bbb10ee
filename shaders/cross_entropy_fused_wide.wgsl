// Single-read forward and gradient for wide rows that fit workgroup memory:
// cross_entropy_wide.wgsl's walk (same arithmetic, same partials and
// per-example losses to the bit) that also keeps the row's stored logits in
// `row_cache` and then writes the row's gradient from there, so the logits
// are read once. The reduction's denominator comes from the weights
// pre-pass (cross_entropy_weights.wgsl) at final_partial. Prepended with
// partial.wgsl, cross_entropy_row.wgsl, the logits and gradient storage
// libraries, cross_entropy_fused_out.wgsl or cross_entropy_fused_in_place.wgsl,
// cross_entropy_forward.wgsl, cross_entropy_grad_row.wgsl and
// cross_entropy_wide_tree.wgsl; the host prepends `const ROW_CACHE: u32`
// (gpu::cross_entropy::row_cache_classes). Logits only; rows of at most
// ROW_CACHE classes, a multiple of GRAD_PER_WORD.

var<workgroup> row_cache: array<f32, ROW_CACHE>;

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
    for (var local_row = first; local_row < last; local_row++) {
        let base = local_row * params.classes;
        let pivot = row_pivot(base);
        var sums = empty_row_sums();
        for (var c = lid; c < params.classes; c += WG) {
            let raw = load_logit(base + c);
            row_cache[c] = raw;
            push_logit(&sums, base, c, raw, pivot, class_sums);
        }
        share(lid, sums);
        let row_sums = reduce_workgroup(lid);
        if lid == 0u {
            finish_row(local_row, row_sums, pivot, 0.0, &partial);
        }
        // finish_row has read the target's logit before anyone overwrites it.
        storageBarrier();
        let lse = stored_lse(row_sums);
        for (var word = lid; word < words; word += WG) {
            let c = word * GRAD_PER_WORD;
            var values = vec2<f32>(0.0);
            for (var k = 0u; k < GRAD_PER_WORD; k++) {
                values[k] = gradient_value(local_row, c + k, row_cache[c + k], lse, row_sums.total, scale);
            }
            store_gradient((base + c) / GRAD_PER_WORD, gradient_word(values));
        }
        // Everyone is done with row_cache before the next row fills it.
        workgroupBarrier();
    }
    if lid == 0u {
        partials[params.group_base + group] = partial;
    }
}
