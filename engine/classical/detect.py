"""Defect detection: dust/dirt by temporal spikes, line scratches by persistent thin vertical ridges.

Dust and dirt sit on one frame only, so a dusty pixel differs from *both* motion-compensated neighbours, with
the same sign (Kokaram's SDIp spike detector). Real content that moves is explained by the flow; content that
appears or disappears (occlusion) differs from one neighbour only.

Line scratches are the opposite: they stay at (nearly) the same place on the film for many frames whatever the
picture does, so the temporal test cannot see them. They are thin, near-vertical ridges that persist at the
same x over the temporal window.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def _components_touching(weak: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Connected components of ``weak`` that contain a seed pixel (hysteresis): labels, keep-flags, areas."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(weak.astype(np.uint8), connectivity=8)
    keep = np.zeros(n, dtype=bool)
    keep[np.unique(labels[seeds & weak])] = True
    keep[0] = False
    return labels, keep, stats[:, cv2.CC_STAT_AREA]


@dataclass
class SpikeDetector:
    """Dust and dirt: pixels that differ from both motion-compensated neighbours with the same sign."""

    threshold: float = 0.06  # model-space units
    max_area: int = 6000  # larger blobs are taken as real change (motion the flow missed)
    max_flow_gradient: float = 0.5  # px/px: motion boundaries, where compensation cannot be trusted

    def __call__(
        self,
        frame: np.ndarray,
        prev: np.ndarray,
        nxt: np.ndarray,
        trusted: np.ndarray,
    ) -> np.ndarray:
        """frame, prev, nxt: (H, W) luminance, neighbours already warped onto ``frame``'s grid.
        trusted: (H, W) bool, where motion compensation can be trusted. Returns a bool (H, W) matte.

        Rank-ordered, like Kokaram's ROD detector: a pixel is a bright spike only if it is brighter than the
        *brightest* pixel of the 3x3 neighbourhood in both warped neighbours (dark: darker than the darkest).
        Sub-pixel misregistration and small changes of sharpness (motion blur, focus, resampling) move a
        textured pixel within its neighbourhood's range; dust lies outside it."""
        box = np.ones((3, 3), np.uint8)
        hi_p, hi_n = cv2.dilate(prev, box), cv2.dilate(nxt, box)
        lo_p, lo_n = cv2.erode(prev, box), cv2.erode(nxt, box)
        bright = np.minimum(frame - hi_p, frame - hi_n)
        dark = np.minimum(lo_p - frame, lo_n - frame)
        spike = np.maximum(bright, dark)
        seeds = (spike > self.threshold) & trusted
        # Grow seeds into the soft rim of each speck (hysteresis at half the threshold), but only a few
        # pixels: a rim is thin, and a long weak trail is mis-compensated texture, not dust.
        near = cv2.dilate(seeds.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        weak = (spike > 0.5 * self.threshold) & trusted & near
        labels, keep, area = _components_touching(weak, seeds)
        keep &= area <= self.max_area
        return keep[labels]


@dataclass
class ScratchDetector:
    """Line scratches: thin (<= max_width px) near-vertical ridges, long and persistent over frames."""

    threshold: float = 0.03
    min_length: float = 0.5  # fraction of the frame height
    max_width: int = 5
    persistence: float = 0.5  # fraction of the window's frames in which the line must be found

    def ridges(self, grey: np.ndarray) -> np.ndarray:
        """Signed ridge strength: > 0 for bright lines, < 0 for dark lines, ~0 on edges and flat areas.

        A horizontal opening/closing wider than a scratch removes it and keeps step edges: the difference
        (a horizontal top-hat) is a thin-line detector that ignores the edges of objects."""
        k = 2 * self.max_width + 1
        kernel = np.ones((1, k), np.uint8)
        bright = grey - cv2.morphologyEx(grey, cv2.MORPH_OPEN, kernel)
        dark = cv2.morphologyEx(grey, cv2.MORPH_CLOSE, kernel) - grey
        return np.where(bright >= dark, bright, -dark)

    def candidates(self, grey: np.ndarray) -> np.ndarray:
        """(H, W) bool: pixels on long thin vertical ridges in one frame.

        A pixel is on a line when, along its column (allowing a 1-px wander), the ridge is present in at least
        85% of a window of the minimum length and strong on average there. Texture has ridges too, but
        short ones: the coverage test is what separates a scratch from grain and detail."""
        h, w = grey.shape
        ridge = self.ridges(grey)
        min_len = max(8, int(self.min_length * h))
        window = min_len
        out = np.zeros((h, w), dtype=bool)
        wander = np.ones((1, 3), np.uint8)
        for sign in (1.0, -1.0):
            strength = np.maximum(sign * ridge, 0.0)
            present = (strength > 0.5 * self.threshold).astype(np.float32)
            coverage = cv2.blur(cv2.dilate(present, wander), (1, window), borderType=cv2.BORDER_REPLICATE)
            mean = cv2.blur(cv2.dilate(strength, wander), (1, window), borderType=cv2.BORDER_REPLICATE)
            centre = (coverage >= 0.85) & (mean >= 0.8 * self.threshold)
            # Back from window centres to the pixels of the run.
            run = cv2.dilate(centre.astype(np.uint8), np.ones((window, 1), np.uint8)) > 0
            line = run & (present > 0)
            line = self._trim_rows(line, strength)
            n, labels, stats, _ = cv2.connectedComponentsWithStats(line.astype(np.uint8), connectivity=8)
            height = stats[:, cv2.CC_STAT_HEIGHT]
            area = stats[:, cv2.CC_STAT_AREA]
            keep = (height >= min_len) & (area / np.maximum(height, 1) <= self.max_width + 1)
            keep[0] = False
            out |= keep[labels]
        # The scan's own frame border (black film edge meeting the picture) is a perfect persistent vertical
        # line; a scratch hugging the outermost columns is rare enough to give up.
        edge = max(6, int(0.012 * w))
        out[:, :edge] = False
        out[:, w - edge :] = False
        return out

    @staticmethod
    def _trim_rows(line: np.ndarray, strength: np.ndarray) -> np.ndarray:
        """Within each connected line, keep per row only the pixels at least half as strong as the row's
        strongest: a scratch running beside a weaker thin highlight of the picture must not swallow it."""
        n, labels = cv2.connectedComponents(line.astype(np.uint8), connectivity=8)
        if n <= 1:
            return line
        ys, xs = np.nonzero(line)
        key = labels[ys, xs].astype(np.int64) * line.shape[0] + ys
        s = strength[ys, xs]
        row_max = np.zeros(n * line.shape[0], dtype=np.float32)
        np.maximum.at(row_max, key, s)
        keep = s >= 0.5 * row_max[key]
        out = np.zeros_like(line)
        out[ys[keep], xs[keep]] = True
        return out

    def __call__(self, candidates: list[np.ndarray], index: int) -> np.ndarray:
        """Keep the candidate lines of frame ``index`` that recur at the same x in enough window frames."""
        current = candidates[index]
        if not current.any():
            return current
        h = current.shape[0]
        need = max(1, int(np.ceil(self.persistence * len(candidates))))
        # Per frame: which columns (+-1 px) hold a long enough stretch of line.
        min_rows = max(1, int(0.5 * self.min_length * h))
        hits = np.zeros(current.shape[1], dtype=np.int32)
        for cand in candidates:
            rows = cand.sum(axis=0)
            present = rows >= min_rows
            present = cv2.dilate(present.astype(np.uint8)[None, :], np.ones((1, 3), np.uint8))[0] > 0
            hits += present
        persistent_columns = hits >= need
        keep = current & persistent_columns[None, :]
        # A scratch is removed with a 1-px margin: its edges are anti-aliased in real scans.
        return cv2.dilate(keep.astype(np.uint8), np.ones((1, 3), np.uint8)) > 0
