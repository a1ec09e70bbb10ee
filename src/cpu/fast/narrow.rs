//! Lane-group kernels for short rows: logits with labels (and dense targets
//! in the medium kernel), probabilities.
//!
//! Narrow rows (C ≤ [`super::NARROW_MAX_CLASSES`]): one row per SIMD lane. A
//! group of rows is transposed so that vector `c` holds class c of every
//! row; the max, the exps, the target pick, the log and the loss (and, when
//! asked for, the gradient's columns) are then all vector ops across rows.
//! C is a const parameter, so the transpose and the class loop are fully
//! unrolled. Narrow rows of probabilities (labels or dense targets) take
//! the same transpose for their total and logs ([`narrow_probability_rows`]).
//!
//! Medium rows (up to [`super::MEDIUM_MAX_CLASSES`]): SIMD along each row's
//! classes, 8 rows a group; the rows' sums then take the narrow kernel's
//! epilogue ([`finish_group`]), and a gradient the row kernels' row by row
//! ([`super::rows`]).

use pulp::Simd;

use super::vmath::{self, LOG2E};
use super::{rows, ChunkOut, Plan, MAX_LANES};

#[inline(always)]
pub(super) fn narrow_rows<S: Simd>(simd: S, plan: &Plan<'_>, out: &mut ChunkOut<'_>) {
    macro_rules! widths {
        ($($c:literal)*) => {
            match (plan.classes, plan.softcap.is_none() && plan.smoothing == 0.0) {
                $(
                    ($c, true) => narrow_with::<S, $c, true>(simd, plan, out),
                    ($c, false) => narrow_with::<S, $c, false>(simd, plan, out),
                )*
                _ => unreachable!("narrow rows have at most NARROW_MAX_CLASSES classes"),
            }
        };
    }
    widths!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24);
}

/// Per-call constants of the lane-group kernels.
struct Consts {
    cap: Option<f32>,
    /// 1 − ε.
    keep: f32,
    /// ε/C.
    spread: f32,
    weight_sum: f32,
    z_loss: f32,
    smoothing: bool,
    /// Dense targets (the medium kernel only).
    dense: bool,
}

impl Consts {
    /// Whether the loss has spread terms `Σ_c a_c·(lse − x_c)` besides the
    /// target's: smoothing or dense targets.
    fn spreads(&self) -> bool {
        self.smoothing || self.dense
    }

    /// `plain`: no soft cap and no smoothing, whatever the plan says (the
    /// callers only pass it when the plan has neither).
    fn new(plan: &Plan<'_>, plain: bool) -> Self {
        let eps = if plain { 0.0 } else { plan.smoothing as f32 };
        Consts {
            cap: if plain { None } else { plan.softcap },
            keep: 1.0 - eps,
            spread: (plan.smoothing / plan.classes as f64) as f32,
            weight_sum: plan.class_weight_sum as f32,
            z_loss: plan.z_loss as f32,
            smoothing: !plain && eps > 0.0,
            dense: plan.dense.is_some(),
        }
    }
}

/// A lane group's per-row inputs: labels, sample weights and `(1 − ε)·w_y`,
/// the last two 0 for ignored rows; padding lanes read label 0, weight 1
/// and are never stored.
#[derive(Clone, Copy)]
struct GroupInputs<S: Simd> {
    label: S::u32s,
    sample: S::f32s,
    hard: S::f32s,
}

#[inline(always)]
fn group_inputs<S: Simd>(
    simd: S,
    plan: &Plan<'_>,
    k: &Consts,
    first: usize,
    valid: usize,
) -> GroupInputs<S> {
    let zero = simd.splat_f32s(0.0);
    let mut sample = match plan.batch.sample_weights {
        Some(weights) => vmath::load(simd, &weights[first..first + valid]),
        None => simd.splat_f32s(1.0),
    };
    let Some(labels) = plan.labels else {
        // Dense targets: no target class, every term a spread one.
        return GroupInputs {
            label: simd.splat_u32s(u32::MAX),
            sample,
            hard: zero,
        };
    };
    let label = vmath::load_i32(simd, &labels[first..first + valid]);
    let ignored = plan
        .spec
        .ignore_index
        .map(|ignore| simd.equal_i32s(label, simd.splat_i32s(ignore)));
    let mut hard = match plan.class_weights {
        Some(weights) => {
            let mut values = [0.0f32; MAX_LANES];
            for (r, value) in values[..valid].iter_mut().enumerate() {
                let y = labels[first + r];
                *value = if Some(y) == plan.spec.ignore_index {
                    0.0
                } else {
                    k.keep * weights[y as usize]
                };
            }
            vmath::load(simd, &values[..valid])
        }
        None => simd.splat_f32s(k.keep),
    };
    if let Some(ignored) = ignored {
        sample = simd.select_f32s(ignored, zero, sample);
        hard = simd.select_f32s(ignored, zero, hard);
    }
    GroupInputs {
        label: simd.transmute_u32s_i32s(label),
        sample,
        hard,
    }
}

/// A lane group's row maxima and shifts: `m` is the soft-capped maximum,
/// `M = fl(m·log2 e)`, and `rounding` is exactly `m·log2 e − M`.
struct Shift<S: Simd> {
    raw_max: S::f32s,
    m: S::f32s,
    big_m: S::f32s,
    rounding: S::f32s,
    neg_m: S::f32s,
}

#[inline(always)]
fn shift<S: Simd>(simd: S, k: &Consts, raw_max: S::f32s) -> Shift<S> {
    let m = match k.cap {
        Some(cap) => vmath::softcap(simd, raw_max, cap),
        None => raw_max,
    };
    let big_m = simd.mul_f32s(m, simd.splat_f32s(LOG2E));
    Shift {
        raw_max,
        m,
        big_m,
        rounding: simd.mul_add_f32s(m, simd.splat_f32s(LOG2E), simd.neg_f32s(big_m)),
        neg_m: simd.neg_f32s(big_m),
    }
}

/// A lane group's row sums: `Σ 2^t` and `Σ t` with `t = x·log2 e − M`, the
/// target's (soft-capped) logit, and with spread terms (smoothing or dense
/// targets, weights `a_c`) `Σ_c a_c` and `Σ_c a_c·(m − x_c)`.
struct GroupSums<S: Simd> {
    exp: S::f32s,
    t_sum: S::f32s,
    target: S::f32s,
    spread_total: S::f32s,
    spread_sum: S::f32s,
}

/// Writes a lane group's losses (and row lse) and returns its lse and the
/// lanes the f32 sums vouch for.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn finish_group<S: Simd>(
    simd: S,
    k: &Consts,
    inputs: &GroupInputs<S>,
    shift: &Shift<S>,
    sums: &GroupSums<S>,
    out: &mut ChunkOut<'_>,
    i: usize,
    valid: usize,
) -> (S::f32s, S::m32s) {
    let splat = |v: f32| simd.splat_f32s(v);
    let zero = splat(0.0);
    let inf = splat(f32::INFINITY);
    let Shift {
        raw_max,
        m,
        big_m,
        rounding,
        ..
    } = *shift;
    // lse − m = (log2 Σ + rounding)·ln 2
    let offset = simd.mul_f32s(
        simd.add_f32s(vmath::log2(simd, sums.exp), rounding),
        splat(std::f32::consts::LN_2),
    );
    let lse = simd.add_f32s(m, offset);
    let hard = inputs.hard;
    let nll = simd.mul_f32s(hard, simd.add_f32s(simd.sub_f32s(m, sums.target), offset));
    let mut loss = simd.select_f32s(simd.equal_f32s(hard, zero), zero, nll);
    if k.spreads() {
        // Σ_c a_c·(lse − x_c) = Σ_c a_c·(m − x_c) + (Σ_c a_c)·(lse − m).
        let spread = simd.mul_add_e_f32s(sums.spread_total, offset, sums.spread_sum);
        loss = simd.add_f32s(loss, spread);
    }
    if k.z_loss > 0.0 {
        loss = simd.mul_add_e_f32s(simd.mul_f32s(splat(k.z_loss), lse), lse, loss);
    }
    let sample = inputs.sample;
    let loss = simd.select_f32s(
        simd.equal_f32s(sample, zero),
        zero,
        simd.mul_f32s(sample, loss),
    );

    // Lanes the f32 sums cannot vouch for go to the f64 reference. A
    // finite M implies a finite m; M overflows for |m| > 2.4e38.
    let mut ok = simd.and_m32s(
        simd.less_than_f32s(vmath::abs(simd, big_m), inf),
        simd.less_than_f32s(raw_max, inf),
    );
    ok = simd.and_m32s(
        ok,
        if k.spreads() {
            simd.less_than_f32s(vmath::abs(simd, sums.t_sum), inf)
        } else {
            simd.equal_f32s(sums.t_sum, sums.t_sum)
        },
    );
    vmath::store(simd, &mut out.losses[i..i + valid], loss);
    if let Some(lses) = out.lse.as_deref_mut() {
        vmath::store(simd, &mut lses[i..i + valid], lse);
    }
    (lse, ok)
}

/// Recomputes the group's rows outside `ok` with the f64 reference.
#[inline(always)]
fn redo_unsure<S: Simd>(
    simd: S,
    plan: &Plan<'_>,
    ok: S::m32s,
    first: usize,
    valid: usize,
    out: &mut ChunkOut<'_>,
    scratch: &mut Vec<f64>,
) {
    if vmath::all(simd, ok) {
        return;
    }
    let mut lanes = [0.0f32; MAX_LANES];
    let ok = simd.select_f32s(ok, simd.splat_f32s(1.0), simd.splat_f32s(0.0));
    vmath::store(simd, &mut lanes[..valid], ok);
    for (r, &lane_ok) in lanes[..valid].iter().enumerate() {
        if lane_ok == 0.0 && plan.active(first + r) {
            out.careful(plan, first + r, scratch);
        }
    }
}

/// `PLAIN`: no soft cap and no smoothing, known at compile time so that the
/// class loop has no branches and unrolls.
#[inline(always)]
fn narrow_with<S: Simd, const C: usize, const PLAIN: bool>(
    simd: S,
    plan: &Plan<'_>,
    out: &mut ChunkOut<'_>,
) {
    let lanes = S::F32_LANES;
    let k = Consts::new(plan, PLAIN);
    // a_c of the smoothing terms: ε/C·w_c.
    let spread_weights: [f32; C] = std::array::from_fn(|c| k.spread * plan.class_weight(c));
    let gradient_scale = plan.gradient_scale.map(|scale| scale as f32);
    let splat = |v: f32| simd.splat_f32s(v);
    let zero = splat(0.0);
    let mut scratch = Vec::new();
    let mut xs = [zero; C];
    let rows = out.rows.clone();
    let mut first = rows.start;
    while first < rows.end {
        let valid = (rows.end - first).min(lanes);
        transpose::<S, C>(simd, plan.batch.logits, first, valid, &mut xs);
        let inputs = group_inputs(simd, plan, &k, first, valid);

        let mut raw_max = xs[0];
        for &x in &xs[1..] {
            raw_max = simd.max_f32s(raw_max, x);
        }
        let shift = shift(simd, &k, raw_max);
        let (m, neg_m) = (shift.m, shift.neg_m);
        let (mut exp, mut t_sum, mut target, mut spread_sum) = (zero, zero, zero, zero);
        for (c, &x) in xs.iter().enumerate() {
            let x = match k.cap {
                Some(cap) => vmath::softcap(simd, x, cap),
                None => x,
            };
            let t = simd.mul_add_f32s(x, splat(LOG2E), neg_m);
            t_sum = simd.add_f32s(t_sum, t);
            exp = simd.add_f32s(exp, vmath::exp2(simd, t));
            let is_target = simd.equal_u32s(inputs.label, simd.splat_u32s(c as u32));
            target = simd.select_f32s(is_target, x, target);
            if k.smoothing {
                // Σ_c a_c·(m − x_c), every term ≥ 0.
                spread_sum =
                    simd.mul_add_e_f32s(splat(spread_weights[c]), simd.sub_f32s(m, x), spread_sum);
            }
        }
        let sums = GroupSums {
            exp,
            t_sum,
            target,
            spread_total: splat(k.spread * k.weight_sum),
            spread_sum,
        };
        let i = first - rows.start;
        let (lse, ok) = finish_group(simd, &k, &inputs, &shift, &sums, out, i, valid);
        if let (Some(scale), Some(gradient)) = (gradient_scale, out.gradient.as_deref_mut()) {
            let group = GroupRows {
                inputs: &inputs,
                lse,
                exp,
                neg_m,
            };
            let columns = gradient_columns::<S, C>(simd, plan, &k, &xs, &group, scale);
            // Columns back to rows: lane r of column c is row r's class c.
            let mut lanes_of = [[0.0f32; MAX_LANES]; C];
            for (lanes, &column) in lanes_of.iter_mut().zip(&columns) {
                vmath::store(simd, &mut lanes[..valid], column);
            }
            for (r, row) in gradient[i * C..(i + valid) * C]
                .chunks_exact_mut(C)
                .enumerate()
            {
                for (g, lanes) in row.iter_mut().zip(&lanes_of) {
                    *g = lanes[r];
                }
            }
        }
        redo_unsure(simd, plan, ok, first, valid, out, &mut scratch);
        first += valid;
    }
}

/// Narrow rows of probabilities (labels or dense targets), one row per
/// lane: `ℓ_c = ln(clip(p_c/Σp, 1e-7, 1 − 1e-7))` and the loss
/// `−Σ_c a_c·ℓ_c` as vector ops across rows. Rows with a zero or
/// non-finite total, or a non-finite loss, go to the f64 reference.
#[inline(always)]
pub(super) fn narrow_probability_rows<S: Simd>(simd: S, plan: &Plan<'_>, out: &mut ChunkOut<'_>) {
    macro_rules! widths {
        ($($c:literal)*) => {
            match plan.classes {
                $($c => probabilities_with::<S, $c>(simd, plan, out),)*
                _ => unreachable!("narrow rows have at most NARROW_MAX_CLASSES classes"),
            }
        };
    }
    widths!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24);
}

#[inline(always)]
fn probabilities_with<S: Simd, const C: usize>(simd: S, plan: &Plan<'_>, out: &mut ChunkOut<'_>) {
    let lanes = S::F32_LANES;
    let k = Consts::new(plan, false);
    let class_weights: [f32; C] = std::array::from_fn(|c| plan.class_weight(c));
    let splat = |v: f32| simd.splat_f32s(v);
    let zero = splat(0.0);
    let (lo, hi) = (
        splat(crate::spec::PROBABILITY_EPSILON),
        splat(1.0 - crate::spec::PROBABILITY_EPSILON),
    );
    let (keep, spread) = (splat(k.keep), splat(k.spread));
    let mut scratch = Vec::new();
    let (mut ps, mut ts) = ([zero; C], [zero; C]);
    let rows = out.rows.clone();
    let mut first = rows.start;
    while first < rows.end {
        let valid = (rows.end - first).min(lanes);
        transpose::<S, C>(simd, plan.batch.logits, first, valid, &mut ps);
        let inputs = group_inputs(simd, plan, &k, first, valid);
        let mut total = ps[0];
        for &p in &ps[1..] {
            total = simd.add_f32s(total, p);
        }
        // ℓ = ln(clip(p/Σp)); a division, so that a tiny total does not
        // overflow its reciprocal.
        macro_rules! log_q {
            ($p:expr) => {{
                let q = simd.min_f32s(simd.max_f32s(simd.div_f32s($p, total), lo), hi);
                simd.mul_f32s(vmath::log2(simd, q), splat(std::f32::consts::LN_2))
            }};
        }
        // Σ_c a_c·ℓ_c with a_c = w_c·((1 − ε)·t_c + ε/C), or ε/C·w_c with labels.
        let mut spread_sum = zero;
        if let Some(targets) = plan.dense {
            transpose::<S, C>(simd, targets, first, valid, &mut ts);
            for c in 0..C {
                let a = simd.mul_f32s(
                    splat(class_weights[c]),
                    simd.mul_add_e_f32s(ts[c], keep, spread),
                );
                spread_sum = simd.mul_add_e_f32s(a, log_q!(ps[c]), spread_sum);
            }
        } else if k.smoothing {
            for (c, &p) in ps.iter().enumerate() {
                spread_sum =
                    simd.mul_add_e_f32s(splat(k.spread * class_weights[c]), log_q!(p), spread_sum);
            }
        }
        let mut target = zero;
        for (c, &p) in ps.iter().enumerate() {
            let is_target = simd.equal_u32s(inputs.label, simd.splat_u32s(c as u32));
            target = simd.select_f32s(is_target, p, target);
        }
        let hard = inputs.hard;
        let nll = simd.mul_f32s(hard, log_q!(target));
        let nll = simd.select_f32s(simd.equal_f32s(hard, zero), zero, nll);
        let loss = simd.neg_f32s(simd.add_f32s(nll, spread_sum));
        let inf = splat(f32::INFINITY);
        let ok = simd.and_m32s(
            simd.and_m32s(
                simd.less_than_f32s(total, inf),
                simd.greater_than_f32s(total, zero),
            ),
            simd.less_than_f32s(vmath::abs(simd, loss), inf),
        );
        let sample = inputs.sample;
        let loss = simd.select_f32s(
            simd.equal_f32s(sample, zero),
            zero,
            simd.mul_f32s(sample, loss),
        );
        let i = first - rows.start;
        vmath::store(simd, &mut out.losses[i..i + valid], loss);
        redo_unsure(simd, plan, ok, first, valid, out, &mut scratch);
        first += valid;
    }
}

/// Short rows (more than [`super::NARROW_MAX_CLASSES`], at most
/// [`super::MEDIUM_MAX_CLASSES`] classes; labels, or dense targets up to
/// [`super::MEDIUM_DENSE_MAX_CLASSES`]), a group
/// of 8 rows at a time: each row's maximum, then its exps, by SIMD along
/// the classes (the row is in L1 for the second pass); the rows' sums meet
/// in lane vectors, so that the log, the loss and the checks are the narrow
/// kernel's vector ops across rows. No per-row f64 state or scalar `log2`.
#[inline(always)]
pub(super) fn medium_rows<S: Simd>(simd: S, plan: &Plan<'_>, out: &mut ChunkOut<'_>) {
    if plan.softcap.is_none() && plan.smoothing == 0.0 {
        medium_with::<S, true>(simd, plan, out)
    } else {
        medium_with::<S, false>(simd, plan, out)
    }
}

#[inline(always)]
fn medium_with<S: Simd, const PLAIN: bool>(simd: S, plan: &Plan<'_>, out: &mut ChunkOut<'_>) {
    let lanes = S::F32_LANES;
    let k = Consts::new(plan, PLAIN);
    let c = plan.classes;
    let labels = plan.labels.unwrap_or(&[]);
    let weighted = plan.class_weights.is_some();
    let (weight_head, weight_tail) = S::as_simd_f32s(plan.class_weights.unwrap_or(&[]));
    let zero = simd.splat_f32s(0.0);
    let one = simd.splat_f32s(1.0);
    let neg_inf = simd.splat_f32s(f32::NEG_INFINITY);
    let log2e = simd.splat_f32s(LOG2E);
    let (keep, spread) = (simd.splat_f32s(k.keep), simd.splat_f32s(k.spread));
    let gradient_rows = plan.gradient_scale.map(|_| rows::MediumGradient::new(plan));
    let mut scratch = Vec::new();
    let rows = out.rows.clone();
    let mut first = rows.start;
    while first < rows.end {
        let valid = (rows.end - first).min(lanes);
        let inputs = group_inputs(simd, plan, &k, first, valid);
        let mut maxes = [0.0f32; MAX_LANES];
        for (r, row_max) in maxes[..valid].iter_mut().enumerate() {
            let (head, tail) = S::as_simd_f32s(plan.row(first + r));
            let mut max = neg_inf;
            for &x in head {
                max = simd.max_f32s(max, x);
            }
            *row_max = simd.reduce_max_f32s(max);
            for &x in tail {
                *row_max = row_max.max(x);
            }
        }
        let shift = shift(simd, &k, vmath::load(simd, &maxes[..valid]));
        let (mut neg_ms, mut ms) = ([0.0f32; MAX_LANES], [0.0f32; MAX_LANES]);
        vmath::store(simd, &mut neg_ms[..valid], shift.neg_m);
        vmath::store(simd, &mut ms[..valid], shift.m);
        // Per-row sums, gathered into lanes.
        const EXP: usize = 0;
        const T_SUM: usize = 1;
        const TOTAL: usize = 2;
        const SPREAD: usize = 3;
        const TARGET: usize = 4;
        let mut lane = [[0.0f32; MAX_LANES]; 5];
        for r in 0..valid {
            let n = first + r;
            let row = plan.row(n);
            let (head, tail) = S::as_simd_f32s(row);
            let (target_head, target_tail) = match plan.dense {
                Some(t) => S::as_simd_f32s(&t[n * c..(n + 1) * c]),
                None => (&[][..], &[][..]),
            };
            let neg_m = simd.splat_f32s(neg_ms[r]);
            let m = simd.splat_f32s(ms[r]);
            let (mut exp, mut t_sum, mut total, mut spread_sum) = (zero, zero, zero, zero);
            // Macros, not closures: closures do not inherit the SIMD target
            // features. `$w` is the class weight, `$t` the dense target;
            // `$mask` keeps the lanes of a partial vector.
            macro_rules! masked {
                ($mask:expr, $v:expr) => {
                    match $mask {
                        Some(mask) => simd.select_f32s(mask, $v, zero),
                        None => $v,
                    }
                };
            }
            macro_rules! add {
                ($x:expr, $w:expr, $t:expr, $mask:expr) => {{
                    let x = match k.cap {
                        Some(cap) => vmath::softcap(simd, $x, cap),
                        None => $x,
                    };
                    let t = simd.mul_add_f32s(x, log2e, neg_m);
                    let e = vmath::exp2(simd, t);
                    t_sum = simd.add_f32s(t_sum, masked!($mask, t));
                    exp = simd.add_f32s(exp, masked!($mask, e));
                    if k.spreads() {
                        // a_c = w_c·((1 − ε)·t_c + ε/C), or ε/C·w_c with labels.
                        let a = if k.dense {
                            simd.mul_f32s($w, simd.mul_add_e_f32s($t, keep, spread))
                        } else {
                            simd.mul_f32s($w, spread)
                        };
                        let a = masked!($mask, a);
                        total = simd.add_f32s(total, a);
                        spread_sum = simd.mul_add_e_f32s(a, simd.sub_f32s(m, x), spread_sum);
                    }
                }};
            }
            for (j, &x) in head.iter().enumerate() {
                let w = if weighted { weight_head[j] } else { one };
                let t = if k.dense { target_head[j] } else { zero };
                add!(x, w, t, None::<S::m32s>);
            }
            if !tail.is_empty() {
                let mask = simd.mask_between_m32s(0, tail.len() as u32).mask();
                let w = vmath::tail_or(simd, weighted, weight_tail, one);
                let t = vmath::tail_or(simd, k.dense, target_tail, zero);
                add!(simd.partial_load_f32s(tail), w, t, Some(mask));
            }
            lane[EXP][r] = simd.reduce_sum_f32s(exp);
            lane[T_SUM][r] = simd.reduce_sum_f32s(t_sum);
            lane[TOTAL][r] = simd.reduce_sum_f32s(total);
            lane[SPREAD][r] = simd.reduce_sum_f32s(spread_sum);
            // The target's logit; 0 for an ignored row's label or dense targets.
            lane[TARGET][r] = labels
                .get(n)
                .and_then(|&y| usize::try_from(y).ok())
                .and_then(|y| row.get(y))
                .map_or(0.0, |&x| x);
        }
        let target = vmath::load(simd, &lane[TARGET][..valid]);
        let sums = GroupSums {
            exp: vmath::load(simd, &lane[EXP][..valid]),
            t_sum: vmath::load(simd, &lane[T_SUM][..valid]),
            target: match k.cap {
                Some(cap) => vmath::softcap(simd, target, cap),
                None => target,
            },
            spread_total: vmath::load(simd, &lane[TOTAL][..valid]),
            spread_sum: vmath::load(simd, &lane[SPREAD][..valid]),
        };
        let i = first - rows.start;
        let (lse, ok) = finish_group(simd, &k, &inputs, &shift, &sums, out, i, valid);
        if let (Some(writer), Some(gradient)) = (&gradient_rows, out.gradient.as_deref_mut()) {
            let (mut lses, mut big_ms) = ([0.0f32; MAX_LANES], [0.0f32; MAX_LANES]);
            vmath::store(simd, &mut lses[..valid], lse);
            vmath::store(simd, &mut big_ms[..valid], shift.big_m);
            let rows = gradient[i * c..(i + valid) * c].chunks_exact_mut(c);
            for (r, grad) in rows.enumerate() {
                let (exp, total) = (lane[EXP][r], lane[TOTAL][r]);
                writer.row(simd, plan, first + r, big_ms[r], exp, lses[r], total, grad);
            }
        }
        redo_unsure(simd, plan, ok, first, valid, out, &mut scratch);
        first += valid;
    }
}

/// What a lane group's gradient needs besides its inputs.
struct GroupRows<'g, S: Simd> {
    inputs: &'g GroupInputs<S>,
    lse: S::f32s,
    /// `Σ_c 2^(x_c·log2(e) − M)`.
    exp: S::f32s,
    /// `−M`.
    neg_m: S::f32s,
}

/// Column c: `∂L/∂x_c` of every row of the group, times `scale` (the
/// reduction's), as the row kernels' `gradient_row` computes it:
/// `s·((Σ_k a_k + 2·z·lse)·p_c − a_c)` times the soft cap's chain rule, with
/// `a_c = (1 − ε)·w_y·[c = y] + ε/C·w_c`. Rows of sample weight 0 (ignored
/// ones included) get zeros.
#[inline(always)]
fn gradient_columns<S: Simd, const C: usize>(
    simd: S,
    plan: &Plan<'_>,
    k: &Consts,
    xs: &[S::f32s; C],
    rows: &GroupRows<'_, S>,
    scale: f32,
) -> [S::f32s; C] {
    let zero = simd.splat_f32s(0.0);
    let spread = k.spread;
    let GroupInputs {
        label,
        sample,
        hard,
    } = *rows.inputs;
    let k0 = simd.mul_f32s(sample, simd.splat_f32s(scale));
    // Σ_k a_k = (1 − ε)·w_y + ε/C·Σ_k w_k.
    let total = simd.mul_add_e_f32s(simd.splat_f32s(spread), simd.splat_f32s(k.weight_sum), hard);
    let total = if k.z_loss > 0.0 {
        let z_term = simd.mul_f32s(simd.splat_f32s(2.0 * k.z_loss), rows.lse);
        simd.add_f32s(total, z_term)
    } else {
        total
    };
    let k1 = simd.div_f32s(simd.mul_f32s(k0, total), rows.exp);
    let target = simd.mul_f32s(k0, hard);
    let inactive = simd.equal_f32s(sample, zero);
    let mut columns = [zero; C];
    for (c, (column, &x)) in columns.iter_mut().zip(xs).enumerate() {
        let z = match k.cap {
            Some(cap) => vmath::softcap(simd, x, cap),
            None => x,
        };
        let p = vmath::exp2(
            simd,
            simd.mul_add_f32s(z, simd.splat_f32s(LOG2E), rows.neg_m),
        );
        let mut g = simd.mul_f32s(k1, p);
        if spread != 0.0 {
            let a = simd.splat_f32s(spread * plan.class_weight(c));
            g = simd.sub_f32s(g, simd.mul_f32s(k0, a));
        }
        let is_target = simd.equal_u32s(label, simd.splat_u32s(c as u32));
        g = simd.select_f32s(is_target, simd.sub_f32s(g, target), g);
        if let Some(cap) = k.cap {
            let u = simd.mul_f32s(z, simd.splat_f32s(1.0 / cap));
            g = simd.mul_f32s(g, simd.sub_f32s(simd.splat_f32s(1.0), simd.mul_f32s(u, u)));
        }
        *column = simd.select_f32s(inactive, zero, g);
    }
    columns
}

/// `xs[c]` ← class c of rows `first..first + valid` (zeros in the lanes
/// past `valid`). AVX2 transposes 8 rows × 8 classes at a time in
/// registers, AVX-512 two such groups of 8 rows joined per column; other
/// archs fill the lanes one by one. The vectors are
/// written into the caller's array: returning it made LLVM copy it with a
/// memcpy call per group (12 % of the time at C = 10).
#[inline(always)]
fn transpose<S: Simd, const C: usize>(
    simd: S,
    logits: &[f32],
    first: usize,
    valid: usize,
    xs: &mut [S::f32s; C],
) {
    #[cfg(target_arch = "x86_64")]
    if let (Some(&v4), Some(columns)) = (
        (&simd as &dyn std::any::Any).downcast_ref::<pulp::x86::V4>(),
        (xs as &mut dyn std::any::Any).downcast_mut::<[pulp::f32x16; C]>(),
    ) {
        // 16 rows: rows 0–7 and 8–15 through the AVX2 transposes, each
        // column's two halves then joined in one register.
        let v3 = *v4;
        let zero = pulp::f32x8(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        let (mut low, mut high) = ([zero; C], [zero; C]);
        transpose::<pulp::x86::V3, C>(v3, logits, first, valid.min(8), &mut low);
        if valid > 8 {
            transpose::<pulp::x86::V3, C>(v3, logits, first + 8, valid - 8, &mut high);
        }
        for (column, (&low, &high)) in columns.iter_mut().zip(low.iter().zip(&high)) {
            let wide = v4.avx512f._mm512_castps256_ps512(pulp::cast(low));
            *column = pulp::cast(v4.avx512dq._mm512_insertf32x8::<1>(wide, pulp::cast(high)));
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if let (Some(&v3), Some(columns)) = (
        (&simd as &dyn std::any::Any).downcast_ref::<pulp::x86::V3>(),
        (xs as &mut dyn std::any::Any).downcast_mut::<[pulp::f32x8; C]>(),
    ) {
        // A whole group whose last 4-class block does not run off the batch.
        let end = first * C + 8 * C + C.next_multiple_of(4) - C;
        if valid == 8 && end <= logits.len() {
            transpose_full::<C>(v3, &logits[first * C..end], columns);
            return;
        }
        for from in (0..C).step_by(8) {
            // 8 values of row `first + r` from class `from`, running into
            // the next rows (those lanes go unused), cut short at the end of
            // the batch. Loops, not closures: closures do not inherit the
            // SIMD target features (their intrinsics would be calls).
            let mut rows = [pulp::f32x8(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0); 8];
            for (r, row) in rows.iter_mut().enumerate().take(valid) {
                let at = (first + r) * C + from;
                *row = vmath::load(v3, &logits[at..(at + 8).min(logits.len())]);
            }
            let block = transpose_8x8(v3, rows);
            for (f, column) in block.into_iter().enumerate().take(C - from) {
                columns[from + f] = column;
            }
        }
        return;
    }
    let mut column = [0.0f32; MAX_LANES];
    for (c, x) in xs.iter_mut().enumerate() {
        for (r, value) in column[..valid].iter_mut().enumerate() {
            *value = logits[(first + r) * C + c];
        }
        *x = vmath::load(simd, &column[..valid]);
    }
}

/// `columns[c]` ← class c of the 8 rows of `block` (8·C values, then up to 3
/// more that the last 4-class block reads and drops), fully unrolled: per
/// 4 classes, rows r and r + 4 share one register (a 128-bit load and an
/// insert), and a 4×4 transpose within each 128-bit half gives the columns
/// in row order.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn transpose_full<const C: usize>(
    simd: pulp::x86::V3,
    block: &[f32],
    columns: &mut [pulp::f32x8; C],
) {
    let avx = simd.avx;
    for from in (0..C).step_by(4) {
        // y[r] = classes from..from + 4 of row r | of row r + 4.
        let mut y = [avx._mm256_setzero_ps(); 4];
        for (r, y) in y.iter_mut().enumerate() {
            *y = avx._mm256_set_m128(quad(block, (r + 4) * C + from), quad(block, r * C + from));
        }
        let lo01 = avx._mm256_unpacklo_ps(y[0], y[1]);
        let lo23 = avx._mm256_unpacklo_ps(y[2], y[3]);
        columns[from] = pulp::cast(avx._mm256_shuffle_ps::<0x44>(lo01, lo23));
        if from + 1 < C {
            columns[from + 1] = pulp::cast(avx._mm256_shuffle_ps::<0xEE>(lo01, lo23));
        }
        if from + 2 < C {
            let hi01 = avx._mm256_unpackhi_ps(y[0], y[1]);
            let hi23 = avx._mm256_unpackhi_ps(y[2], y[3]);
            columns[from + 2] = pulp::cast(avx._mm256_shuffle_ps::<0x44>(hi01, hi23));
            if from + 3 < C {
                columns[from + 3] = pulp::cast(avx._mm256_shuffle_ps::<0xEE>(hi01, hi23));
            }
        }
    }
}

/// Four floats of `block` from `at` as a 128-bit vector.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn quad(block: &[f32], at: usize) -> std::arch::x86_64::__m128 {
    let values: [f32; 4] = block[at..at + 4].try_into().unwrap();
    pulp::cast(values)
}

/// The 8×8 transpose of `rows` with AVX shuffles.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn transpose_8x8(simd: pulp::x86::V3, rows: [pulp::f32x8; 8]) -> [pulp::f32x8; 8] {
    use std::arch::x86_64::__m256;
    let avx = simd.avx;
    let r: [__m256; 8] = rows.map(pulp::cast);
    // Pairs of rows interleaved: t[2k] = r[2k][0] r[2k+1][0] r[2k][1] r[2k+1][1] | [4] [5].
    let mut t = [avx._mm256_setzero_ps(); 8];
    for pair in 0..4 {
        let (a, b) = (r[2 * pair], r[2 * pair + 1]);
        t[2 * pair] = avx._mm256_unpacklo_ps(a, b);
        t[2 * pair + 1] = avx._mm256_unpackhi_ps(a, b);
    }
    // Four rows of one class per 128-bit half: u[4k + j] holds classes j, j+4.
    let u = [
        avx._mm256_shuffle_ps::<0x44>(t[0], t[2]),
        avx._mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        avx._mm256_shuffle_ps::<0x44>(t[1], t[3]),
        avx._mm256_shuffle_ps::<0xEE>(t[1], t[3]),
        avx._mm256_shuffle_ps::<0x44>(t[4], t[6]),
        avx._mm256_shuffle_ps::<0xEE>(t[4], t[6]),
        avx._mm256_shuffle_ps::<0x44>(t[5], t[7]),
        avx._mm256_shuffle_ps::<0xEE>(t[5], t[7]),
    ];
    let mut columns = [pulp::f32x8(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0); 8];
    for c in 0..4 {
        let (a, b) = (u[c], u[4 + c]);
        columns[c] = pulp::cast(avx._mm256_permute2f128_ps::<0x20>(a, b));
        columns[4 + c] = pulp::cast(avx._mm256_permute2f128_ps::<0x31>(a, b));
    }
    columns
}
