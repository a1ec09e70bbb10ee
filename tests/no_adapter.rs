//! Behaviour without a usable adapter. An adapter name that nothing matches
//! stands in for a machine without a GPU. This is its own test binary, with
//! one test, because it changes the process environment.

use fused_loss::*;

fn with_env<T>(vars: &[(&str, Option<&str>)], f: impl FnOnce() -> T) -> T {
    let saved: Vec<_> = vars
        .iter()
        .map(|(k, _)| (*k, std::env::var_os(k)))
        .collect();
    for (k, v) in vars {
        match v {
            Some(v) => std::env::set_var(k, v),
            None => std::env::remove_var(k),
        }
    }
    let out = f();
    for (k, v) in saved {
        match v {
            Some(v) => std::env::set_var(k, v),
            None => std::env::remove_var(k),
        }
    }
    out
}

const NOTHING: &str = "no such adapter anywhere";

#[test]
fn missing_adapter() {
    // `gpu` is an error.
    let result = with_env(&[("WGPU_ADAPTER_NAME", Some(NOTHING))], || {
        pollster::block_on(Engine::gpu())
    });
    match result {
        Err(Error::NoAdapter(message)) => {
            assert!(message.contains("WGPU_ADAPTER_NAME"), "{message}")
        }
        other => panic!("expected NoAdapter, got {other:?}"),
    }

    // `auto` falls back to the CPU and says why.
    let engine = with_env(
        &[
            ("WGPU_ADAPTER_NAME", Some(NOTHING)),
            (REQUIRE_GPU_ENV, None),
        ],
        Engine::auto_blocking,
    )
    .expect("auto falls back");
    assert_eq!(engine.backend(), Backend::Cpu);
    assert!(engine.fallback_reason().unwrap().contains("no gpu adapter"));
    let out = engine
        .compute_blocking(
            &CrossEntropy::new(),
            &Batch::with_labels(&[0.0, 1.0], 2, &[1]),
        )
        .unwrap();
    assert_eq!(out.backend, Backend::Cpu);

    // With FUSED_LOSS_REQUIRE_GPU=1, `auto` must not fall back.
    let result = with_env(
        &[
            ("WGPU_ADAPTER_NAME", Some(NOTHING)),
            (REQUIRE_GPU_ENV, Some("1")),
        ],
        Engine::auto_blocking,
    );
    match result {
        Err(Error::NoAdapter(message)) => assert!(message.contains(REQUIRE_GPU_ENV), "{message}"),
        other => panic!("expected NoAdapter, got {other:?}"),
    }

    // On a CPU-type adapter `auto` times it against the fast CPU path and
    // keeps the faster, saying why when that is the CPU; a GPU is kept.
    let Ok(gpu) = Engine::gpu_blocking() else {
        return;
    };
    let context = gpu.gpu_context().unwrap();
    let software = context.device().adapter_info().device_type == wgpu::DeviceType::Cpu;
    let engine = with_env(&[(REQUIRE_GPU_ENV, None)], Engine::auto_blocking).unwrap();
    match engine.backend() {
        Backend::Cpu => {
            assert!(software, "a GPU adapter is never timed away");
            let reason = engine.fallback_reason().unwrap();
            assert!(reason.contains("calibration batch"), "{reason}");
            assert!(reason.contains(context.adapter()), "{reason}");
        }
        backend => {
            assert_eq!(backend, Backend::Gpu);
            assert_eq!(engine.fallback_reason(), None);
        }
    }
    // With FUSED_LOSS_REQUIRE_GPU=1 the adapter is kept untimed.
    let engine = with_env(&[(REQUIRE_GPU_ENV, Some("1"))], Engine::auto_blocking).unwrap();
    assert_eq!(engine.backend(), Backend::Gpu);
}
