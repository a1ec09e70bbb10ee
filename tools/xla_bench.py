#!/usr/bin/env python3
"""JAX/XLA's CPU cross-entropy at the fast CPU path's benchmark shapes.

Times `jit(logsumexp(x, axis=1) - take_along_axis(x, labels))` on logits
drawn like examples/cpu_throughput.rs's and prints the median of the
rounds in the same model bytes per second (`B*C*4 + B*12` over the time).
Needs `pip install "jax[cpu]"`; not a dependency of the project.

    python3 tools/xla_bench.py                 # every shape, 10 rounds
    python3 tools/xla_bench.py 20 65536x10     # 20 rounds, one shape (any BxC)
    python3 tools/xla_bench.py --json 10 32x10 # one JSON object per shape
"""

import json
import os
import sys
import time

import numpy as np

SHAPES = [(65_536, 10), (4096, 1000), (512, 32_000), (16, 262_144)]


def synthetic(batch, classes):
    """Uniform [-4, 4) logits and uniform labels, the distribution of
    examples/cpu_throughput.rs (from numpy's generator; the values differ)."""
    rng = np.random.default_rng(0x2545F491)
    logits = rng.uniform(-4.0, 4.0, size=(batch, classes)).astype(np.float32)
    labels = rng.integers(0, classes, size=batch, dtype=np.int32)
    return logits, labels


def main():
    import jax
    import jax.numpy as jnp
    from jax.scipy.special import logsumexp

    args = sys.argv[1:]
    as_json = "--json" in args
    args = [a for a in args if a != "--json"]
    rounds = int(args[0]) if args else 10
    shapes = [tuple(int(v) for v in a.split("x")) for a in args[1:]] or SHAPES

    @jax.jit
    def loss(x, y):
        picked = jnp.take_along_axis(x, y[:, None], axis=1)[:, 0]
        return logsumexp(x, axis=1) - picked

    backend = f"jax {jax.__version__} xla cpu ({os.cpu_count()} cpus)"
    if not as_json:
        print(f"{backend}, median of {rounds} rounds")
    for b, c in shapes:
        name = f"{b}x{c}"
        x, y = synthetic(b, c)
        x, y = jax.device_put(x), jax.device_put(y)
        loss(x, y).block_until_ready()  # compile and warm up
        times = []
        for _ in range(rounds):
            calls = 0
            start = time.perf_counter()
            while time.perf_counter() - start < 0.05:
                loss(x, y).block_until_ready()
                calls += 1
            times.append((time.perf_counter() - start) / calls)
        seconds = sorted(times)[len(times) // 2]
        model_bytes = b * c * 4 + b * 12
        gbps = model_bytes / seconds / 1e9
        if as_json:
            print(json.dumps({"backend": "xla", "adapter": backend, "batch": b,
                              "classes": c, "end_to_end_ms": seconds * 1e3,
                              "end_to_end_gbps": gbps}))
        else:
            print(f"{name:>10}  {seconds * 1e6:>9.1f} us  {gbps:>6.2f} GB/s")


if __name__ == "__main__":
    main()
