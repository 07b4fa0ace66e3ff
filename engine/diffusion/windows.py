"""Temporal windows and per-frame noise, anchored on absolute frame numbers.

Windows of ``size`` frames start at multiples of ``size - overlap`` *frame numbers* (not positions in the
request), so the windows that contain a frame are the same whichever range a render asks for. Each frame's
noise comes from its own generator seeded by (seed, frame number, stream). Together these make a chunked
render (frames 0-15, then 16-31, each with context) equal to a whole-range render: every window sees the same
frames and the same noise in both.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

# Noise streams: stage 1 and stage 2 of the same frame need independent noise.
STREAM_STAGE1 = 1
STREAM_STAGE2 = 2


@dataclass(frozen=True)
class TemporalWindow:
    index: int  # k: the window covers frame numbers [k * stride, k * stride + size)
    start: int
    stop: int  # exclusive
    frames: tuple[int, ...]  # the frame numbers of the clip that fall inside (fewer at a sequence's ends)


def window_stride(size: int, overlap: int) -> int:
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"need size >= 1 and 0 <= overlap < size, got {size}, {overlap}")
    return size - overlap


def context_frames(size: int, overlap: int) -> tuple[int, int]:
    """Frames needed before and after a target: every window containing it must be complete, and a window
    reaches at most ``size - 1`` frames either side of any of its frames."""
    window_stride(size, overlap)
    return size - 1, size - 1


def windows_containing(frame: int, size: int, overlap: int) -> list[int]:
    """Indices k of the windows that contain ``frame``."""
    stride = window_stride(size, overlap)
    # the smallest k with k*stride + size > frame, the largest with k*stride <= frame (floor division
    # rounds towards -inf, so negative frame numbers work too)
    lo = (frame - size) // stride + 1
    hi = frame // stride
    return list(range(lo, hi + 1))


def plan_windows(targets: Iterable[int], available: Sequence[int], size: int, overlap: int) -> list[TemporalWindow]:
    """The windows that contain at least one target, in order, each with the available frames inside it."""
    stride = window_stride(size, overlap)
    avail = sorted(set(available))
    ks = sorted({k for f in targets for k in windows_containing(f, size, overlap)})
    out = []
    for k in ks:
        start, stop = k * stride, k * stride + size
        frames = tuple(f for f in avail if start <= f < stop)
        if frames:
            out.append(TemporalWindow(k, start, stop, frames))
    return out


def window_weight(frame: int, window: TemporalWindow, overlap: int) -> float:
    """Blend weight of ``frame``'s result from ``window``: sin^2 rising over the window's first ``overlap``
    frames and falling over its last, so two consecutive windows' weights sum to one on shared frames."""
    p = frame - window.start
    size = window.stop - window.start
    if not 0 <= p < size:
        raise ValueError(f"frame {frame} is not in window [{window.start}, {window.stop})")
    w = 1.0
    if overlap > 0:
        if p < overlap:
            w *= math.sin(0.5 * math.pi * (p + 0.5) / overlap) ** 2
        q = size - 1 - p
        if q < overlap:
            w *= math.sin(0.5 * math.pi * (q + 0.5) / overlap) ** 2
    return w


def frame_seed(seed: int, frame_number: int, stream: int) -> int:
    """A 63-bit seed from (seed, frame number, stream), well mixed (SeedSequence) so that neighbouring frames'
    generators are unrelated. Negative frame numbers are allowed."""
    ss = np.random.SeedSequence([int(seed), int(frame_number) + 2**40, int(stream)])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def frame_noise(seed: int, frame_number: int, stream: int, shape: Sequence[int]) -> torch.Tensor:
    """Standard normal noise of ``shape`` for one frame, drawn on the CPU: the same on every device."""
    g = torch.Generator(device="cpu").manual_seed(frame_seed(seed, frame_number, stream))
    return torch.randn(*shape, generator=g, dtype=torch.float32)
