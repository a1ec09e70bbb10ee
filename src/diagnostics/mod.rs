//! Diagnostics that make per-example losses worth keeping.
//!
//! - [`StreamingMean`] and [`StreamingStats`]: `tf.compat.v1.metrics.mean`
//!   and mergeable stats over many batches, in float-float f64;
//! - [`Histogram`] of the losses (`numpy.histogram` semantics, linear or log
//!   bins, a fixed or automatic range from a [`LossRange`]);
//! - [`TopK`] and [`top_k`]: the largest losses with their rows;
//! - [`scores`]: label-quality scores per example ([`RowScore`]:
//!   self-confidence, margin, predicted class);
//! - [`PerClassLoss`]: loss sums and counts by label;
//! - [`Diagnostics`]: all of the above in one streaming pass;
//! - [`Scorer`]: the scores, histogram counts, top-k and per-class sums on
//!   the GPU ([`crate::gpu::GpuDiagnostics`]) or with their CPU twins;
//!   [`Diagnostics::update_with`] takes its top-k and per-class sums from a
//!   [`Scorer`].
//!
//! TensorBoard event files are written by [`crate::tensorboard`].
//!
//! ```
//! use fused_loss::diagnostics::{scores, Diagnostics, Histogram, HistogramSpec};
//! use fused_loss::{Batch, CrossEntropy, Engine};
//!
//! let logits = [3.0f32, 0.0, 0.0, 3.0, 3.0, 0.0, 0.0, 3.0];
//! let labels = [0, 1, 1, 1]; // row 2 looks mislabeled
//! let engine = Engine::cpu();
//! let spec = CrossEntropy::new();
//! let batch = Batch::with_labels(&logits, 2, &labels);
//! let out = engine.compute_blocking(&spec, &batch)?;
//! let mut diagnostics = Diagnostics::new(2, 1);
//! diagnostics.update(0, &out, &scores(&spec, &batch)?, None)?;
//! let top = diagnostics.top();
//! assert_eq!((top[0].row, top[0].item.predicted), (2, 0));
//! assert_eq!(diagnostics.disagreements(), 1);
//!
//! let mut histogram = Histogram::from_spec(&HistogramSpec::new(4), diagnostics.range())?;
//! histogram.add_losses(&out.per_example, None, None);
//! assert_eq!(histogram.total(), 4);
//! # Ok::<(), fused_loss::Error>(())
//! ```

mod compensated;
mod histogram;
mod scores;
mod streaming;
mod top_k;

pub(crate) use histogram::{ceil_f32, floor_f32};
pub use histogram::{BinScale, Histogram, HistogramSpec, LossRange};
pub use scores::{score_labels, scores, PerClassLoss, RowScore, NO_CLASS};
pub use streaming::{StreamingMean, StreamingStats};
pub use top_k::{top_k, Ranked, TopK};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::gpu::GpuDiagnostics;
use crate::output::{Backend, LossOutput, LossStats};
use crate::spec::{Batch, CrossEntropy};

/// Everything one streaming pass over the data collects: the merged stats,
/// the range and moments of the losses, the top-k rows with their scores,
/// per-class sums and how many rows the model disagrees with.
///
/// Feed it batch by batch with the row offset of each batch; the result does
/// not depend on how the data was cut (the stats agree within 1e-12
/// relative, everything else exactly).
#[derive(Clone, Debug)]
pub struct Diagnostics {
    stats: StreamingStats,
    range: LossRange,
    top: TopK<RowScore>,
    per_class: PerClassLoss,
    disagreements: u64,
}

impl Diagnostics {
    /// For `classes` classes, keeping the `top_k` largest losses.
    pub fn new(classes: usize, top_k: usize) -> Self {
        Diagnostics {
            stats: StreamingStats::new(),
            range: LossRange::new(),
            top: TopK::new(top_k),
            per_class: PerClassLoss::new(classes),
            disagreements: 0,
        }
    }

    /// Adds one batch whose first row is `first_row`: its output and its
    /// scores (from [`scores`] or [`Scorer::scores`]). Rows whose label is
    /// `ignore_index` are left out of the range, the top-k and the per-class
    /// sums (pass `None` for dense targets).
    pub fn update(
        &mut self,
        first_row: u64,
        out: &LossOutput,
        scores: &[RowScore],
        ignore_index: Option<i32>,
    ) -> Result<()> {
        let losses = &out.per_example;
        let labels = labels_of_scores(losses, scores)?;
        self.per_class.add_losses(losses, &labels, ignore_index)?;
        self.stats.update(&out.stats);
        self.range.add_losses(losses, Some(&labels), ignore_index);
        for (n, (&loss, score)) in losses.iter().zip(scores).enumerate() {
            if Some(score.label) == ignore_index {
                continue;
            }
            let row = first_row + n as u64;
            if self.top.would_keep(row, loss) {
                self.top.push(row, loss, *score);
            }
            self.disagreements += u64::from(score.disagrees());
        }
        Ok(())
    }

    /// [`Diagnostics::update`] with the top-k candidates and the per-class
    /// sums of the batch computed by `scorer` (on the GPU for a GPU scorer,
    /// where it takes the input; see [`Scorer::top_k`] and
    /// [`Scorer::per_class`]). The top-k is the same as `update`'s, row for
    /// row; per-class counts are the same and sums agree within 1e-12
    /// relative. Nothing is added when it fails.
    pub async fn update_with(
        &mut self,
        scorer: &Scorer,
        first_row: u64,
        out: &LossOutput,
        scores: &[RowScore],
        ignore_index: Option<i32>,
    ) -> Result<()> {
        let losses = &out.per_example;
        let labels = labels_of_scores(losses, scores)?;
        let top = scorer
            .top_k(losses, Some(&labels), ignore_index, self.top.k())
            .await?;
        let mut per_class = PerClassLoss::new(self.per_class.classes());
        scorer
            .per_class(&mut per_class, losses, &labels, ignore_index)
            .await?;
        self.per_class.merge(&per_class)?;
        self.stats.update(&out.stats);
        self.range.add_losses(losses, Some(&labels), ignore_index);
        for r in top {
            let score = scores[r.row as usize];
            self.top.push(first_row + r.row, r.loss, score);
        }
        self.disagreements += scores
            .iter()
            .filter(|s| Some(s.label) != ignore_index && s.disagrees())
            .count() as u64;
        Ok(())
    }

    /// Blocking [`Diagnostics::update_with`].
    pub fn update_with_blocking(
        &mut self,
        scorer: &Scorer,
        first_row: u64,
        out: &LossOutput,
        scores: &[RowScore],
        ignore_index: Option<i32>,
    ) -> Result<()> {
        pollster::block_on(self.update_with(scorer, first_row, out, scores, ignore_index))
    }

    /// Adds another shard (disjoint rows).
    pub fn merge(&mut self, other: Diagnostics) -> Result<()> {
        self.per_class.merge(&other.per_class)?;
        self.stats.merge(&other.stats);
        self.range.merge(&other.range);
        self.top.merge(other.top);
        self.disagreements += other.disagreements;
        Ok(())
    }

    /// The merged stats.
    pub fn stats(&self) -> LossStats {
        self.stats.stats()
    }

    /// The range and moments of the finite losses of rows not ignored.
    pub fn range(&self) -> &LossRange {
        &self.range
    }

    /// The top-k rows, largest loss first (ties: lower row first).
    pub fn top(&self) -> Vec<Ranked<RowScore>> {
        self.top.sorted()
    }

    /// Loss sums and counts by label.
    pub fn per_class(&self) -> &PerClassLoss {
        &self.per_class
    }

    /// Rows (not ignored, with defined scores) whose predicted class is not
    /// their label.
    pub fn disagreements(&self) -> u64 {
        self.disagreements
    }
}

/// The labels of a batch's scores, which must be one per loss.
fn labels_of_scores(losses: &[f32], scores: &[RowScore]) -> Result<Vec<i32>> {
    if scores.len() != losses.len() {
        return Err(Error::ShapeMismatch {
            what: "scores",
            expected: losses.len(),
            actual: scores.len(),
        });
    }
    Ok(scores.iter().map(|s| s.label).collect())
}

/// Computes the per-example scores, the histogram counts, the top-k losses
/// and the per-class sums on the GPU ([`GpuDiagnostics`]) or with their CPU
/// twins. A GPU scorer runs on the CPU what the GPU version does not take:
/// rows wider than [`GpuDiagnostics::max_classes`], k above
/// [`GpuDiagnostics::max_top_k`], more classes than
/// [`GpuDiagnostics::max_per_class_classes`].
#[derive(Debug)]
pub enum Scorer {
    /// The CPU twins: [`scores`] and [`Histogram::add_losses`].
    Cpu,
    /// The GPU kernels.
    Gpu(Box<GpuDiagnostics>),
}

impl Scorer {
    /// On the same device as `engine`, or on the CPU for a CPU engine.
    pub fn for_engine(engine: &Engine) -> Result<Scorer> {
        match engine.gpu_context() {
            Some(context) => Ok(Scorer::Gpu(Box::new(GpuDiagnostics::new(context)?))),
            None => Ok(Scorer::Cpu),
        }
    }

    /// Where it computes.
    pub fn backend(&self) -> Backend {
        match self {
            Scorer::Cpu => Backend::Cpu,
            Scorer::Gpu(_) => Backend::Gpu,
        }
    }

    /// The scores of every row. On the GPU, rows wider than
    /// [`GpuDiagnostics::max_classes`] are scored by the CPU twin.
    pub async fn scores(&self, spec: &CrossEntropy, batch: &Batch<'_>) -> Result<Vec<RowScore>> {
        match self {
            Scorer::Gpu(gpu) if batch.classes <= gpu.max_classes() => gpu.scores(spec, batch).await,
            _ => scores(spec, batch),
        }
    }

    /// Blocking [`Scorer::scores`].
    pub fn scores_blocking(&self, spec: &CrossEntropy, batch: &Batch<'_>) -> Result<Vec<RowScore>> {
        pollster::block_on(self.scores(spec, batch))
    }

    /// Adds losses to a histogram, as [`Histogram::add_losses`] does.
    pub async fn histogram(
        &self,
        histogram: &mut Histogram,
        losses: &[f32],
        labels: Option<&[i32]>,
        ignore_index: Option<i32>,
    ) -> Result<()> {
        match self {
            Scorer::Gpu(gpu) => gpu.histogram(histogram, losses, labels, ignore_index).await,
            Scorer::Cpu => {
                histogram.add_losses(losses, labels, ignore_index);
                Ok(())
            }
        }
    }

    /// Blocking [`Scorer::histogram`].
    pub fn histogram_blocking(
        &self,
        histogram: &mut Histogram,
        losses: &[f32],
        labels: Option<&[i32]>,
        ignore_index: Option<i32>,
    ) -> Result<()> {
        pollster::block_on(self.histogram(histogram, losses, labels, ignore_index))
    }

    /// The `k` largest finite losses of the rows not ignored, as [`top_k`]
    /// ranks them: on the GPU when `k` is at most
    /// [`GpuDiagnostics::max_top_k`], else with the CPU twin. Both give the
    /// same rows and losses.
    pub async fn top_k(
        &self,
        losses: &[f32],
        labels: Option<&[i32]>,
        ignore_index: Option<i32>,
        k: usize,
    ) -> Result<Vec<Ranked<()>>> {
        match self {
            Scorer::Gpu(gpu) if k <= gpu.max_top_k() => {
                gpu.top_k(losses, labels, ignore_index, k).await
            }
            _ => top_k(losses, labels, ignore_index, k),
        }
    }

    /// Blocking [`Scorer::top_k`].
    pub fn top_k_blocking(
        &self,
        losses: &[f32],
        labels: Option<&[i32]>,
        ignore_index: Option<i32>,
        k: usize,
    ) -> Result<Vec<Ranked<()>>> {
        pollster::block_on(self.top_k(losses, labels, ignore_index, k))
    }

    /// Adds losses to `per_class` by label, as [`PerClassLoss::add_losses`]
    /// does: on the GPU up to [`GpuDiagnostics::max_per_class_classes`]
    /// classes, else with the CPU twin.
    pub async fn per_class(
        &self,
        per_class: &mut PerClassLoss,
        losses: &[f32],
        labels: &[i32],
        ignore_index: Option<i32>,
    ) -> Result<()> {
        match self {
            Scorer::Gpu(gpu) if per_class.classes() <= gpu.max_per_class_classes() => {
                gpu.per_class(per_class, losses, labels, ignore_index).await
            }
            _ => per_class.add_losses(losses, labels, ignore_index),
        }
    }

    /// Blocking [`Scorer::per_class`].
    pub fn per_class_blocking(
        &self,
        per_class: &mut PerClassLoss,
        losses: &[f32],
        labels: &[i32],
        ignore_index: Option<i32>,
    ) -> Result<()> {
        pollster::block_on(self.per_class(per_class, losses, labels, ignore_index))
    }
}
