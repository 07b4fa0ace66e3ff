"""Build the paper's three synthetic test settings from the shared clean clips (fixed seeds) and evaluate
restorers on them: the input itself, the classical engine, and the diffusion engine when --weights is given.

  frdm bench-quality --clean ../shared/data/clean --out out/bench_quality

Writes the shots (dataset layout) under OUT/data, each restorer's frames under
OUT/<row>/<setting>/frame.####.png, and the Table-1-shaped results under OUT (results.json, .csv, .md, .png).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clean", default="../shared/data/clean", help="folder with bigbuckbunny.mp4 and bikes.mp4")
    parser.add_argument("--out", default="out/bench_quality", help="output folder")
    parser.add_argument("--size", default="384x216", help="frame size WIDTHxHEIGHT (default 384x216)")
    parser.add_argument("--frames", type=int, default=12, help="frames per setting (default 12)")
    parser.add_argument("--seed", type=int, default=7, help="synthesis seed (default 7)")
    parser.add_argument("--settings", default="mixed,scratch,noisy-fast-motion")
    parser.add_argument("--weights", help="diffusion weights folder: adds a 'diffusion' row")
    parser.add_argument("--device", default=None, help="device for the diffusion engine")
    parser.add_argument("--metrics", default="MaskedPSNR,PSNR,SSIM,LPIPS,BRISQUE,NIQE,WarpError")


def _restore(name: str, degraded, weights: str | None, device: str | None):  # noqa: ANN001, ANN202
    import numpy as np

    from frdm.engine import params as P
    from frdm.engine.frames import Frame, MemorySource
    from frdm.engine.pipeline import restore_frames
    from frdm.engine.restorer import create_restorer

    restorer = create_restorer(name, weights=weights, device=device)
    T, H, W, _ = degraded.shape
    frames = {
        i + 1: Frame(degraded[i].copy(), ("R", "G", "B"), ("float",) * 3, (0, 0, W, H), (0, 0, W, H)) for i in range(T)
    }
    # the synthetic frames are display-referred already: no colour conversion
    params = P.validate({"engine": name, "colorspace": "raw"})
    out = np.empty_like(degraded)
    for n, frame in restore_frames(MemorySource(frames, "bench"), list(frames), params, restorer):
        out[n - 1] = frame.pixels[..., frame.rgb_indices()]
    return np.clip(out, 0.0, 1.0)


def _write_frames(folder: str, clip) -> None:  # noqa: ANN001
    import os

    from frdm.engine.frames import Frame, write_frame

    T, H, W, _ = clip.shape
    for i in range(T):
        write_frame(
            os.path.join(folder, f"frame.{i + 1:04d}.png"),
            Frame(clip[i], ("R", "G", "B"), ("uint16",) * 3, (0, 0, W, H), (0, 0, W, H)),
        )


def run(args: argparse.Namespace) -> int:
    import json
    import os
    import time

    from frdm.engine.data.clips import parse_size
    from frdm.engine.data.dataset import write_shot
    from frdm.engine.data.settings import build_setting
    from frdm.engine.metrics.evaluate import ResultsTable, evaluate_clip

    size = parse_size(args.size)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    rows = ["Input", "classical"] + (["diffusion"] if args.weights else [])
    table = ResultsTable()
    timing: dict[str, float] = {}
    for setting in [s.strip() for s in args.settings.split(",") if s.strip()]:
        t0 = time.time()
        data = build_setting(setting, args.clean, size=size, n_frames=args.frames, seed=args.seed)
        write_shot(
            os.path.join(args.out, "data"),
            setting,
            data["degraded"],
            data["gt"],
            data["mask"],
            "an old film frame",
            info={"setting": setting, "seed": args.seed, "size": args.size},
        )
        print(
            f"[{setting}] built {args.frames} frames {data['gt'].shape[2]}x{data['gt'].shape[1]}, "
            f"defects {data['mask'].mean():.2%} ({time.time() - t0:.1f}s)",
            flush=True,
        )
        for row in rows:
            t0 = time.time()
            pred = data["degraded"] if row == "Input" else _restore(row, data["degraded"], args.weights, args.device)
            t_restore = time.time() - t0
            if row != "Input":
                _write_frames(os.path.join(args.out, row, setting), pred)
            values = evaluate_clip(pred, data["gt"], data["mask"], metrics)
            values["restore_seconds"] = round(t_restore, 2)
            table.add(row, setting, values)
            timing[f"{row}/{setting}"] = round(time.time() - t0, 1)
            print(
                f"[{setting}] {row}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items() if isinstance(v, float)),
                flush=True,
            )
    meta = {
        "command": "frdm bench-quality "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if k in ("clean", "out", "size", "frames", "seed")
        ),
        "seconds": timing,
    }
    paths = table.save(args.out, meta)
    print(table.markdown())
    print("frdm bench-quality: wrote " + ", ".join(paths))
    print(json.dumps(timing))
    return 0
