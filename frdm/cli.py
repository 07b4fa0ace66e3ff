"""The ``frdm`` command line: one sub-command per entry of ``COMMANDS``, each a module in ``frdm.commands``
(a helper module there, ``frdm.commands.tuning``, is no command).

Each command module defines ``add_arguments(parser)`` and ``run(args) -> int`` and must import nothing heavy
(torch, OpenImageIO) at module level, so that ``frdm --help`` and the host-side commands stay fast and work in
a torch-free install.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from frdm import __version__
from frdm.engine.errors import FrdmError

# name -> (module, one-line help). Adding a command is one line here and one module.
COMMANDS: dict[str, tuple[str, str]] = {
    "restore": ("frdm.commands.restore", "restore an image sequence or movie (classical or diffusion)"),
    "qc": ("frdm.commands.qc", "where a restoration changed the picture: figures, crops and plot as an HTML page"),
    "degrade": ("frdm.commands.degrade", "make a dataset shot: synthetic film defects with exact masks"),
    "pairs": ("frdm.commands.pairs", "defect masks from (degraded, restored) frame pairs"),
    "eval": ("frdm.commands.eval", "metrics of a restoration against ground truth (Table-1 layout)"),
    "bench-quality": ("frdm.commands.bench_quality", "build the three test settings and evaluate restorers"),
    "train": ("frdm.commands.train", "train HaineiFRDM's guidance and preprocess networks (patch-based, Eq. 3-6)"),
    "serve": ("frdm.commands.serve", "run the inference server (ZeroMQ; keeps the restorer resident)"),
    "keygen": ("frdm.commands.keygen", "make CURVE keys for 'frdm serve --curve-keys'"),
    "submit": ("frdm.commands.submit", "write a render-farm job (Open Job Description, Deadline) for a shot"),
    "farm": ("frdm.commands.farm", "render-farm task helpers (a resident server per worker session, chunk tasks)"),
    "info": ("frdm.commands.info", "describe a weights folder: components, parameter counts, memory"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="frdm", description="FRDM film restoration")
    parser.add_argument("--version", action="version", version=f"frdm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 1
    try:
        return int(args._module.run(args) or 0)
    except FrdmError as exc:  # the user can act on it: one clear line, no traceback
        print(f"frdm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"frdm {args.command}: interrupted; frames already written are complete", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
