//! Helpers shared by the integration tests.
#![allow(dead_code)]

use fused_loss::cpu::reference::{self, RowLoss};
use fused_loss::{
    Batch, CrossEntropy, Engine, Error, GpuOptions, KernelVariant, LogitElement, LossOutput,
    Reduction,
};

/// The GPU engine. With `FUSED_LOSS_REQUIRE_GPU=1` (as in CI) a missing
/// adapter fails the test; otherwise the test is skipped with a message.
pub fn gpu() -> Option<Engine> {
    gpu_with(GpuOptions::default())
}

pub fn gpu_with(options: GpuOptions) -> Option<Engine> {
    match pollster::block_on(Engine::gpu_with(options)) {
        Ok(engine) => Some(engine),
        Err(e @ Error::NoAdapter(_)) if !fused_loss::gpu_required() => {
            eprintln!("skipping GPU test: {e}");
            None
        }
        Err(e) => panic!("no usable GPU engine: {e}"),
    }
}

/// One GPU engine per kernel variant, each forced for every shape, so that
/// every variant is compared with the reference; the subgroup kernel both
/// with scalar and with vec4 loads.
pub fn gpu_variants() -> Vec<Engine> {
    // The wide kernel in workgroups of 256, the narrow kernel in
    // workgroups of 64, the subgroup kernel with scalar loads in workgroups
    // of 32 and shared row finishing and with vec4 loads in workgroups of
    // 256 and lane 0 finishing every row (the defaults, 128 each, and
    // finishing shared on CPU-type adapters only, run in `gpu()`).
    // The wide kernel and the scalar subgroup kernel are built for any
    // options, the narrow and vec4 subgroup kernels for each call's
    // (the default is by adapter type).
    let wide = GpuOptions {
        kernel: Some(KernelVariant::Wide),
        wide_workgroup_size: Some(256),
        specialize_flags: Some(false),
        ..Default::default()
    };
    let narrow = GpuOptions {
        kernel: Some(KernelVariant::Narrow),
        narrow_workgroup_size: Some(64),
        specialize_flags: Some(true),
        ..Default::default()
    };
    let subgroup = |vector_loads, size, shared| GpuOptions {
        kernel: Some(KernelVariant::Subgroup),
        vector_loads: Some(vector_loads),
        subgroup_workgroup_size: Some(size),
        shared_row_finish: Some(shared),
        specialize_flags: Some(vector_loads),
        ..Default::default()
    };
    [
        wide,
        narrow,
        subgroup(false, 32, true),
        subgroup(true, 256, false),
    ]
    .into_iter()
    .filter_map(gpu_with)
    .collect()
}

/// A small deterministic generator (SplitMix64) so tests need no seeds crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn logits(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| self.uniform(-scale, scale)).collect()
    }

    pub fn labels(&mut self, batch: usize, classes: usize) -> Vec<i32> {
        (0..batch).map(|_| self.below(classes) as i32).collect()
    }

    /// Sample weights: 0 for every seventh row from row 3, else in [0.1, 3).
    pub fn sample_weights(&mut self, batch: usize) -> Vec<f32> {
        (0..batch)
            .map(|n| {
                if n % 7 == 3 {
                    0.0
                } else {
                    self.uniform(0.1, 3.0)
                }
            })
            .collect()
    }

    /// Rows of non-negative values summing to 1.
    pub fn distributions(&mut self, batch: usize, classes: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(batch * classes);
        for _ in 0..batch {
            let row: Vec<f32> = (0..classes).map(|_| self.unit() + 1e-3).collect();
            let total: f32 = row.iter().sum();
            out.extend(row.iter().map(|v| v / total));
        }
        out
    }
}

/// The documented per-example tolerance:
/// `|Δ| ≤ 1e-5·(1 + |L_n| + Σ_c|a_c|·max_c|x_{n,c}|)`, where the coefficient
/// sum `Σ|a_c|` is 1 for unweighted, unsmoothed labels.
pub fn tolerance(row: &RowLoss, logits_row: &[f32]) -> f64 {
    let max_abs = logits_row
        .iter()
        .filter(|x| x.is_finite())
        .fold(0.0f64, |m, &x| m.max((x as f64).abs()));
    1e-5 * (1.0 + row.loss.abs() + row.coefficient_sum * max_abs)
}

/// Same value, NaN equal to NaN and same-sign infinities equal.
pub fn same_special(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || (a.is_infinite() && a == b)
}

/// Checks every per-example loss against the f64 reference; names the first
/// offending row with both values.
pub fn assert_matches_reference<T: LogitElement>(
    spec: &CrossEntropy,
    batch: &Batch<'_, T>,
    got: &[f32],
) {
    let rows = reference::row_losses(spec, batch).expect("reference");
    let logits = T::to_f32_slice(batch.logits);
    assert_eq!(rows.len(), got.len());
    for (n, (row, &g)) in rows.iter().zip(got).enumerate() {
        let g = g as f64;
        if !row.loss.is_finite() || !g.is_finite() {
            assert!(
                same_special(row.loss, g),
                "row {n}: gpu {g} vs reference {}",
                row.loss
            );
            continue;
        }
        let c = batch.classes;
        let tol = tolerance(row, &logits[n * c..(n + 1) * c]);
        assert!(
            (g - row.loss).abs() <= tol,
            "row {n}: gpu {g} vs reference {} (|Δ| = {:e} > tol {tol:e})",
            row.loss,
            (g - row.loss).abs()
        );
    }
}

/// The exact sum of f32 values (Neumaier in f64 is exact well past 1e-12).
pub fn exact_sum(values: &[f32]) -> f64 {
    if values.iter().any(|v| !v.is_finite()) {
        return values.iter().map(|&v| v as f64).sum();
    }
    let (mut sum, mut comp) = (0.0f64, 0.0f64);
    for &v in values {
        let v = v as f64;
        let t = sum + v;
        if sum.abs() >= v.abs() {
            comp += (sum - t) + v;
        } else {
            comp += (v - t) + sum;
        }
        sum = t;
    }
    sum + comp
}

pub fn assert_rel(got: f64, want: f64, rel: f64, what: &str) {
    if same_special(got, want) {
        return;
    }
    let err = (got - want).abs() / want.abs().max(1e-300);
    assert!(
        err <= rel || (got - want).abs() <= 1e-300,
        "{what}: got {got:e}, want {want:e}, relative error {err:e} > {rel:e}"
    );
}

/// Writes `data` as a C-order `.npy` of `shape`; the dtype follows `T`.
pub fn write_npy<T: npyz::AutoSerialize + Copy>(path: &std::path::Path, shape: &[u64], data: &[T]) {
    use npyz::WriterBuilder as _;
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut writer = npyz::WriteOptions::<T>::new()
        .dtype(T::default_dtype())
        .shape(shape)
        .writer(file)
        .begin_nd()
        .unwrap();
    writer.extend(data.iter().copied()).unwrap();
    writer.finish().unwrap();
}

/// [`write_npy`] into `dir/name`, returning the path.
pub fn npy<T: npyz::AutoSerialize + Copy>(
    dir: &std::path::Path,
    name: &str,
    shape: &[u64],
    data: &[T],
) -> std::path::PathBuf {
    let path = dir.join(name);
    write_npy(&path, shape, data);
    path
}

/// The reduction's denominator D of the gradient (1 where it would be 0).
pub fn denominator(stats: &fused_loss::LossStats, reduction: fused_loss::Reduction) -> f64 {
    use fused_loss::Reduction;
    let d = match reduction {
        Reduction::None | Reduction::Sum => 1.0,
        Reduction::Mean => stats.weight_sum,
        Reduction::SumOverBatchSize => stats.count as f64,
        Reduction::SumByNonzeroWeights => stats.nonzero_count as f64,
    };
    if d == 0.0 {
        1.0
    } else {
        d
    }
}

/// Checks a `[B, C]` gradient against the reference's, unrounded (f32
/// gradient type), element by element:
/// `|Δ| ≤ 1e-5·(Σ_c|a_c| + 2·s_n·z·|lse_n|)·(1 + |lse_n|)/D + 1e-9 + extra(g, g_ref)`;
/// non-finite values must match exactly.
pub fn assert_gradient_close<T: LogitElement>(
    spec: &CrossEntropy,
    batch: &Batch<'_, T>,
    got: &[f32],
    extra: impl Fn(f64, f64) -> f64,
    what: &str,
) {
    let exact = spec
        .clone()
        .with_gradient_dtype(fused_loss::GradientDtype::F32);
    let want = reference::compute(&exact, batch).unwrap();
    let rows = reference::row_losses(&exact, batch).unwrap();
    let w = want.gradient.as_ref().expect("reference gradient");
    assert_eq!(got.len(), w.len(), "{what}: gradient length");
    let d = denominator(&want.stats, spec.reduction);
    let c = batch.classes;
    for (n, row) in rows.iter().enumerate() {
        let s = batch.sample_weights.map_or(1.0, |s| s[n] as f64);
        let lse = if row.lse.is_finite() {
            row.lse.abs()
        } else {
            0.0
        };
        let scale = row.coefficient_sum + 2.0 * s * spec.z_loss as f64 * lse;
        let tol = 1e-5 * scale * (1.0 + lse) / d + 1e-9;
        for k in 0..c {
            let (gv, wv) = (got[n * c + k] as f64, w[n * c + k] as f64);
            if !gv.is_finite() || !wv.is_finite() {
                assert!(
                    same_special(gv, wv),
                    "{what}: [{n},{k}] got {gv} vs reference {wv}"
                );
                continue;
            }
            let bound = tol + extra(gv, wv);
            assert!(
                (gv - wv).abs() <= bound,
                "{what}: [{n},{k}] got {gv} vs reference {wv} (|Δ| {:e} > {bound:e})",
                (gv - wv).abs()
            );
        }
    }
}

/// Checks each row's lse against the reference: `1e-5·(1 + |lse|)`.
pub fn assert_row_lse_close<T: LogitElement>(
    spec: &CrossEntropy,
    batch: &Batch<'_, T>,
    got: &[f32],
    what: &str,
) {
    let rows = reference::row_losses(spec, batch).unwrap();
    for (n, row) in rows.iter().enumerate() {
        let l = got[n] as f64;
        assert!(
            same_special(l, row.lse) || (l - row.lse).abs() <= 1e-5 * (1.0 + row.lse.abs()),
            "{what}: lse[{n}] got {l} vs reference {}",
            row.lse
        );
    }
}

/// The options plain rows (no class sums) take, for the lane-row and
/// lane-run tests: the row lse; soft-capping and z-loss with a sum; class
/// weights of `classes` and an ignore index of −100 with
/// sum-by-nonzero-weights (meant for labels with −100 and sample weights).
pub fn plain_specs(classes: usize) -> [CrossEntropy; 3] {
    let class_weights: Vec<f32> = (0..classes).map(|c| 0.25 + (c % 4) as f32 * 0.5).collect();
    [
        CrossEntropy::new().with_row_lse(true),
        CrossEntropy::new()
            .with_softcap(30.0)
            .with_z_loss(1e-3)
            .with_reduction(Reduction::Sum),
        CrossEntropy::new()
            .with_class_weights(class_weights)
            .with_ignore_index(-100)
            .with_reduction(Reduction::SumByNonzeroWeights),
    ]
}

/// The bit patterns of `values`.
pub fn f32_bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|x| x.to_bits()).collect()
}

/// Two outputs hold the same bits: losses, gradient, row lse, stats (as
/// printed: NaN sums compare equal there), loss, reduction and backend.
pub fn assert_same_bits(got: &LossOutput, want: &LossOutput, what: &str) {
    let bits = |v: &Vec<f32>| f32_bits(v);
    assert_eq!(
        f32_bits(&got.per_example),
        f32_bits(&want.per_example),
        "{what}: losses"
    );
    assert_eq!(
        got.gradient.as_ref().map(bits),
        want.gradient.as_ref().map(bits),
        "{what}: gradient"
    );
    assert_eq!(
        got.row_lse.as_ref().map(bits),
        want.row_lse.as_ref().map(bits),
        "{what}: row lse"
    );
    assert_eq!(
        format!("{:?}", got.stats),
        format!("{:?}", want.stats),
        "{what}: stats"
    );
    assert_eq!(got.loss.to_bits(), want.loss.to_bits(), "{what}: loss");
    assert_eq!(got.reduction, want.reduction, "{what}: reduction");
    assert_eq!(got.backend, want.backend, "{what}: backend");
}
