"""Reading safetensors files with errors a person can act on. Never pickle: .ckpt/.bin/.pt are refused."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from frdm.engine.errors import WeightsError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PICKLE_SUFFIXES = {".ckpt", ".bin", ".pt", ".pth", ".pkl"}


def require_safetensors(path: Path, what: str) -> Path:
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise WeightsError(
            f"{path}: {what} is a pickle file ({path.suffix}); FRDM only loads .safetensors. "
            "Convert it once (see docs/weights.md) and point FRDM at the .safetensors file."
        )
    if not path.is_file():
        raise WeightsError(f"{path}: {what} not found")
    if path.suffix.lower() != ".safetensors":
        raise WeightsError(f"{path}: {what} must be a .safetensors file")
    return path


def read_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, ...]]]]:
    """(metadata, {key: (dtype, shape)}) from a safetensors header, without reading any tensor."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > 100_000_000:
                raise ValueError("header size out of range")
            header = json.loads(fh.read(size))
    except (OSError, ValueError, struct.error) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc
    metadata = header.pop("__metadata__", None) or {}
    tensors = {k: (v["dtype"], tuple(v["shape"])) for k, v in header.items()}
    return metadata, tensors


def load_tensors(path: Path, what: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    path = require_safetensors(path, what)
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt files
        raise WeightsError(f"{path}: {what} could not be read ({exc}); the file may be incomplete") from exc


def _preview(keys: Iterable[str], n: int = 6) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def check_state_dict(expected: dict[str, Any], state: dict[str, Any], source: Path, what: str) -> None:
    """Raise WeightsError naming the file and the missing / unexpected / mis-shaped keys."""
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {_preview(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {_preview(unexpected)}")
    if wrong:
        parts.append(f"{len(wrong)} keys with the wrong shape: {_preview(wrong, 3)}")
    raise WeightsError(
        f"{source}: does not match the {what} layout ({'; '.join(parts)}). "
        "The file is partial or belongs to another model; see docs/weights.md."
    )


def build_and_load(
    factory: Callable[[], Any],
    state: dict[str, Any],
    source: Path,
    what: str,
    *,
    device,
    dtype,
    computed_buffers: tuple[str, ...] = (),
    prefix: str = "",
):
    """Build a model without allocating its weights, check the state dict strictly, and load it in place.

    Buffers whose names end with one of ``computed_buffers`` (fixed tables such as sinusoidal position
    encodings) keep the values the constructor computed, whether or not the file has them. ``prefix`` is what
    the file puts before each of the model's keys: the check (and its messages) use the file's names, and any
    key without it is unexpected.
    """
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = factory()

    def loaded(key: str) -> bool:
        return not (computed_buffers and key.endswith(computed_buffers))

    expected = {prefix + k: v for k, v in model.state_dict().items() if loaded(k)}
    state = {k: v for k, v in state.items() if loaded(k)}
    check_state_dict(expected, state, source, what)
    state = {k[len(prefix) :]: v for k, v in state.items()}
    model.load_state_dict(state, strict=not computed_buffers, assign=True)
    model.to(device=device)
    if any(p.dtype != dtype for p in model.parameters()):  # diffusers warns on every dtype cast, even a no-op
        model.to(dtype=dtype)
    return model


def load_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise WeightsError(f"{path}: not found") from exc
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path}: not valid JSON ({exc})") from exc
