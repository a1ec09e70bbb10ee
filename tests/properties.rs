//! Property tests over random shapes: B from 1 to past 65,535 rows, C from 1
//! to past 50,000, C rarely a multiple of 4 or of the workgroup size.

mod common;

use common::{assert_matches_reference, assert_rel, exact_sum, gpu_with, Rng};
use fused_loss::*;
use proptest::prelude::*;

fn shapes() -> impl Strategy<Value = (usize, usize)> {
    prop_oneof![
        4 => (1usize..200, 1usize..300),
        1 => (65_530usize..66_000, 1usize..4),
        1 => (1usize..4, 50_000usize..52_000),
        1 => (1usize..3000, 127usize..131),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn gpu_matches_reference_on_random_shapes(
        (b, c) in shapes(),
        seed in any::<u64>(),
        smoothing in prop_oneof![Just(0.0f32), 0.0f32..=1.0],
        dense in any::<bool>(),
        weighted in any::<bool>(),
        reduction in prop::sample::select(Reduction::ALL.to_vec()),
        kernel in prop::sample::select(vec![None, Some(KernelVariant::Wide), Some(KernelVariant::Narrow), Some(KernelVariant::Subgroup)]),
    ) {
        let Some(engine) = gpu_with(GpuOptions { kernel, ..Default::default() }) else { return Ok(()) };
        let mut rng = Rng::new(seed);
        let logits = rng.logits(b * c, 20.0);
        let labels = rng.labels(b, c);
        let soft = if dense { rng.distributions(b, c) } else { Vec::new() };
        let weights: Vec<f32> = (0..b).map(|_| rng.uniform(0.0, 3.0)).collect();
        let mut batch = if dense {
            Batch::with_dense(&logits, c, &soft)
        } else {
            Batch::with_labels(&logits, c, &labels)
        };
        let mut spec = CrossEntropy::new().with_label_smoothing(smoothing).with_reduction(reduction);
        if weighted {
            batch = batch.sample_weights(&weights);
            spec = spec.with_class_weights((0..c).map(|i| 0.5 + (i % 5) as f32 * 0.25).collect());
        }
        let out = engine.compute_blocking(&spec, &batch).unwrap();
        assert_matches_reference(&spec, &batch, &out.per_example);
        assert_rel(out.stats.sum, exact_sum(&out.per_example), 1e-12, "sum");
    }
}
