#!/usr/bin/env bash
# A/B of two fused-loss builds on one adapter, in one run: for each shape,
# `fused-loss bench --json` from build A, then from build B, ROUNDS times
# (default 5), and with SCALAR=1 the one-thread scalar loop of
# `examples/cpu_throughput` at 65536x10 once a round. Prints one JSON object
# per bench run, tagged with "build"; the scalar loop's lines as printed.
#
#   git worktree add /tmp/base <commit>
#   (cd /tmp/base && CARGO_TARGET_DIR=/tmp/base-target cargo build --release)
#   cargo build --release --examples
#   tools/kernel_ab.sh /tmp/base-target/release/fused-loss target/release/fused-loss > ab.jsonl
set -eu
a=$1
b=$2
rounds=${ROUNDS:-5}
iters=${ITERS:-10}
shapes=${SHAPES:-"65536x10 4096x1000 512x32000"}
for _ in $(seq "$rounds"); do
    for shape in $shapes; do
        for build in A B; do
            if [ "$build" = A ]; then bin=$a; else bin=$b; fi
            "$bin" bench --batch "${shape%x*}" --classes "${shape#*x}" --iters "$iters" --json |
                sed "s/^{/{\"build\":\"$build\",/"
        done
    done
    if [ "${SCALAR:-0}" = 1 ]; then
        target/release/examples/cpu_throughput 5 scalar 65536x10 | grep scalar
    fi
done
