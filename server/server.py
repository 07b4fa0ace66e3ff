"""The FRDM inference server (``frdm serve``): a ZeroMQ ROUTER in front of one resident restorer.

The rooms (each a module of ``frdm.server``):

* ``server`` (this one): the configuration and the socket loop. The main thread owns the ROUTER socket:
  it receives and validates requests, answers ``hello``/``status``/``cancel`` at once, queues ``restore``
  jobs, forwards the worker's replies and sends a ``progress`` heartbeat for every live job each
  ``heartbeat`` seconds (independent of how long a frame takes, so a client can tell a slow job from a
  dead server);
* ``jobs``: the job, the fair queue (round-robin across clients, so a 1000-frame job does not starve a
  3-frame preview) and the table of live jobs;
* ``worker``: the one thread that owns the restorer and runs chunks of jobs;
* ``storage``: allowed roots, atomic writes, the result cache;
* ``replies``: every reply a job sends, built once.

A failure inside a job becomes an ``error`` reply and the server goes on. SIGTERM/SIGINT: no new jobs,
the running job finishes its current frame, every write is atomic, then the process exits 0.
"""

from __future__ import annotations

import collections
import contextlib
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

import zmq

from frdm import __version__
from frdm.engine import depends
from frdm.engine.errors import FrdmError
from frdm.server import protocol
from frdm.server.jobs import Job, JobBoard
from frdm.server.protocol import Limits, ProtocolError
from frdm.server.replies import error_reply, frame_reply, progress_reply, stop_error
from frdm.server.sniff import ImageHeader, check_frame_size, max_file_bytes, reader_of, sniff
from frdm.server.storage import (  # noqa: F401  (resolve_under_roots: re-exported, callers know it from here)
    ResultCache,
    SourceMemory,
    check_ocio_config,
    resolve_inputs,
    resolve_outputs,
    resolve_under_roots,
)
from frdm.server.worker import WORKER_ENDPOINT, Worker, cached_output, deliver_payload

log = logging.getLogger("frdm.server")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


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
    # Raw source frames of recent requests kept in memory, so a request may name them by content id
    # (a preview after a knob change sends its target's pixels only), and, for frames of mixed sample types,
    # their float32 pixels once converted (an all-half frame is held as its received halves): ~80 frames of 2K
    # RGBA half (25 MB each).
    source_memory_bytes: int = 2 << 30
    limits: Limits = field(default_factory=Limits)
    chunk: int = 8  # frames a job runs before the worker turns to the next client
    heartbeat: float = 1.0  # seconds between progress messages of a live job (the protocol promises <= 2)
    restorer_factory: str | None = None  # "module:callable", a site's own engine (and the tests')


def is_local_endpoint(endpoint: str) -> bool:
    """True for ipc:// and tcp:// on a loopback address: endpoints only this machine can reach."""
    if endpoint.startswith("ipc://"):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://") :].rsplit(":", 1)[0]
    return host in LOOPBACK_HOSTS


def check_inline_frame(data: bytes, name: str, limits: Limits) -> ImageHeader:
    """An inline frame is EXR bytes whose header declares a frame within the per-frame limits."""
    header = sniff(reader_of(data), name)
    if header.format != "exr":
        raise ProtocolError("bad_input", f"{name}: inline frames are EXR bytes, this is {header.format.upper()}")
    check_frame_size(header, limits, name)
    return header


def check_bind(endpoint: str, curve_keys: str | None) -> None:
    if not endpoint.startswith(("tcp://", "ipc://")):
        raise FrdmError(f"--bind {endpoint}: use tcp://HOST:PORT or ipc:///path/to/socket")
    if not is_local_endpoint(endpoint) and not curve_keys:
        raise FrdmError(
            f"--bind {endpoint} is reachable from other machines; FRDM refuses that without encryption and "
            "client authentication. Make keys with 'frdm keygen DIR' and pass --curve-keys DIR, or bind "
            "tcp://127.0.0.1:PORT"
        )


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
        self.cache = ResultCache(cache_dir, config.cache_max_bytes, background=True)
        self.memory = SourceMemory(config.source_memory_bytes)
        self.board = JobBoard()
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
        # A peer sending one part larger than any part may be (a header, or one frame's file) is disconnected
        # by libzmq itself, before that part is ever held in memory whole.
        sock.setsockopt(zmq.MAXMSGSIZE, max(protocol.MAX_HEADER_BYTES, max_file_bytes(self.limits)))
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
        job_id = header.get("job")
        return self._send_packed(identity, job_id if isinstance(job_id, str) else None, protocol.pack(header), blobs)

    def _send_packed(self, identity: bytes, job_id: str | None, header: bytes, blobs: Sequence[Any] = ()) -> bool:
        assert self._router is not None
        try:
            self._router.send_multipart([identity, header, *blobs], flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError as exc:
            # EHOSTUNREACH: the client went away. EAGAIN: it stopped reading. Either way its job is orphaned.
            job = self.board.get(job_id)
            if job is not None and job.identity == identity:
                log.warning("client of job %s is gone (%s); cancelling it", job.id, exc)
                job.cancel.set()
                self.board.unqueue(job.id)
            return False

    # --- the main loop -----------------------------------------------------------------------------

    def serve(self, ready: Callable[[str], None] | None = None) -> int:
        self._router = self._open_router()
        pull = self.context.socket(zmq.PULL)
        pull.bind(WORKER_ENDPOINT)
        worker = threading.Thread(
            target=Worker(
                self.board,
                self.restorer,
                self.engine_version,
                self.weights_id,
                self.cache,
                self.memory,
                self.roots,
                self.limits,
                self.config.chunk,
                self.stopping,
                self.context,
            ).run,
            name="frdm-worker",
            daemon=True,
        )
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
                            # copy=False: inline frames stay in the buffers ZeroMQ received them into.
                            frames = self._router.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._handle([frames[0].bytes, *(f.buffer for f in frames[1:])])
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
                    for job in self.board.queue.drain():
                        self._send(job.identity, stop_error(job))
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
            # [identity, job id, packed header, blobs...]: the worker packed the header once; sent as it is.
            self._send_packed(parts[0].bytes, parts[1].bytes.decode(), parts[2].bytes, parts[3:])

    def request_stop(self, *_: Any) -> None:
        if not self.stopping.is_set():
            log.info("stopping: finishing the current frame, then exiting")
        self.stopping.set()

    def _heartbeat(self) -> None:
        order = {job.id: i for i, job in enumerate(self.board.queue.order())}
        for job in self.board.live():
            message = job.message
            if job.state == "queued" and job.id in order:
                message = f"queued ({order[job.id]} job(s) ahead)" if order[job.id] else "queued (next)"
            self._send(job.identity, progress_reply(job, message))

    # --- requests ----------------------------------------------------------------------------------

    def _handle(self, parts: list[Any]) -> None:
        identity, body = parts[0], parts[1:]
        request_id = ""
        try:
            if not body:
                raise ProtocolError("bad_request", "empty message: expected [msgpack header, blobs...]")
            size = sum(memoryview(p).nbytes for p in body)
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
        return dict(self.board.status(), stopping=self.stopping.is_set())

    def _cancel(self, identity: bytes, request_id: str, job_id: str, owner: object = "") -> None:
        job = self.board.get(job_id)
        if job is None:
            raise ProtocolError("unknown_job", f"no queued or running job '{job_id}' (it may have finished)")
        if owner != job.req.request_id:  # status lists every job id; only the sender knows its request id
            raise ProtocolError("not_owner", f"job '{job_id}' belongs to another client; it was not cancelled")
        queued = self.board.unqueue(job_id)
        job.cancel.set()
        if queued is not None:  # never started: answer for it now; a running job answers from the worker
            self._send(job.identity, error_reply(job, "cancelled", f"job {job_id} was cancelled before it started"))
        self._send(identity, protocol.make_header("cancel", request_id, job=job_id, ok=True))

    def _submit(self, identity: bytes, header: dict[str, Any], blobs: list[bytes]) -> None:
        if self.stopping.is_set():
            raise ProtocolError("shutting_down", "the server is stopping; send the request again after restart")
        req = protocol.parse_restore(header, len(blobs), self.limits)
        existing = self.board.get(req.job_id)
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
                if existing.output_paths:
                    self._send(identity, *frame_reply(existing, frame, None, cached=True))
                elif (raw := cached_output(self.cache, existing, frame, key)) is not None:
                    payload = deliver_payload(existing, frame, raw)
                    self._send(identity, *frame_reply(existing, frame, payload, cached=True))
            return
        queued = len(self.board.queue)
        if queued >= self.limits.max_queued_jobs:
            raise ProtocolError("busy", f"{queued} jobs are queued (the limit); try again later")
        incoming = sum(memoryview(b).nbytes for b in blobs)
        held = self.board.inline_bytes()
        if held + incoming > self.limits.max_queued_bytes:
            raise ProtocolError(
                "busy",
                f"the server holds {held} bytes of queued inline frames; {incoming} more would pass its budget of "
                f"{self.limits.max_queued_bytes} (try again when a job has finished, or send paths)",
            )
        for kind, refs in (("source", req.sources), ("mask", req.masks)):
            for ref in refs.values():
                name = f"{kind} frame {ref.frame}"
                if ref.image is not None:  # raw pixels: the description fits the limits and the buffer
                    protocol.check_raw_size(ref.image, self.limits, name)
                    protocol.RawImage(ref.image, blobs[ref.blob - 1], name)  # type: ignore[operator]
                elif ref.blob is not None:
                    check_inline_frame(blobs[ref.blob - 1], name, self.limits)
        check_ocio_config(req.params["ocio_config"], self.roots)
        real_sources = resolve_inputs(req.sources, "source", self.roots, self.limits)
        real_masks = resolve_inputs(req.masks, "mask", self.roots, self.limits)
        inputs = {rp.path for rp in (*real_sources.values(), *real_masks.values())}
        output_paths = resolve_outputs(req, inputs, self.roots)
        job = Job(req, identity, blobs, real_sources, real_masks, output_paths, collections.deque(req.frames))
        self.board.add(job)
        self._send(
            identity,
            protocol.make_header(
                "accepted",
                req.request_id,
                job=job.id,
                total=job.total,
                message=f"queued behind {len(self.board.queue) - 1}",
            ),
        )


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
