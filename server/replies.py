"""The replies a job sends, each built in one place: the socket loop (re-attach replay, cancel of a
queued job, shutdown) and the worker (frames, done, failures) both call these."""

from __future__ import annotations

from typing import Any

from frdm.server import protocol
from frdm.server.jobs import Job

Reply = tuple[dict[str, Any], tuple[Any, ...]]  # header, blobs


def frame_reply(job: Job, frame: int, data: Any, *, cached: bool) -> Reply:
    """One finished frame: the path it was written to (path mode), or as message part 1 its raw pixels
    (``data`` a RawImage: its description goes in the header as ``image``) or its EXR bytes."""
    header = protocol.make_header(
        "frame",
        job.req.request_id,
        job=job.id,
        frame=frame,
        cached=cached,
        done=job.done,
        total=job.total,
    )
    if job.output_paths:
        return dict(header, path=job.output_paths[frame].path), ()
    if isinstance(data, protocol.RawImage):
        return dict(header, blob=1, image=data.spec.to_wire()), (data.buffer,)
    return dict(header, blob=1), (data,)


def progress_reply(job: Job, message: str) -> dict[str, Any]:
    return protocol.make_header(
        "progress",
        job.req.request_id,
        job=job.id,
        done=job.done,
        total=job.total,
        state=job.state,
        message=message,
    )


def done_reply(job: Job) -> dict[str, Any]:
    return protocol.make_header(
        "done",
        job.req.request_id,
        job=job.id,
        done=job.total,
        total=job.total,
        message=f"{job.total} frame(s) restored",
    )


def error_reply(job: Job, code: str, message: str, frames: list[int] | None = None) -> dict[str, Any]:
    return protocol.error_header(job.req.request_id, code, message, job=job.id, frames=frames)


def stop_error(job: Job) -> dict[str, Any]:
    return error_reply(
        job,
        "shutting_down",
        f"the server stopped after {job.finished_frames} of {job.total} frames of job {job.id} "
        "(those are cached); send the request again after restart",
    )
