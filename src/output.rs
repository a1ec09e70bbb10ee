//! What a computation returns.

use crate::spec::Reduction;

/// What the gradient of a reduction is divided by (0 means the gradient is 0).
pub(crate) fn gradient_denominator(stats: &LossStats, reduction: Reduction) -> f64 {
    match reduction {
        Reduction::None | Reduction::Sum => 1.0,
        Reduction::Mean => stats.weight_sum,
        Reduction::SumOverBatchSize => stats.count as f64,
        Reduction::SumByNonzeroWeights => stats.nonzero_count as f64,
    }
}

/// Mergeable statistics of a batch (DESIGN §2). Shards merge by addition.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossStats {
    /// `Σ L_n`.
    pub sum: f64,
    /// `Σ ω_n`: `s_n·w_{y_n}` for labels (0 when ignored), `s_n` for dense targets.
    pub weight_sum: f64,
    /// `Σ s_n` over the rows that are not ignored: `average_loss`'s denominator.
    pub sample_weight_sum: f64,
    /// V, the rows that are not ignored.
    pub count: u64,
    /// Z, the rows that are not ignored and have `s_n ≠ 0`.
    pub nonzero_count: u64,
    /// B, all rows.
    pub batch: u64,
    /// Rows whose loss is NaN or infinite.
    pub nonfinite_rows: u64,
}

fn div_no_nan(num: f64, den: f64) -> f64 {
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

impl LossStats {
    /// Combines the statistics of two disjoint shards.
    pub fn merge(&mut self, other: &LossStats) {
        self.sum += other.sum;
        self.weight_sum += other.weight_sum;
        self.sample_weight_sum += other.sample_weight_sum;
        self.count += other.count;
        self.nonzero_count += other.nonzero_count;
        self.batch += other.batch;
        self.nonfinite_rows += other.nonfinite_rows;
    }

    /// The value of a reduction; `None` reports the sum. A zero denominator gives 0.
    pub fn reduce(&self, reduction: Reduction) -> f64 {
        match reduction {
            Reduction::None | Reduction::Sum => self.sum,
            Reduction::Mean => div_no_nan(self.sum, self.weight_sum),
            Reduction::SumOverBatchSize => div_no_nan(self.sum, self.count as f64),
            Reduction::SumByNonzeroWeights => div_no_nan(self.sum, self.nonzero_count as f64),
        }
    }

    /// Estimator's `average_loss`: `Σ L_n / Σ_{n not ignored} s_n`.
    pub fn average_loss(&self) -> f64 {
        div_no_nan(self.sum, self.sample_weight_sum)
    }
}

/// Which backend produced a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A wgpu adapter.
    Gpu,
    /// The fast CPU path ([`crate::cpu::fast`]): f32 SIMD on every core.
    Cpu,
    /// The f64 CPU reference ([`crate::cpu::reference`]), single-threaded.
    Reference,
}

impl Backend {
    /// `"gpu"`, `"cpu"` or `"reference"`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Gpu => "gpu",
            Backend::Cpu => "cpu",
            Backend::Reference => "reference",
        }
    }
}

/// The result of one call: per-example losses, the chosen reduction,
/// `average_loss` and the stats.
#[derive(Clone, Debug, PartialEq)]
pub struct LossOutput {
    /// `L_n` for every row (0 for ignored rows).
    pub per_example: Vec<f32>,
    /// The reduction `loss` was computed with.
    pub reduction: Reduction,
    /// The chosen reduction's value (the sum for [`Reduction::None`]).
    pub loss: f64,
    /// Estimator's `average_loss`.
    pub average_loss: f64,
    /// Mergeable statistics.
    pub stats: LossStats,
    /// The backend that computed it.
    pub backend: Backend,
    /// With [`CrossEntropy::gradient`](crate::CrossEntropy::gradient): the
    /// gradient of `loss` with respect to the logits, row-major `[B, C]`.
    pub gradient: Option<Vec<f32>>,
    /// With [`CrossEntropy::row_lse`](crate::CrossEntropy::row_lse): each
    /// row's log-sum-exp of the (soft-capped) logits.
    pub row_lse: Option<Vec<f32>>,
}

/// A [`LossOutput`]'s vectors, taken out of it for a `*_into` call to
/// reuse their memory.
#[derive(Default)]
pub(crate) struct OutputBuffers {
    pub per_example: Vec<f32>,
    pub gradient: Vec<f32>,
    pub row_lse: Vec<f32>,
}

/// `v` as `len` zeros: in place where it holds enough already (no
/// allocation, no page faults), else a fresh zeroed allocation.
pub(crate) fn zeroed(mut v: Vec<f32>, len: usize) -> Vec<f32> {
    if v.capacity() < len {
        return vec![0.0; len];
    }
    v.clear();
    v.resize(len, 0.0);
    v
}

impl LossOutput {
    /// An output of no rows, as `*_into` calls leave it on an error.
    pub(crate) fn empty(reduction: Reduction, backend: Backend) -> Self {
        LossOutput::new(Vec::new(), reduction, LossStats::default(), backend)
    }

    /// Takes the vectors out (the output is left without them).
    pub(crate) fn take_buffers(&mut self) -> OutputBuffers {
        OutputBuffers {
            per_example: std::mem::take(&mut self.per_example),
            gradient: self.gradient.take().unwrap_or_default(),
            row_lse: self.row_lse.take().unwrap_or_default(),
        }
    }

    /// Stores a `*_into` call's result: the new output, or on an error an
    /// empty one, so that no earlier or partial result is left.
    pub(crate) fn store(&mut self, result: crate::Result<LossOutput>) -> crate::Result<()> {
        match result {
            Ok(out) => {
                *self = out;
                Ok(())
            }
            Err(e) => {
                *self = LossOutput::empty(self.reduction, self.backend);
                Err(e)
            }
        }
    }

    pub(crate) fn new(
        per_example: Vec<f32>,
        reduction: Reduction,
        stats: LossStats,
        backend: Backend,
    ) -> Self {
        LossOutput {
            per_example,
            reduction,
            loss: stats.reduce(reduction),
            average_loss: stats.average_loss(),
            stats,
            backend,
            gradient: None,
            row_lse: None,
        }
    }
}
