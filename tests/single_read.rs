//! The single-read gradient (rows that fit workgroup or private memory are
//! read once; a weights pre-pass gives the reduction's denominator) against
//! the two-read path: the same bits for the losses, the stats, the gradient
//! and the row lse, for every reduction, target kind, option, kernel,
//! logits type, in place or not, chunked or not.

mod common;

use common::*;
use fused_loss::*;
use half::{bf16, f16};

fn engines(options: GpuOptions) -> Option<(Engine, Engine)> {
    let once = gpu_with(GpuOptions {
        single_read: Some(true),
        ..options.clone()
    })?;
    let twice = gpu_with(GpuOptions {
        single_read: Some(false),
        ..options
    })?;
    Some((once, twice))
}

fn assert_identical(a: &LossOutput, b: &LossOutput, what: &str) {
    assert!(a.gradient.is_some(), "{what}: no gradient");
    assert_same_bits(a, b, what);
}

struct Case {
    logits: Vec<f32>,
    labels: Vec<i32>,
    ignored: Vec<i32>,
    dense: Vec<f32>,
    weights: Vec<f32>,
}

fn case(rng: &mut Rng, b: usize, c: usize) -> Case {
    let labels = rng.labels(b, c);
    let mut logits = rng.logits(b * c, 6.0);
    if b > 3 {
        logits[2 * c + c / 2] = f32::NAN; // a NaN row
        for x in &mut logits[3 * c..4 * c] {
            *x = f32::NEG_INFINITY; // a row of −inf
        }
    }
    Case {
        logits,
        ignored: labels
            .iter()
            .enumerate()
            .map(|(n, &y)| if n % 4 == 1 { -1 } else { y })
            .collect(),
        labels,
        dense: rng.distributions(b, c),
        weights: (0..b)
            .map(|n| {
                if n % 6 == 5 {
                    0.0
                } else {
                    rng.uniform(0.1, 3.0)
                }
            })
            .collect(),
    }
}

/// [`compare`] on the two engines of `options` (nothing where no GPU is
/// found and none is required).
fn compare_with(options: GpuOptions, shapes: &[(usize, usize)], label: &str) {
    if let Some((once, twice)) = engines(options) {
        compare(&once, &twice, shapes, label);
    }
}

/// Runs every combination on one pair of engines.
fn compare(once: &Engine, twice: &Engine, shapes: &[(usize, usize)], label: &str) {
    let mut rng = Rng::new(0x5e11);
    for &(b, c) in shapes {
        let d = case(&mut rng, b, c);
        let f16s: Vec<f16> = d.logits.iter().map(|&v| f16::from_f32(v)).collect();
        let bf16s: Vec<bf16> = d.logits.iter().map(|&v| bf16::from_f32(v)).collect();
        let class_weights: Vec<f32> = (0..c).map(|k| 0.25 + (k % 4) as f32 * 0.5).collect();
        for targets in 0..3 {
            for options in 0..3 {
                for reduction in Reduction::ALL {
                    let mut spec = CrossEntropy::new()
                        .with_gradient(true)
                        .with_reduction(reduction)
                        .with_gradient_dtype(GradientDtype::Input);
                    match options {
                        0 => {}
                        1 => {
                            spec = spec
                                .with_class_weights(class_weights.clone())
                                .with_label_smoothing(0.2)
                        }
                        _ => spec = spec.with_z_loss(1e-2).with_softcap(4.0).with_row_lse(true),
                    }
                    if targets == 1 {
                        spec = spec.with_ignore_index(-1);
                    }
                    let weights = (options > 0).then_some(&d.weights[..]);
                    let what =
                        format!("{label} {b}x{c} targets={targets} options={options} {reduction}");
                    macro_rules! run {
                        ($logits:expr, $dtype:expr) => {{
                            let mut batch = match targets {
                                0 => Batch::with_labels($logits, c, &d.labels),
                                1 => Batch::with_labels($logits, c, &d.ignored),
                                _ => Batch::with_dense($logits, c, &d.dense),
                            };
                            batch.sample_weights = weights;
                            let a = once
                                .gpu_context()
                                .unwrap()
                                .compute_blocking(&spec, &batch)
                                .unwrap();
                            let z = twice
                                .gpu_context()
                                .unwrap()
                                .compute_blocking(&spec, &batch)
                                .unwrap();
                            assert_identical(&a, &z, &format!("{what} {}", $dtype));
                        }};
                    }
                    run!(&d.logits[..], "f32");
                    run!(&f16s[..], "f16");
                    run!(&bf16s[..], "bf16");
                }
            }
        }
    }
}

#[test]
fn single_read_is_bit_identical_to_two_reads() {
    for kernel in [KernelVariant::Narrow, KernelVariant::Wide] {
        for in_place in [false, true] {
            let shapes: &[(usize, usize)] = match kernel {
                // Narrow: several rows per thread and per workgroup.
                KernelVariant::Narrow => &[(1, 1), (300, 10), (7, 33), (50, 64)],
                _ => &[(1, 1), (40, 1000), (6, 257)],
            };
            compare_with(
                GpuOptions {
                    kernel: Some(kernel),
                    gradient_in_place: in_place,
                    ..Default::default()
                },
                shapes,
                &format!("{kernel:?} in_place={in_place}"),
            );
        }
    }
}

/// The narrow workgroup size is one override for the narrow kernel, its
/// single-read twin and the weights pre-pass: at 32 and at 256 one read
/// and two still give the same bits (the wide kernel's pre-pass too).
#[test]
fn single_read_matches_two_reads_at_other_narrow_workgroup_sizes() {
    for size in [32, 256] {
        for kernel in [KernelVariant::Narrow, KernelVariant::Wide] {
            let shapes: &[(usize, usize)] = match kernel {
                KernelVariant::Narrow => &[(1, 3), (700, 10), (50, 64)],
                _ => &[(300, 70)],
            };
            compare_with(
                GpuOptions {
                    kernel: Some(kernel),
                    narrow_workgroup_size: Some(size),
                    ..Default::default()
                },
                shapes,
                &format!("{kernel:?}, narrow workgroups of {size}"),
            );
        }
    }
}

/// The wide workgroup size is one override for the wide kernel and its
/// single-read twin (and the row cache follows it): at 32 and at 512 one
/// read and two still give the same bits.
#[test]
fn single_read_matches_two_reads_at_other_wide_workgroup_sizes() {
    for size in [32, 512] {
        compare_with(
            GpuOptions {
                kernel: Some(KernelVariant::Wide),
                wide_workgroup_size: Some(size),
                ..Default::default()
            },
            &[(1, 3), (300, 70), (9, 1500)],
            &format!("wide workgroups of {size}"),
        );
    }
}

/// Several rows per workgroup (the row cache refilled), several chunks
/// (the weights pre-pass with group offsets), and a row as wide as the
/// cache.
#[test]
fn single_read_walks_rows_and_chunks_like_two_reads() {
    compare_with(
        GpuOptions {
            kernel: Some(KernelVariant::Wide),
            rows_per_group: Some(3),
            max_binding_bytes: Some(16 << 10),
            ..Default::default()
        },
        &[(29, 70), (5, 2000)],
        "wide, 3 rows a group, chunked",
    );
    compare_with(
        GpuOptions {
            kernel: Some(KernelVariant::Narrow),
            max_binding_bytes: Some(2048),
            ..Default::default()
        },
        &[(500, 12), (301, 7)],
        "narrow, chunked",
    );
    let Some((once, twice)) = engines(GpuOptions::default()) else {
        return;
    };
    let widest = once
        .gpu_context()
        .unwrap()
        .single_read_classes(KernelVariant::Wide);
    assert!(widest >= 128, "no room for a row cache: {widest}");
    compare(&once, &twice, &[(3, widest)], "the widest cached row");
}

/// The single-read path really runs: without `row_lse` it keeps no row
/// stats (8 bytes a row) and, for a sum, no weights pre-pass, so its
/// buffer pool is exactly that much smaller.
#[test]
fn single_read_keeps_no_row_stats() {
    let Some((once, twice)) = engines(GpuOptions::default()) else {
        return;
    };
    let mut rng = Rng::new(0x5e12);
    // Rows for the wide kernel, whose row cache holds them (the narrow
    // kernel's holds 64 classes; it takes up to 256 on CPU-type adapters).
    let (b, c) = (512, 300);
    let logits = rng.logits(b * c, 3.0);
    let labels = rng.labels(b, c);
    let spec = CrossEntropy::new()
        .with_gradient(true)
        .with_reduction(Reduction::Sum);
    let batch = Batch::with_labels(&logits, c, &labels);
    let a = once.compute_blocking(&spec, &batch).unwrap();
    let z = twice.compute_blocking(&spec, &batch).unwrap();
    assert_identical(&a, &z, "pool");
    let pool = |e: &Engine| e.gpu_context().unwrap().pool_bytes();
    assert_eq!(pool(&twice) - pool(&once), b as u64 * 8);
}

/// By default wide rows are read once on a CPU-type adapter and twice on
/// other adapters, and the narrow kernel's rows twice everywhere (as
/// measured: lavapipe and an H200, BENCHMARKS.md); two reads keep 8 bytes
/// of row stats a row that one read does not.
#[test]
fn default_reads_once_only_for_wide_rows_on_cpu_type_adapters() {
    let mut rng = Rng::new(0xde7a);
    let spec = CrossEntropy::new()
        .with_gradient(true)
        .with_reduction(Reduction::Sum);
    // 300 classes take the wide kernel with a gradient (the narrow kernel
    // stops at 256), 10 the narrow one.
    for (b, c, wide) in [(512, 300, true), (512, 10, false)] {
        // Fresh contexts per shape: each pool holds only this call's buffers.
        let Some((once, twice)) = engines(GpuOptions::default()) else {
            return;
        };
        let Some(default) = gpu_with(GpuOptions::default()) else {
            return;
        };
        let context = default.gpu_context().unwrap();
        let cpu_adapter = context.device().adapter_info().device_type == wgpu::DeviceType::Cpu;
        let logits = rng.logits(b * c, 3.0);
        let labels = rng.labels(b, c);
        let batch = Batch::with_labels(&logits, c, &labels);
        let reference = twice.compute_blocking(&spec, &batch).unwrap();
        let mut pools = Vec::new();
        for engine in [&once, &twice, &default] {
            let out = engine.compute_blocking(&spec, &batch).unwrap();
            assert_identical(&out, &reference, &format!("{b}x{c}"));
            pools.push(engine.gpu_context().unwrap().pool_bytes());
        }
        assert_eq!(
            pools[0] + b as u64 * 8,
            pools[1],
            "{b}x{c}: one read keeps no row stats"
        );
        let expected = if wide && cpu_adapter {
            pools[0]
        } else {
            pools[1]
        };
        assert_eq!(
            pools[2], expected,
            "{b}x{c}: default pool {} (one read {}, two {}), cpu adapter {cpu_adapter}",
            pools[2], pools[0], pools[1]
        );
    }
}
