#!/usr/bin/env bash
# A/B of the GPU planner's choices on one adapter, in one run: each line
# runs `fused-loss bench --json` with an explicit setting (the planner's GPU
# choice) and with the default, alternating, ROUNDS times (default 3).
# Prints one JSON object per run, tagged with "case" and "setting".
#
#   tools/planner_ab.sh > planner.jsonl
#
# Cases: grouping (rows per workgroup: the GPU planner's choice against the
# CPU-type adapter default), split rows (never against the default), and
# the subgroup kernel's workgroup size.
set -eu
bin=${FUSED_LOSS_BIN:-target/release/fused-loss}
rounds=${ROUNDS:-3}
iters=${ITERS:-10}
run() {
    local case=$1 setting=$2
    shift 2
    "$bin" bench --iters "${n:-$iters}" --json "$@" |
        sed "s/^{/{\"case\":\"$case\",\"setting\":\"$setting\",/"
}
for _ in $(seq "$rounds"); do
    # What the GPU planner gives these shapes: 4,096 workgroups a chunk.
    run grouping-65536x10 gpu-planner --batch 65536 --classes 10 --rows-per-group 128
    run grouping-65536x10 default --batch 65536 --classes 10
    run grouping-4096x1000 gpu-planner --batch 4096 --classes 1000 --rows-per-group 16
    run grouping-4096x1000 default --batch 4096 --classes 1000
    run grouping-512x32000 gpu-planner --batch 512 --classes 32000 --rows-per-group 16
    run grouping-512x32000 default --batch 512 --classes 32000
    run split-1x2000000 never --batch 1 --classes 2000000 --row-segments 1
    run split-1x2000000 default --batch 1 --classes 2000000
    for wg in 32 64 128 256; do
        run subgroup-wg-4096x1000 "$wg" --batch 4096 --classes 1000 --workgroup-size "$wg"
    done
    n=300 run small-32x10 default --batch 32 --classes 10
done
