"""What the server reads and writes on disk: the allowed roots of path mode, atomic writes, and the
result cache.

Every path a client names is resolved here and nowhere else, so the rules (absolute, no '..', under an
allowed root, never an input overwritten) live in one room.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading

from frdm.server import protocol
from frdm.server.protocol import ImageRef, Limits, ProtocolError, RestoreRequest

PARTIAL_PREFIX = ".frdm-partial-"  # temporary files of atomic writes; stale ones are removed
_EXR_HEADER_PEEK = 1 << 20  # bytes read from a path-mode file to check its declared size


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


def resolve_inputs(refs: dict[int, ImageRef], what: str, roots: list[str], limits: Limits) -> dict[int, str]:
    """Path-mode sources or masks: frame -> resolved path, each checked against the roots and the limits."""
    out = {}
    for frame, ref in refs.items():
        if ref.path is None:
            continue
        real = resolve_under_roots(ref.path, roots, what=f"{what} frame {frame}", must_exist=True)
        size = os.path.getsize(real)
        if size > limits.max_message_bytes:
            raise ProtocolError("too_large", f"{what} frame {frame}: {size} bytes exceeds the server's limit")
        if real.lower().endswith(".exr"):
            with open(real, "rb") as fh:
                head = fh.read(_EXR_HEADER_PEEK)
            info = protocol.exr_info(head, f"{what} frame {frame} ({ref.path})")
            protocol.check_exr_size(info, limits, f"{what} frame {frame}")
        out[frame] = real
    return out


def resolve_outputs(req: RestoreRequest, inputs: set[str], roots: list[str]) -> dict[int, str]:
    """Path-mode outputs: frame -> resolved path under a root; none of them may be one of ``inputs``."""
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
        out[frame] = real
    return out


# --- atomic writes -----------------------------------------------------------------------------------


def atomic_write_bytes(path: str, data: bytes) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    # host and pid in the name: on shared storage only a dead writer's leftovers are ever removed
    owner = f"{socket.gethostname()}~{os.getpid()}~{threading.get_ident()}"
    tmp = os.path.join(directory, f"{PARTIAL_PREFIX}{owner}~{os.path.basename(path)}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_partials(directory: str) -> None:
    """Temporary files a killed server on this host left behind: never leave half a frame lying around.
    Files of a live process, or of another host (shared storage), are not touched."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    host = socket.gethostname()
    for name in names:
        if not name.startswith(PARTIAL_PREFIX):
            continue
        fields = name[len(PARTIAL_PREFIX) :].split("~")
        if len(fields) < 4 or fields[0] != host or not fields[1].isdigit() or _alive(int(fields[1])):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- result cache ------------------------------------------------------------------------------------


class ResultCache:
    """Finished frames as EXR bytes on disk, keyed by ``frdm.engine.depends.frame_key``.

    Entries are written atomically, so a server killed mid-write leaves no bad entry; least recently used
    entries go when the folder grows past ``max_bytes``."""

    def __init__(self, directory: str, max_bytes: int):
        self.directory = directory
        self.max_bytes = max_bytes
        os.makedirs(directory, exist_ok=True)
        remove_stale_partials(directory)
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
