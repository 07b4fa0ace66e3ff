"""A before/after contact sheet: for a few frames, the source, the restored frame and the defect matte
over the source (red), side by side in one PNG. A picture says more than a number here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from frdm.engine.atomic import atomic_path
from frdm.engine.color import resolve_colorspace, to_model
from frdm.engine.frames import Frame, SequencePattern, Source, read_frame

MATTE = "frdm.matte"


def _display(frame: Frame, params: Mapping[str, Any], colorspace: str) -> np.ndarray:
    rgb = frame.pixels[..., frame.rgb_indices()]
    return np.clip(to_model(rgb, colorspace, params["ocio_config"]), 0.0, 1.0)


def _overlay(rgb: np.ndarray, matte: np.ndarray) -> np.ndarray:
    m = np.clip(matte, 0.0, 1.0)[..., None]
    return rgb * (1 - 0.6 * m) + np.array([1.0, 0.1, 0.1], np.float32) * 0.6 * m


def _label(img: np.ndarray, text: str) -> np.ndarray:
    """8-bit RGB tile with a caption (OpenCV draws text on 8-bit images only)."""
    out = np.ascontiguousarray((np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8))
    cv2.putText(out, text, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def write_contact_sheet(
    path: str,
    source: Source,
    out: SequencePattern,
    frames: Sequence[int],
    params: Mapping[str, Any],
    rows: int = 4,
    max_width: int = 1800,
) -> None:
    frames = list(frames)
    pick = [frames[int(i)] for i in np.linspace(0, len(frames) - 1, min(rows, len(frames)))]
    tiles = []
    for n in dict.fromkeys(pick):
        original = source.read(n)
        # the source decides 'auto' for both: the restored file may be of another type (a PNG scan -> EXR)
        space = resolve_colorspace(params["colorspace"], original, params["ocio_config"])
        before = _display(original, params, space)
        restored = read_frame(out.path(n))
        after = _display(restored, params, space)
        matte = (
            restored.pixels[..., restored.channels.index(MATTE)]
            if MATTE in restored.channels
            else np.zeros(after.shape[:2], np.float32)
        )
        row = np.concatenate(
            [
                _label(before, f"{n} before"),
                _label(after, f"{n} after"),
                _label(_overlay(before, matte), f"{n} defect matte"),
            ],
            axis=1,
        )
        tiles.append(row)
    sheet = np.concatenate(tiles, axis=0)
    if sheet.shape[1] > max_width:
        scale = max_width / sheet.shape[1]
        sheet = cv2.resize(sheet, (max_width, int(sheet.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    from frdm.engine.errors import InputError

    try:
        with atomic_path(path) as tmp:  # the temporary keeps the .png name OpenCV picks the format by
            if not cv2.imwrite(tmp, np.ascontiguousarray(sheet[..., ::-1])):
                raise InputError(f"{path}: cannot write the contact sheet here (check the folder and the .png name)")
    except OSError as exc:
        raise InputError(f"{path}: cannot write the contact sheet here ({exc.strerror or exc})") from None
