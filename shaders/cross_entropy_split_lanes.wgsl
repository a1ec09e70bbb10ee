// First pass of a split plain row on a CPU-type adapter: like
// cross_entropy_split_rows.wgsl, but one invocation per run, reading it as
// vec4s with no barrier (the narrow kernel's lane rows, for rows longer
// than one invocation may take). Invocation i: row i / segments, run
// i % segments, a run of ⌈C/4 / segments⌉ vec4s. It writes the run's
// (max, Σ exp, 0, 0, bad) to the segments buffer, bound where the row
// stats go; cross_entropy_split_finish.wgsl merges the runs in order and
// finishes the rows. Plain rows only (FLAG_VEC4: f32, C a multiple of 4,
// no class sums). Prepended with partial.wgsl, cross_entropy_row.wgsl, a
// logits_*.wgsl library, cross_entropy_forward.wgsl,
// logits_vec4_binding.wgsl and cross_entropy_plain.wgsl.
// Host side: src/gpu/cross_entropy.rs. CPU twin: src/cpu/reference.rs.

// Keep in sync with gpu::cross_entropy::SPLIT_LANES_WORKGROUP_SIZE.
const WG: u32 = 128u;
// Keep in sync with gpu::cross_entropy::SEGMENT_WORDS.
const SEGMENT_WORDS: u32 = 5u;

@group(0) @binding(1) var<storage, read> logits: array<LogitWord>; // this chunk

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let index = (wid.y * groups.x + wid.x) * WG + lid;
    let segments = params.segments;
    let local_row = index / segments;
    if local_row >= params.chunk_rows {
        return;
    }
    let run = index % segments;
    let count = params.classes / 4u;
    let span = (count + segments - 1u) / segments;
    let begin = min(run * span, count);
    let end = min(begin + span, count);
    let sums = plain_vec4_sums(local_row * count + begin, 0u, end - begin, 1u);
    let at = index * SEGMENT_WORDS;
    row_stats[at] = sums.lse.x;
    row_stats[at + 1u] = sums.lse.y;
    row_stats[at + 2u] = 0.0;
    row_stats[at + 3u] = 0.0;
    row_stats[at + 4u] = bitcast<f32>(sums.bad);
}
