"""The hand-marked detection benchmark: its object-level scoring and the mark files it reads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
MARKS = sorted((REPO / "benchmarks" / "handmarks").glob("*.json"))


def _bench():
    spec = importlib.util.spec_from_file_location(
        "handmarked_detection", REPO / "benchmarks" / "handmarked_detection.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scoring_counts_defects_and_components():
    bench = _bench()
    matte = np.zeros((100, 120), np.float32)
    matte[20, 24] = 1  # 4 px from a blind dust mark of r=1: within r + 3 -> found
    matte[40:80, 60] = 1  # a line along a marked scratch -> found
    matte[10, 100] = 1  # on an unsure mark: not a false component
    matte[90, 10] = 1  # far from everything: a false component
    matte[60, 30] = 1  # on a mark added on review: counts for precision, never for recall
    marks = [
        {"kind": "dust", "x": 20, "y": 20, "r": 1},
        {"kind": "scratch", "x0": 60, "y0": 10, "x1": 60, "y1": 90, "width": 2},
        {"kind": "dust", "x": 50, "y": 50, "r": 2},  # nothing detected near it: missed
        {"kind": "dust", "x": 30, "y": 60, "r": 2, "source": "review"},
    ]
    unsure = [{"kind": "dust", "x": 100, "y": 10, "r": 2}]
    spikes = matte.copy()
    spikes[40:80, 60] = 0  # the line came from the scratch detector
    got = bench.score_frame(matte, marks, unsure, 3.0, spikes)
    assert got["marks"] == 3 and got["marks_review"] == 1
    assert got["marks_found"] == 2 and got["missed"] == [marks[2]]
    assert got["components"] == 5
    assert got["components_on_marks"] == 4  # all but the far one
    assert got["components_on_sure_marks"] == 3  # the unsure one no longer counts
    assert got["components_on_blind_marks"] == 3  # the review one no longer counts
    (false,) = got["false_components"]
    assert (false["x"], false["y"], false["detector"]) == (10, 90, "spike")


def test_a_mark_just_beyond_the_tolerance_is_missed():
    bench = _bench()
    matte = np.zeros((50, 50), np.float32)
    matte[25, 31] = 1  # 6 px from the centre of an r=2 mark
    mark = [{"kind": "dust", "x": 25, "y": 25, "r": 2}]
    assert bench.score_frame(matte, mark, [], 3.0)["marks_found"] == 0
    assert bench.score_frame(matte, mark, [], 4.0)["marks_found"] == 1


@pytest.mark.parametrize("path", MARKS, ids=[p.stem for p in MARKS])
def test_mark_files_are_well_formed(path, shared_data):
    spec = json.loads(path.read_text())
    folder = shared_data / "real_film" / spec["film"]
    assert path.stem == f"{spec['film']}_{spec['frame']:05d}"
    for n in range(spec["frame"] - 2, spec["frame"] + 3):
        assert (folder / f"{n:05d}.png").exists(), f"{path.name}: context frame {n} missing"
    for mark in spec["marks"] + spec["unsure"]:
        assert mark["kind"] in {"dust", "dirt", "hair", "scratch", "blotch"}
        points = [(mark["x0"], mark["y0"]), (mark["x1"], mark["y1"])] if "x0" in mark else [(mark["x"], mark["y"])]
        for x, y in points:
            assert 0 <= x < 480 and 0 <= y < 368, f"{path.name}: mark {mark} outside the frame"
