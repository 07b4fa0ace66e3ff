"""Defect masks from (degraded scan, professionally restored) frame pairs.

  frdm pairs scan.####.png restored.####.png masks/mask.####.png --report masks/report.json

Each restored frame is aligned onto its scan (a sub-pixel shift, refined to an affine map when that fits better),
colour-matched, and the differences above the pair's own grain level become the mask. Pairs whose
mismatch is structural (another frame, a regrade, a warp) are rejected with the reason and get no mask.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("degraded", metavar="DEGRADED", help="scan sequence (or movie)")
    parser.add_argument("restored", metavar="RESTORED", help="restored sequence (or movie), same frame numbers")
    parser.add_argument("out", metavar="OUT", help="mask sequence to write, e.g. masks/mask.####.png")
    parser.add_argument("--frames", help="frames to process (default: those present in both)")
    parser.add_argument(
        "--align",
        default="affine",
        choices=("affine", "shift", "none"),
        help="affine (default: shift, refined by ECC when that fits better), shift only, or none",
    )
    parser.add_argument("--k-high", type=float, default=5.0, help="seed threshold in grain sigmas (default 5)")
    parser.add_argument("--k-low", type=float, default=2.0, help="grow threshold in grain sigmas (default 2)")
    parser.add_argument("--report", metavar="JSON", help="write per-frame results (accepted, reason, stats)")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from frdm.engine.data.pairs import pair_mask
    from frdm.engine.errors import InputError
    from frdm.engine.frames import Frame, SequencePattern, open_source, parse_frame_range, write_frame

    deg_src, res_src = open_source(args.degraded), open_source(args.restored)
    common = sorted(set(deg_src.frame_numbers) & set(res_src.frame_numbers))
    frames = parse_frame_range(args.frames) if args.frames else common
    if not frames:
        raise InputError(f"{args.degraded} and {args.restored} share no frame numbers")
    deg_src.check_frames(frames)
    res_src.check_frames(frames)
    out = SequencePattern.parse(args.out)
    if not out.is_sequence and len(frames) > 1:
        raise InputError(f"{args.out}: give a sequence pattern (e.g. mask.####.png) for {len(frames)} frames")
    report = []
    for n in frames:
        d, r = deg_src.read(n), res_src.read(n)
        res = pair_mask(
            np.clip(d.pixels[..., d.rgb_indices()], 0, 1),
            np.clip(r.pixels[..., r.rgb_indices()], 0, 1),
            align=args.align,
            k_high=args.k_high,
            k_low=args.k_low,
        )
        entry = {
            "frame": n,
            "accepted": res.accepted,
            "reason": res.reason,
            "transform": res.transform.tolist(),
            **{k: v for k, v in res.stats.items()},
        }
        if res.accepted:
            h, w = res.mask.shape
            write_frame(
                out.path(n),
                Frame(res.mask[..., None].astype(np.float32), ("Y",), ("uint8",), (0, 0, w, h), (0, 0, w, h)),
            )
            print(f"frame {n}: mask {res.stats['defect_fraction']:.2%} of the frame")
        else:
            print(f"frame {n}: rejected: {res.reason}")
        report.append(entry)
    if args.report:
        with open(args.report, "w") as fh:
            json.dump(report, fh, indent=1)
    accepted = sum(e["accepted"] for e in report)
    print(f"frdm pairs: {accepted}/{len(report)} pairs accepted")
    return 0
