//! The `fused-loss` command line: a demo on an embedded set with flipped
//! labels, `compute` on `.npy` files, and `audit` (diagnostics streamed over
//! `.npy` files, in `fused-loss/audit.rs`). Thin over the library; every
//! error is one `error:` line on stderr and exit status 2.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::builder::PossibleValue;
use clap::{Args, Parser, Subcommand, ValueEnum};
use fused_loss::{
    Batch, CrossEntropy, Engine, Error, GradientDtype, InputKind, LogitElement, LossOutput,
    Reduction, Result, Targets,
};
use npyz::{DType, NpyFile, Order, TypeChar, WriterBuilder};

const AFTER_HELP: &str = "\
Without a subcommand, `fused-loss` runs `demo`.

Exit status: 0 on success; 2 on any error (bad arguments, unreadable or \
malformed .npy files, invalid input, no GPU adapter when one is demanded), \
with one line starting with `error:` on stderr.

Environment: FUSED_LOSS_REQUIRE_GPU=1 makes `--backend auto` an error instead \
of a fallback to the CPU when no GPU adapter works. WGPU_BACKEND, \
WGPU_ADAPTER_NAME and WGPU_POWER_PREF choose the adapter.";

/// Fused per-example cross-entropy and its reductions, on a wgpu adapter, on
/// the CPU (SIMD, all cores) or with the f64 reference.
#[derive(Parser, Debug)]
#[command(name = "fused-loss", version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Find flipped labels in an embedded 2000 x 10 set with per-example
    /// losses, and check the losses against the f64 CPU reference (the
    /// default command)
    Demo(DemoArgs),
    /// Compute the cross-entropy of .npy inputs
    #[command(after_help = COMPUTE_AFTER_HELP)]
    Compute(ComputeArgs),
    /// Stream .npy inputs in chunks: loss, average_loss, a histogram of the
    /// per-example losses, the most suspicious rows, per_example.npy,
    /// suspects.csv and TensorBoard summaries
    #[command(after_help = audit::AUDIT_AFTER_HELP)]
    Audit(audit::AuditArgs),
    /// Time the loss on synthetic data: kernel and end-to-end medians as
    /// GB/s, next to the adapter's load-only and copy bandwidth
    #[command(after_help = bench::BENCH_AFTER_HELP)]
    Bench(bench::BenchArgs),
}

#[path = "fused-loss/audit.rs"]
mod audit;
#[path = "fused-loss/bench.rs"]
mod bench;
#[path = "fused-loss/demo.rs"]
mod demo;

const COMPUTE_AFTER_HELP: &str = "\
Inputs are .npy files. Logits, targets and weights: float16, float32 or \
float64, any byte order; float16 logits are computed on as float16 (read as \
stored on the GPU, accumulated in float32), everything else is converted to \
float32. Labels: any integer dtype \
(int8 to int64, uint8 to uint64); a label that does not fit a 32-bit signed \
integer is reported as out of range. 2-D arrays must be in C order (a 1-D \
array is the same in either order). Shapes: logits and targets [B, C], \
labels and sample weights [B], class weights [C].

Output: `loss` is the chosen reduction (the sum for `none`); `average_loss` \
is sum / (sum of the sample weights of the rows not ignored); then the \
stats: sum, weight_sum, count (rows not ignored), nonzero_count (of those, \
rows with a nonzero sample weight), batch and nonfinite_rows. A zero \
denominator gives 0.

Exit status: 0 on success, 2 on any error; on error no output file is \
written.";

#[derive(Args, Debug)]
struct DemoArgs {
    /// Where to compute
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
}

/// The loss options `compute` and `audit` share.
#[derive(Args, Debug)]
pub(crate) struct LossOptions {
    /// The input holds probabilities, not logits: each row is renormalised and
    /// clipped to [1e-7, 1 - 1e-7] before the log (Keras from_logits=False)
    #[arg(long)]
    probabilities: bool,

    /// Per-class weights, [C], >= 0
    #[arg(long, value_name = "W.npy")]
    class_weights: Option<PathBuf>,

    /// Per-example weights, [B], >= 0
    #[arg(long, value_name = "S.npy")]
    sample_weights: Option<PathBuf>,

    /// Rows with this label are ignored: loss 0, not counted, not ranked by
    /// audit; an error with dense targets
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    ignore_index: Option<i32>,

    /// Label smoothing epsilon, in [0, 1]
    #[arg(long, value_name = "E", default_value_t = 0.0)]
    label_smoothing: f32,

    /// The reduction reported as `loss`
    #[arg(long, value_enum, default_value_t = ReductionArg(Reduction::Mean))]
    reduction: ReductionArg,

    /// Make a NaN or infinite per-example loss an error naming its first row
    #[arg(long)]
    check_finite: bool,

    /// z-loss coefficient: adds s_n * Z * lse_n^2 to every row that is not
    /// ignored (logits only)
    #[arg(
        long,
        value_name = "Z",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    z_loss: f32,

    /// Soft-cap the logits, x <- S * tanh(x / S), before the softmax (logits only)
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    softcap: Option<f32>,
}

impl LossOptions {
    /// The spec these options describe, with the class weights read from
    /// their file (C values).
    pub(crate) fn spec(&self, classes: usize) -> Result<CrossEntropy> {
        let mut spec = CrossEntropy::new()
            .with_reduction(self.reduction.0)
            .with_label_smoothing(self.label_smoothing)
            .with_check_finite(self.check_finite)
            .with_z_loss(self.z_loss);
        if let Some(cap) = self.softcap {
            spec = spec.with_softcap(cap);
        }
        if self.probabilities {
            spec = spec.with_input(InputKind::Probabilities);
        }
        if let Some(index) = self.ignore_index {
            spec = spec.with_ignore_index(index);
        }
        if let Some(path) = &self.class_weights {
            let weights = read_floats(path)?;
            check_1d(path, "class weights", &weights.shape, classes)?;
            spec = spec.with_class_weights(weights.data);
        }
        Ok(spec)
    }
}

#[derive(Args, Debug)]
struct ComputeArgs {
    /// Logits (or probabilities with --probabilities), [B, C], float16, float32 or float64; required
    #[arg(long, value_name = "X.npy")]
    logits: PathBuf,

    /// Integer class labels, [B], any integer dtype
    #[arg(
        long,
        value_name = "Y.npy",
        conflicts_with = "targets",
        required_unless_present = "targets"
    )]
    labels: Option<PathBuf>,

    /// Dense one-hot or soft targets, [B, C], float16, float32 or float64; not renormalised
    #[arg(long, value_name = "T.npy")]
    targets: Option<PathBuf>,

    #[command(flatten)]
    loss: LossOptions,

    /// Where to compute
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,

    /// Write the per-example losses here as a float32 [B] .npy (only when the
    /// computation succeeds)
    #[arg(long, value_name = "L.npy")]
    per_example_out: Option<PathBuf>,

    /// Write the gradient of the reduced loss with respect to the logits here
    /// as a [B, C] .npy (float32, or see --grad-dtype); with `--reduction
    /// none` it is the gradient of the sum, i.e. each row's per-example
    /// gradient (logits only)
    #[arg(long, value_name = "G.npy")]
    grad_out: Option<PathBuf>,

    /// The dtype of --grad-out: float32, or `input`: float16 for float16
    /// logits (each element rounded to nearest), float32 otherwise
    #[arg(long, value_enum, default_value_t = GradDtypeArg::Float32)]
    grad_dtype: GradDtypeArg,

    /// Print one JSON object on stdout (non-finite numbers as null)
    #[arg(long)]
    json: bool,
}

/// The dtype of the written gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum GradDtypeArg {
    /// float32
    Float32,
    /// The logits' dtype where they are computed on as it (float16)
    Input,
}

/// Where to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    /// The GPU when an adapter works, else the fast CPU path (with a note on
    /// stderr)
    Auto,
    /// The GPU; no adapter is an error
    Gpu,
    /// The fast CPU path: f32 SIMD (AVX2+FMA when the CPU has it) on every core
    Cpu,
    /// The f64 reference on the CPU: single-threaded and slow, the oracle
    Reference,
}

/// A [`Reduction`] named as the library names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ReductionArg(Reduction);

impl ValueEnum for ReductionArg {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            ReductionArg(Reduction::None),
            ReductionArg(Reduction::Sum),
            ReductionArg(Reduction::Mean),
            ReductionArg(Reduction::SumOverBatchSize),
            ReductionArg(Reduction::SumByNonzeroWeights),
        ]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        let help = match self.0 {
            Reduction::None => "No reduction; `loss` reports the sum",
            Reduction::Sum => "The sum of the per-example losses",
            Reduction::Mean => {
                "The sum / the sum of the example weights (s_n * w_{y_n} for labels, s_n for targets)"
            }
            Reduction::SumOverBatchSize => "The sum / the number of rows not ignored",
            Reduction::SumByNonzeroWeights => {
                "The sum / the number of rows not ignored with a nonzero sample weight"
            }
        };
        Some(PossibleValue::new(self.0.name()).help(help))
    }
}

impl std::fmt::Display for ReductionArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime_dir = quiet_wsi_warning();
    let result = match cli.command {
        None => demo::demo(&DemoArgs {
            backend: BackendArg::Auto,
        }),
        Some(Command::Demo(args)) => demo::demo(&args),
        Some(Command::Compute(args)) => compute(&args),
        Some(Command::Audit(args)) => audit::audit(&args),
        Some(Command::Bench(args)) => bench::bench(&args),
    };
    if let Some(dir) = runtime_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the message holds.
            let _ = writeln!(io::stderr(), "error: {}", one_line(&e.to_string()));
            ExitCode::from(2)
        }
    }
}

/// Mesa's window-system code prints `error: XDG_RUNTIME_DIR is invalid or
/// not set` while adapters are enumerated, which would read like our own
/// error line. When the variable is unset, point it at a private directory
/// (still single-threaded here, so changing the environment is sound), and
/// return it so that `main` removes it at the end.
fn quiet_wsi_warning() -> Option<PathBuf> {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return None;
    }
    let dir = std::env::temp_dir().join(format!("fused-loss-runtime-{}", std::process::id()));
    #[cfg(unix)]
    let created = {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(&dir).is_ok()
    };
    #[cfg(not(unix))]
    let created = false;
    if !created {
        return None;
    }
    std::env::set_var("XDG_RUNTIME_DIR", &dir);
    Some(dir)
}

/// Joins a possibly multi-line message into one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn open_engine(backend: BackendArg) -> Result<Engine> {
    match backend {
        BackendArg::Auto => Engine::auto_blocking(),
        BackendArg::Gpu => Engine::gpu_blocking(),
        BackendArg::Cpu => Ok(Engine::cpu()),
        BackendArg::Reference => Ok(Engine::reference()),
    }
}

/// When `auto` fell back to the CPU, says why in one `note:` line on stderr.
/// Checks the batch on the host, then opens the engine and computes.
fn run_compute<T: LogitElement>(
    backend: BackendArg,
    spec: &CrossEntropy,
    logits: &[T],
    batch: usize,
    classes: usize,
    targets: Targets<'_>,
    sample_weights: Option<&[f32]>,
) -> Result<(Engine, LossOutput)> {
    let batch = Batch {
        logits,
        batch,
        classes,
        targets,
        sample_weights,
    };
    batch.validate(spec)?;
    let engine = open_engine(backend)?;
    note_fallback(&engine);
    let out = engine.compute_blocking(spec, &batch)?;
    Ok((engine, out))
}

fn note_fallback(engine: &Engine) {
    if let Some(reason) = engine.fallback_reason() {
        let _ = writeln!(
            io::stderr(),
            "note: computing on the cpu: {}",
            one_line(reason)
        );
    }
}

fn print_stdout(text: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|source| Error::Io {
            path: PathBuf::from("<stdout>"),
            source,
        })
}

// ---------------------------------------------------------------------------
// demo (in fused-loss/demo.rs) and compute

fn write_stats(t: &mut String, out: &LossOutput) {
    let s = &out.stats;
    let _ = writeln!(t, "sum            {}", s.sum);
    let _ = writeln!(t, "weight_sum     {}", s.weight_sum);
    let _ = writeln!(t, "count          {}", s.count);
    let _ = writeln!(t, "nonzero_count  {}", s.nonzero_count);
    let _ = writeln!(t, "batch          {}", s.batch);
    let _ = writeln!(t, "nonfinite_rows {}", s.nonfinite_rows);
}

const FIRST_LOSSES: usize = 8;

fn write_first_losses(t: &mut String, losses: &[f32]) {
    let shown = losses.len().min(FIRST_LOSSES);
    let list = losses[..shown]
        .iter()
        .map(|l| format!("{l}"))
        .collect::<Vec<_>>()
        .join(" ");
    let _ = writeln!(
        t,
        "per-example    first {shown} of {}: [{list}]",
        losses.len()
    );
}

// ---------------------------------------------------------------------------
// compute

fn compute(args: &ComputeArgs) -> Result<()> {
    let logits = read_logits(&args.logits)?;
    let (batch_size, classes) = match logits.shape[..] {
        [b, c] => (b, c),
        _ => {
            return Err(npy_error(
                &args.logits,
                format!(
                    "logits must be a 2-D array [batch, classes], got shape {}",
                    shape_text(&logits.shape)
                ),
            ))
        }
    };

    let labels;
    let targets;
    let target_data = match (&args.labels, &args.targets) {
        (Some(path), None) => {
            let raw = read_ints(path)?;
            check_1d(path, "labels", &raw.shape, batch_size)?;
            labels = labels_to_i32(&raw.data, classes, args.loss.ignore_index)?;
            Targets::Labels(&labels)
        }
        (None, Some(path)) => {
            targets = read_floats(path)?;
            if targets.shape != logits.shape {
                return Err(npy_error(
                    path,
                    format!(
                        "targets have shape {}, the logits {}",
                        shape_text(&targets.shape),
                        shape_text(&logits.shape)
                    ),
                ));
            }
            Targets::Dense(&targets.data)
        }
        // clap enforces exactly one of the two.
        _ => {
            return Err(Error::InvalidArgument(
                "exactly one of --labels and --targets is required".into(),
            ))
        }
    };

    let spec = args
        .loss
        .spec(classes)?
        .with_gradient(args.grad_out.is_some())
        .with_gradient_dtype(match args.grad_dtype {
            GradDtypeArg::Float32 => GradientDtype::F32,
            GradDtypeArg::Input => GradientDtype::Input,
        });
    let sample_weights = match &args.loss.sample_weights {
        Some(path) => {
            let weights = read_floats(path)?;
            check_1d(path, "sample weights", &weights.shape, batch_size)?;
            Some(weights.data)
        }
        None => None,
    };

    let sample_weights = sample_weights.as_deref();
    // Check the host-side rules before opening an adapter.
    let (engine, out) = match &logits.data {
        Logits::F32(x) => run_compute(
            args.backend,
            &spec,
            x,
            batch_size,
            classes,
            target_data,
            sample_weights,
        )?,
        Logits::F16(x) => run_compute(
            args.backend,
            &spec,
            x,
            batch_size,
            classes,
            target_data,
            sample_weights,
        )?,
    };

    let mut outputs = Vec::new();
    if let Some(path) = &args.per_example_out {
        outputs.push((
            path.as_path(),
            vec![batch_size as u64],
            OutData::F32(&out.per_example),
        ));
    }
    if let (Some(path), Some(gradient)) = (&args.grad_out, &out.gradient) {
        let half_gradient =
            matches!(logits.data, Logits::F16(_)) && args.grad_dtype == GradDtypeArg::Input;
        let data = if half_gradient {
            // Exact: each value was rounded to float16 already.
            OutData::F16(gradient.iter().map(|&g| half::f16::from_f32(g)).collect())
        } else {
            OutData::F32(gradient)
        };
        outputs.push((
            path.as_path(),
            vec![batch_size as u64, classes as u64],
            data,
        ));
    }
    write_outputs(&outputs)?;

    let text = if args.json {
        let value = serde_json::json!({
            "backend": out.backend.name(),
            "adapter": engine.adapter(),
            "batch": out.stats.batch,
            "classes": classes,
            "reduction": out.reduction.name(),
            "loss": out.loss,
            "average_loss": out.average_loss,
            "sum": out.stats.sum,
            "weight_sum": out.stats.weight_sum,
            "count": out.stats.count,
            "nonzero_count": out.stats.nonzero_count,
            "nonfinite_rows": out.stats.nonfinite_rows,
        });
        format!("{value}\n")
    } else {
        let mut t = String::new();
        let _ = writeln!(t, "backend        {}", out.backend.name());
        let _ = writeln!(t, "adapter        {}", engine.adapter());
        let _ = writeln!(t, "batch          {}", out.stats.batch);
        let _ = writeln!(t, "classes        {classes}");
        let _ = writeln!(t, "reduction      {}", out.reduction.name());
        let _ = writeln!(t, "loss           {}", out.loss);
        let _ = writeln!(t, "average_loss   {}", out.average_loss);
        write_stats(&mut t, &out);
        write_first_losses(&mut t, &out.per_example);
        t
    };
    print_stdout(&text)
}

fn npy_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Npy {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn shape_text(shape: &[usize]) -> String {
    let dims = shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    format!("[{dims}]")
}

/// A 1-D array of the given length, else an error.
fn check_1d(path: &Path, what: &'static str, shape: &[usize], expected: usize) -> Result<()> {
    match shape {
        [len] if *len == expected => Ok(()),
        [len] => Err(Error::ShapeMismatch {
            what,
            expected,
            actual: *len,
        }),
        _ => Err(npy_error(
            path,
            format!(
                "{what} must be a 1-D array of length {expected}, got shape {}",
                shape_text(shape)
            ),
        )),
    }
}

/// Converts labels to i32; a value that does not fit is out of range. The
/// first offending row is reported, as the library would report it.
fn labels_to_i32(values: &[i64], classes: usize, ignore: Option<i32>) -> Result<Vec<i32>> {
    let mut labels = Vec::with_capacity(values.len());
    for (row, &value) in values.iter().enumerate() {
        match i32::try_from(value) {
            Ok(label) => labels.push(label),
            Err(_) => {
                let classes_i64 = i64::try_from(classes).unwrap_or(i64::MAX);
                let first = labels
                    .iter()
                    .position(|&y| Some(y) != ignore && !(0..classes_i64).contains(&i64::from(y)))
                    .unwrap_or(row);
                return Err(Error::LabelOutOfRange {
                    row: first,
                    label: values[first],
                    classes,
                });
            }
        }
    }
    Ok(labels)
}

/// A flat array and its shape.
struct Array<T> {
    shape: Vec<usize>,
    data: Vec<T>,
}

/// Opens a `.npy` file and checks what every input shares: a plain dtype, C
/// order for more than one dimension, a shape whose size fits, and enough
/// bytes in the file.
fn open_npy(path: &Path) -> Result<(NpyFile<BufReader<File>>, Vec<usize>, usize)> {
    let io_error = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_error)?;
    let file_len = file.metadata().map_err(io_error)?.len();
    let reader = BufReader::new(file);

    // npyz multiplies the header's dimensions unchecked, which panics on
    // overflow in debug builds; keep such a header from panicking.
    let previous_hook = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    let parsed = panic::catch_unwind(AssertUnwindSafe(|| NpyFile::new(reader)));
    panic::set_hook(previous_hook);
    let npy = match parsed {
        Ok(Ok(npy)) => npy,
        Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
            return Err(npy_error(path, format!("not a valid .npy file: {e}")))
        }
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(npy_error(path, "not a valid .npy file: truncated header"))
        }
        Ok(Err(e)) => return Err(io_error(e)),
        Err(_) => {
            return Err(npy_error(
                path,
                "not a valid .npy file: the shape's size overflows",
            ))
        }
    };

    let header = npy.header();
    let shape = header
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<Vec<usize>>>();
    let len = shape
        .as_ref()
        .and_then(|s| s.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)));
    let (Some(shape), Some(len)) = (shape, len) else {
        return Err(npy_error(
            path,
            format!(
                "shape {:?} is too large for this machine",
                header.shape().to_vec()
            ),
        ));
    };
    let dtype = header.dtype();
    let item_size = match &dtype {
        DType::Plain(ts) if !ts.uses_pickled_array() => ts.num_bytes().unwrap_or(0),
        _ => 0,
    };
    if item_size == 0 {
        return Err(npy_error(
            path,
            format!("unsupported dtype {}", dtype_text(&dtype)),
        ));
    }
    if header.order() == Order::Fortran && shape.len() > 1 {
        return Err(npy_error(
            path,
            format!(
                "Fortran-order array of shape {}; only C order is supported (numpy.ascontiguousarray)",
                shape_text(&shape)
            ),
        ));
    }
    // A cheap bound before allocating; `read_as` finds the exact end.
    let data_bytes = (len as u128) * (item_size as u128);
    if data_bytes > u128::from(file_len) {
        return Err(npy_error(
            path,
            format!(
                "truncated: shape {} needs {data_bytes} bytes of data, the whole file has {file_len}",
                shape_text(&shape)
            ),
        ));
    }
    Ok((npy, shape, len))
}

/// Reads all `len` elements as `T` and converts each.
fn read_as<T, U, R>(
    path: &Path,
    npy: NpyFile<R>,
    len: usize,
    mut convert: impl FnMut(usize, T) -> Result<U>,
) -> Result<Vec<U>>
where
    T: npyz::Deserialize,
    R: Read,
{
    let reader = npy
        .data::<T>()
        .map_err(|e| npy_error(path, format!("cannot read the data: {e}")))?;
    let mut out = Vec::with_capacity(len);
    for (i, value) in reader.enumerate() {
        let value = value.map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => npy_error(
                path,
                format!("truncated: the data ends after {i} of {len} elements"),
            ),
            io::ErrorKind::InvalidData => npy_error(path, format!("invalid data: {e}")),
            _ => Error::Io {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
        out.push(convert(i, value)?);
    }
    if out.len() != len {
        return Err(npy_error(
            path,
            format!("truncated: {} of {len} elements", out.len()),
        ));
    }
    Ok(out)
}

/// The dtype as numpy spells it, e.g. `<f4` or `[('a', '<f4'), ]`.
fn dtype_text(dtype: &DType) -> String {
    match dtype {
        DType::Plain(ts) => ts.to_string(),
        other => other.descr(),
    }
}

/// Logits as the GPU reads them: float16 kept, anything else as f32.
enum Logits {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
}

/// Logits and their shape.
struct LogitsArray {
    shape: Vec<usize>,
    data: Logits,
}

/// Reads float16 logits as they are, float32 and float64 as f32.
fn read_logits(path: &Path) -> Result<LogitsArray> {
    let (npy, shape, len) = open_npy(path)?;
    match npy.header().dtype() {
        DType::Plain(ts) if ts.type_char() == TypeChar::Float && ts.size_field() == 2 => {
            let data = read_as::<half::f16, _, _>(path, npy, len, |_, x| Ok(x))?;
            Ok(LogitsArray {
                shape,
                data: Logits::F16(data),
            })
        }
        _ => {
            let floats = read_floats(path)?;
            Ok(LogitsArray {
                shape: floats.shape,
                data: Logits::F32(floats.data),
            })
        }
    }
}

/// Reads a float16, float32 or float64 array as f32.
fn read_floats(path: &Path) -> Result<Array<f32>> {
    let (npy, shape, len) = open_npy(path)?;
    let dtype = npy.header().dtype();
    let data = match &dtype {
        DType::Plain(ts) if ts.type_char() == TypeChar::Float && ts.size_field() == 4 => {
            read_as::<f32, _, _>(path, npy, len, |_, x| Ok(x))?
        }
        DType::Plain(ts) if ts.type_char() == TypeChar::Float && ts.size_field() == 8 => {
            read_as::<f64, _, _>(path, npy, len, |_, x| Ok(x as f32))?
        }
        DType::Plain(ts) if ts.type_char() == TypeChar::Float && ts.size_field() == 2 => {
            read_as::<half::f16, _, _>(path, npy, len, |_, x| Ok(x.to_f32()))?
        }
        _ => {
            return Err(npy_error(
                path,
                format!(
                    "unsupported dtype {}; expected float16, float32 or float64",
                    dtype_text(&dtype)
                ),
            ))
        }
    };
    Ok(Array { shape, data })
}

/// Reads an integer array of any width and signedness as i64.
fn read_ints(path: &Path) -> Result<Array<i64>> {
    let (npy, shape, len) = open_npy(path)?;
    let dtype = npy.header().dtype();
    let kind = match &dtype {
        DType::Plain(ts) => Some((ts.type_char(), ts.size_field())),
        _ => None,
    };
    let data = match kind {
        Some((TypeChar::Int, 1)) => read_as::<i8, _, _>(path, npy, len, |_, x| Ok(x.into()))?,
        Some((TypeChar::Int, 2)) => read_as::<i16, _, _>(path, npy, len, |_, x| Ok(x.into()))?,
        Some((TypeChar::Int, 4)) => read_as::<i32, _, _>(path, npy, len, |_, x| Ok(x.into()))?,
        Some((TypeChar::Int, 8)) => read_as::<i64, _, _>(path, npy, len, |_, x| Ok(x))?,
        Some((TypeChar::Uint, 1)) => read_as::<u8, _, _>(path, npy, len, |_, x| Ok(x.into()))?,
        Some((TypeChar::Uint, 2)) => read_as::<u16, _, _>(path, npy, len, |_, x| Ok(x.into()))?,
        Some((TypeChar::Uint, 4)) => read_as::<u32, _, _>(path, npy, len, |_, x| Ok(x.into()))?,
        Some((TypeChar::Uint, 8)) => read_as::<u64, _, _>(path, npy, len, |row, x| {
            i64::try_from(x).map_err(|_| {
                npy_error(
                    path,
                    format!("label out of range at row {row}: label {x} does not fit a 64-bit signed integer"),
                )
            })
        })?,
        _ => {
            return Err(npy_error(
                path,
                format!(
                "unsupported dtype {}; expected an integer dtype (int8 to int64, uint8 to uint64)",
                dtype_text(&dtype)
            ),
            ))
        }
    };
    Ok(Array { shape, data })
}

/// The data of one output file.
enum OutData<'a> {
    F32(&'a [f32]),
    F16(Vec<half::f16>),
}

/// Writes float32 or float16 `.npy` files: each goes to a temporary file
/// beside its path first, and only when every one is written are they
/// renamed into place, so that a failure leaves no output file.
fn write_outputs(outputs: &[(&Path, Vec<u64>, OutData<'_>)]) -> Result<()> {
    let mut temps: Vec<(PathBuf, &Path)> = Vec::new();
    let cleanup = |temps: &[(PathBuf, &Path)]| {
        for (temp, _) in temps {
            let _ = std::fs::remove_file(temp);
        }
    };
    for (path, shape, data) in outputs {
        let written = match data {
            OutData::F32(data) => write_temp_npy(path, shape, data),
            OutData::F16(data) => write_temp_npy(path, shape, data),
        };
        match written {
            Ok(temp) => temps.push((temp, path)),
            Err(e) => {
                cleanup(&temps);
                return Err(e);
            }
        }
    }
    for (i, (temp, path)) in temps.iter().enumerate() {
        if let Err(source) = std::fs::rename(temp, path) {
            cleanup(&temps[i..]);
            return Err(Error::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    Ok(())
}

/// Writes one array to a new temporary file beside `path`.
fn write_temp_npy<T: npyz::AutoSerialize + Copy>(
    path: &Path,
    shape: &[u64],
    data: &[T],
) -> Result<PathBuf> {
    let io_error = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::with_capacity(128 + std::mem::size_of_val(data));
    {
        let mut writer = npyz::WriteOptions::<T>::new()
            .default_dtype()
            .shape(shape)
            .writer(&mut bytes)
            .begin_nd()
            .map_err(io_error)?;
        writer.extend(data.iter().copied()).map_err(io_error)?;
        writer.finish().map_err(io_error)?;
    }

    let name = path
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("{}: not a file name", path.display())))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = dir.join(temp_name);

    let written = File::options()
        .write(true)
        .create_new(true)
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(&bytes)?;
            file.sync_all()
        });
    if let Err(source) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(io_error(source));
    }
    Ok(temp)
}
