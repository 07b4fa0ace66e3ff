"""Classical restorer throughput at 2048x1536 and 480x368, and the share of its time spent in optical flow
(DIS medium: the floor of this design). Ratios from one run; this machine is shared and noisy.

    python benchmarks/classical_speed.py [--frames 6] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import cv2
import numpy as np

from frdm.engine import params as P
from frdm.engine.classical import ClassicalRestorer
from frdm.engine.classical import restorer as classical_restorer
from frdm.engine.restorer import Clip


def real_film_clip(size: tuple[int, int], frames: int) -> np.ndarray:
    """Real scanned frames (shared data) resized to ``size``; a synthetic texture if they are absent."""
    import glob
    import os

    root = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "real_film", "the_great_train_robbery")
    files = sorted(glob.glob(os.path.join(root, "*.png")))[:frames]
    if len(files) < frames:
        rng = np.random.default_rng(0)
        return rng.random((frames, size[1], size[0], 3), dtype=np.float32)
    out = [cv2.resize(cv2.imread(f)[..., ::-1], size, interpolation=cv2.INTER_CUBIC) for f in files]
    return np.stack(out).astype(np.float32) / 255.0


def measure(size: tuple[int, int], frames: int) -> dict:
    clip_frames = real_film_clip(size, frames + 4)
    params = P.validate({})
    targets = list(range(2, frames + 2))
    clip = Clip(clip_frames, list(range(len(clip_frames))), targets)
    flow_time = [0.0]
    real_call = classical_restorer.FlowEstimator.__call__

    def timed(self, a, b):
        t0 = time.perf_counter()
        out = real_call(self, a, b)
        flow_time[0] += time.perf_counter() - t0
        return out

    classical_restorer.FlowEstimator.__call__ = timed
    try:
        t0 = time.perf_counter()
        for _ in ClassicalRestorer().restore(clip, params):
            pass
        total = time.perf_counter() - t0
    finally:
        classical_restorer.FlowEstimator.__call__ = real_call
    return {
        "size": f"{size[0]}x{size[1]}",
        "frames": frames,
        "seconds": round(total, 3),
        "frames_per_second": round(frames / total, 3),
        "flow_seconds": round(flow_time[0], 3),
        "flow_share": round(flow_time[0] / total, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--json")
    args = ap.parse_args()
    cv2.setNumThreads(2)
    results = [measure((480, 368), args.frames * 3), measure((2048, 1536), args.frames)]
    small, big = results
    summary = {
        "results": results,
        "ratio_small_over_2k_fps": round(small["frames_per_second"] / big["frames_per_second"], 2),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=2)


if __name__ == "__main__":
    main()
