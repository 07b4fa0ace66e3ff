"""The free peer, SpotLess, for benchmarks/spotless_vs_frdm.py. Runs in the peer's own venv
(benchmarks/spotless_setup.sh: VapourSynth, vapoursynth-mvtools, vapoursynth-zsmooth, OpenImageIO), never in
FRDM's, and imports nothing of FRDM.

The chain, as a VapourSynth user runs it: RGB -> YUV 4:4:4 16-bit (BT.709, full range); MVTools Super(pel=2);
Analyse backwards and forwards at delta 1 (blksize 16, overlap 8); Compensate both ways; interleave
(forward-compensated, the frame, backward-compensated); zsmooth.Clense (temporal median of three); take the
middle of each triple; back to RGB.

  --mode file:   scene-linear EXR in, EXR out: each frame read (OpenImageIO), converted to sRGB-encoded
                 display values (OpenImageIO's colour conversion), filtered, converted back, written as the input
                 was stored (half, the input's compression). Timed from the first read to the last write.
  --mode filter: the frames are read and converted first, untimed; only the filter is timed (frames pulled
                 through the chain into numpy, no writing).

Prints one JSON line: {"mode", "frames", "seconds", "frames_per_second", "threads"}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import OpenImageIO as oiio
import vapoursynth as vs


def frame_path(pattern: str, n: int) -> str:
    return pattern.replace("####", f"{n:04d}")


def read_display(path: str) -> tuple[np.ndarray, oiio.ImageSpec]:
    buf = oiio.ImageBuf(path)
    if buf.has_error:
        raise SystemExit(f"spotless_peer: {path}: {buf.geterror()}")
    spec = buf.spec()
    disp = oiio.ImageBufAlgo.colorconvert(buf, "linear", "sRGB")
    return np.ascontiguousarray(disp.get_pixels(oiio.FLOAT)[..., :3]), spec


def write_linear(path: str, rgb: np.ndarray, spec_in: oiio.ImageSpec) -> None:
    lin = oiio.ImageBufAlgo.colorconvert(oiio.ImageBuf(np.ascontiguousarray(rgb, np.float32)), "sRGB", "linear")
    spec = oiio.ImageSpec(spec_in.width, spec_in.height, 3, spec_in.format)
    spec.attribute("compression", spec_in.get_string_attribute("compression", "zip"))
    out = oiio.ImageBuf(spec)
    out.set_pixels(oiio.ROI(), lin.get_pixels(oiio.FLOAT))
    tmp = path + ".tmp.exr"
    if not out.write(tmp):
        raise SystemExit(f"spotless_peer: cannot write {path}: {out.geterror()}")
    os.replace(tmp, path)


def spotless(clip: vs.VideoNode) -> vs.VideoNode:
    core = vs.core
    yuv = core.resize.Point(clip, format=vs.YUV444P16, matrix_s="709", range_s="full")
    sup = core.mv.Super(yuv, pel=2)
    back_vec = core.mv.Analyse(sup, isb=True, delta=1, blksize=16, overlap=8)
    fwd_vec = core.mv.Analyse(sup, isb=False, delta=1, blksize=16, overlap=8)
    back_comp = core.mv.Compensate(yuv, sup, back_vec)
    fwd_comp = core.mv.Compensate(yuv, sup, fwd_vec)
    triples = core.std.Interleave([fwd_comp, yuv, back_comp])
    median = core.zsmooth.Clense(triples)
    middle = core.std.SelectEvery(median, cycle=3, offsets=1)
    return core.resize.Point(middle, format=vs.RGBS, matrix_in_s="709", range_in_s="full")


def source_clip(width: int, height: int, count: int, get) -> vs.VideoNode:  # noqa: ANN001 - frame -> (H, W, 3)
    core = vs.core
    blank = core.std.BlankClip(format=vs.RGBS, width=width, height=height, length=count)

    def fill(n: int, f: vs.VideoFrame) -> vs.VideoFrame:
        rgb = get(n)
        out = f.copy()
        for p in range(3):
            np.copyto(np.asarray(out[p]), rgb[..., p])
        return out

    return core.std.ModifyFrame(blank, blank, fill)


def to_numpy(f: vs.VideoFrame) -> np.ndarray:
    return np.stack([np.asarray(f[p]) for p in range(3)], axis=-1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="input EXR pattern with ####")
    ap.add_argument("--out", help="output EXR pattern with #### (file mode)")
    ap.add_argument("--first", type=int, default=1)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--mode", choices=("file", "filter"), required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    core = vs.core
    core.num_threads = args.threads
    numbers = [args.first + i for i in range(args.count)]
    header = oiio.ImageInput.open(frame_path(args.src, numbers[0]))
    if header is None:
        raise SystemExit(f"spotless_peer: {frame_path(args.src, numbers[0])}: {oiio.geterror()}")
    spec = header.spec()
    header.close()
    w, h = spec.width, spec.height

    if args.mode == "filter":
        frames = [read_display(frame_path(args.src, n))[0] for n in numbers]
        out = spotless(source_clip(w, h, len(frames), lambda i: frames[i]))
        t0 = time.perf_counter()
        for i in range(len(frames)):
            to_numpy(out.get_frame(i))
        seconds = time.perf_counter() - t0
    else:
        if not args.out:
            raise SystemExit("spotless_peer: --mode file needs --out")
        t0 = time.perf_counter()
        out = spotless(source_clip(w, h, len(numbers), lambda i: read_display(frame_path(args.src, numbers[i]))[0]))
        for i, n in enumerate(numbers):
            write_linear(frame_path(args.out, n), to_numpy(out.get_frame(i)), spec)
        seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "mode": args.mode,
                "frames": len(numbers),
                "seconds": seconds,
                "frames_per_second": len(numbers) / seconds,
                "threads": core.num_threads,
                "vapoursynth": f"R{core.core_version.release_major}",
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
