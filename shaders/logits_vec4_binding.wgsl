// Library for cross_entropy_subgroup.wgsl on devices with 9 storage
// bindings per stage: the logits chunk bound a second time as vec4s
// (FLAG_VEC4: rows start at multiples of 4).

@group(0) @binding(9) var<storage, read> logits4: array<vec4<f32>>;

fn load4(i: u32) -> vec4<f32> {
    return logits4[i];
}
