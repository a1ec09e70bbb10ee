// Library, no entry point: the gradient as f16 packed two per u32 word
// (element 2k in the low half), for devices without SHADER_F16, rounded to
// nearest, ties to even, with integer operations (as the `half` crate
// rounds); NaN stays a quiet NaN of the same sign.

alias GradWord = u32;
const GRAD_PER_WORD: u32 = 2u;

fn f16_bits(x: f32) -> u32 {
    let bits = bitcast<u32>(x);
    let sign = (bits >> 16u) & 0x8000u;
    let magnitude = bits & 0x7fffffffu;
    if magnitude > 0x7f800000u {
        return sign | 0x7e00u | ((magnitude >> 13u) & 0x3ffu); // NaN
    }
    if magnitude >= 0x477ff000u {
        return sign | 0x7c00u; // 65520 and above round to inf
    }
    if magnitude >= 0x38800000u {
        // Normal: rebias the exponent, round the mantissa to 10 bits.
        let rounded = magnitude + 0xfffu + ((magnitude >> 13u) & 1u);
        return sign | ((rounded - 0x38000000u) >> 13u);
    }
    // Subnormal or zero: |x|·2^24 (exact) rounded to an integer, ties to even.
    return sign | u32(round(bitcast<f32>(magnitude) * 16777216.0));
}

fn gradient_word(values: vec2<f32>) -> GradWord {
    return f16_bits(values.x) | (f16_bits(values.y) << 16u);
}

// Writes the low half and keeps the high half of `old`.
fn gradient_tail(old: GradWord, value: f32) -> GradWord {
    return (old & 0xffff0000u) | f16_bits(value);
}
