"""FRDM's classical engine against the free peer, SpotLess (VapourSynth + MVTools + zsmooth), in one run on the
same clip: speed file to file (scene-linear EXR in, EXR out) and of SpotLess's filter alone, MaskedPSNR on
synthetic dust (ground-truth masks), how much each changes outside the defects, and the peak RSS of each.

The clip: Big Buck Bunny (../shared/data/clean/bigbuckbunny.mp4) frames START.. at 1280x720 as it is, and its
central 4:3 part resized to 2048x1536; sparse synthetic dust from engine/data/synthesis.py (its masks are the
ground truth); written as scene-linear half EXR (zip), which both tools read and write back the same way.

- FRDM: `frdm restore SRC OUT --colorspace linear` (default parameters, auto defect matte), in a subprocess;
  frames/s from its own timing of the file-to-file loop (reading, colour, restoring, writing).
- SpotLess: benchmarks/spotless_peer.py in the peer's venv (make it with benchmarks/spotless_setup.sh), in a
  subprocess: the same file-to-file loop, then the filter alone on frames already in memory.
- Peak RSS of each subprocess (its own VmHWM, in MiB). MaskedPSNR (the paper's Eq. 7, engine/metrics) and the change
  outside the defect masks are measured display-referred (sRGB-encoded), per frame, averaged over the frames.
- FRDM writes EXR zip at zlib level 1 (``engine/frames.py`` EXR_ZIP_LEVEL: the same pixels, ~2% larger files),
  SpotLess at OpenImageIO's default level (4): each as its user gets it.

    python benchmarks/spotless_vs_frdm.py [--frames 24] [--sizes 1280x720 2048x1536] [--json out.json]
    (FRDM_SHARED=/path/to/shared when the shared folder is not beside the checkout; FRDM_PEER_VENV or
    --peer-venv for the peer's venv, default ~/.cache/frdm/spotless-venv)
    --reference-python OTHER/.venv/bin/python: also another checkout's FRDM (e.g. main's, for speed work), in the
    same interleaved repeats, with its frames/s, CPU and quality, and this FRDM's CPU against it

It stops with a message naming what is missing (the clip, the peer's venv or its plugins) rather than measure
something else. Timings come from one run on whatever else the machine is doing: read them as ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("FRDM_SHARED", os.path.join(HERE, "..", "..", "shared"))
DEFAULT_CLIP = os.path.join(SHARED, "data", "clean", "bigbuckbunny.mp4")
DEFAULT_PEER = os.environ.get("FRDM_PEER_VENV", os.path.expanduser("~/.cache/frdm/spotless-venv"))
PEER_SCRIPT = os.path.join(HERE, "spotless_peer.py")
DUST_DENSITY = 20.0  # specks per 480x480 area per frame: sparse dust (engine/data/synthesis.py)


def fail(message: str) -> None:
    print(f"spotless_vs_frdm: {message}", file=sys.stderr)
    raise SystemExit(2)


def peer_python(venv: str) -> str:
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        fail(f"no peer venv at {venv}: make it with `bash benchmarks/spotless_setup.sh` (or set FRDM_PEER_VENV)")
    check = subprocess.run(
        [python, "-c", "import vapoursynth as vs, OpenImageIO; vs.core.mv.Super; vs.core.zsmooth.Clense"],
        capture_output=True,
        text=True,
    )
    if check.returncode != 0:
        fail(f"the peer venv {venv} lacks VapourSynth, MVTools, zsmooth or OpenImageIO:\n{check.stderr.strip()}")
    return python


# Runs a module (-m:NAME) or a script in the interpreter it is given to, then writes that process's VmHWM (peak
# resident set) to a file. Not wait4's ru_maxrss: Linux carries the high-water mark across exec, so a child
# forked from this process would report at least this process's own RSS (the ground truth it holds).
_PEAK_WRAPPER = """
import runpy, sys
peak_file, target = sys.argv[1], sys.argv[2]
sys.argv = [target] + sys.argv[3:]
try:
    if target.startswith("-m:"):
        runpy.run_module(target[3:], run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(target, run_name="__main__")
finally:
    with open("/proc/self/status") as fh:
        peak = next(line for line in fh if line.startswith("VmHWM:"))
    with open(peak_file, "w") as fh:
        fh.write(peak.split()[1])
"""


def run_measured(python: str, target: str, args: list[str]) -> tuple[str, float, float, float]:
    """Run ``target`` (a script, or -m:MODULE) under ``python``; (stdout, wall seconds, its peak RSS in MiB, its
    CPU seconds, user + system, interpreter start included)."""
    with tempfile.TemporaryDirectory(prefix="frdm-bench-") as tmp:
        peak_file = os.path.join(tmp, "peak_kb")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run([python, "-c", _PEAK_WRAPPER, peak_file, target, *args], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if proc.returncode != 0:
            fail(f"{target} {' '.join(args[:3])} ... failed (exit {proc.returncode}):\n{proc.stderr.strip()[-2000:]}")
        with open(peak_file) as fh:
            peak_mib = int(fh.read()) / 1024.0  # VmHWM is in kB (KiB)
    return proc.stdout, wall, peak_mib, cpu


def synthetic_clip(
    clip: str,
    size: tuple[int, int],
    start: int,
    count: int,
    seed: int,
    flicker: float = 0.0,
    grain: float = 0.0,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per frame (ground truth, degraded, defect mask), model space: the clip's frames START.. at ``size`` (the
    central part with its aspect ratio, resized), then flicker and grain (part of the picture, so in the ground
    truth too), then sparse dust, all from one random sequence in frame order. benchmarks/synthetic_recall.py
    scores the same synthesis in memory.

    ``flicker`` / ``grain`` > 0 make the clip look like a film scan before the dust is put on: a per-frame
    gain with a smooth local field (synthesis.brightness_flicker, that sigma) and film grain (that strength).
    A restorer should remove the dust and keep them (FRDM's deflicker is off by default)."""
    import cv2

    from frdm.engine.data.synthesis import brightness_flicker, dust, film_grain
    from frdm.engine.frames import open_source

    if not os.path.exists(clip):
        fail(f"{clip} is missing: this benchmark measures the shared Big Buck Bunny clip only (set FRDM_SHARED)")
    source = open_source(clip)
    if start + count - 1 > len(source.frame_numbers):
        fail(f"{clip} has {len(source.frame_numbers)} frames; frames {start}-{start + count - 1} were asked for")
    w, h = size
    rng = np.random.default_rng(seed)
    try:
        for i in range(count):
            rgb = source.read(start + i).pixels
            if (rgb.shape[1], rgb.shape[0]) != size:
                sh, sw = rgb.shape[:2]
                cw = min(sw, int(round(sh * w / h)))  # the central part with the target's aspect ratio
                rgb = rgb[:, (sw - cw) // 2 : (sw - cw) // 2 + cw]
                rgb = np.clip(cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC), 0.0, 1.0)
            if flicker > 0:
                rgb = brightness_flicker(rgb[None], rng, global_sigma=flicker, local_sigma=0.6 * flicker)[0][0]
            if grain > 0:
                rgb = film_grain(rgb[None], rng, strength=grain)[0][0]
            degraded, mask = dust(rgb[None], rng, density=DUST_DENSITY)
            yield rgb, degraded[0], mask[0]
    finally:
        source.close()


def make_clip(
    clip: str,
    size: tuple[int, int],
    start: int,
    count: int,
    folder: str,
    seed: int,
    flicker: float = 0.0,
    grain: float = 0.0,
) -> tuple:
    """Write ``synthetic_clip``'s degraded frames as linear half EXR; return (ground truth uint16 display RGB,
    defect masks)."""
    from frdm.engine.color import from_model
    from frdm.engine.frames import Frame, write_frame

    w, h = size
    gts, masks = [], []
    for i, (rgb, degraded, mask) in enumerate(synthetic_clip(clip, size, start, count, seed, flicker, grain)):
        linear = from_model(degraded, "linear")
        frame = Frame(
            linear, ("R", "G", "B"), ("half",) * 3, (0, 0, w, h), (0, 0, w, h), {"compression": ("string", "zip")}
        )
        write_frame(os.path.join(folder, f"src.{i + 1:04d}.exr"), frame)
        gts.append(np.round(rgb * 65535.0).astype(np.uint16))
        masks.append(mask)
    return gts, masks


def display(path: str) -> np.ndarray:
    from frdm.engine.color import to_model
    from frdm.engine.frames import read_frame

    f = read_frame(path)
    return np.clip(to_model(f.pixels[..., f.rgb_indices()], "linear"), 0.0, 1.0)


def quality(folder: str, name: str, gts: list[np.ndarray], masks: list[np.ndarray]) -> dict:
    """MaskedPSNR of input and output against the ground truth, and the change outside the defects."""
    from frdm.engine.metrics import masked_psnr

    before, after, outside, touched = [], [], [], []
    for i, (gt16, mask) in enumerate(zip(gts, masks)):
        gt = gt16.astype(np.float32) / 65535.0
        src = display(os.path.join(folder, f"src.{i + 1:04d}.exr"))
        out = display(os.path.join(folder, f"{name}.{i + 1:04d}.exr"))
        before.append(masked_psnr(src, gt, mask))
        after.append(masked_psnr(out, gt, mask))
        diff = np.abs(out - src)[~mask]
        outside.append(float(diff.mean() * 255.0))
        touched.append(float((diff.max(axis=-1) > 0.5 / 255.0).mean()))
    # The first and last frames have a neighbour on one side only: SpotLess's median of three then keeps the
    # defect (its compensated neighbour falls back to the frame itself), so the figure without them is given too.
    inner = slice(1, -1) if len(after) > 2 else slice(None)
    return {
        "masked_psnr_input": float(np.mean(before)),
        "masked_psnr": float(np.mean(after)),
        "masked_psnr_gain": float(np.mean(after) - np.mean(before)),
        "masked_psnr_gain_inner": float(np.mean(after[inner]) - np.mean(before[inner])),
        "change_outside_defects": float(np.mean(outside)),
        "share_outside_changed": float(np.mean(touched)),
    }


def measure_size(args: argparse.Namespace, peer: str, size: tuple[int, int]) -> dict:
    w, h = size
    folder = os.path.join(args.work, f"{w}x{h}")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    print(f"{w}x{h}: writing {args.frames} degraded frames ...", file=sys.stderr)
    gts, masks = make_clip(args.clip, size, args.start, args.frames, folder, args.seed, args.flicker, args.grain)
    src = os.path.join(folder, "src.####.exr")
    threads = str(os.cpu_count() or 1)

    peer_args = ["--src", src, "--count", str(args.frames), "--threads", threads]
    spot_out = os.path.join(folder, "spotless.####.exr")
    frdm_options = ["--colorspace", "linear", "--quiet", "--json", "--no-resume"]

    def spotless_file() -> dict:
        text, wall, rss, cpu = run_measured(peer, PEER_SCRIPT, peer_args + ["--mode", "file", "--out", spot_out])
        return {**json.loads(text.strip().splitlines()[-1]), "wall_seconds": wall, "peak_rss_mib": rss, "cpu": cpu}

    def frdm_file(python: str = sys.executable, name: str = "frdm") -> dict:
        frdm_args = ["restore", src, os.path.join(folder, f"{name}.####.exr"), *frdm_options]
        text, wall, rss, cpu = run_measured(python, "-m:frdm.cli", frdm_args)
        report = json.loads(text[text.index("{") :])
        n = len(report["written"])
        return {
            "frames": n,
            "seconds": report["seconds"],
            "frames_per_second": n / report["seconds"],
            "wall_seconds": wall,
            "peak_rss_mib": rss,
            "cpu": cpu,
        }

    # File to file in interleaved pairs, the order swapped every repeat: on a shared machine the load drifts
    # within seconds, and a pair run back to back sees about the same load. Each pair gives one ratio.
    # With a reference FRDM, each repeat runs three (SpotLess, this FRDM, the reference; then reversed).
    spots, frdms, refs = [], [], []
    runs = [(spots, spotless_file), (frdms, frdm_file)]
    if args.reference_python:
        runs.append((refs, lambda: frdm_file(args.reference_python, "reference")))
    for k in range(args.repeats):
        print(f"{w}x{h}: file to file, pair {k + 1} of {args.repeats} ...", file=sys.stderr)
        for into, run in runs if k % 2 == 0 else runs[::-1]:
            into.append(run())
    ratios = [f["frames_per_second"] / s["frames_per_second"] for f, s in zip(frdms, spots)]
    print(f"{w}x{h}: SpotLess filter alone ...", file=sys.stderr)
    text, wall, rss, cpu = run_measured(peer, PEER_SCRIPT, peer_args + ["--mode", "filter"])
    spot_filter = {**json.loads(text.strip().splitlines()[-1]), "wall_seconds": wall, "peak_rss_mib": rss, "cpu": cpu}

    def median_run(runs: list[dict]) -> dict:
        fps = statistics.median(r["frames_per_second"] for r in runs)
        return {
            "frames_per_second": fps,
            "frames_per_second_all": [r["frames_per_second"] for r in runs],
            "cpu_ms_per_frame": 1000.0 * statistics.median(r["cpu"] for r in runs) / args.frames,
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            "vapoursynth": runs[0].get("vapoursynth"),
        }

    spot_file, frdm_file_run = median_run(spots), median_run(frdms)
    print(f"{w}x{h}: metrics ...", file=sys.stderr)
    reference = {}
    if refs:
        reference = {
            "frdm_reference": {"file": median_run(refs), **quality(folder, "reference", gts, masks)},
            "frdm_over_reference_cpu_all": [f["cpu"] / r["cpu"] for f, r in zip(frdms, refs)],
        }
    return {
        "size": f"{w}x{h}",
        "frames": args.frames,
        "defect_share": float(np.mean([m.mean() for m in masks])),
        "spotless": {"file": spot_file, "filter": spot_filter, **quality(folder, "spotless", gts, masks)},
        "frdm": {"file": frdm_file_run, **quality(folder, "frdm", gts, masks)},
        "frdm_over_spotless_file_fps": statistics.median(ratios),
        "frdm_over_spotless_file_fps_all": ratios,
        **reference,
    }


def table(results: list[dict]) -> str:
    lines = [
        "| size | tool | file to file frames/s | filter alone frames/s | MaskedPSNR input -> output (gain) dB "
        "| gain without first/last frame dB | change outside defects /255 (share changed) | peak RSS MiB "
        "| CPU ms per frame (file to file) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        tools = [("SpotLess", r["spotless"]), ("FRDM classical", r["frdm"])]
        if "frdm_reference" in r:
            tools.append(("FRDM classical, reference", r["frdm_reference"]))
        for name, tool in tools:
            filt = f"{tool['filter']['frames_per_second']:.2f}" if "filter" in tool else "-"
            lines.append(
                f"| {r['size']} | {name} | {tool['file']['frames_per_second']:.2f} | {filt} | "
                f"{tool['masked_psnr_input']:.2f} -> {tool['masked_psnr']:.2f} ({tool['masked_psnr_gain']:+.2f}) | "
                f"{tool['masked_psnr_gain_inner']:+.2f} | "
                f"{tool['change_outside_defects']:.3f} ({100 * tool['share_outside_changed']:.1f}%) | "
                f"{tool['file']['peak_rss_mib']:.0f} | {tool['file']['cpu_ms_per_frame']:.0f} |"
            )
        spread = r["frdm_over_spotless_file_fps_all"]
        lines.append(
            f"| {r['size']} | FRDM / SpotLess file to file (median of {len(spread)} interleaved pairs) | "
            f"{r['frdm_over_spotless_file_fps']:.2f}x [{min(spread):.2f}-{max(spread):.2f}] | | | | | | |"
        )
        if "frdm_reference" in r:
            cpu = r["frdm_over_reference_cpu_all"]
            ref_spread = [
                f / s
                for f, s in zip(
                    r["frdm_reference"]["file"]["frames_per_second_all"], r["spotless"]["file"]["frames_per_second_all"]
                )
            ]
            lines.append(
                f"| {r['size']} | FRDM reference / SpotLess file to file (same repeats) | "
                f"{statistics.median(ref_spread):.2f}x [{min(ref_spread):.2f}-{max(ref_spread):.2f}] | | | | | | |"
            )
            lines.append(
                f"| {r['size']} | FRDM / FRDM reference CPU (per repeat) | | | | | | | "
                f"{statistics.median(cpu):.3f} [{min(cpu):.3f}-{max(cpu):.3f}] |"
            )
    return "\n".join(lines)


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", default=DEFAULT_CLIP)
    ap.add_argument("--peer-venv", default=DEFAULT_PEER)
    ap.add_argument("--sizes", nargs="+", default=["1280x720", "2048x1536"])
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--start", type=int, default=40, help="first frame of the clip (1-based)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--flicker", type=float, default=0.0, help="per-frame brightness flicker sigma (0: none)")
    ap.add_argument("--grain", type=float, default=0.0, help="film grain strength (0: none; 0.02 is light)")
    ap.add_argument("--work", default="out/spotless_vs_frdm", help="where the frames go (replaced)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved file-to-file pairs per size (median)")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--reference-python", help="another checkout's venv python: its FRDM measured in the same repeats")
    args = ap.parse_args()
    from frdm.engine.data.clips import parse_size

    sizes = [parse_size(s) for s in args.sizes]
    if not os.path.exists(args.clip):
        fail(f"{args.clip} is missing: this benchmark measures the shared Big Buck Bunny clip only (set FRDM_SHARED)")
    peer = peer_python(args.peer_venv)
    results = [measure_size(args, peer, size) for size in sizes]
    record = {
        "clip": os.path.abspath(args.clip),
        "frames": f"{args.start}-{args.start + args.frames - 1}",
        "dust_density": DUST_DENSITY,
        "flicker": args.flicker,
        "grain": args.grain,
        "seed": args.seed,
        "cpus": os.cpu_count(),
        "frdm_commit": _commit(),
        "results": results,
    }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(record, fh, indent=1)
    print(
        f"Measured: {os.path.basename(args.clip)} frames {record['frames']} with synthetic dust (density "
        f"{DUST_DENSITY}, seed {args.seed}; flicker {args.flicker}, grain {args.grain}), linear half EXR (zip) in "
        f"and out, {record['cpus']} CPUs, load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}, FRDM "
        f"{record['frdm_commit']}, VapourSynth {results[0]['spotless']['file'].get('vapoursynth', '?')}\n"
    )
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
