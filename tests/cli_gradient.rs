//! The CLI's gradient options: --grad-out, --z-loss, --softcap, and float16
//! logits.

mod common;

use std::path::Path;
use std::process::Command;

use common::{npy, Rng};
use fused_loss::cpu::reference;
use fused_loss::{Batch, CrossEntropy, Reduction};

const BIN: &str = env!("CARGO_BIN_EXE_fused-loss");

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run fused-loss");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read_f32(path: &Path) -> (Vec<u64>, Vec<f32>) {
    let npy = npyz::NpyFile::new(std::fs::File::open(path).unwrap()).unwrap();
    let shape = npy.shape().to_vec();
    (shape, npy.into_vec::<f32>().unwrap())
}

const B: usize = 23;
const C: usize = 9;

#[test]
fn grad_out_matches_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(31);
    let logits = rng.logits(B * C, 4.0);
    let labels: Vec<i64> = rng.labels(B, C).iter().map(|&y| y as i64).collect();
    let x = npy(dir.path(), "x.npy", &[B as u64, C as u64], &logits);
    let y = npy(dir.path(), "y.npy", &[B as u64], &labels);
    let g = dir.path().join("g.npy");
    let labels32: Vec<i32> = labels.iter().map(|&v| v as i32).collect();
    let spec = CrossEntropy::new()
        .with_reduction(Reduction::Sum)
        .with_z_loss(0.01)
        .with_softcap(5.0)
        .with_gradient(true);
    let want = reference::compute(&spec, &Batch::with_labels(&logits, C, &labels32)).unwrap();
    let want_gradient = want.gradient.unwrap();
    for backend in ["reference", "cpu", "gpu"] {
        let (code, stdout, stderr) = run(&[
            "compute",
            "--logits",
            x.to_str().unwrap(),
            "--labels",
            y.to_str().unwrap(),
            "--reduction",
            "sum",
            "--z-loss",
            "0.01",
            "--softcap",
            "5",
            "--grad-out",
            g.to_str().unwrap(),
            "--backend",
            backend,
            "--json",
        ]);
        if backend == "gpu"
            && code == Some(2)
            && stderr.contains("no gpu adapter")
            && !fused_loss::gpu_required()
        {
            eprintln!("skipping the GPU half: {stderr}");
            continue;
        }
        assert_eq!(code, Some(0), "{backend}: {stderr}");
        let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let loss = json["loss"].as_f64().unwrap();
        assert!(
            (loss - want.loss).abs() <= 1e-5 * (1.0 + want.loss.abs()),
            "{backend}: loss {loss} vs {}",
            want.loss
        );
        let (shape, gradient) = read_f32(&g);
        assert_eq!(shape, [B as u64, C as u64]);
        for (k, (&got, &w)) in gradient.iter().zip(&want_gradient).enumerate() {
            if backend == "reference" {
                assert_eq!(got, w, "reference element {k}");
            } else {
                assert!(
                    (got - w).abs() <= 1e-5 * (1.0 + w.abs()) * 10.0,
                    "{backend} element {k}: {got} vs {w}"
                );
            }
        }
        std::fs::remove_file(&g).unwrap();
    }
}

#[test]
fn float16_logits_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(32);
    let wide = rng.logits(B * C, 4.0);
    let halves: Vec<half::f16> = wide.iter().map(|&v| half::f16::from_f32(v)).collect();
    let logits: Vec<f32> = halves.iter().map(|v| v.to_f32()).collect();
    let labels: Vec<i32> = rng.labels(B, C);
    let x = npy(dir.path(), "x16.npy", &[B as u64, C as u64], &halves);
    let y = npy(dir.path(), "y.npy", &[B as u64], &labels);
    let (code, stdout, stderr) = run(&[
        "compute",
        "--logits",
        x.to_str().unwrap(),
        "--labels",
        y.to_str().unwrap(),
        "--backend",
        "reference",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let want = reference::compute(
        &CrossEntropy::new(),
        &Batch::with_labels(&logits, C, &labels),
    )
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["loss"].as_f64().unwrap(), want.loss);
}

#[test]
fn bad_gradient_options_exit_2_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(33);
    let probabilities = rng.distributions(B, C);
    let labels: Vec<i32> = rng.labels(B, C);
    let p = npy(dir.path(), "p.npy", &[B as u64, C as u64], &probabilities);
    let y = npy(dir.path(), "y.npy", &[B as u64], &labels);
    let g = dir.path().join("g.npy");
    let l = dir.path().join("l.npy");
    let (p, y, g, l) = (
        p.to_str().unwrap(),
        y.to_str().unwrap(),
        g.to_str().unwrap(),
        l.to_str().unwrap(),
    );
    let cases: [(&[&str], &str); 4] = [
        (
            &["--probabilities", "--grad-out", g],
            "only defined for logits",
        ),
        (
            &["--probabilities", "--softcap", "3"],
            "softcap is only defined for logits",
        ),
        (&["--z-loss", "-1"], "invalid z-loss"),
        (&["--softcap", "0"], "invalid softcap"),
    ];
    for (extra, needle) in cases {
        let mut args = vec![
            "compute",
            "--logits",
            p,
            "--labels",
            y,
            "--per-example-out",
            l,
            "--backend",
            "cpu",
        ];
        args.extend_from_slice(extra);
        let (code, stdout, stderr) = run(&args);
        assert_eq!(code, Some(2), "{extra:?}: {stderr}");
        assert!(stdout.is_empty());
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(needle),
            "{extra:?}: {stderr}"
        );
        assert!(
            !Path::new(g).exists() && !Path::new(l).exists(),
            "{extra:?} wrote a file"
        );
    }
}

/// float16 logits stay float16 on the GPU (read as stored); the GPU's
/// results equal the library's on the same halves, and `--grad-dtype input`
/// writes a float16 gradient, `float32` (the default) a float32 one.
#[test]
fn float16_logits_keep_their_dtype_and_grad_dtype_input_writes_float16() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(34);
    let halves: Vec<half::f16> = rng
        .logits(B * C, 4.0)
        .iter()
        .map(|&v| half::f16::from_f32(v))
        .collect();
    let labels: Vec<i32> = rng.labels(B, C);
    let x = npy(dir.path(), "x16.npy", &[B as u64, C as u64], &halves);
    let y = npy(dir.path(), "y.npy", &[B as u64], &labels);
    let g = dir.path().join("g.npy");
    let spec = CrossEntropy::new()
        .with_gradient(true)
        .with_gradient_dtype(fused_loss::GradientDtype::Input);
    let batch = Batch::with_labels(&halves, C, &labels);
    for backend in ["cpu", "gpu"] {
        let engine = match backend {
            "cpu" => fused_loss::Engine::cpu(),
            _ => match common::gpu() {
                Some(engine) => engine,
                None => continue,
            },
        };
        let want = engine.compute_half_blocking(&spec, &batch).unwrap();
        for grad_dtype in ["input", "float32"] {
            let (code, stdout, stderr) = run(&[
                "compute",
                "--logits",
                x.to_str().unwrap(),
                "--labels",
                y.to_str().unwrap(),
                "--grad-out",
                g.to_str().unwrap(),
                "--grad-dtype",
                grad_dtype,
                "--backend",
                backend,
                "--json",
            ]);
            assert_eq!(code, Some(0), "{backend} {grad_dtype}: {stderr}");
            let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            assert_eq!(json["loss"].as_f64().unwrap(), want.loss, "{backend}");
            let npy = npyz::NpyFile::new(std::fs::File::open(&g).unwrap()).unwrap();
            assert_eq!(npy.shape(), [B as u64, C as u64]);
            if grad_dtype == "input" {
                let gradient: Vec<f32> = npy
                    .into_vec::<half::f16>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_f32())
                    .collect();
                assert_eq!(&gradient, want.gradient.as_ref().unwrap(), "{backend}");
            } else {
                let gradient = npy.into_vec::<f32>().unwrap();
                let exact = engine
                    .compute_half_blocking(
                        &spec
                            .clone()
                            .with_gradient_dtype(fused_loss::GradientDtype::F32),
                        &batch,
                    )
                    .unwrap();
                assert_eq!(&gradient, exact.gradient.as_ref().unwrap(), "{backend}");
            }
        }
    }
}
