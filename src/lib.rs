//! # fused-loss
//!
//! Per-example cross-entropy and its reductions in one fused pass over the
//! logits, on any wgpu adapter or on every CPU core with SIMD
//! ([`cpu::fast`]), with an f64 CPU reference ([`cpu::reference`]) that
//! every result is tested against.
//!
//! ```
//! use fused_loss::{Batch, CrossEntropy, Engine, Reduction};
//!
//! // Two examples over three classes.
//! let logits = [2.0f32, 0.5, -1.0, 0.1, 0.2, 3.0];
//! let labels = [0, 2];
//! // `Engine::auto_blocking()` picks the GPU and falls back to the fast CPU path.
//! let engine = Engine::cpu();
//! let spec = CrossEntropy::new().with_reduction(Reduction::Mean);
//! let out = engine.compute_blocking(&spec, &Batch::with_labels(&logits, 3, &labels))?;
//! println!("loss {} average_loss {}", out.loss, out.average_loss);
//! assert_eq!(out.stats.count, 2);
//! # Ok::<(), fused_loss::Error>(())
//! ```
//!
//! ## Semantics (DESIGN §2)
//!
//! With `ℓ_{n,c} = x_{n,c} − logsumexp(x_n)` (or `log(clip(p/Σp, 1e-7, 1−1e-7))`
//! for probabilities), labels give
//! `L_n = s_n·[(1−ε)·(−w_{y_n}·ℓ_{n,y_n}) + (ε/C)·Σ_c(−w_c·ℓ_{n,c})]` and dense
//! targets `L_n = s_n·Σ_c(−w_c·t'_{n,c}·ℓ_{n,c})` with `t' = (1−ε)·t + ε/C`.
//! Ignored rows have `L_n = 0`. The example weight `ω_n` is `s_n·w_{y_n}`
//! (0 when ignored) for labels and `s_n` for dense targets.
//!
//! | [`Reduction`] | value | TF1 `losses.Reduction` | Keras 3 | PyTorch |
//! |---|---|---|---|---|
//! | `None` | `[L_n]` (`loss` reports the sum) | `NONE` | `None` | `'none'` |
//! | `Sum` | `Σ L_n` | `SUM` | `"sum"` | `'sum'` |
//! | `Mean` | `Σ L_n / Σ ω_n` | `MEAN` | mean with sample weight | `'mean'` |
//! | `SumOverBatchSize` | `Σ L_n / V` | `SUM_OVER_BATCH_SIZE` | `"sum_over_batch_size"` | `'mean'` without weights |
//! | `SumByNonzeroWeights` | `Σ L_n / Z` | `SUM_BY_NONZERO_WEIGHTS` | – | – |
//!
//! V counts rows that are not ignored, Z those of them with `s_n ≠ 0`; a zero
//! denominator gives 0. `average_loss = Σ L_n / Σ_{not ignored} s_n`.
//!
//! Edge conventions, shared by every backend: a term whose coefficient is 0
//! contributes nothing even where `ℓ = −inf` (masked classes); a NaN or
//! `+inf` input, or a row of all `−inf`, gives a NaN loss; a row with
//! `s_n = 0` has loss 0 otherwise. `nonfinite_rows` counts rows whose loss is
//! NaN or infinite.
//!
//! ## Precision and determinism
//!
//! The reduced values are f64. On the GPU they come from the per-example f32
//! losses through a fixed-order float-float tree with no atomics, so the same
//! input on the same adapter gives the same bytes every run, and `sum` is
//! within about 1e-12 relative of the exact sum of the returned f32 losses.
//! The fast CPU path keeps the same contract: f64 sums of its f32 losses in
//! an order fixed by the shape alone, so its output is the same whatever the
//! number of threads.

#![warn(missing_docs)]

pub mod cpu;
pub mod diagnostics;
pub mod dtype;
mod engine;
mod error;
pub mod gpu;
mod output;
mod spec;
pub mod tensorboard;

pub use dtype::{GradientDtype, HalfElement, LogitDtype, LogitElement};
pub use engine::{gpu_required, Engine, CALIBRATION_SHAPE, REQUIRE_GPU_ENV};
pub use error::{Error, Result};
pub use gpu::{
    DeviceBatch, DeviceOutputs, DeviceSlice, DeviceTargets, GpuContext, GpuOptions, GradientOutput,
    KernelVariant, LoadPattern, PendingLoss, ReducedLoss, Roofline,
};
pub use output::{Backend, LossOutput, LossStats};
pub use spec::{Batch, CrossEntropy, InputKind, Reduction, Targets, PROBABILITY_EPSILON};

/// The README's examples run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
