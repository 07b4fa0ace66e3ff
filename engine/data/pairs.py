"""Defect masks from real (degraded, professionally restored) pairs (the paper's Sec. 4, "Real Film Data").

Restored releases are rarely pixel-aligned with the scan they came from, are often regraded or deflickered,
and the grain differs. So for each pair:

1. align the restored frame onto the degraded one: a sub-pixel shift by phase correlation, refined to an
   affine map by ECC (``align="affine"``), or only the shift (``align="shift"``);
2. match the restored frame's colour to the degraded one with a robust per-channel gain and offset (removes
   regrading and flicker correction, which are not defects);
3. threshold the difference against the noise level measured on the pair itself (grain-level differences
   are ignored), with a tolerance that grows with the local gradient (what a sub-pixel misregistration
   leaves along edges), and grow strong seeds into weaker neighbouring differences (hysteresis);
4. reject the pair, with the reason, when what is left is structural rather than defects: the frames do not
   correlate after alignment, the alignment is implausible, the differences cover too much of the frame, or
   they follow the image's edges (a warp the alignment could not undo).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from frdm.engine.errors import InputError


@dataclass
class PairResult:
    accepted: bool
    reason: str  # why it was rejected ("" when accepted)
    mask: np.ndarray | None  # (H, W) bool in the degraded frame's pixels; None when rejected
    transform: np.ndarray  # (2, 3) degraded pixel -> restored pixel
    stats: dict[str, Any] = field(default_factory=dict)


def _grey(img: np.ndarray) -> np.ndarray:
    return (img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114).astype(np.float32)


def _residual(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> float:
    import cv2

    h, w = a.shape
    warped = cv2.warpAffine(b, m.astype(np.float32), (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    inner = (slice(h // 16, h - h // 16), slice(w // 16, w - w // 16))  # away from the borders
    d = np.abs(a[inner] - warped[inner])
    return float(np.mean(np.minimum(d, 0.05)))  # defects are outliers: their pull is capped


def estimate_alignment(degraded: np.ndarray, restored: np.ndarray, align: str = "affine") -> tuple[np.ndarray, float]:
    """(2, 3) map from degraded pixels to restored pixels, and the phase-correlation peak response.

    Phase correlation gives the shift; a search on a robust residual settles it to ~0.1 px.
    An affine refinement (ECC, started from the shift) is kept only if it fits better than the shift: ECC
    alone drifts into spurious scale on grainy frames."""
    import cv2

    if align not in ("affine", "shift", "none"):
        raise InputError(f"unknown alignment '{align}' (use affine, shift or none)")
    m = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    if align == "none":
        return m, 1.0
    a, b = _grey(degraded), _grey(restored)
    h, w = a.shape
    window = cv2.createHanningWindow((w, h), cv2.CV_32F)
    (dx, dy), response = cv2.phaseCorrelate(a, b, window)
    # settle the last fraction of a pixel on a robust residual (phase correlation is pulled ~0.1-0.3 px by
    # defects and by content near the window's edge)
    best = (_residual(a, b, np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])), dx, dy)
    for reach, step in ((0.3, 0.1), (0.05, 0.025)):  # coarse, then fine around the best
        cx, cy = best[1], best[2]
        for ox in np.arange(-reach, reach + 1e-6, step):
            for oy in np.arange(-reach, reach + 1e-6, step):
                r = _residual(a, b, np.array([[1.0, 0.0, cx + ox], [0.0, 1.0, cy + oy]]))
                if r < best[0]:
                    best = (r, cx + ox, cy + oy)
    dx, dy = best[1], best[2]
    m = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])
    if align == "affine":
        try:
            criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 500, 1e-7)
            # smoothed first (wider basin), then unsmoothed from there (no bias from the smoothing)
            _, affine = cv2.findTransformECC(a, b, m.astype(np.float32), cv2.MOTION_AFFINE, criteria, None, 5)
            _, affine = cv2.findTransformECC(a, b, affine, cv2.MOTION_AFFINE, criteria, None, 1)
            affine = affine.astype(np.float64)
            # ECC can run off into a spurious zoom on grainy, damaged frames: keep it only if it stays near
            # the shift where it matters (the frame's centre) and fits better
            centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0, 1.0])
            plausible = np.abs(affine[:, :2] - np.eye(2)).max() < 0.05 and np.abs((affine - m) @ centre).max() < 3
            if plausible and _residual(a, b, affine) < _residual(a, b, m) * 0.98:
                m = affine
        except cv2.error:
            pass  # keep the shift: ECC fails on flat frames; the checks below judge the result
    return m, float(response)


def _robust_colour_match(src: np.ndarray, dst: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-channel gain/offset taking ``src`` to ``dst``, fitted twice: the second fit ignores outliers
    (the defects themselves)."""
    out = np.empty_like(src)
    for c in range(3):
        x, y = src[..., c][valid], dst[..., c][valid]
        keep = np.ones(x.shape, bool)
        gain, off = 1.0, 0.0
        for _ in range(2):
            if keep.sum() < 16:
                break
            gain, off = np.polyfit(x[keep], y[keep], 1)
            r = y - (gain * x + off)
            s = 1.4826 * np.median(np.abs(r - np.median(r))) + 1e-6
            keep = np.abs(r) < 3 * s
        out[..., c] = gain * src[..., c] + off
    return out


def pair_mask(
    degraded: np.ndarray,
    restored: np.ndarray,
    *,
    align: str = "affine",
    k_high: float = 5.0,
    k_low: float = 2.0,
    min_contrast: float = 0.02,
    edge_tolerance: float = 0.25,
    grow: int = 0,
    min_correlation: float = 0.8,
    max_shift: float = 0.05,
    max_defect_fraction: float = 0.15,
    max_edge_fraction: float = 0.5,
    max_detail_ratio: float = 2.5,
) -> PairResult:
    """Binary defect mask of ``degraded`` (H, W, 3) given its professionally ``restored`` version (H, W, 3),
    both in [0, 1]; or a rejection with the reason. See the module docstring for the method.

    ``edge_tolerance`` is the misregistration (pixels) forgiven along edges; ``max_shift`` the largest
    plausible alignment shift as a fraction of the frame's width; ``max_detail_ratio`` how much stronger
    differences may be on picture detail than on flat areas (grain alone gives ~1.3-1.8 on film-like frames;
    a residual misregistration 3 and more)."""
    import cv2

    deg = np.asarray(degraded, np.float32)
    res = np.asarray(restored, np.float32)
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    if deg.shape != res.shape:
        return PairResult(
            False,
            f"sizes differ: degraded {deg.shape[1]}x{deg.shape[0]}, restored "
            f"{res.shape[1]}x{res.shape[0]} (re-export at the scan's size)",
            None,
            identity,
        )
    if deg.ndim != 3 or deg.shape[-1] != 3:
        raise InputError(f"pair_mask needs RGB images (H, W, 3), got {deg.shape}")
    H, W = deg.shape[:2]
    m, response = estimate_alignment(deg, res, align)
    # Two passes: defects pull the alignment a little, so the second pass aligns the degraded frame with
    # the first pass's defects filled from the restored one.
    mask, matched = np.zeros((H, W), bool), deg  # set by the first pass
    for pass_ in range(2 if align != "none" else 1):
        if pass_ == 1:
            hide = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            m, response = estimate_alignment(np.where(hide[..., None], matched, deg), res, align)
        stats: dict[str, Any] = {"shift": [float(m[0, 2]), float(m[1, 2])], "phase_response": response}
        lin = m[:, :2]
        if abs(m[0, 2]) > max_shift * W or abs(m[1, 2]) > max_shift * W:
            return PairResult(
                False,
                f"alignment needs a shift of ({m[0, 2]:.1f}, {m[1, 2]:.1f}) px, more than "
                f"{max_shift:.0%} of the width: a different frame or framing?",
                None,
                m,
                stats,
            )
        if np.abs(lin - np.eye(2)).max() > 0.05:
            return PairResult(
                False,
                "alignment needs more than 5% scale/rotation/shear: re-framed or a different shot",
                None,
                m,
                stats,
            )
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        warped = cv2.warpAffine(
            res,
            m.astype(np.float32),
            (W, H),
            flags=flags,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(-1.0, -1.0, -1.0),
        )
        valid = (warped >= 0).all(-1)
        valid = cv2.erode(valid.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        if valid.sum() < 0.5 * H * W:
            return PairResult(False, "less than half of the frame overlaps after alignment", None, m, stats)
        matched = _robust_colour_match(np.where(valid[..., None], warped, 0.0), deg, valid)

        g_deg, g_res = _grey(deg)[valid], _grey(matched)[valid]
        corr = float(np.corrcoef(g_deg, g_res)[0, 1]) if g_deg.std() > 1e-6 and g_res.std() > 1e-6 else 0.0
        stats["correlation"] = corr
        if corr < min_correlation:
            return PairResult(
                False,
                f"the frames do not match after alignment (correlation {corr:.2f} < "
                f"{min_correlation}): a different shot or frame, or a heavy regrade",
                None,
                m,
                stats,
            )

        # noise (grain) level of each channel's difference, robustly: most pixels hold no defect
        d = deg - matched
        sig = np.array([1.4826 * np.median(np.abs(d[..., c][valid] - np.median(d[..., c][valid]))) for c in range(3)])
        sig = np.maximum(sig, 1e-4)
        noise = float(sig.max())
        stats["noise_sigma"] = noise
        gx = cv2.Sobel(_grey(matched), cv2.CV_32F, 1, 0, ksize=3) / 8.0
        gy = cv2.Sobel(_grey(matched), cv2.CV_32F, 0, 1, ksize=3) / 8.0
        gradient = np.sqrt(gx * gx + gy * gy)
        # grain is about as strong on flat areas as on detail; a misregistration leaves differences that
        # grow with the picture's gradient
        g_valid, d_valid = gradient[valid], np.abs(_grey(deg) - _grey(matched))[valid]
        lo_g, hi_g = np.percentile(g_valid, [30, 70])
        # (floored at about one 8-bit step: clean digital pairs have next to no difference anywhere)
        flat = max(float(np.median(d_valid[g_valid <= lo_g])), 0.004)
        detail = float(np.median(d_valid[g_valid >= hi_g]))
        ratio = detail / flat
        stats["detail_noise_ratio"] = ratio
        if ratio > max_detail_ratio and detail > min_contrast / 2:
            hint = "" if align == "affine" else "; try --align affine"
            return PairResult(
                False,
                f"the differences grow with picture detail ({ratio:.1f}x stronger on detail "
                f"than on flat areas, more than {max_detail_ratio}): misaligned beyond what the "
                f"alignment fixes (rotation, zoom, warp){hint}",
                None,
                m,
                stats,
            )
        tolerance = edge_tolerance * cv2.dilate(gradient, np.ones((3, 3), np.uint8))
        excess_high = np.abs(d) - np.maximum(k_high * sig, min_contrast) - tolerance[..., None]
        excess_low = np.abs(d) - np.maximum(k_low * sig, min_contrast / 2) - tolerance[..., None]
        high = (excess_high > 0).any(-1) & valid
        low = (excess_low > 0).any(-1) & valid
        n, labels = cv2.connectedComponents(low.astype(np.uint8), connectivity=8)
        seeded = np.zeros(n, bool)
        seeded[np.unique(labels[high])] = True
        seeded[0] = False
        mask = seeded[labels]
        if grow > 0:
            k = 2 * grow + 1
            mask = cv2.dilate(mask.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool) & valid

    fraction = float(mask.sum() / valid.sum())
    stats["defect_fraction"] = fraction
    if fraction > max_defect_fraction:
        return PairResult(
            False,
            f"differences cover {fraction:.0%} of the frame (more than "
            f"{max_defect_fraction:.0%}): regraded, re-framed, or not the same picture",
            None,
            m,
            stats,
        )
    if mask.sum() >= 50:
        strong_edges = gradient > max(0.02, 4 * noise)
        edge_share = float((mask & strong_edges).sum() / mask.sum())
        edge_base = float(strong_edges[valid].mean())
        stats["edge_fraction"] = edge_share
        # defects fall on edges about as often as anywhere; a warp leaves differences *along* edges
        if edge_share > max_edge_fraction and edge_share > 3 * edge_base:
            return PairResult(
                False,
                f"{edge_share:.0%} of the differences lie on image edges: a local warp or "
                "lens change that the alignment cannot undo",
                None,
                m,
                stats,
            )
    return PairResult(True, "", mask, m, stats)
