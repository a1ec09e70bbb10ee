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
    let size = count as u64 * 4;
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
    bytemuck::cast_slice(&view[..]).to_vec()
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
            batch: b,
            classes: c,
            targets: DeviceTargets::Labels(DeviceSlice::new(&y)),
            sample_weights: Some(DeviceSlice::new(&s)),
        };
        let outputs = DeviceOutputs {
            per_example: DeviceSlice::new(&losses),
            gradient: Some(GradientOutput::Into(DeviceSlice::new(&gradient))),
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
        batch: b,
        classes: c,
        targets: DeviceTargets::Dense(DeviceSlice::at(&t, pad as u64)),
        sample_weights: None,
    };
    let outputs = DeviceOutputs {
        per_example: DeviceSlice::at(&losses, pad as u64),
        gradient: Some(GradientOutput::Into(DeviceSlice::at(&gradient, pad as u64))),
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
    let batch = DeviceBatch {
        logits: DeviceSlice::new(&x),
        batch: b,
        classes: c,
        targets: DeviceTargets::Labels(DeviceSlice::new(&y)),
        sample_weights: None,
    };
    let outputs = DeviceOutputs {
        per_example: DeviceSlice::new(&losses),
        gradient: None,
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
    let Some(engine) = gpu() else { return };
    let ctx = engine.gpu_context().unwrap();
    let (b, c) = (4096, 1000);
    let mut rng = Rng::new(79);
    let x = buffer(ctx, bytemuck::cast_slice(&rng.logits(b * c, 4.0)), STORAGE);
    let y = buffer(ctx, bytemuck::cast_slice(&rng.labels(b, c)), STORAGE);
    let losses = empty(ctx, b as u64 * 4, READABLE);
    let batch = DeviceBatch {
        logits: DeviceSlice::new(&x),
        batch: b,
        classes: c,
        targets: DeviceTargets::Labels(DeviceSlice::new(&y)),
        sample_weights: None,
    };
    let outputs = DeviceOutputs {
        per_example: DeviceSlice::new(&losses),
        gradient: Some(GradientOutput::InPlace),
    };
    ctx.submit_resident_blocking(&CrossEntropy::new(), &batch, &outputs)
        .unwrap()
        .read_blocking()
        .unwrap();
    let extra = ctx.pool_bytes();
    let logits_bytes = (b * c * 4) as u64;
    eprintln!("in-place {b}x{c}: {extra} bytes of extra device memory ({:.2} bytes per row; logits are {logits_bytes} bytes)", extra as f64 / b as f64);
    // Row stats (8 bytes a row) and at most one 48-byte partial a row, plus
    // the uniforms: linear in B, nothing of size B×C.
    assert!(extra <= 56 * b as u64 + 64 * 1024, "{extra} bytes");
    assert!(extra * 50 < logits_bytes, "{extra} bytes");
}
