"""BRISQUE (Mittal et al. 2012), a no-reference quality score (lower is better), with the epsilon-SVR and
feature scaling of the ``brisque`` 0.2.0 package (``params/brisque_svm.txt``, ``params/brisque_normalize.json``).

The features must be computed the way that model was trained, so this follows that package's conventions:
grey = 0.2125 R + 0.7154 G + 0.0721 B on [0, 1]; MSCN coefficients with a 7x7 Gaussian (sigma 7/6),
zero-padded 'same' convolution and C = 1/255; an asymmetric generalised Gaussian fitted (moment matching,
root of phi(alpha) = R_hat from 0.2) to the MSCN map and to its four neighbour products (horizontal,
vertical, two diagonals); the same again at half size (bicubic, OpenCV); 36 features, scaled to [-1, 1];
score = sum_i coef_i exp(-gamma |x - sv_i|^2) - rho. Validation: see docs/quality.md.
"""

from __future__ import annotations

import functools
import json

import numpy as np

from frdm.engine.errors import InputError
from frdm.engine.metrics.params_files import param_path


@functools.lru_cache(maxsize=1)
def _model() -> tuple[np.ndarray, np.ndarray, float, float, np.ndarray, np.ndarray]:
    path = param_path("brisque_svm.txt")
    header: dict[str, str] = {}
    coefs, svs = [], []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if line == "SV":
                break
            key, _, value = line.partition(" ")
            header[key] = value
        for line in fh:
            parts = line.split()
            if not parts:
                continue
            coefs.append(float(parts[0]))
            vec = np.zeros(36)
            for item in parts[1:]:
                idx, _, val = item.partition(":")
                vec[int(idx) - 1] = float(val)
            svs.append(vec)
    if header.get("kernel_type") != "rbf" or not svs:
        raise InputError(f"{path}: not a libsvm RBF model file")
    with open(param_path("brisque_normalize.json")) as fh:
        norm = json.load(fh)
    return (
        np.array(coefs),
        np.stack(svs),
        float(header["gamma"]),
        float(header["rho"]),
        np.array(norm["min_"], dtype=np.float64),
        np.array(norm["max_"], dtype=np.float64),
    )


def _gaussian_kernel(n: int = 7, sigma: float = 7.0 / 6.0) -> np.ndarray:
    y, x = np.indices((n, n)) - n // 2
    k = np.exp(-(x**2 + y**2) / (2 * sigma**2))
    return k / k.sum()


def mscn(grey: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients of a grey image in [0, 1]."""
    from scipy.ndimage import convolve

    k = _gaussian_kernel()
    mu = convolve(grey, k, mode="constant", cval=0.0)
    var = convolve(grey * grey, k, mode="constant", cval=0.0)
    sigma = np.sqrt(np.abs(mu * mu - var))
    return (grey - mu) / (sigma + 1.0 / 255.0)


def _phi(alpha: float) -> float:
    from scipy.special import gamma

    return gamma(2.0 / alpha) ** 2 / (gamma(1.0 / alpha) * gamma(3.0 / alpha))


def aggd_fit(x: np.ndarray) -> tuple[float, float, float, float]:
    """Asymmetric generalised Gaussian by moment matching: (alpha, mean, sigma_left, sigma_right)."""
    from scipy import optimize
    from scipy.special import gamma

    x = x.ravel()
    left, right = x[x < 0], x[x >= 0]
    sl = float(np.sqrt(np.mean(left**2))) if left.size else 0.0
    sr = float(np.sqrt(np.mean(right**2))) if right.size else 0.0
    if sr == 0.0 or sl == 0.0:
        raise InputError("BRISQUE: the image is flat (no texture to measure); it cannot be scored")
    g = sl / sr
    r_hat = float(np.mean(np.abs(x))) ** 2 / float(np.mean(x**2))
    big_r = r_hat * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    alpha = float(optimize.root(lambda a: _phi(a[0]) - big_r, [0.2]).x[0])
    const = np.sqrt(gamma(1.0 / alpha) / gamma(3.0 / alpha))
    mean = (sr - sl) * const * (gamma(2.0 / alpha) / gamma(1.0 / alpha))
    return alpha, float(mean), sl, sr


def _scale_features(grey: np.ndarray) -> list[float]:
    m = mscn(grey)
    a, _, sl, sr = aggd_fit(m)
    feats = [a, (sl**2 + sr**2) / 2]
    for prod in (m[:, :-1] * m[:, 1:], m[:-1, :] * m[1:, :], m[:-1, :-1] * m[1:, 1:], m[1:, :-1] * m[:-1, 1:]):
        a, mean, sl, sr = aggd_fit(prod)
        feats += [a, mean, sl**2, sr**2]
    return feats


def brisque_features(image: np.ndarray) -> np.ndarray:
    """The 36 BRISQUE features of an (H, W, 3) RGB image in [0, 1] (or an (H, W) grey image)."""
    import cv2

    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3:
        if img.shape[-1] != 3:
            raise InputError(f"BRISQUE needs an RGB or grey image, got {img.shape}")
        grey = img[..., 0] * 0.2125 + img[..., 1] * 0.7154 + img[..., 2] * 0.0721
    elif img.ndim == 2:
        grey = img
    else:
        raise InputError(f"BRISQUE needs an RGB or grey image, got {img.shape}")
    if min(grey.shape) < 16:
        raise InputError(f"BRISQUE needs at least 16x16 pixels, got {grey.shape[1]}x{grey.shape[0]}")
    half = cv2.resize(grey, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_CUBIC)
    return np.array(_scale_features(grey) + _scale_features(half))


def brisque_score(image: np.ndarray) -> float:
    """BRISQUE score of one image (about 0 = pristine, 100 = very distorted)."""
    coefs, svs, gamma, rho, lo, hi = _model()
    x = -1.0 + 2.0 * (brisque_features(image) - lo) / (hi - lo)
    k = np.exp(-gamma * np.sum((svs - x) ** 2, axis=1))
    return float(coefs @ k - rho)
