//! Every bad input of DESIGN §2 gets a typed error on every backend.

mod common;

use common::*;
use fused_loss::*;

fn engines() -> Vec<Engine> {
    let mut engines = vec![Engine::cpu(), Engine::reference()];
    engines.extend(gpu());
    engines
}

fn expect_err(spec: &CrossEntropy, batch: &Batch<'_>, check: impl Fn(&Error) -> bool) {
    for engine in engines() {
        match engine.compute_blocking(spec, batch) {
            Ok(out) => panic!(
                "{:?}: expected an error, got {:?}",
                engine.backend(),
                out.stats
            ),
            Err(e) => {
                assert!(check(&e), "{:?}: unexpected error {e:?}", engine.backend());
                let message = e.to_string();
                assert!(
                    !message.ends_with('.'),
                    "message ends with a period: {message}"
                );
                assert_eq!(
                    message.chars().next().map(|c| c.is_lowercase()),
                    Some(true),
                    "message is not lowercase: {message}"
                );
            }
        }
    }
}

const LOGITS: [f32; 12] = [0.1, 0.2, 0.3, 1.0, 2.0, 3.0, -1.0, 0.0, 1.0, 5.0, 4.0, 3.0];

#[test]
fn shape_mismatches() {
    let spec = CrossEntropy::new();
    let labels = [0, 1, 2, 0];
    let mut batch = Batch::with_labels(&LOGITS[..11], 3, &labels);
    expect_err(&spec, &batch, |e| {
        matches!(
            e,
            Error::ShapeMismatch {
                what: "logits",
                expected: 12,
                actual: 11
            }
        )
    });
    batch = Batch::with_labels(&LOGITS, 3, &labels[..3]);
    batch.batch = 4;
    expect_err(&spec, &batch, |e| {
        matches!(e, Error::ShapeMismatch { what: "labels", .. })
    });
    let dense = [0.0f32; 9];
    let mut dense_batch = Batch::with_dense(&LOGITS, 3, &dense);
    dense_batch.batch = 4;
    expect_err(&spec, &dense_batch, |e| {
        matches!(
            e,
            Error::ShapeMismatch {
                what: "targets",
                ..
            }
        )
    });
    let weights = [1.0f32; 3];
    let batch = Batch::with_labels(&LOGITS, 3, &labels).sample_weights(&weights);
    expect_err(&spec, &batch, |e| {
        matches!(
            e,
            Error::ShapeMismatch {
                what: "sample weights",
                ..
            }
        )
    });
    let batch = Batch::with_labels(&LOGITS, 3, &labels);
    let spec = CrossEntropy::new().with_class_weights(vec![1.0; 4]);
    expect_err(&spec, &batch, |e| {
        matches!(
            e,
            Error::ShapeMismatch {
                what: "class weights",
                ..
            }
        )
    });
    let batch = Batch::with_labels(&[], 0, &[]);
    expect_err(&CrossEntropy::new(), &batch, |e| {
        matches!(e, Error::NoClasses)
    });
}

#[test]
fn labels_out_of_range_name_the_first_row() {
    let spec = CrossEntropy::new();
    let labels = [0, 2, 3, -1];
    expect_err(&spec, &Batch::with_labels(&LOGITS, 3, &labels), |e| {
        matches!(
            e,
            Error::LabelOutOfRange {
                row: 2,
                label: 3,
                classes: 3
            }
        )
    });
    let labels = [0, -7, 1, 1];
    expect_err(&spec, &Batch::with_labels(&LOGITS, 3, &labels), |e| {
        matches!(
            e,
            Error::LabelOutOfRange {
                row: 1,
                label: -7,
                classes: 3
            }
        )
    });
    // The ignore index itself is not out of range, but other values still are.
    let spec = CrossEntropy::new().with_ignore_index(-100);
    let labels = [-100, -100, 5, 0];
    expect_err(&spec, &Batch::with_labels(&LOGITS, 3, &labels), |e| {
        matches!(
            e,
            Error::LabelOutOfRange {
                row: 2,
                label: 5,
                ..
            }
        )
    });
}

#[test]
fn bad_label_is_found_among_many_rows_and_chunks() {
    let Some(engine) = gpu_with(GpuOptions {
        max_binding_bytes: Some(4096),
        ..Default::default()
    }) else {
        return;
    };
    let mut rng = Rng::new(1);
    let (b, c) = (1000, 30);
    let logits = rng.logits(b * c, 2.0);
    let mut labels = rng.labels(b, c);
    labels[777] = 30;
    labels[999] = -2;
    match engine.compute_blocking(
        &CrossEntropy::new(),
        &Batch::with_labels(&logits, c, &labels),
    ) {
        Err(Error::LabelOutOfRange {
            row: 777,
            label: 30,
            classes: 30,
        }) => {}
        other => panic!("expected row 777, got {other:?}"),
    }
}

#[test]
fn invalid_weights() {
    let labels = [0, 1, 2, 0];
    let batch = Batch::with_labels(&LOGITS, 3, &labels);
    for bad in [-1.0, f32::NAN] {
        let spec = CrossEntropy::new().with_class_weights(vec![1.0, bad, 1.0]);
        expect_err(&spec, &batch, |e| {
            matches!(
                e,
                Error::InvalidWeight {
                    what: "class weight",
                    index: 1,
                    ..
                }
            )
        });
        let weights = [1.0, 1.0, 1.0, bad];
        let weighted = batch.sample_weights(&weights);
        expect_err(&CrossEntropy::new(), &weighted, |e| {
            matches!(
                e,
                Error::InvalidWeight {
                    what: "sample weight",
                    index: 3,
                    ..
                }
            )
        });
    }
}

#[test]
fn invalid_label_smoothing() {
    let labels = [0, 1, 2, 0];
    let batch = Batch::with_labels(&LOGITS, 3, &labels);
    for eps in [-0.1, 1.5, f32::NAN] {
        let spec = CrossEntropy::new().with_label_smoothing(eps);
        expect_err(&spec, &batch, |e| {
            matches!(e, Error::InvalidLabelSmoothing(_))
        });
    }
}

#[test]
fn ignore_index_with_dense_targets() {
    let dense = [0.25f32; 12];
    let spec = CrossEntropy::new().with_ignore_index(-100);
    expect_err(&spec, &Batch::with_dense(&LOGITS, 3, &dense), |e| {
        matches!(e, Error::IgnoreIndexWithDenseTargets)
    });
}

/// A row longer than one storage binding holds is `RowTooLarge`, with the
/// most classes a binding takes.
#[test]
fn row_too_large_for_the_device() {
    let Some(engine) = gpu_with(GpuOptions {
        max_binding_bytes: Some(1 << 20),
        ..Default::default()
    }) else {
        return;
    };
    let classes = 300_000;
    let logits = vec![0.0f32; classes];
    let labels = [0];
    match engine.compute_blocking(
        &CrossEntropy::new(),
        &Batch::with_labels(&logits, classes, &labels),
    ) {
        Err(Error::RowTooLarge {
            classes: 300_000,
            max_classes,
        }) => assert_eq!(max_classes, (1 << 20) / 4),
        other => panic!("expected RowTooLarge, got {other:?}"),
    }
}

/// Each size in `sizes` is refused when the context is built, with the
/// kernel's name and the rule in the message.
fn assert_workgroup_sizes_refused(
    options: impl Fn(u32) -> GpuOptions,
    sizes: &[u32],
    kernel: &str,
) {
    for &size in sizes {
        match GpuContext::new_blocking(options(size)) {
            Err(Error::InvalidArgument(message)) => assert!(
                message.contains(&format!("{kernel} workgroup size"))
                    && message.contains("power of two"),
                "{message}"
            ),
            other => panic!("size {size}: expected InvalidArgument, got {other:?}"),
        }
    }
}

/// A subgroup workgroup size the kernel cannot take is refused when the
/// context is built, with the limits in the message.
#[test]
fn bad_subgroup_workgroup_size() {
    let Some(engine) = gpu() else { return };
    if !engine.gpu_context().unwrap().has_subgroups() {
        return;
    }
    assert_workgroup_sizes_refused(
        |size| GpuOptions {
            subgroup_workgroup_size: Some(size),
            ..Default::default()
        },
        &[0, 16, 48, 2048],
        "subgroup",
    );
}

/// So is a narrow workgroup size the kernel cannot take, on any adapter.
#[test]
fn bad_narrow_workgroup_size() {
    if gpu().is_none() {
        return;
    }
    assert_workgroup_sizes_refused(
        |size| GpuOptions {
            narrow_workgroup_size: Some(size),
            ..Default::default()
        },
        &[0, 16, 96, 2048],
        "narrow",
    );
}

/// And a wide workgroup size.
#[test]
fn bad_wide_workgroup_size() {
    if gpu().is_none() {
        return;
    }
    assert_workgroup_sizes_refused(
        |size| GpuOptions {
            wide_workgroup_size: Some(size),
            ..Default::default()
        },
        &[0, 1, 48, 4096],
        "wide",
    );
}
