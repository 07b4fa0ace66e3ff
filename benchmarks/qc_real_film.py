"""`frdm qc` on the four shared real films, restored with the classical engine as it is in this checkout.

For each film (../shared/data/real_film/<film>/*.png, 480x368, sRGB): `frdm restore` with default parameters
into OUT/<film>/restored.####.png (and the restorer's defect mattes into OUT/<film>/matte.####.png: a PNG holds
no matte channel), then `frdm qc --matte` into OUT/<film>/qc/ (open its index.html to look at the crops): each
region judged on the pixels the restorer filled. Prints one table row per film (the figures docs/quality.md
keeps under "QC on real film") and writes OUT/summary.json. Re-run it after an engine change and compare.

    python benchmarks/qc_real_film.py [--out out/qc_real_film] [--films the_great_train_robbery ...]
    (FRDM_SHARED=/path/to/shared or --data DIR when the shared folder is not beside the checkout)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(
    os.environ.get("FRDM_SHARED", os.path.join(HERE, "..", "..", "shared")), "data", "real_film"
)
FILMS = (
    "the_great_train_robbery",
    "san_francisco_earthquake_and_fire",
    "a_trip_down_market_street_before_the_fire",
    "within_our_gates",
)


# What makes the restored frames: the commit that last changed these is the "engine of" the figures.
ENGINE_FILES = ("engine/classical", "engine/pipeline.py", "engine/blend.py", "engine/color.py", "engine/frames.py")


def engine_commit() -> str:
    """The last commit that changed the engine's files ('+changes' when the checkout differs from it)."""
    root = os.path.dirname(HERE)
    try:
        sha = subprocess.run(
            ["git", "-C", root, "log", "-1", "--format=%h", "--", *ENGINE_FILES],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", *ENGINE_FILES],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return (sha or "unknown") + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def film_source(data: str, film: str) -> str:
    folder = os.path.join(data, film)
    if not os.path.isdir(folder) or not any(f.endswith(".png") for f in os.listdir(folder)):
        raise SystemExit(
            f"qc_real_film: no frames in {folder}; this benchmark measures the shared real films only "
            "(set FRDM_SHARED or --data to the real_film folder)"
        )
    return os.path.join(folder, "#####.png")


class MatteWriter:
    """A restorer that writes each frame's defect matte as it yields the frame (8-bit grey PNG, 255 = defect).
    A frame with no matte (``RestoredFrame.matte`` None: no defect found) gets an all-zero one of its clip's
    size: every frame has its matte file for ``frdm qc --matte``, and a missing one would not say 'none'."""

    def __init__(self, restorer: Any, pattern: str):
        self.restorer, self.pattern = restorer, pattern
        self.engine_version = restorer.engine_version

    def context(self, params: Any) -> tuple[int, int]:
        return self.restorer.context(params)

    def restore(self, clip: Any, params: Any, progress: Any = None) -> Iterator[Any]:
        import cv2
        import numpy as np

        from frdm.engine.frames import SequencePattern

        pattern = SequencePattern.parse(self.pattern)
        from frdm.engine.restorer import no_progress

        for frame in self.restorer.restore(clip, params, progress or no_progress):
            matte = frame.matte if frame.matte is not None else np.zeros(clip.shape, np.float32)
            if not cv2.imwrite(pattern.path(frame.frame_number), (np.clip(matte, 0, 1) * 255 + 0.5).astype(np.uint8)):
                raise OSError(f"qc_real_film: could not write the matte of frame {frame.frame_number}")
            yield frame


def run_film(data: str, film: str, out: str, frames: int | None) -> dict:
    from frdm.commands.qc import run_qc
    from frdm.engine import params as P
    from frdm.engine.classical import ClassicalRestorer
    from frdm.engine.frames import open_source
    from frdm.engine.pipeline import restore_sequence

    src = film_source(data, film)
    numbers = open_source(src).frame_numbers
    if frames:
        numbers = numbers[:frames]
    folder = os.path.join(out, film)
    shutil.rmtree(folder, ignore_errors=True)
    restored = os.path.join(folder, "restored.####.png")
    mattes = os.path.join(folder, "matte.####.png")
    os.makedirs(folder, exist_ok=True)
    t0 = time.perf_counter()
    restorer = MatteWriter(ClassicalRestorer(), mattes)
    restore_sequence(src, restored, frames=numbers, params=P.validate({}), resume=False, restorer=restorer)
    seconds = time.perf_counter() - t0
    record = run_qc(src, restored, os.path.join(folder, "qc"), frames=numbers, matte=mattes)
    s = record["summary"]
    return {
        "film": film,
        "frames": len(numbers),
        "restore_seconds": round(seconds, 1),
        "mean_changed_pct": round(100 * s["mean_changed_share"], 3),
        "max_changed_pct": round(100 * s["max_changed_share"], 3),
        "max_changed_frame": s["max_changed_frame"],
        "regions": s["regions"],
        "regions_per_frame": round(s["regions_per_frame"], 1),
        "mean_abs_step": None if s["mean_abs_step"] is None else round(s["mean_abs_step"], 2),
        "p90_abs_step": None if s["p90_abs_step"] is None else round(s["p90_abs_step"], 2),
        "mean_made_step": None if s["mean_made_step"] is None else round(s["mean_made_step"], 2),
        "p90_made_step": None if s["p90_made_step"] is None else round(s["p90_made_step"], 2),
        "share_made_step_over_2": s["share_made_step_over_2"],
        "worst_steps": s["worst_steps"][:3],
        "grain_measured": s["grain_measured"],
        "share_grain_below_0.45": s["share_grain_below_0.45"],
        "p10_grain": None if s["p10_grain"] is None else round(s["p10_grain"], 2),
        "share_moving": s["share_moving"],
        "page": os.path.join(folder, "qc", "index.html"),
    }


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def table(rows: list[dict]) -> str:
    lines = [
        "| film | frames | changed % mean / max | regions (per frame) | abs step mean / p90 | made step mean / p90 "
        "(share > 2) | worst made steps (frame: step, change, area px) | grain < 0.45 (of measured) | p10 grain "
        "| on moving content |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        worst = "; ".join(f"{w['frame']}: {w['step']:+.1f}, {w['change']:+.1f}, {w['area']}" for w in r["worst_steps"])
        lines.append(
            f"| {r['film']} | {r['frames']} | {r['mean_changed_pct']:.2f} / {r['max_changed_pct']:.2f} "
            f"(frame {r['max_changed_frame']}) | {r['regions']} ({r['regions_per_frame']}) | "
            f"{r['mean_abs_step']} / {r['p90_abs_step']} | {r['mean_made_step']} / {r['p90_made_step']} "
            f"({_pct(r['share_made_step_over_2'])}) | {worst} | "
            f"{_pct(r['share_grain_below_0.45'])} (of {r['grain_measured']}) | {r['p10_grain']} | "
            f"{_pct(r['share_moving'])} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_DATA, help="the real_film folder of the shared data")
    ap.add_argument("--out", default="out/qc_real_film")
    ap.add_argument("--films", nargs="*", default=list(FILMS))
    ap.add_argument("--frames", type=int, help="only the first N frames of each film")
    args = ap.parse_args()
    for film in args.films:  # all missing data is reported before any work starts
        film_source(args.data, film)
    commit = engine_commit()
    rows = []
    for film in args.films:
        rows.append(run_film(args.data, film, args.out, args.frames))
        print(f"{film}: done in {rows[-1]['restore_seconds']} s; {rows[-1]['page']}", file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "summary.json"), "w") as fh:
        json.dump({"engine_commit": commit, "data": os.path.abspath(args.data), "films": rows}, fh, indent=1)
    print(f"QC on real film, engine of {commit} (classical, default parameters)\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
