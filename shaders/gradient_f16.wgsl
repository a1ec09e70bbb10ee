// Library, no entry point: the gradient stored as f16 (`enable f16;`), one
// element per word, rounded by the conversion.

alias GradWord = f16;
const GRAD_PER_WORD: u32 = 1u;

fn gradient_word(values: vec2<f32>) -> GradWord {
    return f16(values.x);
}

fn gradient_tail(old: GradWord, value: f32) -> GradWord {
    return f16(value);
}
