"""Degrade clean footage with synthetic film defects: a dataset shot (degraded/, gt/, mask/, caption.txt).

  frdm degrade ../shared/data/clean/bikes.mp4 data/bikes_mixed --preset mixed --seed 7 --frames 1-24
  frdm degrade still.png data/pan --preset noisy-fast-motion --fast-motion 24 --motion-frames 16 --size 480x270

Presets are the paper's three test settings: mixed, scratch, noisy-fast-motion. Masks mark exactly the
pixels the defect generators changed. The same seed gives bit-identical output.
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("clean", metavar="CLEAN", help="clean source: movie, image sequence (name.####.png) or a still")
    parser.add_argument(
        "out", metavar="OUT", help="shot folder to write (OUT/degraded, OUT/gt, OUT/mask, OUT/caption.txt)"
    )
    parser.add_argument("--preset", default="mixed", choices=("mixed", "scratch", "noisy-fast-motion"))
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--frames", help="source frames, e.g. 1-24 (default: all)")
    parser.add_argument("--size", help="resize to WIDTHxHEIGHT first (default: the source's size)")
    parser.add_argument("--templates", metavar="DIR", help="folder of defect template images to blend in")
    parser.add_argument("--caption", default="an old film frame", help="the shot's caption (global prompt)")
    motion = parser.add_argument_group("fast motion (pan/zoom/rotate a still or the clip, exact motion)")
    motion.add_argument("--fast-motion", type=float, metavar="PX", help="camera speed in source pixels per frame")
    motion.add_argument("--motion-frames", type=int, default=16, help="frames to make (default 16)")
    motion.add_argument("--direction", type=float, default=0.0, help="pan direction in degrees (0 = right)")
    motion.add_argument("--zoom", type=float, default=0.0, help="zoom per frame, e.g. 0.01 = 1%% per frame")
    motion.add_argument("--rotate", type=float, default=0.0, help="rotation per frame in degrees")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from frdm.engine.data import synthesis
    from frdm.engine.data.clips import parse_size, read_clip
    from frdm.engine.data.dataset import write_shot
    from frdm.engine.frames import parse_frame_range

    frames = parse_frame_range(args.frames) if args.frames else None
    size = parse_size(args.size)
    info: dict = {"source": args.clean, "preset": args.preset, "seed": args.seed}
    if args.fast_motion:
        from frdm.engine.data.motion import fast_motion

        clip, numbers = read_clip(args.clean, frames)
        out_size = size or (clip.shape[2] // 2, clip.shape[1] // 2)
        mc = fast_motion(
            clip if clip.shape[0] > 1 else clip[0],
            args.motion_frames,
            out_size,
            speed=args.fast_motion,
            direction_deg=args.direction,
            zoom_per_frame=args.zoom,
            rotate_deg_per_frame=args.rotate,
        )
        clip = mc.frames
        info["motion"] = {
            "speed_px_per_frame": args.fast_motion,
            "direction_deg": args.direction,
            "zoom_per_frame": args.zoom,
            "rotate_deg_per_frame": args.rotate,
            "transforms_output_to_source": mc.transforms.tolist(),
        }
    else:
        clip, numbers = read_clip(args.clean, frames, size)
        info["source_frames"] = numbers
    templates = synthesis.load_templates(args.templates) if args.templates else None
    result = synthesis.synthesize(clip, args.preset, args.seed, templates)
    info["steps"] = [{"name": s.name, **s.kwargs} for s in result.steps]
    out = os.path.abspath(args.out)
    write_shot(os.path.dirname(out), os.path.basename(out), result.degraded, clip, result.mask, args.caption, info=info)
    frac = float(np.mean(result.mask))
    print(
        f"frdm degrade: wrote {clip.shape[0]} frames {clip.shape[2]}x{clip.shape[1]} to {out} "
        f"({args.preset}, seed {args.seed}; defects cover {frac:.2%}: {', '.join(s.name for s in result.steps)})"
    )
    return 0
