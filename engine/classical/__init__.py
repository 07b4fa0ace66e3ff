"""The classical detect-then-restore engine (no weights needed)."""

from frdm.engine.classical.detect import ScratchDetector, SpikeDetector
from frdm.engine.classical.restorer import ClassicalRestorer

__all__ = ["ClassicalRestorer", "ScratchDetector", "SpikeDetector"]
