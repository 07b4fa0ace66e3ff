"""The HaineiFRDM networks (paper Sec. 3.1, Fig. 2).

Names are imported on first use (PEP 562): ``frdm.engine.models.config`` and ``.conditioning`` need no
diffusers, so the training dataset can share the conditioning resize and the config defaults without pulling
the networks into every DataLoader worker. ``from frdm.engine.models import HaineiFRDM`` imports torch and
diffusers as before.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FRDMConfig": ".config",
    "FRDMOutput": ".frdm",
    "HaineiFRDM": ".frdm",
    "FourierEmbedder": ".fusion",
    "GlobalFrameFusion": ".fusion",
    "GlobalPromptFusion": ".fusion",
    "LocationFusion": ".fusion",
    "RestorationGuidanceNetwork": ".guidance",
    "PreprocessModule": ".preprocess",
    "FrequencyReference": ".texture",
    "TextureReconstruction": ".texture",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
