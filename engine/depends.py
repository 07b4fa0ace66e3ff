"""What a restored frame depends on: its temporal context window and its key. The one place that says so.

Every cache of frames asks this module (the node's manifest, the server's result cache, ``frdm restore``'s
resume, the diffusion engine's window cache), so a change that alters a frame's pixels changes its key
everywhere at once. Pure Python (hashlib, json, os) on purpose: the host side imports it inside Nuke.

The API
-------

``context(params) -> (before, after)``
    Frames a target reads on each side (like OpenFX getFramesNeeded). The classical engine detects and fills
    from ``temporal_radius`` frames either side. The diffusion engine needs every temporal window that
    contains a target to be complete (a window reaches ``window - 1`` frames either side of any of its
    frames, engine/diffusion/windows.py) and its auto matte runs the classical detector over
    ``temporal_radius`` frames: ``max(window - 1, temporal_radius)``.

``window(frame, params, available) -> [frame numbers]``
    The context of one target, *positional* like the pipeline's: the ``before``/``after`` nearest frames the
    source has, clamped at the ends of the sequence (a gap in the numbering is skipped, not counted).
    ``frames_needed(targets, params, available=None)`` is the union over several targets (without
    ``available``: the plain numbers ``f - before .. f + after``). ``window_at(frame, (before, after),
    available)`` is the same for a reach given directly (a site engine's own ``Restorer.context``).

``relevant_params(params, stage) -> dict`` / ``params_hash(params, stage, engine_version="")``
    The parameters that can change a frame's result up to ``stage`` (``detect`` -> ``fill`` -> ``blend``
    -> ``output``, see engine/params.py): those of the chosen engine whose stage is at or before ``stage``.
    The diffusion engine's auto matte *is* the classical detector, so for it the classical engine's
    detect-stage parameters count too (``dust_threshold`` changes its matte).

``frame_key(frame, params, stage, *, window, sources, masks, engine_version, weights_id) -> str``
    One target's key at ``stage``: the parameters above, the engine version, the weights identity, the frame
    number (the diffusion engine's noise and windows are anchored on it) and the content ids of the inputs
    it reads: every source frame of its ``window`` and, from the blend stage on with ``mask='artist'``, its
    own mask frame (a mask only ever selects the target's pixels). ``sources``/``masks`` map frame numbers to
    content ids (``content_id``: SHA-256 of the bytes). Parameters must be validated (``SCHEMA.validate``).

``content_id(data_or_path)``, ``raw_content_id(description, pixels)``, ``weights_id(path)``, ``stamp_id(*paths)``
    The identity of one input frame (its bytes, streamed from a path; a raw pixel frame of the wire: its
    packed description and its pixel bytes, so the same bytes with another size or channel list are another
    image) and of a weights folder or file (path,
    size and modification time of every file: weights are gigabytes, re-hashing them per run is not cheap);
    ``stamp_id`` is that identity for any files (a movie, whose frames have no files of their own).

``ENGINE_VERSIONS``
    The version of each built-in engine, which goes into every key and into the written frames' metadata.
    The restorers take theirs from here; bump it when an engine's results change.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from frdm.engine.params import SCHEMA, STAGES

# classical-2: flicker-matched detection, grain-keeping fills (engine/classical). classical-3: the scene's own
# lines are not scratches, texture-, frame- and clip-end-aware spike evidence (different mattes on real film);
# fills aligned, exposure-matched and checked on their ring (issue 11). classical-4: fills 4 px beyond the matte
# (was 6), spatial fills' grain from the plainest of eight patches, every neighbour's flow taken from around the
# defects, flow trusted inside large blotches (different fills on real film). classical-5: less disagreement of
# the references allowed on busy ground, a still shot's line nothing crosses is the scene's (different mattes).
# classical-6: small strong specks over fast motion that no reference shows near their place (different mattes).
# diffusion-2: one global-frame conditioning for training and inference, exact low-band texture references.
ENGINE_VERSIONS: dict[str, str] = {"classical": "classical-6", "diffusion": "diffusion-2"}

#: Engines whose defect matte comes from another engine's detector (the parameters of that detector's
#: detect stage then shape the frame as well).
MATTE_DETECTOR: dict[str, str] = {"diffusion": "classical"}

#: The weights identity of an engine that loads none, and those engines (their identity is known without
#: asking the server that runs them).
NO_WEIGHTS = "-"
WEIGHTLESS_ENGINES = ("classical",)

_BLOCK = 1 << 22


def context(params: Mapping[str, Any]) -> tuple[int, int]:
    """Frames a target needs before and after it (validated parameters)."""
    radius = int(params["temporal_radius"])
    if params["engine"] == "diffusion":
        n = max(int(params["window"]) - 1, radius)
        return n, n
    return radius, radius


def window(frame: int, params: Mapping[str, Any], available: Sequence[int]) -> list[int]:
    """The source frames target ``frame`` reads: positional context clamped to ``available``."""
    return window_at(frame, context(params), sorted(set(available)))


def window_at(frame: int, reach: tuple[int, int], available: Sequence[int]) -> list[int]:
    """``window`` for a given (before, after) reach, e.g. a site engine's own ``Restorer.context``;
    ``available`` sorted."""
    import bisect

    before, after = reach
    i = bisect.bisect_left(available, frame)
    if i == len(available) or available[i] != frame:
        raise ValueError(f"frame {frame} is not among the available frames")
    return available[max(0, i - before) : i + after + 1]


def readers_at(frame: int, reach: tuple[int, int], available: Sequence[int]) -> list[int]:
    """The frames whose ``window_at`` holds ``frame``: the inverse of ``window_at`` (a frame ``before``
    positions ahead of a reader is in its window, so the readers lie up to ``after`` positions back and
    ``before`` on); ``available`` sorted."""
    import bisect

    before, after = reach
    i = bisect.bisect_left(available, frame)
    if i == len(available) or available[i] != frame:
        raise ValueError(f"frame {frame} is not among the available frames")
    return available[max(0, i - after) : i + before + 1]


def frames_needed(
    targets: int | Iterable[int], params: Mapping[str, Any], available: Sequence[int] | None = None
) -> list[int]:
    """Source frames needed to restore ``targets``: with ``available``, positional and clamped (every target
    must be available); without, the numbers ``f - before .. f + after``."""
    wanted = sorted({targets} if isinstance(targets, int) else {int(t) for t in targets})
    reach = context(params)
    if available is None:
        return sorted({n for f in wanted for n in range(f - reach[0], f + reach[1] + 1)})
    avail = sorted(set(available))
    return sorted({n for f in wanted for n in window_at(f, reach, avail)})


def relevant_params(params: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """The (validated) parameters that can change a frame's result up to and including ``stage``."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage '{stage}' (one of {', '.join(STAGES)})")
    upto = STAGES.index(stage)
    engine = params["engine"]
    detector = MATTE_DETECTOR.get(engine)
    out = {}
    for p in SCHEMA:
        level = STAGES.index(p.stage)
        if level > upto:
            continue
        if engine in p.engines or (detector in p.engines and p.stage == "detect"):
            out[p.name] = params[p.name]
    return out


def params_hash(params: Mapping[str, Any], stage: str = "output", engine_version: str = "") -> str:
    """Hash of ``relevant_params(params, stage)`` and the engine version (32 hex digits)."""
    return _digest({"v": engine_version, "p": relevant_params(params, stage)})[:32]


def frame_key(
    frame: int,
    params: Mapping[str, Any],
    stage: str,
    *,
    window: Sequence[int],
    sources: Mapping[int, str],
    masks: Mapping[int, str] | None = None,
    engine_version: str,
    weights_id: str = NO_WEIGHTS,
) -> str:
    """The key of target ``frame`` at ``stage`` (64 hex digits); see the module docstring."""
    missing = [n for n in window if n not in sources]
    if missing or frame not in window:
        raise ValueError(f"frame {frame}: no content id for source frames {missing or [frame]}")
    mask = None
    if params["mask"] == "artist" and STAGES.index(stage) >= STAGES.index("blend") and masks is not None:
        mask = masks.get(frame)
    doc = {
        "stage": stage,
        "frame": int(frame),
        "engine": engine_version,
        "weights": weights_id,
        "params": relevant_params(params, stage),
        "sources": [[int(n), sources[n]] for n in window],
        "mask": mask,
    }
    return _digest(doc)


def content_id(value: bytes | bytearray | memoryview | str | os.PathLike[str]) -> str:
    """SHA-256 of a frame's bytes, given the bytes or a path (streamed; nothing big is held)."""
    h = hashlib.sha256()
    if isinstance(value, (bytes, bytearray, memoryview)):
        h.update(value)
        return h.hexdigest()
    with open(value, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def raw_content_id(description: bytes, pixels: bytes | bytearray | memoryview) -> str:
    """The content id of a raw pixel frame (``frdm.server.protocol.RawImage``): of its packed description
    and of its pixels (128 hex digits). The node computes it for the frames it sends, the server for the
    frames it receives: a frame named by this id alone (a context frame the server already restored from)
    is the frame the server would have hashed."""
    return content_id(description) + content_id(pixels)


def weights_id(weights: str | os.PathLike[str] | None) -> str:
    """Identity of a weights folder or file: the real path, size and modification time of every file in it
    (32 hex digits), or ``NO_WEIGHTS``. Swapping, editing or re-pointing the weights changes it."""
    if not weights:
        return NO_WEIGHTS
    weights = os.fspath(weights)
    if os.path.isdir(weights):
        files = sorted(os.path.join(d, f) for d, _, names in os.walk(weights) for f in names)
    else:
        files = [weights]
    return stamp_id(*files)


def stamp_id(*paths: str | os.PathLike[str]) -> str:
    """Identity of files by real path, size and modification time (32 hex digits; no bytes are read)."""
    return hashlib.sha256("|".join(_file_stamp(os.fspath(f)) for f in paths).encode()).hexdigest()[:32]


def _file_stamp(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}:missing"
    return f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}"


def _digest(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


__all__ = [
    "ENGINE_VERSIONS",
    "MATTE_DETECTOR",
    "NO_WEIGHTS",
    "WEIGHTLESS_ENGINES",
    "content_id",
    "context",
    "frame_key",
    "frames_needed",
    "params_hash",
    "raw_content_id",
    "relevant_params",
    "stamp_id",
    "weights_id",
    "window",
    "window_at",
]
