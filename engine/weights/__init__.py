"""Offline weight loading for HaineiFRDM (safetensors only, never a hub). See docs/weights.md."""

from .backbone import load_clip_text, load_clip_vision, load_motion_adapter, load_sd15
from .frdm_weights import FORMAT_VERSION, load_frdm_weights, read_frdm_header, save_frdm_weights
from .model import WeightsLayout, describe_weights, find_weights, load_model

__all__ = [
    "FORMAT_VERSION",
    "WeightsLayout",
    "describe_weights",
    "find_weights",
    "load_clip_text",
    "load_clip_vision",
    "load_frdm_weights",
    "load_model",
    "load_motion_adapter",
    "load_sd15",
    "read_frdm_header",
    "save_frdm_weights",
]
