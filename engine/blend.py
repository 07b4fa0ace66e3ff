"""Mask-constrained blending: out = original + m * (restored - original).

Professionals want clean regions untouched. Where m == 0 the output is the original *value*, not a value
recomputed from it, so after writing with the input's pixel types the file's pixels are bit-identical there.
"""

from __future__ import annotations

import numpy as np

# Feathered masks have long Gaussian tails; below this a pixel counts as untouched (exactly the original).
MASK_FLOOR = 1.0 / 4096.0


def grow_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Dilate a (H, W) mask by ``pixels`` (a disc), keeping soft values (grey-level dilation)."""
    if pixels <= 0:
        return mask.astype(np.float32, copy=False)
    import cv2

    k = 2 * pixels + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    return cv2.dilate(mask.astype(np.float32), kernel)


def feather_mask(mask: np.ndarray, radius: float, grow: int = 0) -> np.ndarray:
    """(H, W) mask in [0, 1] -> grown by ``grow`` px, then feathered *outwards* by a Gaussian of sigma
    ``radius`` px: the grown mask stays fully on (a feather softens the edge, it must not fade a one-pixel
    dust spot) and the soft edge lies outside it. Values under MASK_FLOOR become exactly 0 so the far tails
    of the blur leave pixels bit-identical."""
    core = np.clip(grow_mask(mask, grow), 0.0, 1.0).astype(np.float32)
    m = core
    if radius > 0:
        import cv2

        wide = grow_mask(core, int(np.ceil(2.0 * radius)))
        soft = cv2.GaussianBlur(
            wide, (0, 0), sigmaX=float(radius), sigmaY=float(radius), borderType=cv2.BORDER_REPLICATE
        )
        m = np.maximum(soft, core)
    m = np.where(m < MASK_FLOOR, 0.0, m).astype(np.float32)
    return np.clip(m, 0.0, 1.0)


def blend(original: np.ndarray, restored: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W, C) arrays and an (H, W) or (H, W, C) mask. Exactly ``original`` wherever mask == 0."""
    if original.shape != restored.shape:
        raise ValueError(f"blend: original {original.shape} and restored {restored.shape} differ")
    m = mask if mask.ndim == original.ndim else mask[..., None]
    mixed = original + m * (restored - original)
    return np.where(m > 0, mixed, original).astype(original.dtype, copy=False)
