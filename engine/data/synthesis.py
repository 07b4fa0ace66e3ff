"""Procedural film-defect synthesis (the paper's Sec. 4, "Synthetic Data").

Every generator takes a clip ``frames`` (T, H, W, 3) float32 in [0, 1] and a seeded ``numpy.random.Generator``
and returns ``(degraded, mask)``: the new clip (clipped to [0, 1]) and a (T, H, W) bool mask that is
*exactly* the set of pixels the generator changed (``mask == (degraded != frames).any(-1)``). Soft edges
whose opacity is below ``MIN_ALPHA`` are cut to zero so that no invisible fringe is marked as defect.

Two kinds of generator:

- *defects* (``DEFECTS``): local damage a restorer must remove: dust, dirt blotches, hairs, burns/cue marks,
  constant and flickering line scratches, user templates. Their masks form the dataset's defect mask
  (``m_defect`` of the paper's Eq. 7 and the defect loss).
- *quality* degradations (``QUALITY``): whole-frame changes: brightness flicker, film grain, blur, rescale,
  JPEG, colour fading. They change (almost) every pixel, so their masks are not defect masks.

``synthesize`` runs a named preset (the paper's three test settings ``mixed``, ``scratch``,
``noisy-fast-motion``): quality degradations first, then defects fused on top (as the paper describes:
degrade the flawless frames, then fuse the defects), so the defect mask stays exact in the final clip.
The same (frames, preset, seed, templates) always gives bit-identical output.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from frdm.engine.errors import InputError

MIN_ALPHA = 0.2  # opacity below this is cut: such a fringe is invisible and would inflate the mask
Result = tuple[np.ndarray, np.ndarray]


def _cv2():
    import cv2

    return cv2


# --- small helpers -------------------------------------------------------------------------------------


def _check_clip(frames: np.ndarray) -> np.ndarray:
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"a clip must be (frames, height, width, 3), got shape {frames.shape}")
    return np.ascontiguousarray(frames, dtype=np.float32)


def _finish(frames: np.ndarray, out: np.ndarray) -> Result:
    """Clip to [0, 1] and measure the changed pixels: the mask is what changed, nothing else."""
    out = np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)
    return out, np.any(out != frames, axis=-1)


def _scale(frames: np.ndarray) -> float:
    """Defect sizes are given for a 480-line frame and scale with the frame."""
    return min(frames.shape[1], frames.shape[2]) / 480.0


def defect_colour(rng: np.random.Generator, style: str | None = None) -> np.ndarray:
    """A varied defect colour: dark (dust on the negative, dirt), bright (dust on the print, emulsion
    scratches) or tinted (dye stains, emulsion layers)."""
    style = style or str(rng.choice(["dark", "bright", "tinted"], p=[0.55, 0.35, 0.10]))
    if style == "dark":
        base = rng.uniform(0.0, 0.18)
        tint = rng.normal(0.0, 0.025, 3)
    elif style == "bright":
        base = rng.uniform(0.82, 1.0)
        tint = rng.normal(0.0, 0.025, 3)
    else:
        base = rng.uniform(0.3, 0.7)
        tint = rng.normal(0.0, 0.18, 3)
    return np.clip(base + tint, 0.0, 1.0).astype(np.float32)


def _paint(img: np.ndarray, alpha: np.ndarray, y0: int, x0: int, colour: np.ndarray) -> None:
    """Alpha-composite ``colour`` with the local opacity ``alpha`` (h, w) at (y0, x0), in place, clipped."""
    h, w = alpha.shape
    H, W = img.shape[:2]
    ya, xa = max(0, y0), max(0, x0)
    yb, xb = min(H, y0 + h), min(W, x0 + w)
    if ya >= yb or xa >= xb:
        return
    a = alpha[ya - y0 : yb - y0, xa - x0 : xb - x0]
    a = np.where(a < MIN_ALPHA, 0.0, a).astype(np.float32)[..., None]
    region = img[ya:yb, xa:xb]
    img[ya:yb, xa:xb] = region + a * (colour - region)


def _blob_points(rng: np.random.Generator, radius: float, roughness: float, elongation: float) -> np.ndarray:
    """An irregular closed outline around (0, 0): a circle with smooth random radial noise, stretched and
    rotated. Real dust and dirt are rarely round."""
    n = 16
    theta = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    harmonics = sum(rng.normal(0, roughness / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    r = radius * np.clip(1.0 + harmonics, 0.3, 2.0)
    pts = np.stack([r * np.cos(theta) * elongation, r * np.sin(theta)], axis=1)
    phi = rng.uniform(0, np.pi)
    rot = np.array([[np.cos(phi), -np.sin(phi)], [np.sin(phi), np.cos(phi)]])
    return pts @ rot.T


def _polygon_alpha(points: np.ndarray, margin: int = 2) -> tuple[np.ndarray, int, int]:
    """Anti-aliased coverage of a polygon given in absolute (x, y) float coordinates, as a local patch."""
    cv2 = _cv2()
    x0 = int(math.floor(points[:, 0].min())) - margin
    y0 = int(math.floor(points[:, 1].min())) - margin
    w = int(math.ceil(points[:, 0].max())) - x0 + margin + 1
    h = int(math.ceil(points[:, 1].max())) - y0 + margin + 1
    canvas = np.zeros((h, w), np.uint8)
    local = np.round((points - [x0, y0]) * 16).astype(np.int32)  # 4 fractional bits: sub-pixel outlines
    cv2.fillPoly(canvas, [local], 255, lineType=cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) / 255.0, y0, x0


def _polyline_alpha(points: np.ndarray, thickness: int, margin: int = 3) -> tuple[np.ndarray, int, int]:
    cv2 = _cv2()
    x0 = int(math.floor(points[:, 0].min())) - margin - thickness
    y0 = int(math.floor(points[:, 1].min())) - margin - thickness
    w = int(math.ceil(points[:, 0].max())) - x0 + margin + thickness + 1
    h = int(math.ceil(points[:, 1].max())) - y0 + margin + thickness + 1
    canvas = np.zeros((h, w), np.uint8)
    local = np.round((points - [x0, y0]) * 16).astype(np.int32)
    cv2.polylines(canvas, [local], False, 255, thickness=thickness, lineType=cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) / 255.0, y0, x0


def _luma(frames: np.ndarray) -> np.ndarray:
    return frames[..., 0] * 0.2126 + frames[..., 1] * 0.7152 + frames[..., 2] * 0.0722


# --- defects (local; their masks are defect masks) ------------------------------------------------------


def dust(
    frames: np.ndarray,
    rng: np.random.Generator,
    *,
    density: float = 40.0,
    size: tuple[float, float] = (0.6, 3.5),
    bright_fraction: float = 0.35,
    min_per_frame: int = 1,
) -> Result:
    """Dust specks, new on every frame: dots, irregular grains and short fibres, dark or bright.

    ``density`` is the mean number of specks per frame for a 480x480 area (sparse dust ~10-40, intensive
    ~150-400); ``size`` the radius range in pixels at 480 lines."""
    frames = _check_clip(frames)
    out = frames.copy()
    T, H, W, _ = frames.shape
    s = _scale(frames)
    area = H * W / (480.0 * 480.0)
    for t in range(T):
        n = max(min_per_frame, int(rng.poisson(density * area)))
        for _ in range(n):
            style = "bright" if rng.random() < bright_fraction else "dark"
            colour = defect_colour(rng, style)
            opacity = rng.uniform(0.6, 1.0)
            cx, cy = rng.uniform(0, W), rng.uniform(0, H)
            radius = s * math.exp(rng.uniform(math.log(size[0]), math.log(size[1])))
            if rng.random() < 0.15:  # a short fibre
                length = radius * rng.uniform(4, 10)
                ang = rng.uniform(0, 2 * np.pi)
                steps = np.linspace(-0.5, 0.5, 8)[:, None]
                bend = rng.normal(0, 0.3)
                pts = np.concatenate(
                    [np.cos(ang + bend * steps) * steps * length, np.sin(ang + bend * steps) * steps * length], 1
                ) + [cx, cy]
                alpha, y0, x0 = _polyline_alpha(pts, thickness=max(1, int(round(radius * 0.5))))
            else:
                pts = _blob_points(rng, radius, 0.35, rng.uniform(1.0, 1.8)) + [cx, cy]
                alpha, y0, x0 = _polygon_alpha(pts)
            _paint(out[t], alpha * opacity, y0, x0, colour)
    return _finish(frames, out)


def dirt(
    frames: np.ndarray,
    rng: np.random.Generator,
    *,
    per_frame: float = 1.5,
    size: tuple[float, float] = (4.0, 22.0),
) -> Result:
    """Dirt blotches: larger irregular patches with a mottled, semi-opaque interior; mostly dark, sometimes
    a coloured stain."""
    frames = _check_clip(frames)
    cv2 = _cv2()
    out = frames.copy()
    T, H, W, _ = frames.shape
    s = _scale(frames)
    for t in range(T):
        for _ in range(int(rng.poisson(per_frame))):
            colour = defect_colour(rng, str(rng.choice(["dark", "bright", "tinted"], p=[0.65, 0.15, 0.2])))
            radius = s * rng.uniform(*size)
            pts = _blob_points(rng, radius, 0.5, rng.uniform(1.0, 2.2)) + [rng.uniform(0, W), rng.uniform(0, H)]
            alpha, y0, x0 = _polygon_alpha(pts)
            # mottled interior: dirt is uneven, thicker in the middle
            texture = cv2.GaussianBlur(rng.uniform(0.55, 1.0, alpha.shape).astype(np.float32), (0, 0), 1.5)
            _paint(out[t], alpha * texture * rng.uniform(0.7, 1.0), y0, x0, colour)
    return _finish(frames, out)


def hairs(
    frames: np.ndarray,
    rng: np.random.Generator,
    *,
    per_frame: float = 0.5,
    length: tuple[float, float] = (30.0, 160.0),
    persist: tuple[int, int] = (1, 6),
) -> Result:
    """Hairs and fibres: thin curved lines (a random walk of the heading). A hair caught in the gate stays
    for several frames with a slight drift, so each lasts ``persist`` frames."""
    frames = _check_clip(frames)
    out = frames.copy()
    T, H, W, _ = frames.shape
    s = _scale(frames)
    n = int(rng.poisson(per_frame * T))
    for _ in range(n):
        start = int(rng.integers(0, T))
        frames_on = int(rng.integers(persist[0], persist[1] + 1))
        seg = 24
        step = s * rng.uniform(*length) / seg
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.18, seg))
        pts = np.cumsum(np.stack([np.cos(heading), np.sin(heading)], 1) * step, axis=0)
        pts = pts + [rng.uniform(0, W), rng.uniform(0, H)]
        thickness = 1 if rng.random() < 0.7 else 2
        colour = defect_colour(rng, "dark" if rng.random() < 0.8 else "bright")
        opacity = rng.uniform(0.6, 1.0)
        drift = rng.normal(0, 0.4 * s, 2)
        for t in range(start, min(T, start + frames_on)):
            alpha, y0, x0 = _polyline_alpha(pts + drift * (t - start), thickness)
            _paint(out[t], alpha * opacity, y0, x0, colour)
    return _finish(frames, out)


def burns(
    frames: np.ndarray,
    rng: np.random.Generator,
    *,
    count: int = 1,
    frames_on: tuple[int, int] = (1, 4),
    radius: tuple[float, float] = (0.025, 0.05),
) -> Result:
    """Cigarette burns / cue marks: a round mark with a ragged edge near the upper-right corner for a few
    consecutive frames; a bright hole with a scorched rim, or a dark punched mark."""
    frames = _check_clip(frames)
    out = frames.copy()
    T, H, W, _ = frames.shape
    for _ in range(count):
        start = int(rng.integers(0, T))
        n_on = int(rng.integers(frames_on[0], frames_on[1] + 1))
        r = min(H, W) * rng.uniform(*radius)
        cx, cy = W * rng.uniform(0.78, 0.94), H * rng.uniform(0.06, 0.22)
        hole = rng.random() < 0.6
        outline = _blob_points(rng, r, 0.08, 1.0)
        for t in range(start, min(T, start + n_on)):
            if hole:
                rim, y0, x0 = _polygon_alpha(outline * 1.25 + [cx, cy])
                _paint(out[t], rim, y0, x0, np.array([0.25, 0.12, 0.05], np.float32) * rng.uniform(0.5, 1.2))
                core, y0, x0 = _polygon_alpha(outline + [cx, cy])
                _paint(out[t], core, y0, x0, np.array([1.0, 0.97, 0.85], np.float32) * rng.uniform(0.9, 1.0))
            else:
                mark, y0, x0 = _polygon_alpha(outline + [cx, cy])
                _paint(out[t], mark * rng.uniform(0.7, 1.0), y0, x0, defect_colour(rng, "dark"))
    return _finish(frames, out)


def _vertical_line_alpha(H: int, W: int, xc: np.ndarray, width: float, intensity: np.ndarray) -> tuple[np.ndarray, int]:
    """Opacity of a near-vertical line through x = xc[y] with a smooth cross profile; returns the band
    (H, bw) and its first column."""
    half = width / 2.0 + 2.0
    xa = max(0, int(math.floor(xc.min() - half)))
    xb = min(W, int(math.ceil(xc.max() + half)) + 1)
    if xb <= xa:
        return np.zeros((H, 0), np.float32), 0
    xs = np.arange(xa, xb, dtype=np.float32)[None, :]
    d = np.abs(xs - xc[:, None]) / max(width / 2.0, 0.5)
    profile = np.clip(1.25 - d, 0.0, 1.0)  # flat core, soft shoulder
    return (profile * intensity[:, None]).astype(np.float32), xa


def line_scratches(
    frames: np.ndarray,
    rng: np.random.Generator,
    *,
    count: int = 2,
    width: tuple[float, float] = (1.0, 4.0),
    intensity: tuple[float, float] = (0.35, 0.9),
    wander: float = 1.5,
) -> Result:
    """Constant line scratches: vertical lines at a fixed position across the whole shot (a projector or
    printer scratch), of varied width and strength, wandering slightly along the frame and over time."""
    frames = _check_clip(frames)
    out = frames.copy()
    T, H, W, _ = frames.shape
    s = _scale(frames)
    y = np.arange(H, dtype=np.float32)
    for _ in range(count):
        x0 = rng.uniform(0.05 * W, 0.95 * W)
        w = s * rng.uniform(*width)
        strength = rng.uniform(*intensity)
        colour = defect_colour(rng, str(rng.choice(["bright", "dark", "tinted"], p=[0.5, 0.35, 0.15])))
        period = rng.uniform(0.5, 3.0) * H
        phase = rng.uniform(0, 2 * np.pi)
        amp = wander * s * rng.uniform(0.2, 1.0)
        drift = rng.normal(0, 0.15 * s)  # px per frame: the film weaves slowly
        top = 0 if rng.random() < 0.7 else int(rng.uniform(0, 0.3) * H)
        bottom = H if rng.random() < 0.7 else int(rng.uniform(0.7, 1.0) * H)
        for t in range(T):
            jitter = rng.normal(0, 0.15 * s)
            xc = x0 + amp * np.sin(2 * np.pi * y / period + phase + 0.05 * t) + drift * t + jitter
            along = strength * np.clip(rng.normal(1.0, 0.08) + 0.15 * np.sin(y / (0.07 * H) + phase), 0.3, 1.0)
            along[:top] = 0.0
            along[bottom:] = 0.0
            alpha, xa = _vertical_line_alpha(H, W, xc, w, along.astype(np.float32))
            _paint(out[t], alpha, 0, xa, colour)
    return _finish(frames, out)


def flicker_scratches(
    frames: np.ndarray,
    rng: np.random.Generator,
    *,
    per_frame: float = 0.8,
    width: tuple[float, float] = (0.8, 2.5),
    intensity: tuple[float, float] = (0.3, 0.85),
) -> Result:
    """Flickering scratches: short-lived vertical lines at a new position on each frame, often only part
    of the frame high."""
    frames = _check_clip(frames)
    out = frames.copy()
    T, H, W, _ = frames.shape
    s = _scale(frames)
    y = np.arange(H, dtype=np.float32)
    for t in range(T):
        for _ in range(int(rng.poisson(per_frame))):
            x0 = rng.uniform(0, W)
            slope = rng.normal(0, 0.01)
            xc = x0 + slope * (y - H / 2) + 0.6 * s * np.sin(y / rng.uniform(30, 120) + rng.uniform(0, 6))
            top = int(rng.uniform(0, 0.5) * H)
            bottom = int(top + rng.uniform(0.3, 1.0) * (H - top))
            along = np.zeros(H, np.float32)
            along[top:bottom] = rng.uniform(*intensity)
            colour = defect_colour(rng, "bright" if rng.random() < 0.6 else "dark")
            alpha, xa = _vertical_line_alpha(H, W, xc.astype(np.float32), s * rng.uniform(*width), along)
            _paint(out[t], alpha, 0, xa, colour)
    return _finish(frames, out)


def load_templates(folder: str | os.PathLike[str]) -> list[np.ndarray]:
    """Defect templates from a folder of images (PNG, TIFF, EXR, JPEG...): each becomes an opacity map
    (H, W) float32 in [0, 1]. An alpha channel is the opacity if present; otherwise the luminance is, and
    scans of dark defects on a light background (mean above 0.5) are inverted."""
    from frdm.engine.frames import IMAGE_EXTENSIONS, read_frame

    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise InputError(f"{folder}: the defect template folder does not exist")
    names = sorted(n for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS)
    if not names:
        raise InputError(f"{folder}: no template images found (expected {', '.join(IMAGE_EXTENSIONS)})")
    templates = []
    for name in names:
        frame = read_frame(os.path.join(folder, name))
        px = frame.pixels
        if "A" in frame.channels:
            alpha = px[..., frame.channels.index("A")]
        else:
            idx = frame.rgb_indices()
            alpha = _luma(px[..., idx])
            if float(alpha.mean()) > 0.5:
                alpha = 1.0 - alpha
        templates.append(np.clip(alpha, 0.0, 1.0).astype(np.float32))
    return templates


def templates(
    frames: np.ndarray,
    rng: np.random.Generator,
    *,
    templates: Sequence[np.ndarray],
    per_frame: float = 1.0,
    coverage: tuple[float, float] = (0.02, 0.25),
) -> Result:
    """User defect templates, placed as the RTN pipeline does: a random crop of a template, rotated,
    scaled to cover ``coverage`` of the frame's shorter side, coloured, and alpha-blended on the frame."""
    frames = _check_clip(frames)
    if not templates:
        raise InputError("the templates generator needs at least one template image")
    cv2 = _cv2()
    out = frames.copy()
    T, H, W, _ = frames.shape
    for t in range(T):
        for _ in range(int(rng.poisson(per_frame))):
            tpl = templates[int(rng.integers(0, len(templates)))]
            th, tw = tpl.shape
            frac = rng.uniform(0.3, 1.0)
            ch, cw = max(2, int(th * frac)), max(2, int(tw * frac))
            ty, tx = int(rng.integers(0, th - ch + 1)), int(rng.integers(0, tw - cw + 1))
            crop = tpl[ty : ty + ch, tx : tx + cw]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            size = min(H, W) * rng.uniform(*coverage) * 2
            scale = size / max(ch, cw)
            angle = rng.uniform(0, 360)
            cx, cy = rng.uniform(0, W), rng.uniform(0, H)
            # crop centre -> (cx, cy), rotated and scaled: one affine warp straight into frame coordinates
            M = cv2.getRotationMatrix2D(((cw - 1) / 2, (ch - 1) / 2), angle, scale)
            M[:, 2] += [cx - (cw - 1) / 2, cy - (ch - 1) / 2]
            alpha = cv2.warpAffine(
                np.ascontiguousarray(crop),
                M,
                (W, H),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            )
            _paint(out[t], alpha * rng.uniform(0.6, 1.0), 0, 0, defect_colour(rng))
    return _finish(frames, out)


# --- quality degradations (whole frame) ------------------------------------------------------------------


def brightness_flicker(
    frames: np.ndarray,
    rng: np.random.Generator,
    *,
    global_sigma: float = 0.05,
    local_sigma: float = 0.03,
) -> Result:
    """Brightness flicker: a per-frame gain and offset (global) times a smooth random gain field (local,
    uneven exposure or density)."""
    frames = _check_clip(frames)
    cv2 = _cv2()
    T, H, W, _ = frames.shape
    out = np.empty_like(frames)
    for t in range(T):
        gain = 1.0 + rng.normal(0, global_sigma)
        offset = rng.normal(0, global_sigma * 0.3)
        grid = rng.normal(0, local_sigma, (3, 4)).astype(np.float32)
        field = cv2.resize(grid, (W, H), interpolation=cv2.INTER_CUBIC)
        out[t] = frames[t] * (gain + field)[..., None] + offset
    return _finish(frames, out)


def film_grain(
    frames: np.ndarray,
    rng: np.random.Generator,
    *,
    strength: float = 0.02,
    grain_size: float = 0.8,
    colour_correlation: float = 0.7,
) -> Result:
    """Film grain: spatially correlated noise, mostly shared by the three dye layers, whose amplitude
    depends on the local luminance like real stock (strongest in the mid-tones, weaker in deep shadows
    and highlights)."""
    frames = _check_clip(frames)
    cv2 = _cv2()
    T, H, W, _ = frames.shape
    out = np.empty_like(frames)
    sigma = grain_size * max(_scale(frames), 0.5)
    rho = float(np.clip(colour_correlation, 0.0, 1.0))
    for t in range(T):
        noise = rng.standard_normal((H, W, 4)).astype(np.float32)
        noise = cv2.GaussianBlur(noise, (0, 0), sigma) if sigma >= 0.3 else noise
        noise /= noise.reshape(-1, 4).std(axis=0) + 1e-8
        n = math.sqrt(rho) * noise[..., :1] + math.sqrt(1.0 - rho) * noise[..., 1:]
        luma = _luma(frames[t])
        amp = strength * (0.35 + 2.6 * luma * (1.0 - luma))
        out[t] = frames[t] + amp[..., None] * n
    return _finish(frames, out)


def blur(frames: np.ndarray, rng: np.random.Generator, *, sigma: tuple[float, float] = (0.5, 1.5)) -> Result:
    """Gaussian blur (soft focus, print generation loss), one sigma per shot."""
    frames = _check_clip(frames)
    cv2 = _cv2()
    s = rng.uniform(*sigma) * max(_scale(frames), 0.5)
    out = np.stack([cv2.GaussianBlur(f, (0, 0), s) for f in frames])
    return _finish(frames, out)


def rescale(frames: np.ndarray, rng: np.random.Generator, *, factor: tuple[float, float] = (0.4, 0.8)) -> Result:
    """Down- then up-scaling (telecine / web copies): detail lost, interpolation chosen at random."""
    frames = _check_clip(frames)
    cv2 = _cv2()
    T, H, W, _ = frames.shape
    f = rng.uniform(*factor)
    small = (max(1, int(round(W * f))), max(1, int(round(H * f))))
    up = [cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA][int(rng.integers(0, 3))]
    out = np.stack(
        [cv2.resize(cv2.resize(fr, small, interpolation=cv2.INTER_AREA), (W, H), interpolation=up) for fr in frames]
    )
    return _finish(frames, out)


def jpeg(frames: np.ndarray, rng: np.random.Generator, *, quality: tuple[int, int] = (30, 80)) -> Result:
    """JPEG compression artefacts, a quality per frame (8-bit, like the web copies many scans pass through)."""
    frames = _check_clip(frames)
    cv2 = _cv2()
    out = np.empty_like(frames)
    for t, fr in enumerate(frames):
        q = int(rng.integers(quality[0], quality[1] + 1))
        bgr = np.round(np.clip(fr[..., ::-1], 0, 1) * 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, q])
        out[t] = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0
    return _finish(frames, out)


def colour_fading(
    frames: np.ndarray,
    rng: np.random.Generator,
    *,
    saturation: tuple[float, float] = (0.45, 0.9),
    contrast: tuple[float, float] = (0.75, 0.95),
) -> Result:
    """Colour fading of the dyes: less saturation and contrast, a raised black and a cast (cyan dye fades
    first, so prints drift to red/magenta; sometimes yellow), constant over the shot."""
    frames = _check_clip(frames)
    sat = rng.uniform(*saturation)
    con = rng.uniform(*contrast)
    cast = np.array([1.0, 1.0, 1.0], np.float32) + (
        np.array([0.08, -0.04, 0.0]) if rng.random() < 0.7 else np.array([0.05, 0.03, -0.08])
    ) * rng.uniform(0.5, 1.5)
    lift = rng.uniform(0.0, 0.06)
    grey = _luma(frames)[..., None]
    out = (grey + sat * (frames - grey)) * cast.astype(np.float32)
    out = (out - 0.5) * con + 0.5 + lift
    return _finish(frames, out)


DEFECTS: dict[str, Callable[..., Result]] = {
    "dust": dust,
    "dirt": dirt,
    "hairs": hairs,
    "burns": burns,
    "line_scratches": line_scratches,
    "flicker_scratches": flicker_scratches,
    "templates": templates,
}
QUALITY: dict[str, Callable[..., Result]] = {
    "brightness_flicker": brightness_flicker,
    "film_grain": film_grain,
    "blur": blur,
    "rescale": rescale,
    "jpeg": jpeg,
    "colour_fading": colour_fading,
}


# --- presets -------------------------------------------------------------------------------------------


@dataclass
class Step:
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def is_defect(self) -> bool:
        return self.name in DEFECTS


def _preset_mixed(rng: np.random.Generator, have_templates: bool) -> list[Step]:
    """The paper's 'mixed degradation': severe, varied damage on every frame."""
    steps: list[Step] = []
    if rng.random() < 0.3:
        steps.append(Step("rescale", {"factor": (0.5, 0.85)}))
    if rng.random() < 0.25:
        steps.append(Step("blur", {"sigma": (0.4, 1.0)}))
    if rng.random() < 0.4:
        steps.append(Step("colour_fading"))
    if rng.random() < 0.7:
        steps.append(Step("brightness_flicker", {"global_sigma": float(rng.uniform(0.02, 0.06))}))
    steps.append(Step("film_grain", {"strength": float(rng.uniform(0.01, 0.03))}))
    if rng.random() < 0.3:
        steps.append(Step("jpeg", {"quality": (50, 90)}))
    dense = rng.random() < 0.5
    steps.append(Step("dust", {"density": float(rng.uniform(150, 350) if dense else rng.uniform(20, 60))}))
    steps.append(Step("dirt", {"per_frame": float(rng.uniform(0.8, 2.5))}))
    steps.append(Step("hairs", {"per_frame": float(rng.uniform(0.1, 0.6))}))
    steps.append(Step("flicker_scratches", {"per_frame": float(rng.uniform(0.3, 1.2))}))
    if rng.random() < 0.4:
        steps.append(Step("burns"))
    if rng.random() < 0.3:
        steps.append(Step("line_scratches", {"count": int(rng.integers(1, 3))}))
    if have_templates:
        steps.append(Step("templates", {"per_frame": float(rng.uniform(0.5, 1.5))}))
    return steps


def _preset_scratch(rng: np.random.Generator, have_templates: bool) -> list[Step]:
    """The paper's 'scratch degradation': fixed-region line scratches through the shot."""
    steps = [Step("film_grain", {"strength": float(rng.uniform(0.005, 0.015))})]
    steps.append(Step("line_scratches", {"count": int(rng.integers(2, 6)), "width": (1.0, 5.0)}))
    if rng.random() < 0.5:
        steps.append(Step("flicker_scratches", {"per_frame": float(rng.uniform(0.2, 0.8))}))
    return steps


def _preset_noisy_fast_motion(rng: np.random.Generator, have_templates: bool) -> list[Step]:
    """The paper's 'noisy fast-motion film': heavy grain and compression with small defects that are easy to
    confuse with fast-moving detail. Use it on a clip made by ``motion.fast_motion``."""
    steps = [
        Step("brightness_flicker", {"global_sigma": float(rng.uniform(0.01, 0.03)), "local_sigma": 0.01}),
        # the paper's noisy fast-motion input scores ~37 dB PSNR: visible grain, not a snowstorm
        Step("film_grain", {"strength": float(rng.uniform(0.008, 0.016)), "grain_size": 1.0}),
    ]
    if rng.random() < 0.5:
        steps.append(Step("jpeg", {"quality": (75, 95)}))
    steps.append(Step("dust", {"density": float(rng.uniform(30, 90)), "size": (0.5, 2.5)}))
    steps.append(Step("dirt", {"per_frame": float(rng.uniform(0.3, 1.0)), "size": (3.0, 10.0)}))
    steps.append(Step("flicker_scratches", {"per_frame": float(rng.uniform(0.2, 0.6))}))
    if have_templates:
        steps.append(Step("templates", {"per_frame": 0.4, "coverage": (0.02, 0.08)}))
    return steps


PRESETS: dict[str, Callable[[np.random.Generator, bool], list[Step]]] = {
    "mixed": _preset_mixed,
    "scratch": _preset_scratch,
    "noisy-fast-motion": _preset_noisy_fast_motion,
}


@dataclass
class Synthesis:
    degraded: np.ndarray  # (T, H, W, 3) float32 [0, 1]
    mask: np.ndarray  # (T, H, W) bool: the union of the defect generators' masks
    steps: list[Step]  # what was applied, in order (for the shot's record)


def apply_steps(
    frames: np.ndarray,
    steps: Sequence[Step],
    rng: np.random.Generator,
    template_images: Sequence[np.ndarray] | None = None,
) -> Synthesis:
    """Run generators in order. The defect mask is the union of the defect steps' masks; quality steps must
    come first (a later whole-frame step would change pixels outside the defect mask)."""
    frames = _check_clip(frames)
    out = frames
    mask = np.zeros(frames.shape[:3], bool)
    seen_defect = False
    for step in steps:
        if step.is_defect:
            fn = DEFECTS[step.name]
            kwargs = dict(step.kwargs)
            if step.name == "templates":
                kwargs["templates"] = template_images or []
            out, changed = fn(out, rng, **kwargs)
            mask |= changed
            seen_defect = True
        elif step.name in QUALITY:
            if seen_defect:
                raise ValueError(f"quality step '{step.name}' after a defect step would blur the defect mask")
            out, _ = QUALITY[step.name](out, rng, **step.kwargs)
        else:
            known = ", ".join(sorted(DEFECTS) + sorted(QUALITY))
            raise InputError(f"unknown degradation '{step.name}' (known: {known})")
    return Synthesis(out, mask, list(steps))


def synthesize(
    frames: np.ndarray,
    preset: str = "mixed",
    seed: int = 0,
    template_images: Sequence[np.ndarray] | None = None,
) -> Synthesis:
    """Degrade a clean clip with a named preset. Bit-identical for the same inputs and seed."""
    if preset not in PRESETS:
        raise InputError(f"unknown preset '{preset}' (use {', '.join(PRESETS)})")
    rng = np.random.default_rng(seed)
    steps = PRESETS[preset](rng, bool(template_images))
    return apply_steps(frames, steps, rng, template_images)
