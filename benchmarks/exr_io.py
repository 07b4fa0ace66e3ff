"""Reading and writing a 2K RGBA half EXR through FRDM's frame I/O, against `oiiotool` copying the same file.

FRDM reads to float32 and writes back to half (so the pixels are bit-identical), atomically (temp + rename);
oiiotool is the C++ floor. Ratios from one run per compression.

    python benchmarks/exr_io.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time

import numpy as np

from frdm.engine.frames import Frame, read_frame, write_frame


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    oiiotool = shutil.which("oiiotool") or os.path.join(os.path.dirname(os.sys.executable), "oiiotool")
    rng = np.random.default_rng(0)
    w, h = 2048, 1556
    # Film-like content: smooth picture + grain (pure noise would make every codec look the same).
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 0.4 + 0.3 * np.sin(x / 97.0) * np.cos(y / 61.0)
    rgba = np.stack([base, base * 0.9, base * 0.8, np.ones_like(base)], axis=-1)
    rgba[..., :3] += rng.normal(0, 0.02, (h, w, 3)).astype(np.float32)
    results = []
    # oiiotool is a separate process: its start-up (library and plugin loading) is part of a copy's cost,
    # so it is measured on its own and a second ratio leaves it out.
    startup = best(lambda: subprocess.run([oiiotool, "--version"], check=True, capture_output=True), args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        for compression in ("none", "piz", "zip"):
            src = os.path.join(tmp, f"src_{compression}.exr")
            frame = Frame(
                rgba.astype(np.float32),
                ("R", "G", "B", "A"),
                ("half",) * 4,
                (0, 0, w, h),
                (0, 0, w, h),
                {"compression": ("string", compression)},
            )
            write_frame(src, frame)
            dst = os.path.join(tmp, "dst.exr")
            loaded = read_frame(src)
            t_read = best(lambda: read_frame(src), args.repeat)  # noqa: B023
            t_write = best(lambda: write_frame(dst, loaded), args.repeat)  # noqa: B023
            t_copy = best(lambda: subprocess.run([oiiotool, src, "-o", dst], check=True), args.repeat)  # noqa: B023
            results.append(
                {
                    "compression": compression,
                    "frdm_read_ms": round(t_read * 1000, 1),
                    "frdm_write_ms": round(t_write * 1000, 1),
                    "frdm_read_plus_write_ms": round((t_read + t_write) * 1000, 1),
                    "oiiotool_copy_ms": round(t_copy * 1000, 1),
                    "ratio_frdm_over_oiiotool": round((t_read + t_write) / t_copy, 2),
                    "oiiotool_startup_ms": round(startup * 1000, 1),
                    "ratio_frdm_over_oiiotool_without_startup": round(
                        (t_read + t_write) / max(t_copy - startup, 1e-6), 2
                    ),
                }
            )
    print(json.dumps({"frame": f"{w}x{h} RGBA half", "results": results}, indent=2))


if __name__ == "__main__":
    main()
