// Library, no entry point: logits stored as f32, one per word. The including
// file declares `logits: array<LogitWord>`. Siblings: logits_f16.wgsl,
// logits_f16_words.wgsl, logits_bf16_words.wgsl (gpu::Storage chooses).

alias LogitWord = f32;

// Logit i of the bound chunk, as f32.
fn load_logit(i: u32) -> f32 {
    return logits[i];
}
