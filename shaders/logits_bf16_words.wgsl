// Library, no entry point: bf16 logits packed two per u32 word (element 2k in
// the low half, 2k + 1 in the high half). A bf16 is the high half of an f32,
// so widening is a shift.

alias LogitWord = u32;

fn load_logit(i: u32) -> f32 {
    let word = logits[i >> 1u];
    return bitcast<f32>(select(word << 16u, word & 0xffff0000u, (i & 1u) == 1u));
}
