//! Few long rows split into runs of classes (`GpuOptions::row_segments`):
//! every option against the f64 reference, the gradient read twice, special
//! values, and the automatic choice.

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

fn check(engine: &Engine, b: usize, c: usize, rng: &mut Rng, what: &str) {
    let context = engine.gpu_context().unwrap();
    let x = logits(rng, b, c, true);
    let labels = rng.labels(b, c);
    let ignored: Vec<i32> = labels
        .iter()
        .enumerate()
        .map(|(n, &y)| if n % 3 == 1 { -100 } else { y })
        .collect();
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
                let out = context.compute_blocking(&spec, &batch).unwrap();
                let want = reference::compute(&spec, &batch).unwrap();
                assert_matches_reference(&spec, &batch, &out.per_example);
                assert_eq!(out.stats.count, want.stats.count, "{what}");
                assert_eq!(
                    out.stats.nonfinite_rows, want.stats.nonfinite_rows,
                    "{what}"
                );
                assert_rel(out.stats.weight_sum, want.stats.weight_sum, 1e-7, &what);
                assert_rel(out.stats.sum, exact_sum(&out.per_example), 1e-12, &what);
                assert_gradient_close(
                    &spec,
                    &batch,
                    out.gradient.as_ref().unwrap(),
                    |_, _| 0.0,
                    &what,
                );
                assert_row_lse_close(&spec, &batch, out.row_lse.as_ref().unwrap(), &what);
                let again = context.compute_blocking(&spec, &batch).unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&out.per_example), bits(&again.per_example), "{what}");
                // Debug text: NaN sums compare equal there.
                assert_eq!(
                    format!("{:?}", out.stats),
                    format!("{:?}", again.stats),
                    "{what}"
                );
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

/// The default splits only rows too few to fill the device and long enough
/// for two runs of 4,096 classes, and never probabilities or rows read once.
#[test]
fn automatic_split_is_for_few_long_rows() {
    let Some(engine) = gpu() else { return };
    let context = engine.gpu_context().unwrap();
    let plain = CrossEntropy::new();
    assert_eq!(context.row_segments_for(&plain, 1, 4000).unwrap(), 1);
    assert_eq!(context.row_segments_for(&plain, 100_000, 10).unwrap(), 1);
    let few_long = context.row_segments_for(&plain, 2, 300_000).unwrap();
    assert!(few_long > 1, "{few_long}");
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
