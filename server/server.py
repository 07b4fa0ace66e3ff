"""The FRDM inference server (``frdm serve``): a ZeroMQ ROUTER in front of one resident restorer.

Threads and who owns what:

* the main thread owns the ROUTER socket: it receives and validates requests, answers ``hello``/
  ``status``/``cancel`` at once, queues ``restore`` jobs, forwards the worker's replies and sends a
  ``progress`` heartbeat for every live job each ``heartbeat`` seconds (independent of how long a frame
  takes, so a client can tell a slow job from a dead server);
* one worker thread owns the restorer (the model on the GPU): it takes chunks of jobs from a fair queue
  (round-robin across clients, so a 1000-frame job does not starve a 3-frame preview), serves frames from
  the result cache, restores the rest through ``engine.pipeline.restore_frames`` and pushes replies to
  the main thread over an inproc socket (ZeroMQ sockets are not thread-safe).

A failure inside a job becomes an ``error`` reply and the server goes on. SIGTERM/SIGINT: no new jobs,
the running job finishes its current frame, every write is atomic, then the process exits 0.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import importlib
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zmq

from frdm import __version__
from frdm.engine import depends
from frdm.engine.atomic import remove_stale
from frdm.engine.atomic import write_bytes as atomic_write_bytes
from frdm.engine.errors import CancelledError, FrdmError
from frdm.server import protocol
from frdm.server.protocol import ImageRef, Limits, ProtocolError, RestoreRequest

log = logging.getLogger("frdm.server")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_EXR_HEADER_PEEK = 1 << 20  # bytes read from a path-mode file to check its declared size


@dataclass
class ServerConfig:
    bind: str = "tcp://127.0.0.1:5555"
    engine: str = "classical"
    weights: str | None = None
    device: str | None = None
    curve_keys: str | None = None  # a folder made by ``frdm keygen``
    allow_roots: list[str] = field(default_factory=list)  # path mode only under these
    cache_dir: str | None = None
    cache_max_bytes: int = 20 << 30
    limits: Limits = field(default_factory=Limits)
    chunk: int = 8  # frames a job runs before the worker turns to the next client
    heartbeat: float = 1.0  # seconds between progress messages of a live job (the protocol promises <= 2)
    restorer_factory: str | None = None  # "module:callable", a site's own engine (and the tests')


# --- security helpers --------------------------------------------------------------------------------


def is_local_endpoint(endpoint: str) -> bool:
    """True for ipc:// and tcp:// on a loopback address: endpoints only this machine can reach."""
    if endpoint.startswith("ipc://"):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://") :].rsplit(":", 1)[0]
    return host in LOOPBACK_HOSTS


def check_bind(endpoint: str, curve_keys: str | None) -> None:
    if not endpoint.startswith(("tcp://", "ipc://")):
        raise FrdmError(f"--bind {endpoint}: use tcp://HOST:PORT or ipc:///path/to/socket")
    if not is_local_endpoint(endpoint) and not curve_keys:
        raise FrdmError(
            f"--bind {endpoint} is reachable from other machines; FRDM refuses that without encryption and "
            "client authentication. Make keys with 'frdm keygen DIR' and pass --curve-keys DIR, or bind "
            "tcp://127.0.0.1:PORT"
        )


def resolve_under_roots(path: str, roots: list[str], *, what: str, must_exist: bool) -> str:
    """The real path of ``path`` if it lies under an allowed root (after resolving symlinks), else
    ProtocolError(forbidden_path). '..' components are refused outright: a compositor never needs them."""
    if not roots:
        raise ProtocolError(
            "forbidden_path",
            f"{what} '{path}': this server does not accept paths (start it with --allow-root DIR) — send the "
            "frames inline instead",
        )
    if ".." in path.replace("\\", "/").split("/"):
        raise ProtocolError("forbidden_path", f"{what} '{path}': '..' is not allowed in paths")
    real = os.path.realpath(path)
    for root in roots:
        if os.path.commonpath([real, root]) == root:
            break
    else:
        raise ProtocolError(
            "forbidden_path",
            f"{what} '{path}' (really {real}) is outside the server's allowed roots ({', '.join(roots)})",
        )
    if must_exist and not os.path.isfile(real):
        raise ProtocolError("bad_input", f"{what} '{path}' does not exist on the server")
    return real


# --- result cache ------------------------------------------------------------------------------------


class ResultCache:
    """Finished frames as EXR bytes on disk, keyed by (input content hash, parameter hash, engine version).

    Entries are written atomically, so a server killed mid-write leaves no bad entry; least recently used
    entries go when the folder grows past ``max_bytes``."""

    def __init__(self, directory: str, max_bytes: int):
        self.directory = directory
        self.max_bytes = max_bytes
        os.makedirs(directory, exist_ok=True)
        remove_stale(directory)
        self._size = sum(e.stat().st_size for e in os.scandir(directory) if e.is_file())

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, key + ".exr")

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            os.utime(path)  # recently used
            return data
        except OSError:
            return None

    def put(self, key: str, data: bytes) -> None:
        atomic_write_bytes(self._path(key), data)
        self._size += len(data)
        if self._size > self.max_bytes:
            self._prune()

    def _prune(self) -> None:
        entries = sorted(
            (e for e in os.scandir(self.directory) if e.is_file() and e.name.endswith(".exr")),
            key=lambda e: e.stat().st_mtime,
        )
        total = sum(e.stat().st_size for e in entries)
        for e in entries:
            if total <= self.max_bytes * 0.8:
                break
            size = e.stat().st_size
            try:
                os.unlink(e.path)
                total -= size
            except OSError:
                pass
        self._size = total


# --- jobs and the fair queue -------------------------------------------------------------------------


@dataclass
class Job:
    req: RestoreRequest
    identity: bytes
    blobs: list[bytes]
    real_sources: dict[int, str]  # path mode: frame -> resolved path
    real_masks: dict[int, str]
    output_paths: dict[int, str]  # path mode output: frame -> resolved path
    remaining: collections.deque[int]
    state: str = "queued"  # queued | running
    done: float = 0.0
    message: str = "queued"
    finished_frames: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)
    hashes: dict[tuple[str, int], str] = field(default_factory=dict)
    keys: dict[int, str] = field(default_factory=dict)  # finished frame -> cache key (for re-attach replay)

    @property
    def id(self) -> str:
        return self.req.job_id

    @property
    def total(self) -> int:
        return len(self.req.frames)


class FairQueue:
    """Jobs per client, clients served round-robin, a chunk at a time."""

    def __init__(self) -> None:
        self._clients: collections.OrderedDict[bytes, collections.deque[Job]] = collections.OrderedDict()
        self._cond = threading.Condition()

    def put(self, job: Job, *, front: bool = False) -> None:
        with self._cond:
            jobs = self._clients.setdefault(job.identity, collections.deque())
            if front:
                jobs.appendleft(job)
            else:
                jobs.append(job)
            self._cond.notify()

    def take(self, timeout: float) -> Job | None:
        """The head job of the client whose turn it is; that client goes to the back of the line."""
        with self._cond:
            if not self._clients and not self._cond.wait(timeout):
                return None
            if not self._clients:
                return None
            identity, jobs = self._clients.popitem(last=False)
            job = jobs.popleft()
            if jobs:
                self._clients[identity] = jobs  # re-inserted last: its next turn comes after the others
            return job

    def remove(self, job_id: str) -> Job | None:
        with self._cond:
            for identity, jobs in list(self._clients.items()):
                for job in jobs:
                    if job.id == job_id:
                        jobs.remove(job)
                        if not jobs:
                            del self._clients[identity]
                        return job
        return None

    def drain(self) -> list[Job]:
        with self._cond:
            out = [j for jobs in self._clients.values() for j in jobs]
            self._clients.clear()
            return out

    def __len__(self) -> int:
        with self._cond:
            return sum(len(j) for j in self._clients.values())

    def order(self) -> list[Job]:
        """Jobs in the order the worker will reach them (first chunk of each)."""
        with self._cond:
            queues = [list(j) for j in self._clients.values()]
        out: list[Job] = []
        while any(queues):
            for q in queues:
                if q:
                    out.append(q.pop(0))
        return out


class _Stop(Exception):
    """The server is stopping: leave the job after the current frame."""


# --- the source the pipeline reads -------------------------------------------------------------------


def _make_wire_source(job: Job, kind: str, limits: Limits) -> Any:
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


# --- the server --------------------------------------------------------------------------------------


class Server:
    def __init__(self, config: ServerConfig, restorer: Any = None):
        self.config = config
        self.limits = config.limits
        self.roots = [os.path.realpath(r) for r in config.allow_roots]
        for given, real in zip(config.allow_roots, self.roots):
            if not os.path.isdir(real):
                raise FrdmError(f"--allow-root {given}: not a folder")
        check_bind(config.bind, config.curve_keys)
        self.restorer = restorer if restorer is not None else self._create_restorer()
        self.engine_version = str(getattr(self.restorer, "engine_version", "unknown"))
        self.weights_id = depends.weights_id(config.weights)  # once: frames' keys and the hello carry it
        cache_dir = config.cache_dir or os.path.join(
            os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "frdm", "server"
        )
        self.cache = ResultCache(cache_dir, config.cache_max_bytes)
        self.queue = FairQueue()
        self.jobs: dict[str, Job] = {}  # live jobs (queued or running), by id
        self.current: Job | None = None
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.context = zmq.Context()
        self.endpoint = config.bind
        self._auth: Any = None
        self._router: zmq.Socket | None = None

    def _create_restorer(self) -> Any:
        if self.config.restorer_factory:
            module_name, _, attr = self.config.restorer_factory.partition(":")
            try:
                factory = getattr(importlib.import_module(module_name), attr or "create_restorer")
            except (ImportError, AttributeError) as exc:
                raise FrdmError(f"--restorer {self.config.restorer_factory}: cannot import it ({exc})") from None
            return factory()
        from frdm.engine.restorer import create_restorer

        return create_restorer(self.config.engine, weights=self.config.weights, device=self.config.device)

    # --- sockets -----------------------------------------------------------------------------------

    def _open_router(self) -> zmq.Socket:
        sock = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # sending to a vanished client raises: we stop its job
        # A peer sending one part larger than the whole-request limit is disconnected by libzmq itself,
        # before the bytes are ever held in memory.
        sock.setsockopt(zmq.MAXMSGSIZE, min(self.limits.max_message_bytes, 2**63 - 1))
        if self.config.curve_keys:
            from zmq.auth import CURVE_ALLOW_ANY, load_certificate
            from zmq.auth.thread import ThreadAuthenticator

            keys = self.config.curve_keys
            try:
                public, secret = load_certificate(os.path.join(keys, "server.key_secret"))
            except (OSError, ValueError) as exc:
                raise FrdmError(
                    f"--curve-keys {keys}: no server.key_secret ({exc}); run 'frdm keygen {keys}'"
                ) from None
            self._auth = ThreadAuthenticator(self.context)
            self._auth.start()
            clients = os.path.join(keys, "clients")
            if os.path.isdir(clients) and any(n.endswith(".key") for n in os.listdir(clients)):
                self._auth.configure_curve(domain="*", location=clients)  # only the listed clients
            else:
                log.warning("no client keys in %s: any client holding the server's public key is admitted", clients)
                self._auth.configure_curve(domain="*", location=CURVE_ALLOW_ANY)
            sock.curve_secretkey = secret
            sock.curve_publickey = public
            sock.curve_server = True
        if "[" in self.config.bind:  # an IPv6 address such as tcp://[::1]:5555: libzmq needs IPv6 turned on
            sock.ipv6 = True
        try:
            sock.bind(self.config.bind)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise FrdmError(f"cannot bind {self.config.bind}: {exc} (is another server running there?)") from None
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT) or self.config.bind
        return sock

    def _send(self, identity: bytes, header: dict[str, Any], blobs: Sequence[Any] = ()) -> bool:
        assert self._router is not None
        try:
            self._router.send_multipart([identity, protocol.pack(header), *blobs], flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError as exc:
            # EHOSTUNREACH: the client went away. EAGAIN: it stopped reading. Either way its job is orphaned.
            job_id = header.get("job")
            with self.lock:
                job = self.jobs.get(job_id) if isinstance(job_id, str) else None
            if job is not None and job.identity == identity:
                log.warning("client of job %s is gone (%s); cancelling it", job_id, exc)
                job.cancel.set()
                if self.queue.remove(job.id) is not None:
                    with self.lock:
                        self.jobs.pop(job.id, None)
            return False

    # --- the main loop -----------------------------------------------------------------------------

    def serve(self, ready: Callable[[str], None] | None = None) -> int:
        self._router = self._open_router()
        pull = self.context.socket(zmq.PULL)
        pull.bind("inproc://frdm-worker")
        worker = threading.Thread(target=self._worker, name="frdm-worker", daemon=True)
        worker.start()
        if ready is not None:
            ready(self.endpoint)
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(pull, zmq.POLLIN)
        next_beat = time.monotonic() + self.config.heartbeat
        try:
            while True:
                events = dict(poller.poll(timeout=100))
                if pull in events:
                    self._forward(pull)
                if self._router in events:
                    for _ in range(64):  # bounded so a flood cannot starve the heartbeat
                        try:
                            parts = self._router.recv_multipart(flags=zmq.NOBLOCK, copy=True)
                        except zmq.Again:
                            break
                        self._handle(parts)
                now = time.monotonic()
                if now >= next_beat:
                    self._heartbeat()
                    next_beat = now + self.config.heartbeat
                if not self.stopping.is_set() and not worker.is_alive():
                    # The worker owns the model; without it queued jobs would wait forever on heartbeats.
                    log.error("the worker thread died; stopping so jobs fail now instead of waiting")
                    self.stopping.set()
                if self.stopping.is_set() and not worker.is_alive():
                    self._forward(pull)
                    for job in self.queue.drain():
                        self._send(job.identity, self._stop_error(job))
                    break
        finally:
            self.stopping.set()  # if this loop raised, the worker must still end before the context terminates
            worker.join(timeout=5)
            pull.close(0)
            self._router.close(linger=1000)
            if self._auth is not None:
                self._auth.stop()
            self.context.term()
        return 0

    def _forward(self, pull: zmq.Socket) -> None:
        while True:
            try:
                parts = pull.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity = bytes(parts[0].buffer)
            header = msgpack.unpackb(bytes(parts[1].buffer), raw=False)
            self._send(identity, header, parts[2:])

    def request_stop(self, *_: Any) -> None:
        if not self.stopping.is_set():
            log.info("stopping: finishing the current frame, then exiting")
        self.stopping.set()

    def _heartbeat(self) -> None:
        with self.lock:
            jobs = list(self.jobs.values())
        order = {job.id: i for i, job in enumerate(self.queue.order())}
        for job in jobs:
            message = job.message
            if job.state == "queued" and job.id in order:
                message = f"queued ({order[job.id]} job(s) ahead)" if order[job.id] else "queued (next)"
            self._send(
                job.identity,
                protocol.make_header(
                    "progress",
                    job.req.request_id,
                    job=job.id,
                    done=job.done,
                    total=job.total,
                    state=job.state,
                    message=message,
                ),
            )

    # --- requests ----------------------------------------------------------------------------------

    def _handle(self, parts: list[bytes]) -> None:
        identity, body = parts[0], parts[1:]
        request_id = ""
        try:
            if not body:
                raise ProtocolError("bad_request", "empty message: expected [msgpack header, blobs...]")
            size = sum(len(p) for p in body)
            if size > self.limits.max_message_bytes:
                raise ProtocolError(
                    "too_large",
                    f"message of {size} bytes exceeds the limit of {self.limits.max_message_bytes}",
                )
            header = protocol.unpack(body[0])
            rid = header.get("id")
            if isinstance(rid, str) and 0 < len(rid) <= protocol.MAX_ID_LEN and rid.isprintable():
                request_id = rid
            protocol.check_version(header)
            kind = header.get("type")
            if kind not in protocol.REQUEST_TYPES:
                raise ProtocolError(
                    "bad_request",
                    f"unknown request type {kind!r} (known: {', '.join(protocol.REQUEST_TYPES)})",
                )
            request_id = protocol._ident(header.get("id"), "id")
            if kind != "restore" and len(body) > 1:
                raise ProtocolError("bad_request", f"a {kind} request carries no blobs")
            if kind == "hello":
                self._send(identity, protocol.make_header("hello", request_id, **self.describe()))
            elif kind == "status":
                self._send(identity, protocol.make_header("status", request_id, **self.status()))
            elif kind == "cancel":
                owner = header.get("owner", "")
                self._cancel(identity, request_id, protocol._ident(header.get("job"), "job"), owner)
            else:
                self._submit(identity, header, body[1:])
        except ProtocolError as exc:
            self._send(identity, protocol.error_header(request_id, exc.code, str(exc)))
        except Exception as exc:  # never let one request take the server down
            log.error("request failed:\n%s", traceback.format_exc())
            self._send(identity, protocol.error_header(request_id, "internal", f"{type(exc).__name__}: {exc}"))

    def describe(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "protocol": protocol.PROTOCOL_VERSION,
            "engine": self.config.engine if not self.config.restorer_factory else self.config.restorer_factory,
            "engine_version": self.engine_version,
            "weights_id": self.weights_id,
            "device": _device_name(self.restorer, self.config.device),
            "memory": _memory(),
            "limits": self.limits.to_wire(),
            "path_mode": bool(self.roots),
            "roots": list(self.roots),
            "heartbeat": self.config.heartbeat,
            "secure": bool(self.config.curve_keys),
        }

    def status(self) -> dict[str, Any]:
        with self.lock:
            jobs = {
                j.id: {"state": j.state, "done": j.done, "total": j.total, "message": j.message}
                for j in self.jobs.values()
            }
            current = self.current.id if self.current is not None else None
        return {
            "current": current,
            "queue": [j.id for j in self.queue.order()],
            "jobs": jobs,
            "stopping": self.stopping.is_set(),
        }

    def _cancel(self, identity: bytes, request_id: str, job_id: str, owner: object = "") -> None:
        with self.lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise ProtocolError("unknown_job", f"no queued or running job '{job_id}' (it may have finished)")
        if owner != job.req.request_id:  # status lists every job id; only the sender knows its request id
            raise ProtocolError("not_owner", f"job '{job_id}' belongs to another client; it was not cancelled")
        queued = self.queue.remove(job_id)
        if queued is not None:
            with self.lock:
                self.jobs.pop(job_id, None)
        job.cancel.set()
        if queued is not None:  # never started: answer for it now; a running job answers from the worker
            self._send(
                job.identity,
                protocol.error_header(
                    job.req.request_id,
                    "cancelled",
                    f"job {job_id} was cancelled before it started",
                    job=job_id,
                ),
            )
        self._send(identity, protocol.make_header("cancel", request_id, job=job_id, ok=True))

    def _submit(self, identity: bytes, header: dict[str, Any], blobs: list[bytes]) -> None:
        if self.stopping.is_set():
            raise ProtocolError("shutting_down", "the server is stopping; send the request again after restart")
        req = protocol.parse_restore(header, len(blobs), self.limits)
        with self.lock:
            existing = self.jobs.get(req.job_id)
        if existing is not None:
            if existing.req.request_id != req.request_id:
                raise ProtocolError("bad_request", f"job id '{req.job_id}' is already in use by another request")
            # The same request resent by a Lazy-Pirate retry: re-attach the new socket, replay done frames.
            existing.identity = identity
            self._send(
                identity,
                protocol.make_header(
                    "accepted", req.request_id, job=req.job_id, total=existing.total, message="re-attached"
                ),
            )
            for frame, key in list(existing.keys.items()):  # frames the old socket may have missed
                header = protocol.make_header(
                    "frame",
                    req.request_id,
                    job=req.job_id,
                    frame=frame,
                    cached=True,
                    done=existing.done,
                    total=existing.total,
                )
                if existing.output_paths:
                    self._send(identity, dict(header, path=existing.output_paths[frame]))
                elif (data := self.cache.get(key)) is not None:
                    self._send(identity, dict(header, blob=1), (data,))
            return
        if len(self.queue) >= self.limits.max_queued_jobs:
            raise ProtocolError("busy", f"{len(self.queue)} jobs are queued (the limit); try again later")
        for refs in (req.sources, req.masks):
            for ref in refs.values():
                if ref.blob is not None:
                    info = protocol.exr_info(blobs[ref.blob - 1], f"frame {ref.frame}")
                    protocol.check_exr_size(info, self.limits, f"frame {ref.frame}")
        real_sources = self._resolve_inputs(req.sources, "source")
        real_masks = self._resolve_inputs(req.masks, "mask")
        output_paths = self._resolve_outputs(req, set(real_sources.values()) | set(real_masks.values()))
        job = Job(req, identity, blobs, real_sources, real_masks, output_paths, collections.deque(req.frames))
        with self.lock:
            self.jobs[job.id] = job
        self.queue.put(job)
        self._send(
            identity,
            protocol.make_header(
                "accepted",
                req.request_id,
                job=job.id,
                total=job.total,
                message=f"queued behind {len(self.queue) - 1}",
            ),
        )

    def _resolve_inputs(self, refs: dict[int, ImageRef], what: str) -> dict[int, str]:
        out = {}
        for frame, ref in refs.items():
            if ref.path is None:
                continue
            real = resolve_under_roots(ref.path, self.roots, what=f"{what} frame {frame}", must_exist=True)
            size = os.path.getsize(real)
            if size > self.limits.max_message_bytes:
                raise ProtocolError("too_large", f"{what} frame {frame}: {size} bytes exceeds the server's limit")
            if real.lower().endswith(".exr"):
                with open(real, "rb") as fh:
                    head = fh.read(_EXR_HEADER_PEEK)
                info = protocol.exr_info(head, f"{what} frame {frame} ({ref.path})")
                protocol.check_exr_size(info, self.limits, f"{what} frame {frame}")
            out[frame] = real
        return out

    def _resolve_outputs(self, req: RestoreRequest, inputs: set[str]) -> dict[int, str]:
        if req.output_dir is None and req.output_pattern is None:
            return {}
        from frdm.engine.frames import SequencePattern

        pattern = req.output_pattern or os.path.join(req.output_dir or "", "frdm.%04d.exr")
        if not pattern.lower().endswith(".exr"):
            raise ProtocolError("bad_request", f"output '{pattern}' must be an .exr sequence")
        seq = SequencePattern.parse(pattern)
        if not seq.is_sequence:
            raise ProtocolError("bad_request", f"output '{pattern}' is not a sequence pattern (use name.%04d.exr)")
        out = {}
        for frame in req.frames:
            real = resolve_under_roots(seq.path(frame), self.roots, what=f"output frame {frame}", must_exist=False)
            if real in inputs:
                raise ProtocolError("forbidden_path", f"output frame {frame} would overwrite its own input {real}")
            out[frame] = real
        return out

    def _stop_error(self, job: Job) -> dict[str, Any]:
        return protocol.error_header(
            job.req.request_id,
            "shutting_down",
            f"the server stopped after {job.finished_frames} of {job.total} frames of job {job.id} "
            "(those are cached); send the request again after restart",
            job=job.id,
        )

    # --- the worker --------------------------------------------------------------------------------

    def _worker(self) -> None:
        push = self.context.socket(zmq.PUSH)
        push.connect("inproc://frdm-worker")

        def emit(job: Job, header: dict[str, Any], blobs: tuple[bytes, ...] = ()) -> None:
            push.send_multipart([job.identity, msgpack.packb(header, use_bin_type=True), *blobs], copy=False)

        try:
            while not self.stopping.is_set():
                job = self.queue.take(timeout=0.2)
                if job is None:
                    continue
                with self.lock:
                    self.current = job
                    job.state = "running"
                try:
                    self._run_chunk(job, emit)
                    if job.remaining:
                        self.queue.put(job, front=True)
                        job.state = "queued"
                        continue
                    emit(
                        job,
                        protocol.make_header(
                            "done",
                            job.req.request_id,
                            job=job.id,
                            done=job.total,
                            total=job.total,
                            message=f"{job.total} frame(s) restored",
                        ),
                    )
                except _Stop:
                    emit(job, self._stop_error(job))
                except CancelledError:
                    emit(
                        job,
                        protocol.error_header(
                            job.req.request_id,
                            "cancelled",
                            f"job {job.id} cancelled after {job.finished_frames} of {job.total} frames; "
                            "nothing partial was written",
                            job=job.id,
                        ),
                    )
                except FrdmError as exc:
                    emit(job, protocol.error_header(job.req.request_id, exc.code, str(exc), job=job.id))
                except Exception as exc:  # a bug or a resource failure: this job fails, the server goes on
                    log.error("job %s failed:\n%s", job.id, traceback.format_exc())
                    emit(
                        job,
                        protocol.error_header(
                            job.req.request_id,
                            "internal",
                            f"internal error in job {job.id}: {type(exc).__name__}: {exc} (the server log "
                            "has the details; the server is still running)",
                            job=job.id,
                        ),
                    )
                with self.lock:
                    self.jobs.pop(job.id, None)
                    self.current = None
        finally:
            for job in self.queue.drain():
                emit(job, self._stop_error(job))
                with self.lock:
                    self.jobs.pop(job.id, None)
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

    def _run_chunk(self, job: Job, emit: Callable[..., None]) -> None:
        from frdm.engine.pipeline import restore_frames

        params = job.req.params
        if job.cancel.is_set():
            raise CancelledError(f"job {job.id} cancelled")
        for directory in {os.path.dirname(p) for p in job.output_paths.values()}:
            remove_stale(directory)
        reach = self.restorer.context(params)
        targets = [job.remaining.popleft() for _ in range(min(self.config.chunk, len(job.remaining)))]
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

        source = _make_wire_source(job, "sources", self.limits)
        masks = _make_wire_source(job, "masks", self.limits) if job.req.masks else None
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

    def _deliver(self, job: Job, frame: int, key: str, data: bytes, cached: bool, emit: Callable[..., None]) -> None:
        job.finished_frames += 1
        job.done = float(job.finished_frames)
        job.keys[frame] = key
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
            atomic_write_bytes(job.output_paths[frame], data)
            header["path"] = job.output_paths[frame]
            emit(job, header)
        else:
            header["blob"] = 1
            emit(job, header, (data,))


def _device_name(restorer: Any, device: str | None) -> str:
    dev = getattr(restorer, "device", None) or device or "cpu"
    name = str(dev)
    if name.startswith("cuda") and "torch" in sys.modules:
        torch = sys.modules["torch"]
        with contextlib.suppress(Exception):
            name = f"{name} ({torch.cuda.get_device_name(torch.device(name))})"
    return name


def _memory() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh if line.split()[1:]}
        out["ram_total"] = info.get("MemTotal", 0)
        out["ram_available"] = info.get("MemAvailable", 0)
    except (OSError, ValueError, IndexError):
        pass
    torch = sys.modules.get("torch")  # only if the engine already loaded it: hello must stay cheap
    if torch is not None:
        try:
            if torch.cuda.is_available():
                free, total = torch.cuda.mem_get_info()
                out["gpu_total"], out["gpu_free"] = int(total), int(free)
        except Exception:
            pass
    return out


def run_server(config: ServerConfig, ready: Callable[[str], None] | None = None) -> int:
    """Build the server, install SIGTERM/SIGINT handlers (main thread only) and serve until stopped."""
    server = Server(config)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, server.request_stop)
        signal.signal(signal.SIGINT, server.request_stop)
    return server.serve(ready)
