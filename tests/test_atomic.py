"""The one atomic-write helper (engine/atomic.py): whole files or nothing, and a killed writer's temporary is
cleared when the work resumes."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from frdm.engine import atomic

REPO = Path(__file__).resolve().parent.parent


def test_writes_replace_whole_and_a_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "sub" / "doc.json"
    atomic.write_text(target, "one")
    atomic.write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"two" and os.listdir(target.parent) == ["doc.json"]
    assert os.path.basename(atomic.temp_path(target)).endswith("~doc.json")  # the extension is kept


def test_a_folder_is_replaced_whole(tmp_path):
    folder = tmp_path / "step-00000010"
    for content in ("old", "new"):
        with atomic.atomic_path(folder) as tmp:
            os.makedirs(tmp)
            Path(tmp, "state.json").write_text(content)
    assert Path(folder, "state.json").read_text() == "new" and os.listdir(tmp_path) == ["step-00000010"]


def test_only_dead_writers_temporaries_on_this_host_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    names = {
        "dead": f"{atomic.PARTIAL_PREFIX}{host}~{dead.pid}~ab~f.0001.exr",
        "alive": f"{atomic.PARTIAL_PREFIX}{host}~{os.getpid()}~cd~f.0002.exr",
        "other_host": f"{atomic.PARTIAL_PREFIX}elsewhere~{dead.pid}~ef~f.0003.exr",
        "not_ours": ".f.0004.exr.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"half a frame")
    (tmp_path / f"{atomic.PARTIAL_PREFIX}{host}~{dead.pid}~gh~step-1").mkdir()  # a half-saved checkpoint
    removed = atomic.remove_stale(tmp_path)
    assert sorted(removed) == sorted([names["dead"], f"{atomic.PARTIAL_PREFIX}{host}~{dead.pid}~gh~step-1"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [names["alive"], names["other_host"], names["not_ours"]]
    )


def test_a_killed_frame_write_is_cleaned_up_when_the_restore_resumes(tmp_path):
    from frdm.cli import main
    from frdm.engine.frames import Frame, write_frame

    for n in (1, 2, 3):
        px = np.full((16, 16, 3), 0.2 * n, np.float32)
        write_frame(
            tmp_path / f"s.{n:04d}.exr", Frame(px, ("R", "G", "B"), ("half",) * 3, (0, 0, 16, 16), (0, 0, 16, 16))
        )
    out = tmp_path / "out"
    # A writer killed between writing its temporary and the rename (kill -9: no cleanup runs).
    code = textwrap.dedent(
        f"""
        import os, numpy as np
        from frdm.engine.frames import Frame, write_frame
        os.replace = lambda *a: os._exit(9)
        px = np.zeros((8, 8, 3), np.float32)
        write_frame({str(out / "o.0002.exr")!r}, Frame(px, ("R", "G", "B"), ("half",) * 3, (0, 0, 8, 8), (0, 0, 8, 8)))
        """
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=120).returncode == 9
    assert len(os.listdir(out)) == 1 and os.listdir(out)[0].endswith("o.0002.exr")  # the torn temporary
    assert main(["restore", str(tmp_path / "s.####.exr"), str(out / "o.####.exr"), "--quiet", "--mask", "none"]) == 0
    assert sorted(os.listdir(out)) == ["o.0001.exr", "o.0002.exr", "o.0003.exr"]


# Renames that are not atomic writes of new content: moving complete staged results into place, and
# pyzmq's key files (written by zmq.auth, then moved).
RENAMES_ALLOWED = {"engine/atomic.py", "plugin/node.py", "frdm/commands/keygen.py"}


def test_every_atomic_write_goes_through_the_one_helper():
    """No module renames a temporary of its own (each did it its own way, with or without fsync)."""
    offenders = []
    for folder in ("engine", "plugin", "server", "frdm", "scripts"):
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            text = path.read_text()
            if re.search(r"\bos\.(replace|rename)\(|\.rename\(|mkstemp\(", text) and rel not in RENAMES_ALLOWED:
                offenders.append(rel)
    assert offenders == []
