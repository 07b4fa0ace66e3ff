"""FRDM's trainable weights: one safetensors file; its header holds the config JSON and a format version."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from frdm.engine.atomic import atomic_path
from frdm.engine.errors import WeightsError

from .files import check_state_dict, load_tensors, read_header, require_safetensors

if TYPE_CHECKING:
    from frdm.engine.models import FRDMConfig, HaineiFRDM

FORMAT_NAME = "frdm-trainable"
FORMAT_VERSION = 1


def trainable_state_dict(model: HaineiFRDM) -> dict:
    modules = model.trainable_modules()
    return {f"{name}.{k}": v for name, module in modules.items() for k, v in module.state_dict().items()}


def save_frdm_weights(path: str | os.PathLike, model: HaineiFRDM) -> Path:
    """Write preprocess + guidance weights atomically (temp file + rename) with the config in the header."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in trainable_state_dict(model).items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "config": model.config.to_json(),
    }
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata=metadata)
    return path


def read_frdm_header(path: str | os.PathLike) -> tuple[FRDMConfig, int]:
    """The config and format version stored in an FRDM weights file (reads only the header)."""
    from frdm.engine.models import FRDMConfig

    path = require_safetensors(Path(path), "FRDM weights")
    metadata, _ = read_header(path)
    if metadata.get("format") != FORMAT_NAME:
        raise WeightsError(f"{path}: not an FRDM weights file (header format={metadata.get('format')!r})")
    try:
        version = int(metadata.get("format_version", ""))
    except ValueError as exc:
        raise WeightsError(f"{path}: FRDM weights header has no valid format_version") from exc
    if version > FORMAT_VERSION:
        raise WeightsError(
            f"{path}: FRDM weights format {version} is newer than this FRDM understands ({FORMAT_VERSION}); "
            "upgrade FRDM"
        )
    try:
        config = FRDMConfig.from_json(metadata["config"])
    except (KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path}: FRDM weights header has no valid config ({exc})") from exc
    return config, version


def load_frdm_weights(path: str | os.PathLike, model: HaineiFRDM, *, assign: bool = False) -> None:
    """Load preprocess + guidance weights into ``model``, strictly, in place (its device and dtype stay)."""
    path = Path(path)
    config, _ = read_frdm_header(path)
    mine, theirs = model.config.to_dict(), config.to_dict()
    mine.pop("extra"), theirs.pop("extra")
    if mine != theirs:
        diff = sorted(k for k in mine if mine[k] != theirs.get(k))
        raise WeightsError(
            f"{path}: these weights were trained with a different configuration "
            f"(fields differ: {', '.join(diff)}); build the model from the file's config"
        )
    state = load_tensors(path, "FRDM weights")
    check_state_dict(trainable_state_dict(model), state, path, "FRDM trainable weights")
    for name, module in model.trainable_modules().items():
        prefix = name + "."
        own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        # assign=True replaces the tensors (for modules built on empty weights) instead of copying into them.
        module.load_state_dict(own, strict=True, assign=assign)
