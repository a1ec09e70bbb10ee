#!/usr/bin/env python3
"""Cross-checks `fused-loss compute --json` against TensorFlow and Keras on
random cases that the Rust tests do not contain.

Not part of CI (the project's tests need no Python). Run it by hand:

    pip install tensorflow-cpu numpy
    cargo build --release
    python3 tools/crosscheck_tf.py [--backend gpu|cpu] [--cases N]

It prints one line per comparison and exits non-zero on any mismatch.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402

BIN = os.path.join(os.path.dirname(__file__), "..", "target", "release", "fused-loss")
TF1 = tf.compat.v1.losses.Reduction


def run(args):
    out = subprocess.run([BIN, "compute", "--json", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"fused-loss failed: {out.stderr}")
    return json.loads(out.stdout)


def close(got, want, what, rel=2e-5):
    ok = abs(got - want) <= rel * (1.0 + abs(want))
    print(f"{'ok  ' if ok else 'FAIL'} {what}: fused-loss {got:.9g}  tf {want:.9g}")
    return ok


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--cases", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(20261126)
    ok = True
    with tempfile.TemporaryDirectory() as d:
        def save(name, array):
            path = os.path.join(d, name)
            np.save(path, array)
            return path

        for case in range(args.cases):
            b, c = int(rng.integers(5, 300)), int(rng.integers(2, 700))
            logits = rng.normal(0, 4, (b, c)).astype(np.float32)
            labels = rng.integers(0, c, b).astype(np.int64)
            onehot = np.eye(c, dtype=np.float32)[labels]
            s = rng.uniform(0, 2, b).astype(np.float32)
            s[rng.random(b) < 0.2] = 0.0
            w = rng.uniform(0.2, 3, c).astype(np.float32)
            eps = float(rng.choice([0.0, 0.15]))
            base = ["--logits", save("x.npy", logits), "--backend", args.backend]
            tag = f"case {case} {b}x{c} eps={eps}"

            # TF1 losses with one-hot targets, label smoothing and sample weights.
            for ours, theirs in [("sum", TF1.SUM), ("mean", TF1.MEAN),
                                 ("sum-over-batch-size", TF1.SUM_OVER_BATCH_SIZE),
                                 ("sum-by-nonzero-weights", TF1.SUM_BY_NONZERO_WEIGHTS)]:
                got = run(base + ["--targets", save("t.npy", onehot), "--sample-weights", save("s.npy", s),
                                  "--label-smoothing", str(eps), "--reduction", ours])
                want = tf.compat.v1.losses.softmax_cross_entropy(
                    onehot, logits, weights=s, label_smoothing=eps, reduction=theirs).numpy()
                ok &= close(got["loss"], float(want), f"{tag} tf1 softmax_cross_entropy {ours}")

            # TF1 sparse losses: class weights enter as weights = s·w[y].
            for ours, theirs in [("sum", TF1.SUM), ("mean", TF1.MEAN)]:
                got = run(base + ["--labels", save("y.npy", labels), "--sample-weights", save("s.npy", s),
                                  "--class-weights", save("w.npy", w), "--reduction", ours])
                want = tf.compat.v1.losses.sparse_softmax_cross_entropy(
                    labels, logits, weights=s * w[labels], reduction=theirs).numpy()
                ok &= close(got["loss"], float(want), f"{tag} tf1 sparse with class weights {ours}")

            # Keras 3: sum_over_batch_size with ignore_class, and probabilities.
            ignored = labels.copy()
            ignored[rng.random(b) < 0.25] = -1
            got = run(base + ["--labels", save("yi.npy", ignored), "--ignore-index", "-1",
                              "--reduction", "sum-over-batch-size"])
            keras = tf.keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, ignore_class=-1, reduction="sum_over_batch_size")
            ok &= close(got["loss"], float(keras(ignored, logits)), f"{tag} keras ignore_class sum_over_batch_size")

            probs = rng.uniform(0, 1, (b, c)).astype(np.float32)
            probs[rng.random((b, c)) < 0.3] = 0.0
            probs[:, 0] += 1e-3
            got = run(["--logits", save("p.npy", probs), "--probabilities", "--targets", save("t.npy", onehot),
                       "--backend", args.backend, "--reduction", "sum"])
            keras = tf.keras.losses.CategoricalCrossentropy(from_logits=False, reduction="sum")
            ok &= close(got["loss"], float(keras(onehot, probs)), f"{tag} keras probabilities sum")

            # Estimator's average_loss: the example-weighted mean.
            per = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits).numpy()
            got = run(base + ["--labels", save("y.npy", labels), "--sample-weights", save("s.npy", s)])
            ok &= close(got["average_loss"], float((per * s).sum() / s.sum()), f"{tag} average_loss")
    print("all agree" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
