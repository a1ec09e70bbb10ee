// Library, no entry point: f16 logits packed two per u32 word (element 2k in
// the low half, 2k + 1 in the high half: the memory of a contiguous
// little-endian f16 array), for devices without SHADER_F16. Widened exactly
// with integer operations (unpack2x16float needs f16 support on some
// drivers, llvmpipe among them).

alias LogitWord = u32;

// The f32 value of the binary16 in the low 16 bits of `h`.
fn f16_value(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let exponent = (h >> 10u) & 0x1fu;
    let mantissa = h & 0x3ffu;
    if exponent == 0x1fu {
        return bitcast<f32>(sign | 0x7f800000u | (mantissa << 13u)); // inf, NaN
    }
    if exponent == 0u {
        // Zero or subnormal: mantissa·2^-24, exact in f32.
        return bitcast<f32>(sign | bitcast<u32>(f32(mantissa) * 5.9604645e-8));
    }
    return bitcast<f32>(sign | ((exponent + 112u) << 23u) | (mantissa << 13u));
}

fn load_logit(i: u32) -> f32 {
    let word = logits[i >> 1u];
    return f16_value(select(word & 0xffffu, word >> 16u, (i & 1u) == 1u));
}
