// Library, no entry point: logits stored as f16 (`enable f16;`, for devices
// with wgpu::Features::SHADER_F16), widened exactly to f32. The including
// file declares `logits: array<LogitWord>`.

alias LogitWord = f16;

fn load_logit(i: u32) -> f32 {
    return f32(logits[i]);
}
