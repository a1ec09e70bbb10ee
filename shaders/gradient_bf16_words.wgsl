// Library, no entry point: the gradient as bf16 packed two per u32 word
// (element 2k in the low half), rounded to nearest, ties to even, as the
// `half` crate rounds; NaN stays a quiet NaN of the same sign.

alias GradWord = u32;
const GRAD_PER_WORD: u32 = 2u;

fn bf16_bits(x: f32) -> u32 {
    let bits = bitcast<u32>(x);
    if is_nan(x) {
        return (bits >> 16u) | 0x40u;
    }
    return (bits + 0x7fffu + ((bits >> 16u) & 1u)) >> 16u;
}

fn gradient_word(values: vec2<f32>) -> GradWord {
    return bf16_bits(values.x) | (bf16_bits(values.y) << 16u);
}

// Writes the low half and keeps the high half of `old`.
fn gradient_tail(old: GradWord, value: f32) -> GradWord {
    return (old & 0xffff0000u) | bf16_bits(value);
}
