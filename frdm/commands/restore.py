"""Restore an image sequence or movie into an image sequence.

  frdm restore scan.####.exr restored.####.exr --frames 1001-1048 --mask auto
  frdm restore reel1.mov out/reel1.%04d.exr --colorspace srgb --contact-sheet out/sheet.png

Frames already written with the same parameters (recorded in each EXR's metadata) are skipped, so a killed
run picks up where it stopped. Every frame is written atomically: a crash never leaves a half-written file.
"""

from __future__ import annotations

import argparse
import json
import sys

from frdm.engine import params as P


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="source: name.####.exr, name.%%04d.dpx, a single image or a movie")
    parser.add_argument("out", metavar="OUT", help="output sequence, e.g. restored.####.exr")
    parser.add_argument("--frames", help="frames to restore, e.g. 1-48, 1-48x2, 1,5,9-12 (default: all on disk)")
    parser.add_argument("--preset", help="per-shot parameter file (JSON, see `frdm.engine.params.save_preset`)")
    parser.add_argument("--save-preset", metavar="FILE", help="write the effective parameters to FILE and go on")
    parser.add_argument("--weights", help="folder of local weights (diffusion engine)")
    parser.add_argument("--dry-run", action="store_true", help="check inputs and print the plan; write nothing")
    parser.add_argument("--no-resume", action="store_true", help="re-restore frames already written")
    parser.add_argument(
        "--keep-fill",
        action="store_true",
        help="keep each frame's restorer output in OUT's folder (.frdm-fill/): a later run that changes only "
        "feather, matte grow, mask or output knobs re-blends from it instead of restoring",
    )
    parser.add_argument("--contact-sheet", metavar="PNG", help="write a before/after/matte contact sheet")
    parser.add_argument("--qc", metavar="DIR", help="then check the result: `frdm qc SRC OUT --dir DIR`")
    parser.add_argument("--json", action="store_true", help="print a JSON report at the end")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--progress-lines",
        action="store_true",
        help="print progress as lines for render farms ('openjd_progress: N', 'Progress: N%%') instead of a bar",
    )
    P.add_cli_arguments(parser)  # --mask SEQ|auto|none|artist among them


def run(args: argparse.Namespace) -> int:
    from frdm.commands.tuning import tune_process

    # cv2's pool beside the engine's threads; glibc's malloc as it is: the server's tuning held ~420 MiB more at
    # the peak of a 24-frame 2K restore (tuning.MALLOC_SETTINGS), over the 1.5 GB a 2K restore may hold.
    tune_process(malloc=False)
    from frdm.engine.frames import parse_frame_range
    from frdm.engine.pipeline import plan_restore, restore_sequence
    from frdm.engine.restorer import create_restorer

    preset = P.load_preset(args.preset) if args.preset else None
    params = P.from_cli_args(args, preset)
    mask = P.cli_paths(args).get("mask")
    frames = parse_frame_range(args.frames) if args.frames is not None else None
    if args.save_preset:
        P.save_preset(args.save_preset, params)
    restorer = create_restorer(params["engine"], weights=args.weights)
    if args.dry_run:
        plan = plan_restore(
            args.src,
            args.out,
            frames=frames,
            params=params,
            restorer=restorer,
            mask=mask,
            resume=not args.no_resume,
            weights=args.weights,
        )
        print(plan.describe())
        return 0

    bar = None
    if not args.quiet and not args.progress_lines:
        from tqdm import tqdm

        bar = tqdm(total=1, unit="frame", dynamic_ncols=True, file=sys.stderr)
    last_line = [""]

    def progress(done: float, total: float, message: str) -> None:
        if args.progress_lines:  # a farm task: lines OpenJD and Deadline parse, each printed once
            from frdm.plugin.farm import progress_lines

            line = progress_lines(done, total)
            if line != last_line[0]:
                print(line, flush=True)
                last_line[0] = line
        if bar is not None:
            bar.total = int(total) if float(total).is_integer() else total
            bar.n = int(done) if float(done).is_integer() else round(done, 2)
            bar.set_postfix_str(message, refresh=False)
            bar.refresh()

    try:
        report = restore_sequence(
            args.src,
            args.out,
            frames=frames,
            params=params,
            mask=mask,
            restorer=restorer,
            progress=progress,
            resume=not args.no_resume,
            contact_sheet=args.contact_sheet,
            weights=args.weights,
            keep_fill=args.keep_fill,
        )
    finally:
        if bar is not None:
            bar.close()
    fps = len(report.written) / report.seconds if report.seconds > 0 else 0.0
    summary = (
        f"restored {len(report.written)} frame(s), skipped {len(report.skipped)} already done "
        f"({report.seconds:.1f} s, {fps:.2f} frames/s)"
    )
    if report.contact_sheet:
        summary += f"; contact sheet {report.contact_sheet}"
    print(summary, file=sys.stderr)
    if args.qc:
        from frdm.commands.qc import print_summary, run_qc

        qc = run_qc(
            args.src,
            args.out,
            args.qc,
            frames=sorted(report.outputs),
            colorspace=params["colorspace"],
            ocio_config=params["ocio_config"],
            quiet=args.quiet,
        )
        print_summary(qc, args.qc, as_json=False)
    if args.json:
        print(
            json.dumps(
                {
                    "written": report.written,
                    "skipped": report.skipped,
                    "seconds": report.seconds,
                    "outputs": report.outputs,
                    "matte_coverage": report.matte_coverage,
                    "contact_sheet": report.contact_sheet,
                },
                indent=2,
            )
        )
    return 0
