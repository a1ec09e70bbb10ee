//! `fused-loss audit`: streams `.npy` inputs in chunks of rows and reports
//! the loss, a histogram, and the rows most likely mislabeled.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use fused_loss::diagnostics::{
    BinScale, Diagnostics, Histogram, HistogramSpec, Ranked, RowScore, Scorer, NO_CLASS,
};
use fused_loss::tensorboard::EventWriter;
use fused_loss::{Batch, CrossEntropy, Engine, Error, LossStats, Result, Targets};
use npyz::{DType, TypeChar, WriterBuilder};

use super::{
    check_1d, dtype_text, labels_to_i32, note_fallback, npy_error, open_engine, open_npy,
    print_stdout, shape_text, BackendArg, LossOptions,
};

pub(crate) const AUDIT_AFTER_HELP: &str = "\
Streams the inputs in chunks of --chunk-rows rows and never holds more than \
one chunk of logits. Pass 1 computes the losses, the label-quality scores and \
the top-K rows and writes the per-example losses; pass 2 reads those losses \
back (not the logits) to fill the histogram, so that its automatic range is \
the global [min, max] and the result does not depend on --chunk-rows.

Histogram: numpy.histogram's bins, [e_i, e_(i+1)) with the last bin closed. \
Automatic range: linear [min, max] of the finite losses of the rows not \
ignored ([v - 0.5, v + 0.5] when they are equal, [0, 1] when there is none); \
log [smallest positive, max]. Ignored rows, non-finite losses and losses \
outside --range are left out and counted.

Top K: the largest finite losses of the rows not ignored, by loss descending \
then row ascending, with the label, the predicted class (argmax of the row), \
the loss, the self-confidence p_y and the margin p_y - max_(k != y) p_k \
(of the soft-capped logits with --softcap).

Files in --out-dir: per_example.npy (float32 [B]) and suspects.csv (a header, \
then the top K rows). --tensorboard DIR writes an events.out.tfevents.* file \
with the scalars loss and average_loss and the histogram loss_per_example at \
--step.

Exit status: 0 on success, 2 on any error; on error no output file is \
written.";

#[derive(Args, Debug)]
pub(crate) struct AuditArgs {
    /// Logits (or probabilities with --probabilities), [B, C], float16, float32 or float64
    #[arg(long, value_name = "X.npy")]
    logits: PathBuf,

    /// Integer class labels, [B], any integer dtype
    #[arg(long, value_name = "Y.npy")]
    labels: PathBuf,

    #[command(flatten)]
    loss: LossOptions,

    /// How many of the largest losses to list
    #[arg(long, value_name = "K", default_value_t = 10)]
    top: usize,

    /// Histogram bins
    #[arg(long, value_name = "N", default_value_t = 20)]
    bins: usize,

    /// Histogram bin spacing
    #[arg(long, value_enum, default_value_t = ScaleArg::Linear)]
    scale: ScaleArg,

    /// A fixed histogram range, e.g. `0,10` (default: automatic)
    #[arg(long, value_name = "LO,HI", value_parser = parse_range)]
    range: Option<(f64, f64)>,

    /// Rows per chunk (default: as many as fit 32 MiB of logits)
    #[arg(long, value_name = "R")]
    chunk_rows: Option<usize>,

    /// Write per_example.npy and suspects.csv here (created if missing)
    #[arg(long, value_name = "D")]
    out_dir: Option<PathBuf>,

    /// Write a TensorBoard event file into this log directory
    #[arg(long, value_name = "DIR")]
    tensorboard: Option<PathBuf>,

    /// The step of the TensorBoard summaries
    #[arg(
        long,
        value_name = "S",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    step: i64,

    /// Where to compute
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,

    /// Print one JSON object on stdout (non-finite numbers as null)
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ScaleArg {
    /// Equal widths (numpy.linspace)
    Linear,
    /// Equal ratios (numpy.geomspace); needs a positive range
    Log,
}

fn parse_range(s: &str) -> std::result::Result<(f64, f64), String> {
    let (lo, hi) = s
        .split_once(',')
        .ok_or_else(|| format!("expected LO,HI, got {s:?}"))?;
    let parse = |v: &str| v.trim().parse::<f64>().map_err(|e| format!("{v:?}: {e}"));
    Ok((parse(lo)?, parse(hi)?))
}

/// Logits chunks of about this many bytes by default.
const DEFAULT_CHUNK_BYTES: usize = 32 << 20;

// ---------------------------------------------------------------------------
// Streaming .npy reads

/// Reads the elements of a `.npy` file in order, a chunk at a time.
struct Stream<U> {
    path: PathBuf,
    iter: Box<dyn Iterator<Item = io::Result<U>>>,
    read: usize,
    len: usize,
}

impl<U> Stream<U> {
    fn new<T, I>(path: &Path, iter: I, len: usize, convert: fn(T) -> U) -> Self
    where
        I: Iterator<Item = io::Result<T>> + 'static,
        T: 'static,
        U: 'static,
    {
        Stream {
            path: path.to_path_buf(),
            iter: Box::new(iter.map(move |r| r.map(convert))),
            read: 0,
            len,
        }
    }

    /// Replaces `out` with the next `n` elements.
    fn take(&mut self, n: usize, out: &mut Vec<U>) -> Result<()> {
        out.clear();
        out.reserve(n);
        for _ in 0..n {
            match self.iter.next() {
                Some(Ok(v)) => out.push(v),
                Some(Err(e)) => {
                    return Err(match e.kind() {
                        io::ErrorKind::UnexpectedEof => npy_error(
                            &self.path,
                            format!(
                                "truncated: the data ends after {} of {} elements",
                                self.read, self.len
                            ),
                        ),
                        io::ErrorKind::InvalidData => {
                            npy_error(&self.path, format!("invalid data: {e}"))
                        }
                        _ => Error::Io {
                            path: self.path.clone(),
                            source: e,
                        },
                    })
                }
                None => {
                    return Err(npy_error(
                        &self.path,
                        format!("truncated: {} of {} elements", self.read, self.len),
                    ))
                }
            }
            self.read += 1;
        }
        Ok(())
    }
}

fn reader_error(path: &Path, e: impl std::fmt::Display) -> Error {
    npy_error(path, format!("cannot read the data: {e}"))
}

/// A float16, float32 or float64 array, streamed as f32.
fn float_stream(path: &Path) -> Result<(Stream<f32>, Vec<usize>)> {
    let (npy, shape, len) = open_npy(path)?;
    let dtype = npy.header().dtype();
    let stream = match &dtype {
        DType::Plain(ts) if ts.type_char() == TypeChar::Float && ts.size_field() == 4 => {
            let data = npy.data::<f32>().map_err(|e| reader_error(path, e))?;
            Stream::new(path, data, len, |x: f32| x)
        }
        DType::Plain(ts) if ts.type_char() == TypeChar::Float && ts.size_field() == 8 => {
            let data = npy.data::<f64>().map_err(|e| reader_error(path, e))?;
            Stream::new(path, data, len, |x: f64| x as f32)
        }
        DType::Plain(ts) if ts.type_char() == TypeChar::Float && ts.size_field() == 2 => {
            let data = npy.data::<half::f16>().map_err(|e| reader_error(path, e))?;
            Stream::new(path, data, len, |x: half::f16| x.to_f32())
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
    Ok((stream, shape))
}

/// An integer array of any width, streamed as i64 (a uint64 above
/// `i64::MAX` becomes `i64::MAX`, which no label range contains).
fn int_stream(path: &Path) -> Result<(Stream<i64>, Vec<usize>)> {
    let (npy, shape, len) = open_npy(path)?;
    let dtype = npy.header().dtype();
    let kind = match &dtype {
        DType::Plain(ts) => Some((ts.type_char(), ts.size_field())),
        _ => None,
    };
    macro_rules! stream {
        ($t:ty) => {{
            let data = npy.data::<$t>().map_err(|e| reader_error(path, e))?;
            Stream::new(path, data, len, |x: $t| {
                i64::try_from(x).unwrap_or(i64::MAX)
            })
        }};
    }
    let stream = match kind {
        Some((TypeChar::Int, 1)) => stream!(i8),
        Some((TypeChar::Int, 2)) => stream!(i16),
        Some((TypeChar::Int, 4)) => stream!(i32),
        Some((TypeChar::Int, 8)) => stream!(i64),
        Some((TypeChar::Uint, 1)) => stream!(u8),
        Some((TypeChar::Uint, 2)) => stream!(u16),
        Some((TypeChar::Uint, 4)) => stream!(u32),
        Some((TypeChar::Uint, 8)) => stream!(u64),
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
    Ok((stream, shape))
}

/// An error about a chunk, with its rows counted from the start of the data.
fn offset_rows(e: Error, first: usize) -> Error {
    match e {
        Error::LabelOutOfRange {
            row,
            label,
            classes,
        } => Error::LabelOutOfRange {
            row: row + first,
            label,
            classes,
        },
        Error::NonFiniteLoss { row } => Error::NonFiniteLoss { row: row + first },
        Error::InvalidWeight {
            what: what @ "sample weight",
            index,
            value,
        } => Error::InvalidWeight {
            what,
            index: index + first,
            value,
        },
        other => other,
    }
}

// ---------------------------------------------------------------------------
// Output files

/// Paths to remove unless the run succeeds.
#[derive(Default)]
struct Cleanup {
    files: Vec<PathBuf>,
    dir: Option<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        if let Some(dir) = &self.dir {
            // Only when empty: never remove what someone else put there.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn temp_name(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.{}.tmp", std::process::id()))
}

fn create_new(path: &Path) -> Result<File> {
    File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_error(path))
}

fn csv_number(x: f32) -> String {
    if x.is_nan() {
        String::new()
    } else {
        format!("{x}")
    }
}

fn suspects_csv(top: &[Ranked<RowScore>]) -> String {
    let mut t = String::from("rank,row,label,predicted,loss,confidence,margin\n");
    for (rank, r) in top.iter().enumerate() {
        let predicted = if r.item.predicted == NO_CLASS {
            String::new()
        } else {
            r.item.predicted.to_string()
        };
        let _ = writeln!(
            t,
            "{},{},{},{},{},{},{}",
            rank + 1,
            r.row,
            r.item.label,
            predicted,
            r.loss,
            csv_number(r.item.confidence),
            csv_number(r.item.margin)
        );
    }
    t
}

// ---------------------------------------------------------------------------
// The audit

struct Inputs {
    logits: Stream<f32>,
    labels: Stream<i64>,
    sample_weights: Option<Stream<f32>>,
    batch: usize,
    classes: usize,
}

fn open_inputs(args: &AuditArgs) -> Result<(Inputs, CrossEntropy)> {
    let (logits, shape) = float_stream(&args.logits)?;
    let (batch, classes) = match shape[..] {
        [b, c] => (b, c),
        _ => {
            return Err(npy_error(
                &args.logits,
                format!(
                    "logits must be a 2-D array [batch, classes], got shape {}",
                    shape_text(&shape)
                ),
            ))
        }
    };
    let (labels, shape) = int_stream(&args.labels)?;
    check_1d(&args.labels, "labels", &shape, batch)?;
    let sample_weights = match &args.loss.sample_weights {
        Some(path) => {
            let (stream, shape) = float_stream(path)?;
            check_1d(path, "sample weights", &shape, batch)?;
            Some(stream)
        }
        None => None,
    };
    let spec = args.loss.spec(classes)?;
    spec.validate_for(classes)?;
    Ok((
        Inputs {
            logits,
            labels,
            sample_weights,
            batch,
            classes,
        },
        spec,
    ))
}

fn progress(rows: usize, message: &'static str) -> indicatif::ProgressBar {
    if !io::stderr().is_terminal() || rows == 0 {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(rows as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:40}] {pos}/{len} rows ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    bar
}

pub(crate) fn audit(args: &AuditArgs) -> Result<()> {
    let hist_spec = HistogramSpec {
        bins: args.bins,
        scale: match args.scale {
            ScaleArg::Linear => BinScale::Linear,
            ScaleArg::Log => BinScale::Log,
        },
        range: args.range,
    };
    hist_spec.validate()?;
    if args.chunk_rows == Some(0) {
        return Err(Error::InvalidArgument(
            "--chunk-rows must be at least 1".into(),
        ));
    }
    let (mut inputs, spec) = open_inputs(args)?;
    let (batch, classes) = (inputs.batch, inputs.classes);
    let chunk_rows = args
        .chunk_rows
        .unwrap_or_else(|| (DEFAULT_CHUNK_BYTES / (classes.max(1) * 4)).max(1))
        .min(batch.max(1));

    let engine = open_engine(args.backend)?;
    note_fallback(&engine);
    let scorer = Scorer::for_engine(&engine)?;

    let mut cleanup = Cleanup::default();
    if let Some(dir) = &args.out_dir {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io_error(dir))?;
            cleanup.dir = Some(dir.clone());
        }
    }
    let per_example_temp = match &args.out_dir {
        Some(dir) => temp_name(dir, "per_example.npy"),
        None => std::env::temp_dir().join(format!(
            "fused-loss-audit-{}-per_example.npy",
            std::process::id()
        )),
    };
    let file = create_new(&per_example_temp)?;
    cleanup.files.push(per_example_temp.clone());

    // Pass 1: losses, scores, top-k; the losses go to the temporary file.
    let mut diagnostics = Diagnostics::new(classes, args.top);
    {
        let mut writer = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&[batch as u64])
            .writer(BufWriter::new(file))
            .begin_nd()
            .map_err(io_error(&per_example_temp))?;
        let bar = progress(batch, "losses");
        let (mut x, mut y, mut s) = (Vec::new(), Vec::new(), Vec::new());
        let mut first = 0;
        while first < batch {
            let rows = chunk_rows.min(batch - first);
            inputs.logits.take(rows * classes, &mut x)?;
            inputs.labels.take(rows, &mut y)?;
            let labels =
                labels_to_i32(&y, classes, spec.ignore_index).map_err(|e| offset_rows(e, first))?;
            if let Some(stream) = &mut inputs.sample_weights {
                stream.take(rows, &mut s)?;
            }
            let chunk = Batch {
                logits: &x,
                batch: rows,
                classes,
                targets: Targets::Labels(&labels),
                sample_weights: inputs.sample_weights.as_ref().map(|_| &s[..]),
            };
            let result = (|| -> Result<()> {
                let out = engine.compute_blocking(&spec, &chunk)?;
                let scores = scorer.scores_blocking(&spec, &chunk)?;
                diagnostics.update_with_blocking(
                    &scorer,
                    first as u64,
                    &out,
                    &scores,
                    spec.ignore_index,
                )?;
                writer
                    .extend(out.per_example.iter().copied())
                    .map_err(io_error(&per_example_temp))
            })();
            result.map_err(|e| offset_rows(e, first))?;
            first += rows;
            bar.inc(rows as u64);
        }
        writer.finish().map_err(io_error(&per_example_temp))?;
        bar.finish_and_clear();
    }

    // Pass 2: the histogram over the global range, from the losses on disk.
    let mut histogram = Histogram::from_spec(&hist_spec, diagnostics.range())?;
    {
        let (mut losses, _) = float_stream(&per_example_temp)?;
        let mut labels = match spec.ignore_index {
            Some(_) => Some(int_stream(&args.labels)?.0),
            None => None,
        };
        let bar = progress(batch, "histogram");
        let step = chunk_rows.max(1 << 16);
        let (mut l, mut y) = (Vec::new(), Vec::new());
        let mut first = 0;
        while first < batch {
            let rows = step.min(batch - first);
            losses.take(rows, &mut l)?;
            let labels_i32 = match &mut labels {
                Some(stream) => {
                    stream.take(rows, &mut y)?;
                    Some(labels_to_i32(&y, classes, spec.ignore_index)?)
                }
                None => None,
            };
            scorer.histogram_blocking(
                &mut histogram,
                &l,
                labels_i32.as_deref(),
                spec.ignore_index,
            )?;
            first += rows;
            bar.inc(rows as u64);
        }
        bar.finish_and_clear();
    }

    let stats = diagnostics.stats();
    let loss = stats.reduce(spec.reduction);
    let top = diagnostics.top();

    // The files: everything is computed; write, then move into place.
    let mut written = Vec::new();
    if let Some(dir) = &args.out_dir {
        let csv_temp = temp_name(dir, "suspects.csv");
        cleanup.files.push(csv_temp.clone());
        let mut file = create_new(&csv_temp)?;
        file.write_all(suspects_csv(&top).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_error(&csv_temp))?;
    }
    if let Some(dir) = &args.tensorboard {
        let writer = EventWriter::create(dir)?;
        cleanup.files.push(writer.path().to_path_buf());
        let mut writer = writer;
        writer.add_loss_summaries(
            loss,
            stats.average_loss(),
            &histogram,
            diagnostics.range(),
            args.step,
        )?;
        written.push(writer.finish()?);
    }
    if let Some(dir) = &args.out_dir {
        for name in ["per_example.npy", "suspects.csv"] {
            let from = if name == "per_example.npy" {
                per_example_temp.clone()
            } else {
                temp_name(dir, name)
            };
            let to = dir.join(name);
            std::fs::rename(&from, &to).map_err(io_error(&to))?;
            written.push(to);
        }
    }
    // Success: keep what was written, drop the rest (the temporary losses
    // when there is no --out-dir).
    cleanup.files.retain(|f| !written.contains(f));
    cleanup.dir = None;
    drop(cleanup);

    let report = Report {
        engine: &engine,
        spec: &spec,
        stats: &stats,
        loss,
        classes,
        chunk_rows,
        histogram: &histogram,
        diagnostics: &diagnostics,
        top: &top,
        written: &written,
    };
    print_stdout(&if args.json {
        report.json()
    } else {
        report.text()
    })
}

struct Report<'a> {
    engine: &'a Engine,
    spec: &'a CrossEntropy,
    stats: &'a LossStats,
    loss: f64,
    classes: usize,
    chunk_rows: usize,
    histogram: &'a Histogram,
    diagnostics: &'a Diagnostics,
    top: &'a [Ranked<RowScore>],
    written: &'a [PathBuf],
}

fn nullable(x: f32) -> serde_json::Value {
    if x.is_finite() {
        serde_json::json!(x as f64)
    } else {
        serde_json::Value::Null
    }
}

impl Report<'_> {
    fn json(&self) -> String {
        let s = self.stats;
        let h = self.histogram;
        let top: Vec<serde_json::Value> = self
            .top
            .iter()
            .map(|r| {
                serde_json::json!({
                    "row": r.row,
                    "label": r.item.label,
                    "predicted": if r.item.predicted == NO_CLASS { None } else { Some(r.item.predicted) },
                    "loss": nullable(r.loss),
                    "confidence": nullable(r.item.confidence),
                    "margin": nullable(r.item.margin),
                })
            })
            .collect();
        let per_class = self.diagnostics.per_class();
        let per_class: Vec<serde_json::Value> = (0..per_class.classes())
            .map(|c| {
                serde_json::json!({
                    "class": c,
                    "count": per_class.count(c),
                    "sum": per_class.sum(c),
                    "mean": per_class.mean(c),
                    "nonfinite": per_class.nonfinite(c),
                })
            })
            .collect();
        let value = serde_json::json!({
            "backend": self.engine.backend().name(),
            "adapter": self.engine.adapter(),
            "batch": s.batch,
            "classes": self.classes,
            "reduction": self.spec.reduction.name(),
            "loss": self.loss,
            "average_loss": s.average_loss(),
            "sum": s.sum,
            "weight_sum": s.weight_sum,
            "count": s.count,
            "nonzero_count": s.nonzero_count,
            "nonfinite_rows": s.nonfinite_rows,
            "disagreements": self.diagnostics.disagreements(),
            "histogram": {
                "edges": h.edges(),
                "counts": h.counts(),
                "below": h.below(),
                "above": h.above(),
                "nonfinite": h.nonfinite(),
                "ignored": h.ignored(),
            },
            "top": top,
            "per_class": per_class,
            "files": self.written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        });
        format!("{value}\n")
    }

    fn text(&self) -> String {
        let s = self.stats;
        let mut t = String::new();
        let _ = writeln!(t, "backend        {}", self.engine.backend().name());
        let _ = writeln!(t, "adapter        {}", self.engine.adapter());
        let _ = writeln!(t, "batch          {}", s.batch);
        let _ = writeln!(t, "classes        {}", self.classes);
        let _ = writeln!(t, "chunk_rows     {}", self.chunk_rows);
        let _ = writeln!(t, "reduction      {}", self.spec.reduction.name());
        let _ = writeln!(t, "loss           {}", self.loss);
        let _ = writeln!(t, "average_loss   {}", s.average_loss());
        let _ = writeln!(t, "sum            {}", s.sum);
        let _ = writeln!(t, "weight_sum     {}", s.weight_sum);
        let _ = writeln!(t, "count          {}", s.count);
        let _ = writeln!(t, "nonzero_count  {}", s.nonzero_count);
        let _ = writeln!(t, "nonfinite_rows {}", s.nonfinite_rows);
        let d = self.diagnostics.disagreements();
        let _ = writeln!(
            t,
            "disagreements  {d} rows whose predicted class is not their label ({:.1}%)",
            100.0 * d as f64 / (s.count.max(1)) as f64
        );
        let _ = writeln!(
            t,
            "histogram      {} bins of the per-example losses",
            self.histogram.counts().len()
        );
        t.push_str(&self.histogram.render(40));
        let _ = writeln!(
            t,
            "top {:<10} the largest losses, most suspicious first",
            self.top.len()
        );
        let _ = writeln!(
            t,
            "  {:>5} {:>10} {:>6} {:>9} {:>12} {:>10} {:>10}",
            "rank", "row", "label", "predicted", "loss", "confidence", "margin"
        );
        for (rank, r) in self.top.iter().enumerate() {
            let predicted = if r.item.predicted == NO_CLASS {
                "-".to_string()
            } else {
                r.item.predicted.to_string()
            };
            let _ = writeln!(
                t,
                "  {:>5} {:>10} {:>6} {:>9} {:>12.6} {:>10.6} {:>10.6}",
                rank + 1,
                r.row,
                r.item.label,
                predicted,
                r.loss,
                r.item.confidence,
                r.item.margin
            );
        }
        for path in self.written {
            let _ = writeln!(t, "wrote          {}", path.display());
        }
        t
    }
}
