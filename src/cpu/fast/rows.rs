//! The row kernels: one row at a time, SIMD along the classes. Logits are
//! read in blocks; the exps of a block are summed in the same loop that takes
//! the next block's maximum, and the block sums fold into f64 per row.

use pulp::Simd;

use super::vmath::{self, LOG2E};
use super::{ChunkOut, Plan};

/// Classes per block: two blocks (this one and the next) stay in L1.
const BLOCK: usize = 2048;

/// The block length for `S`: [`BLOCK`], or fewer classes for narrower
/// vectors, so that each lane's f32 block sums take at most 256 terms (one
/// lane summing 2,048 in a row lost about 1e-4 of a dense-target loss).
#[inline(always)]
fn block_len<S: Simd>() -> usize {
    (256 * S::F32_LANES).min(BLOCK)
}
const LOG2E64: f64 = LOG2E as f64;

/// What a block accumulates besides `Σ 2^t`, `t = x·log2(e) − M`.
const PLAIN: u8 = 0; // Σ t (labels, unweighted smoothing or none)
const WEIGHTED: u8 = 1; // Σ w_c·t and Σ w_c (labels, weighted smoothing)
const DENSE: u8 = 2; // Σ a_c·t and Σ a_c, a_c = w_c·((1−ε)·t_c + ε/C)

/// Per-call constants in f32.
#[derive(Clone, Copy)]
struct Kernel {
    cap: f32,
    /// 1 − ε.
    keep: f32,
    /// ε/C.
    spread: f32,
}

impl Kernel {
    fn new(plan: &Plan<'_>) -> Self {
        Kernel {
            cap: plan.softcap.unwrap_or(1.0),
            keep: (1.0 - plan.smoothing) as f32,
            spread: (plan.smoothing / plan.classes as f64) as f32,
        }
    }
}

/// Vector accumulators of one unrolled lane of a block loop.
#[derive(Clone, Copy)]
struct Acc<S: Simd> {
    exp: S::f32s,
    t: S::f32s,
    a: S::f32s,
}

impl<S: Simd> Acc<S> {
    #[inline(always)]
    fn zero(simd: S) -> Self {
        let zero = simd.splat_f32s(0.0);
        Acc {
            exp: zero,
            t: zero,
            a: zero,
        }
    }
}

/// One block's sums.
#[derive(Clone, Copy, Debug, Default)]
struct BlockSums {
    exp: f32,
    t: f32,
    a: f32,
}

/// `cap·tanh(x/cap)` in f64, as the reference computes it.
fn cap64(x: f32, cap: f32) -> f64 {
    cap as f64 * (x as f64 / cap as f64).tanh()
}

/// One vector of a block: adds `2^t` and the mode's terms to `acc`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn step<S: Simd, const MODE: u8, const W: bool, const CAP: bool>(
    simd: S,
    k: Kernel,
    x: S::f32s,
    w: S::f32s,
    target: S::f32s,
    neg_m: S::f32s,
    acc: &mut Acc<S>,
) {
    let x = if CAP {
        vmath::softcap(simd, x, k.cap)
    } else {
        x
    };
    let t = simd.mul_add_f32s(x, simd.splat_f32s(LOG2E), neg_m);
    acc.exp = simd.add_f32s(acc.exp, vmath::exp2(simd, t));
    match MODE {
        PLAIN => acc.t = simd.add_f32s(acc.t, t),
        WEIGHTED => {
            acc.t = simd.mul_add_e_f32s(w, t, acc.t);
            acc.a = simd.add_f32s(acc.a, w);
        }
        _ => {
            let mut a =
                simd.mul_add_e_f32s(target, simd.splat_f32s(k.keep), simd.splat_f32s(k.spread));
            if W {
                a = simd.mul_f32s(a, w);
            }
            acc.t = simd.mul_add_e_f32s(a, t, acc.t);
            acc.a = simd.add_f32s(acc.a, a);
        }
    }
}

/// The sums of block `cur` (shifted by `big_m`) and the raw maximum of
/// `next`, in one loop. `weights` and `targets` line up with `cur` where the
/// mode reads them.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block<S: Simd, const MODE: u8, const W: bool, const CAP: bool>(
    simd: S,
    k: Kernel,
    cur: &[f32],
    next: &[f32],
    big_m: f32,
    weights: &[f32],
    targets: &[f32],
) -> (BlockSums, f32) {
    let neg_m = simd.splat_f32s(-big_m);
    let zero = simd.splat_f32s(0.0);
    let neg_inf = simd.splat_f32s(f32::NEG_INFINITY);
    let (xs, x_tail) = S::as_simd_f32s(cur);
    let (ns, n_tail) = S::as_simd_f32s(next);
    let (ws, w_tail) = if MODE == WEIGHTED || W {
        S::as_simd_f32s(weights)
    } else {
        (&[][..], &[][..])
    };
    let (ts, t_tail) = if MODE == DENSE {
        S::as_simd_f32s(targets)
    } else {
        (&[][..], &[][..])
    };
    let w_at = |i: usize| ws.get(i).copied().unwrap_or(zero);
    let t_at = |i: usize| ts.get(i).copied().unwrap_or(zero);

    // One accumulator and one vector a trip: with more, the exp's constants
    // no longer fit the 16 registers and LLVM reloads them from memory on
    // every vector, or keeps accumulators on the stack (which ran this loop
    // at about half the speed on AVX2). A macro, not a closure: closures do
    // not inherit the SIMD target features.
    let mut acc = Acc::zero(simd);
    macro_rules! step {
        ($i:expr, $x:expr) => {
            step::<S, MODE, W, CAP>(simd, k, $x, w_at($i), t_at($i), neg_m, &mut acc)
        };
    }
    let mut max = neg_inf;
    let common = xs.len().min(ns.len());
    let (x_main, x_rest) = xs.split_at(common);
    let (n_main, n_rest) = ns.split_at(common);
    for (i, (&x, &n)) in x_main.iter().zip(n_main).enumerate() {
        step!(i, x);
        max = simd.max_f32s(max, n);
    }
    for (j, &x) in x_rest.iter().enumerate() {
        step!(common + j, x);
    }
    for &n in n_rest {
        max = simd.max_f32s(max, n);
    }
    if !x_tail.is_empty() {
        let mask = simd.mask_between_m32s(0, x_tail.len() as u32).mask();
        let w = vmath::tail_or(simd, MODE == WEIGHTED || W, w_tail, zero);
        let target = vmath::tail_or(simd, MODE == DENSE, t_tail, zero);
        let mut tail = Acc::zero(simd);
        step::<S, MODE, W, CAP>(
            simd,
            k,
            simd.partial_load_f32s(x_tail),
            w,
            target,
            neg_m,
            &mut tail,
        );
        acc.exp = simd.add_f32s(acc.exp, simd.select_f32s(mask, tail.exp, zero));
        acc.t = simd.add_f32s(acc.t, simd.select_f32s(mask, tail.t, zero));
        acc.a = simd.add_f32s(acc.a, simd.select_f32s(mask, tail.a, zero));
    }
    if !n_tail.is_empty() {
        let mask = simd.mask_between_m32s(0, n_tail.len() as u32).mask();
        let n = simd.select_f32s(mask, simd.partial_load_f32s(n_tail), neg_inf);
        max = simd.max_f32s(max, n);
    }
    let sums = BlockSums {
        exp: simd.reduce_sum_f32s(acc.exp),
        t: simd.reduce_sum_f32s(acc.t),
        a: simd.reduce_sum_f32s(acc.a),
    };
    (sums, simd.reduce_max_f32s(max))
}

/// The raw maximum of `values` (the first block of a chunk).
#[inline(always)]
fn raw_max<S: Simd>(simd: S, values: &[f32]) -> f32 {
    let (head, tail) = S::as_simd_f32s(values);
    let mut max = simd.splat_f32s(f32::NEG_INFINITY);
    for &x in head {
        max = simd.max_f32s(max, x);
    }
    let mut max = simd.reduce_max_f32s(max);
    for &x in tail {
        max = max.max(x);
    }
    max
}

/// A row's running state across its blocks.
struct RowState {
    /// The running maximum of the (soft-capped) logits.
    m: f32,
    /// `fl(m·log2(e))`, the shift of every exponent.
    big_m: f32,
    /// `Σ 2^(x·log2(e) − M)` for the current M.
    exp: f64,
    /// `Σ_b (block's Σ t)`; each block's t is relative to its own M.
    t: f64,
    /// `Σ a_c` (the count for the plain mode).
    a: f64,
    /// `Σ_b a_b·M_b`, so that `Σ_c a_c·x_c·log2(e) = am + t`.
    am: f64,
    /// A raw `+inf` logit.
    poisoned: bool,
}

impl RowState {
    fn new() -> Self {
        RowState {
            m: f32::NEG_INFINITY,
            big_m: f32::NEG_INFINITY,
            exp: 0.0,
            t: 0.0,
            a: 0.0,
            am: 0.0,
            poisoned: false,
        }
    }

    /// Takes a block's maximum into the running one, rescaling the exp sum.
    fn raise_max(&mut self, m: f32) {
        if m > self.m {
            let big_m = m * LOG2E;
            if self.exp > 0.0 {
                self.exp *= (self.big_m as f64 - big_m as f64).exp2();
            }
            self.m = m;
            self.big_m = big_m;
        }
    }

    fn fold(&mut self, sums: BlockSums, a: f32) {
        self.exp += sums.exp as f64;
        self.t += sums.t as f64;
        self.a += a as f64;
        self.am += a as f64 * self.big_m as f64;
    }

    /// The row's log-sum-exp, with the rounding of `M` taken back out.
    fn lse(&self) -> f64 {
        let rounding = self.m as f64 * LOG2E64 - self.big_m as f64;
        self.m as f64 + (self.exp.log2() + rounding) * std::f64::consts::LN_2
    }

    /// `Σ_c a_c·(lse − x_c)`.
    fn spread_sum(&self, lse: f64) -> f64 {
        self.a * lse - (self.am + self.t) * std::f64::consts::LN_2
    }
}

/// Logit rows, SIMD along the classes, with the gradient when asked.
#[inline(always)]
pub(super) fn logit_rows<S: Simd>(simd: S, plan: &Plan<'_>, out: &mut ChunkOut<'_>) {
    let weighted = plan.class_weights.is_some();
    let cap = plan.softcap.is_some();
    let dense = plan.dense.is_some();
    let weighted_smoothing = weighted && plan.smoothing > 0.0;
    macro_rules! go {
        ($mode:expr, $w:expr) => {
            if cap {
                rows_with::<S, { $mode }, { $w }, true>(simd, plan, out)
            } else {
                rows_with::<S, { $mode }, { $w }, false>(simd, plan, out)
            }
        };
    }
    match (dense, weighted) {
        (true, true) => go!(DENSE, true),
        (true, false) => go!(DENSE, false),
        (false, _) if weighted_smoothing => go!(WEIGHTED, true),
        (false, _) => go!(PLAIN, false),
    }
}

#[inline(always)]
fn rows_with<S: Simd, const MODE: u8, const W: bool, const CAP: bool>(
    simd: S,
    plan: &Plan<'_>,
    out: &mut ChunkOut<'_>,
) {
    let k = Kernel::new(plan);
    let c = plan.classes;
    let end = out.rows.end;
    let next_active = |from: usize| (from..end).find(|&n| plan.active(n));
    let Some(mut n) = next_active(out.rows.start) else {
        return;
    };
    let mut scratch = Vec::new();
    let block_len = block_len::<S>();
    let mut pending = raw_max(simd, &plan.row(n)[..c.min(block_len)]);
    loop {
        let following = next_active(n + 1);
        let row = plan.row(n);
        let mut state = RowState::new();
        let blocks = c.div_ceil(block_len);
        for b in 0..blocks {
            let (lo, hi) = (b * block_len, ((b + 1) * block_len).min(c));
            let next: &[f32] = if b + 1 < blocks {
                &row[hi..(hi + block_len).min(c)]
            } else if let Some(f) = following {
                &plan.row(f)[..c.min(block_len)]
            } else {
                &[]
            };
            state.poisoned |= pending == f32::INFINITY;
            let m = if CAP {
                cap64(pending, k.cap) as f32
            } else {
                pending
            };
            state.raise_max(m);
            let weights = match plan.class_weights {
                Some(w) if MODE == WEIGHTED || W => &w[lo..hi],
                _ => &[],
            };
            let targets = match plan.dense {
                Some(t) if MODE == DENSE => &t[n * c + lo..n * c + hi],
                _ => &[],
            };
            let (sums, next_max) = block::<S, MODE, W, CAP>(
                simd,
                k,
                &row[lo..hi],
                next,
                state.big_m,
                weights,
                targets,
            );
            pending = next_max;
            let a = if MODE == PLAIN {
                (hi - lo) as f32
            } else {
                sums.a
            };
            state.fold(sums, a);
        }
        finish_row::<S, MODE, W, CAP>(simd, plan, k, n, &state, out, &mut scratch);
        match following {
            Some(f) => n = f,
            None => break,
        }
    }
}

/// Writes row `n`'s loss, lse and gradient from its state, or hands the row
/// to the f64 reference when the f32 sums cannot vouch for it.
#[inline(always)]
fn finish_row<S: Simd, const MODE: u8, const W: bool, const CAP: bool>(
    simd: S,
    plan: &Plan<'_>,
    k: Kernel,
    n: usize,
    state: &RowState,
    out: &mut ChunkOut<'_>,
    scratch: &mut Vec<f64>,
) {
    // −inf logits are fine where only the target and the lse are read.
    let t_ok = if MODE == PLAIN && plan.smoothing == 0.0 {
        !state.t.is_nan()
    } else {
        state.t.is_finite()
    };
    let ok = !state.poisoned
        && state.big_m.is_finite()
        && state.exp.is_finite()
        && state.exp > 0.0
        && t_ok;
    if !ok {
        out.careful(plan, n, scratch);
        return;
    }
    let i = n - out.rows.start;
    let lse = state.lse();
    if let Some(lses) = out.lse.as_deref_mut() {
        lses[i] = lse as f32;
    }
    if plan.ignored(n) {
        return;
    }
    let s = plan.sample_weight(n) as f64;
    let eps = plan.smoothing;
    let target = label_target(plan, k, n);
    let (cross_entropy, total) = match target {
        Some(LabelTarget { hard, logit, .. }) => {
            let nll = if hard != 0.0 {
                hard * (lse - logit)
            } else {
                0.0
            };
            let smooth = if eps > 0.0 {
                eps / plan.classes as f64 * state.spread_sum(lse)
            } else {
                0.0
            };
            (nll + smooth, label_total(plan, hard))
        }
        None => (state.spread_sum(lse), state.a),
    };
    let z_term = if plan.z_loss > 0.0 {
        plan.z_loss * lse * lse
    } else {
        0.0
    };
    out.losses[i] = if s == 0.0 {
        0.0
    } else {
        (s * (cross_entropy + z_term)) as f32
    };
    if let Some(gradient) = out.gradient.as_deref_mut() {
        let c = plan.classes;
        let row = RowGradient {
            big_m: state.big_m,
            exp: state.exp,
            lse,
            total,
            sample: s,
            target,
        };
        gradient_of::<S, MODE, W, CAP>(simd, plan, k, n, &row, &mut gradient[i * c..(i + 1) * c]);
    }
}

/// A row's target class with labels: `y`, `(1 − ε)·w_y` and its
/// (soft-capped) logit, in f64.
#[derive(Clone, Copy)]
struct LabelTarget {
    y: usize,
    hard: f64,
    logit: f64,
}

#[inline(always)]
fn label_target(plan: &Plan<'_>, k: Kernel, n: usize) -> Option<LabelTarget> {
    let labels = plan.labels?;
    let y = labels[n] as usize;
    let x = plan.row(n)[y];
    Some(LabelTarget {
        y,
        hard: (1.0 - plan.smoothing) * plan.class_weight(y) as f64,
        logit: if plan.softcap.is_some() {
            cap64(x, k.cap)
        } else {
            x as f64
        },
    })
}

/// `Σ_c a_c` of a row with labels: `(1 − ε)·w_y + ε/C·Σ_c w_c`.
fn label_total(plan: &Plan<'_>, hard: f64) -> f64 {
    hard + plan.smoothing / plan.classes as f64 * plan.class_weight_sum
}

/// What a row's gradient needs of its loss.
struct RowGradient {
    /// `M = fl(m·log2 e)`, the shift of the exps.
    big_m: f32,
    /// `Σ_c 2^(x_c·log2 e − M)`.
    exp: f64,
    lse: f64,
    /// `Σ_c a_c`.
    total: f64,
    /// `s_n`.
    sample: f64,
    target: Option<LabelTarget>,
}

/// Writes row `n`'s gradient into `grad` (its `C` values), times the
/// reduction's scale; rows of sample weight 0 keep their zeros.
#[inline(always)]
fn gradient_of<S: Simd, const MODE: u8, const W: bool, const CAP: bool>(
    simd: S,
    plan: &Plan<'_>,
    k: Kernel,
    n: usize,
    row: &RowGradient,
    grad: &mut [f32],
) {
    let Some(scale) = plan.gradient_scale else {
        return;
    };
    let s = row.sample;
    if s == 0.0 {
        return;
    }
    let c = plan.classes;
    // ∂L/∂z_c = s·((Σ_k a_k + 2·z·lse)·p_c − a_c), p_c = 2^(x_c·log2(e) − M) / Σ.
    let k1 = (scale * s * (row.total + 2.0 * plan.z_loss * row.lse) / row.exp) as f32;
    let k0 = (scale * s) as f32;
    let targets = plan.dense.map(|t| &t[n * c..(n + 1) * c]);
    gradient_row::<S, MODE, W, CAP>(simd, plan, k, n, row.big_m, k1, k0, targets, grad);
    if let Some(LabelTarget { y, hard, logit }) = row.target {
        let chain = if CAP {
            1.0 - (logit / k.cap as f64).powi(2)
        } else {
            1.0
        };
        grad[y] = (grad[y] as f64 - scale * s * hard * chain) as f32;
    }
}

/// The medium kernel's gradient rows: the call's constants, resolved once.
pub(super) struct MediumGradient {
    k: Kernel,
}

impl MediumGradient {
    pub fn new(plan: &Plan<'_>) -> Self {
        MediumGradient {
            k: Kernel::new(plan),
        }
    }

    /// Row `n`'s gradient, from its shift `big_m`, its
    /// `Σ_c 2^(x_c·log2 e − M)`, its lse and, for dense targets, its
    /// `Σ_c a_c` (`dense_total`); the rest comes from the plan as in
    /// [`finish_row`].
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub fn row<S: Simd>(
        &self,
        simd: S,
        plan: &Plan<'_>,
        n: usize,
        big_m: f32,
        exp: f32,
        lse: f32,
        dense_total: f32,
        grad: &mut [f32],
    ) {
        if plan.ignored(n) {
            return;
        }
        let k = self.k;
        let target = label_target(plan, k, n);
        let row = RowGradient {
            big_m,
            exp: exp as f64,
            lse: lse as f64,
            total: target.map_or(dense_total as f64, |t| label_total(plan, t.hard)),
            sample: plan.sample_weight(n) as f64,
            target,
        };
        match (plan.dense.is_some(), plan.softcap.is_some()) {
            (false, false) => gradient_of::<S, PLAIN, false, false>(simd, plan, k, n, &row, grad),
            (false, true) => gradient_of::<S, PLAIN, false, true>(simd, plan, k, n, &row, grad),
            (true, false) => gradient_of::<S, DENSE, false, false>(simd, plan, k, n, &row, grad),
            (true, true) => gradient_of::<S, DENSE, false, true>(simd, plan, k, n, &row, grad),
        }
    }
}

/// What [`gradient_element`] needs of its row.
struct GradientCoefficients<S: Simd> {
    neg_m: S::f32s,
    k1: f32,
    k0: f32,
    dense: bool,
    weighted: bool,
}

/// One vector of [`gradient_row`]. A function, not a closure: closures do
/// not inherit the SIMD target features, and out of line one ran the
/// gradient about 10× slower.
#[inline(always)]
fn gradient_element<S: Simd, const CAP: bool>(
    simd: S,
    k: Kernel,
    c: &GradientCoefficients<S>,
    x: S::f32s,
    w: S::f32s,
    target: S::f32s,
) -> S::f32s {
    let z = if CAP {
        vmath::softcap(simd, x, k.cap)
    } else {
        x
    };
    let p = vmath::exp2(simd, simd.mul_add_f32s(z, simd.splat_f32s(LOG2E), c.neg_m));
    let mut a = if c.dense {
        simd.mul_add_e_f32s(target, simd.splat_f32s(k.keep), simd.splat_f32s(k.spread))
    } else {
        simd.splat_f32s(k.spread)
    };
    if c.weighted {
        a = simd.mul_f32s(a, w);
    }
    let g = simd.sub_f32s(
        simd.mul_f32s(simd.splat_f32s(c.k1), p),
        simd.mul_f32s(simd.splat_f32s(c.k0), a),
    );
    if CAP {
        let u = simd.mul_f32s(z, simd.splat_f32s(1.0 / k.cap));
        simd.mul_f32s(g, simd.sub_f32s(simd.splat_f32s(1.0), simd.mul_f32s(u, u)))
    } else {
        g
    }
}

/// `k1·2^(x_c·log2(e) − M) − k0·a'_c`, times the soft-cap's chain rule, for
/// every class of row `n`; `a'_c` is `ε/C·w_c` for labels (the target's own
/// term is the caller's) and `w_c·((1−ε)·t_c + ε/C)` for dense targets.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gradient_row<S: Simd, const MODE: u8, const W: bool, const CAP: bool>(
    simd: S,
    plan: &Plan<'_>,
    k: Kernel,
    n: usize,
    big_m: f32,
    k1: f32,
    k0: f32,
    targets: Option<&[f32]>,
    grad: &mut [f32],
) {
    let row = plan.row(n);
    let weights = plan.class_weights.unwrap_or(&[]);
    let targets = targets.unwrap_or(&[]);
    let dense = MODE == DENSE;
    let weighted = plan.class_weights.is_some();
    let coefficients = GradientCoefficients {
        neg_m: simd.splat_f32s(-big_m),
        k1,
        k0,
        dense,
        weighted,
    };
    macro_rules! element {
        ($x:expr, $w:expr, $target:expr) => {
            gradient_element::<S, CAP>(simd, k, &coefficients, $x, $w, $target)
        };
    }
    let (xs, x_tail) = S::as_simd_f32s(row);
    let (gs, g_tail) = S::as_mut_simd_f32s(grad);
    let (ws, w_tail) = S::as_simd_f32s(weights);
    let (ts, t_tail) = S::as_simd_f32s(targets);
    let zero = simd.splat_f32s(0.0);
    for (i, (g, &x)) in gs.iter_mut().zip(xs).enumerate() {
        let w = if weighted { ws[i] } else { zero };
        let target = if dense { ts[i] } else { zero };
        *g = element!(x, w, target);
    }
    if !x_tail.is_empty() {
        let w = vmath::tail_or(simd, weighted, w_tail, zero);
        let target = vmath::tail_or(simd, dense, t_tail, zero);
        let g = element!(simd.partial_load_f32s(x_tail), w, target);
        simd.partial_store_f32s(g_tail, g);
    }
}

/// Probability rows: `ℓ_c = ln(clip(p_c/Σp, 1e-7, 1 − 1e-7))`, SIMD along
/// the classes, two sweeps per row (the total, then the logs) while the row
/// is in cache.
#[inline(always)]
pub(super) fn probability_rows<S: Simd>(simd: S, plan: &Plan<'_>, out: &mut ChunkOut<'_>) {
    let k = Kernel::new(plan);
    let c = plan.classes;
    let eps = plan.smoothing;
    let lo = crate::spec::PROBABILITY_EPSILON;
    let hi = 1.0f32 - crate::spec::PROBABILITY_EPSILON;
    let mut scratch = Vec::new();
    for n in out.rows.clone() {
        if plan.ignored(n) {
            continue;
        }
        let row = plan.row(n);
        let total = block_sum(simd, row);
        if !(total.is_finite() && total > 0.0) {
            out.careful(plan, n, &mut scratch);
            continue;
        }
        // Σ_c a'_c·ℓ_c over the classes whose coefficient a vector computes.
        let targets = plan.dense.map(|t| &t[n * c..(n + 1) * c]);
        let log_sum = if plan.dense.is_some() || eps > 0.0 {
            weighted_logs(simd, plan, k, row, targets, (1.0 / total) as f32, lo, hi)
        } else {
            0.0
        };
        let cross_entropy = match plan.labels {
            Some(labels) => {
                let y = labels[n] as usize;
                let hard = (1.0 - eps) * plan.class_weight(y) as f64;
                let log_q = (row[y] as f64 / total).clamp(lo as f64, hi as f64).ln();
                let nll = if hard != 0.0 { -hard * log_q } else { 0.0 };
                nll - eps / c as f64 * log_sum
            }
            None => -log_sum,
        };
        if !cross_entropy.is_finite() {
            out.careful(plan, n, &mut scratch);
            continue;
        }
        let s = plan.sample_weight(n) as f64;
        out.losses[n - out.rows.start] = if s == 0.0 {
            0.0
        } else {
            (s * cross_entropy) as f32
        };
    }
}

/// `Σ values` through f32 block sums folded in f64.
#[inline(always)]
fn block_sum<S: Simd>(simd: S, values: &[f32]) -> f64 {
    let mut total = 0.0f64;
    for block in values.chunks(block_len::<S>()) {
        let (head, tail) = S::as_simd_f32s(block);
        let mut acc = [simd.splat_f32s(0.0); 4];
        for (i, &x) in head.iter().enumerate() {
            acc[i % 4] = simd.add_f32s(acc[i % 4], x);
        }
        let acc = simd.add_f32s(simd.add_f32s(acc[0], acc[1]), simd.add_f32s(acc[2], acc[3]));
        total += (simd.reduce_sum_f32s(acc) + tail.iter().sum::<f32>()) as f64;
    }
    total
}

/// The scale and clip of [`weighted_log`]'s probabilities.
struct Clip {
    inverse: f32,
    lo: f32,
    hi: f32,
}

/// One vector of [`weighted_logs`]: `a·ln(clip(p·inverse, lo, hi))`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn weighted_log<S: Simd>(
    simd: S,
    k: Kernel,
    clip: &Clip,
    dense: bool,
    weighted: bool,
    p: S::f32s,
    w: S::f32s,
    target: S::f32s,
) -> S::f32s {
    let q = simd.mul_f32s(p, simd.splat_f32s(clip.inverse));
    let q = simd.min_f32s(
        simd.max_f32s(q, simd.splat_f32s(clip.lo)),
        simd.splat_f32s(clip.hi),
    );
    let log_q = simd.mul_f32s(
        vmath::log2(simd, q),
        simd.splat_f32s(std::f32::consts::LN_2),
    );
    let mut a = if dense {
        simd.mul_add_e_f32s(target, simd.splat_f32s(k.keep), simd.splat_f32s(k.spread))
    } else {
        simd.splat_f32s(1.0)
    };
    if weighted {
        a = simd.mul_f32s(a, w);
    }
    simd.mul_f32s(a, log_q)
}

/// `Σ_c a_c·ln(clip(p_c·inverse, lo, hi))` with `a_c = w_c` (labels) or
/// `w_c·((1−ε)·t_c + ε/C)` (dense targets).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn weighted_logs<S: Simd>(
    simd: S,
    plan: &Plan<'_>,
    k: Kernel,
    row: &[f32],
    targets: Option<&[f32]>,
    inverse: f32,
    lo: f32,
    hi: f32,
) -> f64 {
    let weighted = plan.class_weights.is_some();
    let dense = targets.is_some();
    let clip = Clip { inverse, lo, hi };
    // A macro, not a closure: closures do not inherit the SIMD target features.
    macro_rules! term {
        ($p:expr, $w:expr, $target:expr) => {
            weighted_log::<S>(simd, k, &clip, dense, weighted, $p, $w, $target)
        };
    }
    let weights = plan.class_weights.unwrap_or(&[]);
    let targets = targets.unwrap_or(&[]);
    let zero = simd.splat_f32s(0.0);
    let mut total = 0.0f64;
    let block_len = block_len::<S>();
    for (b, block) in row.chunks(block_len).enumerate() {
        let range = b * block_len..b * block_len + block.len();
        let (ps, p_tail) = S::as_simd_f32s(block);
        let (ws, w_tail) = S::as_simd_f32s(if weighted {
            &weights[range.clone()]
        } else {
            &[]
        });
        let (ts, t_tail) = S::as_simd_f32s(if dense { &targets[range] } else { &[] });
        let mut acc = [zero; 4];
        for (i, &p) in ps.iter().enumerate() {
            let w = if weighted { ws[i] } else { zero };
            let target = if dense { ts[i] } else { zero };
            acc[i % 4] = simd.add_f32s(acc[i % 4], term!(p, w, target));
        }
        if !p_tail.is_empty() {
            let mask = simd.mask_between_m32s(0, p_tail.len() as u32).mask();
            let w = vmath::tail_or(simd, weighted, w_tail, zero);
            let target = vmath::tail_or(simd, dense, t_tail, zero);
            let p = simd.select_f32s(mask, simd.partial_load_f32s(p_tail), simd.splat_f32s(1.0));
            acc[0] = simd.add_f32s(acc[0], simd.select_f32s(mask, term!(p, w, target), zero));
        }
        let acc = simd.add_f32s(simd.add_f32s(acc[0], acc[1]), simd.add_f32s(acc[2], acc[3]));
        total += simd.reduce_sum_f32s(acc) as f64;
    }
    total
}
