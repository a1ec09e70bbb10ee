// Library, no entry point: the single-read kernels' logits and gradient
// bindings when the gradient goes to its own buffer. Sibling:
// cross_entropy_fused_in_place.wgsl.

@group(0) @binding(1) var<storage, read> logits: array<LogitWord>;         // this chunk
@group(0) @binding(9) var<storage, read_write> gradient: array<GradWord>; // this chunk

fn store_gradient(word: u32, value: GradWord) {
    gradient[word] = value;
}
