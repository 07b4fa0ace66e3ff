"""Classical restorer throughput at 480x368, 1280x720 and 2048x1536 (engine only: frames already in memory, in
model space), the share of its time spent in optical flow, and the peak memory (VmHWM, in MiB and MB) of 2K runs of
12, 24 and 48 frames through the pipeline alone (``restore_frames``: window, context, blending; no files) and file to
file (``restore_sequence`` on half EXRs, as ``frdm restore`` runs), which must stay flat in the clip length.

The frames are real scanned film (the shared data's The Great Train Robbery, 480x368, resized to each size), so
the detector sees real dust, grain and flicker. The benchmark stops with an error if that data is missing: a
synthetic stand-in would measure something else (random noise makes half the frame a "defect").

    python benchmarks/classical_speed.py [--frames 6] [--json out.json] [--rss [--rss-frames 12 24 48]]
        [--reference COMMIT]
    (FRDM_SHARED=/path/to/shared when the shared folder is not beside the checkout)

Figures from one run; this machine is shared and noisy (compare sizes and engines within one run).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import resource
import subprocess
import sys
import time

import cv2
import numpy as np

from frdm.commands.tuning import tune_process
from frdm.engine import params as P
from frdm.engine.classical import ClassicalRestorer
from frdm.engine.restorer import Clip

HERE = os.path.dirname(os.path.abspath(__file__))
FILM = "the_great_train_robbery"
FILM_DIR = os.path.join(
    os.environ.get("FRDM_SHARED", os.path.join(HERE, "..", "..", "shared")), "data", "real_film", FILM
)
SIZES = ((480, 368), (1280, 720), (2048, 1536))


def real_film_files(frames: int) -> list[str]:
    """``frames`` consecutive real scanned frames of the shared data (cycled if the film is shorter)."""
    files = sorted(glob.glob(os.path.join(FILM_DIR, "*.png")))
    if len(files) < 8:
        raise SystemExit(
            f"classical_speed: needs the real film frames in {FILM_DIR} (shared data), found {len(files)}; "
            "set FRDM_SHARED to the shared folder"
        )
    return [files[i % len(files)] for i in range(frames)]


def real_film_clip(size: tuple[int, int], frames: int) -> np.ndarray:
    """``frames`` real scanned frames resized to ``size``, (T, H, W, 3) float32 in [0, 1]."""
    out = [cv2.resize(cv2.imread(f)[..., ::-1], size, interpolation=cv2.INTER_CUBIC) for f in real_film_files(frames)]
    return np.stack(out).astype(np.float32) / 255.0


def reference_engine(commit: str) -> type:
    """The ClassicalRestorer of an earlier commit (``engine/classical`` from git, imported under another name),
    so that before and after are measured in one run on the same loaded machine."""
    import importlib
    import tempfile

    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=HERE, check=True, capture_output=True, text=True)
    repo = root.stdout.strip()
    names = subprocess.run(
        ["git", "ls-tree", "--name-only", commit, "engine/classical/"],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    folder = tempfile.mkdtemp(prefix="frdm_ref_")
    package = "frdm_classical_" + commit[:8]
    os.makedirs(os.path.join(folder, package))
    for name in names:
        text = subprocess.run(["git", "show", f"{commit}:{name}"], cwd=repo, check=True, capture_output=True, text=True)
        with open(os.path.join(folder, package, os.path.basename(name)), "w") as fh:
            fh.write(text.stdout.replace("frdm.engine.classical", package))
    sys.path.insert(0, folder)
    restorer = importlib.import_module(package).ClassicalRestorer
    # Its engine_version comes from this checkout's engine/depends.py (only engine/classical is the commit's):
    # label it with the commit's own version.
    depends = subprocess.run(
        ["git", "show", f"{commit}:engine/depends.py"], cwd=repo, check=True, capture_output=True, text=True
    ).stdout
    version = re.search(r'"classical":\s*"([^"]+)"', depends)
    restorer.engine_version = version.group(1) if version else f"classical of {commit}"
    return restorer


def measure(size: tuple[int, int], frames: int, engine: type = ClassicalRestorer, label: str = "this checkout") -> dict:
    clip_frames = real_film_clip(size, frames + 4)
    params = P.validate({})
    targets = list(range(2, frames + 2))
    clip = Clip(clip_frames, list(range(len(clip_frames))), targets)
    flow_time = [0.0]
    flow_calls = [0]
    flow_module = sys.modules[engine.__module__.rsplit(".", 1)[0] + ".flow"]
    real_call = flow_module.FlowEstimator.__call__

    def timed(self, a, b):
        t0 = time.perf_counter()
        out = real_call(self, a, b)
        flow_time[0] += time.perf_counter() - t0
        flow_calls[0] += 1
        return out

    flow_module.FlowEstimator.__call__ = timed
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        coverage = [float((r.matte > 0.5).mean()) for r in engine().restore(clip, params)]
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        flow_module.FlowEstimator.__call__ = real_call
    return {
        "engine": engine.engine_version if hasattr(engine, "engine_version") else engine.__module__,
        "code": label,
        "size": f"{size[0]}x{size[1]}",
        "frames": frames,
        "seconds": round(total, 3),
        # CPU time of all the process's threads: the work done, less sensitive to a loaded machine than seconds.
        "cpu_seconds": round(cpu, 3),
        "frames_per_second": round(frames / total, 3),
        "flow_calls": flow_calls[0],
        "flow_seconds": round(flow_time[0], 3),
        "flow_share": round(flow_time[0] / total, 3),
        "matte_coverage_max": round(max(coverage), 5),
    }


def _lazy_source(files: list[str], size: tuple[int, int]):
    """The real film frames resized to ``size``, decoded when the pipeline reads each, held as an EXR half
    sequence's frames are (the file's half samples, ``Frame.half``)."""
    from frdm.engine.frames import Frame, Source

    class Lazy(Source):
        description = f"real film at {size[0]}x{size[1]}, read lazily"
        frame_numbers = list(range(len(files)))

        def read(self, n: int) -> Frame:
            rgb = cv2.resize(cv2.imread(files[n])[..., ::-1], size, interpolation=cv2.INTER_CUBIC)
            h, w = rgb.shape[:2]
            px = (rgb.astype(np.float32) / 255.0).astype(np.float16)
            return Frame(px, ("R", "G", "B"), ("half",) * 3, (0, 0, w, h), (0, 0, w, h), {}, 0, files[n])

    return Lazy()


# Run in a fresh process: its VmHWM (peak resident set, kB) starts at its exec, not at its parent's peak (which
# ru_maxrss of a forked child would carry).
_PEAK_CHILD = """
import sys
sys.path.insert(0, {here!r})
from classical_speed import _lazy_source, real_film_files
from frdm.commands.tuning import tune_process
from frdm.engine import params as P
from frdm.engine.classical import ClassicalRestorer
from frdm.engine.pipeline import restore_frames, restore_sequence
tune_process()  # as frdm restore runs
params = P.validate({{"colorspace": "raw"}})
if {folder!r}:
    frames = list(range(1, {frames} + 1))
    restore_sequence({folder!r} + "/src.####.exr", {folder!r} + "/out/r.####.exr", frames=frames, params=params,
                     restorer=ClassicalRestorer(), resume=False)
else:
    for _ in restore_frames(_lazy_source(real_film_files({frames}), {size!r}), list(range({frames})), params,
                            ClassicalRestorer()):
        pass
print(next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1])
"""


def pipeline_peak_rss(frames: int, size: tuple[int, int] = (2048, 1536), folder: str = "") -> dict:
    """Peak RSS of a run over ``frames`` 2K frames, in a fresh process: ``restore_frames`` from the lazy source
    (the pipeline alone: no files, no threads), or with ``folder`` (half EXRs src.0001.exr ... there) file to
    file, ``restore_sequence`` as ``frdm restore`` runs it (reader and writer threads, EXR out)."""
    code = _PEAK_CHILD.format(here=HERE, folder=folder, frames=frames, size=size)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    kib = int(out[-1])
    return {"frames": frames, "peak_rss_mib": round(kib / 1024, 1), "peak_rss_mb": round(kib * 1024 / 1e6, 1)}


def peak_rss_runs(lengths: list[int], size: tuple[int, int] = (2048, 1536)) -> dict:
    """``pipeline_peak_rss`` for each clip length, the pipeline alone and file to file (the frames written once
    as half EXR, zip, to a temporary folder)."""
    import shutil
    import tempfile

    from frdm.engine.frames import write_frame

    folder = tempfile.mkdtemp(prefix="frdm-rss-")
    try:
        source = _lazy_source(real_film_files(max(lengths)), size)
        for n in source.frame_numbers:
            frame = source.read(n)
            frame.attributes["compression"] = ("string", "zip")
            write_frame(os.path.join(folder, f"src.{n + 1:04d}.exr"), frame)
        return {
            "pipeline": [pipeline_peak_rss(n, size) for n in lengths],
            "file_to_file": [pipeline_peak_rss(n, size, folder) for n in lengths],
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=6, help="frames restored at 2K (x2 at 720p, x3 at 480x368)")
    ap.add_argument("--rss", action="store_true", help="also measure the peak RSS of 2K runs (--rss-frames long)")
    ap.add_argument(
        "--rss-frames", type=int, nargs="+", default=[12, 24, 48], help="clip lengths of --rss (flat is the aim)"
    )
    ap.add_argument("--reference", help="also measure the classical engine of this git commit (before/after)")
    ap.add_argument("--json")
    args = ap.parse_args()
    tune_process()
    summary: dict = {"data": f"real film {FILM} (shared data), resized"}
    if args.rss:
        summary["peak_rss_2k"] = peak_rss_runs(args.rss_frames)
    engines = [(ClassicalRestorer, "this checkout")]
    if args.reference:
        engines.append((reference_engine(args.reference), f"reference {args.reference}"))
    # A short unmeasured run of each engine first: the engine measured first in a process otherwise pays the
    # warm-up (imports, cv2's and numpy's first calls, page faults of the first frames) and reads slower.
    for engine in engines:
        measure(SIZES[0], 3, *engine)
    # The process is tuned as frdm restore tunes it (malloc, cv2's pool: tune_process, before the warm-up); the
    # pool is process-wide, so a reference engine measured beside runs with the same pool. Say what it was.
    summary["cv2_threads"] = cv2.getNumThreads()
    per_size = {SIZES[0]: args.frames * 3, SIZES[1]: args.frames * 2, SIZES[2]: args.frames}
    # Interleaved per size, so a change of the machine's load hits both engines alike.
    summary["results"] = [measure(size, n, *engine) for size, n in per_size.items() for engine in engines]
    summary["load_average"] = [round(v, 2) for v in os.getloadavg()]
    summary["this_process_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=2)


if __name__ == "__main__":
    main()
