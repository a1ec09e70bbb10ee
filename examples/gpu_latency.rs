//! Times end-to-end `GpuContext::compute_blocking` calls at one shape on the
//! default adapter, with the context's defaults (no timestamp queries), and
//! prints the mean over the calls. For A/B runs of host overhead on small
//! batches, where `fused-loss bench` of an older build timed its calls with
//! timestamp queries on.
//!
//! ```sh
//! cargo run --release --example gpu_latency                # 3000 calls at 32x10
//! cargo run --release --example gpu_latency -- 300 512x1000 # 300 calls at 512x1000
//! ```

use std::time::Instant;

use fused_loss::gpu::{GpuContext, GpuOptions};
use fused_loss::{Batch, CrossEntropy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let calls: u32 = args.next().map_or(Ok(3000), |s| s.parse())?;
    let shape = args.next().unwrap_or_else(|| "32x10".into());
    let (batch, classes) = shape
        .split_once('x')
        .ok_or("the shape is BxC, e.g. 32x10")?;
    let (batch, classes): (usize, usize) = (batch.parse()?, classes.parse()?);
    let logits: Vec<f32> = (0..batch * classes).map(|i| (i % 7) as f32 * 0.3).collect();
    let labels: Vec<i32> = (0..batch).map(|i| (i % classes) as i32).collect();
    let context = GpuContext::new_blocking(GpuOptions::default())?;
    let spec = CrossEntropy::new();
    let batch = Batch::with_labels(&logits, classes, &labels);
    for _ in 0..calls.div_ceil(30) {
        context.compute_blocking(&spec, &batch)?;
    }
    let start = Instant::now();
    for _ in 0..calls {
        context.compute_blocking(&spec, &batch)?;
    }
    let ms = start.elapsed().as_secs_f64() * 1e3 / calls.max(1) as f64;
    println!(
        "{shape} {ms:.4} ms/call ({calls} calls, {})",
        context.adapter()
    );
    Ok(())
}
