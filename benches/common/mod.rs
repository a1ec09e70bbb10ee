//! Synthetic inputs shared by the benches and `examples/cpu_throughput.rs`.

/// Uniform logits in [-4, 4) and labels in [0, classes), from a fixed
/// xorshift seed: the same data on every path and in every run.
pub fn synthetic(batch: usize, classes: usize) -> (Vec<f32>, Vec<i32>) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let logits = (0..batch * classes)
        .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0)
        .collect();
    let labels = (0..batch)
        .map(|_| (next() % classes as u64) as i32)
        .collect();
    (logits, labels)
}
