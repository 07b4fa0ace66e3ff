"""Reading clips for synthesis and evaluation: a movie, an image sequence or a still as (T, H, W, 3) float32."""

from __future__ import annotations

import numpy as np

from frdm.engine.errors import InputError


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'480x270' -> (480, 270); None stays None."""
    if not text:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"size '{text}': use WIDTHxHEIGHT, e.g. 480x270") from None
    if w < 16 or h < 16:
        raise InputError(f"size '{text}' is too small (at least 16x16)")
    return w, h


def read_clip(
    spec: str, frames: list[int] | None = None, size: tuple[int, int] | None = None, max_frames: int | None = None
) -> tuple[np.ndarray, list[int]]:
    """Frames of a movie / sequence / still as RGB float32 (values as stored: display-referred for PNG,
    JPEG, movies), optionally resized (area filter) to ``size`` (w, h)."""
    import cv2

    from frdm.engine.frames import open_source

    src = open_source(spec)
    numbers = frames or src.frame_numbers
    if max_frames:
        numbers = numbers[:max_frames]
    src.check_frames(numbers)
    out = []
    for n in numbers:
        fr = src.read(n)
        px = fr.pixels[..., fr.rgb_indices()]
        if size and (px.shape[1], px.shape[0]) != size:
            px = cv2.resize(px, size, interpolation=cv2.INTER_AREA)
        out.append(px)
    if hasattr(src, "close"):
        src.close()
    shapes = {a.shape for a in out}
    if len(shapes) > 1:
        raise InputError(f"{spec}: frames differ in size ({', '.join(map(str, shapes))}); give --size")
    return np.clip(np.stack(out), 0.0, 1.0).astype(np.float32), list(numbers)


def read_masks(spec: str, frames: list[int], size: tuple[int, int] | None = None) -> np.ndarray:
    """Binary masks (T, H, W) from a sequence: alpha if present, else the first channel, > 0.5."""
    import cv2

    from frdm.engine.frames import open_source

    src = open_source(spec)
    src.check_frames(frames)
    out = []
    for n in frames:
        fr = src.read(n)
        ch = fr.channels.index("A") if "A" in fr.channels else 0
        m = fr.pixels[..., ch]
        if size and (m.shape[1], m.shape[0]) != size:
            m = cv2.resize(m, size, interpolation=cv2.INTER_NEAREST)
        out.append(m > 0.5)
    return np.stack(out)
