//! The one error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong in fused-loss.
///
/// Messages are lowercase and terse. Bad input never panics and never yields
/// partial output: it comes back as one of these variants.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An array does not have the length its shape implies.
    #[error("shape mismatch: {what} has {actual} elements, expected {expected}")]
    ShapeMismatch {
        /// Which input is wrong, e.g. `"logits"`.
        what: &'static str,
        /// The length the shape requires.
        expected: usize,
        /// The length that was given.
        actual: usize,
    },
    /// `classes` was zero.
    #[error("classes must be at least 1")]
    NoClasses,
    /// A label is outside `[0, classes)` and is not the ignore index.
    #[error("label out of range at row {row}: label {label}, classes {classes}")]
    LabelOutOfRange {
        /// The first offending row.
        row: usize,
        /// Its label.
        label: i64,
        /// The number of classes.
        classes: usize,
    },
    /// A class or sample weight is negative or NaN.
    #[error("invalid {what} at index {index}: {value} (weights must be >= 0 and not NaN)")]
    InvalidWeight {
        /// `"class weight"` or `"sample weight"`.
        what: &'static str,
        /// The first offending index.
        index: usize,
        /// Its value.
        value: f64,
    },
    /// Label smoothing outside `[0, 1]`.
    #[error("label smoothing must be in [0, 1], got {0}")]
    InvalidLabelSmoothing(f64),
    /// A numeric option is out of its range.
    #[error("invalid {option}: {value}, expected {expected}")]
    InvalidOption {
        /// The option, e.g. `"z-loss"`.
        option: &'static str,
        /// The value given.
        value: f64,
        /// What is allowed.
        expected: &'static str,
    },
    /// An option that needs logits was used with probabilities.
    #[error("{option} is only defined for logits input, not probabilities")]
    LogitsOnly {
        /// The option, e.g. `"softcap"`.
        option: &'static str,
    },
    /// A caller's device buffer cannot be used as given.
    #[error("invalid {what} buffer: {reason}")]
    InvalidBuffer {
        /// Which input or output, e.g. `"logits"`.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `ignore_index` was set together with dense targets.
    #[error("ignore_index cannot be used with dense targets")]
    IgnoreIndexWithDenseTargets,
    /// A gradient was asked for probability inputs.
    #[error("the gradient is only defined for logits input, not probabilities")]
    GradientOfProbabilities,
    /// One row does not fit the device's limits.
    #[error("row too large for the device: {classes} classes, at most {max_classes} fit")]
    RowTooLarge {
        /// The number of classes asked for.
        classes: usize,
        /// The most the device can take in one row.
        max_classes: usize,
    },
    /// The batch has more rows than the device can index in one binding.
    #[error("batch too large for the device: {batch} rows, at most {max_batch} fit")]
    BatchTooLarge {
        /// The number of rows asked for.
        batch: usize,
        /// The most rows the device takes in one call.
        max_batch: usize,
    },
    /// The opt-in finiteness check found a row whose loss is NaN or infinite.
    #[error("non-finite loss at row {row}")]
    NonFiniteLoss {
        /// The first such row.
        row: usize,
    },
    /// The GPU was demanded and no adapter could be used.
    #[error("no gpu adapter: {0}")]
    NoAdapter(String),
    /// wgpu reported a validation or internal error.
    #[error("gpu error: {0}")]
    Gpu(String),
    /// wgpu ran out of device memory.
    #[error("gpu out of memory: {0}")]
    OutOfMemory(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A `.npy` file is malformed or has a dtype, order or shape we cannot use.
    #[error("{path}: {message}")]
    Npy {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A command-line argument is invalid.
    #[error("{0}")]
    InvalidArgument(String),
}

/// Shorthand for `Result<T, fused_loss::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
