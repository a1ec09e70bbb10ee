"""PyTorch peer for the GPU benches: `F.cross_entropy` (forward, and forward
with backward) on CUDA at the bench shapes, timed with CUDA events, plus a
device-to-device copy. Prints one JSON object per line with the same
model-bytes metric as `fused-loss bench` (DESIGN §6). Not a project
dependency; run it by hand where PyTorch and a GPU exist:

    python3 tools/torch_peer.py
"""
import json

import torch
import torch.nn.functional as F

SHAPES = [(32, 10), (65536, 10), (1048576, 10), (4096, 1000), (16384, 4096),
          (4096, 32000), (128, 262144)]


def median_ms(fn, iters=10, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def main():
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    big = torch.ones(1 << 28, device=device)  # 1 GiB
    copy = torch.empty_like(big)
    ms = median_ms(lambda: copy.copy_(big))
    print(json.dumps({"peer": "torch copy", "device": name,
                      "copy_gbps": 2 * big.numel() * 4 / ms / 1e6}))
    for b, c in SHAPES:
        x = torch.rand(b, c, device=device) * 8 - 4
        y = torch.randint(0, c, (b,), device=device)
        fwd = median_ms(lambda: F.cross_entropy(x, y))
        xg = x.clone().requires_grad_(True)

        def step():
            xg.grad = None
            F.cross_entropy(xg, y).backward()
        grad = median_ms(step)
        model = b * c * 4 + b * 12
        print(json.dumps({"peer": "torch F.cross_entropy", "device": name,
                          "batch": b, "classes": c,
                          "forward_ms": fwd, "forward_gbps": model / fwd / 1e6,
                          "grad_ms": grad,
                          "grad_gbps": (model + b * c * 4) / grad / 1e6}))


if __name__ == "__main__":
    main()
