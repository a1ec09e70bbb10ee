//! DESIGN §2 on cases small enough to derive by hand, each checked on the CPU
//! reference and on the GPU. The expected values restate what PyTorch's
//! `F.cross_entropy`, Keras' `categorical_crossentropy` and TF1's
//! `losses.Reduction` define.

mod common;

use common::gpu;
use fused_loss::*;

const LN3: f32 = 1.098_612_3;

fn engines() -> Vec<Engine> {
    let mut engines = vec![Engine::cpu(), Engine::reference()];
    engines.extend(gpu());
    engines
}

fn close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 2e-6 * (1.0 + want.abs()),
        "{what}: got {got}, want {want}"
    );
}

fn run(spec: &CrossEntropy, batch: &Batch<'_>) -> Vec<LossOutput> {
    engines()
        .iter()
        .map(|e| e.compute_blocking(spec, batch).unwrap())
        .collect()
}

// Row [0, ln 3] has softmax [1/4, 3/4].
const L0: f64 = std::f64::consts::LN_2 * 2.0; // −log(1/4)
fn l1() -> f64 {
    (4.0f64 / 3.0).ln() // −log(3/4)
}

#[test]
fn plain_labels() {
    let logits = [0.0, LN3, 0.0, LN3];
    for out in run(
        &CrossEntropy::new(),
        &Batch::with_labels(&logits, 2, &[0, 1]),
    ) {
        close(out.per_example[0] as f64, L0, "row 0");
        close(out.per_example[1] as f64, l1(), "row 1");
        close(out.loss, (L0 + l1()) / 2.0, "mean");
        close(out.average_loss, (L0 + l1()) / 2.0, "average_loss");
    }
}

#[test]
fn class_weighted_mean_divides_by_the_weights_of_the_targets() {
    // PyTorch 'mean' with weight=[1, 3]: Σ w_y·L / Σ w_y.
    let logits = [0.0, LN3, 0.0, LN3];
    let spec = CrossEntropy::new().with_class_weights(vec![1.0, 3.0]);
    let want_sum = L0 + 3.0 * l1();
    for reduction in Reduction::ALL {
        for out in run(
            &spec.clone().with_reduction(reduction),
            &Batch::with_labels(&logits, 2, &[0, 1]),
        ) {
            let want = match reduction {
                Reduction::None | Reduction::Sum => want_sum,
                Reduction::Mean => want_sum / 4.0,
                Reduction::SumOverBatchSize | Reduction::SumByNonzeroWeights => want_sum / 2.0,
            };
            close(out.loss, want, reduction.name());
            // Estimator's average_loss weighs by example, not by class weight.
            close(out.average_loss, want_sum / 2.0, "average_loss");
            close(out.stats.weight_sum, 4.0, "weight_sum");
        }
    }
}

#[test]
fn label_smoothing_follows_pytorch() {
    // (1−ε)·(−ℓ_y) + (ε/C)·Σ_c(−ℓ_c), ε = 0.2, C = 2.
    let logits = [0.0, LN3];
    let spec = CrossEntropy::new().with_label_smoothing(0.2);
    for out in run(&spec, &Batch::with_labels(&logits, 2, &[0])) {
        close(
            out.per_example[0] as f64,
            0.8 * L0 + 0.1 * (L0 + l1()),
            "smoothed",
        );
    }
    // ε = 1 leaves only the uniform part.
    let spec = CrossEntropy::new().with_label_smoothing(1.0);
    for out in run(&spec, &Batch::with_labels(&logits, 2, &[0])) {
        close(out.per_example[0] as f64, 0.5 * (L0 + l1()), "eps = 1");
    }
}

#[test]
fn ignored_rows_leave_every_denominator() {
    let logits = [0.0, LN3, 5.0, -5.0, 0.0, LN3];
    let spec = CrossEntropy::new().with_ignore_index(-100);
    let batch = Batch::with_labels(&logits, 2, &[0, -100, 1]);
    for reduction in Reduction::ALL {
        for out in run(&spec.clone().with_reduction(reduction), &batch) {
            assert_eq!(out.per_example[1], 0.0);
            assert_eq!(
                (out.stats.count, out.stats.nonzero_count, out.stats.batch),
                (2, 2, 3)
            );
            let sum = L0 + l1();
            let want = if matches!(reduction, Reduction::None | Reduction::Sum) {
                sum
            } else {
                sum / 2.0
            };
            close(out.loss, want, reduction.name());
            close(out.average_loss, sum / 2.0, "average_loss");
        }
    }
}

#[test]
fn sample_weights_and_tf1_reductions() {
    // s = [2, 0, 1]: TF1 SUM_BY_NONZERO_WEIGHTS divides by 2 rows,
    // SUM_OVER_BATCH_SIZE by 3, MEAN by Σ s = 3.
    let logits = [0.0, LN3, 0.0, LN3, 0.0, LN3];
    let weights = [2.0, 0.0, 1.0];
    let batch = Batch::with_labels(&logits, 2, &[0, 0, 1]).sample_weights(&weights);
    let sum = 2.0 * L0 + l1();
    for reduction in Reduction::ALL {
        for out in run(&CrossEntropy::new().with_reduction(reduction), &batch) {
            assert_eq!(out.per_example[1], 0.0);
            let want = match reduction {
                Reduction::None | Reduction::Sum => sum,
                Reduction::Mean | Reduction::SumOverBatchSize => sum / 3.0,
                Reduction::SumByNonzeroWeights => sum / 2.0,
            };
            close(out.loss, want, reduction.name());
            close(out.average_loss, sum / 3.0, "average_loss");
            assert_eq!((out.stats.count, out.stats.nonzero_count), (3, 2));
        }
    }
}

#[test]
fn probabilities_are_renormalised_and_clipped_like_keras() {
    let eps = PROBABILITY_EPSILON as f64;
    let probabilities = [0.25, 0.75, 1.0, 3.0, 0.0, 1.0, 1.0, 0.0];
    let spec = CrossEntropy::new().with_input(InputKind::Probabilities);
    for out in run(&spec, &Batch::with_labels(&probabilities, 2, &[0, 0, 0, 0])) {
        close(out.per_example[0] as f64, L0, "normalised row");
        close(out.per_example[1] as f64, L0, "renormalised row");
        close(out.per_example[2] as f64, -(eps.ln()), "clipped at 1e-7");
        assert!((out.per_example[3] as f64) < 2e-7, "clipped at 1 − 1e-7");
    }
}

#[test]
fn dense_targets_are_used_as_given() {
    // Soft target [0.5, 0.5], not renormalised; with ε: t' = (1−ε)·t + ε/C.
    let logits = [0.0, LN3, 0.0, LN3];
    let targets = [0.5, 0.5, 1.0, 1.0];
    for eps in [0.0, 0.4] {
        let spec = CrossEntropy::new().with_label_smoothing(eps);
        for out in run(&spec, &Batch::with_dense(&logits, 2, &targets)) {
            let eps = eps as f64;
            let t0 = (1.0 - eps) * 0.5 + eps / 2.0;
            close(out.per_example[0] as f64, t0 * (L0 + l1()), "soft");
            let t1 = (1.0 - eps) + eps / 2.0;
            close(out.per_example[1] as f64, t1 * (L0 + l1()), "unnormalised");
            assert_eq!(out.stats.weight_sum, 2.0);
        }
    }
}

#[test]
fn nothing_counted_gives_zero_not_nan() {
    let logits = [0.0, LN3, 0.0, LN3];
    let spec = CrossEntropy::new().with_ignore_index(7);
    for reduction in Reduction::ALL {
        for out in run(
            &spec.clone().with_reduction(reduction),
            &Batch::with_labels(&logits, 2, &[7, 7]),
        ) {
            assert_eq!(out.loss, 0.0);
            assert_eq!(out.average_loss, 0.0);
            assert_eq!(out.stats.count, 0);
        }
    }
}

#[test]
fn stats_merge_across_shards() {
    let logits = [0.0, LN3, 0.0, LN3, 2.0, 1.0, -1.0, 0.5];
    let labels = [0, 1, 0, 1];
    let weights = [1.0, 2.0, 0.0, 0.5];
    let spec = CrossEntropy::new().with_class_weights(vec![0.5, 2.0]);
    let whole = Engine::cpu()
        .compute_blocking(
            &spec,
            &Batch::with_labels(&logits, 2, &labels).sample_weights(&weights),
        )
        .unwrap();
    for engine in engines() {
        let mut merged = LossStats::default();
        for (lo, hi) in [(0, 1), (1, 4)] {
            let shard = Batch::with_labels(&logits[lo * 2..hi * 2], 2, &labels[lo..hi])
                .sample_weights(&weights[lo..hi]);
            merged.merge(&engine.compute_blocking(&spec, &shard).unwrap().stats);
        }
        assert_eq!(
            (merged.count, merged.nonzero_count, merged.batch),
            (4, 3, 4)
        );
        for reduction in Reduction::ALL {
            close(
                merged.reduce(reduction),
                whole.stats.reduce(reduction),
                reduction.name(),
            );
        }
        close(merged.average_loss(), whole.average_loss, "average_loss");
    }
}
