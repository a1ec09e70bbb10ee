mod common;
use common::*;
use fused_loss::*;

#[test]
fn smoke() {
    let Some(engine) = gpu() else { return };
    eprintln!("adapter {}", engine.adapter());
    let mut rng = Rng::new(1);
    for (b, c) in [(5, 3), (300, 10), (17, 1000), (3, 70_000)] {
        let logits = rng.logits(b * c, 5.0);
        let labels = rng.labels(b, c);
        let spec = CrossEntropy::new();
        let batch = Batch::with_labels(&logits, c, &labels);
        let out = engine.compute_blocking(&spec, &batch).unwrap();
        assert_matches_reference(&spec, &batch, &out.per_example);
        let want = exact_sum(&out.per_example);
        eprintln!(
            "{b}x{c}: sum {} exact {} stats {:?}",
            out.stats.sum, want, out.stats
        );
        assert_rel(out.stats.sum, want, 1e-12, "sum");
    }
}
