//! The gradient with respect to the logits, z-loss and soft-capping: GPU
//! against the f64 reference, the reference against finite differences, and
//! in-place against out-of-place.
//!
//! Gradient tolerance, per element of row n:
//! `|Δ| ≤ 1e-5·(Σ_c|a_c| + 2·s_n·z·|lse_n|)·(1 + |lse_n|)/D + 1e-9`, where D is
//! the reduction's denominator.

mod common;

use common::*;
use fused_loss::cpu::reference;
use fused_loss::*;

fn assert_gradient_matches(spec: &CrossEntropy, batch: &Batch<'_>, got: &LossOutput, what: &str) {
    let g = got.gradient.as_ref().expect("gpu gradient");
    assert_gradient_close(spec, batch, g, |_, _| 0.0, what);
    if spec.row_lse {
        assert_row_lse_close(spec, batch, got.row_lse.as_ref().unwrap(), what);
    }
}

struct Data {
    logits: Vec<f32>,
    labels: Vec<i32>,
    ignored: Vec<i32>,
    dense: Vec<f32>,
    weights: Vec<f32>,
}

fn data(rng: &mut Rng, b: usize, c: usize) -> Data {
    let labels = rng.labels(b, c);
    let ignored = labels
        .iter()
        .enumerate()
        .map(|(n, &y)| if n % 3 == 1 { -100 } else { y })
        .collect();
    Data {
        logits: rng.logits(b * c, 6.0),
        labels,
        ignored,
        dense: rng.distributions(b, c),
        weights: (0..b)
            .map(|n| {
                if n % 5 == 4 {
                    0.0
                } else {
                    rng.uniform(0.2, 2.0)
                }
            })
            .collect(),
    }
}

#[test]
fn gradient_matches_reference_for_every_reduction_and_option() {
    let engines: Vec<Engine> = gpu_variants();
    if engines.is_empty() {
        return;
    }
    let mut rng = Rng::new(42);
    for &(b, c) in &[(1usize, 1usize), (11, 5), (9, 300)] {
        let d = data(&mut rng, b, c);
        let class_weights: Vec<f32> = (0..c).map(|k| 0.5 + (k % 3) as f32 * 0.75).collect();
        for targets in 0..3 {
            for (z_loss, softcap) in [
                (0.0f32, None),
                (1e-3, None),
                (0.0, Some(5.0f32)),
                (0.01, Some(3.0)),
            ] {
                for weighted in [false, true] {
                    for reduction in Reduction::ALL {
                        let mut spec = CrossEntropy::new()
                            .with_gradient(true)
                            .with_row_lse(true)
                            .with_reduction(reduction)
                            .with_z_loss(z_loss)
                            .with_label_smoothing(if weighted { 0.1 } else { 0.0 });
                        if let Some(cap) = softcap {
                            spec = spec.with_softcap(cap);
                        }
                        let mut batch = match targets {
                            0 => Batch::with_labels(&d.logits, c, &d.labels),
                            1 => {
                                spec = spec.with_ignore_index(-100);
                                Batch::with_labels(&d.logits, c, &d.ignored)
                            }
                            _ => Batch::with_dense(&d.logits, c, &d.dense),
                        };
                        if weighted {
                            spec = spec.with_class_weights(class_weights.clone());
                            batch = batch.sample_weights(&d.weights);
                        }
                        let what = format!(
                            "{b}x{c} targets={targets} z={z_loss} cap={softcap:?} weighted={weighted} {reduction}"
                        );
                        for engine in &engines {
                            let out = engine.compute_blocking(&spec, &batch).unwrap();
                            assert_matches_reference(&spec, &batch, &out.per_example);
                            assert_gradient_matches(&spec, &batch, &out, &what);
                        }
                    }
                }
            }
        }
    }
}

/// The reduced loss in f64, for finite differences.
fn reduced(spec: &CrossEntropy, batch: &Batch<'_>) -> f64 {
    reference::compute(spec, batch).unwrap().loss
}

#[test]
fn reference_gradient_matches_finite_differences() {
    let mut rng = Rng::new(9);
    let (b, c) = (4, 6);
    let d = data(&mut rng, b, c);
    let specs = [
        CrossEntropy::new(),
        CrossEntropy::new()
            .with_reduction(Reduction::Sum)
            .with_label_smoothing(0.2),
        CrossEntropy::new()
            .with_class_weights(vec![0.5, 1.0, 2.0, 0.0, 1.5, 1.0])
            .with_z_loss(0.05)
            .with_softcap(4.0),
        CrossEntropy::new()
            .with_reduction(Reduction::SumByNonzeroWeights)
            .with_softcap(2.0),
    ];
    for (i, spec) in specs.iter().enumerate() {
        let spec = spec.clone().with_gradient(true);
        for dense in [false, true] {
            let mut logits = d.logits.clone();
            let make = |l: &[f32]| -> f64 {
                let batch = if dense {
                    Batch::with_dense(l, c, &d.dense)
                } else {
                    Batch::with_labels(l, c, &d.labels)
                };
                reduced(&spec, &batch.sample_weights(&d.weights))
            };
            let batch = if dense {
                Batch::with_dense(&d.logits, c, &d.dense)
            } else {
                Batch::with_labels(&d.logits, c, &d.labels)
            };
            let analytic = reference::compute(&spec, &batch.sample_weights(&d.weights))
                .unwrap()
                .gradient
                .unwrap();
            for k in 0..b * c {
                let x = logits[k];
                let h = 1e-2f32;
                logits[k] = x + h;
                let up = make(&logits);
                let hi = logits[k] as f64;
                logits[k] = x - h;
                let down = make(&logits);
                let lo = logits[k] as f64;
                logits[k] = x;
                let numeric = (up - down) / (hi - lo);
                let a = analytic[k] as f64;
                assert!(
                    (numeric - a).abs() <= 2e-4 * (1.0 + a.abs()),
                    "spec {i} dense={dense} element {k}: analytic {a}, finite difference {numeric}"
                );
            }
        }
    }
}

#[test]
fn gpu_gradient_matches_finite_differences() {
    let Some(engine) = gpu() else { return };
    let mut rng = Rng::new(10);
    let (b, c) = (3, 70);
    let logits = rng.logits(b * c, 3.0);
    let labels = rng.labels(b, c);
    let spec = CrossEntropy::new()
        .with_z_loss(0.01)
        .with_softcap(5.0)
        .with_label_smoothing(0.1);
    let out = engine
        .compute_blocking(
            &spec.clone().with_gradient(true),
            &Batch::with_labels(&logits, c, &labels),
        )
        .unwrap();
    let gradient = out.gradient.unwrap();
    let mut x = logits.clone();
    for k in (0..b * c).step_by(7) {
        let h = 1e-2f32;
        let v = x[k];
        x[k] = v + h;
        let up = reduced(&spec, &Batch::with_labels(&x, c, &labels));
        let hi = x[k] as f64;
        x[k] = v - h;
        let down = reduced(&spec, &Batch::with_labels(&x, c, &labels));
        let lo = x[k] as f64;
        x[k] = v;
        let numeric = (up - down) / (hi - lo);
        let g = gradient[k] as f64;
        assert!(
            (numeric - g).abs() <= 1e-4 * (1.0 + g.abs()),
            "element {k}: gpu {g}, finite difference {numeric}"
        );
    }
}

#[test]
fn in_place_gradient_is_identical_to_out_of_place() {
    let Some(out_of_place) = gpu() else { return };
    let Some(in_place) = gpu_with(GpuOptions {
        gradient_in_place: true,
        ..Default::default()
    }) else {
        return;
    };
    let mut rng = Rng::new(12);
    for (b, c) in [(300, 10), (40, 1000)] {
        let d = data(&mut rng, b, c);
        let spec = CrossEntropy::new()
            .with_gradient(true)
            .with_z_loss(1e-4)
            .with_label_smoothing(0.05);
        let batch = Batch::with_labels(&d.logits, c, &d.labels).sample_weights(&d.weights);
        let a = out_of_place.compute_blocking(&spec, &batch).unwrap();
        let b_ = in_place.compute_blocking(&spec, &batch).unwrap();
        let bits = |o: &LossOutput| {
            o.gradient
                .as_ref()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&a), bits(&b_));
        assert_eq!(a.stats, b_.stats);
        // The next call uploads fresh logits over the overwritten ones.
        let again = in_place.compute_blocking(&spec, &batch).unwrap();
        assert_eq!(again.per_example, a.per_example);
        assert_eq!(bits(&again), bits(&a));
    }
}

#[test]
fn gradient_is_chunked_like_the_logits() {
    let Some(engine) = gpu_with(GpuOptions {
        max_binding_bytes: Some(4096),
        ..Default::default()
    }) else {
        return;
    };
    let mut rng = Rng::new(13);
    let (b, c) = (1000, 70);
    let d = data(&mut rng, b, c);
    let spec = CrossEntropy::new().with_gradient(true).with_row_lse(true);
    let batch = Batch::with_labels(&d.logits, c, &d.labels);
    let out = engine.compute_blocking(&spec, &batch).unwrap();
    assert_gradient_matches(&spec, &batch, &out, "chunked");
}

#[test]
fn logits_only_options_are_rejected_for_probabilities() {
    let p = [0.25f32, 0.75];
    let batch = Batch::with_labels(&p, 2, &[0]);
    let base = CrossEntropy::new().with_input(InputKind::Probabilities);
    let mut engines = vec![Engine::cpu(), Engine::reference()];
    engines.extend(gpu());
    for engine in &engines {
        let r = engine.compute_blocking(&base.clone().with_gradient(true), &batch);
        assert!(matches!(r, Err(Error::GradientOfProbabilities)), "{r:?}");
        let r = engine.compute_blocking(&base.clone().with_softcap(3.0), &batch);
        assert!(
            matches!(r, Err(Error::LogitsOnly { option: "softcap" })),
            "{r:?}"
        );
        let r = engine.compute_blocking(&base.clone().with_z_loss(0.1), &batch);
        assert!(
            matches!(r, Err(Error::LogitsOnly { option: "z-loss" })),
            "{r:?}"
        );
        let logits = [0.0f32, 1.0];
        let batch = Batch::with_labels(&logits, 2, &[0]);
        for bad in [-1.0, f32::NAN, f32::INFINITY] {
            let r = engine.compute_blocking(&CrossEntropy::new().with_z_loss(bad), &batch);
            assert!(
                matches!(
                    r,
                    Err(Error::InvalidOption {
                        option: "z-loss",
                        ..
                    })
                ),
                "{r:?}"
            );
        }
        for bad in [0.0, -2.0, f32::NAN] {
            let r = engine.compute_blocking(&CrossEntropy::new().with_softcap(bad), &batch);
            assert!(
                matches!(
                    r,
                    Err(Error::InvalidOption {
                        option: "softcap",
                        ..
                    })
                ),
                "{r:?}"
            );
        }
    }
}
