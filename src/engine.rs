//! One API over the GPU and the CPU.

use crate::cpu::{fast, reference};
use crate::dtype::{GradientDtype, LogitDtype, LogitElement};
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, GpuOptions};
use crate::output::{Backend, LossOutput, OutputBuffers};
use crate::spec::{Batch, CrossEntropy};
use std::time::{Duration, Instant};

/// Set to `1` to forbid [`Engine::auto`] from falling back to the CPU.
pub const REQUIRE_GPU_ENV: &str = "FUSED_LOSS_REQUIRE_GPU";

/// Whether `FUSED_LOSS_REQUIRE_GPU=1` is set.
pub fn gpu_required() -> bool {
    std::env::var(REQUIRE_GPU_ENV).is_ok_and(|v| v == "1")
}

enum Inner {
    Gpu(Box<GpuContext>),
    Cpu,
    Reference,
}

/// Computes cross-entropy on a wgpu adapter, on the fast CPU path, or with
/// the f64 reference.
///
/// ```
/// use fused_loss::{Batch, CrossEntropy, Engine, Reduction};
///
/// let logits = [2.0f32, 0.5, -1.0, 0.1, 0.2, 3.0];
/// let labels = [0, 2];
/// let engine = Engine::cpu();
/// let out = engine
///     .compute_blocking(
///         &CrossEntropy::new().with_reduction(Reduction::Sum),
///         &Batch::with_labels(&logits, 3, &labels),
///     )
///     .unwrap();
/// assert_eq!(out.per_example.len(), 2);
/// assert!((out.loss - (out.per_example[0] + out.per_example[1]) as f64).abs() < 1e-6);
/// ```
pub struct Engine {
    inner: Inner,
    fallback_reason: Option<String>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("backend", &self.backend())
            .field("adapter", &self.adapter())
            .field("fallback_reason", &self.fallback_reason)
            .finish()
    }
}

impl Engine {
    /// The GPU when an adapter can be opened, else the fast CPU path; read
    /// [`Engine::fallback_reason`] to learn why. When the adapter is a
    /// CPU-type software one (lavapipe, SwiftShader, WARP), both are timed on
    /// a calibration batch of [`CALIBRATION_SHAPE`] and the faster one is
    /// kept. Fails only when `FUSED_LOSS_REQUIRE_GPU=1` is set and no
    /// adapter works; with it set, the adapter is kept untimed.
    pub async fn auto() -> Result<Engine> {
        match Engine::gpu().await {
            Ok(engine) if gpu_required() => Ok(engine),
            Ok(engine) => Ok(engine.or_faster_cpu().await),
            Err(Error::NoAdapter(reason)) if gpu_required() => Err(Error::NoAdapter(format!(
                "{reason} ({REQUIRE_GPU_ENV}=1 forbids the CPU fallback)"
            ))),
            Err(e) if gpu_required() => Err(e),
            Err(e) => Ok(Engine {
                inner: Inner::Cpu,
                fallback_reason: Some(e.to_string()),
            }),
        }
    }

    /// This engine, or the fast CPU path where this is a CPU-type adapter
    /// that the calibration batch finds slower.
    async fn or_faster_cpu(self) -> Engine {
        let Some(context) = self.gpu_context() else {
            return self;
        };
        if context.device().adapter_info().device_type != wgpu::DeviceType::Cpu {
            return self;
        }
        match calibrate(context).await {
            Ok((adapter_time, cpu_time)) if cpu_time < adapter_time => {
                let (b, c) = CALIBRATION_SHAPE;
                Engine {
                    inner: Inner::Cpu,
                    fallback_reason: Some(format!(
                        "the adapter, {}, is a CPU-type software adapter: on a {b}x{c} \
                         calibration batch it took {:.3} ms, the fast CPU path {:.3} ms",
                        context.adapter(),
                        adapter_time.as_secs_f64() * 1e3,
                        cpu_time.as_secs_f64() * 1e3,
                    )),
                }
            }
            _ => self,
        }
    }

    /// Blocking [`Engine::auto`].
    pub fn auto_blocking() -> Result<Engine> {
        pollster::block_on(Engine::auto())
    }

    /// The GPU, or [`Error::NoAdapter`](crate::Error::NoAdapter).
    pub async fn gpu() -> Result<Engine> {
        Engine::gpu_with(GpuOptions::default()).await
    }

    /// The GPU with options, or [`Error::NoAdapter`](crate::Error::NoAdapter).
    pub async fn gpu_with(options: GpuOptions) -> Result<Engine> {
        let context = GpuContext::new(options).await?;
        context.capture_uncaptured_errors();
        Ok(Engine::from_context(context))
    }

    /// Blocking [`Engine::gpu`].
    pub fn gpu_blocking() -> Result<Engine> {
        pollster::block_on(Engine::gpu())
    }

    /// The fast CPU path ([`fast::cross_entropy`]): f32 SIMD with runtime
    /// dispatch, rows spread over rayon's pool.
    pub fn cpu() -> Engine {
        Engine {
            inner: Inner::Cpu,
            fallback_reason: None,
        }
    }

    /// The f64 reference ([`reference::compute`]): single-threaded and slow,
    /// the oracle the other backends are tested against.
    pub fn reference() -> Engine {
        Engine {
            inner: Inner::Reference,
            fallback_reason: None,
        }
    }

    /// Wraps a context built on a caller's device
    /// ([`GpuContext::from_device`]).
    pub fn from_context(context: GpuContext) -> Engine {
        Engine {
            inner: Inner::Gpu(Box::new(context)),
            fallback_reason: None,
        }
    }

    /// Where this engine computes.
    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::Gpu(_) => Backend::Gpu,
            Inner::Cpu => Backend::Cpu,
            Inner::Reference => Backend::Reference,
        }
    }

    /// The adapter's description, `"cpu (fast, avx2+fma)"` (the instruction
    /// set detected) or `"cpu (f64 reference)"`.
    pub fn adapter(&self) -> &str {
        match &self.inner {
            Inner::Gpu(context) => context.adapter(),
            Inner::Cpu => fast_adapter(),
            Inner::Reference => "cpu (f64 reference)",
        }
    }

    /// Why [`Engine::auto`] fell back to the CPU, if it did.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// The GPU context, if this engine has one.
    pub fn gpu_context(&self) -> Option<&GpuContext> {
        match &self.inner {
            Inner::Gpu(context) => Some(context),
            Inner::Cpu | Inner::Reference => None,
        }
    }

    /// Per-example losses, the chosen reduction, `average_loss` and stats,
    /// for f32, f16 or bf16 logits. Half logits are read as stored on the
    /// GPU, widened exactly to f32 for the fast CPU path (an
    /// [`GradientDtype::Input`] gradient is rounded to their type from its
    /// f32 value) and to f64 for the reference.
    pub async fn compute<T: LogitElement>(
        &self,
        spec: &CrossEntropy,
        batch: &Batch<'_, T>,
    ) -> Result<LossOutput> {
        match &self.inner {
            Inner::Gpu(context) => context.compute(spec, batch).await,
            Inner::Cpu => fast_compute(spec, batch, OutputBuffers::default()),
            Inner::Reference => reference::compute(spec, batch),
        }
    }

    /// Blocking [`Engine::compute`].
    pub fn compute_blocking<T: LogitElement>(
        &self,
        spec: &CrossEntropy,
        batch: &Batch<'_, T>,
    ) -> Result<LossOutput> {
        pollster::block_on(self.compute(spec, batch))
    }

    /// [`Engine::compute`] into `out`, reusing the memory of its vectors
    /// (losses, gradient, row lse) on the GPU and the fast CPU path: in a
    /// training loop of one shape no call after the first allocates them
    /// (a fresh `[B, C]` gradient too large for the allocator to recycle
    /// is faulted in page by page on every call: at 512 × 32,000, a 65 MB
    /// gradient, reuse made the CPU path's call 1.85× faster; at
    /// 4,096 × 1,000 it made no difference).
    /// The reference allocates as [`Engine::compute`] does. On an error `out`
    /// is left empty: no losses, no gradient, zero stats.
    ///
    /// ```
    /// use fused_loss::{Batch, CrossEntropy, Engine};
    ///
    /// let engine = Engine::cpu();
    /// let logits = [2.0f32, 0.5, -1.0, 0.1, 0.2, 3.0];
    /// let spec = CrossEntropy::new().with_gradient(true);
    /// let mut out = engine.compute_blocking(&spec, &Batch::with_labels(&logits, 3, &[0, 2]))?;
    /// for step in 0..3 {
    ///     let labels = [step % 3, 2];
    ///     engine.compute_into_blocking(&spec, &Batch::with_labels(&logits, 3, &labels), &mut out)?;
    /// }
    /// assert_eq!(out.gradient.as_ref().unwrap().len(), 6);
    /// # Ok::<(), fused_loss::Error>(())
    /// ```
    pub async fn compute_into<T: LogitElement>(
        &self,
        spec: &CrossEntropy,
        batch: &Batch<'_, T>,
        out: &mut LossOutput,
    ) -> Result<()> {
        match &self.inner {
            Inner::Gpu(context) => context.compute_into(spec, batch, out).await,
            Inner::Cpu => {
                let buffers = out.take_buffers();
                out.store(fast_compute(spec, batch, buffers))
            }
            Inner::Reference => out.store(reference::compute(spec, batch)),
        }
    }

    /// Blocking [`Engine::compute_into`].
    pub fn compute_into_blocking<T: LogitElement>(
        &self,
        spec: &CrossEntropy,
        batch: &Batch<'_, T>,
        out: &mut LossOutput,
    ) -> Result<()> {
        pollster::block_on(self.compute_into(spec, batch, out))
    }
}

/// The fast CPU path for logits of any [`LogitElement`]: widened exactly
/// to f32 (f32 logits are borrowed, not copied), an [`GradientDtype::Input`]
/// gradient of half logits rounded to their type.
fn fast_compute<T: LogitElement>(
    spec: &CrossEntropy,
    batch: &Batch<'_, T>,
    buffers: OutputBuffers,
) -> Result<LossOutput> {
    let widened = T::to_f32_slice(batch.logits);
    let mut out = fast::cross_entropy_reusing(
        spec,
        &batch.with_logits(&widened),
        fast::Isa::Detect,
        buffers,
    )?;
    if spec.gradient_dtype == GradientDtype::Input && T::DTYPE != LogitDtype::F32 {
        for g in out.gradient.iter_mut().flatten() {
            *g = T::DTYPE.round(*g as f64);
        }
    }
    Ok(out)
}

/// Rows and classes of the batch [`Engine::auto`] times on a CPU-type
/// adapter against the fast CPU path.
pub const CALIBRATION_SHAPE: (usize, usize) = (2048, 256);

/// The best of three timed calls (after one untimed) of a synthetic
/// [`CALIBRATION_SHAPE`] batch on `context` and on the fast CPU path.
async fn calibrate(context: &GpuContext) -> Result<(Duration, Duration)> {
    let (b, c) = CALIBRATION_SHAPE;
    let logits: Vec<f32> = (0..b * c)
        .map(|i| (i.wrapping_mul(2_654_435_761) % 1000) as f32 / 125.0 - 4.0)
        .collect();
    let labels: Vec<i32> = (0..b).map(|n| ((n * 7) % c) as i32).collect();
    let batch = Batch::with_labels(&logits, c, &labels);
    let spec = CrossEntropy::new();
    let mut best = [Duration::MAX; 2];
    for round in 0..4 {
        let start = Instant::now();
        context.compute(&spec, &batch).await?;
        let adapter_time = start.elapsed();
        let start = Instant::now();
        fast::cross_entropy(&spec, &batch)?;
        let cpu_time = start.elapsed();
        if round > 0 {
            best[0] = best[0].min(adapter_time);
            best[1] = best[1].min(cpu_time);
        }
    }
    Ok((best[0], best[1]))
}

/// The fast path's adapter text, naming the instruction set it dispatches to.
fn fast_adapter() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| format!("cpu (fast, {})", fast::Isa::Detect.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn engine_and_its_futures_cross_threads() {
        let engine = Engine::cpu();
        assert_send_sync(&engine);
        let logits = [0.0f32, 1.0];
        let labels = [1];
        let spec = CrossEntropy::new();
        let batch = Batch::with_labels(&logits, 2, &labels);
        let future = engine.compute(&spec, &batch);
        assert_send(&future);
        assert!(pollster::block_on(future).is_ok());
    }
}
