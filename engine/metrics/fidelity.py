"""Full-reference fidelity: PSNR, the paper's MaskedPSNR (Eq. 7) and SSIM.

SSIM is pinned to one definition: Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5, truncated at
3.5 sigma), K1 = 0.01, K2 = 0.03, population (not sample) covariances, computed per RGB channel with
reflected borders, averaged over the image less a 5-pixel border and then over channels. This is exactly
what ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1.0, channel_axis=-1)`` computes (scikit-image 0.26, checked to
1e-6 in tests/test_metrics.py when scikit-image is installed); it is reimplemented here so the metric does
not move with that package's defaults.
"""

from __future__ import annotations

import math

import numpy as np

from frdm.engine.errors import InputError

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _pair(pred: np.ndarray, gt: np.ndarray, what: str = "images") -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(pred, dtype=np.float64)
    b = np.asarray(gt, dtype=np.float64)
    if a.shape != b.shape:
        raise InputError(f"{what}: the prediction is {a.shape} but the ground truth is {b.shape}; they must match")
    return a, b


def mse(pred: np.ndarray, gt: np.ndarray) -> float:
    a, b = _pair(pred, gt)
    return float(np.mean((a - b) ** 2))


def psnr(pred: np.ndarray, gt: np.ndarray, max_value: float = 1.0) -> float:
    """10 log10(MAX^2 / MSE) over all pixels and channels; +inf for identical images."""
    err = mse(pred, gt)
    if err == 0.0:
        return math.inf
    return 10.0 * math.log10(max_value**2 / err)


def masked_psnr(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, max_value: float = 1.0) -> float:
    """The paper's Eq. 7, as written:

        MSE_mask   = 1 / sum(m) * sum( ((I_pred - I_GT) * m)^2 )
        MaskedPSNR = -10 log10( MSE_mask / MAX^2 + 0.1^8 )

    ``mask`` (H, W) (or (H, W, C)) is 1 on defect pixels; a binary mask of shape (H, W) is broadcast over the
    channels, so ``sum(m)`` counts defect pixel *values* and MSE_mask is the mean squared error over them
    (the same per-value mean as PSNR). The 0.1^8 term bounds the score at 80 dB for a perfect restoration.
    Non-binary masks are used as weights, as the formula does."""
    a, b = _pair(pred, gt)
    m = np.asarray(mask, dtype=np.float64)
    if m.ndim == a.ndim - 1:
        m = m[..., None]
    try:
        m = np.broadcast_to(m, a.shape)
    except ValueError:
        raise InputError(f"mask is {np.shape(mask)} but the images are {a.shape}; they must match") from None
    total = float(m.sum())
    if total <= 0.0:
        raise InputError("the defect mask is empty (no pixel is 1): MaskedPSNR is undefined for this frame")
    mse_mask = float((((a - b) * m) ** 2).sum()) / total
    return -10.0 * math.log10(mse_mask / max_value**2 + 0.1**8)


def _gaussian_filter(x: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, sigma=SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect")


def ssim(pred: np.ndarray, gt: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM (see the module docstring for the exact, pinned definition)."""
    a, b = _pair(pred, gt)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    win = 2 * int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5) + 1
    pad = (win - 1) // 2
    if min(a.shape[0], a.shape[1]) < win:
        raise InputError(f"SSIM needs images of at least {win}x{win} pixels, got {a.shape[1]}x{a.shape[0]}")
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    values = []
    for c in range(a.shape[2]):
        x, y = a[..., c], b[..., c]
        mx, my = _gaussian_filter(x), _gaussian_filter(y)
        vx = _gaussian_filter(x * x) - mx * mx
        vy = _gaussian_filter(y * y) - my * my
        cxy = _gaussian_filter(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        values.append(float(s[pad:-pad, pad:-pad].mean()))
    return float(np.mean(values))
