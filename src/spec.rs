//! What to compute: the input, the targets and the options of DESIGN §2, and
//! their validation.

use std::fmt;
use std::str::FromStr;

use crate::dtype::{GradientDtype, LogitElement};
use crate::error::{Error, Result};

/// Whether the `[B, C]` input holds logits or probabilities.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InputKind {
    /// Unnormalised scores; `ℓ = x − logsumexp(x)` (Keras `from_logits=True`).
    #[default]
    Logits,
    /// Probabilities; each row is renormalised and clipped to `[1e-7, 1 − 1e-7]`
    /// before the log (Keras `from_logits=False`).
    Probabilities,
}

/// The epsilon Keras clips probabilities with.
pub const PROBABILITY_EPSILON: f32 = 1e-7;

/// How the per-example losses are reduced. See the table in the crate docs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// No reduction: the per-example vector. `loss` then reports the sum.
    None,
    /// `Σ L_n`.
    Sum,
    /// `Σ L_n / Σ ω_n`, PyTorch's weighted `'mean'`.
    #[default]
    Mean,
    /// `Σ L_n / V`, V = rows not ignored.
    SumOverBatchSize,
    /// `Σ L_n / Z`, Z = rows not ignored with a nonzero sample weight.
    SumByNonzeroWeights,
}

impl Reduction {
    /// Every reduction, in declaration order.
    pub const ALL: [Reduction; 5] = [
        Reduction::None,
        Reduction::Sum,
        Reduction::Mean,
        Reduction::SumOverBatchSize,
        Reduction::SumByNonzeroWeights,
    ];

    /// The kebab-case name the CLI uses.
    pub fn name(self) -> &'static str {
        match self {
            Reduction::None => "none",
            Reduction::Sum => "sum",
            Reduction::Mean => "mean",
            Reduction::SumOverBatchSize => "sum-over-batch-size",
            Reduction::SumByNonzeroWeights => "sum-by-nonzero-weights",
        }
    }
}

impl fmt::Display for Reduction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Reduction {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Reduction::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| Error::InvalidArgument(format!("unknown reduction {s:?}")))
    }
}

/// The options of one cross-entropy computation. All defaults are neutral.
///
/// ```
/// use fused_loss::{CrossEntropy, Reduction};
/// let spec = CrossEntropy::new()
///     .with_reduction(Reduction::Sum)
///     .with_label_smoothing(0.1)
///     .with_ignore_index(-100);
/// assert_eq!(spec.reduction, Reduction::Sum);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CrossEntropy {
    /// Logits (default) or probabilities.
    pub input: InputKind,
    /// Per-class weights `w_c ≥ 0`, length C; `None` means all 1.
    pub class_weights: Option<Vec<f32>>,
    /// Label smoothing `ε ∈ [0, 1]`.
    pub label_smoothing: f32,
    /// A label value that marks a row as ignored (labels only).
    pub ignore_index: Option<i32>,
    /// The reduction reported as `loss`.
    pub reduction: Reduction,
    /// Turn rows with a non-finite loss into [`Error::NonFiniteLoss`].
    pub check_finite: bool,
    /// z-loss coefficient `z ≥ 0`: adds `s_n·z·lse_n²` to every row that is
    /// not ignored (logits only).
    pub z_loss: f32,
    /// Logit soft-capping: `x ← cap·tanh(x/cap)` before the softmax (logits
    /// only, `cap > 0`).
    pub softcap: Option<f32>,
    /// Also return the gradient of the reduced value with respect to the
    /// logits (logits only). With [`Reduction::None`] it is the gradient of
    /// `Σ L_n`, i.e. each row's own per-example gradient.
    pub gradient: bool,
    /// Also return each row's log-sum-exp (of the soft-capped logits).
    pub row_lse: bool,
    /// The type of the gradient: f32 (default) or the logits' own type
    /// (half logits only; in place it is always the logits' type).
    pub gradient_dtype: GradientDtype,
}

impl CrossEntropy {
    /// Plain cross-entropy on logits with the mean reduction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the input kind.
    pub fn with_input(mut self, input: InputKind) -> Self {
        self.input = input;
        self
    }

    /// Sets the class weights.
    pub fn with_class_weights(mut self, weights: Vec<f32>) -> Self {
        self.class_weights = Some(weights);
        self
    }

    /// Sets the label smoothing.
    pub fn with_label_smoothing(mut self, epsilon: f32) -> Self {
        self.label_smoothing = epsilon;
        self
    }

    /// Sets the ignore index.
    pub fn with_ignore_index(mut self, index: i32) -> Self {
        self.ignore_index = Some(index);
        self
    }

    /// Sets the reduction.
    pub fn with_reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// Turns non-finite losses into an error.
    pub fn with_check_finite(mut self, check: bool) -> Self {
        self.check_finite = check;
        self
    }

    /// Sets the z-loss coefficient.
    pub fn with_z_loss(mut self, z: f32) -> Self {
        self.z_loss = z;
        self
    }

    /// Sets the logit soft-cap.
    pub fn with_softcap(mut self, cap: f32) -> Self {
        self.softcap = Some(cap);
        self
    }

    /// Asks for the gradient with respect to the logits.
    pub fn with_gradient(mut self, gradient: bool) -> Self {
        self.gradient = gradient;
        self
    }

    /// Asks for each row's log-sum-exp.
    pub fn with_row_lse(mut self, row_lse: bool) -> Self {
        self.row_lse = row_lse;
        self
    }

    /// Sets the type of the gradient.
    pub fn with_gradient_dtype(mut self, dtype: GradientDtype) -> Self {
        self.gradient_dtype = dtype;
        self
    }

    /// Checks the options for rows of `classes` classes: the class weights'
    /// length and values, then [`CrossEntropy::validate`].
    pub fn validate_for(&self, classes: usize) -> Result<()> {
        if classes == 0 {
            return Err(Error::NoClasses);
        }
        if let Some(weights) = &self.class_weights {
            check_len("class weights", classes, weights.len())?;
            check_weights("class weight", weights)?;
        }
        self.validate()
    }

    /// Checks the options that do not depend on the batch.
    pub fn validate(&self) -> Result<()> {
        let eps = self.label_smoothing;
        if !(0.0..=1.0).contains(&eps) {
            return Err(Error::InvalidLabelSmoothing(eps as f64));
        }
        if !(self.z_loss >= 0.0 && self.z_loss.is_finite()) {
            return Err(Error::InvalidOption {
                option: "z-loss",
                value: self.z_loss as f64,
                expected: "a finite value >= 0",
            });
        }
        if let Some(cap) = self.softcap {
            if !(cap > 0.0 && cap.is_finite()) {
                return Err(Error::InvalidOption {
                    option: "softcap",
                    value: cap as f64,
                    expected: "a finite value > 0",
                });
            }
        }
        if self.input == InputKind::Probabilities {
            if self.gradient {
                return Err(Error::GradientOfProbabilities);
            }
            let logits_only = [
                ("z-loss", self.z_loss > 0.0),
                ("softcap", self.softcap.is_some()),
                ("row lse", self.row_lse),
            ];
            if let Some((option, _)) = logits_only.into_iter().find(|(_, on)| *on) {
                return Err(Error::LogitsOnly { option });
            }
        }
        Ok(())
    }
}

/// The targets of a batch.
#[derive(Clone, Copy, Debug)]
pub enum Targets<'a> {
    /// One class index per row, length B.
    Labels(&'a [i32]),
    /// One-hot or soft targets, row-major `[B, C]`; not renormalised.
    Dense(&'a [f32]),
}

/// One batch of borrowed host data. The logits are `f32` by default, or
/// `half::f16` / `half::bf16` (see [`crate::dtype`]).
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a, T = f32> {
    /// Row-major `[batch, classes]` logits or probabilities.
    pub logits: &'a [T],
    /// B, the number of rows.
    pub batch: usize,
    /// C, the number of classes.
    pub classes: usize,
    /// Labels or dense targets.
    pub targets: Targets<'a>,
    /// Per-row weights `s_n ≥ 0`, length B; `None` means all 1.
    pub sample_weights: Option<&'a [f32]>,
}

impl<'a, T: LogitElement> Batch<'a, T> {
    /// A batch with integer labels.
    pub fn with_labels(logits: &'a [T], classes: usize, labels: &'a [i32]) -> Self {
        Batch {
            logits,
            batch: labels.len(),
            classes,
            targets: Targets::Labels(labels),
            sample_weights: None,
        }
    }

    /// A batch with dense targets of the same shape as the logits.
    pub fn with_dense(logits: &'a [T], classes: usize, targets: &'a [f32]) -> Self {
        Batch {
            logits,
            batch: logits.len().checked_div(classes).unwrap_or(0),
            classes,
            targets: Targets::Dense(targets),
            sample_weights: None,
        }
    }

    /// The same rows, targets and weights over other logits of the same
    /// shape (the exact f32 widening of half logits, for the CPU paths).
    pub(crate) fn with_logits<'b, U>(&'b self, logits: &'b [U]) -> Batch<'b, U> {
        Batch {
            logits,
            batch: self.batch,
            classes: self.classes,
            targets: self.targets,
            sample_weights: self.sample_weights,
        }
    }

    /// Adds sample weights.
    pub fn sample_weights(mut self, weights: &'a [f32]) -> Self {
        self.sample_weights = Some(weights);
        self
    }

    /// Checks every host-side rule of DESIGN §2. Labels are range-checked
    /// by the backend itself (on the device for the GPU).
    pub fn validate(&self, spec: &CrossEntropy) -> Result<()> {
        if self.classes == 0 {
            return Err(Error::NoClasses);
        }
        let cells = self
            .batch
            .checked_mul(self.classes)
            .ok_or(Error::BatchTooLarge {
                batch: self.batch,
                max_batch: usize::MAX / self.classes,
            })?;
        check_len("logits", cells, self.logits.len())?;
        match self.targets {
            Targets::Labels(labels) => check_len("labels", self.batch, labels.len())?,
            Targets::Dense(targets) => {
                check_len("targets", cells, targets.len())?;
                if spec.ignore_index.is_some() {
                    return Err(Error::IgnoreIndexWithDenseTargets);
                }
            }
        }
        if let Some(weights) = self.sample_weights {
            check_len("sample weights", self.batch, weights.len())?;
            check_weights("sample weight", weights)?;
        }
        spec.validate_for(self.classes)
    }
}

fn check_len(what: &'static str, expected: usize, actual: usize) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            what,
            expected,
            actual,
        })
    }
}

fn check_weights(what: &'static str, weights: &[f32]) -> Result<()> {
    match weights.iter().position(|w| w.is_nan() || *w < 0.0) {
        Some(index) => Err(Error::InvalidWeight {
            what,
            index,
            value: weights[index] as f64,
        }),
        None => Ok(()),
    }
}

/// Checks labels on the host; the CPU paths use it, the GPU checks on the device.
pub(crate) fn check_labels(labels: &[i32], classes: usize, ignore: Option<i32>) -> Result<()> {
    let bad = labels
        .iter()
        .position(|&y| Some(y) != ignore && (y < 0 || y as usize >= classes));
    match bad {
        Some(row) => Err(Error::LabelOutOfRange {
            row,
            label: labels[row] as i64,
            classes,
        }),
        None => Ok(()),
    }
}
