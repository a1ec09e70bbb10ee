//! Large shapes on the default limits, and bit-identical repeated runs.

mod common;

use common::*;
use fused_loss::cpu::reference;
use fused_loss::*;

fn bits(out: &LossOutput) -> (Vec<u32>, [u64; 4]) {
    (
        out.per_example.iter().map(|v| v.to_bits()).collect(),
        [
            out.stats.sum.to_bits(),
            out.stats.weight_sum.to_bits(),
            out.loss.to_bits(),
            out.average_loss.to_bits(),
        ],
    )
}

#[test]
fn two_hundred_thousand_rows_of_ten() {
    let Some(engine) = gpu() else { return };
    let mut rng = Rng::new(200_000);
    let (b, c) = (200_000, 10);
    let logits = rng.logits(b * c, 10.0);
    let labels = rng.labels(b, c);
    let weights: Vec<f32> = (0..b).map(|_| rng.uniform(0.0, 2.0)).collect();
    let batch = Batch::with_labels(&logits, c, &labels).sample_weights(&weights);
    let spec = CrossEntropy::new().with_label_smoothing(0.1);
    let first = engine.compute_blocking(&spec, &batch).unwrap();
    assert_matches_reference(&spec, &batch, &first.per_example);
    assert_rel(first.stats.sum, exact_sum(&first.per_example), 1e-12, "sum");
    let cpu = reference::compute(&spec, &batch).unwrap();
    assert_rel(first.loss, cpu.loss, 1e-6, "mean loss");
    assert_rel(first.average_loss, cpu.average_loss, 1e-6, "average_loss");
    for _ in 0..2 {
        let again = engine.compute_blocking(&spec, &batch).unwrap();
        assert_eq!(bits(&first), bits(&again), "repeated runs differ");
    }
}

#[test]
fn row_of_six_hundred_thousand_classes_beyond_the_binding_limit() {
    let Some(engine) = gpu() else { return };
    let (b, c) = (64, 600_000);
    // 153.6 MB of logits: above the 128 MiB binding limit, so it is chunked,
    // and a naive one-thread-per-row loop would pass lavapipe's 65,535 trips.
    let mut rng = Rng::new(600_000);
    let logits = rng.logits(b * c, 12.0);
    let labels = rng.labels(b, c);
    let context = engine.gpu_context().unwrap();
    assert!(
        (b * c * 4) as u64 > context.max_binding_bytes() || context.max_binding_bytes() > 128 << 20,
        "the test must exceed the binding limit where the limit is 128 MiB"
    );
    let spec = CrossEntropy::new().with_reduction(Reduction::Sum);
    let batch = Batch::with_labels(&logits, c, &labels);
    let out = engine.compute_blocking(&spec, &batch).unwrap();
    assert_matches_reference(&spec, &batch, &out.per_example);
    assert_rel(out.stats.sum, exact_sum(&out.per_example), 1e-12, "sum");
    let again = engine.compute_blocking(&spec, &batch).unwrap();
    assert_eq!(bits(&out), bits(&again));
}

/// Rows past the loop budget at the context's wide workgroup size run in
/// larger workgroups: 4,000,000 classes, more than 128 invocations may walk
/// within lavapipe's loop limit, cut into runs (the default) and whole.
#[test]
fn rows_past_the_loop_budget_run_in_larger_wide_workgroups() {
    let (b, c) = (2, 4_000_000);
    let mut rng = Rng::new(4_000_000);
    let logits = rng.logits(b * c, 8.0);
    let labels = rng.labels(b, c);
    let batch = Batch::with_labels(&logits, c, &labels);
    let spec = CrossEntropy::new().with_label_smoothing(0.05);
    for row_segments in [None, Some(1)] {
        let Some(engine) = gpu_with(GpuOptions {
            row_segments,
            ..Default::default()
        }) else {
            return;
        };
        let out = engine.compute_blocking(&spec, &batch).unwrap();
        assert_matches_reference(&spec, &batch, &out.per_example);
        assert_rel(out.stats.sum, exact_sum(&out.per_example), 1e-12, "sum");
    }
}

#[test]
fn repeated_runs_are_bit_identical_across_options() {
    let Some(engine) = gpu() else { return };
    let mut rng = Rng::new(5);
    let (b, c) = (3000, 257);
    let logits = rng.logits(b * c, 5.0);
    let dense = rng.distributions(b, c);
    let weights: Vec<f32> = (0..b).map(|_| rng.uniform(0.0, 2.0)).collect();
    let spec = CrossEntropy::new()
        .with_class_weights((0..c).map(|i| 0.5 + (i % 3) as f32).collect())
        .with_label_smoothing(0.3);
    let batch = Batch::with_dense(&logits, c, &dense).sample_weights(&weights);
    let first = engine.compute_blocking(&spec, &batch).unwrap();
    for _ in 0..3 {
        assert_eq!(
            bits(&first),
            bits(&engine.compute_blocking(&spec, &batch).unwrap())
        );
    }
}

/// Steady state: once a call has grown the pool, calls of that size or
/// smaller with the same options create no buffer and no bind group, and
/// give the same bits as a fresh context.
#[test]
fn steady_state_calls_create_nothing() {
    let Some(engine) = gpu() else { return };
    let Some(fresh) = gpu() else { return };
    let context = engine.gpu_context().unwrap();
    let mut rng = Rng::new(31);
    for (b, c, gradient) in [(32, 10, false), (300, 1000, false), (64, 130, true)] {
        let logits = rng.logits(b * c, 4.0);
        let labels = rng.labels(b, c);
        let weights: Vec<f32> = (0..b).map(|_| rng.uniform(0.5, 2.0)).collect();
        let spec = CrossEntropy::new()
            .with_gradient(gradient)
            .with_label_smoothing(0.1);
        let call = |rows: usize| {
            let batch = Batch::with_labels(&logits[..rows * c], c, &labels[..rows])
                .sample_weights(&weights[..rows]);
            context.compute_blocking(&spec, &batch).unwrap()
        };
        call(b);
        let created = context.objects_created();
        for _ in 0..3 {
            let out = call(b);
            let batch = Batch::with_labels(&logits, c, &labels).sample_weights(&weights);
            let want = fresh.compute_blocking(&spec, &batch).unwrap();
            assert_eq!(bits(&out), bits(&want), "{b}x{c}");
        }
        assert_eq!(context.objects_created(), created, "{b}x{c}: steady state");
        // A smaller batch binds the same pool buffers: still nothing new.
        let smaller = call(b / 2);
        assert_eq!(smaller.per_example.len(), b / 2);
        assert_eq!(context.objects_created(), created, "{b}x{c}: smaller batch");
    }
}

/// Inputs up to 1 MiB go up through the staging belt, larger ones through
/// `Queue::write_buffer`: the same rows give the same bits either way, and
/// calls that alternate between the two paths give the same bits each time.
#[test]
fn belt_and_queue_uploads_give_the_same_bits() {
    let Some(engine) = gpu() else { return };
    let context = engine.gpu_context().unwrap();
    let mut rng = Rng::new(47);
    let (b, c) = (320, 1000); // 1.28 MB of logits: the queue path
    let small = 200; // 0.8 MB: the belt
    let logits = rng.logits(b * c, 4.0);
    let labels = rng.labels(b, c);
    let weights: Vec<f32> = (0..b).map(|_| rng.uniform(0.5, 2.0)).collect();
    let spec = CrossEntropy::new()
        .with_label_smoothing(0.05)
        .with_class_weights((0..c).map(|k| 0.5 + (k % 3) as f32).collect());
    let call = |rows: usize| {
        let batch = Batch::with_labels(&logits[..rows * c], c, &labels[..rows])
            .sample_weights(&weights[..rows]);
        context.compute_blocking(&spec, &batch).unwrap()
    };
    let first_small = bits(&call(small));
    let first_large = bits(&call(b));
    assert_eq!(
        first_small.0[..],
        first_large.0[..small],
        "the shared rows' losses"
    );
    for round in 0..3 {
        assert_eq!(bits(&call(small)), first_small, "round {round}, belt");
        assert_eq!(bits(&call(b)), first_large, "round {round}, queue");
    }
    let reference = reference::compute(
        &spec,
        &Batch::with_labels(&logits[..small * c], c, &labels[..small])
            .sample_weights(&weights[..small]),
    )
    .unwrap();
    assert_rel(
        f64::from_bits(first_small.1[2]),
        reference.loss,
        1e-6,
        "belt call's loss",
    );
}
