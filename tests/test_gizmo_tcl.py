"""gizmos/FRDM.gizmo evaluated by Tcl (Debian's ``tcl``; scripts/setup.sh installs it) with a small stand-in
for Nuke's node commands (tests/nuke_stand_in.tcl): the knobs it declares and the wiring Nuke would build.
The Python fake (tests/fake_nuke.py) reads the gizmo with a regex; this reads it as Nuke does, as Tcl."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from frdm.engine.params import SCHEMA
from frdm.plugin.nuke import gizmo as G

REPO = Path(__file__).resolve().parent.parent
GIZMO = REPO / "gizmos" / "FRDM.gizmo"
STAND_IN = Path(__file__).with_name("nuke_stand_in.tcl")


def evaluate(path: Path) -> dict:
    tclsh = shutil.which("tclsh")
    if tclsh is None:
        pytest.fail("tclsh is not installed: apt-get install -y tcl (scripts/setup.sh does it)")
    proc = subprocess.run([tclsh, str(STAND_IN), str(path)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip())
    return json.loads(proc.stdout)


def check_wiring(doc: dict) -> None:
    """Source -> Copy (B) <- FRDM_Result (A) ; Switch(Source, Copy) -> Output: restored RGB over the Source."""
    nodes = {n["name"]: n for n in doc["nodes"]}
    assert nodes["Output1"]["inputs"] == ["FRDM_Switch"]
    assert nodes["FRDM_Switch"]["inputs"] == ["Source", "FRDM_Copy"]  # 0 = pass-through, 1 = restored
    copy = nodes["FRDM_Copy"]
    assert copy["class"] == "Copy" and copy["inputs"] == ["Source", "FRDM_Result"]  # B = Source, A = result
    pairs = {(copy["knobs"][f"from{i}"], copy["knobs"][f"to{i}"]) for i in range(4)}
    assert pairs == {("rgba.red",) * 2, ("rgba.green",) * 2, ("rgba.blue",) * 2, ("frdm.matte",) * 2}
    assert "channels" not in copy["knobs"]  # no layer copy: alpha and every other layer stay the Source's
    assert copy["knobs"]["bbox"] == "B"
    assert nodes["Source"]["class"] == "Input" and "number" not in nodes["Source"]["knobs"]  # input 0
    assert nodes["Mask"]["knobs"]["number"] == "1"
    assert "frdm frdm.matte" in doc["layers"]  # the matte channel the Copy names exists


def test_gizmo_evaluates_in_tcl_with_its_knobs_and_wiring():
    doc = evaluate(GIZMO)
    gizmo = doc["nodes"][0]
    assert gizmo["class"] == "Gizmo" and gizmo["knobs"]["inputs"] == "2"
    declared = {name for _, name in gizmo["user_knobs"]}
    for p in SCHEMA:
        name = G.knob_name(p.name)
        assert name in declared, name
        value = gizmo["knobs"][name]
        expected = ("true" if p.default else "false") if p.kind == "bool" else str(p.default)
        if p.kind == "float":
            assert float(value) == p.default, name
        else:
            assert value == expected, name
    for key in ("server", "first", "last", "output", "restore", "preview", "cancel", "status", "submit", "node_id"):
        assert f"frdm_{key}" in declared, key
    buttons = {name: t for t, name in gizmo["user_knobs"] if t == 22}
    assert set(buttons) >= {"frdm_restore", "frdm_preview", "frdm_cancel", "frdm_submit"}
    assert "except ImportError" in gizmo["knobs"]["onCreate"]  # a render node without frdm opens the script
    compile(gizmo["knobs"]["onCreate"], "onCreate", "exec")  # the Python Tcl hands Nuke is valid
    check_wiring(doc)


def test_the_stand_in_catches_broken_wiring_and_undeclared_knobs(tmp_path):
    text = GIZMO.read_text()
    unwired = tmp_path / "unwired.gizmo"
    unwired.write_text(text.replace(" push $N_source\n", ""))  # Switch would take Copy and the Mask
    with pytest.raises(AssertionError):
        check_wiring(evaluate(unwired))
    undeclared = tmp_path / "undeclared.gizmo"
    undeclared.write_text(re.sub(r"^ frdm_feather ", " frdm_feathr ", text, count=1, flags=re.M))
    with pytest.raises(RuntimeError, match="frdm_feathr of the gizmo is set before addUserKnob"):
        evaluate(undeclared)
