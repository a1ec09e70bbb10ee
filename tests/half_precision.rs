//! Half-precision logits (f16 and bf16) on the GPU against the f64
//! reference computed on the same halves.
//!
//! Tolerances: the inputs are exact halves, so the losses, the stats and an
//! f32 gradient keep the f32 tolerances (README; tests/gradient.rs). A
//! gradient rounded to the input type may be off by one more half ulp of
//! the value: `|Δ| ≤ ½·ulp(max(|g|, |g_ref|)) + tol_f32`, with the ulp of
//! that type (f16 subnormals included).

mod common;

use common::*;
use fused_loss::cpu::reference;
use fused_loss::*;
use half::{bf16, f16};

/// The distance between `x` and the next value of `dtype` away from zero.
fn ulp(dtype: LogitDtype, x: f64) -> f64 {
    let x = x.abs();
    match dtype {
        LogitDtype::F32 => 0.0,
        LogitDtype::F16 => {
            let h = f16::from_f64(x);
            let next = f16::from_bits(h.to_bits() + 1);
            (next.to_f64() - h.to_f64()).abs().max(2f64.powi(-24))
        }
        LogitDtype::Bf16 => {
            let h = bf16::from_f64(x);
            let next = bf16::from_bits(h.to_bits() + 1);
            (next.to_f64() - h.to_f64()).abs()
        }
    }
}

/// The GPU gradient against the reference's unrounded one: the f32
/// tolerance of tests/gradient.rs, plus half an ulp of `rounded_to` (F32:
/// nothing); each value must be exactly of that type.
fn assert_half_gradient_close<T: LogitElement>(
    spec: &CrossEntropy,
    batch: &Batch<'_, T>,
    got: &LossOutput,
    rounded_to: LogitDtype,
    what: &str,
) {
    let g = got.gradient.as_ref().expect("gpu gradient");
    for (i, &v) in g.iter().enumerate() {
        let back = match rounded_to {
            LogitDtype::F32 => v,
            LogitDtype::F16 => f16::from_f32(v).to_f32(),
            LogitDtype::Bf16 => bf16::from_f32(v).to_f32(),
        };
        assert!(
            back.to_bits() == v.to_bits() || v.is_nan(),
            "{what}: [{i}] {v} is not a {rounded_to}"
        );
    }
    let half_ulp = |g: f64, want: f64| 0.5 * ulp(rounded_to, g.abs().max(want.abs()));
    assert_gradient_close(spec, batch, g, half_ulp, what);
}

struct Data {
    wide: Vec<f32>,
    labels: Vec<i32>,
    ignored: Vec<i32>,
    dense: Vec<f32>,
    weights: Vec<f32>,
}

fn data(rng: &mut Rng, b: usize, c: usize) -> Data {
    let labels = rng.labels(b, c);
    Data {
        wide: rng.logits(b * c, 6.0),
        ignored: labels
            .iter()
            .enumerate()
            .map(|(n, &y)| if n % 3 == 1 { -100 } else { y })
            .collect(),
        labels,
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

/// Every reduction, targets and options, gradient in f32 and in the input
/// type, odd C and odd totals, on the wide and narrow kernels and with f16
/// packed in words as well as stored as f16.
fn check_dtype<T: LogitElement>(halves: impl Fn(&[f32]) -> Vec<T>) {
    let mut engines = gpu_variants();
    engines.extend(gpu_with(GpuOptions {
        packed_f16: true,
        ..Default::default()
    }));
    engines.extend(gpu_with(GpuOptions {
        single_read: Some(false),
        ..Default::default()
    }));
    if engines.is_empty() {
        return;
    }
    let mut rng = Rng::new(0x4a1f);
    for &(b, c) in &[(1usize, 1usize), (11, 5), (9, 300), (7, 33), (4, 64)] {
        let d = data(&mut rng, b, c);
        let logits = halves(&d.wide);
        let class_weights: Vec<f32> = (0..c).map(|k| 0.5 + (k % 3) as f32 * 0.75).collect();
        for targets in 0..3 {
            for weighted in [false, true] {
                for reduction in Reduction::ALL {
                    for gradient_dtype in [GradientDtype::F32, GradientDtype::Input] {
                        let mut spec = CrossEntropy::new()
                            .with_gradient(true)
                            .with_row_lse(true)
                            .with_reduction(reduction)
                            .with_gradient_dtype(gradient_dtype);
                        let mut batch = match targets {
                            0 => Batch::with_labels(&logits, c, &d.labels),
                            1 => {
                                spec = spec.with_ignore_index(-100);
                                Batch::with_labels(&logits, c, &d.ignored)
                            }
                            _ => Batch::with_dense(&logits, c, &d.dense),
                        };
                        if weighted {
                            spec = spec
                                .with_class_weights(class_weights.clone())
                                .with_label_smoothing(0.1)
                                .with_z_loss(1e-3)
                                .with_softcap(5.0);
                            batch = batch.sample_weights(&d.weights);
                        }
                        let rounded_to = gradient_dtype.resolve(T::DTYPE, false);
                        let what = format!(
                            "{} {b}x{c} targets={targets} weighted={weighted} {reduction} grad={gradient_dtype:?}",
                            T::DTYPE
                        );
                        let want = reference::compute(&spec, &batch).unwrap();
                        for engine in &engines {
                            let out = engine
                                .gpu_context()
                                .unwrap()
                                .compute_blocking(&spec, &batch)
                                .unwrap();
                            assert_matches_reference(&spec, &batch, &out.per_example);
                            assert_eq!(out.stats.count, want.stats.count, "{what}");
                            assert_rel(out.stats.weight_sum, want.stats.weight_sum, 1e-7, &what);
                            assert_rel(out.stats.sum, exact_sum(&out.per_example), 1e-12, &what);
                            assert_half_gradient_close(&spec, &batch, &out, rounded_to, &what);
                            let lse = out.row_lse.as_ref().unwrap();
                            let rows = reference::row_losses(&spec, &batch).unwrap();
                            for (n, row) in rows.iter().enumerate() {
                                let l = lse[n] as f64;
                                assert!(
                                    same_special(l, row.lse)
                                        || (l - row.lse).abs() <= 1e-5 * (1.0 + row.lse.abs()),
                                    "{what}: lse[{n}] {l} vs {}",
                                    row.lse
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn f16_logits_match_the_reference() {
    check_dtype(|x| x.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>());
}

#[test]
fn bf16_logits_match_the_reference() {
    check_dtype(|x| x.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>());
}

/// Runs f16 and bf16 halves of `d.wide` on `half` and their exact f32
/// widening on `float`, and asserts the same bits: losses, stats, row lse and,
/// when `spec` asks for it, the gradient; the halves also against the
/// reference.
fn assert_widening_bits(
    half: &GpuContext,
    float: &GpuContext,
    spec: &CrossEntropy,
    d: &Data,
    c: usize,
    what: &str,
) {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let f16s: Vec<f16> = d.wide.iter().map(|&v| f16::from_f32(v)).collect();
    let bf16s: Vec<bf16> = d.wide.iter().map(|&v| bf16::from_f32(v)).collect();
    let widened = [
        f16s.iter().map(|v| v.to_f32()).collect::<Vec<f32>>(),
        bf16s.iter().map(|v| v.to_f32()).collect::<Vec<f32>>(),
    ];
    let runs = [
        half.compute_blocking(
            spec,
            &Batch::with_labels(&f16s, c, &d.labels).sample_weights(&d.weights),
        ),
        half.compute_blocking(
            spec,
            &Batch::with_labels(&bf16s, c, &d.labels).sample_weights(&d.weights),
        ),
    ];
    for (i, (x, got)) in widened.iter().zip(runs).enumerate() {
        let what = format!("{what} run {i}");
        let got = got.unwrap();
        let batch = Batch::with_labels(x, c, &d.labels).sample_weights(&d.weights);
        let want = float.compute_blocking(spec, &batch).unwrap();
        assert_matches_reference(spec, &batch, &got.per_example);
        assert_eq!(bits(&got.per_example), bits(&want.per_example), "{what}");
        assert_eq!(got.stats, want.stats, "{what}");
        assert_eq!(
            bits(got.row_lse.as_ref().unwrap()),
            bits(want.row_lse.as_ref().unwrap()),
            "{what}"
        );
        if spec.gradient {
            assert_eq!(
                bits(got.gradient.as_ref().unwrap()),
                bits(want.gradient.as_ref().unwrap()),
                "{what}"
            );
        }
    }
}

/// Half logits are read exactly: the results are those of their f32
/// widening, to the bit (the f32 gradient too), f16 stored natively or
/// packed.
#[test]
fn half_logits_give_the_bits_of_their_f32_widening() {
    let Some(engine) = gpu() else { return };
    let Some(packed) = gpu_with(GpuOptions {
        packed_f16: true,
        ..Default::default()
    }) else {
        return;
    };
    let ctx = engine.gpu_context().unwrap();
    let mut rng = Rng::new(0x4a20);
    for (b, c) in [(33, 7), (12, 500)] {
        let d = data(&mut rng, b, c);
        let spec = CrossEntropy::new()
            .with_gradient(true)
            .with_row_lse(true)
            .with_label_smoothing(0.1)
            .with_z_loss(1e-3);
        assert_widening_bits(ctx, ctx, &spec, &d, c, &format!("{b}x{c}"));
        let what = format!("{b}x{c} packed");
        assert_widening_bits(packed.gpu_context().unwrap(), ctx, &spec, &d, c, &what);
    }
}

/// The subgroup kernel reads halves through the same accessors as the other
/// kernels: forward only at C > 64, and the two-read gradient of rows wider
/// than the single-read cache, give the bits of the f32 widening, f16
/// stored natively or packed.
#[test]
fn subgroup_kernel_reads_half_logits_exactly() {
    let mut rng = Rng::new(0x4a22);
    for packed_f16 in [false, true] {
        let Some(engine) = gpu_with(GpuOptions {
            kernel: Some(KernelVariant::Subgroup),
            vector_loads: Some(false),
            packed_f16,
            ..Default::default()
        }) else {
            return;
        };
        let ctx = engine.gpu_context().unwrap();
        for (b, c, gradient) in [(21, 300, false), (9, 1028, false), (3, 5000, true)] {
            if ctx.has_subgroups() {
                assert_eq!(ctx.kernel_for(c), KernelVariant::Subgroup);
            }
            assert!(!gradient || ctx.single_read_classes(KernelVariant::Wide) < c);
            let d = data(&mut rng, b, c);
            let spec = CrossEntropy::new()
                .with_gradient(gradient)
                .with_row_lse(true)
                .with_label_smoothing(0.1)
                .with_z_loss(1e-3);
            let what = format!("{b}x{c} packed_f16={packed_f16}");
            assert_widening_bits(ctx, ctx, &spec, &d, c, &what);
        }
    }
}

/// In place the gradient takes the logits' type; it equals the out-of-place
/// gradient in the input type to the bit, also when chunked with odd C.
#[test]
fn in_place_half_gradient_equals_out_of_place() {
    let engines = [
        GpuOptions::default(),
        GpuOptions {
            packed_f16: true,
            ..Default::default()
        },
        GpuOptions {
            single_read: Some(false),
            ..Default::default()
        },
        GpuOptions {
            max_binding_bytes: Some(1024),
            ..Default::default()
        },
    ];
    let mut rng = Rng::new(0x4a21);
    for options in engines {
        let Some(out_of_place) = gpu_with(options.clone()) else {
            return;
        };
        let Some(in_place) = gpu_with(GpuOptions {
            gradient_in_place: true,
            ..options.clone()
        }) else {
            return;
        };
        for (b, c) in [(101, 33), (9, 130), (40, 10)] {
            let d = data(&mut rng, b, c);
            let f16s: Vec<f16> = d.wide.iter().map(|&v| f16::from_f32(v)).collect();
            let bf16s: Vec<bf16> = d.wide.iter().map(|&v| bf16::from_f32(v)).collect();
            let bits = |o: &LossOutput| {
                o.gradient
                    .as_ref()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>()
            };
            for reduction in [Reduction::Mean, Reduction::None] {
                let spec = CrossEntropy::new()
                    .with_gradient(true)
                    .with_reduction(reduction)
                    .with_label_smoothing(0.05);
                let input = spec.clone().with_gradient_dtype(GradientDtype::Input);
                let run = |engine: &Engine, spec: &CrossEntropy, which: u8| match which {
                    0 => engine
                        .compute_half_blocking(spec, &Batch::with_labels(&f16s, c, &d.labels))
                        .unwrap(),
                    _ => engine
                        .compute_half_blocking(spec, &Batch::with_labels(&bf16s, c, &d.labels))
                        .unwrap(),
                };
                for which in [0, 1] {
                    let what = format!("{options:?} {b}x{c} {reduction} dtype {which}");
                    let a = run(&out_of_place, &input, which);
                    // In place, asking for f32 still gives the logits' type.
                    let p = run(&in_place, &spec, which);
                    assert_eq!(bits(&a), bits(&p), "{what}");
                    assert_eq!(a.stats, p.stats, "{what}");
                    assert_eq!(a.per_example, p.per_example, "{what}");
                    let rounded_to = if which == 0 {
                        LogitDtype::F16
                    } else {
                        LogitDtype::Bf16
                    };
                    if which == 0 {
                        let batch = Batch::with_labels(&f16s, c, &d.labels);
                        assert_half_gradient_close(&input, &batch, &p, rounded_to, &what);
                    } else {
                        let batch = Batch::with_labels(&bf16s, c, &d.labels);
                        assert_half_gradient_close(&input, &batch, &p, rounded_to, &what);
                    }
                }
            }
        }
    }
}

/// The reference rounds an `Input` gradient of half logits to their type
/// once, from f64; the fast CPU engine takes half batches too (widened to
/// f32) and rounds its f32 gradient to the type.
#[test]
fn cpu_engines_round_the_input_gradient() {
    let logits: Vec<bf16> = [0.3f32, -1.7, 2.2, 0.9, 0.1, -0.4]
        .iter()
        .map(|&v| bf16::from_f32(v))
        .collect();
    let batch = Batch::with_labels(&logits, 3, &[2, 0]);
    let f32_spec = CrossEntropy::new().with_gradient(true);
    let exact = reference::compute(&f32_spec, &batch).unwrap();
    let input_spec = f32_spec.clone().with_gradient_dtype(GradientDtype::Input);
    for (engine, extra_ulps) in [(Engine::reference(), 0.5), (Engine::cpu(), 1.0)] {
        let rounded = engine.compute_half_blocking(&input_spec, &batch).unwrap();
        let what = format!("{:?}", engine.backend());
        if engine.backend() == Backend::Reference {
            assert_eq!(exact.loss, rounded.loss, "{what}");
        } else {
            assert_rel(rounded.loss, exact.loss, 1e-6, &what);
        }
        for (e, r) in exact
            .gradient
            .as_ref()
            .unwrap()
            .iter()
            .zip(rounded.gradient.unwrap())
        {
            assert_eq!(bf16::from_f32(r).to_f32(), r, "{what}");
            let bound = extra_ulps * ulp(LogitDtype::Bf16, *e as f64) as f32 + 1e-6;
            assert!((e - r).abs() <= bound, "{what}: {r} vs {e}");
        }
    }
}

/// Whether this device stores f16 natively; lavapipe does.
#[test]
fn reports_native_f16() {
    let Some(engine) = gpu() else { return };
    let ctx = engine.gpu_context().unwrap();
    let has = ctx.device().features().contains(wgpu::Features::SHADER_F16);
    eprintln!("{}: SHADER_F16 {has}", ctx.adapter());
    assert_eq!(ctx.native_f16(), has);
    let packed = gpu_with(GpuOptions {
        packed_f16: true,
        ..Default::default()
    })
    .unwrap();
    assert!(!packed.gpu_context().unwrap().native_f16());
}
