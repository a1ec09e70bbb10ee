//! `fused-loss audit` and the demo, run as a user runs them: histogram and
//! top-k checked against a straightforward computation from the tool's own
//! per_example.npy, chunked runs against one-shot runs, CPU against GPU,
//! the TensorBoard file decoded again, bad input.

mod common;

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::Rng;
use fused_loss::cpu::reference;
use fused_loss::tensorboard::read_events;
use fused_loss::{Batch, CrossEntropy};
use npyz::WriterBuilder;

const BIN: &str = env!("CARGO_BIN_EXE_fused-loss");

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(args: &[String]) -> Run {
    let output = Command::new(BIN)
        .args(args)
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .expect("run the fused-loss binary");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn ok(r: &Run) -> serde_json::Value {
    assert_eq!(
        r.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

fn write_npy<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[u64], data: &[T]) {
    let mut writer = npyz::WriteOptions::<T>::new()
        .dtype(T::default_dtype())
        .shape(shape)
        .writer(BufWriter::new(File::create(path).unwrap()))
        .begin_nd()
        .unwrap();
    writer.extend(data.iter().copied()).unwrap();
    writer.finish().unwrap();
}

fn read_f32(path: &Path) -> Vec<f32> {
    let npy = npyz::NpyFile::new(File::open(path).unwrap()).unwrap();
    assert_eq!(npy.header().dtype().descr(), "'<f4'");
    npy.into_vec::<f32>().unwrap()
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

struct Data {
    dir: tempfile::TempDir,
    logits: Vec<f32>,
    labels: Vec<i32>,
    b: usize,
    c: usize,
}

const IGNORE: i32 = -100;

/// B x C logits with some rows ignored and a few flipped-looking rows.
fn data(b: usize, c: usize, seed: u64) -> Data {
    let mut rng = Rng::new(seed);
    let logits = rng.logits(b * c, 4.0);
    let mut labels = rng.labels(b, c);
    for n in (0..b).step_by(37) {
        labels[n] = IGNORE;
    }
    let dir = tempfile::tempdir().unwrap();
    write_npy(&dir.path().join("x.npy"), &[b as u64, c as u64], &logits);
    let labels64: Vec<i64> = labels.iter().map(|&y| y as i64).collect();
    write_npy(&dir.path().join("y.npy"), &[b as u64], &labels64);
    Data {
        dir,
        logits,
        labels,
        b,
        c,
    }
}

impl Data {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut a = vec![
            "audit".into(),
            "--logits".into(),
            s(&self.path("x.npy")),
            "--labels".into(),
            s(&self.path("y.npy")),
            "--ignore-index".into(),
            IGNORE.to_string(),
            "--json".into(),
        ];
        a.extend(extra.iter().map(|e| e.to_string()));
        a
    }
}

fn top_rows(v: &serde_json::Value) -> Vec<(u64, f64)> {
    v["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["row"].as_u64().unwrap(), t["loss"].as_f64().unwrap()))
        .collect()
}

fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn u64s(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn histogram_and_top_k_equal_a_straightforward_computation() {
    let d = data(1500, 6, 1);
    let out = d.path("out");
    let tb = d.path("tb");
    let v = ok(&run(&d.args(&[
        "--backend",
        "reference",
        "--top",
        "12",
        "--bins",
        "9",
        "--chunk-rows",
        "250",
        "--out-dir",
        &s(&out),
        "--tensorboard",
        &s(&tb),
        "--step",
        "42",
    ])));
    let losses = read_f32(&out.join("per_example.npy"));
    assert_eq!(losses.len(), d.b);
    assert_eq!(v["batch"].as_u64(), Some(d.b as u64));

    // The losses are the reference's.
    let spec = CrossEntropy::new().with_ignore_index(IGNORE);
    let want = reference::compute(&spec, &Batch::with_labels(&d.logits, d.c, &d.labels)).unwrap();
    assert_eq!(losses, want.per_example);
    assert_eq!(v["count"].as_u64(), Some(want.stats.count));
    let avg = v["average_loss"].as_f64().unwrap();
    assert!((avg - want.average_loss).abs() <= 1e-12 * want.average_loss);

    // numpy.histogram(L[kept], bins=edges), written out.
    let kept: Vec<f64> = losses
        .iter()
        .zip(&d.labels)
        .filter(|(_, &y)| y != IGNORE)
        .map(|(&l, _)| l as f64)
        .collect();
    let edges = f64s(&v["histogram"]["edges"]);
    assert_eq!(edges.len(), 10);
    let lo = kept.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = kept.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    assert_eq!((edges[0], edges[9]), (lo, hi));
    let mut counts = vec![0u64; 9];
    for &x in &kept {
        if x < edges[0] || x > edges[9] {
            continue;
        }
        let mut bin = 8;
        for i in 0..9 {
            if x >= edges[i] && x < edges[i + 1] {
                bin = i;
                break;
            }
        }
        counts[bin] += 1;
    }
    assert_eq!(u64s(&v["histogram"]["counts"]), counts);
    assert_eq!(
        v["histogram"]["ignored"].as_u64(),
        Some((d.b - kept.len()) as u64)
    );

    // Top-k: sort by loss descending, then row ascending.
    let mut order: Vec<usize> = (0..d.b).filter(|&n| d.labels[n] != IGNORE).collect();
    order.sort_by(|&a, &b| losses[b].partial_cmp(&losses[a]).unwrap().then(a.cmp(&b)));
    let want_top: Vec<(u64, f64)> = order[..12]
        .iter()
        .map(|&n| (n as u64, losses[n] as f64))
        .collect();
    assert_eq!(top_rows(&v), want_top);
    for t in v["top"].as_array().unwrap() {
        let n = t["row"].as_u64().unwrap() as usize;
        assert_eq!(t["label"].as_i64(), Some(d.labels[n] as i64));
        let row = &d.logits[n * d.c..(n + 1) * d.c];
        let argmax = (0..d.c).fold(0, |b, k| if row[k] > row[b] { k } else { b });
        assert_eq!(t["predicted"].as_u64(), Some(argmax as u64));
        let conf = t["confidence"].as_f64().unwrap();
        assert!(
            (conf - (-(losses[n] as f64)).exp()).abs() < 1e-5,
            "p_y = exp(-L)"
        );
    }

    // suspects.csv: a header, then the same rows.
    let csv = std::fs::read_to_string(out.join("suspects.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("rank,row,label,predicted,loss,confidence,margin")
    );
    let rows: Vec<u64> = lines
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(rows, want_top.iter().map(|t| t.0).collect::<Vec<_>>());

    // TensorBoard: the framing and CRCs, then the values.
    let files: Vec<PathBuf> = std::fs::read_dir(&tb)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    assert!(files[0]
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("events.out.tfevents."));
    let events = read_events(&files[0]).unwrap();
    assert_eq!(events.len(), 4);
    assert_eq!(events[0].file_version(), Some("brain.Event:2"));
    assert!(events[1..].iter().all(|e| e.step == 42));
    let scalar = |tag| events.iter().find_map(|e| e.scalar(tag)).unwrap();
    assert_eq!(scalar("loss"), v["loss"].as_f64().unwrap() as f32);
    assert_eq!(scalar("average_loss"), avg as f32);
    let h = events
        .iter()
        .find_map(|e| e.histogram("loss_per_example"))
        .unwrap();
    assert_eq!((h.min, h.max, h.num), (lo, hi, kept.len() as f64));
    assert!((h.sum - kept.iter().sum::<f64>()).abs() < 1e-9 * h.sum);
    assert_eq!(&h.bucket_limit[..10], &edges[..]);
    assert_eq!(h.bucket_limit[10], f64::MAX);
    let mut buckets = vec![0.0];
    buckets.extend(counts.iter().map(|&c| c as f64));
    buckets.push(0.0);
    assert_eq!(h.bucket, buckets);
}

#[test]
fn chunked_audit_equals_one_shot() {
    chunked_audit_equals_one_shot_on("cpu");
}

#[test]
fn chunked_gpu_audit_equals_one_shot() {
    let d = data(10, 3, 5);
    let r = run(&d.args(&["--backend", "gpu"]));
    if r.code == Some(2) && r.stderr.contains("no gpu adapter") {
        assert!(!fused_loss::gpu_required(), "{}", r.stderr);
        eprintln!("skipping the GPU audit: {}", r.stderr.trim());
        return;
    }
    chunked_audit_equals_one_shot_on("gpu");
}

/// Runs in one chunk, in chunks of 1 and 64 rows: the same top K (rows and
/// losses), histogram, per-class counts and per_example.npy bytes.
fn chunked_audit_equals_one_shot_on(backend: &str) {
    let d = data(700, 5, 2);
    let weights: Vec<f32> = (0..d.b).map(|n| (n % 5) as f32 * 0.5).collect();
    write_npy(&d.path("w.npy"), &[d.b as u64], &weights);
    let mut runs = Vec::new();
    for chunk in ["700", "1", "64"] {
        let out = d.path(&format!("out{chunk}"));
        let args = d.args(&[
            "--backend",
            backend,
            "--top",
            "20",
            "--chunk-rows",
            chunk,
            "--out-dir",
            &s(&out),
            "--sample-weights",
            &s(&d.path("w.npy")),
            "--scale",
            "log",
        ]);
        let v = ok(&run(&args));
        runs.push((v, std::fs::read(out.join("per_example.npy")).unwrap()));
    }
    let (one, bytes) = &runs[0];
    for (v, b) in &runs[1..] {
        let a = one["average_loss"].as_f64().unwrap();
        assert!((v["average_loss"].as_f64().unwrap() - a).abs() <= 1e-12 * a);
        let l = one["loss"].as_f64().unwrap();
        assert!((v["loss"].as_f64().unwrap() - l).abs() <= 1e-12 * l);
        assert_eq!(v["histogram"], one["histogram"]);
        assert_eq!(v["top"], one["top"]);
        assert_eq!(v["count"], one["count"]);
        assert_eq!(b, bytes);
        for (p, q) in v["per_class"]
            .as_array()
            .unwrap()
            .iter()
            .zip(one["per_class"].as_array().unwrap())
        {
            assert_eq!(
                (&p["count"], &p["nonfinite"]),
                (&q["count"], &q["nonfinite"])
            );
            let (x, y) = (p["sum"].as_f64().unwrap(), q["sum"].as_f64().unwrap());
            assert!((x - y).abs() <= 1e-12 * y.abs(), "{backend}: {x} vs {y}");
        }
    }
}

#[test]
fn cpu_and_gpu_audits_agree() {
    let d = data(3000, 12, 3);
    let cpu = ok(&run(&d.args(&[
        "--backend",
        "cpu",
        "--top",
        "15",
        "--bins",
        "12",
    ])));
    let r = run(&d.args(&[
        "--backend",
        "gpu",
        "--top",
        "15",
        "--bins",
        "12",
        "--chunk-rows",
        "1000",
    ]));
    if r.code == Some(2) && r.stderr.contains("no gpu adapter") {
        assert!(!fused_loss::gpu_required(), "{}", r.stderr);
        eprintln!("skipping the GPU audit: {}", r.stderr.trim());
        return;
    }
    let gpu = ok(&r);
    assert_eq!(gpu["backend"], "gpu");
    let a = cpu["average_loss"].as_f64().unwrap();
    assert!((gpu["average_loss"].as_f64().unwrap() - a).abs() <= 1e-6 * a);
    assert_eq!(gpu["count"], cpu["count"]);
    assert_eq!(gpu["disagreements"], cpu["disagreements"]);
    // The same rows in the same order, losses and scores within tolerance.
    let (ct, gt) = (
        cpu["top"].as_array().unwrap(),
        gpu["top"].as_array().unwrap(),
    );
    assert_eq!(ct.len(), gt.len());
    for (c, g) in ct.iter().zip(gt) {
        assert_eq!(
            (&c["row"], &c["label"], &c["predicted"]),
            (&g["row"], &g["label"], &g["predicted"])
        );
        for key in ["loss", "confidence", "margin"] {
            let (x, y) = (c[key].as_f64().unwrap(), g[key].as_f64().unwrap());
            assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "{key}: {x} vs {y}");
        }
    }
    // Edges come from the min and max loss, which agree to f32 rounding;
    // the counts agree exactly for this data.
    for (x, y) in f64s(&cpu["histogram"]["edges"])
        .iter()
        .zip(f64s(&gpu["histogram"]["edges"]))
    {
        assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()));
    }
    assert_eq!(cpu["histogram"]["counts"], gpu["histogram"]["counts"]);
    // Per-class counts agree exactly, sums to the losses' f32 rounding.
    let (cp, gp) = (
        cpu["per_class"].as_array().unwrap(),
        gpu["per_class"].as_array().unwrap(),
    );
    assert_eq!(cp.len(), 12);
    for (c, g) in cp.iter().zip(gp) {
        assert_eq!(
            (&c["count"], &c["nonfinite"]),
            (&g["count"], &g["nonfinite"])
        );
        let (x, y) = (c["sum"].as_f64().unwrap(), g["sum"].as_f64().unwrap());
        assert!((x - y).abs() <= 1e-6 * x.abs(), "sum {x} vs {y}");
    }
}

#[test]
fn audit_takes_the_soft_cap_and_the_z_loss() {
    let d = data(800, 5, 6);
    // Scale the logits up so that the cap matters.
    let logits: Vec<f32> = d.logits.iter().map(|x| x * 4.0).collect();
    write_npy(&d.path("x.npy"), &[d.b as u64, d.c as u64], &logits);
    let batch = Batch::with_labels(&logits, d.c, &d.labels);
    let base = CrossEntropy::new().with_ignore_index(IGNORE);

    // With the cap alone, p_y = exp(-L): the scores follow the capped logits.
    let out = d.path("capped");
    let v = ok(&run(&d.args(&[
        "--backend",
        "reference",
        "--softcap",
        "2.5",
        "--top",
        "25",
        "--out-dir",
        &s(&out),
    ])));
    let losses = read_f32(&out.join("per_example.npy"));
    let want = reference::compute(&base.clone().with_softcap(2.5), &batch).unwrap();
    assert_eq!(losses, want.per_example);
    let plain = reference::compute(&base, &batch).unwrap();
    assert_ne!(losses, plain.per_example);
    for t in v["top"].as_array().unwrap() {
        let n = t["row"].as_u64().unwrap() as usize;
        let conf = t["confidence"].as_f64().unwrap();
        assert!((conf - (-(losses[n] as f64)).exp()).abs() < 1e-5, "row {n}");
    }

    // Both options: the losses are the reference's.
    let out = d.path("both");
    let cpu = ok(&run(&d.args(&[
        "--backend",
        "reference",
        "--softcap",
        "2.5",
        "--z-loss",
        "0.01",
        "--out-dir",
        &s(&out),
    ])));
    let spec = base.with_softcap(2.5).with_z_loss(0.01);
    let want = reference::compute(&spec, &batch).unwrap();
    assert_eq!(read_f32(&out.join("per_example.npy")), want.per_example);
    let avg = cpu["average_loss"].as_f64().unwrap();
    assert!((avg - want.average_loss).abs() <= 1e-12 * want.average_loss);

    // The GPU audit ranks the same rows with the same scores.
    let r = run(&d.args(&["--backend", "gpu", "--softcap", "2.5", "--z-loss", "0.01"]));
    if r.code == Some(2) && r.stderr.contains("no gpu adapter") {
        assert!(!fused_loss::gpu_required(), "{}", r.stderr);
        return;
    }
    let gpu = ok(&r);
    let (ct, gt) = (
        cpu["top"].as_array().unwrap(),
        gpu["top"].as_array().unwrap(),
    );
    assert_eq!(ct.len(), gt.len());
    for (c, g) in ct.iter().zip(gt) {
        assert_eq!((&c["row"], &c["predicted"]), (&g["row"], &g["predicted"]));
        for key in ["loss", "confidence", "margin"] {
            let (x, y) = (c[key].as_f64().unwrap(), g[key].as_f64().unwrap());
            assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "{key}: {x} vs {y}");
        }
    }
    // Bad values are the library's errors.
    expect_error(
        &d,
        &d.args(&["--backend", "cpu", "--softcap", "0"]),
        "softcap",
    );
    expect_error(
        &d,
        &d.args(&["--backend", "cpu", "--z-loss", "-1"]),
        "z-loss",
    );
}

/// Exit 2, one `error:` line naming `needle`, nothing on stdout, no panic,
/// and no file left in the output directories (nor the directory itself).
fn expect_error(d: &Data, args: &[String], needle: &str) {
    let out = d.path("err_out");
    let tb = d.path("err_tb");
    let mut full = args.to_vec();
    full.extend(["--out-dir".into(), s(&out), "--tensorboard".into(), s(&tb)]);
    let r = run(&full);
    assert_eq!(
        r.code,
        Some(2),
        "{full:?}\nstdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| !l.starts_with("note:"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"));
    assert!(r.stdout.is_empty());
    assert!(!out.exists(), "{out:?} was left behind");
    assert!(!tb.exists(), "{tb:?} was left behind");
}

#[test]
fn bad_input_exits_2_and_writes_nothing() {
    let d = data(100, 4, 4);
    let base = |extra: &[&str]| {
        let mut a = d.args(&["--backend", "cpu"]);
        a.extend(extra.iter().map(|e| e.to_string()));
        a
    };
    // A label out of range in the third chunk names its global row.
    let mut labels: Vec<i64> = d.labels.iter().map(|&y| y as i64).collect();
    labels[57] = 4;
    write_npy(&d.path("bad_y.npy"), &[d.b as u64], &labels);
    let mut args = base(&["--chunk-rows", "20"]);
    args[4] = s(&d.path("bad_y.npy"));
    expect_error(&d, &args, "row 57");
    // A negative sample weight, also past the first chunk.
    let mut w = vec![1.0f32; d.b];
    w[43] = -1.0;
    write_npy(&d.path("w.npy"), &[d.b as u64], &w);
    expect_error(
        &d,
        &base(&[
            "--chunk-rows",
            "20",
            "--sample-weights",
            &s(&d.path("w.npy")),
        ]),
        "index 43",
    );
    // Labels of the wrong length, a missing file, garbage, bad options.
    write_npy(&d.path("short.npy"), &[3], &[0i64, 1, 2]);
    let mut args = base(&[]);
    args[4] = s(&d.path("short.npy"));
    expect_error(&d, &args, "labels");
    let mut args = base(&[]);
    args[2] = s(&d.path("missing.npy"));
    expect_error(&d, &args, "missing.npy");
    std::fs::write(d.path("junk.npy"), b"not an npy file at all").unwrap();
    let mut args = base(&[]);
    args[2] = s(&d.path("junk.npy"));
    expect_error(&d, &args, "junk.npy");
    expect_error(&d, &base(&["--bins", "0"]), "bins");
    expect_error(&d, &base(&["--range", "3,1"]), "range");
    expect_error(&d, &base(&["--scale", "log", "--range", "0,1"]), "log");
    expect_error(&d, &base(&["--chunk-rows", "0"]), "chunk-rows");
    expect_error(&d, &base(&["--label-smoothing", "2"]), "label smoothing");
    // A truncated logits file fails in a later chunk, after files were begun.
    let bytes = std::fs::read(d.path("x.npy")).unwrap();
    std::fs::write(d.path("cut.npy"), &bytes[..bytes.len() - 40]).unwrap();
    let mut args = base(&["--chunk-rows", "10"]);
    args[2] = s(&d.path("cut.npy"));
    expect_error(&d, &args, "cut.npy");
}

#[test]
fn help_lists_the_audit_options() {
    let r = run(&["audit".into(), "--help".into()]);
    assert_eq!(r.code, Some(0));
    for option in [
        "--logits",
        "--labels",
        "--top",
        "--bins",
        "--scale",
        "--range",
        "--chunk-rows",
        "--out-dir",
        "--tensorboard",
        "--step",
        "--backend",
        "--json",
        "--ignore-index",
        "--sample-weights",
        "--class-weights",
        "--probabilities",
        "--label-smoothing",
        "--z-loss",
        "--softcap",
    ] {
        assert!(r.stdout.contains(option), "{option} missing");
    }
}

#[test]
fn demo_finds_the_flipped_labels() {
    let r = run(&["demo".into(), "--backend".into(), "cpu".into()]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains("precision"))
        .unwrap_or_else(|| panic!("no precision line:\n{}", r.stdout));
    let precision: f64 = line
        .split("precision ")
        .nth(1)
        .and_then(|t| t.split('%').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    eprintln!("{line}");
    // Chance is 5%; the top-100 losses are mostly the flipped labels.
    assert!(precision >= 70.0, "{line}");
    assert!(r.stdout.contains("reference check: ok"));
}
