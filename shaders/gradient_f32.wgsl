// Library, no entry point: the gradient stored as f32, one element per word.
// Siblings: gradient_f16.wgsl, gradient_f16_words.wgsl,
// gradient_bf16_words.wgsl (gpu::Storage chooses).

alias GradWord = f32;
const GRAD_PER_WORD: u32 = 1u;

// A whole word from its elements' values (only `.x` here).
fn gradient_word(values: vec2<f32>) -> GradWord {
    return values.x;
}

// A word of which only the first element is the gradient's (the last,
// half-filled word of an odd total); `old` keeps the rest. Never called with
// one element per word.
fn gradient_tail(old: GradWord, value: f32) -> GradWord {
    return value;
}
