"""NIQE (Mittal et al. 2013), a no-reference naturalness score (lower is better), with the official MATLAB
pristine model (``params/niqe_pris_params.npz``, as shipped by basicsr 1.4.2).

Follows the MATLAB release's procedure, as basicsr re-implements it: the image's Y channel (ITU-R BT.601,
MATLAB ``rgb2ycbcr``, 16-235, rounded), cropped to whole 96x96 blocks; at two scales (the second a MATLAB
``imresize`` by 0.5, bicubic with antialiasing) MSCN coefficients with the model's 7x7 Gaussian window
(replicated borders, C = 1); per block 18 features (generalised Gaussian of the MSCN values, asymmetric ones
of the four neighbour products, with circular shifts, each fitted by a grid search over alpha in
0.2:0.001:10); a Gaussian fitted to the blocks' 36-vectors; the score is the Mahalanobis-like distance
sqrt((mu_p - mu)^T ((S_p + S) / 2)^+ (mu_p - mu)). Validation: see docs/quality.md.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from frdm.engine.errors import InputError
from frdm.engine.metrics.params_files import param_path

BLOCK = 96


@functools.lru_cache(maxsize=1)
def _pristine() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    path = param_path("niqe_pris_params.npz")
    with np.load(path, allow_pickle=False) as data:
        try:
            return (
                data["mu_pris_param"].astype(np.float64),
                data["cov_pris_param"].astype(np.float64),
                data["gaussian_window"].astype(np.float64),
            )
        except KeyError as exc:
            raise InputError(f"{path}: missing array {exc} (not a NIQE parameter file)") from None


@functools.lru_cache(maxsize=1)
def _alpha_table() -> tuple[np.ndarray, np.ndarray]:
    from scipy.special import gamma

    alphas = np.arange(0.2, 10.001, 0.001)
    r = gamma(2.0 / alphas) ** 2 / (gamma(1.0 / alphas) * gamma(3.0 / alphas))
    return alphas, r


def _aggd(block: np.ndarray) -> tuple[float, float, float]:
    from scipy.special import gamma

    x = block.ravel()
    alphas, r_table = _alpha_table()
    left = np.sqrt(np.mean(x[x < 0] ** 2))
    right = np.sqrt(np.mean(x[x > 0] ** 2))
    g = left / right
    r_hat = np.mean(np.abs(x)) ** 2 / np.mean(x**2)
    r_norm = r_hat * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    alpha = float(alphas[np.argmin((r_table - r_norm) ** 2)])
    k = math.sqrt(gamma(1.0 / alpha) / gamma(3.0 / alpha))
    return alpha, float(left * k), float(right * k)


def _block_features(block: np.ndarray) -> list[float]:
    from scipy.special import gamma

    alpha, bl, br = _aggd(block)
    feats = [alpha, (bl + br) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        alpha, bl, br = _aggd(block * np.roll(block, shift, axis=(0, 1)))
        mean = (br - bl) * gamma(2.0 / alpha) / gamma(1.0 / alpha)
        feats += [alpha, mean, bl, br]
    return feats


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))


def _matlab_resize_weights(length: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights and source indices of MATLAB's imresize (bicubic, antialiasing) along one axis."""
    out_len = int(math.ceil(length * scale))
    width = 4.0 / scale if scale < 1 else 4.0
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    p = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(p)[None, :]
    dist = u[:, None] - idx
    w = scale * _cubic(dist * scale) if scale < 1 else _cubic(dist)
    w = w / w.sum(axis=1, keepdims=True)
    # symmetric padding, as MATLAB: indices outside [1, length] mirror back inside
    aux = np.concatenate([np.arange(1, length + 1), np.arange(length, 0, -1)])
    idx = aux[np.mod(idx.astype(np.int64) - 1, 2 * length)] - 1
    return w, idx


def matlab_imresize_half(img: np.ndarray) -> np.ndarray:
    """MATLAB ``imresize(img, 0.5)`` (bicubic with antialiasing) of a 2-D float image."""
    out = img
    for axis in (0, 1):
        w, idx = _matlab_resize_weights(out.shape[axis], 0.5)
        moved = np.moveaxis(out, axis, 0)
        res = np.einsum("op,op...->o...", w, moved[idx])
        out = np.moveaxis(res, 0, axis)
    return out


def niqe_y(y: np.ndarray) -> float:
    """NIQE of a Y image (H, W) in [0, 255] (already rounded, as MATLAB's uint8 input)."""
    from scipy.ndimage import convolve

    mu_p, cov_p, window = _pristine()
    h, w = y.shape
    nh, nw = h // BLOCK, w // BLOCK
    if nh * nw < 2:
        raise InputError(
            f"NIQE needs at least two {BLOCK}x{BLOCK} blocks, the image is {w}x{h}; evaluate at a larger size"
        )
    img = y[: nh * BLOCK, : nw * BLOCK].astype(np.float64)
    per_scale = []
    for scale in (1, 2):
        mu = convolve(img, window, mode="nearest")
        sigma = np.sqrt(np.abs(convolve(img * img, window, mode="nearest") - mu * mu))
        norm = (img - mu) / (sigma + 1.0)
        b = BLOCK // scale
        feats = [_block_features(norm[i * b : (i + 1) * b, j * b : (j + 1) * b]) for j in range(nw) for i in range(nh)]
        per_scale.append(np.array(feats))
        if scale == 1:
            img = matlab_imresize_half(img / 255.0) * 255.0
    dist = np.concatenate(per_scale, axis=1)
    mu_d = np.nanmean(dist, axis=0)
    cov_d = np.cov(dist[~np.isnan(dist).any(axis=1)], rowvar=False)
    inv = np.linalg.pinv((cov_p + cov_d) / 2.0)
    d = mu_p - mu_d
    return float(np.sqrt(np.squeeze(d @ inv @ d.T)))


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """MATLAB rgb2ycbcr's Y (16-235) of RGB in [0, 1], as float."""
    img = np.asarray(image, dtype=np.float64)
    return 16.0 + 65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]


def niqe_score(image: np.ndarray) -> float:
    """NIQE of an (H, W, 3) RGB image in [0, 1] (or an (H, W) grey one in [0, 1])."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and img.shape[-1] == 3:
        y = rgb_to_y(img)
    elif img.ndim == 2:
        y = img * 255.0
    else:
        raise InputError(f"NIQE needs an RGB or grey image, got {img.shape}")
    return niqe_y(np.round(y))
