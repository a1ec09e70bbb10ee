//! The `fused-loss` binary, run as a user runs it: real `.npy` files in a
//! temporary directory, results compared with the f64 reference.

mod common;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{npy, write_npy, Rng};
use fused_loss::cpu::reference;
use fused_loss::{Batch, CrossEntropy, InputKind, LossOutput, Reduction};
use npyz::WriterBuilder;

const BIN: &str = env!("CARGO_BIN_EXE_fused-loss");

// ---------------------------------------------------------------------------
// Running the binary

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    let mut command = Command::new(BIN);
    // The binary quiets Mesa's XDG_RUNTIME_DIR warning itself; run it as a
    // user without the variable would.
    command.args(args).env_remove("XDG_RUNTIME_DIR");
    let output = command.output().expect("run the fused-loss binary");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn assert_ok(r: &Run) {
    assert_eq!(
        r.code,
        Some(0),
        "expected success\nstdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
}

fn assert_no_panic(r: &Run) {
    for needle in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(
            !r.stderr.contains(needle),
            "panic text in stderr:\n{}",
            r.stderr
        );
    }
}

fn s(path: &Path) -> String {
    path.to_str().expect("utf-8 temp path").to_owned()
}

/// Runs `args` plus `--per-example-out` into `dir` and expects the error
/// contract: exit 2, exactly one `error: ` line on stderr containing
/// `needle`, nothing on stdout, no panic, and no output file (nor a
/// leftover temporary) in `dir`.
fn expect_error(dir: &Path, args: &[String], needle: &str) {
    let out = dir.join("per_example_out.npy");
    let before = listing(dir);
    let mut full = args.to_vec();
    full.extend(["--per-example-out".into(), s(&out)]);
    let r = run(&full);
    assert_eq!(
        r.code,
        Some(2),
        "args {full:?}\nstdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    assert_no_panic(&r);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one stderr line expected:\n{}", r.stderr);
    assert!(lines[0].starts_with("error: "), "{}", r.stderr);
    assert!(
        lines[0].contains(needle),
        "stderr {:?} lacks {needle:?}",
        lines[0]
    );
    assert!(r.stdout.is_empty(), "stdout on error:\n{}", r.stdout);
    assert!(!out.exists(), "per-example output written on error");
    assert_eq!(listing(dir), before, "files appeared in the directory");
}

fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    entries
}

/// The exact value of `key` in the flat JSON object `text`, parsed from its
/// own digits (serde_json's default float parser is not always exact);
/// `None` for `null`.
fn json_f64(text: &str, key: &str) -> Option<f64> {
    let marker = format!("\"{key}\":");
    let at = text
        .find(&marker)
        .unwrap_or_else(|| panic!("{key} in {text}"))
        + marker.len();
    let raw: String = text[at..]
        .chars()
        .take_while(|&c| c != ',' && c != '}')
        .collect();
    let raw = raw.trim();
    if raw == "null" {
        None
    } else {
        Some(raw.parse().unwrap_or_else(|e| panic!("{key}={raw}: {e}")))
    }
}

const JSON_KEYS: [&str; 12] = [
    "adapter",
    "average_loss",
    "backend",
    "batch",
    "classes",
    "count",
    "loss",
    "nonfinite_rows",
    "nonzero_count",
    "reduction",
    "sum",
    "weight_sum",
];

/// Parses the one JSON object on stdout and checks its keys.
fn parse_json(r: &Run) -> serde_json::Value {
    assert_ok(r);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line expected:\n{}", r.stdout);
    let value: serde_json::Value = serde_json::from_str(lines[0]).expect("valid JSON");
    let object = value.as_object().expect("a JSON object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, JSON_KEYS);
    value
}

/// Every field of a `--backend reference` run equals the reference exactly.
fn assert_json_equals(r: &Run, expected: &LossOutput, classes: usize) {
    let value = parse_json(r);
    let text = r.stdout.trim();
    assert_eq!(value["backend"], "reference");
    assert_eq!(value["adapter"], "cpu (f64 reference)");
    assert_eq!(value["batch"], expected.stats.batch);
    assert_eq!(value["classes"], classes as u64);
    assert_eq!(value["reduction"], expected.reduction.name());
    assert_eq!(value["count"], expected.stats.count);
    assert_eq!(value["nonzero_count"], expected.stats.nonzero_count);
    assert_eq!(value["nonfinite_rows"], expected.stats.nonfinite_rows);
    let finite = |x: f64| x.is_finite().then_some(x);
    assert_eq!(json_f64(text, "loss"), finite(expected.loss), "loss");
    assert_eq!(
        json_f64(text, "average_loss"),
        finite(expected.average_loss),
        "average_loss"
    );
    assert_eq!(json_f64(text, "sum"), finite(expected.stats.sum), "sum");
    assert_eq!(
        json_f64(text, "weight_sum"),
        finite(expected.stats.weight_sum),
        "weight_sum"
    );
}

// ---------------------------------------------------------------------------
// Writing .npy files

fn write_npy_with<T: npyz::AutoSerialize + Copy>(
    path: &Path,
    shape: &[u64],
    data: &[T],
    order: npyz::Order,
    dtype: Option<&str>,
) {
    let file = BufWriter::new(File::create(path).unwrap());
    let dtype = match dtype {
        Some(d) => npyz::DType::new_scalar(d.parse().unwrap()),
        None => T::default_dtype(),
    };
    let mut writer = npyz::WriteOptions::<T>::new()
        .dtype(dtype)
        .shape(shape)
        .order(order)
        .writer(file)
        .begin_nd()
        .unwrap();
    writer.extend(data.iter().copied()).unwrap();
    writer.finish().unwrap();
}

/// A hand-made `.npy` (format 1.0) from the Python literals of its header
/// and its data bytes.
fn raw_npy(dir: &Path, name: &str, descr: &str, shape: &str, data: &[u8]) -> PathBuf {
    let mut header = format!("{{'descr': {descr}, 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let path = dir.join(name);
    let mut file = File::create(&path).unwrap();
    file.write_all(b"\x93NUMPY\x01\x00").unwrap();
    file.write_all(&(header.len() as u16).to_le_bytes())
        .unwrap();
    file.write_all(header.as_bytes()).unwrap();
    file.write_all(data).unwrap();
    path
}

fn read_f32_npy(path: &Path) -> (String, Vec<u64>, Vec<f32>) {
    let npy = npyz::NpyFile::new(File::open(path).unwrap()).unwrap();
    let dtype = npy.header().dtype().descr();
    let shape = npy.header().shape().to_vec();
    assert_eq!(npy.header().order(), npyz::Order::C);
    (dtype, shape, npy.into_vec::<f32>().unwrap())
}

// ---------------------------------------------------------------------------
// Test data

const B: usize = 37;
const C: usize = 7;

struct Data {
    logits: Vec<f64>,
    labels: Vec<i64>,
    targets: Vec<f64>,
    class_weights: Vec<f32>,
    sample_weights: Vec<f32>,
}

impl Data {
    fn new(seed: u64) -> Data {
        let mut rng = Rng::new(seed);
        let logits = (0..B * C).map(|_| rng.unit() as f64 * 8.0 - 4.0).collect();
        let labels = (0..B).map(|_| (rng.next_u64() % C as u64) as i64).collect();
        let mut targets = Vec::with_capacity(B * C);
        for _ in 0..B {
            let row: Vec<f64> = (0..C).map(|_| rng.unit() as f64).collect();
            let total: f64 = row.iter().sum();
            targets.extend(row.iter().map(|t| t / total));
        }
        let class_weights = (0..C).map(|c| 0.5 + c as f32 * 0.25).collect();
        let sample_weights = (0..B)
            .map(|n| match n % 5 {
                0 => 0.0,
                1 => 2.0,
                _ => 1.0,
            })
            .collect();
        Data {
            logits,
            labels,
            targets,
            class_weights,
            sample_weights,
        }
    }

    fn logits_f32(&self) -> Vec<f32> {
        self.logits.iter().map(|&x| x as f32).collect()
    }

    fn labels_i32(&self) -> Vec<i32> {
        self.labels.iter().map(|&y| y as i32).collect()
    }

    fn targets_f32(&self) -> Vec<f32> {
        self.targets.iter().map(|&x| x as f32).collect()
    }
}

fn shape2() -> [u64; 2] {
    [B as u64, C as u64]
}

// ---------------------------------------------------------------------------
// Success paths

#[test]
fn labels_on_the_reference_backend_match_the_reference_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let d = Data::new(1);
    let logits = npy(dir.path(), "x.npy", &shape2(), &d.logits_f32());
    let labels = npy(dir.path(), "y.npy", &[B as u64], &d.labels);
    let cw = npy(dir.path(), "cw.npy", &[C as u64], &d.class_weights);
    let sw = npy(dir.path(), "sw.npy", &[B as u64], &d.sample_weights);
    let r = run(&[
        "compute",
        "--logits",
        &s(&logits),
        "--labels",
        &s(&labels),
        "--class-weights",
        &s(&cw),
        "--sample-weights",
        &s(&sw),
        "--label-smoothing",
        "0.1",
        "--backend",
        "reference",
        "--json",
    ]);
    assert!(r.stderr.is_empty(), "{}", r.stderr);

    let x = d.logits_f32();
    let y = d.labels_i32();
    let spec = CrossEntropy::new()
        .with_class_weights(d.class_weights.clone())
        .with_label_smoothing(0.1);
    let batch = Batch::with_labels(&x, C, &y).sample_weights(&d.sample_weights);
    let expected = reference::compute(&spec, &batch).unwrap();
    assert_eq!(expected.reduction, Reduction::Mean, "mean is the default");
    assert_json_equals(&r, &expected, C);
    // The sample weights make loss and average_loss differ.
    assert_ne!(expected.loss, expected.average_loss);
}

#[test]
fn labels_on_the_fast_cpu_match_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let d = Data::new(1);
    let logits = npy(dir.path(), "x.npy", &shape2(), &d.logits_f32());
    let labels = npy(dir.path(), "y.npy", &[B as u64], &d.labels);
    let cw = npy(dir.path(), "cw.npy", &[C as u64], &d.class_weights);
    let sw = npy(dir.path(), "sw.npy", &[B as u64], &d.sample_weights);
    let r = run(&[
        "compute",
        "--logits",
        &s(&logits),
        "--labels",
        &s(&labels),
        "--class-weights",
        &s(&cw),
        "--sample-weights",
        &s(&sw),
        "--label-smoothing",
        "0.1",
        "--backend",
        "cpu",
        "--json",
    ]);
    let value = parse_json(&r);
    assert_eq!(value["backend"], "cpu");
    let adapter = value["adapter"].as_str().unwrap();
    assert!(adapter.starts_with("cpu (fast, "), "{adapter}");

    let x = d.logits_f32();
    let y = d.labels_i32();
    let spec = CrossEntropy::new()
        .with_class_weights(d.class_weights.clone())
        .with_label_smoothing(0.1);
    let expected = reference::compute(
        &spec,
        &Batch::with_labels(&x, C, &y).sample_weights(&d.sample_weights),
    )
    .unwrap();
    let text = r.stdout.trim();
    for (key, want) in [
        ("loss", expected.loss),
        ("average_loss", expected.average_loss),
        ("sum", expected.stats.sum),
    ] {
        let got = json_f64(text, key).unwrap();
        assert!(
            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
            "{key}: {got} vs {want}"
        );
    }
    assert_eq!(value["count"], expected.stats.count);
    assert_eq!(value["nonzero_count"], expected.stats.nonzero_count);
}

#[test]
fn f64_logits_and_integer_label_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let d = Data::new(2);
    let logits = npy(dir.path(), "x.npy", &shape2(), &d.logits);
    let x = d.logits_f32();
    let y = d.labels_i32();
    let expected =
        reference::compute(&CrossEntropy::new(), &Batch::with_labels(&x, C, &y)).unwrap();

    let n = [B as u64];
    let as_u8: Vec<u8> = d.labels.iter().map(|&v| v as u8).collect();
    let label_files = [
        npy(dir.path(), "i64.npy", &n, &d.labels),
        npy(dir.path(), "i32.npy", &n, &y),
        npy(dir.path(), "u8.npy", &n, &as_u8),
        {
            let path = dir.path().join("i8.npy");
            let v: Vec<i8> = d.labels.iter().map(|&v| v as i8).collect();
            write_npy(&path, &n, &v);
            path
        },
        {
            let path = dir.path().join("u16.npy");
            let v: Vec<u16> = d.labels.iter().map(|&v| v as u16).collect();
            write_npy(&path, &n, &v);
            path
        },
        {
            let path = dir.path().join("u64.npy");
            let v: Vec<u64> = d.labels.iter().map(|&v| v as u64).collect();
            write_npy(&path, &n, &v);
            path
        },
        {
            let path = dir.path().join("i64_big_endian.npy");
            write_npy_with(&path, &n, &d.labels, npyz::Order::C, Some(">i8"));
            path
        },
    ];
    for labels in &label_files {
        let r = run(&[
            "compute",
            "--logits",
            &s(&logits),
            "--labels",
            &s(labels),
            "--backend",
            "reference",
            "--json",
        ]);
        assert_json_equals(&r, &expected, C);
    }

    // Big-endian float64 logits read the same.
    let be = dir.path().join("x_be.npy");
    write_npy_with(&be, &shape2(), &d.logits, npyz::Order::C, Some(">f8"));
    let r = run(&[
        "compute",
        "--logits",
        &s(&be),
        "--labels",
        &s(&label_files[0]),
        "--backend",
        "reference",
        "--json",
    ]);
    assert_json_equals(&r, &expected, C);
}

#[test]
fn dense_targets_and_probabilities() {
    let dir = tempfile::tempdir().unwrap();
    let d = Data::new(3);
    let logits = npy(dir.path(), "x.npy", &shape2(), &d.logits_f32());
    let targets = npy(dir.path(), "t.npy", &shape2(), &d.targets);
    let sw = npy(
        dir.path(),
        "sw.npy",
        &[B as u64],
        &d.sample_weights
            .iter()
            .map(|&w| w as f64)
            .collect::<Vec<_>>(),
    );
    let x = d.logits_f32();
    let t = d.targets_f32();

    let r = run(&[
        "compute",
        "--logits",
        &s(&logits),
        "--targets",
        &s(&targets),
        "--sample-weights",
        &s(&sw),
        "--reduction",
        "sum",
        "--backend",
        "reference",
        "--json",
    ]);
    let spec = CrossEntropy::new().with_reduction(Reduction::Sum);
    let batch = Batch::with_dense(&x, C, &t).sample_weights(&d.sample_weights);
    assert_json_equals(&r, &reference::compute(&spec, &batch).unwrap(), C);

    // Probabilities: softmax-like rows, labels.
    let probs = npy(dir.path(), "p.npy", &shape2(), &t);
    let labels = npy(dir.path(), "y.npy", &[B as u64], &d.labels);
    let r = run(&[
        "compute",
        "--logits",
        &s(&probs),
        "--labels",
        &s(&labels),
        "--probabilities",
        "--backend",
        "reference",
        "--json",
    ]);
    let y = d.labels_i32();
    let spec = CrossEntropy::new().with_input(InputKind::Probabilities);
    let expected = reference::compute(&spec, &Batch::with_labels(&t, C, &y)).unwrap();
    assert_json_equals(&r, &expected, C);
}

#[test]
fn every_reduction_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = Data::new(4);
    let x = d.logits_f32();
    // Some rows ignored with a negative ignore index.
    let mut y = d.labels_i32();
    for n in (0..B).step_by(6) {
        y[n] = -100;
    }
    let logits = npy(dir.path(), "x.npy", &shape2(), &x);
    let labels = npy(dir.path(), "y.npy", &[B as u64], &y);
    let cw = npy(dir.path(), "cw.npy", &[C as u64], &d.class_weights);
    let sw = npy(dir.path(), "sw.npy", &[B as u64], &d.sample_weights);
    let mut losses = Vec::new();
    for reduction in Reduction::ALL {
        let r = run(&[
            "compute",
            "--logits",
            &s(&logits),
            "--labels",
            &s(&labels),
            "--class-weights",
            &s(&cw),
            "--sample-weights",
            &s(&sw),
            "--ignore-index",
            "-100",
            "--reduction",
            reduction.name(),
            "--backend",
            "reference",
            "--json",
        ]);
        let spec = CrossEntropy::new()
            .with_class_weights(d.class_weights.clone())
            .with_ignore_index(-100)
            .with_reduction(reduction);
        let batch = Batch::with_labels(&x, C, &y).sample_weights(&d.sample_weights);
        let expected = reference::compute(&spec, &batch).unwrap();
        assert_json_equals(&r, &expected, C);
        losses.push(expected.loss);
    }
    // `none` reports the sum; the other denominators all differ here.
    assert_eq!(losses[0], losses[1]);
    for i in 1..losses.len() {
        for j in i + 1..losses.len() {
            assert_ne!(losses[i], losses[j], "{i} {j}");
        }
    }
}

#[test]
fn per_example_out_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = Data::new(5);
    let x = d.logits_f32();
    let y = d.labels_i32();
    let logits = npy(dir.path(), "x.npy", &shape2(), &x);
    let labels = npy(dir.path(), "y.npy", &[B as u64], &d.labels);
    let sw = npy(dir.path(), "sw.npy", &[B as u64], &d.sample_weights);
    let expected = reference::compute(
        &CrossEntropy::new().with_reduction(Reduction::None),
        &Batch::with_labels(&x, C, &y).sample_weights(&d.sample_weights),
    )
    .unwrap();

    for (i, name) in ["out.npy", "sub/out.npy"].iter().enumerate() {
        if i == 1 {
            std::fs::create_dir(dir.path().join("sub")).unwrap();
        }
        let out = dir.path().join(name);
        let r = run(&[
            "compute",
            "--logits",
            &s(&logits),
            "--labels",
            &s(&labels),
            "--sample-weights",
            &s(&sw),
            "--reduction",
            "none",
            "--backend",
            "reference",
            "--per-example-out",
            &s(&out),
        ]);
        assert_ok(&r);
        let (dtype, shape, values) = read_f32_npy(&out);
        assert_eq!(dtype, "'<f4'");
        assert_eq!(shape, [B as u64]);
        assert_eq!(values, expected.per_example);
    }
    // Overwriting an existing file works too, and leaves no temporary behind.
    let out = dir.path().join("out.npy");
    let r = run(&[
        "compute",
        "--logits",
        &s(&logits),
        "--labels",
        &s(&labels),
        "--backend",
        "reference",
        "--per-example-out",
        &s(&out),
    ]);
    assert_ok(&r);
    let (_, _, values) = read_f32_npy(&out);
    let unweighted =
        reference::compute(&CrossEntropy::new(), &Batch::with_labels(&x, C, &y)).unwrap();
    assert_eq!(values, unweighted.per_example);
    let names: Vec<String> = listing(dir.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["out.npy", "sub", "sw.npy", "x.npy", "y.npy"]);
}

#[test]
fn human_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = Data::new(6);
    let logits = npy(dir.path(), "x.npy", &shape2(), &d.logits_f32());
    let labels = npy(dir.path(), "y.npy", &[B as u64], &d.labels);
    let r = run(&[
        "compute",
        "--logits",
        &s(&logits),
        "--labels",
        &s(&labels),
        "--reduction",
        "sum-over-batch-size",
        "--backend",
        "reference",
    ]);
    assert_ok(&r);
    let x = d.logits_f32();
    let y = d.labels_i32();
    let expected = reference::compute(
        &CrossEntropy::new().with_reduction(Reduction::SumOverBatchSize),
        &Batch::with_labels(&x, C, &y),
    )
    .unwrap();
    let field = |name: &str| -> String {
        r.stdout
            .lines()
            .find_map(|l| {
                let mut parts = l.split_whitespace();
                (parts.next() == Some(name)).then(|| parts.collect::<Vec<_>>().join(" "))
            })
            .unwrap_or_else(|| panic!("{name} missing from:\n{}", r.stdout))
    };
    assert_eq!(field("backend"), "reference");
    assert_eq!(field("batch"), B.to_string());
    assert_eq!(field("classes"), C.to_string());
    assert_eq!(field("reduction"), "sum-over-batch-size");
    assert_eq!(field("loss").parse::<f64>().unwrap(), expected.loss);
    assert_eq!(
        field("average_loss").parse::<f64>().unwrap(),
        expected.average_loss
    );
    assert_eq!(field("count"), B.to_string());
    assert!(field("per-example").starts_with("first 8 of 37"));
}

#[test]
fn nonfinite_rows_propagate_or_fail_with_check_finite() {
    let dir = tempfile::tempdir().unwrap();
    let d = Data::new(7);
    let mut x = d.logits_f32();
    x[3 * C + 1] = f32::NAN;
    let logits = npy(dir.path(), "x.npy", &shape2(), &x);
    let labels = npy(dir.path(), "y.npy", &[B as u64], &d.labels);
    let args = [
        "compute".to_string(),
        "--logits".into(),
        s(&logits),
        "--labels".into(),
        s(&labels),
        "--backend".into(),
        "cpu".into(),
    ];
    let mut json = args.to_vec();
    json.push("--json".into());
    let r = run(&json);
    let value = parse_json(&r);
    assert_eq!(value["nonfinite_rows"], 1);
    assert!(value["loss"].is_null() && value["sum"].is_null());
    assert!(value["average_loss"].is_null());
    assert!(value["weight_sum"].is_number());

    let mut check = args.to_vec();
    check.push("--check-finite".into());
    expect_error(dir.path(), &check, "non-finite loss at row 3");
}

// ---------------------------------------------------------------------------
// Bad input

/// A directory with good inputs, to break one at a time.
struct Fixture {
    dir: tempfile::TempDir,
    logits: PathBuf,
    labels: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let d = Data::new(8);
        let logits = npy(dir.path(), "x.npy", &shape2(), &d.logits_f32());
        let labels = npy(dir.path(), "y.npy", &[B as u64], &d.labels);
        Fixture {
            dir,
            logits,
            labels,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `compute --backend cpu` with these logits and labels files.
    fn args(&self, logits: &Path, labels: &Path, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "compute",
            "--backend",
            "cpu",
            "--logits",
            &s(logits),
            "--labels",
            &s(labels),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    fn expect(&self, logits: &Path, labels: &Path, extra: &[&str], needle: &str) {
        expect_error(self.path(), &self.args(logits, labels, extra), needle);
    }
}

#[test]
fn label_out_of_range() {
    let f = Fixture::new();
    let mut y = Data::new(8).labels;
    y[5] = C as i64;
    y[9] = -1;
    let labels = npy(f.path(), "bad.npy", &[B as u64], &y);
    f.expect(
        &f.logits,
        &labels,
        &[],
        "label out of range at row 5: label 7, classes 7",
    );
}

#[test]
fn label_that_does_not_fit_i32() {
    let f = Fixture::new();
    let mut y = Data::new(8).labels;
    y[2] = 1 << 40;
    let labels = npy(f.path(), "big.npy", &[B as u64], &y);
    f.expect(
        &f.logits,
        &labels,
        &[],
        "label out of range at row 2: label 1099511627776, classes 7",
    );
    // An earlier label that fits i32 but not the classes is reported first.
    y[1] = 100;
    let labels = npy(f.path(), "big2.npy", &[B as u64], &y);
    f.expect(
        &f.logits,
        &labels,
        &[],
        "label out of range at row 1: label 100, classes 7",
    );
    // A uint64 label past i64.
    let mut u: Vec<u64> = Data::new(8).labels.iter().map(|&v| v as u64).collect();
    u[4] = u64::MAX;
    let path = f.path().join("u64.npy");
    write_npy(&path, &[B as u64], &u);
    f.expect(&f.logits, &path, &[], "label out of range at row 4");
}

#[test]
fn labels_of_the_wrong_length() {
    let f = Fixture::new();
    let y = &Data::new(8).labels[..B - 1];
    let labels = npy(f.path(), "short.npy", &[(B - 1) as u64], y);
    f.expect(
        &f.logits,
        &labels,
        &[],
        "shape mismatch: labels has 36 elements, expected 37",
    );
    // 2-D labels are not accepted either.
    let labels = npy(f.path(), "2d.npy", &[B as u64, 1], &Data::new(8).labels);
    f.expect(&f.logits, &labels, &[], "labels must be a 1-D array");
    // Nor 1-D logits.
    let logits = npy(
        f.path(),
        "1d.npy",
        &[(B * C) as u64],
        &Data::new(8).logits_f32(),
    );
    f.expect(&logits, &f.labels, &[], "logits must be a 2-D array");
}

#[test]
fn class_weights_of_the_wrong_length() {
    let f = Fixture::new();
    let cw = npy(f.path(), "cw.npy", &[(C + 1) as u64], &[1.0; C + 1]);
    f.expect(
        &f.logits,
        &f.labels,
        &["--class-weights", &s(&cw)],
        "shape mismatch: class weights has 8 elements, expected 7",
    );
}

#[test]
fn negative_sample_weight() {
    let f = Fixture::new();
    let mut w = vec![1.0f32; B];
    w[2] = -1.0;
    let sw = npy(f.path(), "sw.npy", &[B as u64], &w);
    f.expect(
        &f.logits,
        &f.labels,
        &["--sample-weights", &s(&sw)],
        "invalid sample weight at index 2: -1",
    );
}

#[test]
fn label_smoothing_out_of_range() {
    let f = Fixture::new();
    f.expect(
        &f.logits,
        &f.labels,
        &["--label-smoothing", "1.5"],
        "label smoothing must be in [0, 1], got 1.5",
    );
}

#[test]
fn ignore_index_with_targets() {
    let f = Fixture::new();
    let t = npy(f.path(), "t.npy", &shape2(), &Data::new(8).targets_f32());
    let args: Vec<String> = [
        "compute",
        "--backend",
        "cpu",
        "--logits",
        &s(&f.logits),
        "--targets",
        &s(&t),
        "--ignore-index",
        "0",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    expect_error(
        f.path(),
        &args,
        "ignore_index cannot be used with dense targets",
    );
    // Targets of another shape.
    let t2 = npy(
        f.path(),
        "t2.npy",
        &[C as u64, B as u64],
        &Data::new(8).targets_f32(),
    );
    let args: Vec<String> = [
        "compute",
        "--backend",
        "cpu",
        "--logits",
        &s(&f.logits),
        "--targets",
        &s(&t2),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    expect_error(
        f.path(),
        &args,
        "targets have shape [7, 37], the logits [37, 7]",
    );
}

#[test]
fn fortran_order_array() {
    let f = Fixture::new();
    let path = f.path().join("fortran.npy");
    write_npy_with(
        &path,
        &shape2(),
        &Data::new(8).logits_f32(),
        npyz::Order::Fortran,
        None,
    );
    f.expect(&path, &f.labels, &[], "Fortran-order");
}

#[test]
fn unsupported_dtypes() {
    let f = Fixture::new();
    // Strings as logits.
    let strings = raw_npy(f.path(), "str.npy", "'<U3'", "(2, 1)", &[0u8; 24]);
    f.expect(&strings, &f.labels, &[], "unsupported dtype");
    // Booleans as labels.
    let bools = raw_npy(f.path(), "bool.npy", "'|b1'", &format!("({B},)"), &[0u8; B]);
    f.expect(&f.logits, &bools, &[], "unsupported dtype");
    // Floats as labels.
    let floats = npy(f.path(), "fl.npy", &[B as u64], &[0.0; B]);
    f.expect(&f.logits, &floats, &[], "expected an integer dtype");
    // Integers as logits.
    let ints = npy(f.path(), "int.npy", &shape2(), &vec![0; B * C]);
    f.expect(
        &ints,
        &f.labels,
        &[],
        "expected float16, float32 or float64",
    );
    // Complex numbers.
    let complex = raw_npy(f.path(), "complex.npy", "'<c8'", "(1, 2)", &[0u8; 16]);
    f.expect(&complex, &f.labels, &[], "unsupported dtype");
    // A structured dtype.
    let record = raw_npy(f.path(), "rec.npy", "[('a', '<f4')]", "(1, 1)", &[0u8; 4]);
    f.expect(&record, &f.labels, &[], "unsupported dtype");
    // An object (pickled) dtype.
    let object = raw_npy(f.path(), "obj.npy", "'|O'", "(1, 1)", &[0u8; 8]);
    f.expect(&object, &f.labels, &[], "unsupported dtype");
}

#[test]
fn missing_file() {
    let f = Fixture::new();
    let missing = f.path().join("missing.npy");
    f.expect(&missing, &f.labels, &[], "missing.npy");
    f.expect(&f.logits, &missing, &[], "missing.npy");
}

#[test]
fn garbage_and_truncated_files() {
    let f = Fixture::new();
    let garbage = f.path().join("garbage.npy");
    std::fs::write(
        &garbage,
        b"this is not an npy file at all, just some text\n",
    )
    .unwrap();
    f.expect(&garbage, &f.labels, &[], "not a valid .npy file");
    let empty = f.path().join("empty.npy");
    std::fs::write(&empty, b"").unwrap();
    f.expect(&empty, &f.labels, &[], "not a valid .npy file");
    // A good header with too little data.
    let short = raw_npy(f.path(), "short.npy", "'<f4'", "(37, 7)", &[0u8; 100]);
    f.expect(&short, &f.labels, &[], "truncated");
    // Short by a few bytes only: the header counts towards the file's size.
    let short = raw_npy(
        f.path(),
        "short2.npy",
        "'<f4'",
        "(37, 7)",
        &[0u8; 37 * 7 * 4 - 8],
    );
    f.expect(
        &short,
        &f.labels,
        &[],
        "truncated: the data ends after 257 of 259 elements",
    );
    // A header whose shape overflows when multiplied.
    let huge = raw_npy(
        f.path(),
        "huge.npy",
        "'<f4'",
        "(4294967296, 4294967296, 4294967296)",
        &[0u8; 16],
    );
    f.expect(&huge, &f.labels, &[], "huge.npy");
    // A shape far larger than the file.
    let big = raw_npy(
        f.path(),
        "big.npy",
        "'<f4'",
        "(1000000000, 1000)",
        &[0u8; 16],
    );
    f.expect(&big, &f.labels, &[], "truncated");
}

#[test]
fn per_example_out_into_a_missing_directory() {
    let f = Fixture::new();
    let out = f.path().join("no/such/dir/out.npy");
    let args = f.args(&f.logits, &f.labels, &["--per-example-out", &s(&out)]);
    let r = run(&args);
    assert_eq!(r.code, Some(2));
    assert_no_panic(&r);
    assert!(r.stderr.starts_with("error: "), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1);
    assert!(r.stdout.is_empty());
    assert!(!f.path().join("no").exists());
}

fn expect_usage_error(args: &[String]) {
    let r = run(args);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert_no_panic(&r);
    assert!(r.stderr.starts_with("error:"), "{}", r.stderr);
    assert!(r.stdout.is_empty());
}

#[test]
fn labels_and_targets_are_exclusive_and_one_is_required() {
    let f = Fixture::new();
    let t = npy(f.path(), "t.npy", &shape2(), &Data::new(8).targets_f32());
    let out = f.path().join("out.npy");
    let both = f.args(
        &f.logits,
        &f.labels,
        &["--targets", &s(&t), "--per-example-out", &s(&out)],
    );
    expect_usage_error(&both);
    let neither: Vec<String> = ["compute", "--logits", &s(&f.logits)]
        .iter()
        .map(|a| a.to_string())
        .collect();
    expect_usage_error(&neither);
    let bad_reduction = f.args(&f.logits, &f.labels, &["--reduction", "average"]);
    expect_usage_error(&bad_reduction);
    let bad_backend: Vec<String> = ["demo", "--backend", "tpu"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    expect_usage_error(&bad_backend);
    assert!(!out.exists());
}

// ---------------------------------------------------------------------------
// Demo, help and the GPU

fn assert_demo_output(r: &Run) {
    assert_ok(r);
    assert_no_panic(r);
    for name in [
        "loss",
        "average_loss",
        "sum",
        "weight_sum",
        "count",
        "nonzero_count",
    ] {
        assert!(
            r.stdout
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "{name} missing:\n{}",
            r.stdout
        );
    }
    assert!(r.stdout.contains("reference check: ok"), "{}", r.stdout);
}

#[test]
fn demo_on_the_cpu() {
    let r = run(&["demo", "--backend", "cpu"]);
    assert_demo_output(&r);
    assert!(r.stdout.contains("backend        cpu"), "{}", r.stdout);
}

#[test]
fn bare_command_runs_the_demo() {
    let r = run::<&str>(&[]);
    assert_demo_output(&r);
}

#[test]
fn help_lists_the_subcommands_and_options() {
    let r = run(&["--help"]);
    assert_ok(&r);
    assert!(r.stdout.contains("demo") && r.stdout.contains("compute"));
    let r = run(&["compute", "--help"]);
    assert_ok(&r);
    for option in [
        "--logits",
        "--labels",
        "--targets",
        "--probabilities",
        "--class-weights",
        "--sample-weights",
        "--ignore-index",
        "--label-smoothing",
        "--reduction",
        "sum-by-nonzero-weights",
        "--backend",
        "--per-example-out",
        "--check-finite",
        "--json",
    ] {
        assert!(r.stdout.contains(option), "{option} missing from help");
    }
}

/// `None` when there is no adapter and the GPU is not required (skip).
fn gpu_run(args: &[String]) -> Option<Run> {
    let r = run(args);
    if r.code == Some(2) && r.stderr.contains("no gpu adapter") {
        assert!(
            std::env::var("FUSED_LOSS_REQUIRE_GPU").as_deref() != Ok("1"),
            "FUSED_LOSS_REQUIRE_GPU=1 but no adapter: {}",
            r.stderr
        );
        eprintln!("skipping the GPU CLI test: {}", r.stderr.trim());
        return None;
    }
    Some(r)
}

#[test]
fn compute_on_the_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let d = Data::new(9);
    let x = d.logits_f32();
    let y = d.labels_i32();
    let logits = npy(dir.path(), "x.npy", &shape2(), &x);
    let labels = npy(dir.path(), "y.npy", &[B as u64], &d.labels);
    let sw = npy(dir.path(), "sw.npy", &[B as u64], &d.sample_weights);
    let out = dir.path().join("out.npy");
    let args: Vec<String> = [
        "compute",
        "--logits",
        &s(&logits),
        "--labels",
        &s(&labels),
        "--sample-weights",
        &s(&sw),
        "--label-smoothing",
        "0.05",
        "--backend",
        "gpu",
        "--json",
        "--per-example-out",
        &s(&out),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let Some(r) = gpu_run(&args) else { return };
    let value = parse_json(&r);
    assert_eq!(value["backend"], "gpu");
    let spec = CrossEntropy::new().with_label_smoothing(0.05);
    let batch = Batch::with_labels(&x, C, &y).sample_weights(&d.sample_weights);
    let expected = reference::compute(&spec, &batch).unwrap();
    let text = r.stdout.trim();
    for (key, want) in [
        ("loss", expected.loss),
        ("average_loss", expected.average_loss),
        ("sum", expected.stats.sum),
        ("weight_sum", expected.stats.weight_sum),
    ] {
        let got = json_f64(text, key).unwrap();
        assert!(
            (got - want).abs() <= 1e-5 * want.abs(),
            "{key}: gpu {got}, reference {want}"
        );
    }
    assert_eq!(value["count"], expected.stats.count);
    assert_eq!(value["nonzero_count"], expected.stats.nonzero_count);
    assert_eq!(value["nonfinite_rows"], 0);
    let (_, shape, values) = read_f32_npy(&out);
    assert_eq!(shape, [B as u64]);
    for (n, (&got, &want)) in values.iter().zip(&expected.per_example).enumerate() {
        assert!(
            (got - want).abs() <= 1e-5 * (1.0 + want.abs() + 4.0 * 2.0),
            "row {n}: gpu {got}, reference {want}"
        );
    }

    // A bad label is caught on the device: exit 2, no output file.
    let mut bad = d.labels.clone();
    bad[11] = 9;
    let bad_labels = npy(dir.path(), "bad.npy", &[B as u64], &bad);
    std::fs::remove_file(&out).unwrap();
    let args: Vec<String> = [
        "compute",
        "--logits",
        &s(&logits),
        "--labels",
        &s(&bad_labels),
        "--backend",
        "gpu",
        "--per-example-out",
        &s(&out),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let r = run(&args);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert_no_panic(&r);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr
            .starts_with("error: label out of range at row 11: label 9, classes 7"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty());
    assert!(!out.exists());
}
