// Library for cross_entropy_subgroup.wgsl on devices with 8 storage
// bindings per stage: vec4 i of the logits from four scalar loads (the host
// leaves FLAG_VEC4 off there, so this only keeps the shader whole).

fn load4(i: u32) -> vec4<f32> {
    let at = 4u * i;
    return vec4<f32>(logits[at], logits[at + 1u], logits[at + 2u], logits[at + 3u]);
}
