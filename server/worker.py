"""The worker thread: it owns the restorer (the model on the GPU), takes chunks of jobs from the fair
queue, serves frames from the result cache, restores the rest through ``engine.pipeline.restore_frames``
and pushes every reply to the socket loop over an inproc socket (ZeroMQ sockets are not thread-safe)."""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from typing import Any

import msgpack
import zmq

from frdm.engine import depends
from frdm.engine.errors import CancelledError, FrdmError
from frdm.server import protocol, sniff
from frdm.server.jobs import Job, JobBoard
from frdm.server.protocol import ImageRef, Limits
from frdm.server.replies import done_reply, error_reply, frame_reply, stop_error
from frdm.server.storage import (
    ResultCache,
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


def read_input(job: Job, kind: str, frame: int, limits: Limits) -> bytes:
    """The bytes of one source or mask frame: its inline blob, or its file opened from the root without
    following a symlink (whatever the path is by now, nothing outside the root is read)."""
    ref = (job.req.sources if kind == "sources" else job.req.masks)[frame]
    if ref.blob is not None:
        return job.blobs[ref.blob - 1]
    rp = (job.real_sources if kind == "sources" else job.real_masks)[frame]
    return read_regular(rp, f"{kind[:-1]} frame {frame}", sniff.max_file_bytes(limits))


def make_wire_source(job: Job, kind: str, limits: Limits) -> Any:
    """A ``frames.Source`` over a job's inputs, decoding only what is read. Every frame's header is
    measured against the per-frame limits on the very bytes that are decoded, by content (an EXR named
    .png is an EXR), so a file changed after acceptance is held to the same limits."""
    from frdm.engine.frames import Source, decode_image

    refs: dict[int, ImageRef] = job.req.sources if kind == "sources" else job.req.masks
    real = job.real_sources if kind == "sources" else job.real_masks

    class WireSource(Source):
        def __init__(self) -> None:
            self.description = f"job {job.id} {kind}"
            self.frame_numbers = sorted(refs)

        def path(self, frame: int) -> str | None:
            rp = real.get(frame)
            return rp.path if rp is not None else None

        def read(self, frame: int) -> Any:
            name = f"{kind[:-1]} frame {frame}"
            data = read_input(job, kind, frame, limits)
            header = sniff.sniff(sniff.reader_of(data), name)
            sniff.check_frame_size(header, limits, name)
            return decode_image(data, header.extension, name=name)

    return WireSource()


class Worker:
    """Runs jobs one chunk at a time until ``stopping`` is set; every job ends in ``done`` or ``error``."""

    def __init__(
        self,
        board: JobBoard,
        restorer: Any,
        engine_version: str,
        weights_id: str,
        cache: ResultCache,
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
        self.roots = roots
        self.limits = limits
        self.chunk = chunk
        self.stopping = stopping
        self.context = context

    def run(self) -> None:
        push = self.context.socket(zmq.PUSH)
        push.connect(WORKER_ENDPOINT)

        def emit(job: Job, header: dict[str, Any], blobs: tuple[bytes, ...] = ()) -> None:
            push.send_multipart([job.identity, msgpack.packb(header, use_bin_type=True), *blobs], copy=False)

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
            push.close(linger=-1)

    def _hash(self, job: Job, kind: str, frame: int) -> str:
        """Content id of one input frame (computed once per job, in the worker)."""
        key = (kind, frame)
        if key not in job.hashes:
            job.hashes[key] = depends.content_id(read_input(job, kind, frame, self.limits))
        return job.hashes[key]

    def _run_chunk(self, job: Job, emit: Emit) -> None:
        from frdm.engine.pipeline import restore_frames

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
        reach = self.restorer.context(params)
        targets = [job.remaining.popleft() for _ in range(min(self.chunk, len(job.remaining)))]
        # Keys from frdm.engine.depends; the window is the restorer's own context (a site's engine may differ
        # from the built-in ones), positional like the pipeline's.
        available = sorted(job.req.sources)
        keys = {}
        for f in targets:
            window = depends.window_at(f, reach, available)
            keys[f] = depends.frame_key(
                f,
                params,
                "output",
                window=window,
                sources={n: self._hash(job, "sources", n) for n in window},
                masks={f: self._hash(job, "masks", f)} if f in job.req.masks else None,
                engine_version=self.engine_version,
                weights_id=self.weights_id,
            )
        cached = {f: data for f in targets if (data := self.cache.get(keys[f])) is not None}
        todo = [f for f in targets if f not in cached]

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

        source = make_wire_source(job, "sources", self.limits)
        masks = make_wire_source(job, "masks", self.limits) if job.req.masks else None
        compression = params.get("compression", "same")
        pixel_type = params.get("pixel_type", "same")
        from frdm.engine.frames import encode_image

        results = restore_frames(source, todo, params, self.restorer, mask_source=masks, progress=progress)
        try:
            for frame, image in results:
                data = encode_image(image, ".exr", compression=compression, pixel_type=pixel_type)
                try:
                    self.cache.put(keys[frame], data)
                except OSError as exc:  # a full or failing cache disk costs the cache, not the frame
                    log.warning("cache: frame %s of job %s not cached (%s); delivered uncached", frame, job.id, exc)
                deliver_cached(frame)
                self._deliver(job, frame, keys[frame], data, False, emit)
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

    def _deliver(self, job: Job, frame: int, key: str, data: bytes, cached: bool, emit: Emit) -> None:
        job.finished_frames += 1
        job.done = float(job.finished_frames)
        job.keys[frame] = key
        if job.output_paths:
            write_under_root(job.output_paths[frame], data, f"output frame {frame}")
        header, blobs = frame_reply(job, frame, data, cached=cached)
        emit(job, header, blobs)
