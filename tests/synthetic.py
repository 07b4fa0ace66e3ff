"""Small synthetic shots with exactly known defects, for the engine tests (no files needed)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def still_from_movie(path: Path, index: int = 40, width: int = 320) -> np.ndarray:
    """One frame of a shared clean clip, resized, float32 RGB in [0, 1]."""
    import av

    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == index:
                rgb = frame.to_ndarray(format="rgb24")
                break
    h = int(round(rgb.shape[0] * width / rgb.shape[1]))
    return cv2.resize(rgb, (width, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def pan_clip(
    still: np.ndarray, frames: int, size: tuple[int, int], speed: tuple[float, float] = (2.0, 0.5)
) -> np.ndarray:
    """A camera pan across ``still`` at ``speed`` px/frame (quarter-pixel steps), (T, H, W, 3).

    Each frame is area-sampled from a 4x upsampled still at an integer offset, so every frame has the same
    sharpness (bilinear shifts would blur every other frame, which no camera does)."""
    w, h = size
    up = cv2.resize(still, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    out = []
    for t in range(frames):
        x0, y0 = int(round(4 * (4 + speed[0] * t))), int(round(4 * (4 + speed[1] * t)))
        crop = up[y0 : y0 + 4 * h, x0 : x0 + 4 * w]
        if crop.shape[:2] != (4 * h, 4 * w):
            raise ValueError("the still is too small for this pan")
        out.append(cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA))
    return np.clip(np.stack(out), 0.0, 1.0).astype(np.float32)


def add_moving_disc(frames: np.ndarray, speed: float = 6.0, radius: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """A bright disc crossing the frame fast (an 'actor'); returns frames and its (T, H, W) coverage."""
    out = frames.copy()
    cover = np.zeros(frames.shape[:3], bool)
    t_count, h, w = frames.shape[:3]
    for t in range(t_count):
        m = np.zeros((h, w), np.uint8)
        cv2.circle(m, (int(20 + speed * t), h // 3), radius, 1, -1)
        out[t][m > 0] = (0.95, 0.85, 0.7)
        cover[t] = m > 0
    return out, cover


def add_dust(frames: np.ndarray, rng: np.random.Generator, per_frame: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Dark and bright specks and blotches (1-5 px radii), each on one frame, clearly off the background."""
    out = frames.copy()
    mask = np.zeros(frames.shape[:3], bool)
    t_count, h, w = frames.shape[:3]
    for t in range(t_count):
        for _ in range(per_frame):
            m = np.zeros((h, w), np.uint8)
            centre = (int(rng.integers(8, w - 8)), int(rng.integers(8, h - 8)))
            axes = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
            cv2.ellipse(m, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
            region = m > 0
            background = float(out[t][region].mean())
            value = rng.uniform(0.0, 0.08) if background > 0.4 else rng.uniform(0.9, 1.0)
            out[t][region] = value
            mask[t] |= region
    return out, mask


def add_scratch(frames: np.ndarray, x: int, width: int = 2, delta: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """A constant vertical line scratch with a slight wander (+-1 px), full height, on every frame."""
    out = frames.copy()
    mask = np.zeros(frames.shape[:3], bool)
    for t in range(frames.shape[0]):
        x0 = x + int(round(np.sin(t * 0.7)))
        band = out[t][:, x0 : x0 + width]
        sign = -1.0 if band.mean() > 0.5 else 1.0
        out[t][:, x0 : x0 + width] = np.clip(band + sign * delta, 0.0, 1.0)
        mask[t][:, x0 : x0 + width] = True
    return out, mask


def detection_scores(detected: np.ndarray, truth: np.ndarray, tolerance: int = 2) -> tuple[float, float]:
    """(precision, recall) of a detected matte against a true mask, with a small position tolerance:
    a detected pixel counts as right within ``tolerance`` px of a true defect, and a true pixel as found
    within 1 px of a detection (mattes are grown by design; edges of anti-aliased defects are ambiguous)."""
    k_t = np.ones((2 * tolerance + 1, 2 * tolerance + 1), np.uint8)
    k_d = np.ones((3, 3), np.uint8)
    truth, detected = truth.reshape(-1, *truth.shape[-2:]), detected.reshape(-1, *detected.shape[-2:])
    near_truth = np.stack([cv2.dilate(t.astype(np.uint8), k_t) > 0 for t in truth])
    near_detection = np.stack([cv2.dilate(d.astype(np.uint8), k_d) > 0 for d in detected])
    precision = (detected & near_truth).sum() / max(int(detected.sum()), 1)
    recall = (truth & near_detection).sum() / max(int(truth.sum()), 1)
    return float(precision), float(recall)


def masked_psnr(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, peak: float = 1.0) -> float:
    """The paper's Eq. 7, written out independently of the engine's metrics module."""
    m = mask.astype(np.float64)
    if m.ndim < pred.ndim:
        m = np.broadcast_to(m[..., None], pred.shape)
    mse = (((pred.astype(np.float64) - gt) * m) ** 2).sum() / m.sum()
    return float(-10 * np.log10(mse / peak**2 + 0.1**8))


def add_flicker(
    frames: np.ndarray, rng: np.random.Generator, swing: float = 0.3, local: float = 0.15
) -> tuple[np.ndarray, np.ndarray]:
    """Strong flicker: a global gain that jumps by up to +-``swing`` from frame to frame (alternating brighter
    and darker) times a smooth random gain field of +-``local`` (uneven exposure). Returns (frames, gains)."""
    t_count, h, w = frames.shape[:3]
    out = np.empty_like(frames)
    gains = np.empty(t_count, np.float32)
    for t in range(t_count):
        gains[t] = 1.0 + (1 if t % 2 else -1) * rng.uniform(0.5, 1.0) * swing / 2
        grid = rng.uniform(-local, local, (3, 4)).astype(np.float32)
        field = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        out[t] = frames[t] * (gains[t] + field)[..., None]
    return np.clip(out, 0.0, 1.0).astype(np.float32), gains


def add_grain(frames: np.ndarray, rng: np.random.Generator, strength: float = 0.03, size: float = 0.8) -> np.ndarray:
    """Film grain, new on every frame: Gaussian noise blurred to ``size`` px clumps, mostly shared by the
    three channels."""
    out = frames.copy()
    for t in range(frames.shape[0]):
        noise = cv2.GaussianBlur(rng.standard_normal(frames.shape[1:3] + (2,)).astype(np.float32), (0, 0), size)
        noise /= noise.std() + 1e-8
        out[t] += strength * (0.8 * noise[..., :1] + 0.2 * noise[..., 1:])
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def highpass(image: np.ndarray) -> np.ndarray:
    """Grain and fine detail of an (H, W[, C]) image: itself minus a Gaussian blur of 1.5 px."""
    return image - cv2.GaussianBlur(image, (0, 0), 1.5)
