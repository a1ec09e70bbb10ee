//! The fast CPU path against the f64 reference: every option and reduction,
//! narrow and wide rows, extremes, the gradient, determinism across thread
//! counts, the portable fallback, and bad input.
//!
//! Tolerances (the GPU's, documented in the README):
//! - per-example: `|Δ| ≤ 1e-5·(1 + |L_n| + Σ_c|a_c|·max_c|x_{n,c}|)`;
//! - `sum`: within 1e-12 relative of the exact sum of the returned f32 losses;
//! - `weight_sum`, `sample_weight_sum`: within 1e-12 relative of the reference;
//! - counts: exact;
//! - gradient: `|Δ| ≤ 1e-5·(Σ_c|a_c| + 2·s_n·z·|lse_n|)·(1 + |lse_n|)/D + 1e-9`;
//! - row lse: `|Δ| ≤ 1e-5·(1 + |lse_n|)`.

mod common;

use common::*;
use fused_loss::cpu::fast::{self, Isa};
use fused_loss::cpu::reference;
use fused_loss::*;

const ISAS: [Isa; 3] = [Isa::Detect, Isa::Avx2, Isa::Portable];

/// Checks one configuration on both instruction sets against the reference:
/// losses, stats, reduced values, gradient and row lse.
fn check(spec: &CrossEntropy, batch: &Batch<'_>, what: &str) {
    let want = reference::compute(spec, batch).unwrap();
    for isa in ISAS {
        let got = fast::cross_entropy_with(spec, batch, isa)
            .unwrap_or_else(|e| panic!("{what} ({isa:?}): fast path failed: {e}"));
        let what = format!("{what} ({isa:?})");
        assert_eq!(got.backend, Backend::Cpu);
        let context = std::panic::AssertUnwindSafe(|| {
            assert_matches_reference(spec, batch, &got.per_example)
        });
        if let Err(panic) = std::panic::catch_unwind(context) {
            eprintln!("failed case: {what}");
            std::panic::resume_unwind(panic);
        }
        assert_stats(&got, &want, loss_sum_tolerance(spec, batch), &what);
        assert_eq!(got.reduction, spec.reduction);
        assert_eq!(
            got.loss.to_bits(),
            got.stats.reduce(spec.reduction).to_bits(),
            "{what}: loss"
        );
        assert_eq!(
            got.average_loss.to_bits(),
            got.stats.average_loss().to_bits(),
            "{what}: average_loss"
        );
        if spec.gradient {
            assert_gradient_matches(spec, batch, &got, &what);
        } else {
            assert!(got.gradient.is_none());
        }
        if spec.row_lse {
            assert_lse_matches(spec, batch, &got, &what);
        } else {
            assert!(got.row_lse.is_none());
        }
    }
}

/// `Σ_n` of the per-example tolerances: how far `sum` may stray from the
/// reference's.
fn loss_sum_tolerance(spec: &CrossEntropy, batch: &Batch<'_>) -> f64 {
    let c = batch.classes;
    reference::row_losses(spec, batch)
        .unwrap()
        .iter()
        .enumerate()
        .map(|(n, row)| tolerance(row, &batch.logits[n * c..(n + 1) * c]))
        .filter(|t| t.is_finite())
        .sum()
}

fn assert_stats(got: &LossOutput, want: &LossOutput, sum_tolerance: f64, what: &str) {
    assert_rel(
        got.stats.sum,
        exact_sum(&got.per_example),
        1e-12,
        &format!("{what}: sum"),
    );
    assert_rel(
        got.stats.weight_sum,
        want.stats.weight_sum,
        1e-12,
        &format!("{what}: weight_sum"),
    );
    assert_rel(
        got.stats.sample_weight_sum,
        want.stats.sample_weight_sum,
        1e-12,
        &format!("{what}: sample_weight_sum"),
    );
    assert_eq!(got.stats.count, want.stats.count, "{what}: count");
    assert_eq!(
        got.stats.nonzero_count, want.stats.nonzero_count,
        "{what}: nonzero_count"
    );
    assert_eq!(got.stats.batch, want.stats.batch, "{what}: batch");
    assert_eq!(
        got.stats.nonfinite_rows, want.stats.nonfinite_rows,
        "{what}: nonfinite_rows"
    );
    // The reduced values follow from the stats: the sums differ by at most
    // the sum of the per-example tolerances, the denominators by rounding.
    let close = |a: f64, b: f64, denominator: f64| {
        let slack = if denominator == 0.0 {
            0.0
        } else {
            sum_tolerance / denominator.abs()
        };
        (a - b).abs() <= slack + 1e-12 * b.abs() || same_special(a, b)
    };
    let denominator = match want.reduction {
        Reduction::None | Reduction::Sum => 1.0,
        Reduction::Mean => want.stats.weight_sum,
        Reduction::SumOverBatchSize => want.stats.count as f64,
        Reduction::SumByNonzeroWeights => want.stats.nonzero_count as f64,
    };
    assert!(
        close(got.stats.sum, want.stats.sum, 1.0),
        "{what}: sum {} vs {}",
        got.stats.sum,
        want.stats.sum
    );
    assert!(
        close(got.loss, want.loss, denominator),
        "{what}: loss {} vs {}",
        got.loss,
        want.loss
    );
    assert!(
        close(
            got.average_loss,
            want.average_loss,
            want.stats.sample_weight_sum
        ),
        "{what}: average_loss {} vs {}",
        got.average_loss,
        want.average_loss
    );
}

fn assert_gradient_matches(spec: &CrossEntropy, batch: &Batch<'_>, got: &LossOutput, what: &str) {
    let g = got.gradient.as_ref().expect("fast gradient");
    assert_gradient_close(spec, batch, g, |_, _| 0.0, what);
}

fn assert_lse_matches(spec: &CrossEntropy, batch: &Batch<'_>, got: &LossOutput, what: &str) {
    assert_row_lse_close(spec, batch, got.row_lse.as_ref().expect("row lse"), what);
}

struct Case {
    logits: Vec<f32>,
    probabilities: Vec<f32>,
    labels: Vec<i32>,
    ignored: Vec<i32>,
    soft: Vec<f32>,
    hot: Vec<f32>,
    sample_weights: Vec<f32>,
    class_weights: Vec<f32>,
}

impl Case {
    fn new(rng: &mut Rng, batch: usize, classes: usize) -> Case {
        let labels = rng.labels(batch, classes);
        let ignored = labels
            .iter()
            .enumerate()
            .map(|(n, &y)| if n % 4 == 1 { -100 } else { y })
            .collect();
        let mut hot = vec![0.0; batch * classes];
        for (n, &y) in labels.iter().enumerate() {
            hot[n * classes + y as usize] = 1.0;
        }
        Case {
            logits: rng.logits(batch * classes, 8.0),
            probabilities: rng.distributions(batch, classes),
            soft: rng.distributions(batch, classes),
            hot,
            sample_weights: rng.sample_weights(batch),
            class_weights: (0..classes)
                .map(|c| {
                    if c % 5 == 2 {
                        0.0
                    } else {
                        0.25 + (c % 4) as f32 * 0.5
                    }
                })
                .collect(),
            labels,
            ignored,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum TargetKind {
    Labels,
    LabelsIgnored,
    OneHot,
    Soft,
}

/// Every target kind × class weights × sample weights × smoothing × input
/// kind × reduction, on narrow and wide rows; for logits, the gradient too.
#[test]
fn every_option_and_reduction_matches_reference() {
    let mut rng = Rng::new(7);
    let (mut runs, mut gradient_runs) = (0, 0);
    for &(b, c) in &[
        (1usize, 1usize),
        (37, 3),
        (40, 10),
        (33, 17),
        (21, 130),
        (5, 2500),
    ] {
        let case = Case::new(&mut rng, b, c);
        for probabilities in [false, true] {
            for kind in [
                TargetKind::Labels,
                TargetKind::LabelsIgnored,
                TargetKind::OneHot,
                TargetKind::Soft,
            ] {
                for class_weights in [false, true] {
                    for sample_weights in [false, true] {
                        for smoothing in [0.0f32, 0.1, 1.0] {
                            let targets = match kind {
                                TargetKind::Labels => Targets::Labels(&case.labels),
                                TargetKind::LabelsIgnored => Targets::Labels(&case.ignored),
                                TargetKind::OneHot => Targets::Dense(&case.hot),
                                TargetKind::Soft => Targets::Dense(&case.soft),
                            };
                            let batch = Batch {
                                logits: if probabilities {
                                    &case.probabilities
                                } else {
                                    &case.logits
                                },
                                batch: b,
                                classes: c,
                                targets,
                                sample_weights: sample_weights.then_some(&case.sample_weights[..]),
                            };
                            let mut spec = CrossEntropy::new().with_label_smoothing(smoothing);
                            if probabilities {
                                spec = spec.with_input(InputKind::Probabilities);
                            }
                            if class_weights {
                                spec = spec.with_class_weights(case.class_weights.clone());
                            }
                            if matches!(kind, TargetKind::LabelsIgnored) {
                                spec = spec.with_ignore_index(-100);
                            }
                            for reduction in Reduction::ALL {
                                let spec = spec.clone().with_reduction(reduction);
                                let what = format!(
                                    "{b}x{c} probs={probabilities} {kind:?} cw={class_weights} \
                                     sw={sample_weights} eps={smoothing} {reduction}"
                                );
                                check(&spec, &batch, &what);
                                runs += 1;
                            }
                            if !probabilities {
                                let spec = spec.clone().with_gradient(true);
                                check(&spec, &batch, &format!("{b}x{c} {kind:?} cw={class_weights} sw={sample_weights} eps={smoothing} gradient"));
                                gradient_runs += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(runs, 6 * 2 * 4 * 2 * 2 * 3 * 5);
    assert_eq!(gradient_runs, 6 * 4 * 2 * 2 * 3);
}

/// Logits-only options — z-loss, soft-cap, row lse, gradient — alone and
/// together, with every target kind and weighting.
#[test]
fn logit_options_match_reference() {
    let mut rng = Rng::new(21);
    for &(b, c) in &[(13usize, 1usize), (29, 7), (40, 16), (19, 100), (3, 4099)] {
        let case = Case::new(&mut rng, b, c);
        for targets in 0..3 {
            for (z_loss, softcap) in [
                (0.0f32, None),
                (1e-3, None),
                (0.0, Some(5.0f32)),
                (0.01, Some(3.0)),
            ] {
                for weighted in [false, true] {
                    for gradient in [false, true] {
                        for reduction in [
                            Reduction::None,
                            Reduction::Mean,
                            Reduction::SumByNonzeroWeights,
                        ] {
                            let mut spec = CrossEntropy::new()
                                .with_gradient(gradient)
                                .with_row_lse(true)
                                .with_reduction(reduction)
                                .with_z_loss(z_loss)
                                .with_label_smoothing(if weighted { 0.1 } else { 0.0 });
                            if let Some(cap) = softcap {
                                spec = spec.with_softcap(cap);
                            }
                            let mut batch = match targets {
                                0 => Batch::with_labels(&case.logits, c, &case.labels),
                                1 => {
                                    spec = spec.with_ignore_index(-100);
                                    Batch::with_labels(&case.logits, c, &case.ignored)
                                }
                                _ => Batch::with_dense(&case.logits, c, &case.soft),
                            };
                            if weighted {
                                spec = spec.with_class_weights(case.class_weights.clone());
                                batch = batch.sample_weights(&case.sample_weights);
                            }
                            let what = format!(
                                "{b}x{c} targets={targets} z={z_loss} cap={softcap:?} \
                                 weighted={weighted} gradient={gradient} {reduction}"
                            );
                            check(&spec, &batch, &what);
                        }
                    }
                }
            }
        }
    }
}

/// Every row width around the SIMD, kernel and block boundaries, narrow,
/// medium and wide; logits with labels (with and without the gradient) and
/// dense targets (with it), probabilities with labels and dense targets.
#[test]
fn every_width_matches_reference() {
    let mut rng = Rng::new(3);
    for c in [
        1usize, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 24, 25, 31, 32, 33, 100,
        128, 129, 256, 257, 1000, 2047, 2048, 2049, 4099,
    ] {
        let b = (20_000 / c).clamp(3, 3000);
        let logits = rng.logits(b * c, 10.0);
        let labels = rng.labels(b, c);
        let probabilities = rng.distributions(b, c);
        let soft = rng.distributions(b, c);
        for smoothing in [0.0, 0.3] {
            let spec = CrossEntropy::new()
                .with_label_smoothing(smoothing)
                .with_row_lse(true)
                .with_reduction(Reduction::Sum);
            check(
                &spec,
                &Batch::with_labels(&logits, c, &labels),
                &format!("{b}x{c} eps={smoothing}"),
            );
            let with_gradient = spec.clone().with_gradient(true);
            check(
                &with_gradient,
                &Batch::with_labels(&logits, c, &labels),
                &format!("{b}x{c} eps={smoothing} gradient"),
            );
            check(
                &with_gradient,
                &Batch::with_dense(&logits, c, &soft),
                &format!("{b}x{c} dense eps={smoothing} gradient"),
            );
            let spec = spec
                .with_row_lse(false)
                .with_input(InputKind::Probabilities);
            check(
                &spec,
                &Batch::with_labels(&probabilities, c, &labels),
                &format!("{b}x{c} probabilities eps={smoothing}"),
            );
            check(
                &spec,
                &Batch::with_dense(&probabilities, c, &soft),
                &format!("{b}x{c} probabilities dense eps={smoothing}"),
            );
        }
    }
}

/// ±1e4 logits, −inf masks, a NaN row, `+inf`, huge finite logits and rows
/// far below their neighbours, in narrow and wide rows.
#[test]
fn extreme_logits_match_reference() {
    let ninf = f32::NEG_INFINITY;
    let base: Vec<[f32; 7]> = vec![
        [1e4, -1e4, 1e4, 0.0, -1e4, 5e3, 1e4],
        [-1e4, -1e4, -1e4, -1e4, -1e4, -1e4, -1e4],
        [3.0; 7],
        [0.0, 0.0, 0.0, 88.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1e30, 0.0, 0.0, 0.0],
        [ninf, 2.0, ninf, 1.0, 0.5, ninf, ninf],
        [ninf, 2.0, 3.0, ninf, ninf, ninf, ninf],
        [-87.0, -88.0, -104.0, -1e4, -3e4, -1e5, -150.0],
        [f32::NAN, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        [0.0, f32::INFINITY, 1.0, 2.0, 3.0, 4.0, 5.0],
        [ninf; 7],
        [3e38, -3e38, 0.0, 1.0, 2.0, 3.0, 4.0],
    ];
    let labels: Vec<i32> = vec![0, 3, 6, 3, 0, 1, 2, 5, 1, 0, 2, 0];
    // The same rows widened to 7·10 classes (each value repeated) take the
    // medium kernel, and to 7·300 the wide kernel, across its blocks.
    for repeat in [1usize, 10, 300] {
        let classes = 7 * repeat;
        let logits: Vec<f32> = base
            .iter()
            .flat_map(|row| {
                row.iter()
                    .flat_map(move |&x| std::iter::repeat_n(x, repeat))
            })
            .collect();
        let labels: Vec<i32> = labels.iter().map(|&y| y * repeat as i32).collect();
        let mut weights = vec![0.0f32; classes];
        for (c, w) in weights.iter_mut().enumerate() {
            *w = [0.0, 1.0, 2.0, 0.5, 1.0, 0.0, 0.0][c / repeat];
        }
        for smoothing in [0.0, 0.2] {
            for with_weights in [false, true] {
                for softcap in [None, Some(30.0)] {
                    let mut spec = CrossEntropy::new()
                        .with_label_smoothing(smoothing)
                        .with_row_lse(true)
                        .with_reduction(Reduction::Sum);
                    if with_weights {
                        // Zero weight on the masked classes keeps smoothing finite.
                        spec = spec.with_class_weights(weights.clone());
                    }
                    if let Some(cap) = softcap {
                        spec = spec.with_softcap(cap);
                    }
                    let batch = Batch::with_labels(&logits, classes, &labels);
                    let what =
                        format!("extreme C={classes} eps={smoothing} weights={with_weights} cap={softcap:?}");
                    check(&spec, &batch, &what);
                    check(
                        &spec.clone().with_gradient(true),
                        &batch,
                        &format!("{what} gradient"),
                    );
                    // Dense targets on the same rows: the label's class
                    // 0.75, the rest spread over the others.
                    let dense: Vec<f32> = labels
                        .iter()
                        .flat_map(|&y| {
                            (0..classes).map(move |c| {
                                if c == y as usize {
                                    0.75
                                } else {
                                    0.25 / (classes - 1) as f32
                                }
                            })
                        })
                        .collect();
                    let batch = Batch::with_dense(&logits, classes, &dense);
                    check(&spec, &batch, &format!("{what} dense"));
                    check(
                        &spec.clone().with_gradient(true),
                        &batch,
                        &format!("{what} dense gradient"),
                    );
                }
            }
        }
    }
}

/// Non-finite rows propagate as NaN or `+inf`, are counted, and
/// `check_finite` names the first; ignored rows stay 0.
#[test]
fn non_finite_rows_propagate_and_are_counted() {
    let nan = f32::NAN;
    let inf = f32::INFINITY;
    let ninf = f32::NEG_INFINITY;
    let rows = [
        [0.0, 1.0, 2.0],
        [nan, 1.0, 2.0],
        [0.0, inf, 2.0],
        [ninf, ninf, ninf],
        [nan, nan, nan],  // ignored: counts as 0
        [ninf, 1.0, 2.0], // label on a masked class: +inf
    ];
    let labels = [0, 1, 1, 0, -1, 0];
    for repeat in [1usize, 1000] {
        let classes = 3 * repeat;
        let logits: Vec<f32> = rows
            .iter()
            .flat_map(|row| {
                row.iter()
                    .flat_map(move |&x| std::iter::repeat_n(x, repeat))
            })
            .collect();
        let labels: Vec<i32> = labels
            .iter()
            .map(|&y| if y < 0 { y } else { y * repeat as i32 })
            .collect();
        let spec = CrossEntropy::new()
            .with_ignore_index(-1)
            .with_reduction(Reduction::Mean);
        let batch = Batch::with_labels(&logits, classes, &labels);
        check(&spec, &batch, &format!("non-finite C={classes}"));
        let out = fast::cross_entropy(&spec, &batch).unwrap();
        assert_eq!(out.stats.nonfinite_rows, 4);
        assert!(out.per_example[1].is_nan() && out.per_example[2].is_nan());
        assert!(out.per_example[3].is_nan());
        assert_eq!(out.per_example[4], 0.0);
        assert_eq!(out.per_example[5], f32::INFINITY);
        assert!(out.loss.is_nan());
        let strict = spec.clone().with_check_finite(true);
        match fast::cross_entropy(&strict, &batch) {
            Err(Error::NonFiniteLoss { row }) => assert_eq!(row, 1),
            other => panic!("expected NonFiniteLoss, got {other:?}"),
        }
    }
}

/// Probabilities with zeros, a zero row, negative and non-finite entries.
#[test]
fn odd_probabilities_match_reference() {
    let rows = [
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
        [0.5, -0.1, 0.3, 0.3],
        [0.25, f32::NAN, 0.25, 0.5],
        [0.25, f32::INFINITY, 0.25, 0.5],
        [0.25, f32::NEG_INFINITY, 0.25, 0.5],
        [1e-30, 1e-30, 1e-30, 1e-30],
        [3e38, 3e38, 1.0, 1.0],
    ];
    let logits: Vec<f32> = rows.iter().flatten().copied().collect();
    let labels = vec![2, 0, 1, 0, 0, 3, 1, 2];
    for smoothing in [0.0, 0.25] {
        let spec = CrossEntropy::new()
            .with_input(InputKind::Probabilities)
            .with_label_smoothing(smoothing)
            .with_reduction(Reduction::Sum);
        check(
            &spec,
            &Batch::with_labels(&logits, 4, &labels),
            &format!("odd probabilities eps={smoothing}"),
        );
        let dense: Vec<f32> = labels
            .iter()
            .flat_map(|&y| (0..4).map(move |c| f32::from(c == y)))
            .collect();
        check(
            &spec,
            &Batch::with_dense(&logits, 4, &dense),
            &format!("odd probabilities dense eps={smoothing}"),
        );
    }
}

/// Large batches (many chunks, partial lane groups) and a batch of one row
/// of 262,144 classes.
#[test]
fn large_batches_match_reference() {
    let mut rng = Rng::new(99);
    for &(b, c) in &[(20_003usize, 10usize), (3001, 100), (2, 262_144)] {
        let logits = rng.logits(b * c, 12.0);
        let labels = rng.labels(b, c);
        let weights: Vec<f32> = (0..b).map(|_| rng.uniform(0.0, 2.0)).collect();
        let spec = CrossEntropy::new()
            .with_label_smoothing(0.05)
            .with_reduction(Reduction::Mean)
            .with_row_lse(true);
        check(
            &spec,
            &Batch::with_labels(&logits, c, &labels).sample_weights(&weights),
            &format!("{b}x{c}"),
        );
        check(
            &CrossEntropy::new().with_gradient(true),
            &Batch::with_labels(&logits, c, &labels),
            &format!("{b}x{c} gradient"),
        );
    }
}

fn bits(out: &LossOutput) -> Vec<u64> {
    let mut v: Vec<u64> = out.per_example.iter().map(|x| x.to_bits() as u64).collect();
    v.extend(out.gradient.iter().flatten().map(|x| x.to_bits() as u64));
    v.extend(out.row_lse.iter().flatten().map(|x| x.to_bits() as u64));
    let s = &out.stats;
    v.extend([
        out.loss.to_bits(),
        out.average_loss.to_bits(),
        s.sum.to_bits(),
        s.weight_sum.to_bits(),
        s.sample_weight_sum.to_bits(),
        s.count,
        s.nonzero_count,
        s.nonfinite_rows,
    ]);
    v
}

/// The same input gives the same bits on 1, 2 and 3 threads, and run after
/// run.
#[test]
fn bit_identical_across_thread_counts_and_runs() {
    let mut rng = Rng::new(5);
    for &(b, c, gradient) in &[
        (50_000usize, 10usize, false),
        (4000, 300, false),
        (600, 3000, true),
        (8, 40_000, false),
    ] {
        let logits = rng.logits(b * c, 8.0);
        let labels = rng.labels(b, c);
        let weights: Vec<f32> = (0..b).map(|_| rng.uniform(0.0, 2.0)).collect();
        let spec = CrossEntropy::new()
            .with_label_smoothing(0.1)
            .with_gradient(gradient)
            .with_row_lse(true);
        let batch = Batch::with_labels(&logits, c, &labels).sample_weights(&weights);
        let mut seen: Option<Vec<u64>> = None;
        for threads in [1, 2, 3, 2, 1] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let out = pool.install(|| fast::cross_entropy(&spec, &batch).unwrap());
            let now = bits(&out);
            match &seen {
                None => seen = Some(now),
                Some(first) => assert!(
                    first == &now,
                    "{b}x{c}: {threads} threads differ from the first run"
                ),
            }
        }
    }
}

/// Bad input gives the reference's typed errors.
#[test]
fn bad_input_gives_the_reference_errors() {
    let logits = [0.0f32; 12];
    let labels = [0, 1, 2];
    let good = Batch::with_labels(&logits, 4, &labels);
    let dense = [0.25f32; 12];
    let cases: Vec<(CrossEntropy, Batch<'_>)> = vec![
        (
            CrossEntropy::new(),
            Batch::with_labels(&logits[..11], 4, &labels),
        ),
        (
            CrossEntropy::new(),
            Batch::with_labels(&logits, 4, &[0, 1, 4]),
        ),
        (
            CrossEntropy::new(),
            Batch::with_labels(&logits, 4, &[0, -3, 1]),
        ),
        (CrossEntropy::new(), Batch::with_labels(&logits, 0, &[])),
        (CrossEntropy::new().with_label_smoothing(1.5), good),
        (CrossEntropy::new().with_class_weights(vec![1.0; 3]), good),
        (
            CrossEntropy::new().with_class_weights(vec![1.0, -1.0, 1.0, 1.0]),
            good,
        ),
        (
            CrossEntropy::new(),
            good.sample_weights(&[1.0, f32::NAN, 1.0]),
        ),
        (CrossEntropy::new(), good.sample_weights(&[1.0, 1.0])),
        (
            CrossEntropy::new().with_ignore_index(-1),
            Batch::with_dense(&logits, 4, &dense),
        ),
        (
            CrossEntropy::new()
                .with_input(InputKind::Probabilities)
                .with_gradient(true),
            good,
        ),
        (
            CrossEntropy::new()
                .with_input(InputKind::Probabilities)
                .with_softcap(2.0),
            good,
        ),
        (CrossEntropy::new().with_z_loss(-1.0), good),
        (CrossEntropy::new().with_softcap(0.0), good),
    ];
    for (spec, batch) in &cases {
        let want = reference::compute(spec, batch).expect_err("reference rejects it");
        for isa in ISAS {
            let got = fast::cross_entropy_with(spec, batch, isa).expect_err("fast rejects it");
            assert_eq!(format!("{got:?}"), format!("{want:?}"));
        }
    }
}

#[test]
fn empty_batch_gives_zero_loss() {
    let out = fast::cross_entropy(&CrossEntropy::new(), &Batch::with_labels(&[], 4, &[])).unwrap();
    assert!(out.per_example.is_empty());
    assert_eq!(out.loss, 0.0);
    assert_eq!(out.average_loss, 0.0);
    assert_eq!(out.stats.batch, 0);
}

#[test]
fn engines_name_their_backends() {
    let cpu = Engine::cpu();
    assert_eq!(cpu.backend(), Backend::Cpu);
    assert!(
        cpu.adapter().starts_with("cpu (fast, "),
        "{}",
        cpu.adapter()
    );
    let reference = Engine::reference();
    assert_eq!(reference.backend(), Backend::Reference);
    assert_eq!(reference.backend().name(), "reference");
    assert_eq!(reference.adapter(), "cpu (f64 reference)");
    let logits = [2.0f32, 0.5, -1.0, 0.1, 0.2, 3.0];
    let batch = Batch::with_labels(&logits, 3, &[0, 2]);
    let spec = CrossEntropy::new();
    assert_eq!(
        cpu.compute_blocking(&spec, &batch).unwrap().backend,
        Backend::Cpu
    );
    assert_eq!(
        reference.compute_blocking(&spec, &batch).unwrap().backend,
        Backend::Reference
    );
}
