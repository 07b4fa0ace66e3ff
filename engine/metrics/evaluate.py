"""Per-frame evaluation of a restored clip and the paper's Table 1 layout: rows are restorers, columns are
metrics, each cell holds one value per setting (e.g. mixed / scratch / noisy-fast-motion).

Frame metrics are averaged over frames (the paper reports per-frame metrics). MaskedPSNR skips frames whose
mask is empty (listed in the result) and fails if every mask is empty. The warp error is per clip.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from frdm.engine.errors import InputError

# Column order and direction of the paper's Table 1, plus the temporal warp error.
METRICS: dict[str, bool] = {  # name -> higher is better
    "MaskedPSNR": True,
    "PSNR": True,
    "SSIM": True,
    "LPIPS": False,
    "BRISQUE": False,
    "NIQE": False,
    "WarpError": False,
}


def evaluate_clip(
    pred: np.ndarray,
    gt: np.ndarray,
    mask: np.ndarray | None,
    metrics: Sequence[str] = tuple(METRICS),
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Mean metrics of a clip: pred, gt (T, H, W, 3) in [0, 1]; mask (T, H, W) with 1 = defect (or None)."""
    from frdm.engine import metrics as M

    pred = np.asarray(pred, np.float32)
    gt = np.asarray(gt, np.float32)
    if pred.shape[0] != gt.shape[0]:
        raise InputError(f"the prediction has {pred.shape[0]} frames but the ground truth has {gt.shape[0]}")
    if pred.shape != gt.shape:
        raise InputError(f"frame size differs: prediction {pred.shape[1:]} vs ground truth {gt.shape[1:]}")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InputError(f"unknown metric(s) {', '.join(unknown)} (known: {', '.join(METRICS)})")
    if "MaskedPSNR" in metrics:
        if mask is None:
            raise InputError("MaskedPSNR needs --mask (the defect masks); or leave it out with --metrics")
        if mask.shape != pred.shape[:3]:
            raise InputError(f"the masks are {mask.shape} but the frames are {pred.shape[:3]}")
        if not mask.any():
            raise InputError("every defect mask is empty: MaskedPSNR is undefined (wrong mask files, or inverted?)")
    per: dict[str, list[float]] = {m: [] for m in metrics if m != "WarpError"}
    skipped: list[int] = []
    for t in range(pred.shape[0]):
        if progress:
            progress(f"frame {t + 1}/{pred.shape[0]}")
        p, g = pred[t], gt[t]
        if "MaskedPSNR" in per:
            if mask[t].any():
                per["MaskedPSNR"].append(M.masked_psnr(p, g, mask[t]))
            else:
                skipped.append(t)
        if "PSNR" in per:
            per["PSNR"].append(M.psnr(p, g))
        if "SSIM" in per:
            per["SSIM"].append(M.ssim(p, g))
        if "LPIPS" in per:
            per["LPIPS"].append(M.lpips(p, g))
        if "BRISQUE" in per:
            per["BRISQUE"].append(M.brisque(p))
        if "NIQE" in per:
            per["NIQE"].append(M.niqe(p))
    out: dict[str, Any] = {m: float(np.mean(v)) for m, v in per.items()}
    if "WarpError" in metrics:
        out["WarpError"] = M.warp_error(pred, gt) if pred.shape[0] > 1 else math.nan
    out["frames"] = int(pred.shape[0])
    if skipped:
        out["masked_psnr_skipped_frames"] = skipped
    return out


class ResultsTable:
    """rows (restorers) x metrics x settings; saved as JSON (the source of truth), CSV, Markdown and PNG."""

    def __init__(self, results: dict[str, dict[str, dict[str, Any]]] | None = None) -> None:
        self.results: dict[str, dict[str, dict[str, Any]]] = results or {}  # row -> setting -> metrics

    @classmethod
    def load(cls, path: str) -> ResultsTable:
        if not os.path.exists(path):
            return cls()
        with open(path) as fh:
            return cls(json.load(fh).get("results", {}))

    def add(self, row: str, setting: str, values: dict[str, Any]) -> None:
        self.results.setdefault(row, {})[setting] = values

    @property
    def settings(self) -> list[str]:
        seen: list[str] = []
        for per in self.results.values():
            seen += [s for s in per if s not in seen]
        return seen

    @property
    def metrics(self) -> list[str]:
        present = {m for per in self.results.values() for vals in per.values() for m in vals}
        return [m for m in METRICS if m in present]

    def cell(self, row: str, metric: str, digits: int) -> str:
        parts = []
        for s in self.settings:
            v = self.results.get(row, {}).get(s, {}).get(metric)
            parts.append("-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}")
        return " / ".join(parts)

    @staticmethod
    def digits(metric: str) -> int:
        return {"SSIM": 4, "LPIPS": 4, "WarpError": 6}.get(metric, 3)

    def save(self, out_dir: str, meta: dict[str, Any] | None = None) -> list[str]:
        os.makedirs(out_dir, exist_ok=True)
        paths = []
        p = os.path.join(out_dir, "results.json")
        with open(p, "w") as fh:
            json.dump(
                {"settings": self.settings, "metrics": self.metrics, "results": self.results, "meta": meta or {}},
                fh,
                indent=1,
            )
        paths.append(p)
        p = os.path.join(out_dir, "results.csv")
        with open(p, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["restorer", "setting"] + self.metrics)
            for row, per in self.results.items():
                for s in self.settings:
                    if s in per:
                        w.writerow([row, s] + [per[s].get(m, "") for m in self.metrics])
        paths.append(p)
        p = os.path.join(out_dir, "results.md")
        with open(p, "w") as fh:
            fh.write(self.markdown())
        paths.append(p)
        p = os.path.join(out_dir, "results.png")
        self.plot(p)
        paths.append(p)
        return paths

    def markdown(self) -> str:
        arrows = {m: ("↑" if up else "↓") for m, up in METRICS.items()}
        head = (
            "| Methods ("
            + " / ".join(self.settings)
            + ") | "
            + " | ".join(f"{m}{arrows[m]}" for m in self.metrics)
            + " |\n"
        )
        head += "|---" * (len(self.metrics) + 1) + "|\n"
        body = "".join(
            f"| {row} | " + " | ".join(self.cell(row, m, self.digits(m)) for m in self.metrics) + " |\n"
            for row in self.results
        )
        return head + body

    def plot(self, path: str) -> None:
        """Grouped bars, one panel per metric (bars: restorers, groups: settings), drawn with OpenCV so no
        plotting library is needed."""
        import cv2

        metrics, settings, rows = self.metrics, self.settings, list(self.results)
        pw, ph, pad = 300, 220, 30
        cols = min(4, max(1, len(metrics)))
        nrows = max(1, math.ceil(len(metrics) / cols))
        img = np.full((nrows * (ph + pad) + 40, cols * (pw + pad) + pad, 3), 255, np.uint8)
        palette = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140)]
        font = cv2.FONT_HERSHEY_SIMPLEX
        for i, r in enumerate(rows):  # legend
            x = pad + i * 160
            cv2.rectangle(img, (x, 10), (x + 14, 24), palette[i % len(palette)], -1)
            cv2.putText(img, r[:18], (x + 20, 23), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        for k, m in enumerate(metrics):
            ox = pad + (k % cols) * (pw + pad)
            oy = 40 + (k // cols) * (ph + pad)
            vals = [self.results[r].get(s, {}).get(m) for s in settings for r in rows]
            finite = [v for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
            top = max(finite) * 1.1 if finite and max(finite) > 0 else 1.0
            base_y = oy + ph - 30
            cv2.putText(
                img,
                m + (" (higher better)" if METRICS[m] else " (lower better)"),
                (ox, oy + 12),
                font,
                0.45,
                (0, 0, 0),
                1,
                cv2.LINE_AA,
            )
            cv2.line(img, (ox, base_y), (ox + pw, base_y), (0, 0, 0), 1)
            group_w = pw / max(1, len(settings))
            bar_w = max(4, int(group_w * 0.8 / max(1, len(rows))))
            for si, s in enumerate(settings):
                gx = int(ox + si * group_w + group_w * 0.1)
                cv2.putText(img, s[:14], (gx, base_y + 16), font, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
                for ri, r in enumerate(rows):
                    v = self.results[r].get(s, {}).get(m)
                    if not isinstance(v, (int, float)) or not math.isfinite(v):
                        continue
                    hgt = int((ph - 60) * max(0.0, v) / top)
                    x0 = gx + ri * bar_w
                    cv2.rectangle(img, (x0, base_y - hgt), (x0 + bar_w - 2, base_y), palette[ri % len(palette)], -1)
                    cv2.putText(
                        img,
                        f"{v:.{min(self.digits(m), 3)}g}",
                        (x0, base_y - hgt - 3),
                        font,
                        0.3,
                        (0, 0, 0),
                        1,
                        cv2.LINE_AA,
                    )
        if not cv2.imwrite(path, img):
            raise InputError(f"{path}: cannot write the plot")
