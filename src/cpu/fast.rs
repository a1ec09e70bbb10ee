//! The fast CPU path: the same contract as the f64 reference and the GPU, in
//! f32 SIMD over all cores.
//!
//! - **One pass per row.** A row is read in blocks; while the exps of one
//!   block are summed, the maximum of the next block (of the same row or the
//!   next one) is taken, so memory is read once and the shift is known
//!   before a block's exps. `exp` is a degree-5 polynomial in `2^f` whose
//!   integer part goes into the exponent bits; the max shift is one FMA,
//!   `x·log2(e) − fl(m·log2(e))`, whose rounding is corrected once per row in
//!   the log. Block sums are f32 and fold into f64 per row.
//! - **Narrow rows** (C ≤ [`NARROW_MAX_CLASSES`], labels) go one row per SIMD
//!   lane: 8 rows transposed at a time on AVX2, with `exp`, `log` and the
//!   whole loss vectorised across rows. Probabilities of up to as many
//!   classes take the same lanes, with labels or dense targets.
//! - **Medium rows** (up to [`MEDIUM_MAX_CLASSES`] with labels,
//!   [`MEDIUM_DENSE_MAX_CLASSES`] with dense targets) go 8 rows at a time,
//!   SIMD along the classes, each row's maximum then its exps; the rows'
//!   sums meet in lane vectors for the narrow kernel's log and loss, so
//!   there is no per-row f64 state or scalar `log2`. A gradient is written
//!   row by row after the group's loss, from the row's shift and sums.
//! - **Runtime dispatch** through [`pulp`]: AVX2+FMA on x86-64 when the CPU has
//!   it, else a portable fallback with the same formulas ([`Isa::Portable`]
//!   forces it).
//! - **Threads**: rows are cut into chunks of at least 64 KiB of logits,
//!   spread over rayon's pool. Chunk boundaries depend only on the shape, and
//!   each chunk's partial sums merge in chunk order, so the result is
//!   bit-identical whatever the number of threads.
//! - **Every option** of [`CrossEntropy`]. Rows the f32 arithmetic cannot
//!   vouch for — a NaN or `+inf` logit, a `−inf` one where a smoothing or
//!   dense-target term reads it, a shift that overflows, a zero or
//!   non-finite probability total — are recomputed by the f64 reference's
//!   row function, so every edge convention is the reference's own.
//!
//! Accuracy: per-example losses are within
//! `1e-5·(1 + |L_n| + Σ_c|a_c|·max_c|x_{n,c}|)` of the f64 reference (the GPU's
//! documented tolerance; `tests/cpu_fast.rs`). The reduced values are f64:
//! each chunk sums its f32 losses in f64, the chunks merge with a compensated
//! sum, within about 1e-12 relative of the exact sum of the returned losses.

mod narrow;
mod rows;
mod vmath;

use std::ops::Range;

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use crate::cpu::reference::{self, RowLoss};
use crate::error::{Error, Result};
use crate::output::{gradient_denominator, zeroed, Backend, LossOutput, LossStats, OutputBuffers};
use crate::spec::{check_labels, Batch, CrossEntropy, InputKind, Targets};

/// Rows of at most this many classes (with labels) go one row per SIMD lane.
/// On the 2-core AVX2 machine that beat the medium kernel below C = 24 (at
/// C = 17, 5.3–5.6 against 3.6–4.2 GB/s), tied at 24 and lost above (at
/// C = 32, 3.8–5.2 against 6.2–9.4).
pub const NARROW_MAX_CLASSES: usize = 24;
/// Rows of more than [`NARROW_MAX_CLASSES`] and at most this many classes
/// (with labels) go 8 rows at a time, their sums meeting in lane vectors
/// for the log and the loss. Its two passes over a row tie with the row
/// kernels' one at C = 256 and lose above. With the gradient (a third pass,
/// as the row kernels' second) it was 1.12× the row kernels at C = 250 and
/// 1.36× at 40 on the 2-core AVX-512 machine.
pub const MEDIUM_MAX_CLASSES: usize = 256;
/// Rows of dense targets up to this many classes take
/// the medium kernel too: 1.6× the row kernels at C = 10, 1.3–1.7× at 32,
/// 1.1× at 100, even at 128 and 192, behind at 256.
pub const MEDIUM_DENSE_MAX_CLASSES: usize = 128;

/// The least logits one rayon task takes, in bytes.
const CHUNK_BYTES: usize = 64 * 1024;

/// Labels per rayon task of the range check.
const LABEL_CHUNK: usize = 16 * 1024;

/// The most f32 lanes an arch may have (AVX-512).
const MAX_LANES: usize = 16;

/// Which instruction set the fast path computes with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Isa {
    /// The best the CPU has, detected at run time. On x86-64: AVX-512
    /// (x86-64-v4) where the CPU has it for every kernel but narrow rows of
    /// probabilities (1.1–1.56× AVX2 from C = 32 to 262,144 on a 2-core
    /// Xeon, up to 1.57× for narrow logits), AVX2+FMA for those and where
    /// AVX-512 is missing, else the portable path.
    #[default]
    Detect,
    /// AVX2+FMA (x86-64-v3) for every kernel, even where the CPU has
    /// AVX-512; the portable path where it lacks AVX2. Elsewhere than
    /// x86-64 the same as [`Isa::Detect`].
    Avx2,
    /// The portable fallback: one lane, no target features, the same formulas.
    Portable,
}

impl Isa {
    /// What this choice runs on this CPU, e.g. `"avx2+fma"`,
    /// `"avx-512, avx2+fma narrow probabilities"` or `"portable"`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => avx2_name(),
            Isa::Detect => detected_name(),
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn detected_name() -> &'static str {
    if pulp::x86::V4::try_new().is_some() && pulp::x86::V3::try_new().is_some() {
        "avx-512, avx2+fma narrow probabilities"
    } else {
        avx2_name()
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_name() -> &'static str {
    match pulp::x86::V3::try_new() {
        Some(_) => "avx2+fma",
        None => "portable",
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2_name() -> &'static str {
    detected_name()
}

#[cfg(target_arch = "aarch64")]
fn detected_name() -> &'static str {
    "neon"
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detected_name() -> &'static str {
    "simd"
}

/// Cross-entropy on the CPU with the detected instruction set, on rayon's
/// current pool. Same result type, errors and conventions as
/// [`reference::compute`]; [`Backend::Cpu`].
///
/// ```
/// use fused_loss::cpu::fast;
/// use fused_loss::{Batch, CrossEntropy, Reduction};
///
/// let logits = [2.0f32, 0.5, -1.0, 0.1, 0.2, 3.0];
/// let labels = [0, 2];
/// let spec = CrossEntropy::new().with_reduction(Reduction::Sum);
/// let out = fast::cross_entropy(&spec, &Batch::with_labels(&logits, 3, &labels))?;
/// assert!((out.per_example[0] - 0.2413).abs() < 1e-4);
/// # Ok::<(), fused_loss::Error>(())
/// ```
pub fn cross_entropy(spec: &CrossEntropy, batch: &Batch<'_>) -> Result<LossOutput> {
    cross_entropy_with(spec, batch, Isa::Detect)
}

/// [`cross_entropy`] on a chosen instruction set.
pub fn cross_entropy_with(spec: &CrossEntropy, batch: &Batch<'_>, isa: Isa) -> Result<LossOutput> {
    cross_entropy_reusing(spec, batch, isa, OutputBuffers::default())
}

/// [`cross_entropy`] into `out`, reusing the memory of its vectors: a loop
/// of calls of one shape allocates its losses, gradient and row lse only
/// once (a fresh gradient is faulted in page by page on every call). On an
/// error `out` is left empty: no losses, no gradient, zero stats.
///
/// ```
/// use fused_loss::cpu::fast;
/// use fused_loss::{Batch, CrossEntropy};
///
/// let logits = [2.0f32, 0.5, -1.0, 0.1, 0.2, 3.0];
/// let spec = CrossEntropy::new().with_gradient(true);
/// let mut out = fast::cross_entropy(&spec, &Batch::with_labels(&logits, 3, &[0, 2]))?;
/// let kept = out.gradient.as_ref().unwrap().as_ptr();
/// fast::cross_entropy_into(&spec, &Batch::with_labels(&logits, 3, &[1, 1]), &mut out)?;
/// assert_eq!(out.gradient.as_ref().unwrap().as_ptr(), kept);
/// # Ok::<(), fused_loss::Error>(())
/// ```
pub fn cross_entropy_into(
    spec: &CrossEntropy,
    batch: &Batch<'_>,
    out: &mut LossOutput,
) -> Result<()> {
    let buffers = out.take_buffers();
    out.store(cross_entropy_reusing(spec, batch, Isa::Detect, buffers))
}

/// [`cross_entropy_with`] writing into `buffers` where they hold enough.
pub(crate) fn cross_entropy_reusing(
    spec: &CrossEntropy,
    batch: &Batch<'_>,
    isa: Isa,
    buffers: OutputBuffers,
) -> Result<LossOutput> {
    batch.validate(spec)?;
    if let Targets::Labels(labels) = batch.targets {
        // A branch-free parallel scan; the reference's scan finds the row.
        let in_range = labels
            .par_chunks(LABEL_CHUNK)
            .all(|chunk| labels_in_range(chunk, batch.classes, spec.ignore_index));
        if !in_range {
            check_labels(labels, batch.classes, spec.ignore_index)?;
        }
    }
    let mut plan = Plan::new(spec, batch);
    let chunk_rows = plan.chunk_rows();
    let chunk_count = batch.batch.div_ceil(chunk_rows);
    let chunk_range = |k: usize| k * chunk_rows..((k + 1) * chunk_rows).min(batch.batch);

    if spec.gradient {
        // The scale needs the denominators before the pass; they do not
        // depend on the logits.
        let meta: Vec<Meta> = (0..chunk_count)
            .into_par_iter()
            .map(|k| plan.meta(chunk_range(k)))
            .collect();
        let stats = merge(&meta, &[], batch.batch);
        let denominator = gradient_denominator(&stats, spec.reduction);
        plan.gradient_scale = Some(if denominator == 0.0 {
            0.0
        } else {
            1.0 / denominator
        });
    }

    let b = batch.batch;
    let c = batch.classes;
    // Zeros: ignored rows keep them.
    let mut per_example = zeroed(buffers.per_example, b);
    let mut row_lse = zeroed(buffers.row_lse, if spec.row_lse { b } else { 0 });
    // A reused gradient is zeroed chunk by chunk, in the chunk's task, just
    // before its rows are written: in parallel and in cache, not in one
    // serial pass over memory first.
    let (mut gradient, zero_gradient) =
        gradient_buffer(buffers.gradient, if spec.gradient { b * c } else { 0 });
    let mut lse_chunks = row_lse.chunks_mut(chunk_rows);
    let mut gradient_chunks = gradient.chunks_mut(chunk_rows * c);
    let tasks: Vec<ChunkOut<'_>> = per_example
        .chunks_mut(chunk_rows)
        .enumerate()
        .map(|(k, losses)| ChunkOut {
            rows: chunk_range(k),
            losses,
            lse: lse_chunks.next(),
            gradient: gradient_chunks.next(),
        })
        .collect();
    let plan = &plan;
    let partials: Vec<(Meta, LossSums)> = tasks
        .into_par_iter()
        .map(|mut out| {
            if let (true, Some(gradient)) = (zero_gradient, out.gradient.as_deref_mut()) {
                gradient.fill(0.0);
            }
            let op = ChunkOp {
                plan,
                out: &mut out,
            };
            run_chunk(isa, op)
        })
        .collect();
    let (meta, sums): (Vec<Meta>, Vec<LossSums>) = partials.into_iter().unzip();
    let stats = merge(&meta, &sums, b);
    if spec.check_finite {
        if let Some(row) = sums.iter().find_map(|s| s.first_nonfinite) {
            return Err(Error::NonFiniteLoss { row });
        }
    }
    let mut out = LossOutput::new(per_example, spec.reduction, stats, Backend::Cpu);
    out.gradient = spec.gradient.then_some(gradient);
    out.row_lse = spec.row_lse.then_some(row_lse);
    Ok(out)
}

/// `len` values for the gradient, and whether they are `reused`'s old
/// memory, left as they were for the chunk tasks to zero; a fresh buffer is
/// zeroed on every thread (a serial `calloc` of a few MB ran `memset` on
/// one core).
fn gradient_buffer(mut reused: Vec<f32>, len: usize) -> (Vec<f32>, bool) {
    if reused.capacity() >= len {
        reused.truncate(len);
        reused.resize(len, 0.0);
        return (reused, true);
    }
    let mut fresh = Vec::with_capacity(len);
    fresh.par_extend(rayon::iter::repeat_n(0.0f32, len));
    (fresh, false)
}

/// Whether every label is in `0..classes` or the ignore index, without a
/// branch per label (so it vectorises).
fn labels_in_range(labels: &[i32], classes: usize, ignore: Option<i32>) -> bool {
    let classes = u32::try_from(classes).unwrap_or(u32::MAX);
    let (ignoring, ignore) = (ignore.is_some(), ignore.unwrap_or(0));
    let bad = labels.iter().fold(false, |bad, &y| {
        let out = (y < 0) | (y as u32 >= classes);
        bad | (out & !(ignoring & (y == ignore)))
    });
    !bad
}

/// One call's options, resolved once.
pub(crate) struct Plan<'a> {
    pub spec: &'a CrossEntropy,
    pub batch: &'a Batch<'a>,
    pub classes: usize,
    pub labels: Option<&'a [i32]>,
    pub dense: Option<&'a [f32]>,
    pub class_weights: Option<&'a [f32]>,
    /// `Σ_c w_c`.
    pub class_weight_sum: f64,
    /// ε.
    pub smoothing: f64,
    pub z_loss: f64,
    pub softcap: Option<f32>,
    /// `1 / the reduction's denominator` when the gradient is wanted.
    pub gradient_scale: Option<f64>,
}

impl<'a> Plan<'a> {
    fn new(spec: &'a CrossEntropy, batch: &'a Batch<'a>) -> Self {
        let (labels, dense) = match batch.targets {
            Targets::Labels(labels) => (Some(labels), None),
            Targets::Dense(targets) => (None, Some(targets)),
        };
        let class_weights = spec.class_weights.as_deref();
        Plan {
            spec,
            batch,
            classes: batch.classes,
            labels,
            dense,
            class_weights,
            class_weight_sum: class_weights
                .map_or(batch.classes as f64, |w| w.iter().map(|&x| x as f64).sum()),
            smoothing: spec.label_smoothing as f64,
            z_loss: spec.z_loss as f64,
            softcap: spec.softcap,
            gradient_scale: None,
        }
    }

    /// Whether the medium (8 rows at a time) kernel takes this call.
    fn medium(&self) -> bool {
        let classes = if self.labels.is_some() {
            NARROW_MAX_CLASSES + 1..=MEDIUM_MAX_CLASSES
        } else {
            1..=MEDIUM_DENSE_MAX_CLASSES
        };
        classes.contains(&self.classes) && self.spec.input == InputKind::Logits
    }

    /// Whether the narrow (row per lane) kernels take this call: logits with
    /// labels, or probabilities.
    fn narrow(&self) -> bool {
        self.classes <= NARROW_MAX_CLASSES
            && (self.labels.is_some() || self.spec.input == InputKind::Probabilities)
    }

    /// Whether AVX-512 beats AVX2 for this call where the CPU has both:
    /// everywhere but narrow rows of probabilities (on the 2-core Xeon
    /// AVX-512 ran those 0.84× AVX2 at C = 10 and 0.89× at 24, narrow logits
    /// 0.99–1.57× forward and 1.17–1.28× with the gradient).
    fn avx512_pays(&self) -> bool {
        !(self.narrow() && self.spec.input == InputKind::Probabilities)
    }

    /// Rows per chunk: at least [`CHUNK_BYTES`] of logits, whole lane groups.
    fn chunk_rows(&self) -> usize {
        let rows = CHUNK_BYTES.div_ceil(self.classes * 4).max(1);
        if self.narrow() {
            rows.next_multiple_of(MAX_LANES)
        } else {
            rows
        }
    }

    pub fn sample_weight(&self, n: usize) -> f32 {
        self.batch.sample_weights.map_or(1.0, |w| w[n])
    }

    pub fn class_weight(&self, c: usize) -> f32 {
        self.class_weights.map_or(1.0, |w| w[c])
    }

    /// Whether row `n` carries the ignore index.
    pub fn ignored(&self, n: usize) -> bool {
        match (self.labels, self.spec.ignore_index) {
            (Some(labels), Some(ignore)) => labels[n] == ignore,
            _ => false,
        }
    }

    /// Whether row `n` needs any computing: ignored rows only for their lse.
    pub fn active(&self, n: usize) -> bool {
        self.spec.row_lse || !self.ignored(n)
    }

    pub fn row(&self, n: usize) -> &'a [f32] {
        &self.batch.logits[n * self.classes..(n + 1) * self.classes]
    }

    /// The counts and weight sums of `rows`, which do not depend on the logits.
    #[inline(always)]
    fn meta(&self, rows: Range<usize>) -> Meta {
        if self.batch.sample_weights.is_none()
            && (self.class_weights.is_none() || self.labels.is_none())
        {
            // Every ω_n and s_n is 1 for the rows that are not ignored.
            let ignored = match (self.labels, self.spec.ignore_index) {
                (Some(labels), Some(ignore)) => labels[rows.clone()]
                    .iter()
                    .filter(|&&y| y == ignore)
                    .count(),
                _ => 0,
            };
            let count = (rows.len() - ignored) as u64;
            return Meta {
                weight_sum: count as f64,
                sample_weight_sum: count as f64,
                count,
                nonzero_count: count,
            };
        }
        let mut meta = Meta::default();
        let (mut weights, mut samples) = (F64Sum::default(), F64Sum::default());
        for n in rows {
            if self.ignored(n) {
                continue;
            }
            let s = self.sample_weight(n) as f64;
            let w = match self.labels {
                Some(labels) => self.class_weight(labels[n] as usize) as f64,
                None => 1.0,
            };
            weights.add(s * w);
            samples.add(s);
            meta.count += 1;
            meta.nonzero_count += u64::from(s != 0.0);
        }
        meta.weight_sum = weights.value();
        meta.sample_weight_sum = samples.value();
        meta
    }
}

/// A chunk's share of the stats that do not depend on the logits.
#[derive(Clone, Copy, Debug, Default)]
struct Meta {
    weight_sum: f64,
    sample_weight_sum: f64,
    count: u64,
    nonzero_count: u64,
}

/// A chunk's share of the stats of its losses.
#[derive(Clone, Copy, Debug, Default)]
struct LossSums {
    sum: f64,
    nonfinite_rows: u64,
    first_nonfinite: Option<usize>,
}

impl LossSums {
    #[inline(always)]
    fn of(losses: &[f32], first_row: usize) -> Self {
        let quads = losses.chunks_exact(4);
        let mut lanes = [0.0f64; 4];
        for (lane, &loss) in lanes.iter_mut().zip(quads.remainder()) {
            *lane += loss as f64;
        }
        for quad in quads {
            for (lane, &loss) in lanes.iter_mut().zip(quad) {
                *lane += loss as f64;
            }
        }
        let nonfinite_rows = losses.iter().filter(|x| !x.is_finite()).count() as u64;
        let first_nonfinite = if nonfinite_rows > 0 {
            losses
                .iter()
                .position(|x| !x.is_finite())
                .map(|i| first_row + i)
        } else {
            None
        };
        LossSums {
            sum: (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]),
            nonfinite_rows,
            first_nonfinite,
        }
    }
}

/// Merges the chunks' partials in chunk order with compensated sums.
fn merge(meta: &[Meta], sums: &[LossSums], batch: usize) -> LossStats {
    let compensated = |values: &mut dyn Iterator<Item = f64>| {
        let mut total = Compensated::default();
        values.for_each(|v| total.add(v));
        total.value()
    };
    LossStats {
        sum: compensated(&mut sums.iter().map(|s| s.sum)),
        weight_sum: compensated(&mut meta.iter().map(|m| m.weight_sum)),
        sample_weight_sum: compensated(&mut meta.iter().map(|m| m.sample_weight_sum)),
        count: meta.iter().map(|m| m.count).sum(),
        nonzero_count: meta.iter().map(|m| m.nonzero_count).sum(),
        batch: batch as u64,
        nonfinite_rows: sums.iter().map(|s| s.nonfinite_rows).sum(),
    }
}

/// A plain f64 sum over four interleaved accumulators: for a chunk's at
/// most 16,384 rows the error stays below 5e-13 of `Σ|v|`.
#[derive(Clone, Copy, Debug, Default)]
struct F64Sum {
    lanes: [f64; 4],
    next: usize,
}

impl F64Sum {
    fn add(&mut self, v: f64) {
        self.lanes[self.next] += v;
        self.next = (self.next + 1) % 4;
    }

    fn value(&self) -> f64 {
        (self.lanes[0] + self.lanes[1]) + (self.lanes[2] + self.lanes[3])
    }
}

/// Neumaier's compensated sum; a non-finite total is returned as summed.
#[derive(Clone, Copy, Debug, Default)]
struct Compensated {
    sum: f64,
    compensation: f64,
}

impl Compensated {
    fn add(&mut self, v: f64) {
        let t = self.sum + v;
        if self.sum.abs() >= v.abs() {
            self.compensation += (self.sum - t) + v;
        } else {
            self.compensation += (v - t) + self.sum;
        }
        self.sum = t;
    }

    fn value(&self) -> f64 {
        if self.sum.is_finite() {
            self.sum + self.compensation
        } else {
            self.sum
        }
    }
}

/// One chunk's rows and the slices of the outputs they fill.
pub(crate) struct ChunkOut<'o> {
    pub rows: Range<usize>,
    pub losses: &'o mut [f32],
    pub lse: Option<&'o mut [f32]>,
    pub gradient: Option<&'o mut [f32]>,
}

impl ChunkOut<'_> {
    /// Recomputes row `n` with the f64 reference and writes its results.
    pub fn careful(&mut self, plan: &Plan<'_>, n: usize, scratch: &mut Vec<f64>) {
        scratch.resize(plan.classes, 0.0);
        let row: RowLoss = reference::row_loss(plan.spec, plan.batch, n, scratch);
        let i = n - self.rows.start;
        self.losses[i] = row.loss as f32;
        if let Some(lse) = self.lse.as_deref_mut() {
            lse[i] = row.lse as f32;
        }
        if let (Some(gradient), Some(scale)) = (self.gradient.as_deref_mut(), plan.gradient_scale) {
            let c = plan.classes;
            for (g, &exact) in gradient[i * c..(i + 1) * c].iter_mut().zip(&row.gradient) {
                *g = (exact * scale) as f32;
            }
        }
    }
}

/// Runs one chunk on the arch `isa` picks for its kernel.
#[cfg(target_arch = "x86_64")]
fn run_chunk(isa: Isa, op: ChunkOp<'_, '_, '_>) -> (Meta, LossSums) {
    if isa == Isa::Portable {
        return pulp::Scalar::new().vectorize(op);
    }
    if isa == Isa::Detect && op.plan.avx512_pays() {
        if let Some(v4) = pulp::x86::V4::try_new() {
            return pulp::Simd::vectorize(v4, op);
        }
    }
    match pulp::x86::V3::try_new() {
        Some(v3) => pulp::Simd::vectorize(v3, op),
        None => pulp::Scalar::new().vectorize(op),
    }
}

/// Runs one chunk on the arch `isa` picks.
#[cfg(not(target_arch = "x86_64"))]
fn run_chunk(isa: Isa, op: ChunkOp<'_, '_, '_>) -> (Meta, LossSums) {
    match isa {
        Isa::Portable => pulp::Scalar::new().vectorize(op),
        Isa::Detect | Isa::Avx2 => pulp::Arch::new().dispatch(op),
    }
}

/// Runs one chunk on the arch pulp dispatched to.
struct ChunkOp<'p, 'o, 'c> {
    plan: &'p Plan<'p>,
    out: &'c mut ChunkOut<'o>,
}

impl WithSimd for ChunkOp<'_, '_, '_> {
    type Output = (Meta, LossSums);

    /// The chunk's rows, then its partial stats (under the same target
    /// features, so the f64 sums vectorise; their order is the source's).
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> (Meta, LossSums) {
        let ChunkOp { plan, out } = self;
        if plan.spec.input == InputKind::Probabilities {
            if plan.narrow() && S::F32_LANES <= MAX_LANES {
                narrow::narrow_probability_rows(simd, plan, out);
            } else {
                rows::probability_rows(simd, plan, out);
            }
        } else if plan.narrow() && S::F32_LANES <= MAX_LANES {
            narrow::narrow_rows(simd, plan, out);
        } else if plan.medium() && S::F32_LANES <= MAX_LANES {
            narrow::medium_rows(simd, plan, out);
        } else {
            rows::logit_rows(simd, plan, out);
        }
        (
            plan.meta(out.rows.clone()),
            LossSums::of(out.losses, out.rows.start),
        )
    }
}
