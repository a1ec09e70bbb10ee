//! The f64 oracle. Written to be read beside DESIGN §2, not to be fast.
//!
//! Conventions shared with the GPU kernel:
//! - a term whose coefficient `a_c` is zero contributes nothing, even when
//!   `ℓ_c = −inf` (a masked class);
//! - a row with a NaN or `+inf` input, or whose logits are all `−inf`, has a
//!   NaN loss (unless the row is ignored, when it is 0);
//! - a row with `s_n = 0` has `L_n = 0` unless the rule above makes it NaN.

use crate::error::{Error, Result};
use crate::output::{Backend, LossOutput, LossStats};
use crate::spec::{check_labels, Batch, CrossEntropy, InputKind, Targets, PROBABILITY_EPSILON};

/// One row's exact results.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowLoss {
    /// `L_n` in f64.
    pub loss: f64,
    /// `ω_n`.
    pub weight: f64,
    /// `Σ_c |a_c|`, the scale of the loss's sensitivity to the logits.
    pub coefficient_sum: f64,
    /// Whether the row is ignored.
    pub ignored: bool,
}

/// Log-probabilities of one row, or `None` when the row's loss is NaN.
fn log_probs(spec: &CrossEntropy, row: &[f32]) -> Option<Vec<f64>> {
    if row.iter().any(|x| x.is_nan() || *x == f32::INFINITY) {
        return None;
    }
    match spec.input {
        InputKind::Logits => {
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
            if max == f64::NEG_INFINITY {
                return None;
            }
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            Some(row.iter().map(|&x| x as f64 - lse).collect())
        }
        InputKind::Probabilities => {
            if row.iter().any(|x| x.is_infinite()) {
                return None;
            }
            let total: f64 = row.iter().map(|&p| p as f64).sum();
            let lo = PROBABILITY_EPSILON as f64;
            let hi = (1.0f32 - PROBABILITY_EPSILON) as f64;
            Some(
                row.iter()
                    .map(|&p| (p as f64 / total).clamp(lo, hi).ln())
                    .collect(),
            )
        }
    }
}

/// The exact per-row results, labels checked on the host.
pub fn row_losses(spec: &CrossEntropy, batch: &Batch<'_>) -> Result<Vec<RowLoss>> {
    batch.validate(spec)?;
    let classes = batch.classes;
    if let Targets::Labels(labels) = batch.targets {
        check_labels(labels, classes, spec.ignore_index)?;
    }
    let eps = spec.label_smoothing as f64;
    let class_weight = |c: usize| spec.class_weights.as_ref().map_or(1.0, |w| w[c] as f64);
    let mut rows = Vec::with_capacity(batch.batch);
    let mut coefficients = vec![0.0f64; classes];
    for n in 0..batch.batch {
        let s = batch.sample_weights.map_or(1.0, |w| w[n] as f64);
        let weight = match batch.targets {
            Targets::Labels(labels) => {
                let y = labels[n];
                if Some(y) == spec.ignore_index {
                    rows.push(RowLoss {
                        loss: 0.0,
                        weight: 0.0,
                        coefficient_sum: 0.0,
                        ignored: true,
                    });
                    continue;
                }
                let y = y as usize;
                // a_c = s·((1−ε)·w_y·[c = y] + (ε/C)·w_c)
                for (c, a) in coefficients.iter_mut().enumerate() {
                    *a = s * (eps / classes as f64) * class_weight(c);
                }
                coefficients[y] += s * (1.0 - eps) * class_weight(y);
                s * class_weight(y)
            }
            Targets::Dense(targets) => {
                // t' = (1−ε)·t + ε/C,  a_c = s·w_c·t'_c
                let t = &targets[n * classes..(n + 1) * classes];
                for (c, a) in coefficients.iter_mut().enumerate() {
                    let smoothed = (1.0 - eps) * t[c] as f64 + eps / classes as f64;
                    *a = s * class_weight(c) * smoothed;
                }
                s
            }
        };
        let row = &batch.logits[n * classes..(n + 1) * classes];
        let loss = match log_probs(spec, row) {
            None => f64::NAN,
            Some(_) if s == 0.0 => 0.0,
            // L = −Σ_c a_c·ℓ_c, skipping zero coefficients
            Some(l) => -coefficients
                .iter()
                .zip(&l)
                .filter(|(a, _)| **a != 0.0)
                .map(|(a, l)| a * l)
                .sum::<f64>(),
        };
        rows.push(RowLoss {
            loss,
            weight,
            coefficient_sum: coefficients.iter().map(|a| a.abs()).sum(),
            ignored: false,
        });
    }
    Ok(rows)
}

/// The whole computation on the CPU in f64.
pub fn compute(spec: &CrossEntropy, batch: &Batch<'_>) -> Result<LossOutput> {
    let rows = row_losses(spec, batch)?;
    let mut stats = LossStats {
        batch: batch.batch as u64,
        ..LossStats::default()
    };
    for (n, row) in rows.iter().enumerate() {
        stats.sum += row.loss;
        stats.weight_sum += row.weight;
        if !row.loss.is_finite() {
            if spec.check_finite {
                return Err(Error::NonFiniteLoss { row: n });
            }
            stats.nonfinite_rows += 1;
        }
        if !row.ignored {
            let s = batch.sample_weights.map_or(1.0, |w| w[n] as f64);
            stats.sample_weight_sum += s;
            stats.count += 1;
            stats.nonzero_count += u64::from(s != 0.0);
        }
    }
    let per_example = rows.iter().map(|r| r.loss as f32).collect();
    Ok(LossOutput::new(
        per_example,
        spec.reduction,
        stats,
        Backend::Cpu,
    ))
}
