"""The synthetic recall instrument: per-speck records from ground-truth masks and a matte."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def _bench():
    sys.path.insert(0, str(REPO / "benchmarks"))  # it takes the clip's synthesis from spotless_vs_frdm
    try:
        spec = importlib.util.spec_from_file_location("synthetic_recall", REPO / "benchmarks" / "synthetic_recall.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


def test_specks_are_told_found_missed_and_under_a_neighbours_speck():
    bench = _bench()
    gt = np.full((3, 40, 60, 3), 0.5, np.float32)
    degraded, out = gt.copy(), gt.copy()
    masks = np.zeros((3, 40, 60), bool)
    mattes = np.zeros_like(masks)
    masks[1, 5:9, 5:9] = True  # found and filled right
    mattes[1, 4:10, 4:10] = True
    masks[1, 20:24, 40:44] = True  # missed: its error stays
    masks[0, 21:23, 41:43] = True  # ... and frame 0 has a speck on it
    degraded[masks] = 0.1
    out[1, 20:24, 40:44] = 0.1
    out[0] = degraded[0]
    rows = bench.speck_table(gt, degraded, out, masks, mattes)
    mine = sorted((r for r in rows if r["frame"] == 1), key=lambda r: r["found"])
    missed, found = mine
    assert found["found"] == 1.0 and found["sse"] == 0.0 and not found["under"]
    assert missed["found"] == 0.0 and missed["under"] and missed["area"] == 16
    assert abs(missed["rmse"] - 0.4) < 1e-6 and abs(missed["contrast"] - 0.4) < 1e-6
    text = bench.summary(rows, masks)
    assert "| missed (< 50% in matte) | 2 |" in text  # frame 1's and frame 0's (left in frame 0 too)
    assert "| found (100%) | 1 | 16 | 0.0% |" in text
