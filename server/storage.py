"""What the server reads and writes on disk: the allowed roots of path mode, and the result cache
(every write is ``frdm.engine.atomic``'s); and what it keeps in memory: the raw source frames it received
lately (``SourceMemory``).

Every path a client names is resolved here and nowhere else, so the rules (absolute, no '..', under an
allowed root, never an input overwritten) live in one room. A resolved path is kept as its root plus the
components below it and is only ever opened from the root one component at a time, with no symlink followed
(``os.open`` with ``dir_fd`` and ``O_NOFOLLOW``) and the opened file itself checked (``fstat``: a regular
file): a folder or file swapped for a symlink after a request was accepted is refused, never followed.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import queue
import re
import stat
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from frdm.engine import atomic
from frdm.server import sniff
from frdm.server.protocol import ImageRef, Limits, ProtocolError, RawImage, RestoreRequest
from frdm.server.sniff import ImageHeader

log = logging.getLogger("frdm.server")
T = TypeVar("T")

# --- allowed roots -----------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class RootedPath:
    """A resolved path as (allowed root, components below it)."""

    root: str
    parts: tuple[str, ...]

    @property
    def path(self) -> str:
        return os.path.join(self.root, *self.parts)

    @property
    def name(self) -> str:
        return self.parts[-1]


def rooted(real: str, roots: list[str]) -> RootedPath:
    """``real`` (a resolved path under one of ``roots``) split at its root."""
    for root in sorted(roots, key=len, reverse=True):  # the innermost root if roots nest
        if real != root and os.path.commonpath([real, root]) == root:
            return RootedPath(root, tuple(os.path.relpath(real, root).split(os.sep)))
    raise ProtocolError("forbidden_path", f"'{real}' is not a file under the server's allowed roots")


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _refused(rp: RootedPath, what: str, exc: OSError) -> ProtocolError:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return ProtocolError(
            "forbidden_path",
            f"{what} '{rp.path}': a component is a symlink or not a folder (changed after the request was "
            "accepted?); the server never follows it",
        )
    return ProtocolError("bad_input", f"{what} '{rp.path}': {exc.strerror or exc}")


def _open_dir(rp: RootedPath, what: str, *, create: bool) -> int:
    """A descriptor of ``rp``'s folder, reached from the root one component at a time without following
    a symlink; missing folders are made when ``create``."""
    fd = os.open(rp.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in rp.parts[:-1]:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise ProtocolError("bad_input", f"{what} '{rp.path}': folder '{part}' does not exist") from None
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except OSError as exc:
        os.close(fd)
        raise _refused(rp, what, exc) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(rp: RootedPath, what: str) -> int:
    """A read descriptor of the regular file ``rp``: no symlink at any component, checked on the opened
    file (fstat), and a FIFO or device refused without ever blocking on it (O_NONBLOCK)."""
    dfd = _open_dir(rp, what, create=False)
    try:
        fd = os.open(rp.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except FileNotFoundError:
        raise ProtocolError("bad_input", f"{what} '{rp.path}' does not exist on the server") from None
    except OSError as exc:
        raise _refused(rp, what, exc) from None
    finally:
        os.close(dfd)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) | stat.S_ISBLK(mode) else "no file"
        raise ProtocolError("forbidden_path", f"{what} '{rp.path}' is {kind}; only regular files are read")
    return fd


def read_regular(rp: RootedPath, what: str, max_bytes: int) -> bytes:
    """The whole of a regular file under a root (see ``open_regular``), refused past ``max_bytes``."""
    fd = open_regular(rp, what)
    try:
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ProtocolError("too_large", f"{what} '{rp.path}' is larger than the server's limit of {max_bytes} bytes")
    return data


def sniff_regular(rp: RootedPath, what: str, limits: Limits) -> ImageHeader:
    """A path-mode frame's format and declared size from its header alone, checked against the limits."""
    fd = open_regular(rp, what)
    try:
        size = os.fstat(fd).st_size
        if size > sniff.max_file_bytes(limits):
            raise ProtocolError(
                "too_large", f"{what} '{rp.path}': a file of {size} bytes is larger than any frame the server takes"
            )
        header = sniff.sniff(lambda offset, n: os.pread(fd, n, offset), f"{what} ({rp.path})")
    finally:
        os.close(fd)
    sniff.check_frame_size(header, limits, what)
    return header


def resolve_inputs(refs: dict[int, ImageRef], what: str, roots: list[str], limits: Limits) -> dict[int, RootedPath]:
    """Path-mode sources or masks: frame -> rooted path, each checked against the roots and the limits."""
    out = {}
    for frame, ref in refs.items():
        if ref.path is None:
            continue
        label = f"{what} frame {frame}"
        rp = rooted(resolve_under_roots(ref.path, roots, what=label, must_exist=False), roots)
        sniff_regular(rp, label, limits)
        out[frame] = rp
    return out


def resolve_outputs(req: RestoreRequest, inputs: set[str], roots: list[str]) -> dict[int, RootedPath]:
    """Path-mode outputs: frame -> rooted path; none of them may be one of ``inputs`` (real paths)."""
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
        real = resolve_under_roots(seq.path(frame), roots, what=f"output frame {frame}", must_exist=False)
        if real in inputs:
            raise ProtocolError("forbidden_path", f"output frame {frame} would overwrite its own input {real}")
        out[frame] = rooted(real, roots)
    return out


OCIO_BUILTIN = re.compile(r"ocio://[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_OCIO_CONFIG_BYTES = 16 << 20  # a config is YAML; the big ACES ones are well under 1 MB


def check_ocio_config(value: str, roots: list[str]) -> None:
    """Parameter 'ocio_config': an OCIO built-in name, or a regular file under an allowed root.

    Checked in the socket loop with calls that cannot block (no symlink followed, a FIFO or device never
    read), so a hostile value is refused at once instead of stalling OpenImageIO's loader, which holds the
    GIL while it reads (and would stop every thread of the server, the socket loop included)."""
    what = "parameter 'ocio_config'"
    if value.startswith("ocio://"):
        if not OCIO_BUILTIN.fullmatch(value):
            raise ProtocolError("bad_param", f"{what}: '{value[:80]}' is not an OCIO built-in name")
        return
    if not os.path.isabs(value):
        raise ProtocolError(
            "forbidden_path", f"{what}: '{value[:200]}' is neither an ocio:// name nor an absolute path"
        )
    rp = rooted(resolve_under_roots(value, roots, what=what, must_exist=False), roots)
    fd = open_regular(rp, what)
    try:
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if size > MAX_OCIO_CONFIG_BYTES:
        raise ProtocolError("too_large", f"{what} '{value}': {size} bytes is too large for an OCIO config")


# --- writes ------------------------------------------------------------------------------------------


def write_under_root(rp: RootedPath, data: bytes, what: str) -> None:
    """Atomic write of a path-mode output, its folders reached (or made) from the root without following
    a symlink: an output folder swapped for a link after acceptance is refused, nothing written outside."""
    dfd = _open_dir(rp, what, create=True)
    try:
        atomic.write_bytes_at(dfd, rp.name, data)
    except OSError as exc:
        raise _refused(rp, what, exc) from None
    finally:
        os.close(dfd)


def remove_stale_under_root(rp: RootedPath) -> None:
    """``engine.atomic.remove_stale`` in the folder of a path-mode output, reached without following links."""
    try:
        dfd = _open_dir(rp, "output", create=False)
    except ProtocolError:
        return  # not there yet, or not safe to look in: nothing of ours to clean
    try:
        atomic.remove_stale(dfd)
    finally:
        os.close(dfd)


# --- recent sources (memory) ---------------------------------------------------------------------------


class SourceMemory:
    """The raw source frames of recent requests, by the content id the server computed for each (never the
    client's word): a later request may name a frame by that id alone (``ContentRef``), so a preview after
    a knob change sends only its target's pixels. The buffers are the received message parts, not copied.
    Also the float32 pixels of a frame of mixed sample types once converted (read-only: the engine never
    writes into an original), so the frames of a shot being previewed are converted once, not per request
    (an all-half frame needs none: the engine holds its received halves). Least recently used entries
    go past ``max_bytes`` (raw and converted together). The worker thread and its read-ahead thread use it,
    so every step holds the lock (an eviction interleaved with a recall would lose the size count)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: collections.OrderedDict[tuple[str, str], Any] = collections.OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def _keep(self, key: tuple[str, str], value: Any, size: int) -> None:
        with self._lock:
            self._keep_locked(key, value, size)

    def _keep_locked(self, key: tuple[str, str], value: Any, size: int) -> None:
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        if size > self.max_bytes:
            return
        self._entries[key] = (value, size)
        self._size += size
        while self._size > self.max_bytes:
            _, (_, old) = self._entries.popitem(last=False)
            self._size -= old

    def _recall(self, key: tuple[str, str]) -> Any:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, content_id: str, image: RawImage) -> None:
        self._keep(("raw", content_id), image, image.spec.nbytes)

    def get(self, content_id: str) -> RawImage | None:
        return self._recall(("raw", content_id))  # type: ignore[no-any-return]

    def put_pixels(self, content_id: str, pixels: np.ndarray) -> None:
        pixels.flags.writeable = False
        self._keep(("pixels", content_id), pixels, pixels.nbytes)

    def pixels(self, content_id: str) -> np.ndarray | None:
        return self._recall(("pixels", content_id))  # type: ignore[no-any-return]

    def mark_finite(self, content_id: str) -> None:
        """The frame's samples were checked (no NaN/Inf): a frame held as its received halves is not
        checked again by every request that reads it (~5 ms a 2K frame). A marker, counted as nothing."""
        self._keep(("finite", content_id), True, 0)

    def finite(self, content_id: str) -> bool:
        return self._recall(("finite", content_id)) is not None


# --- result cache ------------------------------------------------------------------------------------


class ResultCache:
    """The stage cache on disk: per frame, the finished frame (kind ``frame``, keyed at the output stage)
    and the restorer's output before blending (kind ``fill``, keyed at the fill stage), each keyed by
    ``frdm.engine.depends.frame_key`` at its stage.

    Entries are written atomically, so a server killed mid-write leaves no bad entry; least recently used
    entries (of either kind) go when the folder grows past ``max_bytes``. They are not synced, though (a
    frame's fsync would hold the writer for the disk): a power cut can leave a file of the right length that
    is zeros in part or whole. So each file ends with a seal, a magic and the crc32 of all before it
    (``SEAL``); one whose seal does not match (damaged, or of a version before the seal) is a miss with a
    log line naming it, as is one its ``decode`` cannot read (``get``), never a wrong frame or a failed job.

    ``background``: entries are serialised and written by a thread of their own, so a frame's reply (and
    its job's ``done``) does not wait for tens of megabytes to reach the disk; an entry waiting there is
    already served by ``get``, at most ``PENDING`` wait (then ``put`` blocks: the worker never runs far
    ahead of the disk), and ``close`` writes what is left."""

    KINDS = ("frame", "fill")
    PENDING = 8
    SEAL = struct.Struct("<4sI")  # magic, crc32 of the entry before the seal (~10 ms for a 25 MB 2K frame)
    SEAL_MAGIC = b"FRc1"

    def __init__(self, directory: str, max_bytes: int, *, background: bool = False):
        self.directory = directory
        self.max_bytes = max_bytes
        os.makedirs(directory, exist_ok=True)
        atomic.remove_stale(directory)
        self._size = sum(e.stat().st_size for e in os.scandir(directory) if e.is_file())
        self._pending: dict[str, Any] = {}  # path -> the entry not yet written (bytes, parts or a callable)
        self._lock = threading.Lock()
        self._queue: queue.Queue[str | None] | None = None
        self._writer: threading.Thread | None = None
        self._writer_lost = False
        if background:
            self._queue = queue.Queue(self.PENDING)
            self._writer = threading.Thread(target=self._write_pending, name="frdm-cache-writer", daemon=True)
            self._writer.start()

    def _path(self, key: str, kind: str) -> str:
        if kind not in self.KINDS:
            raise ValueError(f"unknown cache entry kind {kind!r}")
        return os.path.join(self.directory, f"{key}.{kind}")

    def get(self, key: str, kind: str = "frame", decode: Callable[[Any], T | None] | None = None) -> Any:
        """The entry's bytes (its seal checked and left off), or what ``decode`` makes of them; None for a
        miss. An entry that is damaged, or that ``decode`` fails on (any Exception: the file is not to be
        trusted), is a miss and logged with its file's name: a bad cache file never fails a job."""
        path = self._path(key, kind)
        with self._lock:
            waiting = self._pending.get(path)
        if waiting is not None:
            try:
                data = _entry_bytes(waiting)  # serialised here: what fails the writer would fail here too
            except Exception as exc:
                log.warning("cache: entry %s not served (%s: %s); read as a miss", path, type(exc).__name__, exc)
                return None
        else:
            try:
                with open(path, "rb") as fh:
                    raw = fh.read()
                os.utime(path)  # recently used
            except OSError:
                return None
            data = self._unsealed(raw, path)
            if data is None:
                return None
        if decode is None:
            return data
        try:
            return decode(data)
        except Exception as exc:
            log.warning("cache: entry %s is not readable (%s: %s); read as a miss", path, type(exc).__name__, exc)
            return None

    def _unsealed(self, raw: bytes, path: str) -> memoryview | None:
        """``raw`` without its seal if the seal matches, else None (logged)."""
        n = self.SEAL.size
        magic, crc = self.SEAL.unpack_from(raw, len(raw) - n) if len(raw) >= n else (b"", 0)
        body = memoryview(raw)[: len(raw) - n]
        if magic != self.SEAL_MAGIC:
            why = "no seal: damaged, or written by a version before the seal"
        elif zlib.crc32(body) != crc:
            why = "its checksum does not match: damaged (a power cut while it was unsynced?)"
        else:
            return body
        log.warning("cache: entry %s (%d bytes) is not valid (%s); read as a miss", path, len(raw), why)
        return None

    def put(self, key: str, data: Any, kind: str = "frame") -> None:
        """``data``: bytes-like, a sequence of bytes-like parts (one atomic write, the parts written one after
        another), or a callable returning either (called where the entry is written: the writer thread when
        ``background``; ``get`` of an entry still waiting calls it too)."""
        path = self._path(key, kind)
        if self._queue is None:
            self._write(path, data)
            return
        with self._lock:
            self._pending[path] = data
        if not self._hand_over(path):
            # The writer is gone (it catches every Exception, so only something that ends a thread gets
            # here): the entry is written in the caller's thread, which never waits for a writer that left.
            with self._lock:
                data = self._pending.pop(path, data)
            self._write_or_log(path, data)

    def _hand_over(self, path: str | None) -> bool:
        """Queue ``path`` for the writer (None: stop); False if the writer thread has ended."""
        assert self._queue is not None and self._writer is not None
        while self._writer.is_alive():
            try:
                self._queue.put(path, timeout=0.5)
                return True
            except queue.Full:
                continue
        if not self._writer_lost:
            self._writer_lost = True
            log.error("cache: the writer thread has ended; entries are written by the worker from now on")
        return False

    def flush(self) -> None:
        """Wait until every entry put so far is on disk (or failed). A writer that ends meanwhile (something
        that ends a thread, not an Exception) leaves its queue unfinished for ever: it is not waited for, and
        what it left is written here."""
        q, writer = self._queue, self._writer
        if q is None or writer is None:
            return
        with q.all_tasks_done:
            while q.unfinished_tasks and writer.is_alive():
                q.all_tasks_done.wait(0.5)
        if not writer.is_alive():
            self._write_left()

    def close(self) -> None:
        """Write every waiting entry, then stop the writer thread (a no-op without one)."""
        if self._queue is not None and self._writer is not None:
            if self._hand_over(None):
                self._writer.join()
            self._queue = None
            self._write_left()

    def _write_left(self) -> None:
        """Write, in this thread, what a writer that ended (or was stopped) left waiting."""
        with self._lock:
            left, self._pending = self._pending, {}
        for path, data in left.items():
            self._write_or_log(path, data)

    def _write_or_log(self, path: str, data: Any) -> None:
        """``_write`` where a failure costs the entry alone: a full or failing disk (OSError), or an entry that
        cannot be serialised (any Exception), is logged, never raised into the worker or ``close``."""
        try:
            self._write(path, data)
        except Exception as exc:
            log.warning("cache: entry %s not cached (%s: %s)", os.path.basename(path), type(exc).__name__, exc)

    def _write_pending(self) -> None:
        assert self._queue is not None
        while (path := self._queue.get()) is not None:  # None: close()
            with self._lock:
                data = self._pending.get(path)
            try:
                if data is not None:
                    self._write_or_log(path, data)  # a full or failing cache disk costs the cache, never a frame
            finally:
                with self._lock:
                    if self._pending.get(path) is data:
                        del self._pending[path]
                self._queue.task_done()

    def _write(self, path: str, data: Any) -> None:
        if callable(data):
            data = data()
        parts = list(data) if not isinstance(data, (bytes, bytearray, memoryview)) else [data]
        crc = 0
        for part in parts:
            crc = zlib.crc32(part, crc)
        parts.append(self.SEAL.pack(self.SEAL_MAGIC, crc))
        # Not synced: an entry a power cut damages reads as a miss (its seal, checked by ``get``), and a 2K
        # frame's fsync would hold the writer for the disk on every frame.
        # The parts are written one after another: joined, a frame's pixels were copied into fresh memory
        # first (~20 ms a 2K frame here, most of it the kernel zeroing the new pages).
        atomic.write_bytes(path, parts, durable=False)
        self._size += sum(memoryview(p).nbytes for p in parts)
        if self._size > self.max_bytes:
            self._prune()

    def _prune(self) -> None:  # the writer's (or, without one, the caller's) thread only
        entries = sorted(
            # .exr: entries of the version before the stage cache, never read again
            (e for e in os.scandir(self.directory) if e.is_file() and e.name.endswith((".frame", ".fill", ".exr"))),
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


def _entry_bytes(data: Any) -> bytes | bytearray | memoryview:
    """A cache entry as one bytes-like: ``data`` itself, its parts joined, or what its callable returns."""
    if callable(data):
        data = data()
    return data if isinstance(data, (bytes, bytearray, memoryview)) else b"".join(data)
