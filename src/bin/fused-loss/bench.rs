//! `fused-loss bench`: medians of kernel and end-to-end time on synthetic
//! data, as model-bytes throughput (DESIGN §6), next to the memory limits
//! measured on the same adapter in the same run.

use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use fused_loss::cpu::reference;
use fused_loss::{
    Batch, CrossEntropy, Engine, Error, GpuContext, GpuOptions, KernelVariant, LoadPattern,
    Reduction, Result, Roofline,
};

use super::print_stdout;

pub const BENCH_AFTER_HELP: &str = "\
Throughput is model bytes per second: B*C*4 (x2 with --grad) + B*12, over \
the median time. kernel_ms comes from timestamp queries around the compute \
pass where the adapter has them (null otherwise); on the CPU it equals \
end_to_end_ms. For the GPU the bench also times, on the same adapter: a \
load-only kernel over the same logits bytes (roofline_gbps; a contiguous run \
per invocation on CPU-type adapters, a grid stride elsewhere, or as \
--load-pattern says), the same loads with one exp per value (exp_floor_gbps: \
the least work of any log-sum-exp kernel), a copy kernel \
(copy_gbps, bytes read + written), and a bare upload-submit-readback round \
trip of the same sizes (round_trip_ms). On the CPU it measures the memory \
read bandwidth of all threads (memory_read_gbps).";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchLoadPattern {
    /// A grid stride: neighbouring invocations read neighbouring vec4s
    Strided,
    /// A contiguous run of vec4s per invocation
    Runs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchBackend {
    /// The wgpu adapter the environment selects
    Gpu,
    /// The CPU backend of `Engine::cpu`
    Cpu,
    /// The f64 reference
    Reference,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchKernel {
    /// The default choice by class count
    Auto,
    /// A workgroup per row
    Wide,
    /// An invocation per row (at most 256 classes)
    Narrow,
    /// A subgroup per row (needs subgroups)
    Subgroup,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Rows
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Classes per row
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    classes: u32,
    #[arg(long, value_enum, default_value_t = BenchBackend::Gpu)]
    backend: BenchBackend,
    /// Also compute the gradient (mean reduction)
    #[arg(long)]
    grad: bool,
    /// Label smoothing epsilon in [0, 1] (0: none); a call with class sums
    #[arg(long, value_name = "EPS", default_value_t = 0.0)]
    label_smoothing: f32,
    /// Timed iterations; the medians are reported
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    iters: u32,
    /// Untimed iterations first (at least this many)
    #[arg(long, default_value_t = 3)]
    warmup: u32,
    /// Untimed iterations go on for at least this long (ms): on a 2-core
    /// VM, 65,536x10 calls on the CPU took 1.9x as long for the first 50 or
    /// so (about 25 ms) as after
    #[arg(long, value_name = "MS", default_value_t = 200)]
    warmup_ms: u32,
    /// GPU kernel choice
    #[arg(long, value_enum, default_value_t = BenchKernel::Auto)]
    kernel: BenchKernel,
    /// Rows each workgroup walks instead of the planner's choice (GPU;
    /// capped by the loop-trip budget)
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(u32).range(1..))]
    rows_per_group: Option<u32>,
    /// The subgroup kernel's workgroup size (its override constant; a power
    /// of two from 32 to 1024)
    #[arg(long, value_name = "N")]
    workgroup_size: Option<u32>,
    /// The narrow kernel's workgroup size (its override constant; a power
    /// of two from 32 to 1024)
    #[arg(long, value_name = "N")]
    narrow_workgroup_size: Option<u32>,
    /// The wide kernels' workgroup size (their override constant; a power
    /// of two from 32 to 1024)
    #[arg(long, value_name = "N")]
    wide_workgroup_size: Option<u32>,
    /// Runs to cut each row into (GPU; 1 never splits; default: split only
    /// rows too few to fill the device, and on a CPU-type adapter plain rows
    /// longer than 2,048 classes into runs of at most 2,048)
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u32).range(1..))]
    row_segments: Option<u32>,
    /// Read f32 rows as vec4s in the subgroup kernel, and on a CPU-type
    /// adapter take plain rows a row (or a run of up to 2,048 classes) per
    /// invocation with vec4 loads (GPU; default: true wherever the device
    /// allows the extra binding)
    #[arg(long, value_name = "BOOL")]
    vector_loads: Option<bool>,
    /// With --grad: compute the gradient from one read of the logits where
    /// the row fits (true) or always from two (false) (GPU; default: one
    /// read for wide rows on a CPU-type adapter, two elsewhere)
    #[arg(long, value_name = "BOOL")]
    single_read: Option<bool>,
    /// With --grad: write the gradient over the uploaded logits (GPU)
    #[arg(long)]
    gradient_in_place: bool,
    /// Share the subgroup kernel's row finishing across its lanes (GPU;
    /// default: on CPU-type adapters only)
    #[arg(long, value_name = "BOOL")]
    shared_row_finish: Option<bool>,
    /// Build each kernel for the call's options, compiling out the others
    /// (GPU; default: on CPU-type adapters only)
    #[arg(long, value_name = "BOOL")]
    specialize_flags: Option<bool>,
    /// The load-only kernel's access pattern (GPU; default: runs on
    /// CPU-type adapters, strided elsewhere)
    #[arg(long, value_enum)]
    load_pattern: Option<BenchLoadPattern>,
    /// Print one JSON object
    #[arg(long)]
    json: bool,
}

/// Splitmix64: synthetic data that needs no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// Median read bandwidth of all threads over a buffer far larger than the
/// caches.
fn memory_read_gbps(rounds: u32) -> f64 {
    const BYTES: usize = 512 << 20;
    let data = vec![1u64; BYTES / 8];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let part = data.len().div_ceil(threads);
    let mut samples = Vec::new();
    for _ in 0..rounds.max(3) {
        let start = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = data
                .chunks(part)
                .map(|chunk| {
                    s.spawn(move || {
                        // Four independent sums keep several loads in flight.
                        let mut acc = [0u64; 4];
                        for quad in chunk.chunks_exact(4) {
                            for (a, &x) in acc.iter_mut().zip(quad) {
                                *a = a.wrapping_add(x);
                            }
                        }
                        acc.iter().fold(0u64, |a, &b| a.wrapping_add(b))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        samples.push(start.elapsed());
        std::hint::black_box(total);
    }
    gbps(BYTES as u64, median(samples))
}

struct Report {
    kernel_name: Option<String>,
    backend: &'static str,
    adapter: String,
    kernel: Option<Duration>,
    end_to_end: Duration,
    roofline: Option<Duration>,
    exp_floor: Option<Duration>,
    copy: Option<Duration>,
    round_trip: Option<Duration>,
    memory_read_gbps: Option<f64>,
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    let (b, c) = (args.batch as usize, args.classes as usize);
    let cells = b
        .checked_mul(c)
        .filter(|&n| n <= (1 << 31))
        .ok_or_else(|| {
            Error::InvalidArgument(format!("--batch {b} x --classes {c} is too large to bench"))
        })?;
    let mut rng = Rng(0x5eed);
    let logits: Vec<f32> = (0..cells)
        .map(|_| ((rng.next() >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0)
        .collect();
    let labels: Vec<i32> = (0..b).map(|_| (rng.next() % c as u64) as i32).collect();
    let batch = Batch::with_labels(&logits, c, &labels);
    let mut spec = CrossEntropy::new()
        .with_reduction(Reduction::Mean)
        .with_gradient(args.grad);
    if args.label_smoothing != 0.0 {
        spec = spec.with_label_smoothing(args.label_smoothing);
    }
    let logit_bytes = (cells * 4) as u64;
    let model_bytes = logit_bytes * if args.grad { 2 } else { 1 } + b as u64 * 12;

    let report = match args.backend {
        BenchBackend::Gpu => bench_gpu(args, &spec, &batch)?,
        BenchBackend::Cpu => {
            let engine = Engine::cpu();
            let time = time_calls(args, || engine.compute_blocking(&spec, &batch).map(drop))?;
            cpu_report("cpu", engine.adapter().to_string(), time, args.iters)
        }
        BenchBackend::Reference => {
            let time = time_calls(args, || reference::compute(&spec, &batch).map(drop))?;
            cpu_report("reference", "cpu (f64 reference)".into(), time, args.iters)
        }
    };

    let kernel_gbps = report.kernel.map(|k| gbps(model_bytes, k));
    let e2e_gbps = gbps(model_bytes, report.end_to_end);
    if args.json {
        let mut json = serde_json::json!({
            "backend": report.backend,
            "adapter": report.adapter,
            "batch": b,
            "classes": c,
            "grad": args.grad,
            "label_smoothing": args.label_smoothing,
            "iters": args.iters,
            "model_bytes": model_bytes,
            "kernel_ms": report.kernel.map(ms),
            "end_to_end_ms": ms(report.end_to_end),
            "kernel_gbps": kernel_gbps,
            "end_to_end_gbps": e2e_gbps,
        });
        let object = json.as_object_mut().expect("a JSON object");
        if args.backend == BenchBackend::Gpu {
            let roofline = report.roofline.map(|t| gbps(logit_bytes, t));
            object.insert("roofline_gbps".into(), roofline.into());
            let copy = report.copy.map(|t| gbps(2 * logit_bytes, t));
            object.insert("copy_gbps".into(), copy.into());
            object.insert("round_trip_ms".into(), report.round_trip.map(ms).into());
            let ratio = report
                .round_trip
                .map(|r| report.end_to_end.as_secs_f64() / r.as_secs_f64());
            object.insert("overhead_ratio".into(), ratio.into());
            let fraction = kernel_gbps.zip(roofline).map(|(k, r)| k / r);
            object.insert("kernel_over_roofline".into(), fraction.into());
            let exp_floor = report.exp_floor.map(|t| gbps(logit_bytes, t));
            object.insert("exp_floor_gbps".into(), exp_floor.into());
            let fraction = kernel_gbps.zip(exp_floor).map(|(k, r)| k / r);
            object.insert("kernel_over_exp_floor".into(), fraction.into());
            object.insert("kernel".into(), report.kernel_name.clone().into());
        } else {
            object.insert("memory_read_gbps".into(), report.memory_read_gbps.into());
        }
        return print_stdout(&format!("{json}\n"));
    }
    let mut text = format!(
        "backend          {}{}\nadapter          {}\nshape            {b} x {c}{}{}\nmodel bytes      {model_bytes}\n",
        report.backend,
        report
            .kernel_name
            .as_ref()
            .map_or(String::new(), |k| format!(" ({k} kernel)")),
        report.adapter,
        if args.grad { " (with gradient)" } else { "" },
        if args.label_smoothing != 0.0 {
            format!(" (label smoothing {})", args.label_smoothing)
        } else {
            String::new()
        },
    );
    let line = |name: &str, t: Option<Duration>, bytes: u64| match t {
        Some(t) => format!(
            "{name:<16} {:>10.4} ms  {:>8.3} GB/s\n",
            ms(t),
            gbps(bytes, t)
        ),
        None => format!("{name:<16} unavailable (no timestamp queries)\n"),
    };
    text += &line("kernel", report.kernel, model_bytes);
    text += &line("end to end", Some(report.end_to_end), model_bytes);
    if args.backend == BenchBackend::Gpu {
        let roofline_time = report.roofline;
        text += &line("load-only", roofline_time, logit_bytes);
        text += &line("load + exp", report.exp_floor, logit_bytes);
        text += &line("copy (r+w)", report.copy, 2 * logit_bytes);
        if let Some(r) = report.round_trip {
            text += &format!(
                "round trip       {:>10.4} ms  (end to end is {:.2}x)\n",
                ms(r),
                report.end_to_end.as_secs_f64() / r.as_secs_f64()
            );
        }
    } else if let Some(m) = report.memory_read_gbps {
        text += &format!("memory read      {m:>22.3} GB/s\n");
    }
    text += &format!("(medians of {} iterations)\n", args.iters);
    print_stdout(&text)
}

fn time_calls(args: &BenchArgs, mut call: impl FnMut() -> Result<()>) -> Result<Vec<Duration>> {
    measure_calls(args, || {
        let start = Instant::now();
        call().map(|()| start.elapsed())
    })
}

/// Untimed calls: at least `args.warmup`, and on until `args.warmup_ms`
/// have passed.
fn warm_up(args: &BenchArgs, mut call: impl FnMut() -> Result<()>) -> Result<()> {
    let start = Instant::now();
    let least = Duration::from_millis(args.warmup_ms.into());
    let mut calls = 0;
    while calls < args.warmup || start.elapsed() < least {
        call()?;
        calls += 1;
    }
    Ok(())
}

/// [`warm_up`], then the times `args.iters` calls report.
fn measure_calls(
    args: &BenchArgs,
    mut call: impl FnMut() -> Result<Duration>,
) -> Result<Vec<Duration>> {
    warm_up(args, || call().map(drop))?;
    (0..args.iters).map(|_| call()).collect()
}

fn cpu_report(backend: &'static str, adapter: String, time: Vec<Duration>, iters: u32) -> Report {
    let end_to_end = median(time);
    Report {
        kernel_name: None,
        backend,
        adapter,
        kernel: Some(end_to_end),
        end_to_end,
        roofline: None,
        exp_floor: None,
        copy: None,
        round_trip: None,
        memory_read_gbps: Some(memory_read_gbps(iters.min(7))),
    }
}

fn bench_gpu(args: &BenchArgs, spec: &CrossEntropy, batch: &Batch<'_>) -> Result<Report> {
    let options = GpuOptions {
        kernel: match args.kernel {
            BenchKernel::Auto => None,
            BenchKernel::Wide => Some(KernelVariant::Wide),
            BenchKernel::Narrow => Some(KernelVariant::Narrow),
            BenchKernel::Subgroup => Some(KernelVariant::Subgroup),
        },
        rows_per_group: args.rows_per_group,
        subgroup_workgroup_size: args.workgroup_size,
        narrow_workgroup_size: args.narrow_workgroup_size,
        wide_workgroup_size: args.wide_workgroup_size,
        row_segments: args.row_segments,
        vector_loads: args.vector_loads,
        single_read: args.single_read,
        gradient_in_place: args.gradient_in_place,
        shared_row_finish: args.shared_row_finish,
        specialize_flags: args.specialize_flags,
        ..Default::default()
    };
    // End-to-end times come from a context without timestamp queries (as
    // a caller's is by default: resolving them costs a call time of its
    // own), kernel times from a second one with them, each in a loop of its
    // own: on an H200, 32x10 calls that alternated between the two devices
    // took 2-3 times as long end to end (0.31-0.32 ms against 0.105-0.155).
    let plain = GpuContext::new_blocking(options.clone())?;
    let end_to_end = measure_calls(args, || {
        let start = Instant::now();
        plain.compute_blocking(spec, batch)?;
        Ok(start.elapsed())
    })?;
    drop(plain);
    let context = GpuContext::new_blocking(GpuOptions {
        timestamps: true,
        ..options
    })?;
    warm_up(args, || context.compute_blocking(spec, batch).map(drop))?;
    let mut kernel = Vec::new();
    for _ in 0..args.iters {
        context.compute_blocking(spec, batch)?;
        kernel.extend(context.last_kernel_time());
    }
    let roofline = Roofline::new(&context)?;
    let logit_bytes = (batch.logits.len() * 4) as u64;
    let fits = logit_bytes <= roofline.max_bytes();
    let mut load = Vec::new();
    let mut exp_floor = Vec::new();
    let mut copy = Vec::new();
    let upload: Vec<u8> = bytemuck_bytes(batch);
    // The losses and one 56-byte partial.
    let readback = batch.batch as u64 * 4 + 56;
    // The bandwidth kernels run back to back, apart from the round trips:
    // on an H200, load-only kernels that each followed a round trip of
    // 16-268 MB measured 1.1-1.45x slower than back to back.
    if fits {
        let pattern = match args.load_pattern {
            None => roofline.default_pattern(),
            Some(BenchLoadPattern::Strided) => LoadPattern::Strided,
            Some(BenchLoadPattern::Runs) => LoadPattern::Runs,
        };
        let bandwidths = || {
            Ok((
                roofline.load_with(logit_bytes, pattern)?,
                roofline.exp_floor_with(logit_bytes, pattern)?,
                roofline.copy(logit_bytes)?,
            ))
        };
        warm_up(args, || bandwidths().map(drop))?;
        let time = |t: fused_loss::gpu::Timing| t.kernel.unwrap_or(t.wall);
        for _ in 0..args.iters {
            let (l, e, c) = bandwidths()?;
            load.push(time(l));
            exp_floor.push(time(e));
            copy.push(time(c));
        }
    }
    let trip = measure_calls(args, || roofline.round_trip(&upload, readback))?;
    let some_median = |v: Vec<Duration>| (!v.is_empty()).then(|| median(v));
    Ok(Report {
        kernel_name: Some(
            format!("{:?}", context.kernel_for_spec(spec, batch.classes)).to_lowercase(),
        ),
        backend: "gpu",
        adapter: context.adapter().to_string(),
        kernel: some_median(kernel),
        end_to_end: median(end_to_end),
        roofline: some_median(load),
        exp_floor: some_median(exp_floor),
        copy: some_median(copy),
        round_trip: some_median(trip),
        memory_read_gbps: None,
    })
}

/// The bytes a call uploads: the logits, then the labels.
fn bytemuck_bytes(batch: &Batch<'_>) -> Vec<u8> {
    let mut bytes: Vec<u8> = batch.logits.iter().flat_map(|x| x.to_le_bytes()).collect();
    if let fused_loss::Targets::Labels(labels) = batch.targets {
        bytes.extend(labels.iter().flat_map(|l| l.to_le_bytes()));
    }
    bytes
}
