"""The host side in Nuke 14's Python 3.9: the base install (numpy, pyzmq, msgpack) into a 3.9 interpreter,
then the node renders through the real server, the gizmo text and a farm bundle are built, and the Nuke
adapter imports (with the fake ``nuke``). scripts/setup.sh makes ``.venv-py39`` (``pip install -e .``, which
also checks that ``requires-python`` admits 3.9) where pyenv has a 3.9; ``FRDM_PY39`` names another one."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_node import in_process, pixels, write_clip
from test_server import ServerProcess

REPO = Path(__file__).resolve().parent.parent


def _python39() -> str:
    candidate = os.environ.get("FRDM_PY39") or str(REPO / ".venv-py39" / "bin" / "python")
    if not os.path.exists(candidate):
        pytest.skip("no Python 3.9 host install (scripts/setup.sh makes .venv-py39 where pyenv has 3.9)")
    return candidate


@pytest.mark.slow
def test_the_host_side_runs_in_python_3_9(tmp_path):
    python = _python39()
    src = write_clip(tmp_path / "plates", count=4)
    server = ServerProcess(tmp_path / "srv", restorer=None).wait_ready()
    try:
        code = textwrap.dedent(
            f"""
            import json, sys
            sys.path.insert(0, {str(REPO / "tests")!r})
            assert sys.version_info[:2] == (3, 9), sys.version
            from frdm.plugin import farm
            from frdm.plugin import node as N
            from frdm.plugin.nuke import gizmo
            import fake_nuke
            sys.modules["nuke"] = fake_nuke
            import frdm.plugin.nuke.adapter  # noqa: F401

            node = N.FrdmNode({server.address!r}, {{"colorspace": "linear"}})
            job = node.render([2, 3], N.Inputs.from_sequence({src!r}), {str(tmp_path / "out" / "r.####.exr")!r})
            result = job.wait(120)
            job = farm.FarmJob({src!r}, {str(tmp_path / "farm" / "f.####.exr")!r}, [1, 2, 3, 4], chunk_size=2)
            written = farm.write_job(job, {str(tmp_path / "job")!r}, validate=False)  # openjd-model: 3.10+ only
            print(json.dumps({{"frames": result.frames, "gizmo": gizmo.gizmo_text(), "bundle": written.folder}}))
            """
        )
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["gizmo"] == (REPO / "gizmos" / "FRDM.gizmo").read_text()
    expected = in_process(src, [2, 3], {"colorspace": "linear"})
    for f in (2, 3):
        np.testing.assert_array_equal(pixels(report["frames"][str(f)]), expected[f])
    assert json.loads((tmp_path / "job" / "asset_references.json").read_text())["assetReferences"]["inputs"]
