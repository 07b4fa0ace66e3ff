"""The paper's three synthetic test settings (Sec. 5.1), built from the shared clean clips with fixed seeds:

- ``mixed``: Big Buck Bunny (slow, CGI), preset ``mixed``;
- ``scratch``: bikes (live action), preset ``scratch``;
- ``noisy-fast-motion``: a fast pan/zoom/rotation over a Big Buck Bunny still (cartoon, like the paper's),
  preset ``noisy-fast-motion``.
"""

from __future__ import annotations

import os

import numpy as np

from frdm.engine.errors import InputError

SETTINGS = ("mixed", "scratch", "noisy-fast-motion")


def build_setting(
    name: str,
    clean_dir: str,
    *,
    size: tuple[int, int] = (384, 216),
    n_frames: int = 12,
    seed: int = 7,
    speed: float = 24.0,
) -> dict[str, np.ndarray]:
    """{'degraded', 'gt', 'mask'} for one setting. Deterministic for the same arguments."""
    from frdm.engine.data.clips import read_clip
    from frdm.engine.data.motion import fast_motion
    from frdm.engine.data.synthesis import synthesize

    bunny = os.path.join(clean_dir, "bigbuckbunny.mp4")
    bikes = os.path.join(clean_dir, "bikes.mp4")
    for path in (bunny, bikes):
        if not os.path.exists(path):
            raise InputError(f"{path}: missing; --clean must be the folder with bigbuckbunny.mp4 and bikes.mp4")
    if name == "mixed":
        gt, _ = read_clip(bunny, list(range(1, n_frames + 1)), size)
    elif name == "scratch":
        # bikes is 640x272: keep its aspect at the requested width
        w = size[0]
        gt, _ = read_clip(bikes, list(range(1, n_frames + 1)), (w, int(round(w * 272 / 640 / 2)) * 2))
    elif name == "noisy-fast-motion":
        still, _ = read_clip(bunny, [60])
        # film the still at twice the output size so the pan has room, then the camera moves `speed` px/frame
        mc = fast_motion(still[0], n_frames, size, speed=speed, zoom_per_frame=0.004, rotate_deg_per_frame=0.15)
        gt = mc.frames
    else:
        raise InputError(f"unknown setting '{name}' (use {', '.join(SETTINGS)})")
    syn = synthesize(gt, name, seed)
    return {"degraded": syn.degraded, "gt": gt, "mask": syn.mask}
