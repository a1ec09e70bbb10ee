// Second pass of a split row: one invocation per row merges the row's
// `params.segments` runs in order (written by cross_entropy_split_rows.wgsl
// into the segments buffer, bound here where the other kernels bind the
// dense targets, which a finished run no longer needs) and finishes the row
// like the narrow kernel; a shared-memory tree combines the workgroup's
// partials once. Prepended with partial.wgsl, partial_tree.wgsl, cross_entropy_row.wgsl, a
// logits_*.wgsl library and cross_entropy_forward.wgsl.
// Host side: src/gpu/cross_entropy.rs.

// Keep in sync with gpu::cross_entropy::NARROW_WORKGROUP_SIZE.
const WG: u32 = 128u;
// Keep in sync with gpu::cross_entropy::SEGMENT_WORDS.
const SEGMENT_WORDS: u32 = 5u;

@group(0) @binding(1) var<storage, read> logits: array<LogitWord>; // this chunk

fn run_sums(run: u32) -> RowSums {
    let at = run * SEGMENT_WORDS;
    return RowSums(
        vec2<f32>(dense_targets[at], dense_targets[at + 1u]),
        dense_targets[at + 2u],
        dense_targets[at + 3u],
        bitcast<u32>(dense_targets[at + 4u]),
    );
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = wid.y * groups.x + wid.x;
    let first = group * params.rows_per_group;
    var partial = identity_partial();
    if first < params.chunk_rows {
        let last = min(first + params.rows_per_group, params.chunk_rows);
        for (var local_row = first + lid; local_row < last; local_row += WG) {
            let first_run = local_row * params.segments;
            var sums = run_sums(first_run);
            for (var run = 1u; run < params.segments; run++) {
                let next = run_sums(first_run + run);
                sums = RowSums(
                    lse_merge(sums.lse, next.lse),
                    sums.acc + next.acc,
                    sums.total + next.total,
                    sums.bad | next.bad,
                );
            }
            finish_row(local_row, sums, row_pivot(local_row * params.classes), 0.0, &partial);
        }
    }
    combine_workgroup_partials(lid, partial);
    if lid == 0u && first < params.chunk_rows {
        partials[params.group_base + group] = shared_partials[0];
    }
}
