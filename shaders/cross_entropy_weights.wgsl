// The weights pre-pass of the single-read kernels: Σ ω_n, V and Z, folded
// row by row and combined exactly as the forward kernel (wide or narrow)
// folds and combines them, so that reduce_partials takes them to a root
// with the same denominators, to the bit, as the forward pass's. The host
// puts that root one past the forward pass's final partial; the forward
// pass then overwrites the rest. Reads no logits. Prepended with
// partial.wgsl, partial_tree.wgsl, cross_entropy_row.wgsl, logits_f32.wgsl and
// cross_entropy_forward.wgsl. Host side: src/gpu/cross_entropy.rs.

// The workgroup size: a pipeline-overridable constant, set from
// GpuOptions::narrow_workgroup_size (the same for the narrow, single-read
// narrow and weights kernels, whose trees must match); the default is
// gpu::cross_entropy::NARROW_WORKGROUP_SIZE.
override WG: u32 = 128u;

@group(0) @binding(1) var<storage, read> logits: array<LogitWord>; // unused

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let index = wid.y * groups.x + wid.x;
    var partial = identity_partial();
    if has(FLAG_NARROW_PARTITION) {
        // Workgroup `index` replays the narrow kernel's group `index`: thread
        // t folds rows first + t, first + t + WG, ..., then the tree.
        let first = index * params.rows_per_group;
        if first >= params.chunk_rows {
            return;
        }
        let last = min(first + params.rows_per_group, params.chunk_rows);
        for (var local_row = first + lid; local_row < last; local_row += WG) {
            fold_weight(row_weight(params.row_base + local_row, &partial), &partial);
        }
        combine_workgroup_partials(lid, partial);
        if lid == 0u {
            partials[params.group_base + index] = shared_partials[0];
        }
    } else {
        // Invocation t replays the wide kernel's group index·WG + t, whose
        // thread 0 folds its rows in order.
        let group = index * WG + lid;
        let first = group * params.rows_per_group;
        if first >= params.chunk_rows {
            return;
        }
        let last = min(first + params.rows_per_group, params.chunk_rows);
        for (var local_row = first; local_row < last; local_row++) {
            fold_weight(row_weight(params.row_base + local_row, &partial), &partial);
        }
        partials[params.group_base + group] = partial;
    }
}
