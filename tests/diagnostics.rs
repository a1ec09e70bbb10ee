//! Diagnostics: the GPU kernels against their CPU twins, and streaming
//! results that do not depend on how the data is cut.

mod common;

use common::{gpu, Rng};
use fused_loss::diagnostics::{
    scores, BinScale, Diagnostics, Histogram, HistogramSpec, LossRange, RowScore, Scorer,
    StreamingMean, NO_CLASS,
};
use fused_loss::gpu::GpuDiagnostics;
use fused_loss::{Batch, CrossEntropy, Engine, InputKind};

fn assert_scores_close(got: &[RowScore], want: &[RowScore], what: &str) {
    assert_eq!(got.len(), want.len());
    for (n, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            (g.label, g.predicted),
            (w.label, w.predicted),
            "{what} row {n}"
        );
        for (a, b, name) in [
            (g.confidence, w.confidence, "confidence"),
            (g.margin, w.margin, "margin"),
        ] {
            assert!(
                (a.is_nan() && b.is_nan()) || (a - b).abs() <= 2e-6,
                "{what} row {n} {name}: gpu {a} vs cpu {b}"
            );
        }
    }
}

/// A batch with every special case of the scores: ties, masked classes,
/// NaN and +inf rows, all −inf rows, ignored rows.
fn special_batch() -> (Vec<f32>, Vec<i32>, usize) {
    let c = 4;
    let mut rng = Rng::new(7);
    let mut logits = rng.logits(300 * c, 8.0);
    let mut labels = rng.labels(300, c);
    logits[0..4].copy_from_slice(&[1.0, 1.0, 1.0, 1.0]);
    logits[4..8].copy_from_slice(&[f32::NEG_INFINITY, 2.0, f32::NEG_INFINITY, 0.0]);
    labels[1] = 0;
    logits[9] = f32::NAN;
    logits[14] = f32::INFINITY;
    logits[16..20].fill(f32::NEG_INFINITY);
    labels[5] = -100;
    labels[6] = -100;
    logits[24] = f32::NAN;
    (logits, labels, c)
}

#[test]
fn gpu_scores_match_the_cpu_twin() {
    let Some(engine) = gpu() else { return };
    let gpu = GpuDiagnostics::new(engine.gpu_context().unwrap()).unwrap();
    let (logits, labels, c) = special_batch();
    let spec = CrossEntropy::new().with_ignore_index(-100);
    let batch = Batch::with_labels(&logits, c, &labels);
    let want = scores(&spec, &batch).unwrap();
    let got = gpu.scores_blocking(&spec, &batch).unwrap();
    assert_scores_close(&got, &want, "logits");
    assert_eq!(want[0].predicted, 0);
    assert_eq!(want[2].predicted, NO_CLASS);
    assert_eq!(want[4].predicted, NO_CLASS);
    assert!(want[5].confidence.is_nan() && want[5].predicted >= 0);

    // Probabilities, and wider rows (several workgroups, 2 rows per class).
    let mut rng = Rng::new(8);
    for (b, c) in [(257, 3), (70, 1000), (5, 1)] {
        let probs = rng.distributions(b, c);
        let labels = rng.labels(b, c);
        let spec = CrossEntropy::new().with_input(InputKind::Probabilities);
        let batch = Batch::with_labels(&probs, c, &labels);
        let want = scores(&spec, &batch).unwrap();
        assert_scores_close(&gpu.scores_blocking(&spec, &batch).unwrap(), &want, "probs");
        let logits = rng.logits(b * c, 20.0);
        let spec = CrossEntropy::new();
        let batch = Batch::with_labels(&logits, c, &labels);
        let want = scores(&spec, &batch).unwrap();
        assert_scores_close(
            &gpu.scores_blocking(&spec, &batch).unwrap(),
            &want,
            "logits",
        );
    }

    // Dense targets score against their argmax; bad labels are errors.
    let targets = rng.distributions(9, 5);
    let logits = rng.logits(45, 3.0);
    let batch = Batch::with_dense(&logits, 5, &targets);
    let want = scores(&CrossEntropy::new(), &batch).unwrap();
    assert_scores_close(
        &gpu.scores_blocking(&CrossEntropy::new(), &batch).unwrap(),
        &want,
        "dense",
    );
    let bad = Batch::with_labels(&logits[..10], 5, &[0, 5]);
    assert!(gpu.scores_blocking(&CrossEntropy::new(), &bad).is_err());
}

#[test]
fn gpu_histogram_counts_equal_the_cpu_twin() {
    let Some(engine) = gpu() else { return };
    let scorer = Scorer::for_engine(&engine).unwrap();
    let mut rng = Rng::new(9);
    let mut losses: Vec<f32> = (0..20_000).map(|_| rng.uniform(0.0, 5.0)).collect();
    losses[3] = f32::NAN;
    losses[4] = f32::INFINITY;
    losses[5] = 0.0;
    losses[6] = 5.0;
    // Values on and next to edges that are not f32 numbers.
    for (i, e) in [0.1f64, 0.7, 1.3, 2.9].iter().enumerate() {
        losses[10 + 3 * i] = *e as f32;
        losses[11 + 3 * i] = (*e as f32).next_up();
        losses[12 + 3 * i] = (*e as f32).next_down();
    }
    let labels: Vec<i32> = (0..losses.len() as i32).map(|i| i % 11 - 1).collect();
    let mut range = LossRange::new();
    range.add_losses(&losses, Some(&labels), Some(-1));
    let specs = [
        HistogramSpec::new(50),
        HistogramSpec::new(7).with_range(0.1, 2.9),
        HistogramSpec::new(13).with_scale(BinScale::Log),
        HistogramSpec::new(1),
    ];
    for spec in specs {
        for ignore in [None, Some(-1)] {
            let mut cpu = Histogram::from_spec(&spec, &range).unwrap();
            cpu.add_losses(&losses, Some(&labels), ignore);
            let mut gpu = Histogram::from_spec(&spec, &range).unwrap();
            scorer
                .histogram_blocking(&mut gpu, &losses, Some(&labels), ignore)
                .unwrap();
            assert_eq!(gpu, cpu, "{spec:?} {ignore:?}");
            assert_eq!(
                cpu.total() + cpu.below() + cpu.above() + cpu.nonfinite() + cpu.ignored(),
                losses.len() as u64
            );
        }
    }
}

fn diagnostics_in_chunks(
    engine: &Engine,
    spec: &CrossEntropy,
    logits: &[f32],
    labels: &[i32],
    c: usize,
    chunk: usize,
) -> Diagnostics {
    let scorer = Scorer::for_engine(engine).unwrap();
    let mut d = Diagnostics::new(c, 10);
    for (i, y) in labels.chunks(chunk).enumerate() {
        let first = i * chunk;
        let batch = Batch::with_labels(&logits[first * c..(first + y.len()) * c], c, y);
        let out = engine.compute_blocking(spec, &batch).unwrap();
        let s = scorer.scores_blocking(spec, &batch).unwrap();
        d.update(first as u64, &out, &s, spec.ignore_index).unwrap();
    }
    d
}

#[test]
fn chunked_diagnostics_equal_one_shot_on_every_backend() {
    let mut rng = Rng::new(10);
    let (b, c) = (1000, 6);
    let logits = rng.logits(b * c, 4.0);
    let mut labels = rng.labels(b, c);
    labels[17] = -100;
    let spec = CrossEntropy::new().with_ignore_index(-100);
    let mut engines = vec![Engine::cpu()];
    engines.extend(gpu());
    let mut tops = Vec::new();
    for engine in &engines {
        let whole = diagnostics_in_chunks(engine, &spec, &logits, &labels, c, b);
        for chunk in [1, 7, 333] {
            let d = diagnostics_in_chunks(engine, &spec, &logits, &labels, c, chunk);
            let (a, w) = (d.stats(), whole.stats());
            assert!((a.average_loss() - w.average_loss()).abs() <= 1e-12 * w.average_loss());
            assert_eq!((a.count, a.batch), (w.count, w.batch));
            let rows =
                |d: &Diagnostics| d.top().iter().map(|r| (r.row, r.loss)).collect::<Vec<_>>();
            assert_eq!(rows(&d), rows(&whole), "chunk {chunk}");
            assert_eq!(d.range().min(), whole.range().min());
            assert_eq!(d.range().max(), whole.range().max());
            assert_eq!(d.disagreements(), whole.disagreements());
            assert_eq!(d.per_class().count(2), whole.per_class().count(2));
        }
        assert!(whole.top().iter().all(|r| r.row != 17));
        tops.push(whole.top().iter().map(|r| r.row).collect::<Vec<_>>());
    }
    // CPU and GPU rank the same rows.
    assert!(tops.windows(2).all(|w| w[0] == w[1]), "{tops:?}");
}

#[test]
fn streaming_mean_over_eval_batches() {
    let mut rng = Rng::new(11);
    let (b, c) = (1000, 5);
    let logits = rng.logits(b * c, 3.0);
    let labels = rng.labels(b, c);
    let weights: Vec<f32> = (0..b).map(|_| rng.uniform(0.0, 2.0)).collect();
    let engine = Engine::cpu();
    let spec = CrossEntropy::new();
    let all = engine
        .compute_blocking(
            &spec,
            &Batch::with_labels(&logits, c, &labels).sample_weights(&weights),
        )
        .unwrap();
    let mut shards = Vec::new();
    for (i, y) in labels.chunks(128).enumerate() {
        let r = i * 128..i * 128 + y.len();
        let batch = Batch::with_labels(&logits[r.start * c..r.end * c], c, y)
            .sample_weights(&weights[r.clone()]);
        let mut m = StreamingMean::new();
        m.update(&engine.compute_blocking(&spec, &batch).unwrap());
        shards.push(m);
    }
    let mut forward = StreamingMean::new();
    shards.iter().for_each(|s| forward.merge(s));
    let mut backward = StreamingMean::new();
    shards.iter().rev().for_each(|s| backward.merge(s));
    for m in [forward, backward] {
        assert!((m.result() - all.average_loss).abs() <= 1e-12 * all.average_loss);
        assert_eq!(m.count(), b as u64);
    }
    // Keras' `Mean()(unweighted_losses, sample_weight)` gives the same.
    let unweighted = engine
        .compute_blocking(&spec, &Batch::with_labels(&logits, c, &labels))
        .unwrap();
    let mut direct = StreamingMean::new();
    direct
        .update_values(&unweighted.per_example, Some(&weights))
        .unwrap();
    assert!(
        (direct.result() - all.average_loss).abs() <= 1e-6 * all.average_loss,
        "{} vs {}",
        direct.result(),
        all.average_loss
    );
}
