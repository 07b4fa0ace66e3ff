"""The worker thread: it owns the restorer (the model on the GPU), takes chunks of jobs from the fair
queue, serves frames from the stage cache, restores (or only re-blends) the rest through
``engine.pipeline.restore_frames`` and pushes every reply to the socket loop over an inproc socket (ZeroMQ
sockets are not thread-safe)."""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import threading
import traceback
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from frdm.engine import depends
from frdm.engine.errors import CancelledError, FrdmError
from frdm.engine.fill import FillResult
from frdm.engine.frames import Source
from frdm.server import protocol, sniff
from frdm.server.jobs import Job, JobBoard
from frdm.server.ocio_files import check_ocio_files
from frdm.server.pixels import (
    changed_from_raw,
    entry_bytes,
    entry_image,
    frame_from_raw,
    raw_from_frame,
    wire_types,
    with_attributes,
)
from frdm.server.protocol import ImageRef, Limits, RawImage
from frdm.server.replies import done_reply, error_reply, frame_reply, stop_error
from frdm.server.storage import (
    ResultCache,
    SourceMemory,
    check_ocio_config,
    read_regular,
    remove_stale_under_root,
    write_under_root,
)

log = logging.getLogger("frdm.server")

WORKER_ENDPOINT = "inproc://frdm-worker"

Emit = Callable[..., None]


class _Stop(Exception):
    """The server is stopping: leave the job after the current frame."""


class NeedSources(Exception):
    """Frames the request named by content id only must be read (a target's own pixels, or the window of a
    target whose restorer output is not kept) and are not among the recent sources: the job ends with
    ``need_sources`` listing them, and the client resends with pixels."""

    def __init__(self, frames: list[int]):
        super().__init__(frames)
        self.frames = sorted(set(frames))


def read_input(job: Job, kind: str, frame: int, limits: Limits) -> Any:
    """The bytes of one source or mask frame: its inline blob, or its file opened from the root without
    following a symlink (whatever the path is by now, nothing outside the root is read)."""
    ref = (job.req.sources if kind == "sources" else job.req.masks)[frame]
    if ref.blob is not None:
        return job.blobs[ref.blob - 1]
    rp = (job.real_sources if kind == "sources" else job.real_masks)[frame]
    return read_regular(rp, f"{kind[:-1]} frame {frame}", sniff.max_file_bytes(limits))


class WireSource(Source):
    """A ``frames.Source`` over a job's inputs, decoding only what is read: raw pixels need no decoder;
    every file's header is measured against the per-frame limits on the very bytes that are decoded, by
    content (an EXR named .png is an EXR), so a file changed after acceptance is held to the same limits.
    It remembers which pixel arrays it made from raw buffers (weakly: the pipeline's frame cache decides
    how long they live), so a frame that comes back with those very pixels is sent as the source's own
    buffer."""

    def __init__(self, job: Job, kind: str, limits: Limits, memory: SourceMemory | None = None):
        self.job, self.kind, self.limits, self.memory = job, kind, limits, memory
        self.refs: dict[int, ImageRef] = job.req.sources if kind == "sources" else job.req.masks
        self.real = job.real_sources if kind == "sources" else job.real_masks
        self.description = f"job {job.id} {kind}"
        self.frame_numbers = sorted(self.refs)
        self._from_raw: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()

    def path(self, frame: int) -> str | None:
        rp = self.real.get(frame)
        return rp.path if rp is not None else None

    def raw(self, frame: int) -> RawImage | None:
        """The frame's raw pixels as received, if it came as raw pixels."""
        return job_raw(self.job, self.refs.get(frame))

    def read(self, frame: int) -> Any:
        from frdm.engine.frames import decode_image

        name = f"{self.kind[:-1]} frame {frame}"
        ref = self.refs[frame]
        if ref.id is not None and self.raw(frame) is None:
            # The worker recalled the windows of the targets it restores; the engine may read a frame beyond
            # them (one between two targets of a block): that is looked up now, asked for if gone.
            image = self.memory.get(ref.id) if self.memory is not None else None
            if image is None:
                raise NeedSources([frame])
            self.job.recalled[frame] = image
        raw = self.raw(frame)
        if raw is not None:  # sized against the limits and its description when the job was accepted
            cid = self.job.hashes.get((self.kind, frame)) if self.memory is not None else None
            known = self.memory.pixels(cid) if self.memory is not None and cid is not None else None
            checked = known is None and self.memory is not None and cid is not None and self.memory.finite(cid)
            image = frame_from_raw(raw, name, known, checked=checked)
            # Float32 pixels converted from a buffer of mixed types are worth keeping; halves are held as
            # received (the buffer is in the recent sources already), and only their check remembered.
            if self.memory is not None and cid is not None and known is None:
                if image.half is None:
                    self.memory.put_pixels(cid, image.samples)
                elif not checked:
                    self.memory.mark_finite(cid)
            self._from_raw[frame] = image.samples
            return image
        data = read_input(self.job, self.kind, frame, self.limits)
        header = sniff.sniff(sniff.reader_of(data), name)
        sniff.check_frame_size(header, self.limits, name)
        return decode_image(data, header.extension, name=name)

    def output(self, frame: int, image: Any, pixel_type: str) -> tuple[RawImage, bool]:
        """The finished frame as raw pixels, and whether they are the source's own buffer (the restorer
        changed nothing, so nothing is converted or copied). Read through ``samples``: asking a frame that
        holds halves for its ``pixels`` would decode a float32 copy nobody needs."""
        raw = self.raw(frame)
        held = image.samples
        if (
            raw is not None
            and wire_types(image.formats, pixel_type) == raw.spec.types
            and tuple(image.channels) == raw.spec.channels
        ):
            original = self._from_raw.get(frame)
            if original is held:
                return with_attributes(raw, image), True
            # A float32 frame (mixed types) against the float32 pixels it came from: only the changes converted.
            same_form = original is not None and (original.dtype, original.shape) == (held.dtype, held.shape)
            if same_form and held.dtype == np.float32:
                return changed_from_raw(raw, original, image), False
        return raw_from_frame(image, pixel_type), False


def job_raw(job: Job, ref: ImageRef | None) -> RawImage | None:
    if ref is not None and ref.id is not None:
        return job.recalled.get(ref.frame)
    if ref is None or ref.blob is None or ref.image is None:
        return None
    return RawImage(ref.image, job.blobs[ref.blob - 1])


class FillCache:
    """The fill-stage entries of one chunk: ``restore_frames`` asks by frame number, keys are ours. A
    failing cache disk costs the cache, never the frame. An entry once read is held until its frame is
    finished (``release``), so the worker's check (which frames must be read) and the pipeline see the same
    entries (and read each once), and a chunk does not keep its finished frames' entries (with deflicker a
    2K entry holds two frame-sized arrays)."""

    def __init__(self, cache: ResultCache, keys: dict[int, str]):
        self.cache, self.keys = cache, keys
        self.held: dict[int, FillResult] = {}

    def release(self, frame: int) -> None:
        self.held.pop(frame, None)

    def get(self, frame: int) -> FillResult | None:
        if frame in self.held:
            return self.held[frame]
        result = self.cache.get(self.keys[frame], "fill", FillResult.from_bytes)
        if result is not None:
            self.held[frame] = result
        return result

    def put(self, frame: int, result: FillResult) -> None:  # not held: a frame is restored once a chunk
        try:
            self.cache.put(self.keys[frame], result.to_bytes, "fill")  # serialised where it is written
        except OSError as exc:
            log.warning("cache: fill result of frame %s not kept (%s)", frame, exc)


def cached_output(cache: ResultCache, job: Job, frame: int, key: str) -> RawImage | None:
    """A finished frame from the cache (its pixels may be the request's own source buffer)."""
    ref = job.req.sources.get(frame)
    return cache.get(key, "frame", lambda data: entry_image(data, job_raw(job, ref)))  # type: ignore[no-any-return]


def deliver_payload(job: Job, frame: int, raw: RawImage, image: Any = None) -> Any:
    """What a frame reply carries: the raw pixels (``reply: raw``) or EXR bytes (written to the output
    path in path mode). ``image``, the engine Frame if the caller has it, saves a conversion."""
    if job.req.reply == "raw" and not job.output_paths:
        return raw
    from frdm.engine.frames import encode_image

    params = job.req.params
    frame_obj = image if image is not None else frame_from_raw(raw, f"frame {frame}")
    data = encode_image(frame_obj, ".exr", compression=params["compression"], pixel_type=params["pixel_type"])
    if job.output_paths:
        write_under_root(job.output_paths[frame], data, f"output frame {frame}")
    return data


class Worker:
    """Runs jobs one chunk at a time until ``stopping`` is set; every job ends in ``done`` or ``error``."""

    def __init__(
        self,
        board: JobBoard,
        restorer: Any,
        engine_version: str,
        weights_id: str,
        cache: ResultCache,
        memory: SourceMemory,
        roots: list[str],
        limits: Limits,
        chunk: int,
        stopping: threading.Event,
        context: zmq.Context,
    ):
        self.board = board
        self.restorer = restorer
        self.engine_version = engine_version
        self.weights_id = weights_id
        self.cache = cache
        self.memory = memory
        self.roots = roots
        self.limits = limits
        self.chunk = chunk
        self.stopping = stopping
        self.context = context
        self._hasher = concurrent.futures.ThreadPoolExecutor(min(4, os.cpu_count() or 1), "frdm-hash")

    def run(self) -> None:
        push = self.context.socket(zmq.PUSH)
        push.connect(WORKER_ENDPOINT)

        def emit(job: Job, header: dict[str, Any], blobs: tuple[Any, ...] = ()) -> None:
            # Packed once, here: the socket loop forwards the header bytes as they are.
            push.send_multipart([job.identity, job.id.encode(), protocol.pack(header), *blobs], copy=False)

        queue = self.board.queue
        try:
            while not self.stopping.is_set():
                job = queue.take(timeout=0.2)
                if job is None:
                    continue
                self.board.start(job)
                try:
                    self._run_chunk(job, emit)
                    if job.remaining:
                        queue.put(job, front=True)
                        job.state = "queued"
                        continue
                    emit(job, done_reply(job))
                except _Stop:
                    emit(job, stop_error(job))
                except NeedSources as exc:
                    emit(
                        job,
                        error_reply(
                            job,
                            "need_sources",
                            f"job {job.id}: frames {exc.frames[:10]} came by content id only and must be read, "
                            "but the server no longer holds them; send them with their pixels",
                            frames=exc.frames,
                        ),
                    )
                except CancelledError:
                    emit(
                        job,
                        error_reply(
                            job,
                            "cancelled",
                            f"job {job.id} cancelled after {job.finished_frames} of {job.total} frames; "
                            "nothing partial was written",
                        ),
                    )
                except FrdmError as exc:
                    emit(job, error_reply(job, exc.code, str(exc)))
                except Exception as exc:  # a bug or a resource failure: this job fails, the server goes on
                    log.error("job %s failed:\n%s", job.id, traceback.format_exc())
                    emit(
                        job,
                        error_reply(
                            job,
                            "internal",
                            f"internal error in job {job.id}: {type(exc).__name__}: {exc} (the server log "
                            "has the details; the server is still running)",
                        ),
                    )
                self.board.finish(job)
        finally:
            for job in queue.drain():
                emit(job, stop_error(job))
                self.board.forget(job.id)
            self.cache.close()  # what the cache writer still holds reaches the disk ("those are cached")
            self._hasher.shutdown(wait=False)
            push.close(linger=-1)

    def _hash(self, job: Job, kind: str, frame: int) -> str:
        """Content id of one input frame (computed once per job, in the worker). Raw pixels: of their
        description too (the same bytes with another size or channel list are another image)."""
        key = (kind, frame)
        if key not in job.hashes:
            ref = (job.req.sources if kind == "sources" else job.req.masks)[frame]
            raw = job_raw(job, ref)
            if ref.id is not None:  # the client's word for a frame it sent before (it only fools itself)
                job.hashes[key] = ref.id
            elif raw is not None:
                job.hashes[key] = raw.content_id()
                if kind == "sources":
                    self.memory.put(job.hashes[key], raw)
            else:
                job.hashes[key] = depends.content_id(read_input(job, kind, frame, self.limits))
        return job.hashes[key]

    def _hash_all(self, job: Job, frames: list[tuple[str, int]]) -> None:
        """Content ids of inline raw frames hashed side by side (hashlib lets go of the GIL on big buffers:
        a 2K frame is ~16 ms of SHA-256 on one core); the bookkeeping stays on this thread."""

        def ref(key: tuple[str, int]) -> ImageRef:
            return (job.req.sources if key[0] == "sources" else job.req.masks)[key[1]]

        todo = [k for k in frames if k not in job.hashes and ref(k).id is None and job_raw(job, ref(k)) is not None]
        if len(todo) > 1:
            raws = [job_raw(job, ref(k)) for k in todo]
            for key, raw, cid in zip(todo, raws, self._hasher.map(RawImage.content_id, raws)):
                job.hashes[key] = cid
                if key[0] == "sources":
                    self.memory.put(cid, raw)  # type: ignore[arg-type]
        for kind, frame in frames:
            self._hash(job, kind, frame)

    def _recall(self, job: Job, frames: list[int]) -> None:
        """The pixels of ``frames`` (named by id) from the recent sources, into ``job.recalled``; NeedSources
        for those not there."""
        lacking = []
        for n in frames:
            if n not in job.recalled:
                image = self.memory.get(job.req.sources[n].id)  # type: ignore[arg-type]
                if image is None:
                    lacking.append(n)
                else:
                    job.recalled[n] = image
        if lacking:
            raise NeedSources(lacking)

    @staticmethod
    def _let_go_recalled(job: Job, unfinished: list[int], reach: tuple[int, int], available: list[int]) -> None:
        """Frames by id recalled for earlier chunks that no unfinished target reads are let go (a long job
        sent by id held every one it recalled until it ended); a target's stays, for a re-attach's replay
        of a frame stored as the source's own pixels. Asked per recalled frame (a few), not per unfinished
        target: every chunk of a long job asks again."""
        if not job.recalled:
            return
        pending, targets = set(unfinished), set(job.req.frames)
        for n in [n for n in job.recalled if n not in targets]:
            if not pending.intersection(depends.readers_at(n, reach, available)):
                del job.recalled[n]

    def _run_chunk(self, job: Job, emit: Emit) -> None:
        from frdm.engine.frames import halves_written
        from frdm.engine.pipeline import READ_AHEAD, restore_frames

        params = job.req.params
        if job.cancel.is_set():
            raise CancelledError(f"job {job.id} cancelled")
        for folder in {(rp.root, rp.parts[:-1]): rp for rp in job.output_paths.values()}.values():
            remove_stale_under_root(folder)
        ocio_config = params.get("ocio_config", "")
        if ocio_config:
            # Checked again here, just before the engine may load it: the file may have changed since the
            # socket loop accepted it, and OpenImageIO's loader blocks every thread on a FIFO.
            check_ocio_config(ocio_config, self.roots)
            check_ocio_files(ocio_config, self.roots)  # and the LUTs it names
        reach = self.restorer.context(params)
        targets = [job.remaining.popleft() for _ in range(min(self.chunk, len(job.remaining)))]
        # Keys from frdm.engine.depends; the window is the restorer's own context (a site's engine may differ
        # from the built-in ones), positional like the pipeline's. Two stages: the finished frame (output)
        # and the restorer's output (fill), from which a blend- or output-stage change only re-blends.
        available = sorted(job.req.sources)
        windows = {f: depends.window_at(f, reach, available) for f in targets}
        self._let_go_recalled(job, [*targets, *job.remaining], reach, available)
        self._hash_all(
            job,
            [("sources", n) for n in sorted({n for w in windows.values() for n in w})]
            + [("masks", f) for f in targets if f in job.req.masks],
        )
        keys, fill_keys = {}, {}
        for f in targets:
            window = windows[f]
            sources = {n: self._hash(job, "sources", n) for n in window}
            masks = {f: self._hash(job, "masks", f)} if f in job.req.masks else None
            keys[f], fill_keys[f] = (
                depends.frame_key(
                    f,
                    params,
                    stage,
                    window=window,
                    sources=sources,
                    masks=masks,
                    engine_version=self.engine_version,
                    weights_id=self.weights_id,
                )
                for stage in ("output", "fill")
            )
        # A target named by id (a frame previewed again) is taken from the recent sources first: every reply
        # of it, cached or not, is built on its pixels.
        self._recall(job, [f for f in targets if job.req.sources[f].id is not None])
        cached = {f: raw for f in targets if (raw := cached_output(self.cache, job, f, keys[f])) is not None}
        todo = sorted(f for f in targets if f not in cached)  # as restore_frames yields them ('frames' may not be)

        def deliver_cached(below: float) -> None:
            # Frames leave in increasing order, cached or not.
            for f in sorted(n for n in cached if n < below):
                self._deliver(job, f, keys[f], cached.pop(f), True, emit)

        if not todo:
            deliver_cached(float("inf"))
            return
        base = job.finished_frames + len(cached)

        def progress(done: float, total: float, message: str) -> None:
            if job.cancel.is_set():
                raise CancelledError(f"job {job.id} cancelled")
            job.done = min(base + protocol.progress_fraction(done, total) * len(todo), job.total)
            job.message = message or job.message

        fill_cache = FillCache(self.cache, fill_keys)
        by_id = {n for n, ref in job.req.sources.items() if ref.id is not None}
        if by_id:
            # A target without a kept restorer output reads its whole window: frames of it that came by id
            # only are taken from the recent sources, and those not there asked for before anything of this
            # chunk is restored or delivered.
            self._recall(
                job,
                sorted(
                    {n for f in todo if fill_cache.get(f) is None for n in depends.window_at(f, reach, available)}
                    & by_id
                ),
            )
        source = WireSource(job, "sources", self.limits, self.memory)
        masks = WireSource(job, "masks", self.limits) if job.req.masks else None
        results = restore_frames(
            source,
            todo,
            params,
            self.restorer,
            mask_source=masks,
            progress=progress,
            fill_cache=fill_cache,
            # Sources are read and converted to float on a thread of their own, ahead of the restorer (the
            # model-space conversion, the restorer and the reply of the frame before run beside it).
            read_ahead=READ_AHEAD,
            # Half channels go back as half (raw replies: ``wire_types``; EXR replies: the writer) unless
            # pixel_type says float: frames received as halves are then finished as halves, and a changed
            # frame's reply is its own samples (``raw_from_frame``), no float32 frame converted back.
            halves_out=halves_written(".exr", params["pixel_type"]),
        )
        try:
            for frame, image in results:
                fill_cache.release(frame)  # finished: the pipeline reads a frame's entry no more
                raw, same = source.output(frame, image, params["pixel_type"])
                try:
                    # Serialised where it is written (the writer thread): a changed frame is compared with its
                    # source there, and only its changed pixels are stored.
                    entry = functools.partial(entry_bytes, raw, source.raw(frame), same_as_source=same)
                    self.cache.put(keys[frame], entry, "frame")
                except OSError as exc:  # a full or failing cache disk costs the cache, not the frame
                    log.warning("cache: frame %s of job %s not cached (%s); delivered uncached", frame, job.id, exc)
                deliver_cached(frame)
                self._deliver(job, frame, keys[frame], raw, False, emit, image)
                last = frame == todo[-1]
                if last:
                    deliver_cached(float("inf"))
                more = bool(job.remaining) or not last
                # SIGTERM: the frame in progress is finished and delivered; the rest stays for a restart.
                if self.stopping.is_set() and more:
                    raise _Stop()
                if job.cancel.is_set() and more:
                    raise CancelledError(f"job {job.id} cancelled")
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()

    def _deliver(
        self, job: Job, frame: int, key: str, raw: RawImage, cached: bool, emit: Emit, image: Any = None
    ) -> None:
        payload = deliver_payload(job, frame, raw, image)
        job.finished_frames += 1
        job.done = float(job.finished_frames)
        job.keys[frame] = key
        header, blobs = frame_reply(job, frame, payload, cached=cached)
        emit(job, header, blobs)
