//! The GPU path, the fast CPU path and the f64 reference side by side, in
//! model bytes per second (DESIGN §6: `B·C·4 + B·12`). End-to-end times:
//! upload, kernel, reduction and readback for the GPU. The reference runs
//! only at the shapes where it takes well under a second.
//!
//! Each GPU kernel variant also runs forced (`gpu-wide`, `gpu-narrow` for
//! C ≤ 256, `gpu-subgroup` where the adapter has subgroups) next to the
//! default choice (`gpu`).
//!
//! Run: `cargo bench --bench cross_entropy` (one function:
//! `cargo bench --bench cross_entropy -- cpu-fast`)

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fused_loss::{Batch, CrossEntropy, Engine, GpuOptions, KernelVariant};

mod common;
use common::synthetic;

const SHAPES: [(usize, usize); 6] = [
    (32, 10),
    (65_536, 10),
    (4096, 1000),
    (256, 32_000),
    (512, 32_000),
    (16, 262_144),
];

fn bench(c: &mut Criterion) {
    let gpu = match Engine::gpu_blocking() {
        Ok(engine) => Some(engine),
        Err(e) => {
            eprintln!("no GPU adapter, benchmarking the CPU only: {e}");
            None
        }
    };
    let forced: Vec<(&str, Engine)> = [
        ("gpu-wide", KernelVariant::Wide),
        ("gpu-narrow", KernelVariant::Narrow),
        ("gpu-subgroup", KernelVariant::Subgroup),
    ]
    .into_iter()
    .filter_map(|(name, kernel)| {
        let engine = pollster::block_on(Engine::gpu_with(GpuOptions {
            kernel: Some(kernel),
            ..Default::default()
        }))
        .ok()?;
        let runs = kernel != KernelVariant::Subgroup || engine.gpu_context()?.has_subgroups();
        runs.then_some((name, engine))
    })
    .collect();
    let cpu = Engine::cpu();
    let reference = Engine::reference();
    let spec = CrossEntropy::new();
    for (batch, classes) in SHAPES {
        let (logits, labels) = synthetic(batch, classes);
        let input = Batch::with_labels(&logits, classes, &labels);
        let mut group = c.benchmark_group(format!("cross_entropy/{batch}x{classes}"));
        group.throughput(Throughput::Bytes((batch * classes * 4 + batch * 12) as u64));
        group.sample_size(10);
        if let Some(gpu) = &gpu {
            // Warm up: pipelines compile lazily at the first dispatch.
            gpu.compute_blocking(&spec, &input).unwrap();
            group.bench_function(BenchmarkId::new("gpu", gpu.adapter()), |b| {
                b.iter(|| gpu.compute_blocking(&spec, &input).unwrap())
            });
        }
        for (name, engine) in &forced {
            let context = engine.gpu_context().unwrap();
            if context.kernel_for(classes) != context.kernel().unwrap() {
                continue; // the forced kernel does not take rows this wide
            }
            engine.compute_blocking(&spec, &input).unwrap();
            group.bench_function(*name, |b| {
                b.iter(|| engine.compute_blocking(&spec, &input).unwrap())
            });
        }
        group.bench_function("cpu-fast", |b| {
            b.iter(|| cpu.compute_blocking(&spec, &input).unwrap())
        });
        if batch * classes <= 10_000_000 {
            group.bench_function("cpu-reference", |b| {
                b.iter(|| reference.compute_blocking(&spec, &input).unwrap())
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
