"""Checks on a training dataset folder before any step runs, and the resumable sample order.

The folder layout, its checks and the patch-window Dataset are ``frdm.engine.data.dataset``'s; a training
run asks for its strict listing before it starts (hours later is too late).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch.utils.data


def check_training_folder(root: str | os.PathLike[str], *, what: str = "dataset") -> list[str]:
    """Check every shot folder under ``root`` (the dataset's own strict listing); return the shot names.
    Raises InputError naming the folder or file at the first problem: no shots, a missing ``gt/`` or
    ``mask/`` folder or frame, a missing or empty ``caption.txt``, or frames of different sizes in a shot."""
    from frdm.engine.data.dataset import list_shots

    return [shot.name for shot in list_shots(root, strict=True, what=what)]


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
