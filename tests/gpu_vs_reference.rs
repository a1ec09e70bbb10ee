//! Every option and reduction on the GPU against the f64 reference.
//!
//! Tolerances (documented in the README):
//! - per-example: `|Δ| ≤ 1e-5·(1 + |L_n| + Σ_c|a_c|·max_c|x_{n,c}|)`;
//! - `sum`: within 1e-12 relative of the exact sum of the returned f32 losses;
//! - `weight_sum`, `sample_weight_sum`: within 1e-7 relative of the f64 reference
//!   (exact where the adapter's `fma` is fused);
//! - counts: exact.

mod common;

use common::*;
use fused_loss::cpu::reference;
use fused_loss::*;

#[derive(Clone, Copy, Debug)]
enum TargetKind {
    Labels,
    LabelsIgnored,
    OneHot,
    Soft,
}

struct Case {
    logits: Vec<f32>,
    labels: Vec<i32>,
    dense: Vec<f32>,
    sample_weights: Vec<f32>,
    batch: usize,
    classes: usize,
}

impl Case {
    fn new(rng: &mut Rng, batch: usize, classes: usize, probabilities: bool) -> Case {
        let logits = if probabilities {
            rng.distributions(batch, classes)
        } else {
            rng.logits(batch * classes, 8.0)
        };
        let labels = rng.labels(batch, classes);
        let dense = rng.distributions(batch, classes);
        let sample_weights = rng.sample_weights(batch);
        Case {
            logits,
            labels,
            dense,
            sample_weights,
            batch,
            classes,
        }
    }
}

fn one_hot(labels: &[i32], classes: usize) -> Vec<f32> {
    let mut out = vec![0.0; labels.len() * classes];
    for (n, &y) in labels.iter().enumerate() {
        out[n * classes + y as usize] = 1.0;
    }
    out
}

/// Runs one configuration on the GPU and checks everything against the reference.
fn check(engine: &Engine, spec: &CrossEntropy, batch: &Batch<'_>, what: &str) {
    let gpu = engine
        .compute_blocking(spec, batch)
        .unwrap_or_else(|e| panic!("{what}: gpu failed: {e}"));
    let cpu = reference::compute(spec, batch).unwrap();
    assert_eq!(gpu.backend, Backend::Gpu);
    let context =
        std::panic::AssertUnwindSafe(|| assert_matches_reference(spec, batch, &gpu.per_example));
    if let Err(panic) = std::panic::catch_unwind(context) {
        eprintln!(
            "failed case: {what} on {:?}",
            engine.gpu_context().map(|c| c.kernel())
        );
        std::panic::resume_unwind(panic);
    }
    assert_rel(
        gpu.stats.sum,
        exact_sum(&gpu.per_example),
        1e-12,
        &format!("{what}: sum"),
    );
    assert_rel(
        gpu.stats.weight_sum,
        cpu.stats.weight_sum,
        1e-7,
        &format!("{what}: weight_sum"),
    );
    assert_rel(
        gpu.stats.sample_weight_sum,
        cpu.stats.sample_weight_sum,
        1e-7,
        &format!("{what}: sample_weight_sum"),
    );
    assert_eq!(gpu.stats.count, cpu.stats.count, "{what}: count");
    assert_eq!(
        gpu.stats.nonzero_count, cpu.stats.nonzero_count,
        "{what}: nonzero_count"
    );
    assert_eq!(gpu.stats.batch, cpu.stats.batch, "{what}: batch");
    assert_eq!(
        gpu.stats.nonfinite_rows, cpu.stats.nonfinite_rows,
        "{what}: nonfinite_rows"
    );
    // The reduced values follow from the stats on both sides.
    let scale = 1e-5 * (1.0 + cpu.stats.sum.abs());
    let denominator_rel =
        |a: f64, b: f64| ((a - b).abs() <= 1e-5 * (1.0 + b.abs())) || same_special(a, b);
    assert!(
        (gpu.stats.sum - cpu.stats.sum).abs() <= scale * 10.0
            || same_special(gpu.stats.sum, cpu.stats.sum),
        "{what}: sum {} vs reference {}",
        gpu.stats.sum,
        cpu.stats.sum
    );
    assert!(
        denominator_rel(gpu.loss, cpu.loss),
        "{what}: loss {} vs {}",
        gpu.loss,
        cpu.loss
    );
    assert!(
        denominator_rel(gpu.average_loss, cpu.average_loss),
        "{what}: average_loss {} vs {}",
        gpu.average_loss,
        cpu.average_loss
    );
    assert_eq!(gpu.reduction, spec.reduction);
    assert_eq!(
        gpu.loss.to_bits(),
        gpu.stats.reduce(spec.reduction).to_bits()
    );
}

#[test]
fn every_option_and_reduction_matches_reference() {
    let engines = gpu_variants();
    let mut rng = Rng::new(7);
    let mut runs = 0;
    for &(batch, classes) in &[(1usize, 1usize), (9, 3), (40, 130), (6, 1001), (7, 260)] {
        for probabilities in [false, true] {
            let case = Case::new(&mut rng, batch, classes, probabilities);
            let class_weights: Vec<f32> = (0..classes)
                .map(|c| {
                    if c % 5 == 2 {
                        0.0
                    } else {
                        0.25 + (c % 4) as f32 * 0.5
                    }
                })
                .collect();
            let mut ignored_labels = case.labels.clone();
            for (n, y) in ignored_labels.iter_mut().enumerate() {
                if n % 4 == 1 {
                    *y = -100;
                }
            }
            let hot = one_hot(&case.labels, classes);
            for kind in [
                TargetKind::Labels,
                TargetKind::LabelsIgnored,
                TargetKind::OneHot,
                TargetKind::Soft,
            ] {
                for with_class_weights in [false, true] {
                    for with_sample_weights in [false, true] {
                        for smoothing in [0.0f32, 0.1, 1.0] {
                            let targets = match kind {
                                TargetKind::Labels => Targets::Labels(&case.labels),
                                TargetKind::LabelsIgnored => Targets::Labels(&ignored_labels),
                                TargetKind::OneHot => Targets::Dense(&hot),
                                TargetKind::Soft => Targets::Dense(&case.dense),
                            };
                            let batch = Batch {
                                logits: &case.logits,
                                batch: case.batch,
                                classes: case.classes,
                                targets,
                                sample_weights: with_sample_weights
                                    .then_some(&case.sample_weights[..]),
                            };
                            let mut spec = CrossEntropy::new().with_label_smoothing(smoothing);
                            if probabilities {
                                spec = spec.with_input(InputKind::Probabilities);
                            }
                            if with_class_weights {
                                spec = spec.with_class_weights(class_weights.clone());
                            }
                            if matches!(kind, TargetKind::LabelsIgnored) {
                                spec = spec.with_ignore_index(-100);
                            }
                            for reduction in Reduction::ALL {
                                let spec = spec.clone().with_reduction(reduction);
                                let what = format!(
                                    "{batch_n}x{classes} probs={probabilities} {kind:?} cw={with_class_weights} \
                                     sw={with_sample_weights} eps={smoothing} {reduction}",
                                    batch_n = case.batch
                                );
                                for engine in &engines {
                                    check(engine, &spec, &batch, &what);
                                }
                                runs += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(runs, 5 * 2 * 4 * 2 * 2 * 3 * 5);
}

#[test]
fn extreme_logits_match_reference() {
    for engine in gpu_variants() {
        let classes = 7;
        let ninf = f32::NEG_INFINITY;
        let rows: Vec<[f32; 7]> = vec![
            [1e4, -1e4, 1e4, 0.0, -1e4, 5e3, 1e4],
            [-1e4, -1e4, -1e4, -1e4, -1e4, -1e4, -1e4],
            [3.0; 7],
            [0.0, 0.0, 0.0, 88.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 1e30, 0.0, 0.0, 0.0],
            [ninf, 2.0, ninf, 1.0, 0.5, ninf, ninf],
            [ninf, 2.0, 3.0, ninf, ninf, ninf, ninf],
            [-87.0, -88.0, -104.0, -1e4, -3e4, -1e5, -150.0],
        ];
        let logits: Vec<f32> = rows.iter().flatten().copied().collect();
        let batch_rows = rows.len();
        // Labels chosen to hit the huge logit, a masked class and plain classes.
        let labels: Vec<i32> = vec![0, 3, 6, 3, 0, 1, 2, 5];
        for smoothing in [0.0, 0.2] {
            for with_weights in [false, true] {
                let mut spec = CrossEntropy::new()
                    .with_label_smoothing(smoothing)
                    .with_reduction(Reduction::Sum);
                if with_weights {
                    // Zero weight on the masked classes keeps smoothing finite.
                    spec = spec.with_class_weights(vec![0.0, 1.0, 2.0, 0.5, 1.0, 0.0, 0.0]);
                }
                let batch = Batch::with_labels(&logits, classes, &labels);
                assert_eq!(batch.batch, batch_rows);
                check(
                    &engine,
                    &spec,
                    &batch,
                    &format!("extreme eps={smoothing} weights={with_weights}"),
                );
            }
        }
    }
}

#[test]
fn non_finite_rows_propagate_and_are_counted() {
    // 4 and 12 classes take the vec4 loads of the subgroup kernel; on a
    // CPU-type adapter 36 classes take the lane rows' sixteen-a-trip loop
    // and 2,052 classes the lane runs.
    for (engine, classes) in gpu_variants().into_iter().flat_map(|e| {
        let e = std::rc::Rc::new(e);
        [3usize, 4, 12, 36, 2052].map(|c| (std::rc::Rc::clone(&e), c))
    }) {
        let nan = f32::NAN;
        let inf = f32::INFINITY;
        let ninf = f32::NEG_INFINITY;
        let rows = [
            ([0.0, 1.0, 2.0], 0.5),
            ([nan, 1.0, 2.0], 0.5),
            ([0.0, inf, 2.0], 0.5),
            ([ninf, ninf, ninf], ninf),
            ([nan, nan, nan], nan),  // ignored: counts as 0
            ([ninf, 1.0, 2.0], 0.5), // label on a masked class: +inf
            ([-nan, 1.0, 2.0], 0.5), // a NaN with its sign bit set
            ([0.0, 1.0, 2.0], 0.5),  // +inf in the last class, below
        ];
        let mut logits: Vec<f32> = rows
            .iter()
            .flat_map(|(head, fill)| {
                head.iter()
                    .copied()
                    .chain(std::iter::repeat_n(*fill, classes - 3))
            })
            .collect();
        logits[8 * classes - 1] = inf;
        assert!((-nan).is_sign_negative());
        let labels = vec![0, 1, 1, 0, -1, 0, 1, 0];
        let spec = CrossEntropy::new()
            .with_ignore_index(-1)
            .with_reduction(Reduction::Mean);
        let batch = Batch::with_labels(&logits, classes, &labels);
        check(&engine, &spec, &batch, "non-finite");
        let out = engine.compute_blocking(&spec, &batch).unwrap();
        assert_eq!(out.stats.nonfinite_rows, 6, "{classes} classes");
        for row in [1, 2, 3, 6, 7] {
            assert!(
                out.per_example[row].is_nan(),
                "{classes} classes, row {row}"
            );
        }
        assert_eq!(out.per_example[4], 0.0);
        assert_eq!(out.per_example[5], f32::INFINITY);
        assert!(out.loss.is_nan());

        let strict = spec.clone().with_check_finite(true);
        match engine.compute_blocking(&strict, &batch) {
            Err(Error::NonFiniteLoss { row }) => assert_eq!(row, 1),
            other => panic!("expected NonFiniteLoss, got {other:?}"),
        }
        match reference::compute(&strict, &batch) {
            Err(Error::NonFiniteLoss { row }) => assert_eq!(row, 1),
            other => panic!("expected NonFiniteLoss, got {other:?}"),
        }
    }
}

#[test]
fn empty_batch_gives_zero_loss() {
    let Some(engine) = gpu() else { return };
    let out = engine
        .compute_blocking(
            &CrossEntropy::new(),
            &Batch::<f32>::with_labels(&[], 4, &[]),
        )
        .unwrap();
    assert!(out.per_example.is_empty());
    assert_eq!(out.loss, 0.0);
    assert_eq!(out.average_loss, 0.0);
}

#[test]
fn chunked_and_two_dimensional_dispatch_match_reference() {
    let mut rng = Rng::new(11);
    // Logits cut into chunks of 4 KiB: 10 rows of 100 classes per binding.
    let Some(chunked) = gpu_with(GpuOptions {
        max_binding_bytes: Some(4096),
        ..Default::default()
    }) else {
        return;
    };
    let (b, c) = (1003, 100);
    let logits = rng.logits(b * c, 6.0);
    let labels = rng.labels(b, c);
    let dense = rng.distributions(b, c);
    let weights: Vec<f32> = (0..b).map(|_| rng.uniform(0.0, 2.0)).collect();
    let spec = CrossEntropy::new().with_label_smoothing(0.05);
    check(
        &chunked,
        &spec,
        &Batch::with_labels(&logits, c, &labels).sample_weights(&weights),
        "chunked labels",
    );
    check(
        &chunked,
        &spec,
        &Batch::with_dense(&logits, c, &dense),
        "chunked dense",
    );

    // One row per workgroup and more than 65,535 rows: a 2-D grid and a
    // three-level reduction.
    let Some(one_row) = gpu_with(GpuOptions {
        rows_per_group: Some(1),
        ..Default::default()
    }) else {
        return;
    };
    let (b, c) = (70_001, 3);
    let logits = rng.logits(b * c, 4.0);
    let labels = rng.labels(b, c);
    check(
        &one_row,
        &CrossEntropy::new(),
        &Batch::with_labels(&logits, c, &labels),
        "2-D dispatch",
    );
}

#[test]
fn caller_device_works() {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = match pollster::block_on(instance.request_adapter(&Default::default())) {
        Ok(adapter) => adapter,
        Err(e) if !gpu_required() => {
            eprintln!("skipping GPU test: {e}");
            return;
        }
        Err(e) => panic!("FUSED_LOSS_REQUIRE_GPU=1 but no adapter: {e}"),
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&Default::default())).unwrap();
    let context = pollster::block_on(GpuContext::from_device(
        device,
        queue,
        "caller's device",
        GpuOptions::default(),
    ))
    .unwrap();
    let engine = Engine::from_context(context);
    assert_eq!(engine.adapter(), "caller's device");
    let mut rng = Rng::new(3);
    let logits = rng.logits(50 * 20, 3.0);
    let labels = rng.labels(50, 20);
    check(
        &engine,
        &CrossEntropy::new(),
        &Batch::with_labels(&logits, 20, &labels),
        "caller device",
    );
}

/// The subgroup kernel is the default for wide rows where the adapter has
/// subgroups, and lavapipe (CI's adapter) has them: the variant the other
/// tests force really runs there.
#[test]
fn subgroup_kernel_is_chosen_where_subgroups_exist() {
    let Some(engine) = gpu() else { return };
    let context = engine.gpu_context().expect("a GPU engine");
    if context.adapter().contains("llvmpipe") {
        assert!(context.has_subgroups(), "lavapipe exposes subgroups");
    }
    let expected = if context.has_subgroups() {
        KernelVariant::Subgroup
    } else {
        KernelVariant::Wide
    };
    // On a CPU-type adapter plain f32 rows of a multiple of 4 classes run a
    // row per invocation up to 2,048 (`lane_rows_match_reference`), longer
    // ones cut into runs an invocation each (split_rows.rs).
    let cpu_adapter = context.device().adapter_info().device_type == wgpu::DeviceType::Cpu;
    let lanes = if cpu_adapter {
        KernelVariant::Narrow
    } else {
        expected
    };
    assert_eq!(context.kernel_for(1000), lanes);
    assert_eq!(context.kernel_for(1001), expected);
    assert_eq!(context.kernel_for(2052), lanes);
    assert_eq!(context.kernel_for(2054), expected);
    let smoothed = CrossEntropy::new().with_label_smoothing(0.1);
    assert_eq!(context.kernel_for_spec(&smoothed, 1000), expected);
    assert_eq!(context.kernel_for(10), KernelVariant::Narrow);
    // Any row the narrow kernel takes (up to 256 classes) goes to it by
    // default on a CPU-type adapter, as lane rows do; from 65 classes to
    // the others elsewhere.
    assert_eq!(context.kernel_for(130), lanes);
    assert_eq!(context.kernel_for_spec(&smoothed, 256), lanes);
    assert_eq!(context.kernel_for(257), expected);
}

/// On a CPU-type adapter (lavapipe in CI) plain f32 rows of a multiple of 4
/// classes, up to 2,048, take the narrow kernel with vec4 loads: every
/// width around its limits, extreme rows (a huge logit, −inf masks, a row
/// that rises all the way, so that the max moves every trip), the
/// logit-only options, the weights and the row lse, against the reference.
/// On other adapters the same cases run on the default kernels.
#[test]
fn lane_rows_match_reference() {
    let Some(engine) = gpu() else { return };
    let context = engine.gpu_context().expect("a GPU engine");
    let cpu_adapter = context.device().adapter_info().device_type == wgpu::DeviceType::Cpu;
    let mut rng = Rng::new(5);
    for classes in [4usize, 8, 64, 68, 100, 256, 1000, 2048] {
        let batch = (40_000 / classes).clamp(9, 700);
        let mut logits = rng.logits(batch * classes, 8.0);
        for c in 0..classes {
            logits[c] = if c == classes / 2 {
                1e4
            } else {
                -1e4 + c as f32
            };
            if c % 2 == 1 {
                logits[classes + c] = f32::NEG_INFINITY;
            }
            logits[2 * classes + c] = c as f32 * 0.05;
        }
        let labels = rng.labels(batch, classes);
        let ignored: Vec<i32> = labels
            .iter()
            .enumerate()
            .map(|(n, &y)| if n % 5 == 0 { -100 } else { y })
            .collect();
        let sample_weights = rng.sample_weights(batch);
        for (i, spec) in plain_specs(classes).iter().enumerate() {
            let what = format!("lane rows {batch}x{classes}, spec {i}");
            if cpu_adapter {
                assert_eq!(
                    context.kernel_for_spec(spec, classes),
                    KernelVariant::Narrow,
                    "{what}"
                );
            }
            let batch = match i {
                2 => Batch::with_labels(&logits, classes, &ignored).sample_weights(&sample_weights),
                _ => Batch::with_labels(&logits, classes, &labels),
            };
            check(&engine, spec, &batch, &what);
            if spec.row_lse {
                let out = engine.compute_blocking(spec, &batch).unwrap();
                let lse = out.row_lse.expect("row lse");
                let rows = reference::row_losses(spec, &batch).unwrap();
                for (n, (&got, want)) in lse.iter().zip(&rows).enumerate() {
                    let tolerance = 1e-5 * (1.0 + want.lse.abs());
                    assert!(
                        (got as f64 - want.lse).abs() <= tolerance,
                        "{what}: row {n} lse {got} vs {}",
                        want.lse
                    );
                }
            }
        }
    }
}

/// Kernels built for each call's options (`GpuOptions::specialize_flags`)
/// give the same bits as kernels built for any options: the losses, the
/// reduced sums, the gradient and the row lse, for every option on the
/// narrow, lane-row, subgroup or wide and split-lane kernels.
#[test]
fn specialized_kernels_give_the_same_bits() {
    let engine = |specialize| {
        gpu_with(GpuOptions {
            specialize_flags: Some(specialize),
            ..Default::default()
        })
    };
    let (Some(specialized), Some(any)) = (engine(true), engine(false)) else {
        return;
    };
    let mut rng = Rng::new(17);
    for (batch, classes) in [(301usize, 10usize), (67, 1000), (5, 8192), (40, 333)] {
        let logits = rng.logits(batch * classes, 6.0);
        let labels = rng.labels(batch, classes);
        let ignored: Vec<i32> = labels
            .iter()
            .enumerate()
            .map(|(n, &y)| if n % 4 == 3 { -100 } else { y })
            .collect();
        let dense = rng.distributions(batch, classes);
        let probabilities = rng.distributions(batch, classes);
        let weights = rng.sample_weights(batch);
        let class_weights: Vec<f32> = (0..classes).map(|k| 0.5 + (k % 4) as f32 * 0.25).collect();
        let with_labels = Batch::with_labels(&logits, classes, &labels);
        let with_ignored = Batch::with_labels(&logits, classes, &ignored);
        let cases = [
            (CrossEntropy::new(), with_labels),
            (
                CrossEntropy::new().with_row_lse(true).with_softcap(20.0),
                with_labels,
            ),
            (
                CrossEntropy::new()
                    .with_ignore_index(-100)
                    .with_class_weights(class_weights)
                    .with_z_loss(1e-3)
                    .with_reduction(Reduction::SumByNonzeroWeights),
                with_ignored.sample_weights(&weights),
            ),
            (
                CrossEntropy::new()
                    .with_ignore_index(-100)
                    .with_label_smoothing(0.1)
                    .with_gradient(true)
                    .with_reduction(Reduction::Mean),
                with_ignored,
            ),
            (
                CrossEntropy::new().with_gradient(true),
                Batch::with_dense(&logits, classes, &dense),
            ),
            (
                CrossEntropy::new()
                    .with_input(InputKind::Probabilities)
                    .with_label_smoothing(0.05),
                Batch::with_labels(&probabilities, classes, &labels).sample_weights(&weights),
            ),
        ];
        for (i, (spec, input)) in cases.iter().enumerate() {
            let what = format!("{batch}x{classes} case {i}");
            let a = specialized.compute_blocking(spec, input).unwrap();
            let b = any.compute_blocking(spec, input).unwrap();
            assert_same_bits(&a, &b, &what);
            check(&specialized, spec, input, &what);
        }
    }
}

/// The load-only and exp-floor kernels run in both patterns, at sizes that
/// leave a short last run or a partial workgroup, without misreading their
/// ones.
#[test]
fn load_only_kernel_runs_in_both_patterns() {
    let Some(engine) = gpu() else { return };
    let context = engine.gpu_context().expect("a GPU engine");
    let roofline = Roofline::new(context).unwrap();
    for bytes in [16u64, 4_000, 1 << 20, 3 * (1 << 20) + 48] {
        for pattern in [LoadPattern::Strided, LoadPattern::Runs] {
            roofline
                .load_with(bytes, pattern)
                .unwrap_or_else(|e| panic!("{bytes} bytes, {pattern:?}: {e}"));
            roofline
                .exp_floor_with(bytes, pattern)
                .unwrap_or_else(|e| panic!("exp floor, {bytes} bytes, {pattern:?}: {e}"));
        }
    }
    roofline.load(1 << 20).unwrap();
    roofline.exp_floor(1 << 20).unwrap();
    let runs = context.is_cpu_adapter();
    assert_eq!(roofline.default_pattern() == LoadPattern::Runs, runs);
}
