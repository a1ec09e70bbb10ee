//! The loss and its gradient end to end (host slices in, upload, kernels,
//! readback), by logits type and by how often the logits are read: f32 with
//! two reads and with one, f16 and bf16 (gradient in their own type) with
//! one; and on the CPU, the fast path and the f64 reference (f32 logits).
//! Model bytes per DESIGN §6: `B·C·sizeof(logit)·2 + B·12`.
//!
//! Run: `cargo bench --bench gradient`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fused_loss::{
    Batch, CrossEntropy, Engine, GpuContext, GpuOptions, GradientDtype, LogitElement,
};
use half::{bf16, f16};

mod common;
use common::synthetic;

const SHAPES: [(usize, usize); 3] = [(65_536, 10), (4096, 1000), (1024, 4096)];

fn context(single_read: bool) -> Option<GpuContext> {
    GpuContext::new_blocking(GpuOptions {
        single_read: Some(single_read),
        ..Default::default()
    })
    .map_err(|e| eprintln!("no GPU adapter, nothing to measure: {e}"))
    .ok()
}

fn bench(c: &mut Criterion) {
    let spec = CrossEntropy::new()
        .with_gradient(true)
        .with_gradient_dtype(GradientDtype::Input);
    for (batch, classes) in SHAPES {
        let (logits, labels) = synthetic(batch, classes);
        let mut group = c.benchmark_group(format!("gradient/{batch}x{classes}"));
        group.throughput(Throughput::Bytes((batch * classes * 8 + batch * 12) as u64));
        group.sample_size(10);
        let input = Batch::with_labels(&logits, classes, &labels);
        for (name, engine) in [
            ("cpu-fast", Engine::cpu()),
            ("cpu-reference", Engine::reference()),
        ] {
            group.bench_function(name, |b| {
                b.iter(|| engine.compute_blocking(&spec, &input).unwrap())
            });
        }
        group.finish();
    }
    let (Some(once), Some(twice)) = (context(true), context(false)) else {
        return; // the CPU rows above still ran
    };
    for (batch, classes) in SHAPES {
        let (logits, labels) = synthetic(batch, classes);
        let f16s: Vec<f16> = logits.iter().map(|&x| f16::from_f32(x)).collect();
        let bf16s: Vec<bf16> = logits.iter().map(|&x| bf16::from_f32(x)).collect();
        let mut run = |name: &str, ctx: &GpuContext, bytes: usize, f: &dyn Fn(&GpuContext)| {
            let mut group = c.benchmark_group(format!("gradient/{batch}x{classes}"));
            group.throughput(Throughput::Bytes(
                (batch * classes * bytes * 2 + batch * 12) as u64,
            ));
            group.sample_size(10);
            f(ctx); // pipelines compile at their first dispatch
            group.bench_function(name, |b| b.iter(|| f(ctx)));
            group.finish();
        };
        fn call<T: LogitElement>(
            ctx: &GpuContext,
            spec: &CrossEntropy,
            x: &[T],
            c: usize,
            y: &[i32],
        ) {
            ctx.compute_blocking(spec, &Batch::with_labels(x, c, y))
                .unwrap();
        }
        run("f32-two-reads", &twice, 4, &|ctx| {
            call(ctx, &spec, &logits, classes, &labels)
        });
        run("f32-one-read", &once, 4, &|ctx| {
            call(ctx, &spec, &logits, classes, &labels)
        });
        run("f16-two-reads", &twice, 2, &|ctx| {
            call(ctx, &spec, &f16s, classes, &labels)
        });
        run("f16-one-read", &once, 2, &|ctx| {
            call(ctx, &spec, &f16s, classes, &labels)
        });
        run("bf16-one-read", &once, 2, &|ctx| {
            call(ctx, &spec, &bf16s, classes, &labels)
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
