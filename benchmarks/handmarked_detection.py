"""Defect DETECTION of the classical restorer on real scanned film, scored against defects marked by hand.

The marks are in benchmarks/handmarks/<film>_<frame>.json (see its README.md). For each marked frame the
classical restorer runs with default parameters on the frame and its +-2 neighbours; its matte is scored at
the defect (object) level:

- recall: the fraction of hand-marked defects with a detected pixel within r + tol px of the mark
  (lines: of any point along the line, r = width / 2). Only BLIND marks count: marks with
  "source": "review" were added after looking at the detections, so they are found by construction;
- precision: the fraction of the matte's connected components (8-connectivity) that come within r + tol px of
  a hand mark or an "unsure" mark (unsure marks are excluded from recall and never count against precision).
  Reported three ways: against the blind marks and blind unsure marks only ("precision_blind", a lower
  bound: the blind pass missed faint dust), against all marks and unsure marks ("precision"), and against
  the sure marks only, every component on an unsure mark counted false ("precision_strict").

Pixel counts (matte pixels, how many of them lie inside the marks' discs grown by tol) are printed for
information only: hand discs are rough, so pixel figures are not a measure of quality.

    python benchmarks/handmarked_detection.py --out /tmp/handmarked [--json result.json] [--tol 3]
    (FRDM_SHARED=/path/to/shared or --data DIR when the shared folder is not beside the checkout)
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from typing import Any

import cv2
import numpy as np

from frdm.engine import params as P
from frdm.engine.classical import ClassicalRestorer
from frdm.engine.frames import read_frame
from frdm.engine.restorer import Clip

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MARKS = os.path.join(HERE, "handmarks")
# ../shared beside the checkout, as in tests/conftest.py; FRDM_SHARED overrides (e.g. from a git worktree).
DEFAULT_DATA = os.path.join(
    os.environ.get("FRDM_SHARED", os.path.join(HERE, "..", "..", "shared")), "data", "real_film"
)


def load_rgb(path: str) -> np.ndarray:
    frame = read_frame(path)
    # PNG scans are display-referred already: the model space is their own [0, 1] values.
    return np.clip(frame.pixels[..., frame.rgb_indices()], 0.0, 1.0).astype(np.float32)


def mark_mask(shape: tuple[int, int], mark: dict[str, Any], grow: float) -> np.ndarray:
    """The pixels within (mark radius + grow) of a mark: a disc for blobs, a thick segment for lines."""
    out = np.zeros(shape, dtype=np.uint8)
    if "x0" in mark:
        half = float(mark.get("width", 1)) / 2.0 + grow
        p0 = (int(round(mark["x0"])), int(round(mark["y0"])))
        p1 = (int(round(mark["x1"])), int(round(mark["y1"])))
        cv2.line(out, p0, p1, 1, thickness=max(1, int(round(2 * half + 1))))
    else:
        centre = (int(round(mark["x"])), int(round(mark["y"])))
        cv2.circle(out, centre, int(round(float(mark["r"]) + grow)), 1, thickness=-1)
    return out > 0


def score_frame(
    matte: np.ndarray, marks: list[dict], unsure: list[dict], tol: float, spike_matte: np.ndarray | None = None
) -> dict[str, Any]:
    """Object- and pixel-level figures for one frame. ``spike_matte`` (the matte with line-scratch detection
    off) attributes each false component to the spike (dust) or the line-scratch detector."""
    shape = matte.shape
    detected = matte > 0.5
    blind = [m for m in marks if m.get("source") != "review"]
    hits = [bool((detected & mark_mask(shape, m, tol)).any()) for m in blind]
    count, labels = cv2.connectedComponents(detected.astype(np.uint8), connectivity=8)
    components = count - 1

    def on_marks(group: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        zone = np.zeros(shape, dtype=bool)
        for m in group:
            zone |= mark_mask(shape, m, tol)
        ok = np.zeros(count, dtype=bool)
        ok[np.unique(labels[zone & detected])] = True
        ok[0] = False
        return zone, ok

    blind_unsure = [m for m in unsure if m.get("source") != "review"]
    _, blind_ok = on_marks(blind + blind_unsure)
    _, sure_ok = on_marks(marks)
    zone, comp_ok = on_marks(marks + unsure)
    true_components = int(comp_ok[1:].sum())
    marked_px = np.zeros(shape, dtype=bool)
    for m in marks:
        marked_px |= mark_mask(shape, m, 0.0)
    return {
        "marks": len(blind),
        "marks_review": len(marks) - len(blind),
        "unsure": len(unsure),
        "marks_found": int(sum(hits)),
        "recall": (sum(hits) / len(blind)) if blind else None,
        "components": components,
        "components_on_blind_marks": int(blind_ok[1:].sum()),
        "precision_blind": (int(blind_ok[1:].sum()) / components) if components else None,
        "components_on_marks": true_components,
        "precision": (true_components / components) if components else None,
        "components_on_sure_marks": int(sure_ok[1:].sum()),
        "precision_strict": (int(sure_ok[1:].sum()) / components) if components else None,
        "missed": [m for m, h in zip(blind, hits) if not h],
        "false_components": _component_boxes(labels, ~comp_ok, spike_matte),
        "pixels_detected": int(detected.sum()),
        "pixels_detected_in_zone": int((detected & zone).sum()),
        "pixels_marked": int(marked_px.sum()),
        "pixels_marked_detected": int((marked_px & detected).sum()),
    }


def _component_boxes(labels: np.ndarray, bad: np.ndarray, spike_matte: np.ndarray | None) -> list[dict[str, Any]]:
    """Centre, size, area, detector and border contact of every component flagged in ``bad`` (not index 0)."""
    h, w = labels.shape
    out = []
    for i in np.nonzero(bad)[0]:
        if i == 0:
            continue
        ys, xs = np.nonzero(labels == i)
        box: dict[str, Any] = {
            "x": int(xs.mean().round()),
            "y": int(ys.mean().round()),
            "w": int(xs.max() - xs.min() + 1),
            "h": int(ys.max() - ys.min() + 1),
            "area": int(xs.size),
            # Touching the 5 px band along the picture's edge, where scans carry a moving black gate border
            # (a tall line reaching top and bottom counts only by its sides: scratches run the full height).
            "at_border": bool(
                xs.min() < 5
                or xs.max() > w - 6
                or ((ys.min() < 5 or ys.max() > h - 6) and ys.max() - ys.min() + 1 < h // 2)
            ),
        }
        if spike_matte is not None:
            box["detector"] = "spike" if bool((spike_matte[ys, xs] > 0.5).any()) else "scratch"
        out.append(box)
    return out


def false_breakdown(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Counts of false components by detector and whether they touch the picture border."""
    out: dict[str, int] = {}
    for r in rows:
        for c in r["false_components"]:
            key = f"{c.get('detector', 'any')}_{'border' if c['at_border'] else 'inside'}"
            out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def overlay(image: np.ndarray, matte: np.ndarray, marks: list[dict], unsure: list[dict], tol: float) -> np.ndarray:
    """2x view: detections in red (tint + outline); circles of radius r + tol: blind marks green, marks added on
    review of the detections cyan, unsure marks yellow."""
    scale = 2
    bgr = (np.clip(image[..., ::-1], 0, 1) * 255).astype(np.uint8)
    big = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    det = cv2.resize((matte > 0.5).astype(np.uint8), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    tint = big.copy()
    tint[det > 0] = (0, 0, 255)
    big = cv2.addWeighted(big, 0.5, tint, 0.5, 0)
    contours, _ = cv2.findContours(det, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(big, contours, -1, (0, 0, 255), 1)
    blind = [m for m in marks if m.get("source") != "review"]
    review = [m for m in marks if m.get("source") == "review"]
    for group, colour in ((blind, (0, 255, 0)), (review, (255, 255, 0)), (unsure, (0, 220, 255))):
        for m in group:
            if "x0" in m:
                p0 = (int(m["x0"] * scale), int(m["y0"] * scale))
                p1 = (int(m["x1"] * scale), int(m["y1"] * scale))
                cv2.line(big, p0, p1, colour, 1)
            else:
                centre = (int(round(m["x"] * scale)), int(round(m["y"] * scale)))
                cv2.circle(big, centre, int(round((m["r"] + tol) * scale)), colour, 1)
    return big


def run(marks_dir: str, data_dir: str, out_dir: str | None, tol: float) -> dict[str, Any]:
    params = P.validate({})
    restorer = ClassicalRestorer()
    before, after = restorer.context(params)
    rows = []
    for path in sorted(glob.glob(os.path.join(marks_dir, "*.json"))):
        with open(path) as fh:
            spec = json.load(fh)
        film, number = spec["film"], int(spec["frame"])
        folder = os.path.join(data_dir, film)
        numbers = list(range(number - before, number + after + 1))
        frames = np.stack([load_rgb(os.path.join(folder, f"{n:05d}.png")) for n in numbers])
        clip = Clip(frames, numbers, [number])
        (result,) = list(restorer.restore(clip, params))
        # Same run with line-scratch detection off: its matte is exactly the spike detector's part.
        (spikes_only,) = list(restorer.restore(clip, dict(params, scratches=False)))
        row = {"film": film, "frame": number}
        row.update(score_frame(result.matte, spec["marks"], spec.get("unsure", []), tol, spikes_only.matte))
        rows.append(row)
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            picture = overlay(frames[numbers.index(number)], result.matte, spec["marks"], spec.get("unsure", []), tol)
            cv2.imwrite(os.path.join(out_dir, f"{film}_{number:05d}.png"), picture)
    marks = sum(r["marks"] for r in rows)
    found = sum(r["marks_found"] for r in rows)
    comps = sum(r["components"] for r in rows)
    good = sum(r["components_on_marks"] for r in rows)
    good_blind = sum(r["components_on_blind_marks"] for r in rows)
    totals = {
        "marks": marks,
        "marks_review": sum(r["marks_review"] for r in rows),
        "unsure": sum(r["unsure"] for r in rows),
        "marks_found": found,
        "recall": found / marks if marks else None,
        "components": comps,
        "components_on_blind_marks": good_blind,
        "precision_blind": good_blind / comps if comps else None,
        "components_on_marks": good,
        "precision": good / comps if comps else None,
        "components_on_sure_marks": sum(r["components_on_sure_marks"] for r in rows),
        "precision_strict": sum(r["components_on_sure_marks"] for r in rows) / comps if comps else None,
        "pixels_detected": sum(r["pixels_detected"] for r in rows),
        "pixels_detected_in_zone": sum(r["pixels_detected_in_zone"] for r in rows),
        "pixels_marked": sum(r["pixels_marked"] for r in rows),
        "pixels_marked_detected": sum(r["pixels_marked_detected"] for r in rows),
        "false_components_by_kind": false_breakdown(rows),
    }
    return {"tolerance_px": tol, "params": "defaults (params.validate({}))", "frames": rows, "totals": totals}


def _fmt(value: float | None) -> str:
    return "  -  " if value is None else f"{value:5.2f}"


def print_table(result: dict[str, Any]) -> None:
    head = f"{'film':<44}{'frame':>6}{'marks':>6}{'found':>6}{'recall':>7}{'+rev':>5}{'comps':>6}"
    head += f"{'p_blind':>8}{'onmark':>7}{'prec':>6}{'strict':>7}"
    head += f"{'det px':>8}{'in zone':>8}{'mark px':>8}{'covered':>8}"
    print(head)
    for r in result["frames"] + [dict(result["totals"], film="TOTAL", frame="")]:
        print(
            f"{r['film']:<44}{r['frame']!s:>6}{r['marks']:>6}{r['marks_found']:>6} {_fmt(r['recall'])}"
            f"{r['marks_review']:>5}{r['components']:>6}   {_fmt(r['precision_blind'])}"
            f"{r['components_on_marks']:>7} {_fmt(r['precision'])}  {_fmt(r['precision_strict'])}"
            f"{r['pixels_detected']:>8}{r['pixels_detected_in_zone']:>8}{r['pixels_marked']:>8}"
            f"{r['pixels_marked_detected']:>8}"
        )
    print("false components by detector and place:", result["totals"]["false_components_by_kind"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--marks", default=DEFAULT_MARKS, help="folder of <film>_<frame>.json hand marks")
    ap.add_argument("--data", default=DEFAULT_DATA, help="the real_film folder of the shared data")
    ap.add_argument("--out", help="folder for one overlay PNG per frame (marks green/cyan/yellow, detections red)")
    ap.add_argument("--json", help="write the figures here too")
    ap.add_argument("--tol", type=float, default=3.0, help="px added to each mark's radius when matching")
    args = ap.parse_args()
    result = run(args.marks, args.data, args.out, args.tol)
    print_table(result)
    text = json.dumps(result, indent=1)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text)
    else:
        print(json.dumps({"totals": result["totals"]}, indent=1))


if __name__ == "__main__":
    main()
