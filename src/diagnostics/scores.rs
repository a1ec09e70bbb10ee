//! Label-quality scores per example (the CPU twin of
//! `shaders/diagnostics_scores.wgsl`) and per-class loss sums.

use std::borrow::Cow;

use super::compensated::Compensated;
use super::histogram::is_ignored;
use crate::error::{Error, Result};
use crate::spec::{check_labels, Batch, CrossEntropy, InputKind, Targets};

/// `predicted` of a row whose probabilities are undefined.
pub const NO_CLASS: i32 = -1;

/// One example's label-quality scores (as cleanlab ranks them).
///
/// With `p` the row's softmax (or, for probability inputs, the row divided
/// by its sum) and `y` its label:
/// - `confidence` is the self-confidence `p_y`;
/// - `margin` is `p_y − max_{k≠y} p_k` (just `p_y` when there is one class);
///   negative when another class is preferred;
/// - `predicted` is `argmax_k` of the input row, the lowest class on ties.
///
/// With a soft-cap ([`CrossEntropy::softcap`]) the softmax is that of
/// `cap·tanh(x/cap)`, as in the loss; `predicted` is still the argmax of the
/// input row (the cap is monotone). Weights, smoothing and the z-loss do not
/// change the scores.
///
/// A row whose probabilities are undefined (a NaN or `+inf` logit, all
/// logits `−inf` without a soft-cap, a non-finite probability or a
/// probability sum ≤ 0) has NaN scores and `predicted` [`NO_CLASS`]. An
/// ignored row has NaN scores and its `predicted`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowScore {
    /// The label the scores refer to: the row's label, or for dense targets
    /// the argmax of the target row (lowest class on ties).
    pub label: i32,
    /// The predicted class, or [`NO_CLASS`].
    pub predicted: i32,
    /// `p_y`.
    pub confidence: f32,
    /// `p_y − max_{k≠y} p_k`.
    pub margin: f32,
}

impl RowScore {
    /// Whether the model prefers another class than the label (false for
    /// ignored and undefined rows).
    pub fn disagrees(&self) -> bool {
        self.predicted != NO_CLASS && !self.confidence.is_nan() && self.predicted != self.label
    }
}

/// The labels scores refer to: the labels themselves, or the argmax of each
/// dense target row (lowest class on ties; a row with no finite maximum gives
/// class 0).
pub fn score_labels<'a>(batch: &Batch<'a>) -> Cow<'a, [i32]> {
    match batch.targets {
        Targets::Labels(labels) => Cow::Borrowed(labels),
        Targets::Dense(targets) => Cow::Owned(
            targets
                .chunks(batch.classes.max(1))
                .map(|row| argmax(row).unwrap_or(0) as i32)
                .collect(),
        ),
    }
}

/// The first index of the largest value; NaN is never the largest. `None`
/// when the row is empty or all NaN.
fn argmax(row: &[f32]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (k, &x) in row.iter().enumerate() {
        if x.is_nan() {
            continue;
        }
        match best {
            Some(b) if row[b] >= x => {}
            _ => best = Some(k),
        }
    }
    best
}

/// The scores of every row, in f64 on the CPU: the twin of
/// [`crate::gpu::GpuDiagnostics::scores`]. Labels out of range are
/// [`Error::LabelOutOfRange`], as in the loss.
///
/// ```
/// use fused_loss::diagnostics::scores;
/// use fused_loss::{Batch, CrossEntropy};
///
/// let logits = [3.0f32, 1.0, 0.0, 0.0, 0.0, 4.0];
/// let labels = [0, 1];
/// let s = scores(&CrossEntropy::new(), &Batch::with_labels(&logits, 3, &labels))?;
/// assert_eq!((s[0].predicted, s[1].predicted), (0, 2));
/// assert!(s[0].margin > 0.0 && s[1].margin < 0.0 && s[1].disagrees());
/// # Ok::<(), fused_loss::Error>(())
/// ```
pub fn scores(spec: &CrossEntropy, batch: &Batch<'_>) -> Result<Vec<RowScore>> {
    batch.validate(spec)?;
    let classes = batch.classes;
    let ignore = match batch.targets {
        Targets::Labels(labels) => {
            check_labels(labels, classes, spec.ignore_index)?;
            spec.ignore_index
        }
        Targets::Dense(_) => None,
    };
    let labels = score_labels(batch);
    let probabilities = spec.input == InputKind::Probabilities;
    let softcap = if probabilities { None } else { spec.softcap };
    Ok(labels
        .iter()
        .enumerate()
        .map(|(n, &label)| {
            let row = &batch.logits[n * classes..(n + 1) * classes];
            let ignored = Some(label) == ignore;
            row_score(row, label, ignored, probabilities, softcap)
        })
        .collect())
}

fn row_score(
    row: &[f32],
    label: i32,
    ignored: bool,
    probabilities: bool,
    softcap: Option<f32>,
) -> RowScore {
    let undefined = RowScore {
        label,
        predicted: NO_CLASS,
        confidence: f32::NAN,
        margin: f32::NAN,
    };
    let poisoned = if probabilities {
        row.iter().any(|x| !x.is_finite())
    } else {
        row.iter().any(|x| x.is_nan() || *x == f32::INFINITY)
            || (softcap.is_none() && row.iter().all(|x| *x == f32::NEG_INFINITY))
    };
    if poisoned {
        return undefined;
    }
    let Some(predicted) = argmax(row) else {
        return undefined;
    };
    if ignored {
        return RowScore {
            predicted: predicted as i32,
            ..undefined
        };
    }
    let y = label as usize;
    // The largest value among the other classes (−inf when there is none).
    let other = row
        .iter()
        .enumerate()
        .filter(|(k, _)| *k != y)
        .fold(f64::NEG_INFINITY, |m, (_, &x)| m.max(x as f64));
    let (confidence, margin) = if probabilities {
        let total: f64 = row.iter().map(|&p| p as f64).sum();
        if total.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return undefined;
        }
        let py = row[y] as f64 / total;
        let po = if other == f64::NEG_INFINITY {
            0.0
        } else {
            other / total
        };
        (py, py - po)
    } else {
        // The loss's soft-cap; being monotone, it keeps the maxima.
        let cap = |x: f64| match softcap {
            Some(c) => c as f64 * (x / c as f64).tanh(),
            None => x,
        };
        let max = cap(row[predicted] as f64);
        let lse = max
            + row
                .iter()
                .map(|&x| (cap(x as f64) - max).exp())
                .sum::<f64>()
                .ln();
        let py = (cap(row[y] as f64) - lse).exp();
        let po = if row.len() > 1 {
            (cap(other) - lse).exp()
        } else {
            0.0
        };
        (py, py - po)
    };
    RowScore {
        label,
        predicted: predicted as i32,
        confidence: confidence as f32,
        margin: margin as f32,
    }
}

/// Per-class loss sums and counts, by label, over the rows that are not
/// ignored. Non-finite losses are counted apart, so one bad row does not
/// hide its class's mean. [`PerClassLoss::add_losses`] is the CPU twin of
/// [`crate::gpu::GpuDiagnostics::per_class`].
///
/// ```
/// use fused_loss::diagnostics::PerClassLoss;
///
/// let mut per_class = PerClassLoss::new(3);
/// per_class.add_losses(&[1.0, 2.0, 4.0, f32::NAN], &[0, 2, 2, 2], None)?;
/// assert_eq!(per_class.mean(2), 3.0);
/// assert_eq!((per_class.count(2), per_class.nonfinite(2), per_class.count(1)), (2, 1, 0));
/// # Ok::<(), fused_loss::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PerClassLoss {
    sums: Vec<Compensated>,
    counts: Vec<u64>,
    nonfinite: Vec<u64>,
}

impl PerClassLoss {
    /// Zero for each of `classes` classes.
    pub fn new(classes: usize) -> Self {
        PerClassLoss {
            sums: vec![Compensated::default(); classes],
            counts: vec![0; classes],
            nonfinite: vec![0; classes],
        }
    }

    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.counts.len()
    }

    /// Adds rows by label; rows whose label is `ignore_index` are skipped. A
    /// label out of range is [`Error::LabelOutOfRange`] (with the row within
    /// this call) and nothing is added.
    pub fn add_losses(
        &mut self,
        losses: &[f32],
        labels: &[i32],
        ignore_index: Option<i32>,
    ) -> Result<()> {
        if losses.len() != labels.len() {
            return Err(Error::ShapeMismatch {
                what: "labels",
                expected: losses.len(),
                actual: labels.len(),
            });
        }
        check_labels(labels, self.classes(), ignore_index)?;
        for (n, (&loss, &y)) in losses.iter().zip(labels).enumerate() {
            if is_ignored(Some(labels), ignore_index, n) {
                continue;
            }
            let y = y as usize;
            if loss.is_finite() {
                self.sums[y].add(loss as f64);
                self.counts[y] += 1;
            } else {
                self.nonfinite[y] += 1;
            }
        }
        Ok(())
    }

    /// Adds a float-float sum `(hi, lo)` and counts computed elsewhere (the
    /// GPU) to class `c`.
    pub(crate) fn add_partial(&mut self, c: usize, sum: [f32; 2], count: u64, nonfinite: u64) {
        self.sums[c].add(sum[0] as f64);
        if sum[0].is_finite() {
            self.sums[c].add(sum[1] as f64);
        }
        self.counts[c] += count;
        self.nonfinite[c] += nonfinite;
    }

    /// Adds another shard; the class counts must match.
    pub fn merge(&mut self, other: &PerClassLoss) -> Result<()> {
        if other.classes() != self.classes() {
            return Err(Error::ShapeMismatch {
                what: "per-class losses",
                expected: self.classes(),
                actual: other.classes(),
            });
        }
        for c in 0..self.classes() {
            self.sums[c].merge(&other.sums[c]);
            self.counts[c] += other.counts[c];
            self.nonfinite[c] += other.nonfinite[c];
        }
        Ok(())
    }

    /// The sum of the finite losses of class `c`.
    pub fn sum(&self, c: usize) -> f64 {
        self.sums[c].value()
    }

    /// The rows of class `c` with a finite loss.
    pub fn count(&self, c: usize) -> u64 {
        self.counts[c]
    }

    /// The rows of class `c` with a non-finite loss.
    pub fn nonfinite(&self, c: usize) -> u64 {
        self.nonfinite[c]
    }

    /// `sum / count`, 0 when the class has no finite loss.
    pub fn mean(&self, c: usize) -> f64 {
        if self.counts[c] == 0 {
            0.0
        } else {
            self.sum(c) / self.counts[c] as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_by_hand() {
        let logits = [
            0.0f32,
            0.0, // equal: predicted 0, margin 0
            f32::NEG_INFINITY,
            1.0, // masked class
            f32::NAN,
            0.0, // undefined
            1.0,
            2.0, // ignored
        ];
        let labels = [1, 0, 0, -100];
        let spec = CrossEntropy::new().with_ignore_index(-100);
        let s = scores(&spec, &Batch::with_labels(&logits, 2, &labels)).unwrap();
        assert_eq!(s[0].predicted, 0);
        assert_eq!((s[0].confidence, s[0].margin), (0.5, 0.0));
        assert!(s[0].disagrees());
        assert_eq!(
            (s[1].confidence, s[1].margin, s[1].predicted),
            (0.0, -1.0, 1)
        );
        assert!(s[2].confidence.is_nan() && s[2].predicted == NO_CLASS && !s[2].disagrees());
        assert!(s[3].confidence.is_nan() && s[3].predicted == 1 && !s[3].disagrees());

        let probs = [0.2f32, 0.6, 0.2, 1.0, 0.0, 0.0];
        let spec = CrossEntropy::new().with_input(InputKind::Probabilities);
        let s = scores(&spec, &Batch::with_labels(&probs, 3, &[2, 0])).unwrap();
        assert!((s[0].confidence - 0.2).abs() < 1e-7 && (s[0].margin + 0.4).abs() < 1e-7);
        assert_eq!((s[1].confidence, s[1].margin), (1.0, 1.0));

        let one = scores(&CrossEntropy::new(), &Batch::with_labels(&[5.0], 1, &[0])).unwrap();
        assert_eq!((one[0].confidence, one[0].margin), (1.0, 1.0));

        let dense = [0.1f32, 0.9, 0.5, 0.5];
        let s = scores(
            &CrossEntropy::new(),
            &Batch::with_dense(&[0.0, 1.0, 1.0, 0.0], 2, &dense),
        )
        .unwrap();
        assert_eq!((s[0].label, s[1].label), (1, 0));

        assert!(matches!(
            scores(
                &CrossEntropy::new(),
                &Batch::with_labels(&[0.0, 0.0], 2, &[2])
            ),
            Err(Error::LabelOutOfRange { row: 0, .. })
        ));
    }
}
