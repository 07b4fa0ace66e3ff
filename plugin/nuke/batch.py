"""Render an FRDM node of a script without the GUI (``nuke -t``), e.g. on a farm node with Nuke:

    nuke -t -m 1 /path/to/site-packages/frdm/plugin/nuke/batch.py shot.nk FRDM1 1001-1100

It opens the script, restores the frames through the node's server and points the node's internal Read at
the results (the script is not saved). Exit status 0 on success, 2 with one clear line on failure. For a
farm without Nuke licences, ``frdm submit`` runs ``frdm restore`` instead (same parameters via a preset).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import nuke

from frdm.engine.errors import FrdmError
from frdm.engine.frames import parse_frame_range
from frdm.plugin.nuke import adapter


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (2, 3):
        print("usage: nuke -t batch.py SCRIPT.nk NODE [FIRST-LAST]", file=sys.stderr)
        return 1
    script, name = args[0], args[1]
    try:
        nuke.scriptOpen(script)
        node = nuke.toNode(name)
        if node is None:
            raise FrdmError(f"{script} has no node '{name}'")
        if len(args) == 3:
            frames = parse_frame_range(args[2])
            if frames != list(range(frames[0], frames[-1] + 1)):
                raise FrdmError(f"give one contiguous range, not {args[2]}")
            job = adapter.restore_range(node, frames[0], frames[-1])
        else:
            job = adapter.restore_range(node)
    except FrdmError as exc:
        print(f"FRDM: error: {exc}", file=sys.stderr)
        return 2
    if job is not None and job.result is not None:
        done = sorted(job.result.frames)
        print(f"FRDM: restored {name} {done[0]}-{done[-1]} -> {job.result.frames[done[0]]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
