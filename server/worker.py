"""The worker thread: it owns the restorer (the model on the GPU), takes chunks of jobs from the fair
queue, serves frames from the result cache, restores the rest through ``engine.pipeline.restore_frames``
and pushes every reply to the socket loop over an inproc socket (ZeroMQ sockets are not thread-safe)."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import traceback
from collections.abc import Callable
from typing import Any

import msgpack
import zmq

from frdm.engine import depends
from frdm.engine.errors import CancelledError, FrdmError
from frdm.server import protocol
from frdm.server.jobs import Job, JobBoard
from frdm.server.protocol import ImageRef, Limits, ProtocolError
from frdm.server.replies import done_reply, error_reply, frame_reply, stop_error
from frdm.server.storage import ResultCache, atomic_write_bytes, remove_stale_partials

log = logging.getLogger("frdm.server")

WORKER_ENDPOINT = "inproc://frdm-worker"

Emit = Callable[..., None]


class _Stop(Exception):
    """The server is stopping: leave the job after the current frame."""


def make_wire_source(job: Job, kind: str, limits: Limits) -> Any:
    """A ``frames.Source`` over a job's inline blobs and resolved paths, decoding only what is read."""
    from frdm.engine.frames import Source, decode_image, read_frame

    refs: dict[int, ImageRef] = job.req.sources if kind == "sources" else job.req.masks
    real = job.real_sources if kind == "sources" else job.real_masks

    class WireSource(Source):
        def __init__(self) -> None:
            self.description = f"job {job.id} {kind}"
            self.frame_numbers = sorted(refs)

        def path(self, frame: int) -> str | None:
            return real.get(frame)

        def read(self, frame: int) -> Any:
            ref = refs[frame]
            name = f"{kind[:-1]} frame {frame}"
            if ref.blob is not None:
                return decode_image(job.blobs[ref.blob - 1], ".exr", name=name)
            image = read_frame(real[frame])
            pixels = image.width * image.height
            if pixels > limits.max_pixels_per_frame:
                raise ProtocolError("too_large", f"{name}: {pixels} pixels exceeds the server's limit")
            return image

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
        """Content hash of one input frame (computed once per job, in the worker)."""
        key = (kind, frame)
        if key not in job.hashes:
            refs = job.req.sources if kind == "sources" else job.req.masks
            ref = refs[frame]
            h = hashlib.sha256()
            if ref.blob is not None:
                h.update(job.blobs[ref.blob - 1])
            else:
                real = (job.real_sources if kind == "sources" else job.real_masks)[frame]
                with open(real, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 22), b""):
                        h.update(block)
            job.hashes[key] = h.hexdigest()
        return job.hashes[key]

    def _run_chunk(self, job: Job, emit: Emit) -> None:
        from frdm.engine.pipeline import restore_frames

        params = job.req.params
        if job.cancel.is_set():
            raise CancelledError(f"job {job.id} cancelled")
        for directory in {os.path.dirname(p) for p in job.output_paths.values()}:
            remove_stale_partials(directory)
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
                self.cache.put(keys[frame], data)
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
            atomic_write_bytes(job.output_paths[frame], data)
        header, blobs = frame_reply(job, frame, data, cached=cached)
        emit(job, header, blobs)
