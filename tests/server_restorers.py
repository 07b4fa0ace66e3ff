"""Restorer doubles for the server tests, loaded by ``frdm serve --restorer server_restorers:NAME``.

They follow the ``frdm.engine.restorer.Restorer`` protocol without any model, so the server's queueing,
caching, cancelling and crash behaviour can be tested with controlled timing."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from frdm.engine.restorer import Clip, ProgressFn, RestoredFrame, no_progress

FAIL_VALUE = 0.125  # a target whose first pixel has this red value makes the restorer raise


class NeighbourMeanRestorer:
    """Each target becomes the mean of itself and its context neighbours (1 each side)."""

    engine_version = "test-mean-1"

    def __init__(self, frame_delay: float = 0.0):
        self.frame_delay = frame_delay

    def context(self, params: Mapping[str, Any]) -> tuple[int, int]:
        return (1, 1)

    def restore(
        self, clip: Clip, params: Mapping[str, Any], progress: ProgressFn = no_progress
    ) -> Iterator[RestoredFrame]:
        for k, target in enumerate(clip.targets):
            i = clip.index(target)
            if abs(float(clip.frames[i, 0, 0, 0]) - FAIL_VALUE) < 1e-6:
                raise RuntimeError(f"test failure requested by frame {target}")
            steps = max(1, int(self.frame_delay / 0.05))
            for s in range(steps):  # sleep in small steps, calling progress: cancel is checked there
                if self.frame_delay:
                    time.sleep(self.frame_delay / steps)
                progress(k + (s + 1) / steps, len(clip.targets), f"frame {target}")
            window = clip.frames[max(0, i - 1) : i + 2]
            image = window.mean(axis=0).astype(np.float32)
            yield RestoredFrame(target, image, np.zeros(image.shape[:2], np.float32))


def fast() -> NeighbourMeanRestorer:
    return NeighbourMeanRestorer(0.0)


def slow() -> NeighbourMeanRestorer:
    return NeighbourMeanRestorer(float(os.environ.get("FRDM_TEST_FRAME_DELAY", "0.4")))
