"""The film-restoration dataset (the paper's Sec. 4, Fig. 5): on disk, one folder per shot

    ROOT/<shot>/degraded/frame.0001.png ...   degraded frames (16-bit PNG, sRGB-encoded values in [0, 1])
    ROOT/<shot>/gt/frame.0001.png ...         the clean / professionally restored frames
    ROOT/<shot>/mask/frame.0001.png ...       binary defect masks (8-bit, 255 = defect)
    ROOT/<shot>/caption.txt                   one line describing the shot (the global prompt)
    ROOT/<shot>/defects.json                  (optional) how it was made: preset, seed, steps

and ``FilmRestorationDataset``, the torch Dataset of overlapped patch windows the training loop reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.utils.data

from frdm.engine.errors import InputError

FRAME_NAME = "frame.{:04d}.png"
SUBDIRS = ("degraded", "gt", "mask")


def _frame(pixels: np.ndarray, fmt: str):  # noqa: ANN202 - a frames.Frame
    from frdm.engine.frames import Frame

    h, w = pixels.shape[:2]
    channels = ("R", "G", "B") if pixels.shape[-1] == 3 else ("Y",)
    return Frame(np.ascontiguousarray(pixels, np.float32), channels, (fmt,) * len(channels), (0, 0, w, h), (0, 0, w, h))


def write_shot(
    root: str | os.PathLike[str],
    name: str,
    degraded: np.ndarray,
    gt: np.ndarray,
    mask: np.ndarray,
    caption: str,
    *,
    info: dict[str, Any] | None = None,
    first_frame: int = 1,
) -> str:
    """Write one shot in the dataset layout; returns its folder. degraded/gt (T, H, W, 3) in [0, 1], mask
    (T, H, W) bool."""
    from frdm.engine.frames import write_frame

    if degraded.shape != gt.shape or degraded.shape[:3] != mask.shape:
        raise InputError(f"shot {name}: degraded {degraded.shape}, gt {gt.shape} and mask {mask.shape} must match")
    folder = os.path.join(os.fspath(root), name)
    for sub in SUBDIRS:
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for i in range(degraded.shape[0]):
        fname = FRAME_NAME.format(first_frame + i)
        write_frame(os.path.join(folder, "degraded", fname), _frame(np.clip(degraded[i], 0, 1), "uint16"))
        write_frame(os.path.join(folder, "gt", fname), _frame(np.clip(gt[i], 0, 1), "uint16"))
        write_frame(os.path.join(folder, "mask", fname), _frame(mask[i, ..., None].astype(np.float32), "uint8"))
    with open(os.path.join(folder, "caption.txt"), "w") as fh:
        fh.write(caption.strip() + "\n")
    if info is not None:
        with open(os.path.join(folder, "defects.json"), "w") as fh:
            json.dump(info, fh, indent=1, default=str)
    return folder


@dataclass
class Shot:
    name: str
    folder: str
    frames: list[int]
    caption: str
    size: tuple[int, int]  # (width, height)

    def path(self, kind: str, frame: int) -> str:
        return os.path.join(self.folder, kind, FRAME_NAME.format(frame))


def list_shots(root: str | os.PathLike[str], *, strict: bool = False, what: str = "dataset") -> list[Shot]:
    """Every shot folder under ``root``, checked: the three frame folders hold the same frame numbers.

    ``strict`` adds what a training run must know before it starts (hours later is too late): every shot has
    a non-empty caption and all its frames (degraded, gt, mask) have one size. Errors name the folder or file."""
    from frdm.engine.frames import SequencePattern, format_frame_range, image_size

    root = os.fspath(root)
    if not os.path.isdir(root):
        raise InputError(f"{what} folder {root} does not exist")
    shots = []
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if not os.path.isdir(os.path.join(folder, "degraded")):
            continue
        numbers = {}
        for sub in SUBDIRS:
            if strict and not os.path.isdir(os.path.join(folder, sub)):
                raise InputError(
                    f"{os.path.join(folder, sub)}: missing; every shot needs {sub}/ frames matching degraded/"
                )
            pattern = SequencePattern.parse(os.path.join(folder, sub, "frame.####.png"))
            numbers[sub] = pattern.existing()
        if not numbers["degraded"]:
            raise InputError(f"{folder}/degraded: no frames (expected frame.0001.png ...)")
        for sub in ("gt", "mask"):
            if numbers[sub] != numbers["degraded"]:
                missing = format_frame_range(sorted(set(numbers["degraded"]) - set(numbers[sub]))) or "none"
                extra = format_frame_range(sorted(set(numbers[sub]) - set(numbers["degraded"]))) or "none"
                raise InputError(
                    f"{folder}: {sub}/ does not match degraded/ (missing frames {missing}, extra frames {extra}); "
                    "every frame needs a degraded, gt and mask image"
                )
        cap_path = os.path.join(folder, "caption.txt")
        caption = ""
        if os.path.exists(cap_path):
            with open(cap_path) as fh:
                caption = fh.read().strip()
        if strict and not os.path.exists(cap_path):
            raise InputError(f"{cap_path}: missing; write one line describing the shot (the global prompt)")
        if strict and not caption:
            raise InputError(f"{cap_path}: empty; write one line describing the shot (the global prompt)")
        first_path = os.path.join(folder, "degraded", FRAME_NAME.format(numbers["degraded"][0]))
        size = image_size(first_path)
        if strict:
            for sub in SUBDIRS:
                for n in numbers["degraded"]:
                    path = os.path.join(folder, sub, FRAME_NAME.format(n))
                    this = image_size(path)
                    if this != size:
                        raise InputError(
                            f"{path}: frame is {this[0]}x{this[1]} but {first_path} is {size[0]}x{size[1]}; "
                            "all frames of a shot must have one size"
                        )
        shots.append(Shot(name, folder, numbers["degraded"], caption, size))
    if not shots:
        raise InputError(f"{what} folder {root} has no shot folders (each needs degraded/, gt/, mask/ and caption.txt)")
    return shots


def window_starts(length: int, size: int, overlap: int) -> list[int]:
    """Starts of windows of ``size`` over ``length`` with at least ``overlap`` shared, the last flush with
    the end (so every position is covered)."""
    if size >= length:
        return [0]
    step = max(1, size - overlap)
    starts = list(range(0, length - size + 1, step))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


class FilmRestorationDataset(torch.utils.data.Dataset):
    """Overlapped patch windows over the shots of a dataset folder (a ``torch.utils.data.Dataset``).

    Item ``i`` is one (shot, temporal window, spatial patch) cell of a grid of windows of ``num_frames``
    frames (consecutive windows share ``frame_overlap``) and ``patch_size`` square patches (neighbours share
    ``patch_overlap`` pixels). With ``random_position`` the patch moves to a random position inside its
    cell's neighbourhood (and the window to a random start) on every read, seeded by (``seed``, epoch, i):
    set ``dataset.epoch`` each epoch for new positions (DataLoader workers see it when they start: keep
    ``persistent_workers=False``, the default, or set it in the workers too).

    Each item is a dict:

    - ``degraded``: float32 tensor (F, 3, P, P) in [0, 1], the degraded patch of F frames
    - ``gt``: float32 tensor (F, 3, P, P) in [0, 1], the same patch of the clean frames
    - ``mask``: float32 tensor (F, 1, P, P), 1 = defect pixel
    - ``box``: float32 tensor (4,), the patch's box in the full frame, normalised: (x0, y0, x1, y1) in [0, 1]
    - ``global_frame``: float32 tensor (F, 3, h, w) in [0, 1], the whole degraded frame resized to
      ``global_size`` (the model's ``FRDMConfig.global_frame_size`` by default) by the model's own
      ``resize_global_frame``, so training conditions on the pixels inference computes for the same frame
    - ``caption``: str, the shot's caption
    - ``shot``: str and ``frames``: list[int], where the item came from (for logging)

    Frames smaller than ``patch_size`` are padded by reflection (the box still describes the real frame);
    clips shorter than ``num_frames`` repeat their last frame.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        num_frames: int = 16,
        patch_size: int = 512,
        patch_overlap: int = 128,
        frame_overlap: int = 4,
        global_size: int | tuple[int, int] | None = None,
        random_position: bool = True,
        seed: int = 0,
        shots: Sequence[Shot] | None = None,
    ) -> None:
        if patch_overlap * 2 > patch_size:
            raise InputError(f"patch_overlap ({patch_overlap}) must be at most half of patch_size ({patch_size})")
        if frame_overlap >= num_frames and num_frames > 1:
            raise InputError(f"frame_overlap ({frame_overlap}) must be smaller than num_frames ({num_frames})")
        self.shots = list(shots) if shots is not None else list_shots(root)
        self.num_frames = num_frames
        self.patch_size = patch_size
        self.patch_overlap = patch_overlap
        self.frame_overlap = frame_overlap
        if global_size is None:
            from frdm.engine.models.config import FRDMConfig

            global_size = FRDMConfig.global_frame_size
        self.global_size = global_size
        self.random_position = random_position
        self.seed = seed
        self.epoch = 0
        self.items: list[tuple[int, int, int, int]] = []  # (shot, first frame index, y, x)
        for s, shot in enumerate(self.shots):
            w, h = shot.size
            for t in window_starts(len(shot.frames), num_frames, frame_overlap):
                for y in window_starts(h, patch_size, patch_overlap):
                    for x in window_starts(w, patch_size, patch_overlap):
                        self.items.append((s, t, y, x))

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, shot: Shot, kind: str, frame: int) -> np.ndarray:
        from frdm.engine.frames import read_frame

        px = read_frame(shot.path(kind, frame)).pixels
        if kind == "mask":
            return (px[..., :1] > 0.5).astype(np.float32)
        return px[..., :3] if px.shape[-1] >= 3 else np.repeat(px[..., :1], 3, -1)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        from frdm.engine.models.conditioning import resize_global_frame

        s, t, y, x = self.items[index]
        shot = self.shots[s]
        w, h = shot.size
        P, F = self.patch_size, self.num_frames
        if self.random_position:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            step = max(1, P - self.patch_overlap)
            if w > P:
                x = int(np.clip(x + rng.integers(-step // 2, step // 2 + 1), 0, w - P))
            if h > P:
                y = int(np.clip(y + rng.integers(-step // 2, step // 2 + 1), 0, h - P))
            if len(shot.frames) > F:
                t = int(rng.integers(0, len(shot.frames) - F + 1))
        idx = [min(t + i, len(shot.frames) - 1) for i in range(F)]
        numbers = [shot.frames[i] for i in idx]
        out: dict[str, list[np.ndarray]] = {"degraded": [], "gt": [], "mask": [], "global_frame": []}
        for n in numbers:
            full = {k: self._read(shot, k, n) for k in SUBDIRS}
            chw = torch.from_numpy(np.ascontiguousarray(full["degraded"].transpose(2, 0, 1), np.float32))
            out["global_frame"].append(resize_global_frame(chw, self.global_size).numpy().transpose(1, 2, 0))
            for k in SUBDIRS:
                img = full[k]
                if img.shape[0] < P or img.shape[1] < P:
                    ph, pw = max(0, P - img.shape[0]), max(0, P - img.shape[1])
                    img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect")
                out[k].append(img[y : y + P, x : x + P])

        def stack(arrs: list[np.ndarray]) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(np.stack(arrs).transpose(0, 3, 1, 2), np.float32))

        box = torch.tensor([x / w, y / h, min(x + P, w) / w, min(y + P, h) / h], dtype=torch.float32)
        return {
            "degraded": stack(out["degraded"]),
            "gt": stack(out["gt"]),
            "mask": stack(out["mask"]),
            "box": box,
            "global_frame": stack(out["global_frame"]),
            "caption": shot.caption,
            "shot": shot.name,
            "frames": numbers,
        }
