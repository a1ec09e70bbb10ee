// The gradient of the reduced loss written over the logits it is computed
// from: each invocation reads its word's elements, then overwrites the word,
// so no extra B×C memory is needed. Prepended like cross_entropy_grad.wgsl,
// with a gradient library of the logits' own storage.
// Host side: src/gpu/cross_entropy.rs.

// Keep in sync with gpu::cross_entropy::GRAD_WORKGROUP_SIZE.
const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<LogitWord>; // this chunk, overwritten
@group(0) @binding(2) var<storage, read> dense_targets: array<f32>;      // this chunk
@group(0) @binding(3) var<storage, read> labels: array<i32>;             // whole batch
@group(0) @binding(4) var<storage, read> class_weights: array<f32>;
@group(0) @binding(5) var<storage, read> sample_weights: array<f32>;
@group(0) @binding(6) var<storage, read> row_stats: array<f32>;
@group(0) @binding(7) var<storage, read> partials: array<Partial>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let word = (wid.y * groups.x + wid.x) * WG + lid;
    let elements = params.chunk_rows * params.classes;
    let first = word * GRAD_PER_WORD;
    if first >= elements {
        return;
    }
    let count = min(GRAD_PER_WORD, elements - first);
    let values = gradient_pair(first, count, gradient_scale());
    if count < GRAD_PER_WORD {
        logits[word] = gradient_tail(logits[word], values.x);
    } else {
        logits[word] = gradient_word(values);
    }
}
