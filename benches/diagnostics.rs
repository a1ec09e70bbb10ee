//! Criterion: the diagnostics kernels on the GPU against their CPU twins,
//! end to end from host slices (upload, kernels, readback). Throughput is
//! the bytes of input: `B·8` (losses and labels) for the top-k and the
//! per-class sums.
//!
//! Run: `cargo bench --bench diagnostics`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fused_loss::diagnostics::{top_k, PerClassLoss};
use fused_loss::gpu::GpuDiagnostics;
use fused_loss::Engine;

const ROWS: [usize; 2] = [65_536, 4_194_304];
const CLASSES: [usize; 2] = [10, 1000];
const K: usize = 100;

fn synthetic(rows: usize, classes: usize) -> (Vec<f32>, Vec<i32>) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let losses = (0..rows)
        .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32 * 8.0)
        .collect();
    let labels = (0..rows)
        .map(|_| (next() % classes as u64) as i32)
        .collect();
    (losses, labels)
}

fn bench(c: &mut Criterion) {
    let engine = Engine::gpu_blocking().ok();
    let gpu = engine
        .as_ref()
        .and_then(|e| e.gpu_context())
        .map(|context| GpuDiagnostics::new(context).unwrap());
    if gpu.is_none() {
        eprintln!("no GPU adapter, benchmarking the CPU twins only");
    }
    let adapter = engine.as_ref().map_or("", |e| e.adapter()).to_string();
    for rows in ROWS {
        let (losses, labels) = synthetic(rows, CLASSES[0]);
        let mut group = c.benchmark_group(format!("diagnostics/top_{K}/{rows}"));
        group.throughput(Throughput::Bytes(rows as u64 * 8));
        group.sample_size(10);
        if let Some(gpu) = &gpu {
            gpu.top_k_blocking(&losses, Some(&labels), Some(-1), K)
                .unwrap();
            group.bench_function(BenchmarkId::new("gpu", &adapter), |b| {
                b.iter(|| {
                    gpu.top_k_blocking(&losses, Some(&labels), Some(-1), K)
                        .unwrap()
                })
            });
        }
        group.bench_function("cpu-twin", |b| {
            b.iter(|| top_k(&losses, Some(&labels), Some(-1), K).unwrap())
        });
        group.finish();

        for classes in CLASSES {
            let (losses, labels) = synthetic(rows, classes);
            let mut group = c.benchmark_group(format!("diagnostics/per_class/{rows}x{classes}"));
            group.throughput(Throughput::Bytes(rows as u64 * 8));
            group.sample_size(10);
            if let Some(gpu) = &gpu {
                let mut per_class = PerClassLoss::new(classes);
                gpu.per_class_blocking(&mut per_class, &losses, &labels, None)
                    .unwrap();
                group.bench_function(BenchmarkId::new("gpu", &adapter), |b| {
                    b.iter(|| {
                        let mut per_class = PerClassLoss::new(classes);
                        gpu.per_class_blocking(&mut per_class, &losses, &labels, None)
                            .unwrap();
                        per_class
                    })
                });
            }
            group.bench_function("cpu-twin", |b| {
                b.iter(|| {
                    let mut per_class = PerClassLoss::new(classes);
                    per_class.add_losses(&losses, &labels, None).unwrap();
                    per_class
                })
            });
            group.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
