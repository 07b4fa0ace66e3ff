"""The restorer interface shared by the classical and the diffusion engines.

A restorer sees a ``Clip``: frames in the model's display-referred [0, 1] RGB space (converted when it first
reads them: ``Clip.frames``), the frame numbers they carry, and which of them it must produce (the rest are
temporal context). It yields one ``RestoredFrame`` per target, in order. Blending with masks, colour
conversion and file writing happen around it (``engine/pipeline.py``), so both engines get them identically.

Progress and cancellation share one callback: ``progress(done, total, message)``; a caller cancels by raising
``CancelledError`` from it, which the restorer lets propagate (it checks between steps).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

ProgressFn = Callable[[float, float, str], None]


def no_progress(done: float, total: float, message: str) -> None:
    """The default progress callback: ignores everything."""


@dataclass
class Clip:
    frames: np.ndarray  # (T, H, W, 3) float32, model space, values in [0, 1] (a property: see below)
    frame_numbers: list[int]  # T numbers, increasing (may have gaps only if the source has)
    targets: list[int]  # numbers to restore (a subset of frame_numbers); the others are context
    valid: np.ndarray | None = None  # (T, H, W) bool: pixel exists (outside a data window it does not)
    # Fills ``frames`` on their first read (the pipeline's window converts its frames into model space only
    # then): a restorer that never reads them, one that leaves its targets as they came
    # (``RestoredFrame.unchanged``), costs no conversion. Called once, under the clip's lock.
    convert: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        if self._frames.ndim != 4 or self._frames.shape[-1] != 3:
            raise ValueError(f"Clip.frames must be (T, H, W, 3), got {self._frames.shape}")
        if len(self.frame_numbers) != self._frames.shape[0]:
            raise ValueError("Clip.frame_numbers must have one number per frame")
        missing = set(self.targets) - set(self.frame_numbers)
        if missing:
            raise ValueError(f"Clip.targets {sorted(missing)} are not in the clip")

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of every frame, known without converting any."""
        return int(self._frames.shape[1]), int(self._frames.shape[2])

    def index(self, frame_number: int) -> int:
        return self.frame_numbers.index(frame_number)


def _get_frames(clip: Clip) -> np.ndarray:
    if clip.convert is not None:
        with clip._lock:  # two threads of one restorer reading at once: one conversion, both see it done
            if clip.convert is not None:
                clip.convert()
                clip.convert = None
    return clip._frames


def _set_frames(clip: Clip, frames: np.ndarray) -> None:
    clip._frames = frames


# ``frames`` is a dataclass field (the constructor) held through this property: read, it is converted first.
Clip.frames = property(_get_frames, _set_frames, doc="(T, H, W, 3) float32 model-space frames.")  # type: ignore[assignment]


@dataclass
class RestoredFrame:
    frame_number: int
    # (H, W, 3) float32, model space; None: the frame as it came (nothing changed; the restorer need not
    # have read it).
    image: np.ndarray | None
    matte: np.ndarray | None  # (H, W) float32 in [0, 1]: the detected defects (the "auto" mask); None: none
    # (H, W, 3) when the engine changed every pixel on purpose (classical deflicker): the frame the auto mask
    # blends ``image`` into instead of the source. None: outside the mask the source stays as it was.
    base: np.ndarray | None = None

    @classmethod
    def unchanged(cls, frame_number: int) -> RestoredFrame:
        """A target left as it came, no defect found: what a restorer that reads no pixels yields."""
        return cls(frame_number, None, None)


class Restorer(Protocol):
    """What the pipeline, the server and the farm need from an engine."""

    #: Goes into every cache key and into the written frames' metadata: bump it when results change.
    engine_version: str

    def context(self, params: Mapping[str, Any]) -> tuple[int, int]:
        """Frames needed before and after each target (like OpenFX getFramesNeeded)."""
        ...

    def restore(
        self, clip: Clip, params: Mapping[str, Any], progress: ProgressFn = no_progress
    ) -> Iterator[RestoredFrame]:
        """Yield one RestoredFrame per clip target, in increasing frame order."""
        ...


def create_restorer(engine: str, *, weights: str | None = None, device: str | None = None) -> Restorer:
    """The restorer for ``engine``. Imports lazily: the classical engine never loads torch."""
    from frdm.engine.errors import InputError

    if engine == "classical":
        from frdm.engine.classical import ClassicalRestorer

        return ClassicalRestorer()
    if engine == "diffusion":
        try:
            from frdm.engine.diffusion import DiffusionRestorer  # type: ignore[import-not-found]
        except ImportError as exc:
            raise InputError(f"the diffusion engine is not available in this install ({exc})") from None
        if not weights:
            raise InputError("the diffusion engine needs --weights DIR (a folder of local safetensors files)")
        return DiffusionRestorer.from_weights(weights, device=device)
    raise InputError(f"unknown engine '{engine}' (use classical or diffusion)")
