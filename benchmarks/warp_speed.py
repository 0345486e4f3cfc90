"""Time morphreg's dense warp against SimpleITK.Resample of the same warp (same thread count).

A 160x192x224 float32 volume is warped through a dense displacement field on its own grid with
linear interpolation. Prints best-of-N wall times and the ratio ours / SimpleITK.

    python benchmarks/warp_speed.py [--threads 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import SimpleITK as sitk
import torch

from morphreg.image.grid import Grid
from morphreg.image.image import Image
from morphreg.image.io import to_sitk
from morphreg.transforms import DisplacementFieldTransform, warp


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)

    gen = torch.Generator().manual_seed(args.seed)
    grid = Grid([160, 192, 224], [-80.0, -96.0, -112.0], [1.0, 1.0, 1.0])
    image = Image(torch.rand(1, *grid.shape, generator=gen), grid)
    field = torch.randn(1, 3, *grid.shape, generator=gen) * 2.0
    transform = DisplacementFieldTransform(field, grid)

    moving = to_sitk(image)
    sitk_tx = transform.to_sitk()  # float64 displacement image, as ITK wants

    def ours():
        with torch.no_grad():
            return warp(image, transform, grid, "linear")

    def theirs():
        return sitk.Resample(moving, moving, sitk_tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)

    ours()  # warm-up (allocations, lazy initialisation)
    t_ours = best_time(ours, args.repeats)
    t_sitk = best_time(theirs, args.repeats)
    diff = np.abs(ours().data[0].numpy() - sitk.GetArrayFromImage(theirs())).max()
    print(f"volume {grid.size}, dense displacement field, linear, {args.threads} threads, best of {args.repeats}")
    print(f"morphreg warp       {t_ours:7.3f} s")
    print(f"SimpleITK.Resample  {t_sitk:7.3f} s")
    print(f"ratio ours/sitk     {t_ours / t_sitk:7.2f}")
    print(f"max abs difference  {diff:.2e}")


if __name__ == "__main__":
    main()
