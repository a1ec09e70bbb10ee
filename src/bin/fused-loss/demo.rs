//! `fused-loss demo`: a 30-second story. A model's logits on an embedded
//! classification set in which some labels were flipped on purpose; the
//! per-example losses find them.

use std::fmt::Write as _;

use fused_loss::cpu::reference;
use fused_loss::diagnostics::{Diagnostics, Histogram, HistogramSpec, Scorer, StreamingMean};
use fused_loss::{Batch, CrossEntropy, Error, Reduction, Result};

use super::{note_fallback, open_engine, print_stdout, DemoArgs};

/// SplitMix64: a tiny, well-mixed deterministic generator.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

pub(crate) const DEMO_BATCH: usize = 2000;
pub(crate) const DEMO_CLASSES: usize = 10;
pub(crate) const DEMO_FLIPPED: usize = 100;
const EVAL_BATCH: usize = 256;
const SHOWN: usize = 8;

/// The embedded set: `(logits, labels, flipped)`.
///
/// Each example has a true class. The "model" puts noise uniform in
/// [-1.5, 1.5] on every class and a signal on the true class: strong for
/// most examples (3 to 6), weak with a near tie for 10% (ambiguous
/// examples), and for 3% it is confidently wrong (it prefers a confusable
/// class by 3). Then the labels of `DEMO_FLIPPED` random rows are flipped
/// to another class: the label errors to find. The ambiguous and the
/// model's-mistake rows are correctly labeled but also have large losses,
/// so finding the flipped ones is not trivial.
pub(crate) fn demo_set() -> (Vec<f32>, Vec<i32>, Vec<bool>) {
    let mut rng = SplitMix64(0x5EED_F00D);
    let mut logits = Vec::with_capacity(DEMO_BATCH * DEMO_CLASSES);
    let mut labels = Vec::with_capacity(DEMO_BATCH);
    for _ in 0..DEMO_BATCH {
        let truth = rng.below(DEMO_CLASSES);
        let confusable = (truth + 1 + rng.below(DEMO_CLASSES - 1)) % DEMO_CLASSES;
        let mut row: Vec<f64> = (0..DEMO_CLASSES).map(|_| 3.0 * rng.unit() - 1.5).collect();
        let kind = rng.unit();
        if kind < 0.10 {
            row[truth] += 2.0;
            row[confusable] += 1.8;
        } else if kind < 0.13 {
            row[truth] += 1.0;
            row[confusable] += 4.0;
        } else {
            row[truth] += 3.0 + 3.0 * rng.unit();
        }
        logits.extend(row.iter().map(|&x| x as f32));
        labels.push(truth as i32);
    }
    let mut flipped = vec![false; DEMO_BATCH];
    let mut left = DEMO_FLIPPED;
    while left > 0 {
        let n = rng.below(DEMO_BATCH);
        if !flipped[n] {
            flipped[n] = true;
            let y = labels[n] as usize;
            labels[n] = ((y + 1 + rng.below(DEMO_CLASSES - 1)) % DEMO_CLASSES) as i32;
            left -= 1;
        }
    }
    (logits, labels, flipped)
}

pub(crate) fn demo(args: &DemoArgs) -> Result<()> {
    let engine = open_engine(args.backend)?;
    note_fallback(&engine);
    let scorer = Scorer::for_engine(&engine)?;
    let (logits, labels, flipped) = demo_set();
    let batch = Batch::with_labels(&logits, DEMO_CLASSES, &labels);
    // TF1's canned Estimator reports the training `loss` as a batch sum.
    let spec = CrossEntropy::new().with_reduction(Reduction::Sum);
    let out = engine.compute_blocking(&spec, &batch)?;
    let scores = scorer.scores_blocking(&spec, &batch)?;
    let mut diagnostics = Diagnostics::new(DEMO_CLASSES, DEMO_FLIPPED);
    diagnostics.update_with_blocking(&scorer, 0, &out, &scores, None)?;

    // Estimator-style evaluation in batches of 256, the last one short.
    let eval_spec = CrossEntropy::new().with_reduction(Reduction::SumOverBatchSize);
    let (mut eval_loss, mut average_loss) = (StreamingMean::new(), StreamingMean::new());
    let mut eval_batches = 0;
    for (i, y) in labels.chunks(EVAL_BATCH).enumerate() {
        let first = i * EVAL_BATCH;
        let x = &logits[first * DEMO_CLASSES..(first + y.len()) * DEMO_CLASSES];
        let part = engine.compute_blocking(&eval_spec, &Batch::with_labels(x, DEMO_CLASSES, y))?;
        eval_loss.update_value(part.loss, 1.0);
        average_loss.update(&part);
        eval_batches += 1;
    }

    let mut histogram = Histogram::from_spec(&HistogramSpec::new(16), diagnostics.range())?;
    scorer.histogram_blocking(&mut histogram, &out.per_example, None, None)?;

    let top = diagnostics.top();
    let hits = top.iter().filter(|r| flipped[r.row as usize]).count();
    let precision = hits as f64 / top.len().max(1) as f64;
    let chance = DEMO_FLIPPED as f64 / DEMO_BATCH as f64;
    let disagree_hits = scores
        .iter()
        .zip(&flipped)
        .filter(|(s, &f)| f && s.disagrees())
        .count();

    let mut text = String::new();
    let t = &mut text;
    let _ = writeln!(
        t,
        "fused-loss demo: per-example losses find mislabeled examples"
    );
    let _ = writeln!(t, "backend        {}", engine.backend().name());
    let _ = writeln!(t, "adapter        {}", engine.adapter());
    let _ = writeln!(
        t,
        "input          {DEMO_BATCH} x {DEMO_CLASSES} logits of a model and the set's labels; \
         {DEMO_FLIPPED} labels ({:.0}%) were flipped on purpose",
        100.0 * chance
    );
    let _ = writeln!(t, "loss           {}", out.loss);
    let _ = writeln!(
        t,
        "               reduction sum: the sum of the per-example losses, as a TF1 canned Estimator reports `loss`"
    );
    let _ = writeln!(t, "average_loss   {}", out.average_loss);
    let _ = writeln!(
        t,
        "               the sum divided by the sum of the sample weights: Estimator's example-weighted mean"
    );
    let _ = writeln!(
        t,
        "eval loss      {:.6}  mean of {eval_batches} per-batch means (batches of {EVAL_BATCH}, the last of {}): \
         Estimator's eval `loss` weighs the short batch like a full one",
        eval_loss.result(),
        DEMO_BATCH - (eval_batches - 1) * EVAL_BATCH
    );
    let _ = writeln!(
        t,
        "eval average   {:.6}  the same batches streamed by example (StreamingMean): equals average_loss",
        average_loss.result()
    );
    let s = &out.stats;
    let _ = writeln!(t, "sum            {}", s.sum);
    let _ = writeln!(t, "weight_sum     {}", s.weight_sum);
    let _ = writeln!(t, "count          {}", s.count);
    let _ = writeln!(t, "nonzero_count  {}", s.nonzero_count);
    let _ = writeln!(t, "batch          {}", s.batch);
    let _ = writeln!(t, "nonfinite_rows {}", s.nonfinite_rows);
    let _ = writeln!(
        t,
        "histogram      of the per-example losses: most flipped labels sit in the long right tail"
    );
    t.push_str(&histogram.render(40));
    let _ = writeln!(
        t,
        "top {DEMO_FLIPPED}        the {DEMO_FLIPPED} largest losses hold {hits} of the {DEMO_FLIPPED} flipped labels: \
         precision {:.0}% (chance {:.0}%)",
        100.0 * precision,
        100.0 * chance
    );
    let _ = writeln!(
        t,
        "               (the model also disagrees with {disagree_hits} of the {DEMO_FLIPPED} flipped labels, \
         and with {} rows in all)",
        diagnostics.disagreements()
    );
    let _ = writeln!(
        t,
        "  {:>4} {:>5} {:>5} {:>9} {:>8} {:>10}  flipped?",
        "rank", "row", "label", "predicted", "loss", "confidence"
    );
    for (rank, r) in top.iter().take(SHOWN).enumerate() {
        let _ = writeln!(
            t,
            "  {:>4} {:>5} {:>5} {:>9} {:>8.4} {:>10.6}  {}",
            rank + 1,
            r.row,
            r.item.label,
            r.item.predicted,
            r.loss,
            r.item.confidence,
            if flipped[r.row as usize] { "yes" } else { "no" }
        );
    }
    let _ = writeln!(
        t,
        "               try it on your data: fused-loss audit --logits X.npy --labels Y.npy --out-dir audit/"
    );

    // The f64 reference on the same batch.
    let expected = reference::compute(&spec, &batch)?;
    let rows = reference::row_losses(&spec, &batch)?;
    let mut max_delta = 0.0f64;
    let mut worst_ratio = 0.0f64;
    let mut mismatched_nan = false;
    for (n, row) in rows.iter().enumerate() {
        let got = out.per_example[n] as f64;
        if got.is_nan() || row.loss.is_nan() {
            mismatched_nan |= got.is_nan() != row.loss.is_nan();
            continue;
        }
        let delta = (got - row.loss).abs();
        let max_x = logits[n * DEMO_CLASSES..(n + 1) * DEMO_CLASSES]
            .iter()
            .fold(0.0f64, |m, &x| m.max((x as f64).abs()));
        let tolerance = 1e-5 * (1.0 + row.loss.abs() + row.coefficient_sum * max_x);
        max_delta = max_delta.max(delta);
        worst_ratio = worst_ratio.max(delta / tolerance);
    }
    let sum_rel = if expected.stats.sum == 0.0 {
        (out.stats.sum - expected.stats.sum).abs()
    } else {
        ((out.stats.sum - expected.stats.sum) / expected.stats.sum).abs()
    };
    let _ = writeln!(
        t,
        "reference      max per-example |delta| {max_delta:.3e}, sum relative difference {sum_rel:.3e}"
    );
    let ok = !mismatched_nan && worst_ratio <= 1.0;
    if ok {
        let _ = writeln!(
            t,
            "reference check: ok (every |delta| <= 1e-5 * (1 + |L_n| + sum_c|a_c| * max_c|x_n,c|))"
        );
    }
    print_stdout(&text)?;
    if ok {
        Ok(())
    } else {
        Err(Error::Gpu(format!(
            "the result differs from the f64 reference: max |delta| {max_delta:.3e} is {worst_ratio:.2} times the tolerance"
        )))
    }
}
