//! `compute_into`: results written into a caller's `LossOutput`, its
//! vectors reused, on every backend; the same bits as `compute`, whatever
//! the output held before; an empty output after an error.

mod common;

use common::*;
use fused_loss::cpu::fast;
use fused_loss::*;

/// A run of calls of changing shapes and options into one output, each
/// against a fresh `compute`; then a bad label, which empties it.
fn check_engine(engine: &Engine, what: &str) {
    let mut rng = Rng::new(0x0b0f);
    let mut out = engine
        .compute_blocking(
            &CrossEntropy::new(),
            &Batch::with_labels(&[0.0; 4], 2, &[0, 1]),
        )
        .unwrap();
    let calls: [(usize, usize, CrossEntropy); 6] = [
        (
            300,
            40,
            CrossEntropy::new().with_gradient(true).with_row_lse(true),
        ),
        (300, 40, CrossEntropy::new().with_gradient(true)),
        (17, 1000, CrossEntropy::new().with_row_lse(true)),
        (700, 12, CrossEntropy::new().with_gradient(true)),
        (3, 5, CrossEntropy::new().with_reduction(Reduction::Sum)),
        (
            700,
            12,
            CrossEntropy::new()
                .with_gradient(true)
                .with_label_smoothing(0.1),
        ),
    ];
    for (i, (b, c, spec)) in calls.iter().enumerate() {
        let what = format!("{what} call {i} ({b}x{c})");
        let logits = rng.logits(b * c, 6.0);
        let labels: Vec<i32> = rng
            .labels(*b, *c)
            .into_iter()
            .enumerate()
            .map(|(n, y)| if n % 7 == 3 { -100 } else { y })
            .collect();
        let batch = Batch::with_labels(&logits, *c, &labels);
        let spec = spec.clone().with_ignore_index(-100);
        let want = engine.compute_blocking(&spec, &batch).unwrap();
        engine
            .compute_into_blocking(&spec, &batch, &mut out)
            .unwrap();
        assert_same_bits(&out, &want, &what);
    }
    let logits = [0.5f32; 6];
    let bad = Batch::with_labels(&logits, 3, &[0, 7]);
    let spec = CrossEntropy::new().with_gradient(true);
    let err = engine
        .compute_into_blocking(&spec, &bad, &mut out)
        .unwrap_err();
    assert!(
        matches!(err, Error::LabelOutOfRange { .. }),
        "{what}: {err}"
    );
    assert!(
        out.per_example.is_empty(),
        "{what}: losses left after an error"
    );
    assert!(out.gradient.is_none() && out.row_lse.is_none(), "{what}");
    assert_eq!(out.stats, LossStats::default(), "{what}");
}

#[test]
fn cpu_into_matches_compute() {
    check_engine(&Engine::cpu(), "cpu");
}

#[test]
fn reference_into_matches_compute() {
    check_engine(&Engine::reference(), "reference");
}

#[test]
fn gpu_into_matches_compute() {
    let Some(engine) = gpu() else { return };
    check_engine(&engine, "gpu");
}

/// Calls of one shape write into the same memory: the vectors are not
/// reallocated (the fast CPU path and the GPU), and `fast::cross_entropy_into`
/// does the same.
#[test]
fn one_shape_keeps_its_memory() {
    let mut rng = Rng::new(0x0b10);
    let (b, c) = (256, 300);
    let logits = rng.logits(b * c, 4.0);
    let labels = rng.labels(b, c);
    let batch = Batch::with_labels(&logits, c, &labels);
    let spec = CrossEntropy::new().with_gradient(true).with_row_lse(true);
    let mut engines = vec![("cpu", Engine::cpu())];
    if let Some(engine) = gpu() {
        engines.push(("gpu", engine));
    }
    for (what, engine) in &engines {
        let mut out = engine.compute_blocking(&spec, &batch).unwrap();
        let at = |out: &LossOutput| {
            (
                out.per_example.as_ptr(),
                out.gradient.as_ref().unwrap().as_ptr(),
                out.row_lse.as_ref().unwrap().as_ptr(),
            )
        };
        let first = at(&out);
        for _ in 0..3 {
            engine
                .compute_into_blocking(&spec, &batch, &mut out)
                .unwrap();
            assert_eq!(at(&out), first, "{what}");
        }
        assert_eq!(out.gradient.as_ref().unwrap().len(), b * c, "{what}");
    }
    let mut out = fast::cross_entropy(&spec, &batch).unwrap();
    let first = out.gradient.as_ref().unwrap().as_ptr();
    let want = fast::cross_entropy(&spec, &batch).unwrap();
    fast::cross_entropy_into(&spec, &batch, &mut out).unwrap();
    assert_eq!(out.gradient.as_ref().unwrap().as_ptr(), first);
    assert_same_bits(&out, &want, "fast::cross_entropy_into");
}
