"""The FRDM node, host-agnostic and shaped like an OpenFX effect.

A host (the Nuke adapter, a headless script, another compositor) uses one ``FrdmNode``:

* ``describe()``: the clips (``Source``, optional ``Mask``, ``Output``) and the parameters, generated from
  the one schema (``frdm.engine.params.SCHEMA``), so every host shows the same knobs.
* ``frames_needed(frame)``: the source frames a result frame reads (like OpenFX ``getFramesNeeded``).
* ``render(frames, inputs, output)`` / ``preview(frame, ...)``: a ``RenderJob`` running in a worker thread
  that drives ``FrdmClient``; progress and cancel work from any thread, and the host never blocks.
* Results are staged in a hidden folder next to the output and moved into place only when the whole job
  succeeded: a host is handed complete results or nothing.

Torch-free on purpose (numpy, pyzmq, msgpack only): this module runs inside the compositor's Python.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from frdm import __version__
from frdm.engine import atomic, depends
from frdm.engine.errors import FrdmError, InputError, ParamError
from frdm.engine.frames import SequencePattern, format_frame_range
from frdm.engine.params import SCHEMA, Param, Params
from frdm.server import exrfile, protocol
from frdm.server.client import Event, FrdmClient, ServerError

# OpenFX clip names (kOfxImageEffectSimpleSourceClipName is "Source"; the output clip is "Output").
CLIP_SOURCE = "Source"
CLIP_MASK = "Mask"
CLIP_OUTPUT = "Output"

#: The sidecar that records which inputs and parameters produced the frames of an output folder: an
#: unchanged render is answered from disk at once, without contacting the server.
MANIFEST = ".frdm-node.json"
STAGING_PREFIX = ".frdm-partial-"

ProgressFn = Callable[[float, float, str], None]


@dataclass(frozen=True)
class ClipDescriptor:
    name: str
    optional: bool = False
    is_output: bool = False
    hint: str = ""


@dataclass(frozen=True)
class NodeDescriptor:
    """What a host needs to build the node's interface."""

    name: str
    version: str
    protocol: int
    clips: tuple[ClipDescriptor, ...]
    params: tuple[Param, ...]
    groups: tuple[str, ...]


def describe() -> NodeDescriptor:
    params = tuple(SCHEMA)
    return NodeDescriptor(
        name="FRDM",
        version=__version__,
        protocol=protocol.PROTOCOL_VERSION,
        clips=(
            ClipDescriptor(CLIP_SOURCE, hint="the degraded scan (RGB; other channels are passed through)"),
            ClipDescriptor(CLIP_MASK, optional=True, hint="artist mask (alpha): where the restorer may change pixels"),
            ClipDescriptor(CLIP_OUTPUT, is_output=True, hint="the restored frames, plus 'frdm.matte'"),
        ),
        params=params,
        groups=tuple(dict.fromkeys(p.group for p in params)),
    )


def context_for(params: Mapping[str, Any]) -> tuple[int, int]:
    """Frames a target reads before and after it (``frdm.engine.depends.context``; no engine import)."""
    return depends.context(SCHEMA.validate(params))


def frames_needed(
    frames: int | Sequence[int], params: Mapping[str, Any], available: Sequence[int] | None = None
) -> list[int]:
    """Source frames needed to restore ``frames``. With ``available`` (the frames the source has), the
    context is positional like the pipeline's: the ``before``/``after`` nearest frames that exist, clamped at
    the ends of the sequence. Without it: the frame numbers ``f - before .. f + after``."""
    targets = sorted({frames} if isinstance(frames, int) else set(frames))
    if available is not None:
        check_range(targets, available)
    return depends.frames_needed(targets, SCHEMA.validate(params), available)


def check_range(frames: Sequence[int], available: Sequence[int], clip: str = CLIP_SOURCE) -> None:
    """Raise InputError naming the frames that the input does not have."""
    if not frames:
        raise InputError("no frames to render; set a frame range")
    have = set(available)
    missing = [f for f in frames if f not in have]
    if missing:
        span = format_frame_range(sorted(have)) if have else "no frames"
        raise InputError(
            f"frames {format_frame_range(missing)} are outside the {clip} input (it has {span}); "
            "set the range to frames the input has"
        )


# --- inputs -------------------------------------------------------------------------------------------


@dataclass
class Inputs:
    """What the host hands the node: the frames its Source clip has and a way to get each as an EXR.

    ``source(frame)`` / ``mask(frame)`` return EXR bytes (sent inline) or an absolute path (sent as a path
    when the server shares storage, else read and sent inline)."""

    available: list[int]
    source: Callable[[int], bytes | str]
    mask: Callable[[int], bytes | str] | None = None

    @classmethod
    def from_sequence(cls, source: str, mask: str | None = None) -> Inputs:
        """A sequence on disk (``name.####.exr`` or ``name.%04d.exr``) as inputs (paths)."""
        src = SequencePattern.parse(os.path.abspath(source))
        available = src.existing()
        msk = SequencePattern.parse(os.path.abspath(mask)) if mask else None
        return cls(available, src.path, msk.path if msk is not None else None)


def _read_bytes(value: bytes | str) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    try:
        with open(value, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise InputError(f"cannot read input frame {value}: {exc.strerror}") from None


def _inline(data: bytes) -> protocol.Inline:
    """An input frame as raw pixels if its EXR is one ``exrfile`` reads, else its bytes as they are."""
    try:
        raw = exrfile.decode(data)
    except (ValueError, KeyError, IndexError, struct.error, zlib.error):
        raw = None  # let the server's own reader judge (and name) a damaged file
    return raw if raw is not None else data


def _under_roots(path: str, roots: Sequence[str]) -> bool:
    real = os.path.realpath(path)
    return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in map(os.path.realpath, roots))


def _exr_size(data: bytes, what: str) -> tuple[int, int]:
    try:
        info = protocol.exr_info(data, what)
    except protocol.ProtocolError as exc:
        raise InputError(str(exc)) from None
    return info.width, info.height


_HEADER_PEEK = 1 << 20  # EXR headers are a few KB; a megabyte covers any sane one


@dataclass(frozen=True)
class Fingerprint:
    digest: str  # SHA-256 of the file's bytes
    size: tuple[int, int]  # width, height of the data window


def fingerprint(value: bytes | str, what: str) -> Fingerprint:
    """Hash and size of one input frame, streaming a path (nothing is kept in memory)."""
    if isinstance(value, (bytes, bytearray)):
        return Fingerprint(hashlib.sha256(value).hexdigest(), _exr_size(bytes(value), what))
    h = hashlib.sha256()
    try:
        with open(value, "rb") as fh:
            head = fh.read(_HEADER_PEEK)
            h.update(head)
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    except OSError as exc:
        raise InputError(f"cannot read {what} ({value}): {exc.strerror}") from None
    return Fingerprint(h.hexdigest(), _exr_size(head, f"{what} ({value})"))


def _stamp(path: str) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class InputIds:
    """What this session learnt about input files, by file identity (device, inode, size, modification and
    change times in ns): the fingerprint (hash and size) of an unchanged file is not computed again, and the
    content id the server gives the frame as the node sends it (``wire``: its raw pixels' id, or its file's)
    lets a frame the server already has travel as that id alone. The content id is also remembered by the
    file's digest: a host that renders its inputs again into fresh files (the Nuke adapter does, into a new
    folder per button press) has each hashed once more, but an unchanged frame is still not decoded or sent.

    A file rewritten in place within one clock tick to the same size keeps its stamp: hosts write inputs
    to a temporary and rename it over (a new inode), as the Nuke adapter and ``engine.atomic`` do."""

    def __init__(self, limit: int = 4096):
        self.limit = limit
        # path -> (stamp, fingerprint, content id as sent, whether it was sent as raw pixels)
        self._known: dict[str, tuple[tuple[int, ...], Fingerprint, str | None, bool]] = {}
        self._by_digest: dict[str, tuple[str, bool]] = {}  # file digest -> (content id as sent, raw pixels)

    def fingerprint(self, value: bytes | str, what: str) -> Fingerprint:
        if not isinstance(value, str):
            return fingerprint(value, what)
        before = _stamp(value)
        known = self._known.get(value)
        if before is not None and known is not None and known[0] == before:
            return known[1]
        fp = fingerprint(value, what)
        if before is not None and _stamp(value) == before:  # not changed while it was read
            if len(self._known) >= self.limit:
                self._known.pop(next(iter(self._known)))
            self._known[value] = (before, fp, *self._by_digest.get(fp.digest, (None, False)))
        return fp

    def wire(self, value: bytes | str, raw_only: bool = False) -> str | None:
        """The inline content id learnt for an unchanged file, if any (``raw_only``: only if it was sent as raw
        pixels, which the server keeps among its recent sources)."""
        known = self._known.get(value) if isinstance(value, str) else None
        if known is None or known[0] != _stamp(value) or (raw_only and not known[3]):  # type: ignore[arg-type]
            return None
        return known[2]

    def learn_wire(self, value: bytes | str, sent: protocol.Inline, fp: Fingerprint) -> None:
        """Remember the content id of ``value`` as it was sent inline (its fingerprint ``fp`` still holds)."""
        known = self._known.get(value) if isinstance(value, str) else None
        if known is None or known[1] != fp or known[2] is not None:
            return
        raw = isinstance(sent, protocol.RawImage)
        cid = sent.content_id() if raw else fp.digest  # type: ignore[union-attr]
        self._known[value] = (known[0], fp, cid, raw)  # type: ignore[index]
        if len(self._by_digest) >= self.limit:
            self._by_digest.pop(next(iter(self._by_digest)))
        self._by_digest[fp.digest] = (cid, raw)


# --- results ------------------------------------------------------------------------------------------


@dataclass
class RenderResult:
    frames: dict[int, str]  # frame -> path of the complete result
    cached: list[int] = field(default_factory=list)  # frames answered from a cache (node or server)
    seconds: float = 0.0
    message: str = ""


class RenderError(FrdmError):
    """A render that did not complete. ``code`` is the server's/client's stable code (or ``bad_input``)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code  # type: ignore[misc]


class RenderJob:
    """One render running in a worker thread. Poll ``state``/``progress`` or pass callbacks (called from
    the worker thread: a GUI host marshals them onto its main thread)."""

    def __init__(self, run: Callable[[RenderJob], RenderResult], on_finish: Callable[[RenderJob], None] | None):
        self.job_id = uuid.uuid4().hex
        self.state = "running"  # running | done | error | cancelled
        self.progress: tuple[float, float, str] = (0.0, 0.0, "starting")
        self.result: RenderResult | None = None
        self.error: RenderError | None = None
        self._cancel = threading.Event()
        self._cancel_hook: Callable[[], None] | None = None
        self._on_finish = on_finish
        self._thread = threading.Thread(target=self._main, args=(run,), name=f"frdm-{self.job_id[:8]}", daemon=True)
        self._thread.start()

    def _main(self, run: Callable[[RenderJob], RenderResult]) -> None:
        try:
            self.result = run(self)
            self.state = "done"
        except RenderError as exc:
            self.error = exc
            self.state = "cancelled" if exc.code == "cancelled" else "error"
        except FrdmError as exc:
            self.error = RenderError(getattr(exc, "code", "bad_input") or "bad_input", str(exc))
            self.state = "error"
        except Exception as exc:  # a host must hear about every failure, never see a thread die silently
            self.error = RenderError("internal", f"{type(exc).__name__}: {exc}")
            self.state = "error"
        finally:
            if self._on_finish is not None:
                with contextlib.suppress(Exception):
                    self._on_finish(self)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Ask the job to stop (any thread). Nothing partial is handed over."""
        self._cancel.set()
        hook = self._cancel_hook
        if hook is not None:
            # Telling the server may take up to the client's timeout when it is gone: never on the caller's
            # (GUI) thread. The worker also notices the flag at the next event (at least every heartbeat).
            threading.Thread(target=_quietly, args=(hook,), daemon=True).start()

    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds, returning as soon as the job ends: whether it has. A host's
        watcher waits so between status updates instead of sleeping, and hears of the end at once."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> RenderResult:
        """Block until the job ends; return its result or raise its RenderError."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"render {self.job_id} still running after {timeout} s")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def _quietly(call: Callable[[], None]) -> None:
    with contextlib.suppress(Exception):
        call()


# --- the node -----------------------------------------------------------------------------------------


class FrdmNode:
    """The node's state (parameters, server address) and its actions. One instance per node in a script.

    ``client_kwargs`` go to FrdmClient (CURVE keys). ``timeout`` bounds every wait for the server: a dead or
    missing server is reported after about ``timeout * (retries + 1)`` seconds, never a hang."""

    def __init__(
        self,
        address: str = "tcp://127.0.0.1:5555",
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float = 10.0,
        retries: int = 1,
        client_kwargs: Mapping[str, Any] | None = None,
    ):
        self.address = address
        self.timeout = timeout
        self.retries = retries
        self.client_kwargs = dict(client_kwargs or {})
        self.params: Params = SCHEMA.validate(params or {})
        self._hello: dict[str, Any] | None = None
        self.job: RenderJob | None = None
        self.ids = InputIds()
        # Content ids of the frames this session sent, per server address: a context frame among them travels
        # as its id alone (the server keeps recent sources in memory and restorer outputs on disk).
        self._sent: dict[str, set[str]] = {}

    # --- parameters ---------------------------------------------------------------------------------

    def set_params(self, values: Mapping[str, Any]) -> None:
        """Overlay ``values`` on the current parameters (validated: a bad value raises ParamError)."""
        self.params = SCHEMA.update(self.params, values)

    def set_address(self, address: str) -> None:
        if address != self.address:
            self.address = address
            self._hello = None

    def context(self) -> tuple[int, int]:
        return context_for(self.params)

    def frames_needed(self, frame: int | Sequence[int], available: Sequence[int] | None = None) -> list[int]:
        return frames_needed(frame, self.params, available)

    # --- server -------------------------------------------------------------------------------------

    def _client(self) -> FrdmClient:
        try:
            return FrdmClient(self.address, timeout=self.timeout, retries=self.retries, **self.client_kwargs)
        except ValueError as exc:
            raise RenderError("bad_request", f"FRDM client settings: {exc}") from None

    def hello(self, refresh: bool = False) -> dict[str, Any]:
        """The server's hello (engine, device, limits, path mode). Raises RenderError with a clear message
        when no server answers, the address is malformed or the server speaks another protocol."""
        if self._hello is not None and not refresh:
            return self._hello
        try:
            with self._client() as client:
                info = client.hello()
        except ServerError as exc:
            raise RenderError(exc.code, _explain(exc.code, str(exc), self.address)) from None
        except Exception as exc:  # zmq.ZMQError for an endpoint it cannot parse ("Invalid argument")
            raise RenderError(
                "server_unreachable",
                f"cannot connect to the FRDM server address '{self.address}' ({exc}); "
                "use tcp://HOST:PORT (e.g. tcp://127.0.0.1:5555) or ipc:///path",
            ) from None
        if info.get("protocol") != protocol.PROTOCOL_VERSION:
            raise RenderError(
                "protocol_mismatch",
                f"the FRDM server at {self.address} speaks protocol {info.get('protocol')!r}, this node "
                f"{protocol.PROTOCOL_VERSION}; install the same FRDM version on both sides",
            )
        engine = info.get("engine")
        if engine in ("classical", "diffusion") and engine != self.params["engine"]:
            raise RenderError(
                "bad_param",
                f"the FRDM server at {self.address} runs the '{engine}' engine but the node asks for "
                f"'{self.params['engine']}'; set the engine knob to '{engine}' or use another server",
            )
        self._hello = info
        return info

    def _engine_identity(self, params: Mapping[str, Any]) -> tuple[str, str]:
        """(engine version, weights id) of what will make the frames. The classical engine loads no weights:
        known without asking. Weights can be swapped between renders (a restarted server), so for an engine
        that loads them the server is asked every time: a cheap hello, and stale frames never come back."""
        engine = params["engine"]
        if engine in depends.WEIGHTLESS_ENGINES:
            return depends.ENGINE_VERSIONS[engine], depends.NO_WEIGHTS
        info = self.hello(refresh=True)
        return str(info.get("engine_version", "")), str(info.get("weights_id", ""))

    # --- rendering ----------------------------------------------------------------------------------

    def render(
        self,
        frames: Sequence[int],
        inputs: Inputs,
        output: str,
        *,
        progress: ProgressFn | None = None,
        on_finish: Callable[[RenderJob], None] | None = None,
        path_mode: bool | None = None,
        use_cache: bool = True,
    ) -> RenderJob:
        """Restore ``frames`` into the sequence ``output`` (``name.####.exr``) in a worker thread.

        Checks that need no server (frame range, parameters) raise here at once. ``path_mode`` None: send
        paths when the server shares storage (its roots hold the inputs and the output), else EXR bytes."""
        targets = sorted(set(int(f) for f in frames))
        check_range(targets, inputs.available)
        if self.params["mask"] == "artist" and inputs.mask is None and not self.params["mask_channel"]:
            raise ParamError("mask 'artist' needs the Mask input connected (or a 'mask_channel' of the Source)")
        pattern = SequencePattern.parse(os.path.abspath(output))
        if not pattern.is_sequence or not pattern.suffix.lower().endswith(".exr"):
            raise InputError(f"output '{output}' must be an EXR sequence such as name.####.exr")
        params = self.params  # validated and read-only: the job keeps the knobs of the moment it started
        if self.job is not None and self.job.running():
            raise RenderError("busy", "this node is already rendering; wait for it or press Cancel")

        def run(job: RenderJob) -> RenderResult:
            return self._run(job, targets, inputs, pattern, params, progress, path_mode, use_cache)

        self.job = RenderJob(run, on_finish)
        return self.job

    def preview(self, frame: int, inputs: Inputs, output: str, **kw: Any) -> RenderJob:
        """Restore one frame (with its context) into ``output``."""
        return self.render([frame], inputs, output, **kw)

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def _run(
        self,
        job: RenderJob,
        targets: list[int],
        inputs: Inputs,
        pattern: SequencePattern,
        params: dict[str, Any],
        progress: ProgressFn | None,
        path_mode: bool | None,
        use_cache: bool,
    ) -> RenderResult:
        started = time.monotonic()

        def report(done: float, total: float, message: str) -> None:
            job.progress = (done, total, message)
            if progress is not None:
                with contextlib.suppress(Exception):
                    progress(done, total, message)

        report(0, len(targets), "reading inputs")
        needed = frames_needed(targets, params, inputs.available)
        sources = {f: inputs.source(f) for f in needed}
        # A mask only ever selects its own target's pixels: context frames need none.
        masks = {f: inputs.mask(f) for f in targets} if inputs.mask is not None else None
        ids = self.ids
        source_fp = {f: ids.fingerprint(v, f"{CLIP_SOURCE} frame {f}") for f, v in sources.items()}
        mask_fp = (
            {f: ids.fingerprint(v, f"{CLIP_MASK} frame {f}") for f, v in masks.items()} if masks is not None else None
        )
        _check_formats(source_fp, mask_fp)

        out_dir = os.path.dirname(pattern.path(targets[0]))
        os.makedirs(out_dir, exist_ok=True)
        engine = self._engine_identity(params)
        keys = _frame_keys(targets, params, inputs.available, source_fp, mask_fp, engine)
        if use_cache and _manifest_hit(out_dir, pattern, keys):
            report(len(targets), len(targets), "unchanged: results from the last render")
            return RenderResult(
                {f: pattern.path(f) for f in targets}, list(targets), time.monotonic() - started, "unchanged"
            )
        if job.cancelled:
            raise RenderError("cancelled", "cancelled before sending")

        report(0, len(targets), f"connecting to {self.address}")
        info = self.hello()
        staging = os.path.join(out_dir, f"{STAGING_PREFIX}{job.job_id}")
        os.makedirs(staging)
        stage_pattern = SequencePattern.parse(os.path.join(staging, os.path.basename(pattern.pattern)))
        roots = [str(r) for r in info.get("roots") or []]
        if path_mode is None:
            path_mode = bool(info.get("path_mode")) and _under_roots(staging, roots)

        # Path mode: paths the server can read travel as paths, anything else inline: as raw pixels (no
        # codec on the server) when the host's EXR is one exrfile reads, else as its bytes.
        def as_path(v: bytes | str) -> bool:
            return bool(path_mode) and isinstance(v, str) and _under_roots(v, roots)

        def wire_id(f: int) -> str | None:
            """Frame ``f``'s content id as the server will key it, if known without reading the file."""
            v = sources[f]
            return source_fp[f].digest if as_path(v) else ids.wire(v)

        def wire(values: Mapping[int, bytes | str], fps: Mapping[int, Fingerprint]) -> dict[int, protocol.Inline]:
            out: dict[int, protocol.Inline] = {}
            for f, v in values.items():
                out[f] = v if as_path(v) else _inline(_read_bytes(v))
                if not as_path(v):
                    ids.learn_wire(v, out[f], fps[f])
            return out

        wire_masks = wire(masks, mask_fp) if masks is not None and mask_fp is not None else None
        # Frames this session already sent to this server go as their content ids: the server holds what
        # it restored from them (a blend-stage change needs no context at all) and keeps recent sources in
        # memory (a detection change reads them there). A target goes so too if it went as raw pixels (the
        # recent sources hold those): a preview after a knob change then reads, decodes and sends no file at
        # all. If the server lacks one after all it answers need_sources and every frame is sent with its
        # pixels.
        sent = self._sent.setdefault(self.address, set())
        known = {f: ids.wire(sources[f], raw_only=f in targets) for f in needed if not as_path(sources[f])}
        recall = {f: protocol.ContentRef(i) for f, i in known.items() if i is not None and i in sent}
        by_id = bool(recall)

        def all_sources(ids: bool) -> dict[int, protocol.Inline]:
            rest = {f: sources[f] for f in needed if not (ids and f in recall)}
            return {**(recall if ids else {}), **wire(rest, source_fp)}

        first_try: dict[int, protocol.Inline] | None = all_sources(by_id)
        out_kw: dict[str, Any] = {"output_pattern": stage_pattern.pattern} if path_mode else {}
        # Inline results as raw pixels, written here as EXR with the compression asked for ('same': the
        # input's, which a raw reply carries as its 'compression' attribute); a compression exrfile does not
        # write comes as EXR bytes from the server: so does 'same' for a target whose file exrfile could not
        # read (PIZ, DWA, ...: sent as its bytes), which the server's encoder writes as the input's own. A
        # target by id went as raw pixels, and its unchanged file is read so again on a need_sources retry.
        written = params["compression"]
        own = all(isinstance(first_try[f], (protocol.RawImage, protocol.ContentRef)) for f in targets)  # type: ignore[index]
        if not path_mode and ((written == "same" and own) or written in exrfile.COMPRESSIONS):
            out_kw["reply"] = "raw"

        cached: list[int] = []
        staged: dict[int, str] = {}
        try:
            with self._client() as client:
                client._limits = dict(info.get("limits") or {})  # so an oversized request is refused here, clearly
                server_job = [job.job_id]  # the job id on the server, of this try
                job._cancel_hook = lambda: client.cancel(server_job[0])
                while True:
                    try_sources = first_try if first_try is not None else all_sources(by_id)
                    first_try = None
                    events = client.restore(
                        params, targets, sources=try_sources, masks=wire_masks, job_id=server_job[0], **out_kw
                    )
                    if self._stream(job, events, stage_pattern, staged, cached, report, written, not by_id):
                        break
                    # need_sources: the try that named context frames by id; now send them all, as a job of
                    # its own id (the server may not have retired the first one yet)
                    by_id = False
                    server_job[0] = uuid.uuid4().hex
                    cached.clear()  # the next try answers for every frame again
            missing = [f for f in targets if f not in staged]
            if missing:
                raise RenderError("internal", f"the server finished without frames {format_frame_range(missing)}")
            # Only now, with every frame complete, do results replace what the host sees.
            final = {}
            for f in targets:
                dest = pattern.path(f)
                os.replace(staged[f], dest)
                final[f] = dest
            _write_manifest(out_dir, pattern, {f: _manifest_entry(keys[f], final[f]) for f in targets})
            if len(sent) > 100_000:  # a long session: forget; at worst a preview sends its context again
                sent.clear()
            sent.update(i for f in needed if (i := wire_id(f)) is not None)
        finally:
            job._cancel_hook = None
            shutil.rmtree(staging, ignore_errors=True)
        report(len(targets), len(targets), "done")
        return RenderResult(final, cached, time.monotonic() - started, "done")

    def _stream(
        self,
        job: RenderJob,
        events: Iterator[Event],
        stage: SequencePattern,
        staged: dict[int, str],
        cached: list[int],
        report: ProgressFn,
        written: str,
        last_try: bool,
    ) -> bool:
        """Follow one restore request's events; False if the server asked for the frames sent by id
        (``need_sources``) and another try is to come."""
        for event in events:
            if job.cancelled:
                close = getattr(events, "close", None)
                if close is not None:
                    close()  # leaving the stream early cancels the job on the server
                raise RenderError("cancelled", "render cancelled; nothing was loaded")
            self._on_event(event, stage, staged, cached, report, written)
            if event.kind == "error":
                code = event.code or "internal"
                if job.cancelled or code == "cancelled":
                    raise RenderError("cancelled", "render cancelled; nothing was loaded")
                if code == "need_sources" and not last_try:
                    report(0, job.progress[1], "the server asks for the context frames: sending them")
                    return False
                raise RenderError(code, _explain(code, event.message, self.address))
            if event.kind == "done":
                return True
        raise RenderError("server_unreachable", f"the server at {self.address} ended the job early")

    @staticmethod
    def _on_event(
        event: Event,
        stage: SequencePattern,
        staged: dict[int, str],
        cached: list[int],
        report: ProgressFn,
        compression: str = "zips",
    ) -> None:
        if event.kind == "progress":
            report(event.done, event.total, event.message or "restoring")
        elif event.kind == "accepted":
            report(0, event.total, event.message or "queued")
        elif event.kind == "frame" and event.frame is not None:
            path = stage.path(event.frame)
            if event.image is not None:
                if compression == "same":
                    own = event.image.spec.attributes.get("compression", ("string", ""))[1]
                    compression = own if own in exrfile.COMPRESSIONS else "zips"
                # Not synced (~45 ms of a 2K preview): the manifest records each result's size and time, so a
                # result a power cut left empty is rendered again, never handed over as unchanged.
                atomic.write_bytes(path, exrfile.encode_parts(event.image, compression), durable=False)
            elif event.data is not None:
                atomic.write_bytes(path, event.data, durable=False)
            elif event.path is not None and os.path.realpath(event.path) != os.path.realpath(path):
                shutil.copyfile(event.path, path)
            staged[event.frame] = path
            if event.cached:
                cached.append(event.frame)
            report(event.done, event.total, f"frame {event.frame}" + (" (cached)" if event.cached else ""))


def _explain(code: str, message: str, address: str) -> str:
    if code == "server_unreachable":
        return (
            f"no FRDM server answers at {address}: start one with 'frdm serve --bind {address}' "
            f"or fix the server address knob ({message})"
        )
    if code == "protocol_mismatch":
        return f"the FRDM server at {address} speaks another protocol version: {message}"
    return message


def _check_formats(sources: Mapping[int, Fingerprint], masks: Mapping[int, Fingerprint] | None) -> None:
    sizes = {f: fp.size for f, fp in sources.items()}
    first = min(sizes)
    for f, size in sizes.items():
        if size != sizes[first]:
            raise InputError(
                f"{CLIP_SOURCE} frame {f} is {size[0]}x{size[1]} but frame {first} is "
                f"{sizes[first][0]}x{sizes[first][1]}; every frame must have one format"
            )
    if masks is None:
        return
    for f, fp in masks.items():
        size = fp.size
        if size != sizes[f]:
            raise InputError(
                f"the {CLIP_MASK} input is {size[0]}x{size[1]} at frame {f} but the {CLIP_SOURCE} is "
                f"{sizes[f][0]}x{sizes[f][1]}; reformat the mask to the source's format"
            )


def _frame_keys(
    targets: Sequence[int],
    params: Mapping[str, Any],
    available: Sequence[int],
    sources: Mapping[int, Fingerprint],
    masks: Mapping[int, Fingerprint] | None,
    engine: tuple[str, str],
) -> dict[int, str]:
    """Per target: its output-stage key (``frdm.engine.depends.frame_key``). ``engine`` is the (engine
    version, weights id) that makes the frames."""
    digest = {f: fp.digest for f, fp in sources.items()}
    mdigest = {f: fp.digest for f, fp in (masks or {}).items()}
    engine_version, weights = engine
    return {
        f: depends.frame_key(
            f,
            params,
            "output",
            window=depends.window(f, params, available),
            sources=digest,
            masks=mdigest,
            engine_version=engine_version,
            weights_id=weights,
        )
        for f in targets
    }


def _manifest_path(out_dir: str, pattern: SequencePattern) -> str:
    return os.path.join(out_dir, MANIFEST)


def _read_manifest(out_dir: str, pattern: SequencePattern) -> dict[str, Any]:
    try:
        with open(_manifest_path(out_dir, pattern), encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return {}
    entry = doc.get(os.path.basename(pattern.pattern)) if isinstance(doc, dict) else None
    return entry if isinstance(entry, dict) else {}


def _result_stamp(path: str) -> list[int] | None:
    """What the manifest records of a result file besides its key: its size and modification time (ns)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns] if stat.S_ISREG(st.st_mode) else None


def _manifest_entry(key: str, path: str) -> list[Any]:
    return [key, *(_result_stamp(path) or [])]


def _manifest_hit(out_dir: str, pattern: SequencePattern, keys: Mapping[int, str]) -> bool:
    """Every frame's result is the one the manifest recorded: its key, and the file as it was written (results
    are not synced to disk: a power cut may leave one empty, which then differs from its record and is
    rendered again; an entry without a stamp, of an older node, is a miss too)."""
    known = _read_manifest(out_dir, pattern)
    for f, k in keys.items():
        stamp = _result_stamp(pattern.path(f))
        if stamp is None or known.get(str(f)) != [k, *stamp]:
            return False
    return True


#: Read-modify-write of a manifest is one critical section per process (two nodes, one folder); across
#: processes (two Nukes, a farm task) an advisory lock on the folder itself does the same where the OS has
#: one (no lock file left behind; the manifest cannot be locked as it is replaced by a rename).
_MANIFEST_LOCK = threading.Lock()


@contextlib.contextmanager
def _manifest_locked(path: str) -> Iterator[None]:
    with _MANIFEST_LOCK:
        try:
            import fcntl
        except ImportError:  # Windows: the in-process lock and the unique temporary name still hold
            yield
            return
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def _write_manifest(out_dir: str, pattern: SequencePattern, keys: Mapping[int, Any]) -> None:
    """Record ``keys`` (frame -> its entry, ``_manifest_entry``) in the manifest of ``out_dir``."""
    path = _manifest_path(out_dir, pattern)
    with _manifest_locked(path):
        try:
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
            if not isinstance(doc, dict):
                doc = {}
        except (OSError, ValueError):
            doc = {}
        entry = doc.get(os.path.basename(pattern.pattern))
        entry = dict(entry) if isinstance(entry, dict) else {}
        entry.update({str(f): k for f, k in keys.items()})
        doc[os.path.basename(pattern.pattern)] = entry
        atomic.write_text(path, json.dumps(doc, indent=1, sort_keys=True))


__all__ = [
    "CLIP_MASK",
    "CLIP_OUTPUT",
    "CLIP_SOURCE",
    "ClipDescriptor",
    "FrdmNode",
    "Inputs",
    "NodeDescriptor",
    "RenderError",
    "RenderJob",
    "RenderResult",
    "check_range",
    "context_for",
    "describe",
    "frames_needed",
]
