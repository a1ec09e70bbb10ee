// First pass of a split row: when a batch has too few rows to fill the
// device, each row is cut into `params.segments` runs of classes and one
// workgroup takes each run (workgroup g: row g / segments, run g % segments).
// Its threads stride over the run like the wide kernel's over a row, the
// shared-memory tree combines them, and thread 0 writes the run's sums
// (max, Σ exp, Σ a·(x − pivot), Σ a, bad) to the segments buffer, bound here
// where the forward kernels bind the row stats. Every run uses the row's
// pivot, so the sums add up. cross_entropy_split_finish.wgsl finishes the
// rows. Prepended with partial.wgsl, cross_entropy_row.wgsl, a
// logits_*.wgsl library, cross_entropy_forward.wgsl and
// cross_entropy_wide_tree.wgsl. Host side: src/gpu/cross_entropy.rs.

@group(0) @binding(1) var<storage, read> logits: array<LogitWord>; // this chunk

// Words per run in the segments buffer; keep in sync with
// gpu::cross_entropy::SEGMENT_WORDS.
const SEGMENT_WORDS: u32 = 5u;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = wid.y * groups.x + wid.x;
    let segments = params.segments;
    let local_row = group / segments;
    if local_row >= params.chunk_rows {
        return;
    }
    let run = group % segments;
    let span = (params.classes + segments - 1u) / segments;
    let begin = min(run * span, params.classes);
    let end = min(begin + span, params.classes);
    let base = local_row * params.classes;
    let pivot = row_pivot(base);
    let class_sums = needs_class_sums();
    var sums = empty_row_sums();
    for (var c = begin + lid; c < end; c += WG) {
        push_logit(&sums, base, c, load_logit(base + c), pivot, class_sums);
    }
    share(lid, sums);
    let run_sums = reduce_workgroup(lid);
    if lid == 0u {
        let at = group * SEGMENT_WORDS;
        row_stats[at] = run_sums.lse.x;
        row_stats[at + 1u] = run_sums.lse.y;
        row_stats[at + 2u] = run_sums.acc;
        row_stats[at + 3u] = run_sums.total;
        row_stats[at + 4u] = bitcast<f32>(run_sums.bad);
    }
}
