"""The QC page: one HTML file with PNG images beside it, and a JSON with every figure (``engine/qc.py``).

    DIR/index.html   summary, per-frame plot and table, crops of the largest and the most suspicious regions
    DIR/qc.json      all figures, for scripts and tests (the crops it names are the page's)
    DIR/plot.png     changed area and mean brightness per frame (drawn with OpenCV)
    DIR/crop_f<frame>_r<region>.png   before | after | change, at 100% (one pixel per pixel)

Each file is written atomically; crops a previous run listed in DIR/qc.json and this one does not are removed,
so DIR never mixes two runs. Nothing else in DIR is touched (it may be the output folder of the restore).
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from frdm.engine.atomic import atomic_path, write_text
from frdm.engine.errors import InputError
from frdm.engine.qc import FrameQC, Region

CROP_MIN, CROP_MAX, CROP_MARGIN = 64, 320, 24  # px, at 100%
FetchFn = Callable[[int], tuple[np.ndarray, np.ndarray]]  # frame -> (before, after), display RGB [0, 1]


@dataclass
class Crop:
    file: str
    frame: int
    region: Region
    why: list[str]
    window: tuple[int, int, int, int]  # x, y, w, h in the frame


def pick_regions(
    frames: Sequence[FrameQC], largest: int = 6, suspicious: int = 12
) -> list[tuple[int, Region, list[str]]]:
    """(frame, region, reasons): the ``largest`` regions by area, then the ``suspicious`` highest scores
    (score > 0) not already picked; a region picked both ways carries both reasons."""
    regions = [(f.frame, r) for f in frames for r in f.regions]
    picked: dict[tuple[int, int], tuple[int, Region, list[str]]] = {}
    for fr, r in sorted(regions, key=lambda item: (-item[1].area, item[0], item[1].id))[:largest]:
        picked[(fr, r.id)] = (fr, r, ["largest"])
    ranked = sorted(regions, key=lambda item: (-item[1].score, item[0], item[1].id))
    for fr, r in [item for item in ranked if item[1].score > 0][:suspicious]:
        if (fr, r.id) in picked:
            picked[(fr, r.id)][2].append("suspicious")
        else:
            picked[(fr, r.id)] = (fr, r, ["suspicious"])
    return list(picked.values())


def crop_window(region: Region, width: int, height: int) -> tuple[int, int, int, int]:
    """A square window around the region at 100%, at least CROP_MIN and at most CROP_MAX px, inside the frame."""
    side = max(region.w, region.h) + 2 * CROP_MARGIN
    side = int(min(max(side, CROP_MIN), CROP_MAX))
    cw, ch = min(side, width), min(side, height)
    cx, cy = region.x + region.w // 2, region.y + region.h // 2
    x0 = int(min(max(cx - cw // 2, 0), width - cw))
    y0 = int(min(max(cy - ch // 2, 0), height - ch))
    return x0, y0, cw, ch


def _u8(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def crop_image(
    before: np.ndarray, after: np.ndarray, region: Region, window: tuple[int, int, int, int], threshold: float
) -> np.ndarray:
    """8-bit RGB strip: before | after | change (changed pixels red over the dimmed source, region boxed)."""
    import cv2

    x, y, w, h = window
    b, a = before[y : y + h, x : x + w], after[y : y + h, x : x + w]
    changed = (np.abs(a - b).max(axis=-1) > threshold / 255.0)[..., None]
    change = np.where(changed, np.array([1.0, 0.15, 0.1], np.float32), b * 0.45)
    change_u8 = _u8(change)
    cv2.rectangle(
        change_u8,
        (region.x - x - 2, region.y - y - 2),
        (region.x - x + region.w + 1, region.y - y + region.h + 1),
        (255, 255, 0),
        1,
    )
    gap = np.full((h, 4, 3), 255, np.uint8)
    return np.concatenate([_u8(b), gap, _u8(a), gap, change_u8], axis=1)


def _write_png(path: str, rgb_u8: np.ndarray) -> None:
    import cv2

    with atomic_path(path) as tmp:  # the temporary keeps the .png name OpenCV picks the format by
        if not cv2.imwrite(tmp, np.ascontiguousarray(rgb_u8[..., ::-1])):
            raise InputError(f"{path}: cannot write this PNG")


def plot_image(frames: Sequence[FrameQC], width: int = 960) -> np.ndarray:
    """8-bit RGB: changed share per frame (bars, top) and mean luma before/after (lines, bottom)."""
    import cv2

    pad_l, pad_r, panel_h, gap = 70, 20, 150, 40
    height = 30 + panel_h + gap + panel_h + 40
    img = np.full((height, width, 3), 255, np.uint8)
    n = max(1, len(frames))
    span = width - pad_l - pad_r
    xs = [pad_l + int((i + 0.5) * span / n) for i in range(len(frames))]
    font = cv2.FONT_HERSHEY_SIMPLEX

    def text(s: str, x: int, y: int, colour: tuple[int, int, int] = (40, 40, 40), scale: float = 0.42) -> None:
        cv2.putText(img, s, (x, y), font, scale, colour, 1, cv2.LINE_AA)

    # top panel: changed share (%)
    top0, top1 = 30, 30 + panel_h
    share = [f.changed_share * 100.0 for f in frames]
    smax = max(share + [0.01])
    cv2.rectangle(img, (pad_l, top0), (width - pad_r, top1), (200, 200, 200), 1)
    bar = max(1, int(span / n * 0.7))
    for x, s in zip(xs, share):
        y = top1 - int(round(s / smax * (panel_h - 4)))
        cv2.rectangle(img, (x - bar // 2, y), (x + bar // 2, top1), (200, 60, 40), -1)
    text("changed pixels (% of frame)", pad_l, top0 - 10)
    text(f"{smax:.2f}%", 4, top0 + 10)
    text("0", 4, top1)
    # bottom panel: mean luma (8-bit) before (grey) and after (orange)
    bot0, bot1 = top1 + gap, top1 + gap + panel_h
    values = [f.mean_before for f in frames] + [f.mean_after for f in frames]
    lo, hi = (min(values), max(values)) if values else (0.0, 255.0)
    if hi - lo < 4.0:
        mid = (hi + lo) / 2.0
        lo, hi = mid - 2.0, mid + 2.0
    cv2.rectangle(img, (pad_l, bot0), (width - pad_r, bot1), (200, 200, 200), 1)

    def ypos(v: float) -> int:
        return bot1 - 2 - int(round((v - lo) / (hi - lo) * (panel_h - 4)))

    for key, colour in (("mean_before", (120, 120, 120)), ("mean_after", (230, 140, 0))):
        pts = np.array([[x, ypos(getattr(f, key))] for x, f in zip(xs, frames)], np.int32)
        if len(pts) > 1:
            cv2.polylines(img, [pts], False, colour, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, (int(p[0]), int(p[1])), 2, colour, -1)
    text("mean luma (8-bit): source grey, restored orange", pad_l, bot0 - 10)
    text(f"{hi:.1f}", 4, bot0 + 10)
    text(f"{lo:.1f}", 4, bot1)
    # frame numbers under the bottom panel, at most ~12 labels
    every = max(1, int(np.ceil(len(frames) / 12)))
    for i in range(0, len(frames), every):
        text(str(frames[i].frame), xs[i] - 8, bot1 + 18)
    return img


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _html(meta: dict[str, Any], summary: dict[str, Any], frames: Sequence[FrameQC], crops: Sequence[Crop]) -> str:
    e = html.escape
    rows = []
    for f in frames:
        steps = [abs(r.step) for r in f.regions if r.step is not None]
        grains = [r.grain for r in f.regions if r.grain is not None]
        rows.append(
            f"<tr><td>{f.frame}</td><td>{f.changed_share * 100:.3f}</td><td>{len(f.regions)}</td>"
            f"<td>{f.mean_before:.1f}</td><td>{f.mean_after:.1f}</td><td>{_fmt(max(steps) if steps else None)}</td>"
            f"<td>{_fmt(min(grains) if grains else None)}</td><td>{sum(r.moving for r in f.regions)}</td></tr>"
        )
    cards = []
    for c in crops:
        r = c.region
        cards.append(
            f'<figure><img src="{e(c.file)}" width="{c.window[2] * 3 + 8}" height="{c.window[3]}" '
            f'alt="frame {c.frame} region {r.id}"><figcaption>frame {c.frame}, region {r.id} '
            f"({e(', '.join(c.why))}): {r.area} px at ({r.x}, {r.y}) {r.w}x{r.h}"
            f"{f', {r.filled} px filled (judged on the matte)' if r.judged == 'matte' else ''}; "
            f"step {_fmt(r.step, 1)}/255 (source {_fmt(r.step_before, 1)}, changed by {r.change:+.1f}), "
            f"grain {_fmt(r.grain)}, "
            f"motion {_fmt(r.motion, 1)} px{' MOVING' if r.moving else ''}; score {r.score:.2f}"
            f"</figcaption></figure>"
        )

    def shown(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, list):  # the worst steps: one line each
            return "<br>".join(e(", ".join(f"{k} {x}" for k, x in item.items())) for item in v)
        return e(str(v))

    summ = "".join(f"<tr><th>{e(str(k))}</th><td>{shown(v)}</td></tr>" for k, v in summary.items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>FRDM QC: {e(meta.get("restored", ""))}</title>
<style>
body {{ font: 14px sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }}
th {{ text-align: left; background: #f4f4f4; }}
img {{ image-rendering: pixelated; max-width: none; }}
figure {{ display: inline-block; margin: 0 1.5em 1.5em 0; vertical-align: top; }}
figcaption {{ max-width: 60em; font-size: 12px; }}
</style></head><body>
<h1>FRDM QC</h1>
<p>source <code>{e(meta.get("source", ""))}</code><br>restored <code>{e(meta.get("restored", ""))}</code><br>
compared display-referred ({e(meta.get("colorspace", ""))}); a pixel counts as changed when a channel moved by more
than {meta.get("threshold", "")}/255.</p>
<p>Crops are at 100%: source | restored | change (changed pixels red, the region boxed). <b>step</b>: mean luma
inside minus a ring around it, 8-bit (a fill that disappears is near 0; a region on a bright object keeps the
object's contrast, so the score counts the step only as far as the region changed). <b>grain</b>: high-pass
spread inside over the ring's (1 = same grain, 0 = smooth). "Inside" is the restorer's matte in the region (the
filled defect) where the matte is known, against the source 2-5 px outside it (the step against its level carried
in, the score only as far as the fill lies outside the range of the ring's sides: a speck on an edge has both
sides in its ring), else the changed pixels against a ring outside every change. <b>motion</b>: px/frame relative
to the whole frame in the source.</p>
<h2>Summary</h2><table>{summ}</table>
<h2>Per frame</h2><img src="plot.png" alt="changed area and mean brightness per frame">
<table><tr><th>frame</th><th>changed %</th><th>regions</th><th>mean before</th><th>mean after</th>
<th>max |step|</th><th>min grain</th><th>moving</th></tr>{"".join(rows)}</table>
<h2>Largest and most suspicious regions</h2>
{"".join(cards) or "<p>No pixel changed.</p>"}
</body></html>
"""


def write_report(
    directory: str,
    frames: Sequence[FrameQC],
    summary: dict[str, Any],
    fetch: FetchFn,
    meta: dict[str, Any],
    *,
    largest: int = 6,
    suspicious: int = 12,
) -> dict[str, Any]:
    """Write the page, its images and qc.json into ``directory``; returns what went into qc.json."""
    os.makedirs(directory, exist_ok=True)
    if not os.access(directory, os.W_OK):
        raise InputError(f"{directory}: cannot write the QC report here")
    threshold = float(meta.get("threshold", 0.5))
    picks = pick_regions(frames, largest, suspicious)
    by_frame: dict[int, list[tuple[Region, list[str]]]] = {}
    for fr, r, why in picks:
        by_frame.setdefault(fr, []).append((r, why))
    sizes = {f.frame: (f.width, f.height) for f in frames}
    crops: list[Crop] = []
    for fr in sorted(by_frame):
        before, after = fetch(fr)
        for r, why in by_frame[fr]:
            window = crop_window(r, *sizes[fr])
            name = f"crop_f{fr:05d}_r{r.id:04d}.png"
            _write_png(os.path.join(directory, name), crop_image(before, after, r, window, threshold))
            crops.append(Crop(name, fr, r, why, window))
    order = {(fr, r.id): i for i, (fr, r, _) in enumerate(picks)}
    crops.sort(key=lambda c: order[(c.frame, c.region.id)])
    _write_png(os.path.join(directory, "plot.png"), plot_image(frames))
    record = {
        **meta,
        "summary": summary,
        "frames": [f.to_json() for f in frames],
        "crops": [
            {"file": c.file, "frame": c.frame, "region": c.region.id, "why": c.why, "window": list(c.window)}
            for c in crops
        ],
        "page": "index.html",
        "plot": "plot.png",
    }
    json_path = os.path.join(directory, "qc.json")
    stale = _previous_crops(json_path) - {c.file for c in crops}
    write_text(json_path, json.dumps(record, indent=1))
    write_text(os.path.join(directory, "index.html"), _html(meta, summary, frames, crops))
    for name in stale:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            os.unlink(path)
    return record


def _previous_crops(json_path: str) -> set[str]:
    try:
        with open(json_path, encoding="utf-8") as fh:
            old = json.load(fh)
        return {
            c["file"]
            for c in old.get("crops", [])
            if isinstance(c, dict) and str(c.get("file", "")).startswith("crop_") and "/" not in str(c["file"])
        }
    except (OSError, ValueError, AttributeError):
        return set()
