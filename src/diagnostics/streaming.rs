//! Streaming means and statistics over many batches.

use super::compensated::Compensated;
use crate::error::{Error, Result};
use crate::output::{LossOutput, LossStats};

fn div_no_nan(num: f64, den: f64) -> f64 {
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// A weighted mean streamed over batches: `tf.compat.v1.metrics.mean`,
/// Keras `Mean`.
///
/// It keeps `total = Σ w·v` and `weight = Σ w` as float-float sums in f64, so
/// that shards merged in any order agree within 1e-12 relative (in practice
/// to the last bit or two). A zero weight gives a result of 0, as TensorFlow's
/// `div_no_nan`; a NaN value propagates.
///
/// # Estimator's two evaluation numbers
///
/// An Estimator's `evaluate()` reports two means of the loss, and they differ
/// whenever batches differ in size or weight:
///
/// - **`loss`** is `metrics.mean` of the *per-batch* reduced loss, one value
///   per batch with weight 1: a short last batch counts as much as a full
///   one. Stream it with [`StreamingMean::update_value`]`(out.loss, 1.0)`.
/// - **`average_loss`** is `metrics.mean` of the *per-example* losses with the
///   sample weights: every example counts by its weight, whatever batch it
///   came in. Stream it with [`StreamingMean::update`]`(&out)`, which adds
///   `Σ L_n` and `Σ s_n` (rows not ignored) from the output's stats.
///
/// ```
/// use fused_loss::diagnostics::StreamingMean;
/// use fused_loss::{Batch, CrossEntropy, Engine, Reduction};
///
/// let engine = Engine::cpu();
/// let spec = CrossEntropy::new().with_reduction(Reduction::SumOverBatchSize);
/// let logits = [2.0f32, 0.0, 0.0, 2.0, 4.0, 0.0];
/// let labels = [0, 0, 1];
/// let (mut loss, mut average_loss) = (StreamingMean::new(), StreamingMean::new());
/// // Batches of 2, the last one short.
/// for (x, y) in [(&logits[..4], &labels[..2]), (&logits[4..], &labels[2..])] {
///     let out = engine.compute_blocking(&spec, &Batch::with_labels(x, 2, y))?;
///     loss.update_value(out.loss, 1.0); // Estimator's eval `loss`
///     average_loss.update(&out); // Estimator's `average_loss`
/// }
/// let all = engine.compute_blocking(&spec, &Batch::with_labels(&logits, 2, &labels))?;
/// assert!((average_loss.result() - all.average_loss).abs() < 1e-12);
/// assert!((loss.result() - all.average_loss).abs() > 0.1); // the short batch weighs more
/// # Ok::<(), fused_loss::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StreamingMean {
    total: Compensated,
    weight: Compensated,
    count: u64,
}

impl StreamingMean {
    /// An empty mean; its result is 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a batch's per-example losses with their sample weights: `Σ L_n`
    /// and `Σ s_n` over the rows not ignored (Estimator's `average_loss`).
    pub fn update(&mut self, out: &LossOutput) {
        self.update_stats(&out.stats);
    }

    /// [`StreamingMean::update`] from the stats alone.
    pub fn update_stats(&mut self, stats: &LossStats) {
        self.total.add(stats.sum);
        self.weight.add(stats.sample_weight_sum);
        self.count += stats.count;
    }

    /// Adds one value with a weight.
    pub fn update_value(&mut self, value: f64, weight: f64) {
        self.total.add(value * weight);
        self.weight.add(weight);
        self.count += 1;
    }

    /// Adds values with optional per-value weights (all 1 when `None`).
    ///
    /// A weights slice of another length is [`Error::ShapeMismatch`]; a
    /// negative or NaN weight is [`Error::InvalidWeight`]. Nothing is added
    /// when either is returned.
    pub fn update_values(&mut self, values: &[f32], weights: Option<&[f32]>) -> Result<()> {
        match weights {
            None => values
                .iter()
                .for_each(|&v| self.update_value(v as f64, 1.0)),
            Some(w) => {
                if w.len() != values.len() {
                    return Err(Error::ShapeMismatch {
                        what: "weights",
                        expected: values.len(),
                        actual: w.len(),
                    });
                }
                if let Some(index) = w.iter().position(|x| x.is_nan() || *x < 0.0) {
                    return Err(Error::InvalidWeight {
                        what: "weight",
                        index,
                        value: w[index] as f64,
                    });
                }
                // The product of two f32 values is exact in f64.
                for (&v, &w) in values.iter().zip(w) {
                    self.update_value(v as f64, w as f64);
                }
            }
        }
        Ok(())
    }

    /// Adds another shard's state. Order does not matter beyond 1e-12.
    pub fn merge(&mut self, other: &StreamingMean) {
        self.total.merge(&other.total);
        self.weight.merge(&other.weight);
        self.count += other.count;
    }

    /// `total / weight`, 0 when the weight is 0.
    pub fn result(&self) -> f64 {
        div_no_nan(self.total.value(), self.weight.value())
    }

    /// `Σ w·v`.
    pub fn total(&self) -> f64 {
        self.total.value()
    }

    /// `Σ w`.
    pub fn weight(&self) -> f64 {
        self.weight.value()
    }

    /// How many values (or counted rows, through [`StreamingMean::update`])
    /// were added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Forgets everything.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

/// [`LossStats`] merged over many batches with float-float sums, so that the
/// order of the shards does not change the result beyond 1e-12 relative.
///
/// ```
/// use fused_loss::diagnostics::StreamingStats;
/// use fused_loss::{Batch, CrossEntropy, Engine, Reduction};
///
/// let engine = Engine::cpu();
/// let spec = CrossEntropy::new();
/// let logits = [2.0f32, 0.0, 0.0, 2.0, 1.0, 0.0];
/// let labels = [0, 0, 1];
/// let mut stats = StreamingStats::new();
/// for n in 0..3 {
///     let out = engine.compute_blocking(&spec, &Batch::with_labels(&logits[2 * n..2 * n + 2], 2, &labels[n..n + 1]))?;
///     stats.update(&out.stats);
/// }
/// let all = engine.compute_blocking(&spec, &Batch::with_labels(&logits, 2, &labels))?;
/// assert!((stats.stats().reduce(Reduction::Mean) - all.loss).abs() < 1e-12);
/// # Ok::<(), fused_loss::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StreamingStats {
    sum: Compensated,
    weight_sum: Compensated,
    sample_weight_sum: Compensated,
    count: u64,
    nonzero_count: u64,
    batch: u64,
    nonfinite_rows: u64,
}

impl StreamingStats {
    /// Nothing counted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one batch's stats.
    pub fn update(&mut self, stats: &LossStats) {
        self.sum.add(stats.sum);
        self.weight_sum.add(stats.weight_sum);
        self.sample_weight_sum.add(stats.sample_weight_sum);
        self.count += stats.count;
        self.nonzero_count += stats.nonzero_count;
        self.batch += stats.batch;
        self.nonfinite_rows += stats.nonfinite_rows;
    }

    /// Adds another shard's state.
    pub fn merge(&mut self, other: &StreamingStats) {
        self.sum.merge(&other.sum);
        self.weight_sum.merge(&other.weight_sum);
        self.sample_weight_sum.merge(&other.sample_weight_sum);
        self.count += other.count;
        self.nonzero_count += other.nonzero_count;
        self.batch += other.batch;
        self.nonfinite_rows += other.nonfinite_rows;
    }

    /// The merged stats; reduce them with [`LossStats::reduce`] and
    /// [`LossStats::average_loss`].
    pub fn stats(&self) -> LossStats {
        LossStats {
            sum: self.sum.value(),
            weight_sum: self.weight_sum.value(),
            sample_weight_sum: self.sample_weight_sum.value(),
            count: self.count,
            nonzero_count: self.nonzero_count,
            batch: self.batch,
            nonfinite_rows: self.nonfinite_rows,
        }
    }

    /// Forgets everything.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize) -> Vec<f32> {
        let mut state = 0x1234_5678u64;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 10.0
            })
            .collect()
    }

    #[test]
    fn shards_merge_in_any_order() {
        let v = values(10_000);
        let w: Vec<f32> = v.iter().map(|x| (x * 0.37).fract()).collect();
        let mut whole = StreamingMean::new();
        whole.update_values(&v, Some(&w)).unwrap();
        let shards: Vec<StreamingMean> = v
            .chunks(333)
            .zip(w.chunks(333))
            .map(|(v, w)| {
                let mut m = StreamingMean::new();
                m.update_values(v, Some(w)).unwrap();
                m
            })
            .collect();
        for order in [false, true] {
            let mut merged = StreamingMean::new();
            let it: Box<dyn Iterator<Item = &StreamingMean>> = if order {
                Box::new(shards.iter().rev())
            } else {
                Box::new(shards.iter())
            };
            for s in it {
                merged.merge(s);
            }
            let rel = (merged.result() - whole.result()).abs() / whole.result();
            assert!(rel <= 1e-15, "{rel}");
            assert_eq!(merged.count(), 10_000);
        }
        // Exact f64 reference from integers: the values are multiples of 2^-24·10.
        let exact: f64 = v.iter().zip(&w).map(|(&a, &b)| a as f64 * b as f64).sum();
        assert!((whole.total() - exact).abs() / exact < 1e-13);
    }

    #[test]
    fn zero_weight_and_reset() {
        let mut m = StreamingMean::new();
        assert_eq!(m.result(), 0.0);
        m.update_value(3.0, 0.0);
        assert_eq!(m.result(), 0.0);
        m.update_value(3.0, 2.0);
        assert_eq!(m.result(), 3.0);
        m.reset();
        assert_eq!(m, StreamingMean::new());
        assert!(m.update_values(&[1.0], Some(&[1.0, 2.0])).is_err());
        assert!(m.update_values(&[1.0], Some(&[-1.0])).is_err());
        assert_eq!(m.count(), 0);
    }
}
