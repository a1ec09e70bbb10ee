//! `fused-loss bench`: the JSON keys the speed issue names, on every backend,
//! and bad arguments. No timing is asserted, only that the figures exist and
//! are consistent.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_fused-loss");

fn bench(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(BIN)
        .arg("bench")
        .args(args)
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .expect("run the fused-loss binary");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn json(args: &[&str]) -> Option<serde_json::Value> {
    let (code, stdout, stderr) = bench(args);
    if code == Some(2) && stderr.contains("no gpu adapter") && !fused_loss::gpu_required() {
        eprintln!("skipping the GPU bench test: {stderr}");
        return None;
    }
    assert_eq!(code, Some(0), "stderr: {stderr}");
    Some(serde_json::from_str(stdout.trim()).expect("one JSON object"))
}

fn positive(value: &serde_json::Value, key: &str) -> f64 {
    let x = value[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {value}"));
    assert!(x > 0.0 && x.is_finite(), "{key} = {x}");
    x
}

const COMMON_KEYS: [&str; 4] = [
    "kernel_ms",
    "end_to_end_ms",
    "kernel_gbps",
    "end_to_end_gbps",
];

#[test]
fn cpu_backends_report_kernel_equal_to_end_to_end() {
    for backend in ["cpu", "reference"] {
        let args = [
            "--backend",
            backend,
            "--batch",
            "64",
            "--classes",
            "7",
            "--iters",
            "2",
            "--json",
        ];
        let v = json(&args).unwrap();
        assert_eq!(v["backend"], backend);
        assert_eq!(v["batch"], 64);
        assert_eq!(v["classes"], 7);
        assert!(v["adapter"].as_str().is_some_and(|a| !a.is_empty()));
        for key in COMMON_KEYS {
            positive(&v, key);
        }
        assert_eq!(v["kernel_ms"], v["end_to_end_ms"]);
        positive(&v, "memory_read_gbps");
        assert!(v.get("roofline_gbps").is_none());
        assert!(v.get("exp_floor_gbps").is_none());
    }
}

#[test]
fn gpu_bench_reports_the_roofline_and_the_round_trip() {
    for (classes, grad) in [("10", false), ("300", true)] {
        let mut args = vec![
            "--batch",
            "256",
            "--classes",
            classes,
            "--iters",
            "2",
            "--json",
        ];
        if grad {
            args.push("--grad");
        }
        let Some(v) = json(&args) else { return };
        assert_eq!(v["backend"], "gpu");
        assert_eq!(v["grad"], grad);
        let model_bytes =
            256 * classes.parse::<u64>().unwrap() * 4 * if grad { 2 } else { 1 } + 256 * 12;
        assert_eq!(v["model_bytes"], model_bytes);
        positive(&v, "end_to_end_ms");
        positive(&v, "end_to_end_gbps");
        positive(&v, "roofline_gbps");
        positive(&v, "exp_floor_gbps");
        positive(&v, "copy_gbps");
        positive(&v, "round_trip_ms");
        positive(&v, "overhead_ratio");
        let kernel = v["kernel"].as_str().expect("kernel name");
        assert!(["narrow", "wide", "subgroup"].contains(&kernel), "{kernel}");
        let adapter = v["adapter"].as_str().unwrap();
        if adapter.contains("llvmpipe") {
            // lavapipe has timestamp queries: kernel time is measured there.
            // The two are medians of different samples, so only their
            // consistency with the model bytes is checked, never their order.
            let kernel_ms = positive(&v, "kernel_ms");
            let kernel_gbps = positive(&v, "kernel_gbps");
            let implied = model_bytes as f64 / (kernel_ms * 1e-3) / 1e9;
            assert!((kernel_gbps / implied - 1.0).abs() < 1e-6, "{v}");
            let floor = positive(&v, "exp_floor_gbps");
            let over_floor = positive(&v, "kernel_over_exp_floor");
            assert!((over_floor * floor / kernel_gbps - 1.0).abs() < 1e-9, "{v}");
        }
    }
}

#[test]
fn forced_kernels_and_grouping_are_taken() {
    for kernel in ["wide", "narrow", "subgroup"] {
        let args = [
            "--batch",
            "32",
            "--classes",
            "40",
            "--iters",
            "1",
            "--kernel",
            kernel,
            "--rows-per-group",
            "3",
            "--json",
        ];
        let Some(v) = json(&args) else { return };
        let ran = v["kernel"].as_str().unwrap();
        // Without subgroups the subgroup kernel falls back to the wide one.
        assert!(
            ran == kernel || (kernel == "subgroup" && ran == "wide"),
            "{ran}"
        );
    }
}

#[test]
fn text_output_names_the_figures() {
    let (code, stdout, stderr) = bench(&[
        "--backend",
        "reference",
        "--batch",
        "8",
        "--classes",
        "3",
        "--iters",
        "1",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    for needle in ["backend", "kernel", "end to end", "memory read", "GB/s"] {
        assert!(stdout.contains(needle), "{needle} missing:\n{stdout}");
    }
}

#[test]
fn label_smoothing_is_taken_and_reported() {
    for backend in ["cpu", "gpu"] {
        let args = [
            "--backend",
            backend,
            "--batch",
            "64",
            "--classes",
            "130",
            "--iters",
            "2",
            "--label-smoothing",
            "0.1",
            "--json",
        ];
        let Some(v) = json(&args) else { return };
        assert_eq!(v["label_smoothing"].as_f64(), Some(0.1f32 as f64), "{v}");
        positive(&v, "end_to_end_gbps");
    }
}

#[test]
fn bad_arguments_exit_2_with_one_error_line() {
    for args in [
        vec!["--batch", "0", "--classes", "10"],
        vec!["--batch", "10"],
        vec!["--batch", "10", "--classes", "10", "--iters", "0"],
        vec!["--batch", "10", "--classes", "10", "--backend", "tpu"],
        vec!["--batch", "4000000000", "--classes", "10"],
        vec!["--batch", "100000", "--classes", "100000"],
        vec!["--batch", "10", "--classes", "10", "--rows-per-group", "0"],
        vec![
            "--batch",
            "10",
            "--classes",
            "10",
            "--label-smoothing",
            "1.5",
        ],
        vec![
            "--batch",
            "10",
            "--classes",
            "10",
            "--backend",
            "cpu",
            "--label-smoothing",
            "-0.1",
        ],
    ] {
        let (code, stdout, stderr) = bench(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error:"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stdout.is_empty());
    }
}
