#!/usr/bin/env bash
# Runs the test suite and the GPU benches on the machine's GPU adapter
# (DESIGN §7): every test must pass on it, then `fused-loss bench --json`
# over the shapes below, one JSON object per line.
#
#   tools/gpu_bench.sh [OUT_DIR]
#
# With cargo at hand it builds and tests in release mode. On a machine
# without a toolchain, point FUSED_LOSS_BIN at a prebuilt `fused-loss` and
# FUSED_LOSS_TEST_DIR at a folder of prebuilt test executables
# (`cargo test --release --no-run` lists them).
# Results: OUT_DIR/tests.log, OUT_DIR/bench.jsonl (default OUT_DIR: gpu-bench).
set -u
out=${1:-gpu-bench}
mkdir -p "$out"
bin=${FUSED_LOSS_BIN:-target/release/fused-loss}
export FUSED_LOSS_REQUIRE_GPU=1
export WGPU_BACKEND=${WGPU_BACKEND:-vulkan}
iters=${ITERS:-10}

if [ -z "${FUSED_LOSS_BIN:-}" ]; then
    cargo build --release || exit 1
fi

status=0
{
    if [ -n "${FUSED_LOSS_TEST_DIR:-}" ]; then
        for test in "$FUSED_LOSS_TEST_DIR"/*; do
            echo "== $(basename "$test")"
            "$test" --test-threads 4 2>&1 | grep -E '^test result|FAILED|panicked' || true
            [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
        done
    else
        cargo test --release 2>&1 || status=1
    fi
} > "$out/tests.log"
echo "tests: $([ $status -eq 0 ] && echo passed || echo FAILED) (see $out/tests.log)"

run() {
    "$bin" bench --json --iters "$iters" --warmup 2 "$@" || echo "{\"failed\": \"$*\"}"
}
{
    run --batch 32 --classes 10
    run --batch 65536 --classes 10
    run --batch 1048576 --classes 10
    for shape in "4096 1000" "16384 4096" "4096 32000" "128 262144"; do
        set -- $shape
        for kernel in auto wide subgroup; do
            run --batch "$1" --classes "$2" --kernel "$kernel"
        done
        run --batch "$1" --classes "$2" --grad
    done
} > "$out/bench.jsonl"
echo "benches: $(wc -l < "$out/bench.jsonl") runs in $out/bench.jsonl"
exit $status
