"""The one flow around a restorer: read -> colour in -> restore -> blend with the mask -> colour out -> write.

``restore_frames`` is what the server and ``frdm restore`` share; ``restore_sequence`` adds files: resumable
(frames already written with the same parameters are skipped), atomic writes, a contact sheet.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from frdm.engine import atomic, depends
from frdm.engine import params as P
from frdm.engine.color import check_colorspace, model_view, resolve_colorspace
from frdm.engine.errors import InputError
from frdm.engine.fill import FillResult, FillStore, FolderFillStore, finish_frame
from frdm.engine.frames import (
    MOVIE_EXTENSIONS,
    Frame,
    SequencePattern,
    Source,
    format_frame_range,
    halves_written,
    open_source,
    read_attributes,
    write_frame,
)
from frdm.engine.overlap import ReadAhead, WriteBehind
from frdm.engine.restorer import Clip, ProgressFn, RestoredFrame, Restorer, create_restorer, no_progress

MATTE_CHANNEL = "frdm.matte"
BLOCK_FRAMES = 8  # targets per restorer call (fewer for large frames: _block_length)
# The model-space window's budget (block and context frames, float32 RGB): at 2K it holds 4 targets and their
# 4 context frames. The block length changes no result (each frame depends on its own window only).
WINDOW_BYTES = 320 << 20
# `frdm restore`: source frames decoded ahead of the restorer (in blocks: a block takes all its new frames at
# once when it starts, so the reader decodes the next block's while this one is restored; one frame ahead
# left the restorer waiting for a block's worth of serial reads), and finished frames waiting to be encoded.
READ_AHEAD = 1  # blocks
WRITE_BEHIND = 1  # frames

# Metadata written into every restored frame: what made it, so a re-run can skip it and a TD can trace it.
ATTR_HASH = "frdm:params_hash"
ATTR_ENGINE = "frdm:engine_version"
ATTR_PARAMS = "frdm:params"
ATTR_SOURCE = "frdm:source"
ATTR_COLORSPACE = "frdm:colorspace"  # the colour space the frame was converted with ('auto' resolved)
ATTR_KEY = "frdm:frame_key"  # frdm.engine.depends.frame_key: inputs, parameters, engine, weights


def output_hash(params: Mapping[str, Any], restorer: Restorer) -> str:
    return depends.params_hash(params, "output", restorer.engine_version)


def _check_geometry(frames: list[Frame], numbers: list[int], description: str, reference: tuple[int, Frame]) -> None:
    """Every frame of a run has the reference frame's data window (the first frame read)."""
    first_number, first = reference
    for f, n in zip(frames, numbers):
        if f.data_window != first.data_window:
            raise InputError(
                f"{description}: frame {n} has data window {f.data_window} but frame {first_number} has "
                f"{first.data_window}; give every frame the same size (e.g. a Crop to the format in Nuke)"
            )


def _model_rgb(frame: Frame, space: str, params: Mapping[str, Any], out: np.ndarray) -> None:
    """The restorer's view of a frame, clipped to [0, 1], written into ``out`` (R, G, B side by side are read
    as a view, not gathered; a frame's half samples are converted as they are held, by table)."""
    idx = frame.rgb_indices()
    held = frame.samples
    rgb = held[..., idx[0] : idx[0] + 3] if idx == list(range(idx[0], idx[0] + 3)) else held[..., idx]
    model_view(rgb, space, params["ocio_config"], out=out)


def _lone_refs() -> int:
    """What ``sys.getrefcount`` says of an array only one local name holds: 2 up to Python 3.13 (the name and
    the call's argument); later versions may not count references on the interpreter's stack. Measured, not
    assumed, so the spare-array check below means the same on every version."""
    lone = np.empty(1, np.float32)
    return sys.getrefcount(lone)


_LONE_REFS = _lone_refs()


class _Window:
    """The model-space frames of the block being restored, in one (T, H, W, 3) array that slides along the
    shot: frames the next block shares stay where they are (moved to the front), only new frames are added.
    No frame is converted twice and the array is allocated once. A target's frame (held anyway until it is
    finished) is converted when a clip that holds it is first read (``Clip.frames``): a restorer that leaves
    its targets as they came without reading them, and a block re-blended from the stage cache, convert
    none. A context frame is converted as it is taken and let go, as before: holding a block's context frames
    as read until the restorer looks would cost ``frdm restore`` a block's decoded frames at its peak
    (measured at 2K: +260 MB).

    The array outlives its window as the spare for the next window of its shape (a server restores chunk
    after chunk): the kernel zeroes a fresh array's pages on first touch, ~16 ms of each 2K frame's
    conversion. Only an array nothing else holds is reused (a restorer abandoned midway may still read
    views of it); the spare is one window (``WINDOW_BYTES`` at most) held for the life of the process."""

    _spare: list[np.ndarray] = []
    # Re-entrant: a window's finalizer may run inside another's while it holds the lock (the cycle collector
    # runs finalizers wherever an allocation triggers it); a plain lock would hang that thread.
    _spare_lock = threading.RLock()

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.frames: np.ndarray | None = None
        self.numbers: list[int] = []
        # By number: the frames taken and not converted yet, with their colour space and the run's parameters.
        self.unconverted: dict[int, tuple[Frame, str, Mapping[str, Any]]] = {}

    def __del__(self) -> None:
        if self.frames is not None:
            with _Window._spare_lock:
                _Window._spare[:] = [self.frames]

    @staticmethod
    def _array(shape: tuple[int, int, int, int]) -> np.ndarray:
        with _Window._spare_lock:
            spare = _Window._spare.pop() if _Window._spare else None
        # As many references as a lone local array has: no view of it is alive anywhere (a view holds one).
        if spare is not None and spare.shape == shape and sys.getrefcount(spare) == _LONE_REFS:
            return spare
        del spare
        return np.empty(shape, np.float32)

    def keep_from(self, first: int) -> None:
        """Drop the frames before ``first`` (by number); the rest move to the front, in order."""
        keep = [i for i, n in enumerate(self.numbers) if n >= first]
        assert self.frames is not None or not keep
        for slot, i in enumerate(keep):  # slot < i, in increasing order: no frame is overwritten before it moves
            if slot != i and self.numbers[i] not in self.unconverted:  # an unconverted slot holds nothing yet
                self.frames[slot] = self.frames[i]  # type: ignore[index]
        self.numbers = [self.numbers[i] for i in keep]
        self.unconverted = {n: v for n, v in self.unconverted.items() if n >= first}

    def add(self, n: int, frame: Frame, space: str, params: Mapping[str, Any], *, later: bool) -> None:
        """Take ``frame`` as the next slot's (the slots are reused: no fresh frame-sized array per frame),
        converted now or, ``later``, on the first read of a clip that holds it."""
        if self.frames is None:
            self.frames = self._array((self.capacity, frame.height, frame.width, 3))
        self.numbers.append(n)
        if later:
            self.unconverted[n] = (frame, space, params)
        else:
            _model_rgb(frame, space, params, self.frames[len(self.numbers) - 1])

    def _convert(self, first: int, last: int) -> None:
        """Convert the frames ``first``..``last`` not converted yet into their slots (a clip's first read)."""
        for n in [n for n in self.unconverted if first <= n <= last]:
            frame, space, params = self.unconverted[n]
            _model_rgb(frame, space, params, self.frames[self.numbers.index(n)])  # type: ignore[index]
            del self.unconverted[n]  # only once converted: a conversion that raised is done on the next read

    def clip(self, first: int, last: int, targets: list[int]) -> Clip:
        """The frames ``first``..``last`` (numbers held) as a restorer's clip: a view, no copy, converted
        when first read. Read during its block only: the next block moves the slots."""
        i, j = self.numbers.index(first), self.numbers.index(last) + 1
        return Clip(
            self.frames[i:j],  # type: ignore[index]
            self.numbers[i:j],
            list(targets),
            convert=lambda: self._convert(first, last),
        )


def _block_length(frame: Frame, before: int, after: int) -> int:
    """Targets per restorer call: ``BLOCK_FRAMES``, or as many as fit ``WINDOW_BYTES`` with their context
    (at least as many as the context frames, so the restorer's work on context frames at most doubles). A
    wide context (the diffusion engine's windows) keeps ``BLOCK_FRAMES``."""
    if before + after >= BLOCK_FRAMES:
        return BLOCK_FRAMES
    fit = WINDOW_BYTES // (frame.height * frame.width * 3 * 4) - before - after
    return max(before + after, 1, min(BLOCK_FRAMES, fit))


def restore_frames(
    source: Source,
    frames: list[int],
    params: Mapping[str, Any],
    restorer: Restorer,
    *,
    mask_source: Source | None = None,
    progress: ProgressFn = no_progress,
    fill_cache: FillStore | None = None,
    read_ahead: int = 0,
    halves_out: bool = False,
) -> Iterator[tuple[int, Frame]]:
    """Yield (frame number, restored Frame) for each of ``frames``, in order. Nothing is written here.

    ``fill_cache`` keeps each frame's restorer output (the fill stage): a frame found there is only
    re-blended, which is what a change of a blend- or output-stage parameter costs. A frame nothing changed
    in comes back sharing its original's pixel array.

    Each source frame is read once and converted at most once, in increasing order; ``read_ahead`` > 0 reads
    (decodes) on a thread of its own, up to that many blocks ahead of the restorer (``engine/overlap.py``);
    a context frame is converted into the window as it is taken, a target when the restorer first reads its
    clip (``Clip.frames``): a restorer that reads nothing converts no target. What is held: the model-space
    frames of one block and its context, and each target's source frame until it is finished (one not
    converted: until the window moves past it).

    ``halves_out``: the caller stores half channels as half (``fill.finish_frame``): frames read as halves
    come back as halves."""
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
    digest = output_hash(params, restorer)
    total = len(frames)

    def reach(first: int, last: int) -> list[int]:
        """The source frames targets ``first``..``last`` need, their context included."""
        lo, hi = max(0, position[first] - before), min(len(available) - 1, position[last] + after)
        return available[lo : hi + 1]

    def read(n: int) -> tuple[Frame, str]:
        frame = source.read(n)
        return frame, resolve_colorspace(params["colorspace"], frame, params["ocio_config"])

    # The stage cache: targets whose fill result is kept skip the restorer, and so need no context frames
    # (a blend-stage change reads and converts only its targets; the server may not even have the others).
    kept = {n for n in frames if fill_cache is not None and fill_cache.get(n) is not None}
    first = frames[0]  # every target is read: the first one's size decides the block length
    head: tuple[Frame, str] | None = read(first)
    length = _block_length(head[0], before, after)  # type: ignore[index]
    # Each block spans at most ``length`` source frames, not only ``length`` targets: with gaps between the
    # targets (a resumed run, a list of frames) its reach must still fit the window.
    blocks: list[list[int]] = []
    for n in frames:
        if blocks and position[n] - position[blocks[-1][0]] < length:
            blocks[-1].append(n)
        else:
            blocks.append([n])

    def needed(block: list[int]) -> list[int]:
        misses = [n for n in block if n not in kept]
        return sorted(set(block) | (set(reach(misses[0], misses[-1])) if misses else set()))

    # Every frame any block needs, in increasing order (the window and the reader take them so).
    schedule = sorted({n for block in blocks for n in needed(block)})
    targets = set(frames)
    window = _Window(length + before + after)
    originals: dict[int, tuple[Frame, str]] = {}  # targets read and not finished: (frame, its colour space)
    reference: tuple[int, Frame] | None = None
    done_before = 0
    with ReadAhead(read, [n for n in schedule if n != first], read_ahead * length, source.description) as reader:
        taken = 0
        for block in blocks:
            numbers = reach(block[0], block[-1])
            window.keep_from(numbers[0])
            while taken < len(schedule) and schedule[taken] <= numbers[-1]:
                n = schedule[taken]
                if n == first and head is not None:
                    (frame, space), head = head, None
                else:
                    frame, space = reader.take(n)
                taken += 1
                reference = reference or (n, frame)
                _check_geometry([frame], [n], source.description, reference)
                # A target (held until finished anyway) is converted when the restorer reads it; a context
                # frame now, and let go: its model-space view is in the window.
                window.add(n, frame, space, params, later=n in targets)
                if n in targets:
                    originals[n] = (frame, space)
                del frame
            fills = {n: f for n in block if n in kept and (f := fill_cache.get(n)) is not None}  # type: ignore[union-attr]
            if len(fills) < len(kept.intersection(block)):
                gone = sorted(kept.intersection(block) - set(fills))
                raise InputError(
                    f"the kept restorer output of frame {gone[0]} went away during the run (removed or damaged "
                    "beside the output?); run again: it is restored then"
                )
            misses = [n for n in block if n not in fills]
            clip: Clip | None = None
            restored_frames: Iterator[RestoredFrame] = iter(())
            if misses:
                wanted = reach(misses[0], misses[-1])
                clip = window.clip(wanted[0], wanted[-1], misses)

                def block_progress(
                    done: float, count: float, message: str, _base: int = done_before, _size: int = len(misses)
                ) -> None:
                    progress(_base + done * _size / max(count, 1), total, message)

                restored_frames = iter(restorer.restore(clip, params, block_progress))
            try:
                for n in block:
                    fill = fills.get(n)
                    if fill is None:
                        assert clip is not None
                        restored = next(restored_frames, None)
                        if restored is None or restored.frame_number != n:
                            got = "nothing" if restored is None else f"frame {restored.frame_number}"
                            raise RuntimeError(f"the restorer yielded {got} where frame {n} was due (targets in order)")
                        fill = (
                            FillResult.as_it_came(clip.shape, restored)  # its model-space pixels never needed
                            if restored.image is None
                            else FillResult.from_restored(restored, clip.frames[clip.index(n)])
                        )
                        del restored
                        if fill_cache is not None:
                            fill_cache.put(n, fill)
                    else:
                        progress(done_before + block.index(n) + 1, total, f"frame {n} (restorer output cached)")
                    original, space = originals.pop(n)
                    mask_frame = mask_source.read(n) if params["mask"] == "artist" and mask_source is not None else None
                    out = finish_frame(
                        original, fill, params, space, mask_frame, n, MATTE_CHANNEL, halves_out=halves_out
                    )
                    out.attributes[ATTR_HASH] = ("string", digest)
                    out.attributes[ATTR_ENGINE] = ("string", restorer.engine_version)
                    out.attributes[ATTR_COLORSPACE] = ("string", space)
                    out.attributes[ATTR_PARAMS] = ("string", _params_text(params))
                    out.attributes[ATTR_SOURCE] = ("string", os.path.basename(original.path or ""))
                    del original, fill  # held no longer than its own frame needs it
                    yield n, out
            finally:
                # The restorer may hold views of the window's frames until its generator ends; the window is
                # overwritten next.
                close = getattr(restored_frames, "close", None)
                if close is not None:
                    close()
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
    stage: str = "output",
) -> dict[int, str]:
    """The ``stage`` key (default: output) of each of ``frames`` (``frdm.engine.depends``): the bytes of every
    source frame in its context window and of its mask, the parameters, the engine version and the weights.
    Each file is read once, streamed. A movie's frames have no files of their own: the movie file's identity
    and the frame number stand in."""
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
            stage,
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
    keep_fill: bool = False,
) -> RestoreReport:
    """`frdm restore`: restore ``frames`` of ``src`` into the sequence ``out`` (atomic, resumable).

    ``keep_fill``: keep each frame's restorer output beside the output (``fill.FolderFillStore``), so a
    later run that changes only blend- or output-stage parameters re-blends instead of restoring."""
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
    fill_store = None
    if keep_fill and plan.todo:
        fill_keys = frame_keys(
            plan.source, None, plan.todo, plan.params, restorer, depends.weights_id(weights), stage="fill"
        )
        fill_store = FolderFillStore(os.path.dirname(os.path.abspath(plan.out.path(plan.todo[0]))), fill_keys)
    if plan.todo:

        def write(n: int, frame: Frame) -> None:
            write_frame(plan.out.path(n), frame, compression=compression, pixel_type=pixel_type)
            report.written.append(n)
            report.outputs[n] = plan.out.path(n)

        # Decoding the next frames and encoding the finished ones run on threads of their own beside the
        # restorer; the order of reads and writes, and every bit, are the serial path's (engine/overlap.py).
        restored = restore_frames(
            plan.source,
            plan.todo,
            plan.params,
            restorer,
            mask_source=plan.mask_source,
            progress=progress,
            fill_cache=fill_store,
            read_ahead=READ_AHEAD,
            halves_out=halves_written(plan.out.extension, plan.params["pixel_type"]),
        )
        # closing: a failed write stops the reader thread at once, not when the generator is collected.
        with WriteBehind(write, WRITE_BEHIND) as writer, contextlib.closing(restored):
            for n, frame in restored:
                frame.attributes[ATTR_KEY] = ("string", plan.keys[n])
                if MATTE_CHANNEL in frame.channels:
                    matte = frame.samples[..., frame.channels.index(MATTE_CHANNEL)]
                    report.matte_coverage[n] = float((matte > 0.5).mean())
                writer.submit(n, frame)
                del frame
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
