// The gradient of the reduced loss with respect to the logits, one
// invocation per storage word (one element, or two packed halves), written
// to a separate buffer. Runs after the forward kernel and the reduction, in
// the same submission. Prepended with partial.wgsl, cross_entropy_row.wgsl,
// a logits_*.wgsl and a gradient_*.wgsl library and
// cross_entropy_grad_row.wgsl. Host side: src/gpu/cross_entropy.rs.

// Keep in sync with gpu::cross_entropy::GRAD_WORKGROUP_SIZE.
const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<LogitWord>;  // this chunk
@group(0) @binding(2) var<storage, read> dense_targets: array<f32>; // this chunk
@group(0) @binding(3) var<storage, read> labels: array<i32>;        // whole batch
@group(0) @binding(4) var<storage, read> class_weights: array<f32>;
@group(0) @binding(5) var<storage, read> sample_weights: array<f32>;
@group(0) @binding(6) var<storage, read> row_stats: array<f32>;
@group(0) @binding(7) var<storage, read> partials: array<Partial>;
@group(0) @binding(8) var<storage, read_write> gradient: array<GradWord>; // this chunk

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
        gradient[word] = gradient_tail(gradient[word], values.x);
    } else {
        gradient[word] = gradient_word(values);
    }
}
