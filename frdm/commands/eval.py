"""Evaluate a restoration against its ground truth: the paper's metrics in a Table-1-shaped table.

  frdm eval restored.####.png gt.####.png --mask mask.####.png --row classical --setting mixed --out results/

Writes OUT/results.json, .csv, .md and .png. Rows (--row) and settings (--setting) accumulate across runs
into the same OUT folder, so one call per (restorer, setting) builds the whole table.
Metrics: MaskedPSNR (the paper's Eq. 7, needs --mask), PSNR, SSIM, LPIPS (AlexNet), BRISQUE, NIQE, WarpError.
Pixel values are used as stored and clipped to [0, 1] (display-referred: PNG, DPX/EXR already in a display
encoding); convert scene-linear EXRs to a display encoding first.
"""

from __future__ import annotations

import argparse

DEFAULT_METRICS = "MaskedPSNR,PSNR,SSIM,LPIPS,BRISQUE,NIQE,WarpError"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pred", metavar="PRED", help="restored sequence (or movie)")
    parser.add_argument("gt", metavar="GT", help="ground-truth sequence (or movie), the same number of frames")
    parser.add_argument("--mask", metavar="SEQ", help="defect masks (white = defect), numbered like GT")
    parser.add_argument("--row", default="restored", help="row name: the restorer (default 'restored')")
    parser.add_argument("--setting", default="test", help="column group: the test setting (default 'test')")
    parser.add_argument("--out", default="eval", help="results folder (default ./eval)")
    parser.add_argument("--metrics", default=DEFAULT_METRICS, help=f"comma list (default {DEFAULT_METRICS})")
    parser.add_argument("--frames", help="GT frames to use (default: all); PRED frames are taken in order")


def run(args: argparse.Namespace) -> int:
    import os

    from frdm.engine.data.clips import read_clip, read_masks
    from frdm.engine.errors import InputError
    from frdm.engine.frames import open_source, parse_frame_range
    from frdm.engine.metrics.evaluate import ResultsTable, evaluate_clip

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if args.mask is None and "MaskedPSNR" in metrics:
        metrics.remove("MaskedPSNR")
        print("frdm eval: no --mask given, MaskedPSNR left out")
    gt_frames = parse_frame_range(args.frames) if args.frames else None
    gt, gt_numbers = read_clip(args.gt, gt_frames)
    pred_src = open_source(args.pred)
    if len(pred_src.frame_numbers) != len(gt_numbers) and not args.frames:
        raise InputError(
            f"{args.pred} has {len(pred_src.frame_numbers)} frames but {args.gt} has "
            f"{len(gt_numbers)}; they must match (or choose frames with --frames)"
        )
    pred_numbers = pred_src.frame_numbers[: len(gt_numbers)] if args.frames else pred_src.frame_numbers
    if len(pred_numbers) != len(gt_numbers):
        raise InputError(f"{args.pred} has only {len(pred_numbers)} frames for {len(gt_numbers)} ground-truth frames")
    pred, _ = read_clip(args.pred, pred_numbers)
    if pred.shape != gt.shape:
        raise InputError(
            f"{args.pred} frames are {pred.shape[2]}x{pred.shape[1]} but {args.gt} frames are "
            f"{gt.shape[2]}x{gt.shape[1]}; they must be the same size"
        )
    mask = read_masks(args.mask, gt_numbers) if args.mask else None
    if mask is not None and mask.shape != gt.shape[:3]:
        raise InputError(
            f"{args.mask} masks are {mask.shape[2]}x{mask.shape[1]}, the frames {gt.shape[2]}x{gt.shape[1]}"
        )
    values = evaluate_clip(pred, gt, mask, metrics)
    table = ResultsTable.load(os.path.join(args.out, "results.json"))
    table.add(args.row, args.setting, values)
    paths = table.save(args.out)
    print(table.markdown())
    print("frdm eval: wrote " + ", ".join(paths))
    return 0
