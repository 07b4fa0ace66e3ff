"""Run the FRDM inference server: keeps one restorer resident and serves restore jobs over ZeroMQ.

Loopback only by default. Binding another address needs CURVE keys (frdm keygen DIR, then --curve-keys DIR).
Path mode (sources and outputs as paths on shared storage) is off unless --allow-root names the folders the
server may read and write. The protocol is in docs/protocol.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bind",
        default="tcp://127.0.0.1:5555",
        help="endpoint: tcp://HOST:PORT or ipc:///path (default: %(default)s)",
    )
    parser.add_argument(
        "--engine",
        default="classical",
        choices=("classical", "diffusion"),
        help="restorer kept resident (default: %(default)s)",
    )
    parser.add_argument("--weights", default=None, help="folder of local safetensors weights (diffusion engine)")
    parser.add_argument("--device", default=None, help="torch device for the diffusion engine, e.g. cuda:0")
    parser.add_argument(
        "--curve-keys",
        default=None,
        metavar="DIR",
        help="encrypt and authenticate with the CURVE keys in DIR (made by 'frdm keygen DIR'); "
        "required for any non-loopback --bind",
    )
    parser.add_argument(
        "--allow-root",
        action="append",
        default=[],
        metavar="PATH",
        help="a folder the server may read sources from and write results to (path mode); "
        "repeat for several. Without it only inline frames are accepted",
    )
    parser.add_argument("--cache-dir", default=None, help="result cache folder (default: ~/.cache/frdm/server)")
    parser.add_argument(
        "--cache-size-gb",
        type=float,
        default=20.0,
        help="cache size before the least recently used frames go (default: %(default)s)",
    )
    parser.add_argument(
        "--source-memory-gb",
        type=float,
        default=None,
        help="memory for the source frames of recent requests, which later requests may name by content id "
        "(a preview after a knob change then sends its target frame only; default: ServerConfig.source_memory_bytes)",
    )
    parser.add_argument("--max-message-mb", type=int, default=4096, help="largest request (default: %(default)s)")
    parser.add_argument("--max-frames", type=int, default=2000, help="frames per job (default: %(default)s)")
    parser.add_argument("--max-pixels", type=int, default=8192 * 8192, help="pixels per frame (default: %(default)s)")
    parser.add_argument(
        "--max-frame-mb",
        type=int,
        default=512,
        help="memory of one decoded frame (width x height x channels x 4 bytes), checked from the file's header "
        "before decoding (default: %(default)s)",
    )
    parser.add_argument("--max-queued", type=int, default=64, help="queued jobs before 'busy' (default: %(default)s)")
    parser.add_argument(
        "--max-queued-mb",
        type=int,
        default=8192,
        help="inline frame data all live jobs together may hold before 'busy' (default: %(default)s)",
    )
    parser.add_argument(
        "--chunk",
        type=int,
        default=8,
        help="frames a job runs before the next client's turn (default: %(default)s)",
    )
    parser.add_argument(
        "--restorer",
        default=None,
        metavar="MODULE:CALLABLE",
        help="advanced: serve a restorer made by this factory instead of --engine (a site's own "
        "engine, or a test double); the process imports it, nothing arrives over the wire",
    )
    parser.add_argument("--verbose", action="store_true", help="log every job")


#: numpy asks the kernel for transparent huge pages for every large array; with THP defrag 'madvise' (a
#: common default) a page fault in a long-running server that allocates and frees frame-sized arrays all
#: the time can stall in direct compaction. Measured here: a 2K frame's model-space clip 270 -> 44 ms, the
#: pass-through round trip 2.0 -> 3.4-4.1 frames/s. numpy reads this when it is imported (before any
#: engine import below); a value the user set is kept.
NUMPY_HUGEPAGE_ENV = "NUMPY_MADVISE_HUGEPAGE"


def run(args: argparse.Namespace) -> int:
    from frdm.commands.tuning import tune_process

    os.environ.setdefault(NUMPY_HUGEPAGE_ENV, "0")
    tune_process()
    from frdm.server.protocol import Limits
    from frdm.server.server import ServerConfig, run_server

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="frdm serve: %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    sizes = (args.max_frames, args.max_pixels, args.max_message_mb, args.max_frame_mb, args.max_queued_mb, args.chunk)
    if min(sizes) < 1:
        from frdm.engine.errors import InputError

        raise InputError(
            "--max-frames, --max-pixels, --max-message-mb, --max-frame-mb, --max-queued-mb and --chunk must be "
            "at least 1"
        )
    limits = Limits(
        max_message_bytes=args.max_message_mb << 20,
        max_frames_per_job=args.max_frames,
        max_sources_per_job=args.max_frames + 100,
        max_pixels_per_frame=args.max_pixels,
        max_frame_bytes=args.max_frame_mb << 20,
        max_queued_jobs=args.max_queued,
        max_queued_bytes=args.max_queued_mb << 20,
    )
    config = ServerConfig(
        bind=args.bind,
        engine=args.engine,
        weights=args.weights,
        device=args.device,
        curve_keys=args.curve_keys,
        allow_roots=list(args.allow_root),
        cache_dir=args.cache_dir,
        cache_max_bytes=int(args.cache_size_gb * (1 << 30)),
        **({} if args.source_memory_gb is None else {"source_memory_bytes": int(args.source_memory_gb * (1 << 30))}),
        limits=limits,
        chunk=args.chunk,
        restorer_factory=args.restorer,
    )

    def ready(endpoint: str) -> None:
        print(
            f"frdm serve: listening on {endpoint} (engine {args.restorer or args.engine})",
            file=sys.stderr,
            flush=True,
        )

    return run_server(config, ready)
