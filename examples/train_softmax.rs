//! Using fused-loss from a training loop: softmax regression on synthetic
//! Gaussian blobs, with the fused loss and its gradient with respect to the
//! logits computed by the engine (the GPU when there is one, else the CPU),
//! and a plain SGD update on the host.
//!
//! Run: `cargo run --release --example train_softmax`

use fused_loss::{Batch, CrossEntropy, Engine, LossOutput, LossStats, Reduction};

const FEATURES: usize = 16;
const CLASSES: usize = 6;
const TRAIN: usize = 6000;
const TEST: usize = 2000;
const BATCH: usize = 256;
const EPOCHS: usize = 12;
const LEARNING_RATE: f32 = 0.5;

/// SplitMix64 and a Box-Muller normal: data without a dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }

    fn normal(&mut self) -> f32 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

/// `n` points around one centre per class, with unit noise.
fn blobs(rng: &mut Rng, centres: &[f32], n: usize) -> (Vec<f32>, Vec<i32>) {
    let mut x = Vec::with_capacity(n * FEATURES);
    let mut y = Vec::with_capacity(n);
    for _ in 0..n {
        let class = (rng.next_u64() % CLASSES as u64) as usize;
        for f in 0..FEATURES {
            x.push(centres[class * FEATURES + f] + rng.normal());
        }
        y.push(class as i32);
    }
    (x, y)
}

struct Model {
    weights: Vec<f32>, // [FEATURES, CLASSES]
    bias: Vec<f32>,    // [CLASSES]
}

impl Model {
    fn logits(&self, x: &[f32]) -> Vec<f32> {
        let rows = x.len() / FEATURES;
        let mut out = vec![0.0; rows * CLASSES];
        for n in 0..rows {
            for c in 0..CLASSES {
                let mut z = self.bias[c];
                for f in 0..FEATURES {
                    z += x[n * FEATURES + f] * self.weights[f * CLASSES + c];
                }
                out[n * CLASSES + c] = z;
            }
        }
        out
    }

    /// One SGD step from ∂loss/∂logits.
    fn step(&mut self, x: &[f32], grad_logits: &[f32]) {
        let rows = x.len() / FEATURES;
        for n in 0..rows {
            for c in 0..CLASSES {
                let g = grad_logits[n * CLASSES + c] * LEARNING_RATE;
                self.bias[c] -= g;
                for f in 0..FEATURES {
                    self.weights[f * CLASSES + c] -= g * x[n * FEATURES + f];
                }
            }
        }
    }
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |best, c| if row[c] > row[best] { c } else { best })
}

fn main() -> Result<(), fused_loss::Error> {
    // Any adapter, a software one included: this shows the GPU path.
    let engine = match Engine::gpu_blocking() {
        Ok(engine) => engine,
        Err(e) if !fused_loss::gpu_required() => {
            println!("no usable GPU adapter, training on the CPU ({e})");
            Engine::cpu()
        }
        Err(e) => return Err(e),
    };
    println!(
        "training on {} ({})",
        engine.backend().name(),
        engine.adapter()
    );

    let mut rng = Rng(2026);
    let centres: Vec<f32> = (0..CLASSES * FEATURES)
        .map(|_| 1.2 * rng.normal())
        .collect();
    let (train_x, train_y) = blobs(&mut rng, &centres, TRAIN);
    let (test_x, test_y) = blobs(&mut rng, &centres, TEST);
    let mut model = Model {
        weights: vec![0.0; FEATURES * CLASSES],
        bias: vec![0.0; CLASSES],
    };
    let spec = CrossEntropy::new()
        .with_reduction(Reduction::Mean)
        .with_label_smoothing(0.05)
        .with_gradient(true);

    let mut reused: Option<LossOutput> = None;
    for epoch in 1..=EPOCHS {
        // Estimator-style numbers: `loss` is the mean of the per-batch
        // losses, `average_loss` the mean over examples (merged stats).
        let mut batch_losses = Vec::new();
        let mut stats = LossStats::default();
        for start in (0..TRAIN).step_by(BATCH) {
            let end = (start + BATCH).min(TRAIN);
            let x = &train_x[start * FEATURES..end * FEATURES];
            let logits = model.logits(x);
            let batch = Batch::with_labels(&logits, CLASSES, &train_y[start..end]);
            // After the first step, into the same output: its losses and
            // gradient vectors are reused instead of allocated per step.
            let out = match reused.take() {
                Some(mut out) => {
                    engine.compute_into_blocking(&spec, &batch, &mut out)?;
                    reused.insert(out)
                }
                None => reused.insert(engine.compute_blocking(&spec, &batch)?),
            };
            model.step(x, out.gradient.as_ref().expect("gradient was asked for"));
            batch_losses.push(out.loss);
            stats.merge(&out.stats);
        }
        let loss = batch_losses.iter().sum::<f64>() / batch_losses.len() as f64;
        println!(
            "epoch {epoch:2}  loss {loss:.5}  average_loss {:.5}",
            stats.average_loss()
        );
    }

    let logits = model.logits(&test_x);
    let correct = (0..TEST)
        .filter(|&n| argmax(&logits[n * CLASSES..(n + 1) * CLASSES]) == test_y[n] as usize)
        .count();
    let held_out = engine.compute_blocking(
        &CrossEntropy::new(),
        &Batch::with_labels(&logits, CLASSES, &test_y),
    )?;
    println!(
        "held-out average_loss {:.5}  accuracy {:.4} ({correct}/{TEST}; chance is {:.4})",
        held_out.average_loss,
        correct as f64 / TEST as f64,
        1.0 / CLASSES as f64
    );
    Ok(())
}
