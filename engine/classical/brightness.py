"""Local brightness matching between a frame and a motion-compensated neighbour, and deflicker.

Old film flickers: exposure and development vary from frame to frame and across the frame (a gain of +-30% is
common, and it is not uniform). A neighbour compared pixel by pixel with the current frame then differs
everywhere, and a spike test sees whole regions as dirt. Before any comparison the neighbour is mapped onto the
frame's brightness by a smooth gain/offset field, ``frame ~ gain * neighbour + offset``, fitted from local
means and standard deviations over a window far larger than any defect (a Gaussian of ~1/24 of the frame).

The fit must not follow the defects themselves: a big blotch would pull the local mean towards it and hide
itself. So it is fitted twice: the second time without the pixels the first fit could not explain.
"""

from __future__ import annotations

import cv2
import numpy as np

STATS_SIDE = 128  # px: the statistics are smooth (sigma ~5 px here), so they are computed on a copy about this size
WINDOW = 1.0 / 24.0  # Gaussian sigma of the local statistics, as a fraction of the frame's larger side
MIN_STD = 0.01  # std floor (0-1 units): in flat areas the gain is undetermined and must stay near 1
GAIN_RANGE = (0.5, 2.0)


def _reduce(image: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return image.astype(np.float32, copy=False)
    h, w = image.shape[:2]
    return cv2.resize(image, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)


def _stats_factor(shape: tuple[int, ...]) -> int:
    return max(1, max(shape[:2]) // STATS_SIDE)


def _fit(frame: np.ndarray, other: np.ndarray, weight: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Weighted local mean/std matching (normalised convolution): gain, offset on the given grid."""
    den = cv2.GaussianBlur(weight, (0, 0), sigma) + 1e-6

    def mean(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x * weight, (0, 0), sigma) / den

    m_f, m_o = mean(frame), mean(other)
    v_f = np.maximum(mean(frame * frame) - m_f * m_f, 0.0)
    v_o = np.maximum(mean(other * other) - m_o * m_o, 0.0)
    gain = np.sqrt((v_f + MIN_STD**2) / (v_o + MIN_STD**2))
    gain = np.clip(gain, *GAIN_RANGE)
    return gain, m_f - gain * m_o


class Reference:
    """A frame as neighbours are matched to it: its luminance and the pixels that may take part, on the
    statistics grid. Made once per frame: every neighbour matched to it (two per look of the spike test) would
    otherwise reduce the same two full-size images again."""

    def __init__(self, frame: np.ndarray, valid: np.ndarray | None = None):
        self.shape = frame.shape[:2]
        self.factor = _stats_factor(frame.shape)
        self.small = _reduce(frame, self.factor)
        self.sigma = max(1.0, WINDOW * max(self.shape) / self.factor)
        self.weight = np.ones_like(self.small) if valid is None else _reduce(valid.astype(np.float32), self.factor)
        # match()'s full-size offset field, one for all its calls (a fresh 12 MB array at 2K costs its page
        # faults each time). The neighbours of one frame are matched one after another, never at once.
        self._offset: np.ndarray | None = None

    def fields(self, other: np.ndarray, outlier: float) -> tuple[np.ndarray, np.ndarray]:
        """(gain, offset) on the statistics grid with ``frame ~ gain * other + offset`` (``gain_offset``)."""
        f, o, weight = self.small, _reduce(other, self.factor), self.weight
        gain, offset = _fit(f, o, weight, self.sigma)
        explained = (np.abs(f - (gain * o + offset)) < outlier).astype(np.float32)
        return _fit(f, o, weight * explained, self.sigma)


def gain_offset(
    frame: np.ndarray | Reference, other: np.ndarray, outlier: float, valid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth (gain, offset) fields, at ``frame``'s size, with ``frame ~ gain * other + offset``.

    frame, other: (H, W) luminance on the same grid (other already motion-compensated); ``frame`` may be its
    ``Reference`` (then ``valid`` is the one given to it). ``outlier``: a residual beyond this (0-1 units)
    after the first fit marks a pixel as not explained (dirt, occlusion) and leaves it out of the second.
    ``valid``: (H, W) bool, pixels that may take part at all."""
    ref = frame if isinstance(frame, Reference) else Reference(frame, valid)
    gain, offset = ref.fields(other, outlier)
    if ref.factor == 1:
        return gain, offset
    h, w = ref.shape
    return (
        cv2.resize(gain, (w, h), interpolation=cv2.INTER_LINEAR),
        cv2.resize(offset, (w, h), interpolation=cv2.INTER_LINEAR),
    )


def match(
    frame: np.ndarray | Reference, other: np.ndarray, outlier: float, valid: np.ndarray | None = None
) -> np.ndarray:
    """``other`` (H, W) brought to ``frame``'s local brightness and contrast (``frame``: the luminance or its
    ``Reference``)."""
    ref = frame if isinstance(frame, Reference) else Reference(frame, valid)
    gain, offset = ref.fields(other, outlier)
    if ref.factor > 1:
        h, w = ref.shape
        gain = cv2.resize(gain, (w, h), interpolation=cv2.INTER_LINEAR)
        if ref._offset is None:
            ref._offset = np.empty((h, w), np.float32)
        done = cv2.resize(offset, (w, h), dst=ref._offset, interpolation=cv2.INTER_LINEAR)
        if done is not ref._offset:  # cv2 made an array of its own after all
            ref._offset = done
        offset = ref._offset
    out = np.multiply(gain, other, out=gain)  # in place: a fresh full-frame temporary costs its page faults
    out += offset
    return out


def deflicker_fields(
    grey: np.ndarray, neighbours: list[np.ndarray], strength: float, outlier: float, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Temporal brightness stabilisation of one frame: (gain, offset) fields at ``shape`` that move its local
    brightness ``strength`` of the way to the average of its motion-compensated neighbours' (and its own).

    grey: the frame's luminance, neighbours: warped neighbour luminances on grey's grid (which may be a reduced
    copy: the fields are smooth). Each neighbour k gives ``grey ~ g_k * k + o_k``, so ``(grey - o_k) / g_k`` is
    this frame seen at k's brightness; their mean over the window is the stabilised brightness."""
    factor = _stats_factor(grey.shape)
    small = _reduce(grey, factor)
    # Stabilised = a * grey + b with a = mean(1/g_k), b = mean(-o_k/g_k), the frame itself counting g=1, o=0.
    a = np.ones_like(small)
    b = np.zeros_like(small)
    for other in neighbours:
        g, o = gain_offset(small, _reduce(other, factor), outlier)
        a += 1.0 / g
        b -= o / g
    a /= len(neighbours) + 1
    b /= len(neighbours) + 1
    # strength s: s * (a x + b) + (1 - s) x
    a = 1.0 + strength * (a - 1.0)
    b = strength * b
    return _enlarge(a, shape), _enlarge(b, shape)


def apply_fields(image: np.ndarray, gain: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """gain * image + offset on every channel (film flicker is exposure and development, colour-neutral to
    first order), kept in [0, 1]."""
    return np.clip(image * gain[..., None] + offset[..., None], 0.0, 1.0).astype(np.float32)


def _enlarge(field: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    h, w = shape[:2]
    if field.shape == (h, w):
        return field
    return cv2.resize(field, (w, h), interpolation=cv2.INTER_LINEAR)
