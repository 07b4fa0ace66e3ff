"""Peak VRAM and seconds per frame of the diffusion restorer at 2K.

Full-size HaineiFRDM with random weights (SD1.5 UNet + AnimateDiff motion module + guidance network; the
numbers do not depend on the weights' values), 2048x1536 frames, one 16-frame temporal window, 20 steps,
patch-consistent inference with its defaults (512 px patches, 128 px overlap, global residual, KV cache).

    python benchmarks/gpu_restore.py --device cuda                   # the 2K figure (JSON on stdout)
    python benchmarks/gpu_restore.py --tiny --device cpu --width 256 --height 192 --frames 2 --steps 2

The window overlap is 0 so that the 16 frames are exactly one window (with an overlap the anchored windows
that reach into frames before 0 and after 15 would run too). Timing covers ``restore`` end to end: both
stages, tiled VAE, and the defect matte (the classical detector, on the CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _film_like(count: int, height: int, width: int):
    """Smooth shading, a moving bright disc, grain and a few dust specks: what the detector and the VAE see
    in a film frame (uniform noise would make the defect detector flag the whole frame)."""
    import numpy as np

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 0.25 + 0.5 * (x / width) * (0.6 + 0.4 * y / height)
    out = np.empty((count, height, width, 3), np.float32)
    for t in range(count):
        cx, cy, r = (0.2 + 0.03 * t) * width, 0.5 * height, 0.1 * height
        disc = ((x - cx) ** 2 + (y - cy) ** 2 < r * r).astype(np.float32)
        grey = base + 0.3 * disc + rng.normal(0, 0.01, (height, width)).astype(np.float32)
        for _ in range(20):
            sy, sx = rng.integers(4, height - 4), rng.integers(4, width - 4)
            grey[sy - 2 : sy + 2, sx - 2 : sx + 2] = 0.05
        out[t] = np.clip(grey, 0, 1)[..., None] * np.array([1.0, 0.95, 0.85], np.float32)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="the tiny test config (CPU check of this script)")
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--height", type=int, default=1536)
    ap.add_argument("--frames", type=int, default=16, help="frames = the temporal window")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--patch-size", type=int, default=512)
    ap.add_argument("--patch-overlap", type=int, default=128)
    ap.add_argument("--precision", default="fp16", choices=("fp16", "bf16", "fp32"))
    ap.add_argument("--no-kv-cache", action="store_true")
    ap.add_argument("--no-global-residual", action="store_true")
    ap.add_argument("--vram-budget-gb", type=float, default=0.0)
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from frdm.engine.diffusion import DiffusionRestorer
    from frdm.engine.models.config import FRDMConfig
    from frdm.engine.models.frdm import HaineiFRDM
    from frdm.engine.restorer import Clip

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = (
        {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.precision]
        if cuda
        else torch.float32
    )
    config = FRDMConfig.tiny() if args.tiny else FRDMConfig.sd15()
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = HaineiFRDM.build(config, device=device, dtype=dtype)
    build_s = time.perf_counter() - t0
    log_lines: list[str] = []
    restorer = DiffusionRestorer(model, device=device, log=lambda m: (log_lines.append(m), print(m, file=sys.stderr)))

    frames = _film_like(args.frames, args.height, args.width)
    numbers = list(range(args.frames))
    params = {
        "engine": "diffusion",
        "steps": args.steps,
        "window": args.frames,
        "window_overlap": 0,
        "patch_size": args.patch_size,
        "patch_overlap": args.patch_overlap,
        "precision": args.precision,
        "kv_cache": not args.no_kv_cache,
        "global_residual": not args.no_global_residual,
        "vram_budget_gb": args.vram_budget_gb,
    }
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    t1 = time.perf_counter()
    out = list(restorer.restore(Clip(frames, numbers, numbers), params))
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t1
    assert len(out) == args.frames and out[0].image.shape == (args.height, args.width, 3)

    plan = restorer.last_plan
    result = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "config": "tiny" if args.tiny else "sd15",
        "parameters_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "frame": [args.width, args.height],
        "frames": args.frames,
        "params": params,
        "plan": None if plan is None else plan.describe(),
        "estimated_peak_gib": None if plan is None else round(plan.estimated_peak_bytes / 2**30, 2),
        "peak_vram_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None,
        "weights_vram_gib": round(base / 2**30, 2) if cuda else None,
        "seconds_total": round(seconds, 2),
        "seconds_per_frame": round(seconds / args.frames, 3),
        "build_seconds": round(build_s, 1),
        "finite": bool(all(np.isfinite(o.image).all() for o in out)),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
