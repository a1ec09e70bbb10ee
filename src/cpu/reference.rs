//! The f64 oracle. Written to be read beside DESIGN §2, not to be fast.
//!
//! Conventions shared with the GPU kernels:
//! - a term whose coefficient `a_c` is zero contributes nothing, even when
//!   `ℓ_c = −inf` (a masked class);
//! - a row with a NaN or `+inf` input, or whose logits are all `−inf`, has a
//!   NaN loss (unless the row is ignored, when it is 0);
//! - a row with `s_n = 0` has `L_n = 0` unless the rule above makes it NaN.
//!
//! Half-precision logits are widened exactly (to f32, then f64); with
//! [`GradientDtype::Input`] the gradient is rounded once, from f64, to their
//! type.

use crate::dtype::{GradientDtype, LogitElement};
use crate::error::{Error, Result};
use crate::output::{gradient_denominator, Backend, LossOutput, LossStats};
use crate::spec::{check_labels, Batch, CrossEntropy, InputKind, Targets, PROBABILITY_EPSILON};

/// One row's exact results.
#[derive(Clone, Debug, PartialEq)]
pub struct RowLoss {
    /// `L_n` in f64.
    pub loss: f64,
    /// `ω_n`.
    pub weight: f64,
    /// `Σ_c |a_c|`, the scale of the loss's sensitivity to the logits.
    pub coefficient_sum: f64,
    /// Whether the row is ignored.
    pub ignored: bool,
    /// The log-sum-exp of the (soft-capped) logits; NaN for probabilities.
    pub lse: f64,
    /// `∂L_n/∂x_{n,c}`, unscaled by the reduction; empty unless the spec
    /// asks for the gradient.
    pub gradient: Vec<f64>,
}

/// A row's log-probabilities and log-sum-exp, or `None` when its loss is NaN.
struct LogProbs {
    log_probs: Vec<f64>,
    lse: f64,
    /// `cap·tanh(x/cap)` where a softcap is set, else `x`.
    capped: Vec<f64>,
}

fn log_probs(spec: &CrossEntropy, row: &[f32]) -> Option<LogProbs> {
    if row.iter().any(|x| x.is_nan() || *x == f32::INFINITY) {
        return None;
    }
    match spec.input {
        InputKind::Logits => {
            let capped: Vec<f64> = row
                .iter()
                .map(|&x| match spec.softcap {
                    Some(cap) => cap as f64 * (x as f64 / cap as f64).tanh(),
                    None => x as f64,
                })
                .collect();
            let max = capped.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
            if max == f64::NEG_INFINITY {
                return None;
            }
            let lse = max + capped.iter().map(|&x| (x - max).exp()).sum::<f64>().ln();
            Some(LogProbs {
                log_probs: capped.iter().map(|&x| x - lse).collect(),
                lse,
                capped,
            })
        }
        InputKind::Probabilities => {
            if row.iter().any(|x| x.is_infinite()) {
                return None;
            }
            let total: f64 = row.iter().map(|&p| p as f64).sum();
            let lo = PROBABILITY_EPSILON as f64;
            let hi = (1.0f32 - PROBABILITY_EPSILON) as f64;
            Some(LogProbs {
                log_probs: row
                    .iter()
                    .map(|&p| (p as f64 / total).clamp(lo, hi).ln())
                    .collect(),
                lse: f64::NAN,
                capped: Vec::new(),
            })
        }
    }
}

/// The exact per-row results, labels checked on the host.
pub fn row_losses<T: LogitElement>(
    spec: &CrossEntropy,
    batch: &Batch<'_, T>,
) -> Result<Vec<RowLoss>> {
    batch.validate(spec)?;
    if let Targets::Labels(labels) = batch.targets {
        check_labels(labels, batch.classes, spec.ignore_index)?;
    }
    let logits = T::to_f32_slice(batch.logits);
    let widened = batch.with_logits(&logits);
    let mut coefficients = vec![0.0f64; batch.classes];
    Ok((0..batch.batch)
        .map(|n| row_loss(spec, &widened, n, &mut coefficients))
        .collect())
}

/// Row `n`'s exact results, for a batch already validated and label-checked.
/// `coefficients` is scratch space of length C.
pub(crate) fn row_loss(
    spec: &CrossEntropy,
    batch: &Batch<'_>,
    n: usize,
    coefficients: &mut [f64],
) -> RowLoss {
    let classes = batch.classes;
    let eps = spec.label_smoothing as f64;
    let z_loss = spec.z_loss as f64;
    let gradient_wanted = spec.gradient && spec.input == InputKind::Logits;
    let class_weight = |c: usize| spec.class_weights.as_ref().map_or(1.0, |w| w[c] as f64);
    let s = batch.sample_weights.map_or(1.0, |w| w[n] as f64);
    let row = &batch.logits[n * classes..(n + 1) * classes];
    let weight = match batch.targets {
        Targets::Labels(labels) => {
            let y = labels[n];
            if Some(y) == spec.ignore_index {
                let lse = log_probs(spec, row).map_or(f64::NAN, |l| l.lse);
                return RowLoss {
                    loss: 0.0,
                    weight: 0.0,
                    coefficient_sum: 0.0,
                    ignored: true,
                    lse,
                    gradient: if gradient_wanted {
                        vec![0.0; classes]
                    } else {
                        Vec::new()
                    },
                };
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
    let terms = log_probs(spec, row);
    let loss = match &terms {
        None => f64::NAN,
        Some(_) if s == 0.0 => 0.0,
        // L = −Σ_c a_c·ℓ_c (zero coefficients skipped) + s·z·lse²
        Some(t) => {
            let cross_entropy = -coefficients
                .iter()
                .zip(&t.log_probs)
                .filter(|(a, _)| **a != 0.0)
                .map(|(a, l)| a * l)
                .sum::<f64>();
            let z_term = if z_loss > 0.0 {
                s * z_loss * t.lse * t.lse
            } else {
                0.0
            };
            cross_entropy + z_term
        }
    };
    // ∂L/∂z_c = (Σ_k a_k)·p_c − a_c + 2·s·z·lse·p_c, then the softcap's
    // chain rule ∂z_c/∂x_c = 1 − (z_c/cap)².
    let gradient = match (&terms, gradient_wanted) {
        (_, false) => Vec::new(),
        (None, true) => vec![f64::NAN; classes],
        (Some(_), true) if s == 0.0 => vec![0.0; classes],
        (Some(t), true) => {
            let total: f64 = coefficients.iter().sum();
            (0..classes)
                .map(|c| {
                    let p = t.log_probs[c].exp();
                    let dz = total * p - coefficients[c] + 2.0 * s * z_loss * t.lse * p;
                    match spec.softcap {
                        Some(cap) => dz * (1.0 - (t.capped[c] / cap as f64).powi(2)),
                        None => dz,
                    }
                })
                .collect()
        }
    };
    RowLoss {
        loss,
        weight,
        coefficient_sum: coefficients.iter().map(|a| a.abs()).sum(),
        ignored: false,
        lse: terms.map_or(f64::NAN, |t| t.lse),
        gradient,
    }
}

/// The whole computation on the CPU in f64.
pub fn compute<T: LogitElement>(spec: &CrossEntropy, batch: &Batch<'_, T>) -> Result<LossOutput> {
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
    let mut out = LossOutput::new(per_example, spec.reduction, stats, Backend::Reference);
    if spec.gradient {
        let denominator = gradient_denominator(&stats, spec.reduction);
        let scale = if denominator == 0.0 {
            0.0
        } else {
            1.0 / denominator
        };
        let dtype = match spec.gradient_dtype {
            GradientDtype::F32 => crate::LogitDtype::F32,
            GradientDtype::Input => T::DTYPE,
        };
        out.gradient = Some(
            rows.iter()
                .flat_map(|r| r.gradient.iter().map(move |g| dtype.round(g * scale)))
                .collect(),
        );
    }
    if spec.row_lse {
        out.row_lse = Some(rows.iter().map(|r| r.lse as f32).collect());
    }
    Ok(out)
}
