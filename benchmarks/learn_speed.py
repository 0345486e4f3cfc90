"""Speed of learned registration (issue 13): training steps per second and inference time per pair for
each network at 64^3 and 128^3 model grids, on 2 CPU threads (and CUDA with --device cuda), with the
peak memory of the process. Each configuration runs in its own process (clean peak memory).

Inference = the network on the model grid + the transform on a fixed image of the same size + the warp
(what ``predict`` does after reading the files). Synthetic images: speed does not depend on content.

    python benchmarks/learn_speed.py [--sizes 64,128] [--kinds svf,displacement] [--device cpu] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(kind: str, size: int, device: str, threads: int, steps: int) -> dict:
    import torch

    from morphreg.core.grid import Grid
    from morphreg.image.image import Image
    from morphreg.learn.model import ModelSpace, RegistrationNet
    from morphreg.transforms.warp import warp

    torch.set_num_threads(threads)
    net = RegistrationNet(ModelSpace((size,) * 3, (1.5,) * 3), kind).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    f, m = torch.rand(1, 1, size, size, size, device=device), torch.rand(1, 1, size, size, size, device=device)
    times = []
    for _ in range(steps + 1):  # the first step warms up
        t0 = time.perf_counter()
        field, matrix, shift = net(f, m)
        mapped = net.mapped(field, matrix, shift)
        loss = (mapped - net.grid.points(device=device)).pow(2).mean() + field.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    grid = Grid((size,) * 3, spacing=(1.5,) * 3)
    fixed, moving = Image(torch.rand(1, size, size, size), grid), Image(torch.rand(1, size, size, size), grid)
    net.eval()
    infer = []
    for _ in range(3):
        t0 = time.perf_counter()
        transform = net.predict(fixed, moving)
        warp(moving, transform, grid)
        infer.append(time.perf_counter() - t0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    return {"kind": kind, "size": size, "steps_per_s": 1 / (sum(times[1:]) / steps), "inference_s": min(infer),
            "peak_mb": peak_mb, "parameters": sum(p.numel() for p in net.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="64,128")
    ap.add_argument("--kinds", default="svf,displacement")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--one", nargs=2, metavar=("KIND", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.device, args.threads, args.steps)))
        return
    print(f"| network | model grid | training steps / s | inference s / pair | peak memory MB ({args.device}, "
          f"{args.threads} threads) |\n|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        for kind in args.kinds.split(","):
            proc = subprocess.run([sys.executable, __file__, "--one", kind, str(size), "--device", args.device,
                                   "--threads", str(args.threads), "--steps", str(args.steps)], capture_output=True, text=True)
            if proc.returncode:
                print(f"| U-Net {kind} | {size}^3 | failed: {proc.stderr.strip().splitlines()[-1][:120]} | | |", flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"| U-Net {kind} ({r['parameters'] / 1e3:.0f} k parameters) | {size}^3 | {r['steps_per_s']:.3f} | "
                  f"{r['inference_s']:.2f} | {r['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
