"""Where did the restoration touch the picture, and does each touch disappear?

  frdm qc scan.####.exr restored.####.exr --dir qc/          (then open qc/index.html)
  frdm restore scan.####.exr restored.####.exr --qc qc/      (the same, right after the restore)

Per frame: the share of pixels changed; each changed region's area, brightness step against a ring around it
(8-bit display units), grain ratio (high-pass spread inside over the ring's) and whether it lies on moving
content in the source. DIR gets index.html (crops at 100% of the largest and the most suspicious regions, a
per-frame plot of changed area and mean brightness), its PNG images and qc.json with every figure.
Frames are compared display-referred, each file's colour space decided as frdm restore decides it (a float
EXR scene-linear, a DPX Cineon log, an 8/16-bit image sRGB, unless the file declares one; --colorspace overrides).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from frdm.engine import params as P

DEFAULTS = P.defaults()  # the same colour defaults as frdm restore


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="the original sequence (name.####.exr, name.%%04d.png, a movie)")
    parser.add_argument("out", metavar="OUT", help="the restored sequence")
    parser.add_argument("--dir", help="where to write index.html, qc.json and the images (default: OUT's folder/qc)")
    parser.add_argument("--frames", help="frames to check, e.g. 1-48 (default: every restored frame on disk)")
    parser.add_argument(
        "--colorspace",
        default=DEFAULTS["colorspace"],
        help="colour space of both sequences (auto: per file, as frdm restore decides: what the file declares, "
        "else float EXR scene-linear, DPX Cineon, integer images sRGB; or any name frdm restore takes)",
    )
    parser.add_argument("--ocio-config", default=DEFAULTS["ocio_config"], help="OCIO config for --colorspace")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        metavar="V",
        help="a pixel is changed when a channel moved by more than V/255 (display-referred; default 0.5)",
    )
    parser.add_argument(
        "--matte",
        metavar="SEQ",
        help="the restorer's defect mattes (first channel), to judge each region on the pixels the restorer filled "
        "(default: OUT's own 'frdm.matte' channel where it has one, else the changed pixels)",
    )
    parser.add_argument("--crops", type=int, default=12, metavar="N", help="crops of the N most suspicious regions")
    parser.add_argument("--no-motion", action="store_true", help="skip the moving-content test (no optical flow)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run_qc(
    src: str,
    out: str,
    directory: str,
    *,
    frames: Sequence[int] | None = None,
    colorspace: str = DEFAULTS["colorspace"],
    ocio_config: str = DEFAULTS["ocio_config"],
    threshold: float = 0.5,
    crops: int = 12,
    motion: bool = True,
    quiet: bool = True,
    matte: str | None = None,
) -> dict[str, Any]:
    """Analyse SRC against OUT and write the report into ``directory``; returns the qc.json record."""
    from frdm.engine.qc import QCSettings, SequencePair, analyse_sequences, summarise
    from frdm.engine.qc_report import write_report

    settings = QCSettings(threshold=threshold)
    pair = SequencePair(src, out, frames, colorspace=colorspace, ocio_config=ocio_config, matte=matte)
    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(pair.frames), unit="frame", desc="qc", dynamic_ncols=True, file=sys.stderr)

    def progress(done: int, total: int, message: str) -> None:
        if bar is not None:
            bar.n = done
            bar.set_postfix_str(message, refresh=False)
            bar.refresh()

    try:
        results = analyse_sequences(pair, settings, motion=motion, progress=progress)
        summary = summarise(results)
        meta = {
            "source": src,
            "restored": out,
            "colorspace": " / ".join(sorted(pair.spaces)) or pair.colorspace,
            "threshold": threshold,
            "settings": settings.__dict__,
            "matte": matte,
        }
        return write_report(directory, results, summary, pair.pair, meta, suspicious=crops)
    finally:
        if bar is not None:
            bar.close()
        pair.close()


def print_summary(record: Mapping[str, Any], directory: str, as_json: bool) -> None:
    s = record["summary"]
    grain = s["share_grain_below_0.45"]
    moving = s["share_moving"]
    print(
        f"qc: {s['frames']} frame(s), changed {s['mean_changed_share'] * 100:.3f}% mean / "
        f"{s['max_changed_share'] * 100:.3f}% max, {s['regions']} region(s)"
        + (f", |step| mean {s['mean_abs_step']:.2f}/255" if s["mean_abs_step"] is not None else "")
        + (f", {grain * 100:.0f}% short of grain" if grain is not None else "")
        + (f", {moving * 100:.0f}% on moving content" if moving is not None else "")
        + f"; {os.path.join(directory, 'index.html')}",
        file=sys.stderr,
    )
    if as_json:
        print(json.dumps(s, indent=2))


def run(args: argparse.Namespace) -> int:
    from frdm.engine.frames import SequencePattern, parse_frame_range

    directory = args.dir or os.path.join(os.path.dirname(SequencePattern.parse(args.out).prefix) or ".", "qc")
    record = run_qc(
        args.src,
        args.out,
        directory,
        frames=parse_frame_range(args.frames) if args.frames is not None else None,
        colorspace=args.colorspace,
        ocio_config=args.ocio_config,
        threshold=args.threshold,
        crops=args.crops,
        motion=not args.no_motion,
        quiet=False,
        matte=args.matte,
    )
    print_summary(record, directory, args.json)
    return 0
