//! The GPU top-k and per-class kernels against their CPU twins, the
//! soft-capped scores, `Diagnostics::update_with`, and the buffer pool.

mod common;

use common::{gpu, gpu_with, Rng};
use fused_loss::cpu::reference;
use fused_loss::diagnostics::{
    scores, top_k, Diagnostics, Histogram, HistogramSpec, LossRange, PerClassLoss, Ranked, Scorer,
};
use fused_loss::gpu::GpuDiagnostics;
use fused_loss::{Batch, CrossEntropy, Engine, Error, GpuOptions};

/// Rows and loss bits, so that -0.0 and 0.0 are told apart.
fn exact(top: &[Ranked<()>]) -> Vec<(u64, u32)> {
    top.iter().map(|r| (r.row, r.loss.to_bits())).collect()
}

fn diagnostics_for(engine: &Engine) -> GpuDiagnostics {
    GpuDiagnostics::new(engine.gpu_context().unwrap()).unwrap()
}

/// Losses with every special case of the ranking: ties, -0.0 next to 0.0,
/// negative values, NaN and ±inf, and ignored rows (label -1).
fn special_losses(b: usize, seed: u64) -> (Vec<f32>, Vec<i32>) {
    let mut rng = Rng::new(seed);
    let mut losses: Vec<f32> = (0..b).map(|_| rng.uniform(0.0, 6.0)).collect();
    let mut labels = rng.labels(b, 5);
    for n in (0..b).step_by(11) {
        labels[n] = -1;
    }
    for n in (3..b).step_by(17) {
        losses[n] = f32::NAN;
    }
    for n in (5..b).step_by(29) {
        losses[n] = f32::INFINITY;
    }
    for n in (7..b).step_by(31) {
        losses[n] = f32::NEG_INFINITY;
    }
    for n in (9..b).step_by(13) {
        losses[n] = 4.25; // ties across tiles
    }
    for n in (2..b).step_by(23) {
        losses[n] = if n % 2 == 0 { 0.0 } else { -0.0 };
    }
    for n in (4..b).step_by(37) {
        losses[n] = -rng.uniform(0.0, 1.0);
    }
    // The largest loss sits on an ignored row.
    losses[0] = 100.0;
    (losses, labels)
}

#[test]
fn gpu_top_k_equals_the_cpu_twin() {
    let Some(engine) = gpu() else { return };
    let gpu = diagnostics_for(&engine);
    assert_eq!(gpu.max_top_k(), 1024);
    let check = |losses: &[f32], labels: Option<&[i32]>, ignore: Option<i32>, k: usize, what| {
        let want = top_k(losses, labels, ignore, k).unwrap();
        let got = gpu.top_k_blocking(losses, labels, ignore, k).unwrap();
        assert_eq!(
            exact(&got),
            exact(&want),
            "{what}: k {k}, {} rows",
            losses.len()
        );
        want
    };

    // Random losses, every k shape: 1, not a power of two, the cap.
    let (losses, labels) = special_losses(5000, 1);
    for k in [1, 2, 10, 100, 513, 1000, 1024] {
        for ignore in [None, Some(-1)] {
            let want = check(&losses, Some(&labels), ignore, k, "special");
            assert_eq!(want.len(), k);
            assert_eq!(want[0].row == 0, ignore.is_none(), "the ignored row 0");
        }
    }
    let plain = check(&losses, None, None, 1000, "without labels");
    assert!(plain.iter().all(|r| r.loss.is_finite()));
    // -0.0 and 0.0 tie and go by row; both keep their own sign.
    let small: Vec<f32> = vec![-0.0, 0.0, -0.0, -1.0, 0.0];
    let top = check(&small, None, None, 5, "zeros");
    assert_eq!(
        exact(&top)[..4],
        [(0, 0x8000_0000), (1, 0), (2, 0x8000_0000), (4, 0)]
    );

    // Many ties and all-equal losses: the lowest rows win.
    let ties: Vec<f32> = (0..9000).map(|i| ((i * 7919) % 7) as f32 / 4.0).collect();
    for k in [1, 64, 700, 1024] {
        check(&ties, None, None, k, "ties");
    }
    let equal = vec![1.5f32; 3000];
    let top = check(&equal, None, None, 37, "all equal");
    assert_eq!(
        top.iter().map(|r| r.row).collect::<Vec<_>>(),
        (0..37).collect::<Vec<u64>>()
    );

    // k = B, k > B, nothing ranked, nothing at all.
    let (losses, labels) = special_losses(1000, 2);
    check(&losses, Some(&labels), Some(-1), 1000, "k = B");
    let want = check(&losses, Some(&labels), Some(-1), 1024, "k > B");
    assert!(want.len() < 1000);
    check(&losses[..300], Some(&labels[..300]), Some(-1), 700, "k > B");
    assert!(check(&[f32::NAN; 40], None, None, 5, "all NaN").is_empty());
    assert!(check(&[], None, None, 5, "empty").is_empty());
    assert!(check(&losses, None, None, 0, "k = 0").is_empty());

    // Past 65,535 rows: several merge passes.
    let (losses, labels) = special_losses(100_000, 3);
    for k in [1, 16, 1024] {
        check(&losses, Some(&labels), Some(-1), k, "100,000 rows");
    }

    // Bad input, and k past the cap: an error here, the CPU twin in Scorer.
    assert!(matches!(
        gpu.top_k_blocking(&losses, Some(&labels[..5]), Some(-1), 3),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        gpu.top_k_blocking(&losses, None, None, 1025),
        Err(Error::InvalidArgument(_))
    ));
    let scorer = Scorer::Gpu(Box::new(gpu));
    let want = top_k(&losses, Some(&labels), Some(-1), 5000).unwrap();
    let got = scorer
        .top_k_blocking(&losses, Some(&labels), Some(-1), 5000)
        .unwrap();
    assert_eq!(exact(&got), exact(&want));
}

#[test]
fn chunked_gpu_top_k_equals_one_shot() {
    // 64 KiB bindings: at most 16,384 losses per chunk (4,096 for k = 1024),
    // lists merged on the host.
    let Some(engine) = gpu_with(GpuOptions {
        max_binding_bytes: Some(64 << 10),
        ..Default::default()
    }) else {
        return;
    };
    let gpu = diagnostics_for(&engine);
    assert_eq!(gpu.max_top_k(), 1024);
    let (losses, labels) = special_losses(70_001, 4);
    for k in [1, 50, 1024] {
        let want = top_k(&losses, Some(&labels), Some(-1), k).unwrap();
        let got = gpu
            .top_k_blocking(&losses, Some(&labels), Some(-1), k)
            .unwrap();
        assert_eq!(exact(&got), exact(&want), "k {k}");
    }
    // Ties across chunks go to the lower row.
    let ties: Vec<f32> = (0..50_000).map(|i| ((i * 7919) % 5) as f32).collect();
    for k in [3, 1000] {
        let want = top_k(&ties, None, None, k).unwrap();
        let got = gpu.top_k_blocking(&ties, None, None, k).unwrap();
        assert_eq!(exact(&got), exact(&want), "ties, k {k}");
    }
    // Tiny bindings lower the cap.
    let Some(engine) = gpu_with(GpuOptions {
        max_binding_bytes: Some(1024),
        ..Default::default()
    }) else {
        return;
    };
    let gpu = diagnostics_for(&engine);
    assert_eq!(gpu.max_top_k(), 32);
    let want = top_k(&losses[..5000], None, None, 32).unwrap();
    let got = gpu.top_k_blocking(&losses[..5000], None, None, 32).unwrap();
    assert_eq!(exact(&got), exact(&want));
}

/// Counts equal; sums within 1e-12 relative of the twin's (exactly 0 for an
/// empty class).
fn assert_per_class_close(got: &PerClassLoss, want: &PerClassLoss, what: &str) {
    assert_eq!(got.classes(), want.classes());
    let mut worst = 0.0f64;
    for c in 0..want.classes() {
        assert_eq!(
            (got.count(c), got.nonfinite(c)),
            (want.count(c), want.nonfinite(c)),
            "{what}: class {c}"
        );
        let (g, w) = (got.sum(c), want.sum(c));
        assert!(
            (g - w).abs() <= 1e-12 * w.abs(),
            "{what}: class {c} sum {g:e} vs {w:e} (relative {:e})",
            (g - w).abs() / w.abs()
        );
        if w != 0.0 {
            worst = worst.max((g - w).abs() / w.abs());
        }
    }
    eprintln!("{what}: largest relative error of a class sum {worst:e}");
}

fn per_class_both(
    gpu: &GpuDiagnostics,
    classes: usize,
    losses: &[f32],
    labels: &[i32],
    ignore: Option<i32>,
) -> (PerClassLoss, PerClassLoss) {
    let mut want = PerClassLoss::new(classes);
    want.add_losses(losses, labels, ignore).unwrap();
    let mut got = PerClassLoss::new(classes);
    gpu.per_class_blocking(&mut got, losses, labels, ignore)
        .unwrap();
    (got, want)
}

#[test]
fn gpu_per_class_matches_the_cpu_twin() {
    let Some(engine) = gpu() else { return };
    let gpu = diagnostics_for(&engine);
    assert_eq!(gpu.max_per_class_classes(), (1 << 21) - 1);
    let mut rng = Rng::new(20);

    // Past 65,535 rows, 10 classes, ignored and non-finite rows.
    let b = 100_000;
    let mut losses: Vec<f32> = (0..b).map(|_| rng.uniform(0.0, 8.0)).collect();
    let mut labels = rng.labels(b, 10);
    for n in (0..b).step_by(19) {
        labels[n] = -100;
    }
    for n in (1..b).step_by(97) {
        losses[n] = if n % 2 == 0 { f32::NAN } else { f32::INFINITY };
    }
    for ignore in [Some(-100), None] {
        let labels: Vec<i32> = match ignore {
            Some(_) => labels.clone(),
            None => labels.iter().map(|&y| y.max(0)).collect(),
        };
        let (got, want) = per_class_both(&gpu, 10, &losses, &labels, ignore);
        assert_per_class_close(&got, &want, "10 classes");
        assert!(want.nonfinite(3) > 0);
        // Bit-identical on a second run.
        let (again, _) = per_class_both(&gpu, 10, &losses, &labels, ignore);
        assert_eq!(again, got);
    }

    // Losses spread over many binades, so that float-float rounds.
    let spread: Vec<f32> = (0..b).map(|_| rng.uniform(-20.0, 5.0).exp()).collect();
    let labels3 = rng.labels(b, 3);
    let (got, want) = per_class_both(&gpu, 3, &spread, &labels3, None);
    assert_per_class_close(&got, &want, "spread");

    // Empty classes: labels use 0..10 of 50.
    let (got, want) = per_class_both(&gpu, 50, &losses[..5000], &labels[..5000], Some(-100));
    assert_per_class_close(&got, &want, "empty classes");
    assert_eq!((got.count(49), got.sum(49)), (0, 0.0));

    // One class: every tile is a single run.
    let ones = vec![0; 40_000];
    let (got, want) = per_class_both(&gpu, 1, &losses[..40_000], &ones, None);
    assert_per_class_close(&got, &want, "one class");

    // Many classes, most of them empty or with one row: 100,000, and
    // 300,000 (6 slices a round of 98,304 rows: two rounds).
    for classes in [100_000, 300_000] {
        let labels = rng.labels(b, classes);
        let (got, want) = per_class_both(&gpu, classes, &losses, &labels, None);
        assert_per_class_close(&got, &want, "many classes");
    }

    // Negative and mixed losses still sum in a fixed order.
    let mixed: Vec<f32> = (0..20_000).map(|_| rng.uniform(-3.0, 5.0)).collect();
    let labels = rng.labels(20_000, 7);
    let (got, _) = per_class_both(&gpu, 7, &mixed, &labels, None);
    let (again, _) = per_class_both(&gpu, 7, &mixed, &labels, None);
    assert_eq!(got, again);

    // A bad label is the twin's error, and nothing is added.
    let mut per_class = PerClassLoss::new(10);
    let mut bad = rng.labels(300, 10);
    bad[123] = 10;
    let e = gpu
        .per_class_blocking(&mut per_class, &losses[..300], &bad, None)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::LabelOutOfRange {
                row: 123,
                label: 10,
                classes: 10
            }
        ),
        "{e}"
    );
    assert_eq!(per_class, PerClassLoss::new(10));
    assert!(matches!(
        gpu.per_class_blocking(&mut per_class, &losses[..3], &bad[..2], None),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn chunked_gpu_per_class_and_the_class_limit() {
    // 64 KiB bindings: 16,384 rows per submission, at most 4,096 classes.
    let Some(engine) = gpu_with(GpuOptions {
        max_binding_bytes: Some(64 << 10),
        ..Default::default()
    }) else {
        return;
    };
    let gpu = diagnostics_for(&engine);
    assert_eq!(gpu.max_per_class_classes(), 4096);
    let mut rng = Rng::new(21);
    let losses: Vec<f32> = (0..70_000).map(|_| rng.uniform(0.0, 3.0)).collect();
    let labels = rng.labels(70_000, 4096);
    let (got, want) = per_class_both(&gpu, 4096, &losses, &labels, None);
    assert_per_class_close(&got, &want, "chunked");

    // Past the limit: an error on the GPU, the CPU twin in Scorer.
    let labels = rng.labels(70_000, 5000);
    let mut per_class = PerClassLoss::new(5000);
    assert!(matches!(
        gpu.per_class_blocking(&mut per_class, &losses, &labels, None),
        Err(Error::InvalidArgument(_))
    ));
    let scorer = Scorer::Gpu(Box::new(gpu));
    scorer
        .per_class_blocking(&mut per_class, &losses, &labels, None)
        .unwrap();
    let mut want = PerClassLoss::new(5000);
    want.add_losses(&losses, &labels, None).unwrap();
    assert_eq!(per_class, want);
}

#[test]
fn scores_use_the_soft_capped_logits() {
    let mut rng = Rng::new(22);
    let (b, c) = (400, 7);
    let mut logits = rng.logits(b * c, 30.0);
    let mut labels = rng.labels(b, c);
    logits[0..c].fill(f32::NEG_INFINITY); // all -inf: uniform under the cap
    logits[c..2 * c].copy_from_slice(&[3.0, 1.0, f32::NEG_INFINITY, 0.0, 2.0, 10.0, -2.0]);
    labels[1] = 2;
    logits[2 * c] = f32::NAN;
    logits[3 * c + 1] = f32::INFINITY;
    logits[4 * c..5 * c].copy_from_slice(&[1e4, -1e4, 3e3, 0.0, 1.0, 2.0, 1e4]);
    logits[5 * c..6 * c].copy_from_slice(&[2.0, 8.0, -3.0, 0.0, 1.0, 6.0, 4.0]);
    labels[5] = 1;
    labels[6] = -100;
    let spec = CrossEntropy::new()
        .with_softcap(5.0)
        .with_ignore_index(-100);
    let batch = Batch::with_labels(&logits, c, &labels);
    let want = scores(&spec, &batch).unwrap();

    // p_y = exp(-L) with the loss's own soft-cap (no weights, no smoothing).
    let rows = reference::row_losses(&spec, &batch).unwrap();
    for (n, (s, r)) in want.iter().zip(&rows).enumerate() {
        if labels[n] == -100 || !r.loss.is_finite() {
            continue;
        }
        let p = (-r.loss).exp();
        assert!(
            (s.confidence as f64 - p).abs() <= 1e-6,
            "row {n}: {} vs {p}",
            s.confidence
        );
    }
    assert!((want[0].confidence - 1.0 / c as f32).abs() < 1e-6 && want[0].predicted == 0);
    assert!(want[1].confidence > 0.0 && want[1].confidence < 1e-3);
    assert!(want[2].confidence.is_nan() && want[3].confidence.is_nan());
    // Without the cap the same rows score differently.
    let uncapped = scores(&spec.clone().with_softcap(1e30), &batch).unwrap();
    let plain = scores(&CrossEntropy::new().with_ignore_index(-100), &batch).unwrap();
    assert!(plain[0].confidence.is_nan() && plain[1].confidence == 0.0);
    for n in [5, 10] {
        assert!((uncapped[n].confidence - plain[n].confidence).abs() < 1e-6);
    }
    assert!(plain[5].confidence > 0.8 && want[5].confidence < 0.6);

    let Some(engine) = gpu() else { return };
    let got = diagnostics_for(&engine)
        .scores_blocking(&spec, &batch)
        .unwrap();
    for (n, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!((g.label, g.predicted), (w.label, w.predicted), "row {n}");
        for (a, b) in [(g.confidence, w.confidence), (g.margin, w.margin)] {
            assert!(
                (a.is_nan() && b.is_nan()) || (a - b).abs() <= 2e-6,
                "row {n}: gpu {a} vs cpu {b}"
            );
        }
    }
}

fn update_in_chunks(
    engine: &Engine,
    spec: &CrossEntropy,
    logits: &[f32],
    labels: &[i32],
    c: usize,
    chunk: usize,
    k: usize,
) -> Diagnostics {
    let scorer = Scorer::for_engine(engine).unwrap();
    let mut d = Diagnostics::new(c, k);
    for (i, y) in labels.chunks(chunk).enumerate() {
        let first = i * chunk;
        let batch = Batch::with_labels(&logits[first * c..(first + y.len()) * c], c, y);
        let out = engine.compute_blocking(spec, &batch).unwrap();
        let s = scorer.scores_blocking(spec, &batch).unwrap();
        d.update_with_blocking(&scorer, first as u64, &out, &s, spec.ignore_index)
            .unwrap();
    }
    d
}

#[test]
fn update_with_equals_update_and_does_not_depend_on_the_chunks() {
    let mut rng = Rng::new(23);
    let (b, c) = (6000, 9);
    let logits = rng.logits(b * c, 5.0);
    let mut labels = rng.labels(b, c);
    for n in (0..b).step_by(41) {
        labels[n] = -100;
    }
    let spec = CrossEntropy::new().with_ignore_index(-100);
    let mut engines = vec![Engine::cpu()];
    engines.extend(gpu());
    for engine in &engines {
        // The host path, in one piece.
        let batch = Batch::with_labels(&logits, c, &labels);
        let out = engine.compute_blocking(&spec, &batch).unwrap();
        let s = scores(&spec, &batch).unwrap();
        let mut host = Diagnostics::new(c, 300);
        host.update(0, &out, &s, spec.ignore_index).unwrap();
        let rows = |d: &Diagnostics| {
            d.top()
                .iter()
                .map(|r| (r.row, r.loss.to_bits(), r.item.label))
                .collect::<Vec<_>>()
        };
        for chunk in [b, 1000, 77] {
            let d = update_in_chunks(engine, &spec, &logits, &labels, c, chunk, 300);
            assert_eq!(rows(&d), rows(&host), "chunk {chunk}");
            assert_per_class_close(d.per_class(), host.per_class(), "update_with");
            assert_eq!(d.disagreements(), host.disagreements());
            assert_eq!(d.range().max(), host.range().max());
            assert_eq!(d.stats().count, host.stats().count);
        }
        // k past the GPU cap goes to the CPU twin with the same result.
        let d = update_in_chunks(engine, &spec, &logits, &labels, c, 2500, 2000);
        let mut want = Diagnostics::new(c, 2000);
        want.update(0, &out, &s, spec.ignore_index).unwrap();
        assert_eq!(rows(&d), rows(&want));
    }
}

#[test]
fn diagnostics_reuse_their_buffers() {
    let Some(engine) = gpu() else { return };
    let gpu = diagnostics_for(&engine);
    let mut rng = Rng::new(24);
    let (b, c) = (20_000, 12);
    let logits = rng.logits(b * c, 4.0);
    let labels = rng.labels(b, c);
    let losses: Vec<f32> = (0..b).map(|_| rng.uniform(0.0, 4.0)).collect();
    let spec = CrossEntropy::new();
    let mut range = LossRange::new();
    range.add_losses(&losses, None, None);
    let all = |rows: usize| {
        let batch = Batch::with_labels(&logits[..rows * c], c, &labels[..rows]);
        gpu.scores_blocking(&spec, &batch).unwrap();
        let mut h = Histogram::from_spec(&HistogramSpec::new(30), &range).unwrap();
        gpu.histogram_blocking(&mut h, &losses[..rows], Some(&labels[..rows]), None)
            .unwrap();
        gpu.top_k_blocking(&losses[..rows], None, None, 100)
            .unwrap();
        let mut per_class = PerClassLoss::new(c);
        gpu.per_class_blocking(&mut per_class, &losses[..rows], &labels[..rows], None)
            .unwrap();
    };
    all(b);
    let (created, bytes) = (gpu.buffers_created(), gpu.pool_bytes());
    assert!(created > 0 && bytes > 0);
    for rows in [b, 5000, 1, b] {
        all(rows);
    }
    assert_eq!(
        gpu.buffers_created(),
        created,
        "steady state allocates nothing"
    );
    assert_eq!(gpu.pool_bytes(), bytes);
}
