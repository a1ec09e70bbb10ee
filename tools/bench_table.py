#!/usr/bin/env python3
"""Medians of tools/bench_table.sh's JSON lines as the BENCHMARKS.md table.

    python3 tools/bench_table.py < table.jsonl

GB/s are model bytes per second (DESIGN §6); every figure is the median
over the rounds; ratios are of those medians.
"""

import json
import statistics
import sys
from collections import defaultdict


def main():
    runs = [json.loads(line) for line in sys.stdin if line.startswith("{")]
    values = defaultdict(list)
    adapters = {}
    shapes = []
    for run in runs:
        shape = (run["batch"], run["classes"])
        if shape not in shapes:
            shapes.append(shape)
        backend = run["backend"]
        adapters[backend] = run.get("adapter", "")
        for key in ("kernel_gbps", "end_to_end_gbps", "roofline_gbps",
                    "exp_floor_gbps", "memory_read_gbps", "end_to_end_ms", "kernel_ms",
                    "round_trip_ms"):
            if key in run:
                values[(shape, backend, key)].append(run[key])
        if "kernel" in run:
            adapters[("kernel", shape)] = run["kernel"]

    def med(shape, backend, key):
        v = values.get((shape, backend, key))
        return statistics.median(v) if v else None

    def fmt(x, digits=2):
        return "–" if x is None else f"{x:.{digits}f}"

    def ratio(a, b):
        return None if a is None or b is None or b == 0 else a / b

    rounds = max((run.get("round", 1) for run in runs), default=0)
    print(f"Medians of {rounds} rounds. Adapters: "
          + "; ".join(f"{k}: {v}" for k, v in adapters.items() if isinstance(k, str)))
    print()
    print("| shape (B×C) | reference GB/s | fast CPU GB/s | XLA GB/s | fast CPU / XLA "
          "| fast CPU / memory read | memory read GB/s | GPU kernel | GPU kernel GB/s "
          "| GPU end to end GB/s | load-only GB/s | GPU kernel / load-only "
          "| load + exp GB/s | GPU kernel / load + exp |")
    print("|" + "---|" * 14)
    for shape in shapes:
        cpu = med(shape, "cpu", "end_to_end_gbps")
        xla = med(shape, "xla", "end_to_end_gbps")
        memory = med(shape, "cpu", "memory_read_gbps")
        kernel = med(shape, "gpu", "kernel_gbps")
        roofline = med(shape, "gpu", "roofline_gbps")
        exp_floor = med(shape, "gpu", "exp_floor_gbps")
        row = [
            f"{shape[0]:,}×{shape[1]:,}",
            fmt(med(shape, "reference", "end_to_end_gbps"), 3),
            fmt(cpu),
            fmt(xla),
            fmt(ratio(cpu, xla)) + "×" if ratio(cpu, xla) else "–",
            fmt(ratio(cpu, memory)),
            fmt(memory, 1),
            adapters.get(("kernel", shape), "–"),
            fmt(kernel, 3),
            fmt(med(shape, "gpu", "end_to_end_gbps"), 3),
            fmt(roofline, 3),
            fmt(ratio(kernel, roofline)),
            fmt(exp_floor, 3),
            fmt(ratio(kernel, exp_floor)),
        ]
        print("| " + " | ".join(row) + " |")
    small = [s for s in shapes if values.get((s, "gpu", "round_trip_ms"))]
    for shape in small:
        e2e = med(shape, "gpu", "end_to_end_ms")
        trip = med(shape, "gpu", "round_trip_ms")
        print(f"\nGPU end to end at {shape[0]}×{shape[1]}: {fmt(e2e, 3)} ms against a "
              f"{fmt(trip, 3)} ms upload–submit–readback round trip "
              f"({fmt(ratio(e2e, trip))}×).")


if __name__ == "__main__":
    main()
