//! Estimator-style evaluation streamed over batches: the two numbers an
//! Estimator reports, `loss` and `average_loss`, and why they differ.
//!
//! - `loss` is `metrics.mean` of the *per-batch* reduced losses: each batch
//!   counts once, so the short last batch weighs as much as a full one;
//! - `average_loss` is `metrics.mean` of the *per-example* losses weighted by
//!   the sample weights: every example counts by its weight.
//!
//! Both are streamed with [`StreamingMean`]; two shards (say two evaluation
//! workers) are merged at the end, in either order. The summaries go to a
//! TensorBoard event file, with the histogram of the per-example losses.
//!
//! Run with `cargo run --release --example streaming_eval`.

use fused_loss::diagnostics::{Histogram, HistogramSpec, LossRange, StreamingMean};
use fused_loss::tensorboard::EventWriter;
use fused_loss::{Batch, CrossEntropy, Engine, Reduction};

const EXAMPLES: usize = 1000;
const CLASSES: usize = 8;
const BATCH: usize = 96; // 10 full batches and one of 40

/// A small deterministic generator (SplitMix64).
fn rng(state: &mut u64) -> f32 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
}

fn main() -> Result<(), fused_loss::Error> {
    let mut state = 42;
    let labels: Vec<i32> = (0..EXAMPLES)
        .map(|_| (rng(&mut state) * CLASSES as f32) as i32 % CLASSES as i32)
        .collect();
    // A model that gets better along the set, so batches differ.
    let logits: Vec<f32> = (0..EXAMPLES * CLASSES)
        .map(|i| {
            let (n, c) = (i / CLASSES, i % CLASSES);
            let signal = if c as i32 == labels[n] {
                4.0 * n as f32 / EXAMPLES as f32
            } else {
                0.0
            };
            signal + 2.0 * rng(&mut state) - 1.0
        })
        .collect();
    let weights: Vec<f32> = (0..EXAMPLES)
        .map(|n| if n % 10 == 0 { 0.0 } else { 1.0 })
        .collect();

    let engine = Engine::auto_blocking()?;
    println!("backend {} ({})", engine.backend().name(), engine.adapter());
    // Each batch's loss is its weighted mean; the difference between the two
    // numbers below then comes only from how batches are weighted.
    let spec = CrossEntropy::new().with_reduction(Reduction::Mean);

    // Two shards: even batches on one worker, odd batches on the other.
    let mut loss = [StreamingMean::new(), StreamingMean::new()];
    let mut average_loss = [StreamingMean::new(), StreamingMean::new()];
    let mut range = LossRange::new();
    let mut all_losses = Vec::with_capacity(EXAMPLES);
    for (i, y) in labels.chunks(BATCH).enumerate() {
        let first = i * BATCH;
        let rows = first..first + y.len();
        let batch = Batch::with_labels(
            &logits[rows.start * CLASSES..rows.end * CLASSES],
            CLASSES,
            y,
        )
        .sample_weights(&weights[rows]);
        let out = engine.compute_blocking(&spec, &batch)?;
        loss[i % 2].update_value(out.loss, 1.0); // Estimator's eval `loss`
        average_loss[i % 2].update(&out); // Estimator's `average_loss`
        range.add_losses(&out.per_example, None, None);
        all_losses.extend_from_slice(&out.per_example);
    }
    let (mut eval_loss, mut eval_average) = (loss[1], average_loss[1]);
    eval_loss.merge(&loss[0]);
    eval_average.merge(&average_loss[0]);

    // The whole set in one call, for comparison.
    let whole = engine.compute_blocking(
        &spec,
        &Batch::with_labels(&logits, CLASSES, &labels).sample_weights(&weights),
    )?;
    println!(
        "eval loss      {:.6}  mean of {} per-batch losses (the last batch has {} rows)",
        eval_loss.result(),
        eval_loss.count(),
        EXAMPLES % BATCH
    );
    println!(
        "average_loss   {:.6}  example-weighted; the whole set in one call gives {:.6}",
        eval_average.result(),
        whole.average_loss
    );
    assert!((eval_average.result() - whole.average_loss).abs() <= 1e-12 * whole.average_loss);

    let mut histogram = Histogram::from_spec(&HistogramSpec::new(10), &range)?;
    histogram.add_losses(&all_losses, None, None);
    print!("{}", histogram.render(30));

    let dir = std::env::temp_dir().join("fused-loss-streaming-eval");
    let mut writer = EventWriter::create(&dir)?;
    writer.add_loss_summaries(
        eval_loss.result(),
        eval_average.result(),
        &histogram,
        &range,
        1,
    )?;
    println!(
        "tensorboard    {} (tensorboard --logdir {})",
        writer.finish()?.display(),
        dir.display()
    );
    Ok(())
}
