//! Narrow rows (C ≤ 16, labels): one row per SIMD lane. A group of rows is
//! transposed so that vector `c` holds class c of every row; the max, the
//! exps, the target pick, the log and the loss are then all vector ops
//! across rows.

use pulp::Simd;

use super::vmath::{self, LOG2E};
use super::{ChunkOut, Plan, MAX_LANES, NARROW_MAX_CLASSES};

#[inline(always)]
pub(super) fn narrow_rows<S: Simd>(simd: S, plan: &Plan<'_>, out: &mut ChunkOut<'_>) {
    if plan.softcap.is_some() {
        narrow_with::<S, true>(simd, plan, out);
    } else {
        narrow_with::<S, false>(simd, plan, out);
    }
}

/// Per-row inputs of one group, one lane each.
struct Lanes {
    /// The label, or `u32::MAX` for ignored and padding lanes.
    label: [u32; MAX_LANES],
    /// `(1−ε)·w_y`, 0 for ignored and padding lanes.
    hard: [f32; MAX_LANES],
    /// `s_n`, 0 for ignored and padding lanes.
    sample: [f32; MAX_LANES],
}

#[inline(always)]
fn narrow_with<S: Simd, const CAP: bool>(simd: S, plan: &Plan<'_>, out: &mut ChunkOut<'_>) {
    let lanes = S::F32_LANES;
    let c = plan.classes;
    let labels = plan.labels.unwrap_or(&[]);
    let cap = plan.softcap.unwrap_or(1.0);
    let eps = plan.smoothing as f32;
    let keep = 1.0 - eps;
    let spread = (plan.smoothing / c as f64) as f32;
    let weight_sum = plan.class_weight_sum as f32;
    let z_loss = plan.z_loss as f32;
    let smoothing = eps > 0.0;

    let splat = |v: f32| simd.splat_f32s(v);
    let lane_vector = |values: &[f32]| S::as_simd_f32s(&values[..lanes]).0[0];
    let mut columns = [0.0f32; MAX_LANES * NARROW_MAX_CLASSES];
    let mut group = Lanes {
        label: [u32::MAX; MAX_LANES],
        hard: [0.0; MAX_LANES],
        sample: [0.0; MAX_LANES],
    };
    let mut ok_lanes = [0.0f32; MAX_LANES];
    let mut scratch = Vec::new();
    let rows = out.rows.clone();
    let mut first = rows.start;
    while first < rows.end {
        let valid = (rows.end - first).min(lanes);
        for r in 0..lanes {
            if r < valid {
                let n = first + r;
                for (j, &x) in plan.row(n).iter().enumerate() {
                    columns[j * lanes + r] = x;
                }
                if plan.ignored(n) {
                    group.label[r] = u32::MAX;
                    group.hard[r] = 0.0;
                    group.sample[r] = 0.0;
                } else {
                    let y = labels[n] as usize;
                    group.label[r] = y as u32;
                    group.hard[r] = keep * plan.class_weight(y);
                    group.sample[r] = plan.sample_weight(n);
                }
            } else {
                for j in 0..c {
                    columns[j * lanes + r] = 0.0;
                }
                group.label[r] = u32::MAX;
                group.hard[r] = 0.0;
                group.sample[r] = 0.0;
            }
        }
        let xs = S::as_simd_f32s(&columns[..c * lanes]).0;
        let label: S::u32s = S::as_simd_u32s(&group.label[..lanes]).0[0];

        let mut raw_max = xs[0];
        for &x in &xs[1..] {
            raw_max = simd.max_f32s(raw_max, x);
        }
        let m = if CAP {
            vmath::softcap(simd, raw_max, cap)
        } else {
            raw_max
        };
        // M = fl(m·log2 e); `rounding` is exactly m·log2 e − M.
        let big_m = simd.mul_f32s(m, splat(LOG2E));
        let rounding = simd.mul_add_f32s(m, splat(LOG2E), simd.neg_f32s(big_m));
        let neg_m = simd.neg_f32s(big_m);
        let zero = splat(0.0);
        let (mut exp, mut t_sum, mut target, mut spread_sum) = (zero, zero, zero, zero);
        for (j, &x) in xs.iter().enumerate() {
            let x = if CAP { vmath::softcap(simd, x, cap) } else { x };
            let t = simd.mul_add_f32s(x, splat(LOG2E), neg_m);
            t_sum = simd.add_f32s(t_sum, t);
            exp = simd.add_f32s(exp, vmath::exp2(simd, t));
            let is_target = simd.equal_u32s(label, simd.splat_u32s(j as u32));
            target = simd.select_f32s(is_target, x, target);
            if smoothing {
                // Σ_c w_c·(m − x_c), every term ≥ 0.
                spread_sum = simd.mul_add_e_f32s(
                    splat(plan.class_weight(j)),
                    simd.sub_f32s(m, x),
                    spread_sum,
                );
            }
        }
        // lse − m = (log2 Σ + rounding)·ln 2
        let offset = simd.mul_f32s(
            simd.add_f32s(vmath::log2(simd, exp), rounding),
            splat(std::f32::consts::LN_2),
        );
        let lse = simd.add_f32s(m, offset);
        let hard = lane_vector(&group.hard);
        let nll = simd.mul_f32s(hard, simd.add_f32s(simd.sub_f32s(m, target), offset));
        let mut loss = simd.select_f32s(simd.equal_f32s(hard, zero), zero, nll);
        if smoothing {
            let smooth = simd.mul_add_e_f32s(splat(weight_sum), offset, spread_sum);
            loss = simd.mul_add_e_f32s(splat(spread), smooth, loss);
        }
        if z_loss > 0.0 {
            loss = simd.mul_add_e_f32s(simd.mul_f32s(splat(z_loss), lse), lse, loss);
        }
        let sample = lane_vector(&group.sample);
        let loss = simd.select_f32s(
            simd.equal_f32s(sample, zero),
            zero,
            simd.mul_f32s(sample, loss),
        );

        // Lanes the f32 sums cannot vouch for go to the f64 reference.
        let inf = splat(f32::INFINITY);
        // A finite M implies a finite m; M overflows for |m| > 2.4e38.
        let mut ok = simd.and_m32s(
            simd.less_than_f32s(simd.abs_f32s(big_m), inf),
            simd.less_than_f32s(raw_max, inf),
        );
        ok = simd.and_m32s(
            ok,
            if smoothing {
                simd.less_than_f32s(simd.abs_f32s(t_sum), inf)
            } else {
                simd.equal_f32s(t_sum, t_sum)
            },
        );
        let i = first - rows.start;
        simd.partial_store_f32s(&mut out.losses[i..i + valid], loss);
        if let Some(lses) = out.lse.as_deref_mut() {
            simd.partial_store_f32s(&mut lses[i..i + valid], lse);
        }
        let ok = simd.select_f32s(ok, splat(1.0), zero);
        if simd.reduce_min_f32s(ok) == 0.0 {
            S::as_mut_simd_f32s(&mut ok_lanes[..lanes]).0[0] = ok;
            for (r, &lane_ok) in ok_lanes[..valid].iter().enumerate() {
                if lane_ok == 0.0 && plan.active(first + r) {
                    out.careful(plan, first + r, &mut scratch);
                }
            }
        }
        first += valid;
    }
}
