//! Vectorised `2^x`, `log2` and `tanh` over any [`pulp::Simd`], built from
//! adds, multiplies and integer bit operations only, so that the portable
//! fallback computes with the same formulas as AVX2.

use pulp::Simd;

/// `log2(e)` in f32; every exponent in the fast path is `x·LOG2E`.
pub(super) const LOG2E: f32 = std::f32::consts::LOG2_E;
/// The lowest exponent [`exp2`] takes: anything smaller counts as `2^-125`,
/// which is 0 next to the row maximum's term of 1.
pub(super) const EXP2_MIN: f32 = -125.0;
/// `1.5·2^23 + 127`: adding it rounds to an integer `n` and leaves `n + 127`,
/// the biased exponent of `2^n`, in the low mantissa bits.
const SHIFTER: f32 = 12_583_039.0;
/// `2^f ≈ 1 + f·(c0 + f·(c1 + …))` on `[-0.5, 0.5]`, relative error below 2e-7
/// (a minimax fit: c0 is near, not at, ln 2).
#[allow(clippy::approx_constant)]
const EXP2_POLY: [f32; 5] = [
    0.693_147,
    0.240_222_42,
    0.055_507_34,
    0.009_671_509,
    0.001_326_47,
];
/// `tanh(a) ≈ a + a³·P(a²)` on `[0, TANH_SMALL]`, relative error about 1e-9.
const TANH_POLY: [f32; 5] = [
    -0.333_333_2,
    0.133_325_86,
    -0.053_852_31,
    0.021_071_68,
    -0.006_274_241,
];
const TANH_SMALL: f32 = 0.55;

/// `2^t`, with `t` clamped below at [`EXP2_MIN`] (and at most 127). The
/// integer part of `t` goes straight into the exponent bits. A NaN `t` may
/// come out as `2^-125`: callers detect NaN inputs on their own.
///
/// Written to need few registers: 7 constants, as the subtraction
/// `SHIFTER − shifted` reuses the shifter and `2^n·(1 + f·P(f))` is one FMA
/// with no constant 1. In the row loops, with more constants than
/// registers, LLVM reloads them from memory on every vector.
#[inline(always)]
pub(super) fn exp2<S: Simd>(simd: S, t: S::f32s) -> S::f32s {
    let t = simd.max_f32s(t, simd.splat_f32s(EXP2_MIN));
    let shifter = simd.splat_f32s(SHIFTER);
    let shifted = simd.add_f32s(t, shifter);
    // `shifter − shifted` is exactly −n, so `f = t − n` ∈ [−½, ½].
    let f = simd.add_f32s(t, simd.sub_f32s(shifter, shifted));
    let mut p = simd.splat_f32s(EXP2_POLY[4]);
    for &c in EXP2_POLY[..4].iter().rev() {
        p = simd.mul_add_e_f32s(p, f, simd.splat_f32s(c));
    }
    // The low bits of `shifted` hold n + 127; shifted left by 23 they are the
    // exponent field of 2^n (the shifter's own bits fall off the top).
    let scale = simd.transmute_f32s_u32s(
        simd.wrapping_dyn_shl_u32s(simd.transmute_u32s_f32s(shifted), simd.splat_u32s(23)),
    );
    simd.mul_add_e_f32s(simd.mul_f32s(p, f), scale, scale)
}

/// `log2(x)` for positive normal `x`, absolute error about 2e-7 near 1.
#[inline(always)]
pub(super) fn log2<S: Simd>(simd: S, x: S::f32s) -> S::f32s {
    let bits = simd.transmute_u32s_f32s(x);
    // The biased exponent as a float: OR it under 2^23's bits, subtract 2^23.
    let biased = simd.wrapping_dyn_shr_u32s(bits, simd.splat_u32s(23));
    let exponent = simd.sub_f32s(
        simd.transmute_f32s_u32s(simd.or_u32s(biased, simd.splat_u32s(0x4B00_0000))),
        simd.splat_f32s(8_388_608.0 + 127.0),
    );
    let mantissa = simd.transmute_f32s_u32s(simd.or_u32s(
        simd.and_u32s(bits, simd.splat_u32s(0x007F_FFFF)),
        simd.splat_u32s(0x3F80_0000),
    ));
    // Centre the mantissa on 1: [√½, √2).
    let high = simd.greater_than_f32s(mantissa, simd.splat_f32s(std::f32::consts::SQRT_2));
    let mantissa = simd.select_f32s(
        high,
        simd.mul_f32s(mantissa, simd.splat_f32s(0.5)),
        mantissa,
    );
    let exponent = simd.select_f32s(
        high,
        simd.add_f32s(exponent, simd.splat_f32s(1.0)),
        exponent,
    );
    // log2(m) = (2/ln2)·atanh(u), u = (m−1)/(m+1) ∈ [−0.172, 0.172].
    let one = simd.splat_f32s(1.0);
    let u = simd.div_f32s(simd.sub_f32s(mantissa, one), simd.add_f32s(mantissa, one));
    let u2 = simd.mul_f32s(u, u);
    let mut p = simd.splat_f32s(1.0 / 9.0);
    for c in [1.0 / 7.0, 1.0 / 5.0, 1.0 / 3.0, 1.0] {
        p = simd.mul_add_e_f32s(p, u2, simd.splat_f32s(c));
    }
    let two_over_ln2 = simd.splat_f32s(2.0 * std::f32::consts::LOG2_E);
    simd.mul_add_e_f32s(simd.mul_f32s(p, u), two_over_ln2, exponent)
}

/// `tanh(y)`; NaN stays NaN, `±inf` gives `±1`.
#[inline(always)]
pub(super) fn tanh<S: Simd>(simd: S, y: S::f32s) -> S::f32s {
    let sign = simd.and_u32s(simd.transmute_u32s_f32s(y), simd.splat_u32s(0x8000_0000));
    let a = abs(simd, y);
    let a2 = simd.mul_f32s(a, a);
    let mut p = simd.splat_f32s(TANH_POLY[4]);
    for &c in TANH_POLY[..4].iter().rev() {
        p = simd.mul_add_e_f32s(p, a2, simd.splat_f32s(c));
    }
    let small = simd.mul_add_e_f32s(simd.mul_f32s(a, a2), p, a);
    // 1 − 2/(e^{2a} + 1) = (1 − e)/(1 + e) with e = e^{−2a} ≤ 1/3 here.
    let e = exp2(simd, simd.mul_f32s(a, simd.splat_f32s(-2.0 * LOG2E)));
    let one = simd.splat_f32s(1.0);
    let large = simd.div_f32s(simd.sub_f32s(one, e), simd.add_f32s(one, e));
    // `!(a >= TANH_SMALL)` keeps NaN on the polynomial side, where it stays NaN.
    let is_large = simd.greater_than_or_equal_f32s(a, simd.splat_f32s(TANH_SMALL));
    let magnitude = simd.select_f32s(is_large, large, small);
    simd.transmute_f32s_u32s(simd.or_u32s(simd.transmute_u32s_f32s(magnitude), sign))
}

/// `|x|` by clearing the sign bit (pulp's `abs_f32s` is a provided trait
/// method that is not inlined into the SIMD code, costing a call per vector).
#[inline(always)]
pub(super) fn abs<S: Simd>(simd: S, x: S::f32s) -> S::f32s {
    simd.transmute_f32s_u32s(
        simd.and_u32s(simd.transmute_u32s_f32s(x), simd.splat_u32s(0x7FFF_FFFF)),
    )
}

/// `cap·tanh(x/cap)`.
#[inline(always)]
pub(super) fn softcap<S: Simd>(simd: S, x: S::f32s, cap: f32) -> S::f32s {
    let y = simd.mul_f32s(x, simd.splat_f32s(1.0 / cap));
    simd.mul_f32s(tanh(simd, y), simd.splat_f32s(cap))
}

/// Whether every lane of `mask` is set: one `movmskps` on AVX2.
#[inline(always)]
pub(super) fn all<S: Simd>(simd: S, mask: S::m32s) -> bool {
    // All ones or all zeros per lane (the select folds away on AVX2).
    let bits = simd.select_u32s(mask, simd.splat_u32s(!0), simd.splat_u32s(0));
    #[cfg(target_arch = "x86_64")]
    if let Some(&v3) = (&simd as &dyn std::any::Any).downcast_ref::<pulp::x86::V3>() {
        let bits: std::arch::x86_64::__m256 =
            bytemuck::pod_read_unaligned(bytemuck::bytes_of(&bits));
        return v3.avx._mm256_movemask_ps(bits) == 0xFF;
    }
    let lanes: &[u32] = bytemuck::cast_slice(std::slice::from_ref(&bits));
    lanes.iter().all(|&lane| lane != 0)
}

/// Loads up to one vector from `values`, zeros past its end; a full vector
/// is a plain load (pulp's partial loads are out-of-line calls).
#[inline(always)]
pub(super) fn load<S: Simd>(simd: S, values: &[f32]) -> S::f32s {
    if values.len() == S::F32_LANES {
        S::as_simd_f32s(values).0[0]
    } else {
        simd.partial_load_f32s(values)
    }
}

/// A row tail's optional input: the partial load of `values` (zeros past
/// their end) when `on`, else `default` in every lane.
#[inline(always)]
pub(super) fn tail_or<S: Simd>(simd: S, on: bool, values: &[f32], default: S::f32s) -> S::f32s {
    if on {
        simd.partial_load_f32s(values)
    } else {
        default
    }
}

/// [`load`] for `i32`.
#[inline(always)]
pub(super) fn load_i32<S: Simd>(simd: S, values: &[i32]) -> S::i32s {
    if values.len() == S::I32_LANES {
        S::as_simd_i32s(values).0[0]
    } else {
        simd.partial_load_i32s(values)
    }
}

/// Stores the first `values.len()` lanes of `v`.
#[inline(always)]
pub(super) fn store<S: Simd>(simd: S, values: &mut [f32], v: S::f32s) {
    if values.len() == S::F32_LANES {
        S::as_mut_simd_f32s(values).0[0] = v;
    } else {
        simd.partial_store_f32s(values, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulp::WithSimd;

    /// Applies `f` lane by lane to `xs` on the given arch.
    struct Map<'a, F> {
        xs: &'a [f32],
        f: F,
    }

    trait VectorFn {
        fn apply<S: Simd>(&self, simd: S, x: S::f32s) -> S::f32s;
    }

    impl<F: VectorFn> WithSimd for Map<'_, F> {
        type Output = Vec<f32>;
        #[inline(always)]
        fn with_simd<S: Simd>(self, simd: S) -> Vec<f32> {
            self.xs
                .iter()
                .map(|&x| {
                    let v = self.f.apply(simd, simd.splat_f32s(x));
                    let lanes: &[f32] = bytemuck::cast_slice(std::slice::from_ref(&v));
                    lanes[0]
                })
                .collect()
        }
    }

    #[derive(Clone, Copy)]
    struct Exp2;
    impl VectorFn for Exp2 {
        #[inline(always)]
        fn apply<S: Simd>(&self, simd: S, x: S::f32s) -> S::f32s {
            exp2(simd, x)
        }
    }
    #[derive(Clone, Copy)]
    struct Log2;
    impl VectorFn for Log2 {
        #[inline(always)]
        fn apply<S: Simd>(&self, simd: S, x: S::f32s) -> S::f32s {
            log2(simd, x)
        }
    }
    #[derive(Clone, Copy)]
    struct Tanh;
    impl VectorFn for Tanh {
        #[inline(always)]
        fn apply<S: Simd>(&self, simd: S, x: S::f32s) -> S::f32s {
            tanh(simd, x)
        }
    }

    fn both<F: VectorFn + Copy>(xs: &[f32], f: F) -> [Vec<f32>; 2] {
        [
            pulp::Arch::new().dispatch(Map { xs, f }),
            pulp::Scalar::new().vectorize(Map { xs, f }),
        ]
    }

    fn sweep(lo: f64, hi: f64, n: usize) -> Vec<f32> {
        (0..=n)
            .map(|i| (lo + (hi - lo) * i as f64 / n as f64) as f32)
            .collect()
    }

    #[test]
    fn exp2_is_accurate_down_to_the_clamp() {
        let xs = sweep(-125.0, 1.0, 400_000);
        for ys in both(&xs, Exp2) {
            for (&x, &y) in xs.iter().zip(&ys) {
                let want = (x as f64).exp2();
                let rel = (y as f64 / want - 1.0).abs();
                assert!(rel < 3e-7, "2^{x}: {y} vs {want} (rel {rel:e})");
            }
        }
        for ys in both(&[-200.0, f32::NEG_INFINITY], Exp2) {
            assert!(ys.iter().all(|&y| y == (EXP2_MIN as f64).exp2() as f32));
        }
    }

    #[test]
    fn log2_is_accurate_over_the_normal_range() {
        let mut xs: Vec<f32> = sweep(-126.0, 127.9, 200_000)
            .into_iter()
            .map(|e| (e as f64).exp2() as f32)
            .collect();
        xs.extend(sweep(0.5, 4.0, 100_000));
        for ys in both(&xs, Log2) {
            for (&x, &y) in xs.iter().zip(&ys) {
                let want = (x as f64).log2();
                let err = (y as f64 - want).abs();
                assert!(err < 3e-7 * (1.0 + want.abs()), "log2({x}): {y} vs {want}");
            }
        }
    }

    #[test]
    fn tanh_is_accurate_and_keeps_nan() {
        let mut xs = sweep(-20.0, 20.0, 400_001);
        xs.extend(sweep(-1e-3, 1e-3, 1001));
        for ys in both(&xs, Tanh) {
            for (&x, &y) in xs.iter().zip(&ys) {
                let want = (x as f64).tanh();
                let err = (y as f64 - want).abs();
                assert!(err <= 3e-7 * want.abs() + 1e-30, "tanh({x}): {y} vs {want}");
            }
        }
        for ys in both(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30], Tanh) {
            assert!(ys[0].is_nan());
            assert_eq!(&ys[1..], &[1.0, -1.0, 1.0]);
        }
    }
}
