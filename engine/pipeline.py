"""The one flow around a restorer: read -> colour in -> restore -> blend with the mask -> colour out -> write.

``restore_frames`` is what the server and ``frdm restore`` share; ``restore_sequence`` adds files: resumable
(frames already written with the same parameters are skipped), atomic writes, a contact sheet.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from frdm.engine import atomic, depends
from frdm.engine import params as P
from frdm.engine.blend import blend, feather_mask
from frdm.engine.color import check_colorspace, from_model, representable, resolve_colorspace, to_model
from frdm.engine.errors import InputError
from frdm.engine.frames import (
    MOVIE_EXTENSIONS,
    Frame,
    SequencePattern,
    Source,
    format_frame_range,
    open_source,
    read_attributes,
    write_frame,
)
from frdm.engine.restorer import Clip, ProgressFn, Restorer, create_restorer, no_progress

MATTE_CHANNEL = "frdm.matte"
BLOCK_FRAMES = 8  # targets per restorer call: bounds memory at 2K (context + block frames in RAM)

# Metadata written into every restored frame: what made it, so a re-run can skip it and a TD can trace it.
ATTR_HASH = "frdm:params_hash"
ATTR_ENGINE = "frdm:engine_version"
ATTR_PARAMS = "frdm:params"
ATTR_SOURCE = "frdm:source"
ATTR_COLORSPACE = "frdm:colorspace"  # the colour space the frame was converted with ('auto' resolved)
ATTR_KEY = "frdm:frame_key"  # frdm.engine.depends.frame_key: inputs, parameters, engine, weights


def output_hash(params: Mapping[str, Any], restorer: Restorer) -> str:
    return depends.params_hash(params, "output", restorer.engine_version)


class _FrameCache:
    """The last few source frames: consecutive blocks share their context frames."""

    def __init__(self, source: Source, size: int):
        self.source, self.size = source, size
        self.items: OrderedDict[int, Frame] = OrderedDict()

    def __call__(self, n: int) -> Frame:
        if n in self.items:
            self.items.move_to_end(n)
            return self.items[n]
        frame = self.source.read(n)
        self.items[n] = frame
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return frame


def _check_geometry(frames: list[Frame], numbers: list[int], description: str, reference: tuple[int, Frame]) -> None:
    """Every frame of a run has the reference frame's data window (the first frame read)."""
    first_number, first = reference
    for f, n in zip(frames, numbers):
        if f.data_window != first.data_window:
            raise InputError(
                f"{description}: frame {n} has data window {f.data_window} but frame {first_number} has "
                f"{first.data_window}; give every frame the same size (e.g. a Crop to the format in Nuke)"
            )


def _artist_mask(frame: Frame, mask_frame: Frame | None, channel: str, number: int) -> np.ndarray:
    """(H, W) float mask in [0, 1] from a channel of the source or a separate mask frame."""
    if mask_frame is None:
        if not channel:
            raise InputError("mask 'artist' needs a mask sequence (--mask SEQ) or a source channel (--mask-channel)")
        return np.clip(frame.pixels[..., frame.channel_index(channel)], 0.0, 1.0)
    if mask_frame.pixels.shape[:2] != frame.pixels.shape[:2]:
        raise InputError(
            f"{mask_frame.path}: mask for frame {number} is {mask_frame.width}x{mask_frame.height} but the "
            f"source is {frame.width}x{frame.height}; render the mask at the source's resolution"
        )
    if channel:
        idx = mask_frame.channel_index(channel)
    elif "A" in mask_frame.channels:
        idx = mask_frame.channels.index("A")
    else:
        idx = 0
    return np.clip(mask_frame.pixels[..., idx], 0.0, 1.0)


def restore_frames(
    source: Source,
    frames: list[int],
    params: Mapping[str, Any],
    restorer: Restorer,
    *,
    mask_source: Source | None = None,
    progress: ProgressFn = no_progress,
) -> Iterator[tuple[int, Frame]]:
    """Yield (frame number, restored Frame) for each of ``frames``, in order. Nothing is written here."""
    params = P.validate(params)
    frames = sorted(set(frames))
    source.check_frames(frames)
    if mask_source is not None:
        mask_source.check_frames(frames)
    check_colorspace(params["colorspace"], params["ocio_config"])
    if params["mask"] == "artist" and mask_source is None and not params["mask_channel"]:
        raise InputError("mask 'artist' needs a mask sequence (--mask SEQ) or a source channel (--mask-channel)")
    before, after = restorer.context(params)
    available = source.frame_numbers
    position = {n: i for i, n in enumerate(available)}
    cache = _FrameCache(source, BLOCK_FRAMES + before + after + 2)
    digest = output_hash(params, restorer)
    total = len(frames)
    done_before = 0
    reference: tuple[int, Frame] | None = None

    for start in range(0, total, BLOCK_FRAMES):
        block = frames[start : start + BLOCK_FRAMES]
        lo = max(0, position[block[0]] - before)
        hi = min(len(available) - 1, position[block[-1]] + after)
        numbers = available[lo : hi + 1]
        originals = [cache(n) for n in numbers]
        reference = reference or (numbers[0], originals[0])
        _check_geometry(originals, numbers, source.description, reference)
        rgb_index = [f.rgb_indices() for f in originals]
        spaces = [resolve_colorspace(params["colorspace"], f, params["ocio_config"]) for f in originals]
        model = np.stack(
            [
                to_model(f.pixels[..., idx], space, params["ocio_config"])
                for f, idx, space in zip(originals, rgb_index, spaces)
            ]
        )
        in_range = representable(model)
        clip = Clip(np.clip(model, 0.0, 1.0), list(numbers), list(block))

        def block_progress(
            done: float, count: float, message: str, _base: int = done_before, _size: int = len(block)
        ) -> None:
            progress(_base + done * _size / max(count, 1), total, message)

        for restored in restorer.restore(clip, params, block_progress):
            i = numbers.index(restored.frame_number)
            original = originals[i]
            idx = rgb_index[i]
            if params["mask"] == "auto":
                mask = feather_mask(restored.matte, params["feather"], params["matte_grow"])
            elif params["mask"] == "none":
                mask = np.ones(restored.matte.shape, np.float32)
            else:
                # The artist's mask as given: its softness is the artist's, and outside it nothing may change
                # (feather and grow would spread it outwards; they belong to the auto matte).
                mask_frame = mask_source.read(restored.frame_number) if mask_source is not None else None
                mask = _artist_mask(original, mask_frame, params["mask_channel"], restored.frame_number)
            # Values the model cannot hold (above 1, below 0 in model space) come from the original, and so do
            # pixels the restorer left as they were: the colour round trip (OCIO: ~1e-5) never touches them.
            changed = np.any(restored.image != clip.frames[i], axis=-1)
            mask = mask * in_range[i] * changed
            back = from_model(restored.image, spaces[i], params["ocio_config"])
            pixels = original.pixels.copy()
            if len(set(idx)) == 1:  # one grey channel shown to the model as RGB
                grey = back.mean(axis=-1, keepdims=True)
                pixels[..., idx[:1]] = blend(original.pixels[..., idx[:1]], grey, mask)
            else:
                pixels[..., idx] = blend(original.pixels[..., idx], back, mask)
            channels, formats = list(original.channels), list(original.formats)
            if params["write_matte"]:
                if MATTE_CHANNEL in channels:
                    pixels[..., channels.index(MATTE_CHANNEL)] = restored.matte
                else:
                    pixels = np.concatenate([pixels, restored.matte[..., None]], axis=-1)
                    channels.append(MATTE_CHANNEL)
                    formats.append("half")
            out = original.with_pixels(pixels, channels, formats)
            out.attributes[ATTR_HASH] = ("string", digest)
            out.attributes[ATTR_ENGINE] = ("string", restorer.engine_version)
            out.attributes[ATTR_COLORSPACE] = ("string", spaces[i])
            out.attributes[ATTR_PARAMS] = ("string", _params_text(params))
            out.attributes[ATTR_SOURCE] = ("string", os.path.basename(original.path or ""))
            yield restored.frame_number, out
        done_before += len(block)


def _params_text(params: Mapping[str, Any]) -> str:
    import json

    return json.dumps(dict(params), sort_keys=True, separators=(",", ":"))


# --- files ---------------------------------------------------------------------------------------------


@dataclass
class RestoreReport:
    written: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    seconds: float = 0.0
    matte_coverage: dict[int, float] = field(default_factory=dict)
    outputs: dict[int, str] = field(default_factory=dict)
    contact_sheet: str | None = None


@dataclass
class RestorePlan:
    source: Source
    out: SequencePattern
    frames: list[int]
    todo: list[int]
    skip: list[int]
    mask_source: Source | None
    params: dict[str, Any]
    digest: str
    context: tuple[int, int]
    keys: dict[int, str] = field(default_factory=dict)  # frame -> depends.frame_key at the output stage

    def describe(self) -> str:
        b, a = self.context
        lines = [
            f"source   {self.source.description} ({len(self.source.frame_numbers)} frames on disk)",
            f"output   {self.out.pattern}",
            f"frames   {format_frame_range(self.frames)} ({len(self.frames)}), context {b} before / {a} after",
            f"restore  {format_frame_range(self.todo) or 'nothing'}",
            f"skip     {format_frame_range(self.skip) or 'nothing'} (already written from these inputs and parameters)"
            + ("" if self.out.extension == ".exr" else "; resume needs EXR output (other formats drop metadata)"),
            f"engine   {self.params['engine']}  mask {self.params['mask']}  colorspace {self.params['colorspace']}",
            f"params   {self.digest}",
        ]
        return "\n".join(lines)


def plan_restore(
    src: str,
    out: str,
    *,
    frames: list[int] | None,
    params: Mapping[str, Any],
    restorer: Restorer,
    mask: str | None = None,
    resume: bool = True,
    weights: str | None = None,
) -> RestorePlan:
    """Check everything that can be checked before any pixel is computed; decide what to skip."""
    params = P.validate(params)
    source = open_source(src)
    frames = sorted(set(frames)) if frames is not None else list(source.frame_numbers)
    source.check_frames(frames)
    pattern = SequencePattern.parse(out)
    if pattern.extension in MOVIE_EXTENSIONS:
        raise InputError(f"{out}: FRDM writes image sequences; give OUT like shot.####.exr")
    if pattern.extension in (".jpg", ".jpeg"):
        raise InputError(
            f"{out}: JPEG is lossy everywhere, which breaks 'clean pixels untouched'; write EXR, DPX, TIFF or PNG"
        )
    if params["write_matte"] and pattern.extension != ".exr":
        # Only EXR holds an extra channel of its own type next to the picture's.
        params = P.SCHEMA.update(params, {"write_matte": False})
    if not pattern.is_sequence and len(frames) > 1:
        raise InputError(f"{out}: several frames need a sequence pattern for OUT, e.g. out.####.exr or out.%04d.exr")
    mask_source = None
    if mask not in (None, "", "auto", "none"):
        mask_source = open_source(mask)
        mask_source.check_frames(frames)
        params = P.SCHEMA.update(params, {"mask": "artist"})
    elif mask in ("auto", "none"):
        params = P.SCHEMA.update(params, {"mask": mask})
    _check_no_overlap(source, mask_source, pattern, frames)
    _check_writable(os.path.dirname(os.path.abspath(pattern.path(frames[0]))))
    check_colorspace(params["colorspace"], params["ocio_config"])
    digest = output_hash(params, restorer)
    keys = frame_keys(source, mask_source, frames, params, restorer, depends.weights_id(weights))
    skip = []
    if resume:
        for n in frames:
            attrs = read_attributes(pattern.path(n))
            if attrs is not None and attrs.get(ATTR_KEY) == keys[n]:
                skip.append(n)
    todo = [n for n in frames if n not in set(skip)]
    return RestorePlan(source, pattern, frames, todo, skip, mask_source, params, digest, restorer.context(params), keys)


def _check_no_overlap(source: Source, mask_source: Source | None, out: SequencePattern, frames: list[int]) -> None:
    """No frame written may be a file that the run reads (a source frame, context included, or a mask
    frame): writing it would destroy the input, and later frames would read restored pixels as source."""
    written = {os.path.realpath(out.path(n)): n for n in frames}
    for what, src in (("source", source), ("mask", mask_source)):
        if src is None:
            continue
        for m in src.frame_numbers:
            path = src.path(m)
            if path and os.path.realpath(path) in written:
                raise InputError(
                    f"{out.pattern}: OUT would overwrite the {what} frame {path} (output frame "
                    f"{written[os.path.realpath(path)]}); write somewhere else"
                )


def _check_writable(folder: str) -> None:
    """One clear line, before any pixel is computed, when OUT's folder cannot be made or written."""
    probe = folder
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise InputError(f"{folder}: cannot make the output folder ({probe} is a file)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{folder}: the output folder is not writable (no permission on {probe})")


def _prepare_output(folder: str) -> None:
    """Make OUT's folder, prove it takes a file (read-only mounts, quotas), and clear the temporaries that
    a killed earlier run left there (``engine/atomic.py``)."""
    try:
        os.makedirs(folder, exist_ok=True)
        atomic.write_bytes(os.path.join(folder, ".frdm-write-test"), b"")
        os.unlink(os.path.join(folder, ".frdm-write-test"))
    except OSError as exc:
        raise InputError(f"{folder}: cannot write the output here ({exc.strerror or exc})") from None
    atomic.remove_stale(folder)


def frame_keys(
    source: Source,
    mask_source: Source | None,
    frames: list[int],
    params: Mapping[str, Any],
    restorer: Restorer,
    weights_id: str,
) -> dict[int, str]:
    """The output-stage key of each of ``frames`` (``frdm.engine.depends``): the bytes of every source frame in
    its context window and of its mask, the parameters, the engine version and the weights. Each file is read
    once, streamed. A movie's frames have no files of their own: the movie file's identity and the frame
    number stand in."""
    reach = restorer.context(params)
    available = sorted(source.frame_numbers)
    ids: dict[tuple[str, int], str] = {}

    def content(src: Source, kind: str, n: int) -> str:
        if (kind, n) not in ids:
            path = src.path(n)
            if path:
                try:
                    ids[(kind, n)] = depends.content_id(path)
                except OSError as exc:
                    raise InputError(f"{path}: cannot read frame {n} ({exc.strerror})") from None
            else:
                ids[(kind, n)] = f"{depends.stamp_id(src.description)}:{n}"
        return ids[(kind, n)]

    keys = {}
    for f in frames:
        window = depends.window_at(f, reach, available)
        keys[f] = depends.frame_key(
            f,
            params,
            "output",
            window=window,
            sources={n: content(source, "source", n) for n in window},
            masks={f: content(mask_source, "mask", f)} if mask_source is not None else None,
            engine_version=restorer.engine_version,
            weights_id=weights_id,
        )
    return keys


def restore_sequence(
    src: str,
    out: str,
    *,
    frames: list[int] | None = None,
    params: Mapping[str, Any] | None = None,
    mask: str | None = None,
    restorer: Restorer | None = None,
    progress: ProgressFn = no_progress,
    resume: bool = True,
    contact_sheet: str | None = None,
    weights: str | None = None,
) -> RestoreReport:
    """`frdm restore`: restore ``frames`` of ``src`` into the sequence ``out`` (atomic, resumable)."""
    params = P.validate(params or {})
    if restorer is None:
        restorer = create_restorer(params["engine"], weights=weights)
    plan = plan_restore(
        src, out, frames=frames, params=params, restorer=restorer, mask=mask, resume=resume, weights=weights
    )
    if contact_sheet:
        sheet = os.path.realpath(contact_sheet)
        for src_ in (plan.source, plan.mask_source):
            for m in src_.frame_numbers if src_ is not None else ():
                if (path := src_.path(m)) and os.path.realpath(path) == sheet:
                    raise InputError(f"{contact_sheet}: the contact sheet would overwrite the input {path}")
    report = RestoreReport(skipped=list(plan.skip))
    if plan.todo:
        _prepare_output(os.path.dirname(os.path.abspath(plan.out.path(plan.todo[0]))))
    t0 = time.perf_counter()
    compression = None if plan.params["compression"] == "same" else plan.params["compression"]
    pixel_type = None if plan.params["pixel_type"] == "same" else plan.params["pixel_type"]
    if plan.todo:
        for n, frame in restore_frames(
            plan.source, plan.todo, plan.params, restorer, mask_source=plan.mask_source, progress=progress
        ):
            path = plan.out.path(n)
            frame.attributes[ATTR_KEY] = ("string", plan.keys[n])
            write_frame(path, frame, compression=compression, pixel_type=pixel_type)
            report.written.append(n)
            report.outputs[n] = path
            if MATTE_CHANNEL in frame.channels:
                report.matte_coverage[n] = float((frame.pixels[..., frame.channels.index(MATTE_CHANNEL)] > 0.5).mean())
    plan.source.close()
    if plan.mask_source is not None:
        plan.mask_source.close()
    report.seconds = time.perf_counter() - t0
    for n in plan.skip:
        report.outputs[n] = plan.out.path(n)
    if contact_sheet:
        from frdm.engine.contact_sheet import write_contact_sheet

        write_contact_sheet(contact_sheet, plan.source, plan.out, plan.frames, plan.params)
        report.contact_sheet = contact_sheet
    return report
