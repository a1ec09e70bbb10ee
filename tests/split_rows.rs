//! Few long rows split into runs of classes (`GpuOptions::row_segments`):
//! every option against the f64 reference, the gradient read twice, special
//! values, and the automatic choice; and on CPU-type adapters the plain
//! rows too long for one invocation, cut into runs an invocation each.

mod common;

use common::*;
use fused_loss::cpu::reference;
use fused_loss::*;

/// Rows of `c` with NaN, +inf, −inf and all −inf in the first rows when
/// `special` is set.
fn logits(rng: &mut Rng, b: usize, c: usize, special: bool) -> Vec<f32> {
    let mut x = rng.logits(b * c, 6.0);
    if special && b >= 4 {
        x[c / 2] = f32::NAN;
        x[c + c / 3] = f32::INFINITY;
        x[2 * c + 1] = f32::NEG_INFINITY;
        x[3 * c..4 * c].fill(f32::NEG_INFINITY);
    }
    x
}

/// `out` (`engine`'s result for `spec` on `batch`) against the reference's
/// losses, counts and weight sum, its sum against its own losses, and a
/// second call with the same bits.
fn assert_reference_and_repeat(
    engine: &Engine,
    spec: &CrossEntropy,
    batch: &Batch<'_>,
    out: &LossOutput,
    what: &str,
) {
    let want = reference::compute(spec, batch).unwrap();
    assert_matches_reference(spec, batch, &out.per_example);
    assert_eq!(out.stats.count, want.stats.count, "{what}");
    assert_eq!(
        out.stats.nonfinite_rows, want.stats.nonfinite_rows,
        "{what}"
    );
    assert_rel(out.stats.weight_sum, want.stats.weight_sum, 1e-7, what);
    assert_rel(out.stats.sum, exact_sum(&out.per_example), 1e-12, what);
    let again = engine.compute_blocking(spec, batch).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&out.per_example), bits(&again.per_example), "{what}");
    // Debug text: NaN sums compare equal there.
    assert_eq!(
        format!("{:?}", out.stats),
        format!("{:?}", again.stats),
        "{what}"
    );
}

/// `labels` with every third row (from row 1) set to the ignore index -100.
fn every_third_ignored(labels: &[i32]) -> Vec<i32> {
    labels
        .iter()
        .enumerate()
        .map(|(n, &y)| if n % 3 == 1 { -100 } else { y })
        .collect()
}

fn check(engine: &Engine, b: usize, c: usize, rng: &mut Rng, what: &str) {
    let x = logits(rng, b, c, true);
    let labels = rng.labels(b, c);
    let ignored = every_third_ignored(&labels);
    let dense = rng.distributions(b, c);
    let weights: Vec<f32> = (0..b).map(|n| if n % 4 == 2 { 0.0 } else { 1.5 }).collect();
    let class_weights: Vec<f32> = (0..c).map(|k| 0.5 + (k % 3) as f32 * 0.5).collect();
    for targets in 0..3 {
        for weighted in [false, true] {
            for reduction in [Reduction::Mean, Reduction::Sum] {
                let mut spec = CrossEntropy::new()
                    .with_reduction(reduction)
                    .with_gradient(true)
                    .with_row_lse(true);
                let mut batch = match targets {
                    0 => Batch::with_labels(&x, c, &labels),
                    1 => {
                        spec = spec.with_ignore_index(-100);
                        Batch::with_labels(&x, c, &ignored)
                    }
                    _ => Batch::with_dense(&x, c, &dense),
                };
                if weighted {
                    spec = spec
                        .with_class_weights(class_weights.clone())
                        .with_label_smoothing(0.1)
                        .with_z_loss(1e-3)
                        .with_softcap(8.0);
                    batch = batch.sample_weights(&weights);
                }
                let what =
                    format!("{what} {b}x{c} targets={targets} weighted={weighted} {reduction}");
                let out = engine.compute_blocking(&spec, &batch).unwrap();
                assert_gradient_close(
                    &spec,
                    &batch,
                    out.gradient.as_ref().unwrap(),
                    |_, _| 0.0,
                    &what,
                );
                assert_row_lse_close(&spec, &batch, out.row_lse.as_ref().unwrap(), &what);
                assert_reference_and_repeat(engine, &spec, &batch, &out, &what);
            }
        }
    }
}

#[test]
fn split_rows_match_the_reference() {
    let mut rng = Rng::new(0x5e9);
    for (segments, kernel) in [
        (2, KernelVariant::Subgroup),
        (3, KernelVariant::Wide),
        (7, KernelVariant::Subgroup),
    ] {
        let Some(engine) = gpu_with(GpuOptions {
            row_segments: Some(segments),
            kernel: Some(kernel),
            single_read: Some(false),
            ..Default::default()
        }) else {
            return;
        };
        let context = engine.gpu_context().unwrap();
        for (b, c) in [(5, 9000), (6, 4097), (4, 13), (1, 2)] {
            let expected = (segments as usize).min(c) as u32;
            assert_eq!(
                context
                    .row_segments_for(&CrossEntropy::new(), b, c)
                    .unwrap(),
                expected,
                "{b}x{c}"
            );
            check(
                &engine,
                b,
                c,
                &mut rng,
                &format!("segments={segments} {kernel:?}"),
            );
        }
    }
}

/// Chunks of rows, each split: the runs of every chunk land in the same
/// segments buffer, one chunk after the other.
#[test]
fn split_rows_across_chunks() {
    let Some(engine) = gpu_with(GpuOptions {
        row_segments: Some(4),
        max_binding_bytes: Some(64 << 10),
        single_read: Some(false),
        ..Default::default()
    }) else {
        return;
    };
    let mut rng = Rng::new(0x5ea);
    // 6,000 classes of f32 are 24,000 bytes: two rows a chunk.
    check(&engine, 7, 6000, &mut rng, "chunked");
}

fn cpu_adapter(engine: &Engine) -> bool {
    let context = engine.gpu_context().unwrap();
    context.device().adapter_info().device_type == wgpu::DeviceType::Cpu
}

/// The default splits only rows too few to fill the device and long enough
/// for two runs of 4,096 classes, and never probabilities or rows read once;
/// on a CPU-type adapter, plain rows of a multiple of 4 classes longer than
/// 2,048 are cut into runs of at most 2,048, however many rows there are.
#[test]
fn automatic_split_is_for_few_long_rows() {
    let Some(engine) = gpu() else { return };
    let context = engine.gpu_context().unwrap();
    let plain = CrossEntropy::new();
    let lanes = cpu_adapter(&engine);
    let expected = if lanes { 2 } else { 1 };
    assert_eq!(context.row_segments_for(&plain, 1, 4000).unwrap(), expected);
    assert_eq!(context.row_segments_for(&plain, 1, 4002).unwrap(), 1);
    assert_eq!(context.row_segments_for(&plain, 100_000, 10).unwrap(), 1);
    let few_long = context.row_segments_for(&plain, 2, 300_000).unwrap();
    assert!(few_long > 1, "{few_long}");
    if lanes {
        assert_eq!(few_long, 147);
        assert_eq!(context.row_segments_for(&plain, 4096, 32_000).unwrap(), 16);
        let smoothed = CrossEntropy::new().with_label_smoothing(0.1);
        assert_eq!(
            context.row_segments_for(&smoothed, 4096, 32_000).unwrap(),
            1
        );
    }
    let probabilities = CrossEntropy::new().with_input(InputKind::Probabilities);
    assert_eq!(
        context
            .row_segments_for(&probabilities, 2, 300_000)
            .unwrap(),
        1
    );
    let mut rng = Rng::new(0x5eb);
    check(&engine, 4, 40_000, &mut rng, "automatic");
}

/// Plain rows of `c` (a multiple of 4) with a huge logit, a −inf mask, a
/// rising row (the max moves every trip), NaN, +inf and an all −inf row in
/// the first rows.
fn plain_rows(rng: &mut Rng, b: usize, c: usize) -> Vec<f32> {
    let mut x = rng.logits(b * c, 8.0);
    for (n, row) in x.chunks_mut(c).take(6).enumerate() {
        for (k, v) in row.iter_mut().enumerate() {
            match n {
                0 => {
                    *v = if k == c - 5 {
                        1e4
                    } else {
                        -1e4 + (k % 1000) as f32
                    }
                }
                1 if k % 2 == 1 => *v = f32::NEG_INFINITY,
                2 => *v = k as f32 * 0.05,
                3 if k == c / 2 => *v = f32::NAN,
                4 if k == c - 1 => *v = f32::INFINITY,
                5 => *v = f32::NEG_INFINITY,
                _ => {}
            }
        }
    }
    x
}

/// The plain options (row lse, softcap, z-loss, class and sample weights,
/// ignore index, every reduction) on `engine` against the reference, twice
/// with the same bits.
fn check_plain(engine: &Engine, b: usize, c: usize, rng: &mut Rng, what: &str) {
    let x = plain_rows(rng, b, c);
    let labels = rng.labels(b, c);
    let ignored = every_third_ignored(&labels);
    let weights = rng.sample_weights(b);
    for (i, spec) in plain_specs(c).iter().enumerate() {
        let what = format!("{what} {b}x{c} spec {i}");
        let batch = match i {
            2 => Batch::with_labels(&x, c, &ignored).sample_weights(&weights),
            _ => Batch::with_labels(&x, c, &labels),
        };
        let out = engine.compute_blocking(spec, &batch).unwrap();
        if spec.row_lse {
            assert_row_lse_close(spec, &batch, out.row_lse.as_ref().unwrap(), &what);
        }
        assert_reference_and_repeat(engine, spec, &batch, &out, &what);
    }
}

/// On a CPU-type adapter (lavapipe in CI), plain f32 rows of a multiple of
/// 4 classes longer than 2,048 run as the narrow kernel's lane runs: by
/// default the fewest runs of at most 2,048 classes, or as many as
/// `row_segments` asks where that is enough; fewer falls back to the
/// subgroup or wide kernel's split. Runs that start mid-row, uneven last
/// runs, runs of one vec4, many chunks, against the reference. On other
/// adapters the same cases run on the default kernels.
#[test]
fn lane_runs_match_the_reference() {
    let mut rng = Rng::new(0x1a9e);
    let Some(engine) = gpu() else { return };
    let lanes = cpu_adapter(&engine);
    let context = engine.gpu_context().unwrap();
    let plain = CrossEntropy::new();
    for (b, c) in [(9, 2052), (6, 9000), (7, 40_000), (1, 262_144)] {
        if lanes {
            assert_eq!(context.kernel_for(c), KernelVariant::Narrow, "{c}");
            assert_eq!(
                context.row_segments_for(&plain, b, c).unwrap(),
                c.div_ceil(2048) as u32,
                "{b}x{c}"
            );
        }
        check_plain(&engine, b, c, &mut rng, "default");
    }
    // Too many runs for the classes: a run per vec4.
    for (segments, c, runs) in [(7, 9000, 7), (600, 4096, 600), (2000, 4096, 1024)] {
        let Some(engine) = gpu_with(GpuOptions {
            row_segments: Some(segments),
            ..Default::default()
        }) else {
            return;
        };
        let context = engine.gpu_context().unwrap();
        if lanes {
            assert_eq!(context.kernel_for(c), KernelVariant::Narrow);
            assert_eq!(context.row_segments_for(&plain, 6, c).unwrap(), runs);
        }
        check_plain(&engine, 6, c, &mut rng, &format!("segments={segments}"));
    }
    // Fewer runs than the lanes need: the subgroup kernel's split.
    let Some(engine) = gpu_with(GpuOptions {
        row_segments: Some(3),
        ..Default::default()
    }) else {
        return;
    };
    let context = engine.gpu_context().unwrap();
    assert_ne!(context.kernel_for(9000), KernelVariant::Narrow);
    assert_eq!(context.row_segments_for(&plain, 6, 9000).unwrap(), 3);
    check_plain(&engine, 6, 9000, &mut rng, "segments=3");
    // Chunks of two rows: every chunk's runs in one segments buffer.
    let Some(engine) = gpu_with(GpuOptions {
        max_binding_bytes: Some(64 << 10),
        ..Default::default()
    }) else {
        return;
    };
    check_plain(&engine, 7, 6000, &mut rng, "chunked");
}
