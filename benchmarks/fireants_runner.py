"""Run FireANTs inside its own venv (it pins SimpleITK 2.2.1; see ../shared/PEERS.md) and write its
fixed -> moving mapping for benchmarks/peers.py :func:`run_fireants`. Not imported by the project.

    /work/venvs/fireants/bin/python benchmarks/fireants_runner.py FIXED MOVING OUT_DIR --threads 2 \
        [--params '{"greedy_scales": [4, 2], ...}']

Pipeline (FireANTs' tutorial, tutorials/tutorial1_basic_usage.py, for inter-subject brain MRI):
moments (centre of mass) -> AffineRegistration([4, 2, 1], [200, 100, 50], Adam, lr 3e-3, CC kernel 5)
-> GreedyRegistration([4, 2, 1], [200, 100, 25], CC kernel 5, compositive, smooth_grad_sigma 1,
Adam lr 0.5), loss 'cc' (the fused CUDA ops are not available on the CPU).

Writes to OUT_DIR:
- warp.nii.gz: FireANTs' own ``save_as_ants_transforms`` export: displacement u(x) = T(x) - x on
  the fixed grid, world (ITK LPS) mm, components x, y, z, with T mapping fixed points to moving
  points (an ANTs forward warp, affine folded in).
- moved.nii.gz: FireANTs' own warped moving image on the fixed grid (for the orientation check).
- result.json: seconds per stage (registration calls only, I/O and imports excluded) and settings.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import time

DEFAULTS = {
    "device": "cpu",
    "loss_type": "cc",
    "moments": 1,                      # 1: centre of mass; 2: also principal axes; 0: skip
    "moments_scale": 1,
    "affine_scales": [4, 2, 1],
    "affine_iterations": [200, 100, 50],
    "affine_optimizer": "Adam",
    "affine_lr": 3e-3,
    "affine_cc_kernel_size": 5,
    "greedy_scales": [4, 2, 1],
    "greedy_iterations": [200, 100, 25],
    "greedy_cc_kernel_size": 5,
    "greedy_smooth_grad_sigma": 1.0,
    "greedy_smooth_warp_sigma": 0.5,   # GreedyRegistration's default (the tutorial does not set it)
    "greedy_optimizer": "adam",
    "greedy_lr": 0.5,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fixed")
    ap.add_argument("moving")
    ap.add_argument("out_dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--params", default="{}", help="JSON overrides of the settings above")
    args = ap.parse_args()
    params = {**DEFAULTS, **json.loads(args.params)}
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise SystemExit(f"fireants_runner: unknown settings {sorted(unknown)}")

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        os.environ[var] = str(args.threads)
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    from fireants.io import BatchedImages, FakeBatchedImages, Image
    from fireants.registration.affine import AffineRegistration
    from fireants.registration.greedy import GreedyRegistration
    from fireants.registration.moments import MomentsRegistration

    device = params["device"]
    fixed = BatchedImages([Image.load_file(args.fixed, device=device)])
    moving = BatchedImages([Image.load_file(args.moving, device=device)])
    seconds: dict[str, float] = {}

    init_rigid = None
    if params["moments"]:
        start = time.perf_counter()
        moments = MomentsRegistration(params["moments_scale"], fixed, moving, moments=params["moments"],
                                      loss_type=params["loss_type"])
        moments.optimize()
        init_rigid = moments.get_affine_init()
        seconds["moments"] = time.perf_counter() - start

    start = time.perf_counter()
    affine = AffineRegistration(params["affine_scales"], params["affine_iterations"], fixed, moving,
                                loss_type=params["loss_type"], optimizer=params["affine_optimizer"],
                                optimizer_lr=params["affine_lr"], cc_kernel_size=params["affine_cc_kernel_size"],
                                init_rigid=init_rigid)
    affine.optimize()
    seconds["affine"] = time.perf_counter() - start

    start = time.perf_counter()
    reg = GreedyRegistration(scales=params["greedy_scales"], iterations=params["greedy_iterations"],
                             fixed_images=fixed, moving_images=moving, loss_type=params["loss_type"],
                             cc_kernel_size=params["greedy_cc_kernel_size"], deformation_type="compositive",
                             smooth_grad_sigma=params["greedy_smooth_grad_sigma"],
                             smooth_warp_sigma=params["greedy_smooth_warp_sigma"],
                             optimizer=params["greedy_optimizer"], optimizer_lr=params["greedy_lr"],
                             init_affine=affine.get_affine_matrix().detach())
    reg.optimize()
    seconds["greedy"] = time.perf_counter() - start
    seconds["registration"] = sum(seconds.values())

    os.makedirs(args.out_dir, exist_ok=True)
    with torch.no_grad():
        reg.save_as_ants_transforms(os.path.join(args.out_dir, "warp.nii.gz"))
        moved = reg.evaluate(fixed, moving)
        FakeBatchedImages(moved, fixed).write_image(os.path.join(args.out_dir, "moved.nii.gz"))
    info = {"seconds": seconds, "params": params, "threads": args.threads, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "SimpleITK": sitk.Version_VersionString(),
            "fireants": importlib.metadata.version("fireants")}
    with open(os.path.join(args.out_dir, "result.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)


if __name__ == "__main__":
    main()
