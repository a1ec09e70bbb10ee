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
# PARTS="bench tests" (the default) picks what runs, in that order; each
# prebuilt test executable runs under `timeout TEST_TIMEOUT` (default 300 s),
# test by test, so that one stuck test is named and the rest still run.
# Results: OUT_DIR/tests.log, OUT_DIR/bench.jsonl (default OUT_DIR: gpu-bench).
set -u
out=${1:-gpu-bench}
mkdir -p "$out"
bin=${FUSED_LOSS_BIN:-target/release/fused-loss}
export FUSED_LOSS_REQUIRE_GPU=1
export WGPU_BACKEND=${WGPU_BACKEND:-vulkan}
iters=${ITERS:-10}
parts=${PARTS:-bench tests}
test_timeout=${TEST_TIMEOUT:-300}

if [ -z "${FUSED_LOSS_BIN:-}" ]; then
    cargo build --release || exit 1
fi

status=0
run_tests() {
    if [ -n "${FUSED_LOSS_TEST_DIR:-}" ]; then
        for test in "$FUSED_LOSS_TEST_DIR"/*; do
            echo "== $(basename "$test")"
            for name in $("$test" --list 2>/dev/null | sed -n 's/: test$//p'); do
                timeout "$test_timeout" "$test" --exact "$name" --test-threads 1 \
                    > /tmp/one-test.log 2>&1
                rc=$?
                if [ $rc -ne 0 ]; then
                    status=1
                    echo "FAILED ($([ $rc -eq 124 ] && echo "timed out" || echo "exit $rc")): $name"
                    tail -20 /tmp/one-test.log
                else
                    echo "ok: $name"
                fi
            done
        done
    else
        cargo test --release 2>&1 || status=1
    fi
}

run() {
    timeout 120 "$bin" bench --json --iters "${ITERS:-$iters}" --warmup 2 "$@" \
        || echo "{\"failed\": \"$*\"}"
}
run_benches() {
    # Small batches: enough calls for a steady median of the end-to-end time
    # against the bare round trip.
    ITERS=300 run --batch 32 --classes 10
    ITERS=300 run --batch 512 --classes 1000
    run --batch 65536 --classes 10
    run --batch 1048576 --classes 10
    for shape in "4096 1000" "16384 4096" "4096 32000" "128 262144"; do
        set -- $shape
        for kernel in auto wide subgroup; do
            run --batch "$1" --classes "$2" --kernel "$kernel"
        done
        run --batch "$1" --classes "$2" --grad
        # One read where the row fits the row cache (two by default here).
        [ "$2" -le 4096 ] && run --batch "$1" --classes "$2" --grad --single-read true
    done
    # Few long rows unsplit (the default splits them), long rows split
    # (the default leaves 4,096 rows whole), and the subgroup kernel's
    # workgroup sizes.
    run --batch 128 --classes 262144 --row-segments 1
    for segments in 2 4 8; do
        run --batch 4096 --classes 32000 --row-segments "$segments"
    done
    run --batch 16384 --classes 4096 --row-segments 2
    for wg in 64 128 256 512; do
        run --batch 16384 --classes 4096 --workgroup-size "$wg"
    done
    for wg in 32 64 256 512; do
        run --batch 1048576 --classes 10 --narrow-workgroup-size "$wg"
    done
    for wg in 64 256 512 1024; do
        run --batch 16384 --classes 4096 --kernel wide --wide-workgroup-size "$wg"
    done
    # The subgroup kernel's row finishing shared across lanes (lavapipe's
    # default) against lane 0 finishing every row (the default here).
    for shape in "4096 1000" "16384 4096" "4096 32000"; do
        set -- $shape
        run --batch "$1" --classes "$2" --shared-row-finish true
    done
    # The subgroup kernel's scalar loads, against the vec4 default.
    for shape in "4096 1000" "16384 4096" "4096 32000"; do
        set -- $shape
        run --batch "$1" --classes "$2" --kernel subgroup --vector-loads false
    done
    # Kernels built for each call's options (lavapipe's default) against
    # kernels built once for any options (the default here); the gradient
    # both ways.
    for shape in "65536 10" "4096 1000" "16384 4096"; do
        set -- $shape
        run --batch "$1" --classes "$2" --specialize-flags true
    done
    run --batch 4096 --classes 1000 --grad
    run --batch 4096 --classes 1000 --grad --specialize-flags true
}

for part in $parts; do
    case $part in
        bench)
            run_benches > "$out/bench.jsonl"
            echo "benches: $(wc -l < "$out/bench.jsonl") runs in $out/bench.jsonl"
            ;;
        tests)
            run_tests > "$out/tests.log"
            echo "tests: $([ $status -eq 0 ] && echo passed || echo FAILED) (see $out/tests.log)"
            ;;
    esac
done
exit $status
