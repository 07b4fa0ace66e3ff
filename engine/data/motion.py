"""Fast-motion clips with exactly known motion: a virtual camera pans, zooms and rotates over a still (or
over each frame of a clip) at a chosen speed in pixels per frame.

Each output frame t is ``source`` sampled through an affine map ``A_t`` (2x3, output pixel -> source
pixel). Because the maps are known, so is the true optical flow between any two output frames
(``true_flow``): the ground truth that temporal metrics and motion-compensated restorers can be checked on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from frdm.engine.errors import InputError


@dataclass
class MotionClip:
    frames: np.ndarray  # (T, h, w, 3) float32
    transforms: np.ndarray  # (T, 2, 3) float64: output (x, y, 1) -> source (x, y)

    def true_flow(self, t0: int, t1: int) -> np.ndarray:
        """(h, w, 2) flow from frame t0 to frame t1: the pixel (x, y) of t0 shows the same source point as
        (x, y) + flow of t1 (OpenCV's convention for calcOpticalFlow* and remap)."""
        h, w = self.frames.shape[1:3]
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
        pts = np.stack([xs, ys, np.ones_like(xs)], -1)
        src = pts @ self.transforms[t0].T  # source coordinates seen at t0
        inv = _invert_affine(self.transforms[t1])
        dst = np.concatenate([src, np.ones_like(xs)[..., None]], -1) @ inv.T
        return (dst - pts[..., :2]).astype(np.float32)


def _invert_affine(m: np.ndarray) -> np.ndarray:
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def camera_path(
    n_frames: int,
    out_size: tuple[int, int],
    source_size: tuple[int, int],
    *,
    speed: float = 16.0,
    direction_deg: float = 0.0,
    zoom_per_frame: float = 0.0,
    rotate_deg_per_frame: float = 0.0,
) -> np.ndarray:
    """Affine maps (T, 2, 3) for a camera that moves ``speed`` source pixels per frame along
    ``direction_deg`` (0 = the picture moves left, i.e. the camera pans right), zooms by the factor
    (1 + zoom_per_frame) per frame and rotates, starting so the whole path stays inside the source."""
    w, h = out_size
    sw, sh = source_size
    ang = math.radians(direction_deg)
    d = np.array([math.cos(ang), math.sin(ang)])
    travel = d * speed * (n_frames - 1)
    # the path is centred on the source's centre
    start = np.array([sw / 2.0, sh / 2.0]) - travel / 2.0
    maps = []
    for t in range(n_frames):
        zoom = (1.0 + zoom_per_frame) ** t  # >1 zooms in: the camera sees less of the source
        rot = math.radians(rotate_deg_per_frame * t)
        c, s = math.cos(rot) / zoom, math.sin(rot) / zoom
        centre = start + d * speed * t
        # output (x, y) around the output centre -> rotated, scaled -> source around the moving centre
        lin = np.array([[c, -s], [s, c]])
        off = centre - lin @ np.array([(w - 1) / 2.0, (h - 1) / 2.0])
        maps.append(np.hstack([lin, off[:, None]]))
    maps_arr = np.stack(maps)
    # every output corner must land inside the source, else the clip would show a border
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], np.float64)
    pts = np.einsum("tij,kj->tki", maps_arr, corners)
    if pts[..., 0].min() < 0 or pts[..., 1].min() < 0 or pts[..., 0].max() > sw - 1 or pts[..., 1].max() > sh - 1:
        raise InputError(
            f"the camera path ({n_frames} frames at {speed} px/frame, zoom {zoom_per_frame}, rotation "
            f"{rotate_deg_per_frame} deg/frame) leaves the {sw}x{sh} source for a {w}x{h} output; use fewer "
            "frames, a lower speed or a smaller output size"
        )
    return maps_arr


def fast_motion(
    source: np.ndarray,
    n_frames: int,
    out_size: tuple[int, int],
    *,
    speed: float = 16.0,
    direction_deg: float = 0.0,
    zoom_per_frame: float = 0.0,
    rotate_deg_per_frame: float = 0.0,
) -> MotionClip:
    """Move a camera over ``source``: a still (H, W, 3) or a clip (T, H, W, 3), whose frame t (cycled) is
    filmed at step t. Bicubic sampling; the motion is exact (see ``MotionClip.true_flow``)."""
    import cv2

    src = np.asarray(source, np.float32)
    if src.ndim == 3:
        src = src[None]
    if src.ndim != 4 or src.shape[-1] != 3:
        raise InputError(f"fast_motion needs a still (H, W, 3) or a clip (T, H, W, 3), got {source.shape}")
    maps = camera_path(
        n_frames,
        out_size,
        (src.shape[2], src.shape[1]),
        speed=speed,
        direction_deg=direction_deg,
        zoom_per_frame=zoom_per_frame,
        rotate_deg_per_frame=rotate_deg_per_frame,
    )
    w, h = out_size
    frames = np.empty((n_frames, h, w, 3), np.float32)
    for t in range(n_frames):
        frames[t] = cv2.warpAffine(
            src[t % src.shape[0]],
            maps[t],
            (w, h),
            flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REFLECT,
        )
    return MotionClip(np.clip(frames, 0.0, 1.0), maps)
