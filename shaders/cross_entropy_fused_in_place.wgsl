// Library, no entry point: the single-read kernels' logits binding when the
// gradient is written over the logits (GradWord is then LogitWord).

@group(0) @binding(1) var<storage, read_write> logits: array<LogitWord>; // this chunk, overwritten

fn store_gradient(word: u32, value: GradWord) {
    logits[word] = value;
}
