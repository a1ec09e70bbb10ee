#!/usr/bin/env bash
# The BENCHMARKS.md summary table in one run: for each shape, the f64
# reference, the fast CPU path, the GPU (kernel time by timestamps, end to
# end, the load-only roofline and the load + exp floor) on the default
# adapter, and JAX/XLA's CPU backend when `import jax` works, ROUNDS times
# (default 5), the backends alternating shape by shape. The memory read
# bandwidth comes from the CPU runs (`memory_read_gbps`). Prints one JSON
# object per run; pipe them to tools/bench_table.py for the medians as a
# markdown table.
#
#   cargo build --release
#   tools/bench_table.sh > table.jsonl && python3 tools/bench_table.py < table.jsonl
#
# SHAPES (default "32x10 65536x10 4096x1000 512x32000 16x262144"),
# ROUNDS, ITERS (timed iterations per fused-loss run, default 20; the 32x10
# GPU run takes 300) and FUSED_LOSS_BIN override the defaults.
set -eu
bin=${FUSED_LOSS_BIN:-target/release/fused-loss}
rounds=${ROUNDS:-5}
iters=${ITERS:-20}
shapes=${SHAPES:-"32x10 65536x10 4096x1000 512x32000 16x262144"}
xla=0
if python3 -c "import jax" 2>/dev/null; then
    xla=1
else
    echo "bench_table: jax not importable, no XLA column" >&2
fi
tag() { sed "s/^{/{\"round\":$1,/"; }
for round in $(seq "$rounds"); do
    for shape in $shapes; do
        b=${shape%x*}
        c=${shape#*x}
        n=$iters
        if [ "$b" -le 1024 ] && [ "$c" -le 64 ]; then n=300; fi
        for backend in reference cpu gpu; do
            "$bin" bench --backend "$backend" --batch "$b" --classes "$c" \
                --iters "$n" --json | tag "$round"
        done
        if [ "$xla" = 1 ]; then
            python3 "$(dirname "$0")/xla_bench.py" --json 10 "$shape" | tag "$round"
        fi
    done
done
