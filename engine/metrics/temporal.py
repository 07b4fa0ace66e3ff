"""Temporal warp error (Lai et al. 2018, "Learning blind video temporal consistency"):

    E_warp = 1/(T-1) sum_t  sum_p M_t(p) ||V_{t+1}(p) - W(V_t)(p)||^2 / (3 sum_p M_t(p))

W warps frame t onto frame t+1 with the optical flow from t+1 to t, M masks out pixels that are occluded
or whose flow is unreliable (forward-backward check). The flow is measured on ``reference`` (the ground
truth when there is one, so that a flickering restoration cannot hide behind its own flow), with OpenCV's
DIS optical flow (preset medium), or given exactly (e.g. from ``MotionClip.true_flow``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from frdm.engine.errors import InputError


def _grey_u8(img: np.ndarray) -> np.ndarray:
    g = img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114
    return np.round(np.clip(g, 0.0, 1.0) * 255).astype(np.uint8)


def dis_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense flow (H, W, 2) from image a to image b: a(x) ~ b(x + flow(x))."""
    import cv2

    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis.calc(_grey_u8(a), _grey_u8(b), None)


def warp(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample ``img`` at x + flow(x) (bilinear, replicated border)."""
    import cv2

    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(
        np.ascontiguousarray(img, np.float32),
        xs + flow[..., 0],
        ys + flow[..., 1],
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def reliable(flow_bw: np.ndarray, flow_fw: np.ndarray) -> np.ndarray:
    """Forward-backward consistency (Sundaram et al. 2010): flow_bw from t+1 to t, flow_fw from t to t+1.
    Also drops pixels whose flow points outside the frame."""
    h, w = flow_bw.shape[:2]
    fw_at = warp(flow_fw, flow_bw)
    s = flow_bw + fw_at
    ok = (s**2).sum(-1) < 0.01 * ((flow_bw**2).sum(-1) + (fw_at**2).sum(-1)) + 0.5
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    tx, ty = xs + flow_bw[..., 0], ys + flow_bw[..., 1]
    return ok & (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)


def warp_error(
    frames: np.ndarray,
    reference: np.ndarray | None = None,
    *,
    flows: Sequence[np.ndarray] | None = None,
) -> float:
    """Mean warp error of a clip (T, H, W, 3) in [0, 1]. ``flows[t]`` (optional, T-1 of them) is the flow
    from frame t+1 to frame t; without it, it is measured on ``reference`` (or on ``frames``)."""
    clip = np.asarray(frames, dtype=np.float32)
    if clip.ndim != 4 or clip.shape[0] < 2:
        raise InputError(f"the warp error needs a clip of at least 2 frames (T, H, W, 3), got {clip.shape}")
    ref = clip if reference is None else np.asarray(reference, dtype=np.float32)
    if ref.shape != clip.shape:
        raise InputError(f"warp error: the clip is {clip.shape} but the reference is {ref.shape}")
    if flows is not None and len(flows) != clip.shape[0] - 1:
        raise InputError(f"warp error: {len(flows)} flows given for {clip.shape[0]} frames (need T-1)")
    errors = []
    for t in range(clip.shape[0] - 1):
        if flows is not None:
            bw = np.asarray(flows[t], np.float32)
            m = np.ones(bw.shape[:2], bool)
            h, w = bw.shape[:2]
            ys, xs = np.mgrid[0:h, 0:w]
            m &= (
                (xs + bw[..., 0] >= 0)
                & (xs + bw[..., 0] <= w - 1)
                & (ys + bw[..., 1] >= 0)
                & (ys + bw[..., 1] <= h - 1)
            )
        else:
            bw = dis_flow(ref[t + 1], ref[t])
            m = reliable(bw, dis_flow(ref[t], ref[t + 1]))
        if not m.any():
            continue
        diff = (clip[t + 1] - warp(clip[t], bw)) ** 2
        errors.append(float(diff[m].sum() / (3 * m.sum())))
    if not errors:
        raise InputError("warp error: no pixel has a reliable flow in any frame pair (scene cuts only?)")
    return float(np.mean(errors))
