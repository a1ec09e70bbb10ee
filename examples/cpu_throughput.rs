//! Times the fast CPU path at the benchmark shapes, and the machine's
//! memory read bandwidth, in the model bytes per second of DESIGN §6
//! (`B·C·4`, ×2 with `grad`, `+ B·12`). One line per shape: the median of the rounds.
//!
//! ```sh
//! cargo run --release --example cpu_throughput               # every shape, then the bandwidth
//! cargo run --release --example cpu_throughput -- 20 65536x10 # 20 rounds, one shape
//! cargo run --release --example cpu_throughput -- 5 bandwidth # only the bandwidth
//! cargo run --release --example cpu_throughput -- 10 scalar 65536x10 # also a plain scalar loop
//! cargo run --release --example cpu_throughput -- 10 64x1000          # any BxC shape
//! cargo run --release --example cpu_throughput -- 10 probs dense 65536x10 # probabilities, one-hot targets
//! cargo run --release --example cpu_throughput -- 10 avx2 512x32000   # AVX2 even where AVX-512 is
//! cargo run --release --example cpu_throughput -- 10 grad 4096x1000   # with the gradient
//! cargo run --release --example cpu_throughput -- 10 grad into 512x32000 # into one reused output
//! ```
//!
//! `scalar` adds, per shape, a plain one-thread f32 loop (max, Σ exp, log,
//! label logit; `f32::exp`) as the baseline a GPU kernel is held to.
//! `probs` feeds each row's softmax as probabilities (Keras
//! `from_logits=False`); `dense` gives one-hot targets instead of labels.
//!
//! `tools/xla_bench.py` prints the same lines for JAX/XLA; BENCHMARKS.md
//! alternates the two.

use std::hint::black_box;
use std::time::Instant;

use fused_loss::cpu::fast;
use fused_loss::{Batch, CrossEntropy, InputKind};
use rayon::prelude::*;

const SHAPES: [(usize, usize); 4] = [(65_536, 10), (4096, 1000), (512, 32_000), (16, 262_144)];

/// The same uniform [-4, 4) logits and labels as the criterion bench.
fn synthetic(batch: usize, classes: usize) -> (Vec<f32>, Vec<i32>) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let logits = (0..batch * classes)
        .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0)
        .collect();
    let labels = (0..batch)
        .map(|_| (next() % classes as u64) as i32)
        .collect();
    (logits, labels)
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Median seconds of `f` over `rounds`, after a warm-up call; each round
/// repeats `f` until it has run at least 50 ms and takes the mean.
fn time(rounds: usize, mut f: impl FnMut()) -> f64 {
    f();
    let times = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            let mut calls = 0u32;
            while start.elapsed().as_secs_f64() < 0.05 {
                f();
                calls += 1;
            }
            start.elapsed().as_secs_f64() / calls as f64
        })
        .collect();
    median(times)
}

/// Mean loss by the plainest scalar loop: one thread, f32, two passes a
/// row (max, then Σ exp), `f32::exp` and `f32::ln`.
fn scalar_mean_loss(logits: &[f32], classes: usize, labels: &[i32]) -> f32 {
    let mut total = 0.0f32;
    for (row, &label) in logits.chunks_exact(classes).zip(labels) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
        total += max + sum.ln() - row[label as usize];
    }
    total / labels.len() as f32
}

/// Read bandwidth: a sum over a 1 GiB buffer of u64, split over rayon's
/// threads, in bytes per second.
fn bandwidth(rounds: usize) -> f64 {
    let words = (1usize << 30) / 8;
    let buffer: Vec<u64> = (0..words as u64).into_par_iter().collect();
    let seconds = time(rounds, || {
        let total: u64 = buffer
            .par_chunks(1 << 16)
            .map(|chunk| {
                // Four independent lanes so the adds are not the limit.
                let mut lanes = [0u64; 4];
                for quad in chunk.chunks_exact(4) {
                    for (lane, &x) in lanes.iter_mut().zip(quad) {
                        *lane = lane.wrapping_add(x);
                    }
                }
                lanes.iter().fold(0u64, |a, &b| a.wrapping_add(b))
            })
            .reduce(|| 0, u64::wrapping_add);
        black_box(total);
    });
    (words * 8) as f64 / seconds
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(10, |a| a.parse().expect("rounds"));
    let wanted: Vec<String> = args.collect();
    let flag = |name: &str| wanted.iter().any(|w| w == name);
    let (scalar, probabilities, dense) = (flag("scalar"), flag("probs"), flag("dense"));
    let gradient = flag("grad");
    let reuse = flag("into");
    let isa = if flag("avx2") {
        fast::Isa::Avx2
    } else {
        fast::Isa::Detect
    };
    let named: Vec<&String> = wanted
        .iter()
        .filter(|w| !["scalar", "probs", "dense", "avx2", "grad", "into"].contains(&w.as_str()))
        .collect();
    let want = |name: &str| named.is_empty() || named.iter().any(|w| *w == name);
    // Any `BxC` named runs that shape; with none named, the standard ones.
    let mut shapes: Vec<(usize, usize)> = named
        .iter()
        .filter_map(|w| {
            let (b, c) = w.split_once('x')?;
            Some((b.parse().ok()?, c.parse().ok()?))
        })
        .collect();
    if shapes.is_empty() {
        shapes = SHAPES.to_vec();
    }
    println!(
        "fast cpu ({}, {} threads), median of {rounds} rounds",
        isa.name(),
        rayon::current_num_threads()
    );
    let spec = if probabilities {
        CrossEntropy::new().with_input(InputKind::Probabilities)
    } else {
        CrossEntropy::new()
    }
    .with_gradient(gradient);
    for (b, c) in shapes {
        let name = format!("{b}x{c}");
        let (mut logits, labels) = synthetic(b, c);
        if probabilities {
            for row in logits.chunks_exact_mut(c) {
                let total: f32 = row.iter().map(|x| x.exp()).sum();
                row.iter_mut().for_each(|x| *x = x.exp() / total);
            }
        }
        let one_hot: Vec<f32> = labels
            .iter()
            .flat_map(|&y| (0..c).map(move |k| f32::from(k == y as usize)))
            .collect();
        let batch = if dense {
            Batch::with_dense(&logits, c, &one_hot)
        } else {
            Batch::with_labels(&logits, c, &labels)
        };
        let mut out = fast::cross_entropy_with(&spec, &batch, isa).unwrap();
        let seconds = time(rounds, || {
            if reuse {
                fast::cross_entropy_into(&spec, &batch, &mut out).unwrap();
                black_box(&out);
            } else {
                black_box(fast::cross_entropy_with(&spec, &batch, isa).unwrap());
            }
        });
        let bytes = (b * c * 4 * if gradient { 2 } else { 1 } + b * 12) as f64;
        println!(
            "{name:>10}  {:>9.1} us  {:>6.2} GB/s",
            seconds * 1e6,
            bytes / seconds / 1e9
        );
        if scalar {
            let seconds = time(rounds, || {
                black_box(scalar_mean_loss(&logits, c, &labels));
            });
            println!(
                "{:>10}  {:>9.1} us  {:>6.2} GB/s (scalar loop, one thread)",
                name,
                seconds * 1e6,
                bytes / seconds / 1e9
            );
        }
    }
    if want("bandwidth") {
        println!(
            "{:>10}  {:>6.2} GB/s (sum over 1 GiB)",
            "bandwidth",
            bandwidth(rounds) / 1e9
        );
    }
}
