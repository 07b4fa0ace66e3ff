"""The overlapped latent patch grid of stage 2 (paper Sec. 3.2) and its blend weights.

A frame's latent is covered by patches of ``patch`` latent pixels that overlap by at least ``overlap``.
Any size is covered, also sizes that are not a multiple of the patch: the patches of a row are spread evenly
between the first and the last position, so the real overlap is ``overlap`` or a little more, never less.

Assembling patches by uniform averaging leaves a step in value wherever a patch starts or ends (the seam the
paper's Fig. 12 shows). Blend weights fall off smoothly towards a patch's sides that have a neighbour, and the
falling weights of two neighbours sum to one across their overlap, so each patch hands over to the next
without a step. Sides on the frame border keep full weight (nothing to hand over to there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

BLEND_KINDS = ("cosine", "uniform")


@dataclass(frozen=True)
class PatchBox:
    """One patch: rows y0:y1, columns x0:x1 (latent pixels), its grid row and column, and how many rows /
    columns it shares with its neighbours on each side (0 where it touches the frame border)."""

    y0: int
    x0: int
    y1: int
    x1: int
    row: int = 0
    col: int = 0
    overlap_top: int = 0
    overlap_bottom: int = 0
    overlap_left: int = 0
    overlap_right: int = 0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def scaled(self, factor: int) -> PatchBox:
        """The same patch in units ``factor`` times finer (latent -> pixels with factor 8)."""
        f = factor
        return PatchBox(
            self.y0 * f, self.x0 * f, self.y1 * f, self.x1 * f, self.row, self.col,
            self.overlap_top * f, self.overlap_bottom * f, self.overlap_left * f, self.overlap_right * f,
        )  # fmt: skip

    def normalised(self, height: int, width: int) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) as fractions of a ``height`` x ``width`` frame, clamped to [0, 1] (a patch may
        reach into the padding below and right of the picture)."""

        def c(v: float) -> float:
            return min(max(v, 0.0), 1.0)

        return (c(self.x0 / width), c(self.y0 / height), c(self.x1 / width), c(self.y1 / height))

    def touches(self, other: PatchBox) -> bool:
        """Overlaps or shares an edge or a corner with ``other`` (the KV-cache neighbourhood)."""
        return self.y0 <= other.y1 and other.y0 <= self.y1 and self.x0 <= other.x1 and other.x0 <= self.x1


def axis_starts(length: int, patch: int, overlap: int) -> list[int]:
    """Start positions along one axis: the fewest patches that cover ``length`` with at least ``overlap``
    shared between neighbours, spread evenly (first at 0, last ending at ``length``)."""
    if length <= 0 or patch <= 0:
        raise ValueError(f"length and patch must be positive, got {length}, {patch}")
    if not 0 <= overlap < patch:
        raise ValueError(f"overlap must be in [0, patch), got {overlap} for patch {patch}")
    if length <= patch:
        return [0]
    stride = patch - overlap
    count = math.ceil((length - overlap) / stride)
    count = max(count, 2)
    span = length - patch
    # Even spreading gives real overlaps >= overlap: count was chosen so that (count - 1) * stride >= span.
    return [round(i * span / (count - 1)) for i in range(count)]


def patch_grid(height: int, width: int, patch: int, overlap: int) -> list[PatchBox]:
    """Patches covering a ``height`` x ``width`` latent, in row-major order. Where the latent is smaller than
    ``patch`` along an axis, the patch is the whole axis."""
    ys = axis_starts(height, patch, overlap)
    xs = axis_starts(width, patch, overlap)
    ph, pw = min(patch, height), min(patch, width)
    boxes = []
    for r, y in enumerate(ys):
        top = ys[r - 1] + ph - y if r > 0 else 0
        bottom = y + ph - ys[r + 1] if r + 1 < len(ys) else 0
        for c, x in enumerate(xs):
            left = xs[c - 1] + pw - x if c > 0 else 0
            right = x + pw - xs[c + 1] if c + 1 < len(xs) else 0
            boxes.append(PatchBox(y, x, y + ph, x + pw, r, c, top, bottom, left, right))
    return boxes


def _ramp(size: int, before: int, after: int) -> torch.Tensor:
    """1-D weights: sin^2 rising over the first ``before`` samples, cos^2 falling over the last ``after``.
    sin^2 + cos^2 = 1 makes two neighbours' weights sum to exactly one where they overlap; sampling at
    half-integer positions keeps every weight above zero."""
    w = torch.ones(size, dtype=torch.float64)
    if before > 0:
        i = torch.arange(min(before, size), dtype=torch.float64)
        w[: len(i)] *= torch.sin(0.5 * math.pi * (i + 0.5) / before) ** 2
    if after > 0:
        i = torch.arange(min(after, size), dtype=torch.float64)
        w[size - len(i) :] *= torch.flip(torch.sin(0.5 * math.pi * (i + 0.5) / after) ** 2, [0])
    return w


def blend_weights(box: PatchBox, kind: str = "cosine") -> torch.Tensor:
    """(height, width) float32 weights of one patch. ``uniform`` is plain averaging (the ablation)."""
    if kind == "uniform":
        return torch.ones(box.height, box.width)
    if kind != "cosine":
        raise ValueError(f"unknown blend kind {kind!r} (use one of {BLEND_KINDS})")
    wy = _ramp(box.height, box.overlap_top, box.overlap_bottom)
    wx = _ramp(box.width, box.overlap_left, box.overlap_right)
    return torch.outer(wy, wx).float()


class PatchAccumulator:
    """Weighted sum of patch results over a (..., H, W) canvas, normalised on ``result()``."""

    def __init__(self, shape: Sequence[int], *, device: torch.device | str | None = None) -> None:
        self.total = torch.zeros(*shape, dtype=torch.float32, device=device)
        self.weight = torch.zeros(*shape[-2:], dtype=torch.float32, device=device)

    def add(self, box: PatchBox, value: torch.Tensor, weights: torch.Tensor) -> None:
        ys, xs = box.slices
        w = weights.to(self.total.device)
        self.total[..., ys, xs] += value.float() * w
        self.weight[ys, xs] += w

    def result(self) -> torch.Tensor:
        if bool((self.weight <= 0).any()):
            raise RuntimeError("the patch grid left part of the canvas uncovered")  # a grid bug, not user input
        return self.total / self.weight


def seam_energy(image: torch.Tensor, boxes: Sequence[PatchBox]) -> tuple[float, float]:
    """Mean squared gradient across patch borders and elsewhere, for an image (..., H, W) and the patch
    boxes in the same units. A blocky assembly has much more gradient energy on the borders than inside.

    A border is the line between pixel ``e - 1`` and ``e`` where some patch starts or ends at ``e`` (not the
    frame's own edges). Returns (border, interior)."""
    img = image.double()
    h, w = img.shape[-2:]
    gx = (img[..., :, 1:] - img[..., :, :-1]) ** 2  # between column j and j + 1
    gy = (img[..., 1:, :] - img[..., :-1, :]) ** 2
    cols = sorted({e - 1 for b in boxes for e in (b.x0, b.x1) if 0 < e < w})
    rows = sorted({e - 1 for b in boxes for e in (b.y0, b.y1) if 0 < e < h})
    col_mask = torch.zeros(w - 1, dtype=torch.bool)
    col_mask[cols] = True
    row_mask = torch.zeros(h - 1, dtype=torch.bool)
    row_mask[rows] = True
    border = torch.cat([gx[..., col_mask].flatten(), gy[..., row_mask, :].flatten()])
    inner = torch.cat([gx[..., ~col_mask].flatten(), gy[..., ~row_mask, :].flatten()])
    return float(border.mean()) if border.numel() else 0.0, float(inner.mean())
