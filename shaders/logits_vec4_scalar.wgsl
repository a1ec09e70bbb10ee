// Library for cross_entropy_subgroup.wgsl on devices with 8 storage
// bindings per stage and for half logits: vec4 i of the logits from four
// `load_logit`s (the host leaves FLAG_VEC4 off there, so this only keeps the
// shader whole).

fn load4(i: u32) -> vec4<f32> {
    let at = 4u * i;
    return vec4<f32>(load_logit(at), load_logit(at + 1u), load_logit(at + 2u), load_logit(at + 3u));
}
