"""Write a render-farm job for a shot: a Deadline Cloud job bundle (Open Job Description) and Deadline 10 files.

  frdm submit scan.####.exr restored.####.exr --frames 1001-1100 --chunk-size 10 --preset shot.json \
      --job-dir jobs/sh010
  deadline bundle submit jobs/sh010                                  # Deadline Cloud
  openjd run jobs/sh010/template.json --step Restore -p file://jobs/sh010/openjd_values.json   # locally
  deadlinecommand jobs/sh010/deadline_job_info.job jobs/sh010/deadline_plugin_info.job        # Deadline 10

Each task restores one contiguous chunk (`--frames FIRST-LAST`), reading the chunk's temporal context from
the source and writing only the chunk's frames: the result equals one whole-range run. A diffusion job asks
for a GPU and starts one resident `frdm serve` per worker session that its chunks talk to.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys

from frdm.engine import params as P


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="source sequence, e.g. /shots/sh010/scan.####.exr")
    parser.add_argument("out", metavar="OUT", help="output sequence, e.g. /shots/sh010/frdm/sh010.####.exr")
    parser.add_argument("--frames", help="one contiguous range, e.g. 1001-1100 (default: all frames on disk)")
    parser.add_argument("--chunk-size", type=int, default=8, help="frames per farm task (default: %(default)s)")
    parser.add_argument("--job-dir", required=True, help="folder for the job files (visible from the farm)")
    parser.add_argument("--name", default="", help="job name (default: from the output name)")
    parser.add_argument("--preset", help="per-shot parameter file (JSON)")
    parser.add_argument("--weights", help="weights folder on the render nodes (diffusion engine)")
    parser.add_argument(
        "--frdm-command",
        default="frdm",
        help="how a render node starts frdm, e.g. '/opt/frdm/bin/frdm' (default: %(default)s)",
    )
    parser.add_argument("--priority", type=int, default=50, help="Deadline priority (default: %(default)s)")
    parser.add_argument("--pool", default="", help="Deadline 10 pool")
    parser.add_argument("--secondary-pool", default="", help="Deadline 10 secondary pool")
    parser.add_argument("--group", default="", help="Deadline 10 group (e.g. the GPU machines)")
    parser.add_argument("--limit-groups", default="", help="Deadline 10 limits, comma-separated (e.g. gpu,frdm)")
    parser.add_argument("--machine-limit", type=int, default=0, help="Deadline 10: most machines at once (0: any)")
    parser.add_argument(
        "--task-timeout", type=int, default=0, help="seconds a task may run (default: per frame x chunk size)"
    )
    server = parser.add_mutually_exclusive_group()
    server.add_argument(
        "--resident-server",
        dest="resident_server",
        action="store_true",
        default=None,
        help="chunks talk to one frdm serve per worker session (default for the diffusion engine)",
    )
    server.add_argument("--no-resident-server", dest="resident_server", action="store_false")
    parser.add_argument("--gpu-memory-gb", type=float, default=16.0, help="diffusion: GPU memory a worker needs")
    parser.add_argument("--memory-gb", type=float, default=32.0, help="diffusion: system memory a worker needs")
    parser.add_argument(
        "--deadline", action="store_true", help="also submit to Deadline now (needs deadlinecommand on PATH)"
    )
    P.add_cli_arguments(parser)  # --mask SEQ|auto|none|artist among them


def run(args: argparse.Namespace) -> int:
    from frdm.engine.errors import InputError
    from frdm.engine.frames import SequencePattern, parse_frame_range
    from frdm.plugin.farm import FarmJob, chunks, write_job

    preset = P.load_preset(args.preset) if args.preset else None
    params = P.from_cli_args(args, preset)
    if args.frames is not None:
        frames = parse_frame_range(args.frames)
    else:
        frames = SequencePattern.parse(args.src).existing()
        if not frames:
            raise InputError(f"no frames of {args.src} on disk; give --frames")
    job = FarmJob(
        args.src,
        args.out,
        frames,
        params,
        chunk_size=args.chunk_size,
        name=args.name,
        mask=P.cli_paths(args).get("mask"),
        weights=args.weights,
        command=shlex.split(args.frdm_command),
        priority=args.priority,
        pool=args.pool,
        secondary_pool=args.secondary_pool,
        group=args.group,
        limit_groups=[g.strip() for g in args.limit_groups.split(",") if g.strip()],
        machine_limit=args.machine_limit,
        resident_server=args.resident_server,
        gpu_memory_gb=args.gpu_memory_gb,
        memory_gb=args.memory_gb,
        task_timeout=args.task_timeout,
    )
    written = write_job(job, args.job_dir)
    n = len(chunks(job.frames, job.chunk_size))
    print(f"frdm submit: {len(job.frames)} frames in {n} task(s) of up to {job.chunk_size}", file=sys.stderr)
    print(f"  job bundle:      {written.folder} ({written.cloud_command()})", file=sys.stderr)
    print(f"  Deadline 10:     {written.deadline_command()}", file=sys.stderr)
    print(f"  run locally:     {written.openjd_command()}", file=sys.stderr)
    if args.deadline:
        exe = shutil.which("deadlinecommand")
        if exe is None:
            raise InputError("deadlinecommand is not on PATH; submit the files above from a Deadline client")
        proc = subprocess.run([exe, written.job_info, written.plugin_info], capture_output=True, text=True)
        sys.stdout.write(proc.stdout)
        if proc.returncode != 0:
            raise InputError(f"deadlinecommand failed ({proc.returncode}): {proc.stderr.strip()}")
    print(written.template)
    return 0
