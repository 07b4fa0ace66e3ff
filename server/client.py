"""The FRDM client: talks to ``frdm serve`` over ZeroMQ. Torch-free (numpy, pyzmq, msgpack only).

Lazy Pirate (zguide ch. 4) on a DEALER socket: every wait has an explicit timeout; a request that gets no
answer is resent on a fresh socket up to ``retries`` times, then reported as ``server_unreachable``. A
running job sends a ``progress`` heartbeat at least every 2 s, so silence longer than ``timeout`` while
streaming means the server died: the iterator then yields one ``error`` event and ends.

Threading: one client instance is driven by one thread at a time (Nuke: a worker thread, not the GUI).
``cancel`` may be called from any other thread; it uses a socket of its own.

    with FrdmClient("tcp://127.0.0.1:5555") as client:
        for event in client.restore(params, [1, 2], sources={1: exr1, 2: exr2}):
            if event.kind == "frame":
                open(f"out.{event.frame:04d}.exr", "wb").write(event.data)
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import zmq

from frdm.engine.errors import FrdmError
from frdm.server import protocol


class ServerError(FrdmError):
    """A transport or protocol failure, or an error reply to hello/status/cancel. ``code`` is stable."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code  # type: ignore[misc]


@dataclass
class Event:
    kind: str  # "accepted" | "progress" | "frame" | "done" | "error"
    job_id: str
    frame: int | None = None  # for "frame"
    data: bytes | None = None  # inline EXR bytes of a finished frame
    image: protocol.RawImage | None = None  # or its raw pixels (``reply="raw"``), a view of the message
    path: str | None = None  # or the path the server wrote atomically (path mode)
    done: float = 0.0  # progress: units done / total
    total: float = 0.0
    message: str = ""
    code: str | None = None  # for "error": one of protocol.ERROR_CODES
    cached: bool = False  # the frame came from the server's result cache
    frames: list[int] | None = None  # for "error" ``need_sources``: the frames to send again with pixels


def load_curve_keys(directory: str | os.PathLike[str], name: str = "client") -> dict[str, bytes]:
    """Keyword arguments for FrdmClient from a folder made by ``frdm keygen`` (or a copy of its client
    files): ``server.key`` (the server's public key) and ``<name>.key_secret`` (this client's key pair)."""
    import zmq.auth

    directory = os.fspath(directory)
    server_public, _ = zmq.auth.load_certificate(os.path.join(directory, "server.key"))
    public, secret = zmq.auth.load_certificate(os.path.join(directory, f"{name}.key_secret"))
    if secret is None:
        raise ServerError("bad_input", f"{directory}/{name}.key_secret holds no secret key")
    return {"server_public_key": server_public, "client_public_key": public, "client_secret_key": secret}


class FrdmClient:
    def __init__(
        self,
        address: str = "tcp://127.0.0.1:5555",
        *,
        timeout: float = 10.0,
        retries: int = 3,
        server_public_key: bytes | None = None,
        client_secret_key: bytes | None = None,
        client_public_key: bytes | None = None,
    ):
        if timeout <= 0 or retries < 0:
            raise ValueError("timeout must be > 0 and retries >= 0")
        self.address = address
        self.timeout = float(timeout)
        self.retries = int(retries)
        self._owned: dict[str, str] = {}  # job id -> the restore request id that proves ownership
        self._server_key = server_public_key
        if server_public_key is not None and (client_secret_key is None or client_public_key is None):
            # An ephemeral identity: enough for a server that accepts any client holding its public key.
            client_public_key, client_secret_key = zmq.curve_keypair()
        self._client_keys = (client_public_key, client_secret_key)
        self._context: zmq.Context = zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._closed = False
        self._limits: dict[str, Any] = {}  # the server's, once hello() has been called

    # --- sockets ---------------------------------------------------------------------------------------

    def _new_socket(self) -> zmq.Socket:
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)  # a dead server must never make close() hang
        if self._server_key is not None:
            sock.curve_serverkey = self._server_key
            sock.curve_publickey, sock.curve_secretkey = self._client_keys
        if "[" in self.address:  # tcp://[::1]:5555
            sock.ipv6 = True
        sock.connect(self.address)
        return sock

    def _sock(self) -> zmq.Socket:
        if self._closed:
            raise ServerError("internal", "this FrdmClient is closed")
        if self._socket is None:
            self._socket = self._new_socket()
        return self._socket

    def _reconnect(self) -> None:
        # Lazy Pirate: a REQ-like exchange that timed out leaves unknown state; drop the socket entirely.
        if self._socket is not None:
            self._socket.close(linger=0)
        self._socket = None

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
        self._socket = None
        self._closed = True

    def __enter__(self) -> FrdmClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @staticmethod
    def _recv(sock: zmq.Socket) -> tuple[dict[str, Any], list[Any]]:
        # copy=False: a frame's pixels stay in the buffer ZeroMQ received them into (raw replies view it).
        parts = sock.recv_multipart(copy=False)
        try:
            header = protocol.unpack(parts[0].bytes)
        except protocol.ProtocolError as exc:
            raise ServerError(
                "protocol_mismatch", f"the server sent a message this client cannot read: {exc}"
            ) from None
        if header.get("v") != protocol.PROTOCOL_VERSION:
            raise ServerError(
                "protocol_mismatch",
                f"the server speaks protocol {header.get('v')!r}, this client {protocol.PROTOCOL_VERSION}; "
                "install the same FRDM version on both sides",
            )
        return header, [p.buffer for p in parts[1:]]

    def _request(
        self, header: dict[str, Any], *, private: bool = False, timeout: float | None = None, retries: int | None = None
    ) -> dict[str, Any]:
        """One request, one reply, with Lazy Pirate retries. ``private``: on a socket of its own, so that
        another thread may call it while this client's socket is in use (cancel)."""
        parts = protocol.encode(header)
        sock: zmq.Socket | None = None
        try:
            timeout = self.timeout if timeout is None else timeout
            retries = self.retries if retries is None else retries
            for _attempt in range(retries + 1):
                sock = self._new_socket() if private else self._sock()
                sock.send_multipart(parts)
                deadline = time.monotonic() + timeout
                while (left := deadline - time.monotonic()) > 0:
                    if not sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                        break
                    reply, _ = self._recv(sock)
                    if reply.get("id") != header["id"] and not _unaddressed_error(reply):
                        continue  # a late answer to an earlier, retried request
                    if reply.get("type") == "error":
                        raise ServerError(str(reply.get("code", "internal")), str(reply.get("message", "")))
                    return reply
                # Lazy Pirate: an exchange that timed out leaves unknown state; drop the socket entirely.
                if private:
                    sock.close(linger=0)
                    sock = None
                else:
                    self._reconnect()
        finally:
            if private and sock is not None:
                sock.close(linger=0)
        raise ServerError(
            "server_unreachable",
            f"no FRDM server answered at {self.address} within {timeout:g} s ({retries + 1} tries); start it "
            "with 'frdm serve' or check the address and keys",
        )

    # --- requests --------------------------------------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        """version, protocol, engine, engine_version, device, memory, limits. The limits are remembered:
        ``restore`` then refuses an oversized request locally (libzmq drops a connection that sends a part
        over the server's size limit, which would otherwise look like a dead server)."""
        info = _body(self._request(protocol.make_header("hello", _new_id())))
        if isinstance(info.get("limits"), dict):
            self._limits = info["limits"]
        return info

    def status(self) -> dict[str, Any]:
        """queue (jobs waiting, in order), current (the running job), jobs (per-job progress)."""
        return _body(self._request(protocol.make_header("status", _new_id())))

    def cancel(self, job_id: str) -> None:
        """Stop a job (queued or running) between steps. Safe from any thread; a finished job is a no-op."""
        self._cancel(job_id, self.timeout, self.retries)

    def _cancel(self, job_id: str, timeout: float, retries: int) -> None:
        # The restore's request id is the owner's proof: ids shown by `status` are not enough to cancel.
        owner = self._owned.get(job_id, "")
        try:
            self._request(
                protocol.make_header("cancel", _new_id(), job=job_id, owner=owner),
                private=True,
                timeout=timeout,
                retries=retries,
            )
        except ServerError as exc:
            if exc.code != "unknown_job":  # already finished or never started: nothing to stop
                raise

    def restore(
        self,
        params: Mapping[str, Any],
        frames: list[int],
        *,
        sources: Mapping[int, protocol.Inline],
        masks: Mapping[int, protocol.Inline] | None = None,
        output_dir: str | None = None,
        output_pattern: str | None = None,
        job_id: str | None = None,
        reply: str = "exr",
    ) -> Iterator[Event]:
        """Send a restore job and iterate its events: ``accepted``, ``progress`` heartbeats, one ``frame``
        per frame, then ``done`` or ``error`` (which ends the iterator).

        Sources are raw pixels (``protocol.RawImage``, the fast form: sent without a copy), EXR bytes, or
        paths under the server's ``--allow-root``; context frames are extra entries outside ``frames``. Any
        source may be a ``protocol.ContentRef`` (its content id only) for a frame sent to this server lately:
        if the server must read it and no longer holds it, the job ends with an ``error`` ``need_sources``
        whose ``frames`` are to be sent again with pixels.
        With ``output_dir``/``output_pattern`` the server writes the frames and the events carry ``path``;
        else ``image`` (``reply="raw"``: pixels and their description, no codec) or ``data`` (EXR bytes).
        The request is built now (a wrong argument raises at once); nothing is sent until iteration
        starts. Transport failures arrive as an ``error`` event with code ``server_unreachable`` so a host
        handles every failure in one place. Leaving the loop early (break, exception) cancels the job."""
        job_id = job_id or _new_id()
        request_id = _new_id()
        self._owned[job_id] = request_id
        header, blobs = protocol.restore_header(
            request_id,
            job_id,
            params,
            frames,
            sources,
            masks,
            output_dir=output_dir,
            output_pattern=output_pattern,
            reply=reply,
        )
        size = sum(memoryview(b).nbytes for b in blobs)
        limit = self._limits.get("max_message_bytes")
        if isinstance(limit, int) and size > limit:
            return iter(
                [
                    Event(
                        "error",
                        job_id,
                        code="too_large",
                        message=(
                            f"the request carries {size} bytes of frames; the server at {self.address} accepts "
                            f"{limit} per request: send fewer frames per job, or use path mode"
                        ),
                    )
                ]
            )
        return self._stream(protocol.encode(header, blobs), request_id, job_id)

    def _stream(self, parts: list[bytes], request_id: str, job_id: str) -> Iterator[Event]:
        finished = False
        accepted = False
        attempts = 0
        try:
            sock = self._sock()
            sock.send_multipart(parts, copy=False)
            deadline = time.monotonic() + self.timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                    if not accepted and attempts < self.retries:
                        # Not yet accepted: resend (same job id, so a server that did get it re-attaches).
                        attempts += 1
                        self._reconnect()
                        sock = self._sock()
                        sock.send_multipart(parts, copy=False)
                        deadline = time.monotonic() + self.timeout
                        continue
                    finished = True
                    if accepted:
                        why = (
                            f"the FRDM server at {self.address} went silent for {self.timeout:g} s "
                            f"during job {job_id} (it sends a heartbeat every second): it stopped or "
                            "crashed. Restart it and render again; frames it finished come from its cache"
                        )
                    else:
                        why = (
                            f"no FRDM server answered at {self.address} within {self.timeout:g} s "
                            f"({attempts + 1} tries); start it with 'frdm serve' or check the address "
                            "and keys"
                        )
                    self._reconnect()
                    yield Event("error", job_id, code="server_unreachable", message=why)
                    return
                try:
                    header, blobs = self._recv(sock)
                except ServerError as exc:
                    finished = True
                    yield Event("error", job_id, code=exc.code, message=str(exc))
                    return
                if header.get("job") != job_id and header.get("id") != request_id and not _unaddressed_error(header):
                    continue  # a stale message for an earlier job on this socket
                deadline = time.monotonic() + self.timeout
                event = _event(header, blobs, job_id)
                if event is None:
                    continue
                if event.kind == "accepted":
                    accepted = True
                if event.kind in ("done", "error"):
                    finished = True
                yield event
                if finished:
                    return
        finally:
            if not finished and not self._closed:
                with contextlib.suppress(FrdmError):  # the caller left the loop early: free the server
                    self._cancel(job_id, min(self.timeout, 2.0), 0)  # best effort: never hang a host on a dead server


def _new_id() -> str:
    return uuid.uuid4().hex


def _unaddressed_error(reply: dict[str, Any]) -> bool:
    # The server could not read our request id (e.g. the header was too large to parse); with one
    # request outstanding per socket, that error is ours.
    return reply.get("type") == "error" and reply.get("id") == ""


def _body(reply: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in reply.items() if k not in ("v", "type", "id")}


def _event(h: dict[str, Any], blobs: list[Any], job_id: str) -> Event | None:
    kind = h.get("type")
    num = lambda name: float(h[name]) if isinstance(h.get(name), (int, float)) else 0.0  # noqa: E731
    if kind == "accepted":
        return Event("accepted", job_id, message=str(h.get("message", "")), total=num("total"))
    if kind == "progress":
        return Event("progress", job_id, done=num("done"), total=num("total"), message=str(h.get("message", "")))
    if kind == "frame":
        blob = h.get("blob")
        part = blobs[blob - 1] if isinstance(blob, int) and 1 <= blob <= len(blobs) else None
        data, image = None, None
        if part is not None and "image" in h:
            try:
                image = protocol.raw_image(h["image"], part, f"frame {h.get('frame')!r} reply")
            except protocol.ProtocolError as exc:
                return Event("error", job_id, code="protocol_mismatch", message=f"the server's frame reply: {exc}")
        elif part is not None:
            data = bytes(part)
        return Event(
            "frame",
            job_id,
            frame=int(h["frame"]) if isinstance(h.get("frame"), int) else None,
            data=data,
            image=image,
            path=h.get("path") if isinstance(h.get("path"), str) else None,
            done=num("done"),
            total=num("total"),
            cached=bool(h.get("cached", False)),
        )
    if kind == "done":
        return Event("done", job_id, done=num("done"), total=num("total"), message=str(h.get("message", "")))
    if kind == "error":
        frames = h.get("frames")
        listed = (
            [int(f) for f in frames]
            if isinstance(frames, list) and all(isinstance(f, int) and not isinstance(f, bool) for f in frames)
            else None
        )
        return Event(
            "error", job_id, code=str(h.get("code", "internal")), message=str(h.get("message", "")), frames=listed
        )
    return None


__all__ = ["Event", "FrdmClient", "ServerError", "load_curve_keys"]
