"""Checks on a training dataset folder before any step runs, and the resumable sample order.

The folder layout and the patch-window Dataset are ``frdm.engine.data.dataset``'s; these checks add what a
training run needs on top of it and must know before it starts (hours later is too late): every degraded
frame has its gt and mask frames, every shot has a caption, and all frames of a shot have one size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch.utils.data

from frdm.engine.errors import InputError

FRAME_GLOB_EXT = (".png", ".exr", ".tif", ".tiff", ".dpx", ".jpg", ".jpeg")


def _frame_files(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(FRAME_GLOB_EXT) and not f.startswith("."))


def _image_size(path: str) -> tuple[int, int]:
    import OpenImageIO as oiio

    inp = oiio.ImageInput.open(path)
    if inp is None:
        raise InputError(f"{path}: cannot read this image ({oiio.geterror()})")
    try:
        spec = inp.spec()
        return spec.width, spec.height
    finally:
        inp.close()


def check_training_folder(root: str | os.PathLike[str], *, what: str = "dataset") -> list[str]:
    """Check every shot folder under ``root``; return the shot names. Raises InputError naming the folder
    or file at the first problem: no shots, a missing ``gt/`` or ``mask/`` folder or frame, a missing or
    empty ``caption.txt``, or frames of different sizes within a shot."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise InputError(f"{what} folder {root} does not exist")
    shots = []
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder) or name.startswith("."):
            continue
        degraded = _frame_files(os.path.join(folder, "degraded"))
        if not degraded:
            raise InputError(f"{folder}: no frames in degraded/ (each shot needs degraded/, gt/, mask/, caption.txt)")
        for sub in ("gt", "mask"):
            sub_dir = os.path.join(folder, sub)
            if not os.path.isdir(sub_dir):
                raise InputError(f"{sub_dir}: missing; every shot needs {sub}/ frames matching degraded/")
            have = set(_frame_files(sub_dir))
            missing = [f for f in degraded if f not in have]
            if missing:
                raise InputError(
                    f"{sub_dir}: missing {len(missing)} frame(s) that degraded/ has, e.g. {missing[0]}; "
                    f"every degraded frame needs its {sub} frame"
                )
        caption = os.path.join(folder, "caption.txt")
        if not os.path.isfile(caption):
            raise InputError(f"{caption}: missing; write one line describing the shot (the global prompt)")
        with open(caption) as fh:
            if not fh.read().strip():
                raise InputError(f"{caption}: empty; write one line describing the shot (the global prompt)")
        size = None
        for sub in ("degraded", "gt", "mask"):
            for f in degraded:
                path = os.path.join(folder, sub, f)
                this = _image_size(path)
                if size is None:
                    size = (this, path)
                elif this != size[0]:
                    raise InputError(
                        f"{path}: frame is {this[0]}x{this[1]} but {size[1]} is {size[0][0]}x{size[0][1]}; "
                        "all frames of a shot must have one size"
                    )
        shots.append(name)
    if not shots:
        raise InputError(f"{what} folder {root} has no shot folders (each needs degraded/, gt/, mask/, caption.txt)")
    return shots


class ResumableSampler(torch.utils.data.Sampler[int]):
    """A seeded permutation per epoch, starting ``start`` samples in: the data order is a pure function of
    (seed, epoch), so a resumed run reads exactly the samples the uninterrupted run would have read."""

    def __init__(self, length: int, seed: int, epoch: int = 0, start: int = 0) -> None:
        self.length = length
        self.seed = seed
        self.epoch = epoch
        self.start = start

    def order(self) -> list[int]:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.length).tolist()

    def __iter__(self) -> Iterator[int]:
        order = self.order()[self.start :]
        return iter(order)

    def __len__(self) -> int:
        return self.length - self.start
