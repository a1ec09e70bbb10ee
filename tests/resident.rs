//! The GPU-resident API: inputs and outputs in the caller's buffers, the
//! logits never mapped or copied to the host, reduced values read on request.

mod common;

use common::*;
use fused_loss::*;
use wgpu::util::DeviceExt;

fn buffer(ctx: &GpuContext, data: &[u8], usage: wgpu::BufferUsages) -> wgpu::Buffer {
    ctx.device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("test"),
            contents: data,
            usage,
        })
}

fn empty(ctx: &GpuContext, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("test"),
        size,
        usage,
        mapped_at_creation: false,
    })
}

/// Reads a buffer back through a staging copy (test-side only).
fn read_f32(ctx: &GpuContext, source: &wgpu::Buffer, offset: u64, count: usize) -> Vec<f32> {
    bytemuck::cast_slice(&read_bytes(ctx, source, offset, count as u64 * 4)).to_vec()
}

/// `size` bytes of a buffer from `offset`, through a staging copy.
fn read_bytes(ctx: &GpuContext, source: &wgpu::Buffer, offset: u64, size: u64) -> Vec<u8> {
    let staging = empty(
        ctx,
        size,
        wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
    );
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(source, offset, &staging, 0, size);
    ctx.queue().submit([encoder.finish()]);
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.unwrap());
    ctx.device()
        .poll(wgpu::PollType::wait_indefinitely())
        .unwrap();
    let view = staging.slice(..).get_mapped_range().unwrap();
    view.to_vec()
}

/// `b` rows of `c` f32 logits from the start of `x`, labels from `y`, no
/// sample weights.
fn f32_labels<'a>(x: &'a wgpu::Buffer, y: &'a wgpu::Buffer, b: usize, c: usize) -> DeviceBatch<'a> {
    DeviceBatch {
        logits: DeviceSlice::new(x),
        logits_dtype: LogitDtype::F32,
        batch: b,
        classes: c,
        targets: DeviceTargets::Labels(DeviceSlice::new(y)),
        sample_weights: None,
    }
}

const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE;
const READABLE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC);

#[test]
fn resident_results_equal_the_host_path_and_never_touch_the_logits_on_the_host() {
    let Some(engine) = gpu() else { return };
    let ctx = engine.gpu_context().unwrap();
    let mut rng = Rng::new(77);
    for (b, c) in [(37, 10), (50, 333)] {
        let logits = rng.logits(b * c, 5.0);
        let labels = rng.labels(b, c);
        let weights: Vec<f32> = (0..b).map(|_| rng.uniform(0.0, 2.0)).collect();
        let spec = CrossEntropy::new()
            .with_label_smoothing(0.1)
            .with_z_loss(1e-3)
            .with_class_weights((0..c).map(|k| 0.5 + (k % 2) as f32).collect());
        let host = engine
            .compute_blocking(
                &spec.clone().with_gradient(true),
                &Batch::with_labels(&logits, c, &labels).sample_weights(&weights),
            )
            .unwrap();

        // Logits and labels: STORAGE only, no MAP_READ and no COPY_SRC, so
        // nothing can bring them back to the host.
        let x = buffer(ctx, bytemuck::cast_slice(&logits), STORAGE);
        let y = buffer(ctx, bytemuck::cast_slice(&labels), STORAGE);
        let s = buffer(ctx, bytemuck::cast_slice(&weights), STORAGE);
        let losses = empty(ctx, b as u64 * 4, READABLE);
        let gradient = empty(ctx, (b * c) as u64 * 4, READABLE);
        let batch = DeviceBatch {
            logits: DeviceSlice::new(&x),
            logits_dtype: LogitDtype::F32,
            batch: b,
            classes: c,
            targets: DeviceTargets::Labels(DeviceSlice::new(&y)),
            sample_weights: Some(DeviceSlice::new(&s)),
        };
        let outputs = DeviceOutputs {
            per_example: DeviceSlice::new(&losses),
            gradient: Some(GradientOutput::Into(DeviceSlice::new(&gradient))),
            row_lse: None,
        };
        let pending = ctx
            .submit_resident_blocking(&spec, &batch, &outputs)
            .unwrap();
        let reduced = pending.read_blocking().unwrap();
        assert_eq!(reduced.stats, host.stats);
        assert_eq!(reduced.loss.to_bits(), host.loss.to_bits());
        assert_eq!(read_f32(ctx, &losses, 0, b), host.per_example);
        assert_eq!(
            &read_f32(ctx, &gradient, 0, b * c),
            host.gradient.as_ref().unwrap()
        );

        // In place: the gradient replaces the logits.
        let x2 = buffer(ctx, bytemuck::cast_slice(&logits), READABLE);
        let in_place = DeviceBatch {
            logits: DeviceSlice::new(&x2),
            ..batch
        };
        let outputs = DeviceOutputs {
            per_example: DeviceSlice::new(&losses),
            gradient: Some(GradientOutput::InPlace),
            row_lse: None,
        };
        let reduced = ctx
            .submit_resident_blocking(&spec, &in_place, &outputs)
            .unwrap()
            .read_blocking()
            .unwrap();
        assert_eq!(reduced.stats, host.stats);
        assert_eq!(
            &read_f32(ctx, &x2, 0, b * c),
            host.gradient.as_ref().unwrap()
        );
    }
}

#[test]
fn resident_offsets_chunks_and_dense_targets() {
    let Some(engine) = gpu_with(GpuOptions {
        max_binding_bytes: Some(8192),
        ..Default::default()
    }) else {
        return;
    };
    let ctx = engine.gpu_context().unwrap();
    let mut rng = Rng::new(78);
    let (b, c) = (300, 24);
    let logits = rng.logits(b * c, 3.0);
    let dense = rng.distributions(b, c);
    let host = engine
        .compute_blocking(
            &CrossEntropy::new().with_gradient(true),
            &Batch::with_dense(&logits, c, &dense),
        )
        .unwrap();
    // Everything 512 bytes into larger buffers.
    let pad = 512usize;
    let padded = |data: &[f32]| {
        let mut bytes = vec![0u8; pad];
        bytes.extend_from_slice(bytemuck::cast_slice(data));
        bytes
    };
    let x = buffer(ctx, &padded(&logits), STORAGE);
    let t = buffer(ctx, &padded(&dense), STORAGE);
    let losses = empty(ctx, (pad + b * 4) as u64, READABLE);
    let gradient = empty(ctx, (pad + b * c * 4) as u64, READABLE);
    let batch = DeviceBatch {
        logits: DeviceSlice::at(&x, pad as u64),
        logits_dtype: LogitDtype::F32,
        batch: b,
        classes: c,
        targets: DeviceTargets::Dense(DeviceSlice::at(&t, pad as u64)),
        sample_weights: None,
    };
    let outputs = DeviceOutputs {
        per_example: DeviceSlice::at(&losses, pad as u64),
        gradient: Some(GradientOutput::Into(DeviceSlice::at(&gradient, pad as u64))),
        row_lse: None,
    };
    let reduced = ctx
        .submit_resident_blocking(&CrossEntropy::new(), &batch, &outputs)
        .unwrap()
        .read_blocking()
        .unwrap();
    assert_eq!(reduced.stats, host.stats);
    assert_eq!(read_f32(ctx, &losses, pad as u64, b), host.per_example);
    assert_eq!(
        &read_f32(ctx, &gradient, pad as u64, b * c),
        host.gradient.as_ref().unwrap()
    );
}

#[test]
fn resident_bad_input_is_a_typed_error() {
    let Some(engine) = gpu() else { return };
    let ctx = engine.gpu_context().unwrap();
    let (b, c) = (4, 3);
    let x = buffer(ctx, bytemuck::cast_slice(&[0.0f32; 12]), STORAGE);
    let y = buffer(ctx, bytemuck::cast_slice(&[0i32, 1, 5, 2]), STORAGE);
    let short = buffer(ctx, bytemuck::cast_slice(&[0.0f32; 2]), STORAGE);
    let not_storage = buffer(
        ctx,
        bytemuck::cast_slice(&[0.0f32; 12]),
        wgpu::BufferUsages::COPY_SRC,
    );
    let losses = empty(ctx, 16, READABLE);
    let batch = f32_labels(&x, &y, b, c);
    let outputs = DeviceOutputs {
        per_example: DeviceSlice::new(&losses),
        gradient: None,
        row_lse: None,
    };
    let spec = CrossEntropy::new();
    // A label out of range is found on the device and reported on read.
    let pending = ctx
        .submit_resident_blocking(&spec, &batch, &outputs)
        .unwrap();
    match pending.read_blocking() {
        Err(Error::LabelOutOfRange {
            row: 2,
            label: 5,
            classes: 3,
        }) => {}
        other => panic!("expected a bad label at row 2, got {other:?}"),
    }
    let cases = [
        DeviceBatch {
            logits: DeviceSlice::new(&short),
            ..batch
        },
        DeviceBatch {
            logits: DeviceSlice::new(&not_storage),
            ..batch
        },
        DeviceBatch {
            logits: DeviceSlice::at(&x, 4),
            ..batch
        },
    ];
    for case in cases {
        match ctx.submit_resident_blocking(&spec, &case, &outputs) {
            Err(Error::InvalidBuffer { what: "logits", .. }) => {}
            other => panic!("expected InvalidBuffer, got {other:?}"),
        }
    }
    let probabilities = CrossEntropy::new().with_input(InputKind::Probabilities);
    let with_gradient = DeviceOutputs {
        gradient: Some(GradientOutput::InPlace),
        ..outputs
    };
    assert!(matches!(
        ctx.submit_resident_blocking(&probabilities, &batch, &with_gradient),
        Err(Error::GradientOfProbabilities)
    ));
}

/// In place, the extra device memory is O(B): measured here for 4096 × 1000
/// (16.4 MB of logits) and reported by the test output.
#[test]
fn in_place_extra_memory_is_linear_in_the_batch() {
    let (b, c) = (4096, 1000);
    let mut rng = Rng::new(79);
    let wide = rng.logits(b * c, 4.0);
    let labels = rng.labels(b, c);
    let bf16s: Vec<u8> = wide
        .iter()
        .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes())
        .collect();
    let runs: [(LogitDtype, &[u8], Option<bool>); 4] = [
        (LogitDtype::F32, bytemuck::cast_slice(&wide), None),
        (LogitDtype::F32, bytemuck::cast_slice(&wide), Some(false)),
        (LogitDtype::Bf16, &bf16s, None),
        (LogitDtype::Bf16, &bf16s, Some(false)),
    ];
    for (dtype, logits, single_read) in runs {
        // A fresh context each time: the pool holds only this call's buffers.
        let Some(engine) = gpu_with(GpuOptions {
            single_read,
            ..Default::default()
        }) else {
            return;
        };
        let ctx = engine.gpu_context().unwrap();
        let x = buffer(ctx, logits, STORAGE);
        let y = buffer(ctx, bytemuck::cast_slice(&labels), STORAGE);
        let losses = empty(ctx, b as u64 * 4, READABLE);
        let batch = DeviceBatch {
            logits: DeviceSlice::new(&x),
            logits_dtype: dtype,
            batch: b,
            classes: c,
            targets: DeviceTargets::Labels(DeviceSlice::new(&y)),
            sample_weights: None,
        };
        let outputs = DeviceOutputs {
            per_example: DeviceSlice::new(&losses),
            gradient: Some(GradientOutput::InPlace),
            row_lse: None,
        };
        ctx.submit_resident_blocking(&CrossEntropy::new(), &batch, &outputs)
            .unwrap()
            .read_blocking()
            .unwrap();
        let extra = ctx.pool_bytes();
        let logits_bytes = logits.len() as u64;
        eprintln!(
            "in-place {b}x{c} {dtype} single_read={single_read:?}: {extra} bytes of extra device memory ({:.2} bytes per row; logits are {logits_bytes} bytes)",
            extra as f64 / b as f64
        );
        // At most one 56-byte partial a row, row stats (8 bytes a row) when
        // the logits are read twice, and the uniforms: linear in B, nothing
        // of size B×C.
        assert!(extra <= 64 * b as u64 + 64 * 1024, "{extra} bytes");
        assert!(extra * 25 < logits_bytes, "{extra} bytes");
    }
}

/// Sample weights on the device are checked there: the first negative or
/// NaN one is `InvalidWeight`, reported before a bad label, as on the host.
#[test]
fn resident_sample_weights_are_checked_on_the_device() {
    let Some(engine) = gpu() else { return };
    let ctx = engine.gpu_context().unwrap();
    let (b, c) = (6, 3);
    let x = buffer(ctx, bytemuck::cast_slice(&[0.5f32; 18]), STORAGE);
    let good_labels = buffer(ctx, bytemuck::cast_slice(&[0i32, 1, 2, 0, 1, 2]), STORAGE);
    let bad_labels = buffer(ctx, bytemuck::cast_slice(&[0i32, 7, 2, 0, 1, 2]), STORAGE);
    let losses = empty(ctx, b as u64 * 4, READABLE);
    let outputs = DeviceOutputs {
        per_example: DeviceSlice::new(&losses),
        gradient: None,
        row_lse: None,
    };
    let cases: [(&[f32], &wgpu::Buffer, usize); 4] = [
        (&[1.0, 1.0, 1.0, -0.5, 1.0, 1.0], &good_labels, 3),
        (&[1.0, 1.0, 1.0, 1.0, f32::NAN, -1.0], &good_labels, 4),
        (
            &[1.0, 1.0, f32::NEG_INFINITY, 1.0, 1.0, 1.0],
            &good_labels,
            2,
        ),
        // A bad weight at row 5 wins over a bad label at row 1.
        (&[1.0, 1.0, 1.0, 1.0, 1.0, -2.0], &bad_labels, 5),
    ];
    for (weights, labels, row) in cases {
        let host = engine.compute_blocking(
            &CrossEntropy::new(),
            &Batch::with_labels(&[0.5f32; 18], c, &[0, 1, 2, 0, 1, 2]).sample_weights(weights),
        );
        let s = buffer(ctx, bytemuck::cast_slice(weights), STORAGE);
        let batch = DeviceBatch {
            logits: DeviceSlice::new(&x),
            logits_dtype: LogitDtype::F32,
            batch: b,
            classes: c,
            targets: DeviceTargets::Labels(DeviceSlice::new(labels)),
            sample_weights: Some(DeviceSlice::new(&s)),
        };
        for reduction in [Reduction::Sum, Reduction::Mean] {
            let spec = CrossEntropy::new().with_reduction(reduction);
            let got = ctx
                .submit_resident_blocking(&spec, &batch, &outputs)
                .unwrap()
                .read_blocking();
            match got {
                Err(Error::InvalidWeight {
                    what: "sample weight",
                    index,
                    value,
                }) => {
                    assert_eq!(index, row);
                    assert!(
                        same_special(value, weights[row] as f64) || value == weights[row] as f64
                    );
                }
                other => panic!("expected a bad weight at row {row}, got {other:?}"),
            }
        }
        if std::ptr::eq(labels, &good_labels) {
            match host {
                Err(Error::InvalidWeight { index, .. }) => assert_eq!(index, row),
                other => panic!("host: {other:?}"),
            }
        }
    }
}

/// `row_lse` on the resident path: the same bits as the host path's, copied
/// into the caller's buffer at an offset.
#[test]
fn resident_row_lse_equals_the_host_path() {
    let Some(engine) = gpu() else { return };
    let ctx = engine.gpu_context().unwrap();
    let mut rng = Rng::new(80);
    for (b, c) in [(37, 10), (20, 700)] {
        let mut logits = rng.logits(b * c, 5.0);
        logits[c] = f32::NAN; // row 1 has no lse
        let labels = rng.labels(b, c);
        let spec = CrossEntropy::new().with_softcap(4.0);
        for gradient in [false, true] {
            let host = engine
                .compute_blocking(
                    &spec.clone().with_row_lse(true).with_gradient(gradient),
                    &Batch::with_labels(&logits, c, &labels),
                )
                .unwrap();
            let x = buffer(ctx, bytemuck::cast_slice(&logits), STORAGE);
            let y = buffer(ctx, bytemuck::cast_slice(&labels), STORAGE);
            let losses = empty(ctx, b as u64 * 4, READABLE);
            let grad = empty(ctx, (b * c) as u64 * 4, READABLE);
            let lse = empty(
                ctx,
                64 + b as u64 * 4,
                wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            );
            let batch = f32_labels(&x, &y, b, c);
            let outputs = DeviceOutputs {
                per_example: DeviceSlice::new(&losses),
                gradient: gradient.then_some(GradientOutput::Into(DeviceSlice::new(&grad))),
                row_lse: Some(DeviceSlice::at(&lse, 64)),
            };
            let reduced = ctx
                .submit_resident_blocking(&spec, &batch, &outputs)
                .unwrap()
                .read_blocking()
                .unwrap();
            // A NaN row: compare the stats' bits.
            assert_eq!(format!("{:?}", reduced.stats), format!("{:?}", host.stats));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&read_f32(ctx, &lse, 64, b)),
                bits(host.row_lse.as_ref().unwrap())
            );
            assert!(read_f32(ctx, &lse, 64, b)[1].is_nan());
        }
    }
    // The row lse buffer is copied into: COPY_DST, not STORAGE.
    let x = buffer(ctx, bytemuck::cast_slice(&[0.0f32; 4]), STORAGE);
    let y = buffer(ctx, bytemuck::cast_slice(&[0i32, 1]), STORAGE);
    let losses = empty(ctx, 8, READABLE);
    let storage_only = empty(ctx, 8, STORAGE);
    let batch = f32_labels(&x, &y, 2, 2);
    let outputs = DeviceOutputs {
        per_example: DeviceSlice::new(&losses),
        gradient: None,
        row_lse: Some(DeviceSlice::new(&storage_only)),
    };
    assert!(matches!(
        ctx.submit_resident_blocking(&CrossEntropy::new(), &batch, &outputs),
        Err(Error::InvalidBuffer {
            what: "row lse",
            ..
        })
    ));
}

/// Half-precision logits in the caller's buffer, odd C and an odd total:
/// the same bits as the host path with the same halves, the gradient in the
/// input type into a buffer or in place, and the high half of the last word
/// left as it was.
#[test]
fn resident_half_logits_equal_the_host_path() {
    let Some(engine) = gpu() else { return };
    let ctx = engine.gpu_context().unwrap();
    let mut rng = Rng::new(81);
    let (b, c) = (13, 7); // 91 halves: the last word is half used
    let wide = rng.logits(b * c, 4.0);
    let labels = rng.labels(b, c);
    let weights: Vec<f32> = (0..b).map(|_| rng.uniform(0.1, 2.0)).collect();
    let spec = CrossEntropy::new()
        .with_label_smoothing(0.1)
        .with_gradient_dtype(GradientDtype::Input);
    let f16s: Vec<half::f16> = wide.iter().map(|&v| half::f16::from_f32(v)).collect();
    let bf16s: Vec<half::bf16> = wide.iter().map(|&v| half::bf16::from_f32(v)).collect();
    let cases: [(LogitDtype, Vec<u8>, LossOutput); 2] = [
        (
            LogitDtype::F16,
            f16s.iter()
                .flat_map(|v| v.to_bits().to_le_bytes())
                .collect(),
            ctx.compute_blocking(
                &spec.clone().with_gradient(true),
                &Batch::with_labels(&f16s, c, &labels).sample_weights(&weights),
            )
            .unwrap(),
        ),
        (
            LogitDtype::Bf16,
            bf16s
                .iter()
                .flat_map(|v| v.to_bits().to_le_bytes())
                .collect(),
            ctx.compute_blocking(
                &spec.clone().with_gradient(true),
                &Batch::with_labels(&bf16s, c, &labels).sample_weights(&weights),
            )
            .unwrap(),
        ),
    ];
    for (dtype, halves, host) in cases {
        let words = dtype.buffer_bytes(b * c) as usize;
        assert_eq!(words, 184);
        let mut bytes = halves.clone();
        bytes.extend_from_slice(&[0xcd, 0xab]); // the last word's spare half
        let y = buffer(ctx, bytemuck::cast_slice(&labels), STORAGE);
        let s = buffer(ctx, bytemuck::cast_slice(&weights), STORAGE);
        let losses = empty(ctx, b as u64 * 4, READABLE);
        let decode = |raw: &[u8]| -> Vec<f32> {
            raw.chunks_exact(2)
                .take(b * c)
                .map(|h| {
                    let bits = u16::from_le_bytes([h[0], h[1]]);
                    match dtype {
                        LogitDtype::F16 => half::f16::from_bits(bits).to_f32(),
                        _ => half::bf16::from_bits(bits).to_f32(),
                    }
                })
                .collect()
        };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for in_place in [false, true] {
            let x = buffer(ctx, &bytes, READABLE);
            let mut initial = vec![0u8; words];
            initial[words - 2..].copy_from_slice(&[0x34, 0x12]);
            let g = buffer(ctx, &initial, READABLE);
            let batch = DeviceBatch {
                logits: DeviceSlice::new(&x),
                logits_dtype: dtype,
                batch: b,
                classes: c,
                targets: DeviceTargets::Labels(DeviceSlice::new(&y)),
                sample_weights: Some(DeviceSlice::new(&s)),
            };
            let outputs = DeviceOutputs {
                per_example: DeviceSlice::new(&losses),
                gradient: Some(if in_place {
                    GradientOutput::InPlace
                } else {
                    GradientOutput::Into(DeviceSlice::new(&g))
                }),
                row_lse: None,
            };
            let reduced = ctx
                .submit_resident_blocking(&spec, &batch, &outputs)
                .unwrap()
                .read_blocking()
                .unwrap();
            assert_eq!(reduced.stats, host.stats, "{dtype} in place {in_place}");
            assert_eq!(read_f32(ctx, &losses, 0, b), host.per_example);
            let written = read_bytes(ctx, if in_place { &x } else { &g }, 0, words as u64);
            assert_eq!(
                bits(&decode(&written)),
                bits(host.gradient.as_ref().unwrap()),
                "{dtype} in place {in_place}"
            );
            let spare: &[u8] = if in_place {
                &[0xcd, 0xab]
            } else {
                &[0x34, 0x12]
            };
            assert_eq!(&written[words - 2..], spare, "{dtype} in place {in_place}");
        }
        // A buffer without room for the whole last word is refused.
        let short = empty(ctx, halves.len() as u64, STORAGE);
        let batch = DeviceBatch {
            logits: DeviceSlice::new(&short),
            logits_dtype: dtype,
            batch: b,
            classes: c,
            targets: DeviceTargets::Labels(DeviceSlice::new(&y)),
            sample_weights: None,
        };
        let outputs = DeviceOutputs {
            per_example: DeviceSlice::new(&losses),
            gradient: None,
            row_lse: None,
        };
        assert!(matches!(
            ctx.submit_resident_blocking(&spec, &batch, &outputs),
            Err(Error::InvalidBuffer { what: "logits", .. })
        ));
    }
}

/// Every forced kernel variant (the subgroup kernel with scalar and vec4
/// loads included, and rows split in three) gives the host path's bits on
/// the resident path, with
/// the logits 512 bytes into a larger buffer.
#[test]
fn resident_variants_equal_the_host_path() {
    let mut rng = Rng::new(79);
    let mut engines = gpu_variants();
    engines.extend(gpu_with(GpuOptions {
        row_segments: Some(3),
        ..Default::default()
    }));
    for engine in engines {
        let ctx = engine.gpu_context().unwrap();
        for (b, c) in [(40, 132), (33, 10)] {
            let logits = rng.logits(b * c, 4.0);
            let labels = rng.labels(b, c);
            let spec = CrossEntropy::new().with_label_smoothing(0.05);
            let host = ctx
                .compute_blocking(&spec, &Batch::with_labels(&logits, c, &labels))
                .unwrap();
            let pad = 512usize;
            let mut bytes = vec![0u8; pad];
            bytes.extend_from_slice(bytemuck::cast_slice(&logits));
            let x = buffer(ctx, &bytes, STORAGE);
            let y = buffer(ctx, bytemuck::cast_slice(&labels), STORAGE);
            let losses = empty(ctx, b as u64 * 4, READABLE);
            let batch = DeviceBatch {
                logits: DeviceSlice::at(&x, pad as u64),
                logits_dtype: LogitDtype::F32,
                batch: b,
                classes: c,
                targets: DeviceTargets::Labels(DeviceSlice::new(&y)),
                sample_weights: None,
            };
            let outputs = DeviceOutputs {
                per_example: DeviceSlice::new(&losses),
                gradient: None,
                row_lse: None,
            };
            let reduced = ctx
                .submit_resident_blocking(&spec, &batch, &outputs)
                .unwrap()
                .read_blocking()
                .unwrap();
            let what = format!("{:?} {b}x{c}", ctx.kernel());
            assert_eq!(reduced.stats, host.stats, "{what}");
            assert_eq!(read_f32(ctx, &losses, 0, b), host.per_example, "{what}");
        }
    }
}

/// Calls submitted before any is read each keep their own uniforms and
/// class weights (uploaded through the staging belt, whose chunk is still
/// in flight when the next call comes).
#[test]
fn overlapping_resident_calls_keep_their_own_inputs() {
    let Some(engine) = gpu() else { return };
    let ctx = engine.gpu_context().unwrap();
    let mut rng = Rng::new(78);
    let (b, c) = (40, 120);
    let logits = rng.logits(b * c, 4.0);
    let labels = rng.labels(b, c);
    let x = buffer(ctx, bytemuck::cast_slice(&logits), STORAGE);
    let y = buffer(ctx, bytemuck::cast_slice(&labels), STORAGE);
    let batch = f32_labels(&x, &y, b, c);
    let specs: Vec<CrossEntropy> = (0..4)
        .map(|i| {
            CrossEntropy::new()
                .with_label_smoothing(0.05 * i as f32)
                .with_class_weights((0..c).map(|k| 1.0 + ((k + i) % 4) as f32).collect())
        })
        .collect();
    let losses: Vec<wgpu::Buffer> = specs
        .iter()
        .map(|_| empty(ctx, b as u64 * 4, READABLE))
        .collect();
    let pending: Vec<PendingLoss> = specs
        .iter()
        .zip(&losses)
        .map(|(spec, out)| {
            let outputs = DeviceOutputs {
                per_example: DeviceSlice::new(out),
                gradient: None,
                row_lse: None,
            };
            ctx.submit_resident_blocking(spec, &batch, &outputs)
                .unwrap()
        })
        .collect();
    for ((spec, pending), out) in specs.iter().zip(&pending).zip(&losses) {
        let host = engine
            .compute_blocking(spec, &Batch::with_labels(&logits, c, &labels))
            .unwrap();
        let reduced = pending.read_blocking().unwrap();
        assert_eq!(reduced.loss.to_bits(), host.loss.to_bits());
        assert_eq!(read_f32(ctx, out, 0, b), host.per_example);
    }
}

/// Resident calls in steady state create no buffer and no bind group: the
/// readback buffer of a dropped `PendingLoss`, read or not, serves the next
/// call, and so do the last call's bind groups where the buffers are the
/// same. Other buffers get groups of their own, and the right answer.
#[test]
fn steady_state_resident_calls_create_no_objects() {
    let Some(engine) = gpu() else { return };
    let ctx = engine.gpu_context().unwrap();
    let mut rng = Rng::new(79);
    let (b, c) = (64, 50);
    let logits = rng.logits(b * c, 4.0);
    let other_logits = rng.logits(b * c, 4.0);
    let labels = rng.labels(b, c);
    let x = buffer(ctx, bytemuck::cast_slice(&logits), STORAGE);
    let other_x = buffer(ctx, bytemuck::cast_slice(&other_logits), STORAGE);
    let y = buffer(ctx, bytemuck::cast_slice(&labels), STORAGE);
    let losses = empty(ctx, b as u64 * 4, READABLE);
    let outputs = DeviceOutputs {
        per_example: DeviceSlice::new(&losses),
        gradient: None,
        row_lse: None,
    };
    let spec = CrossEntropy::new();
    let call = |x: &wgpu::Buffer| {
        ctx.submit_resident_blocking(&spec, &f32_labels(x, &y, b, c), &outputs)
            .unwrap()
    };
    let first = call(&x).read_blocking().unwrap();
    let created = ctx.objects_created();
    for round in 0..4 {
        let pending = call(&x);
        if round % 2 == 0 {
            assert_eq!(pending.read_blocking().unwrap(), first);
        }
    }
    assert_eq!(ctx.objects_created(), created, "steady state");
    let host = |logits: &[f32]| {
        engine
            .compute_blocking(&spec, &Batch::with_labels(logits, c, &labels))
            .unwrap()
    };
    assert_eq!(first.loss.to_bits(), host(&logits).loss.to_bits());
    let other = call(&other_x).read_blocking().unwrap();
    assert!(ctx.objects_created() > created, "new logits, new groups");
    assert_eq!(other.loss.to_bits(), host(&other_logits).loss.to_bits());
    assert_eq!(call(&x).read_blocking().unwrap(), first);
}
