"""Atomic writes: the one way FRDM puts a file (or a folder) in place. Pure Python, so the host side uses it too.

A write goes to a temporary beside its destination (same folder, hence the same file system, so the final
rename is atomic), is flushed to disk (fsync) and renamed over the destination; the folder is fsynced so
the rename itself survives a power loss. A reader sees the old file or the new one, never half of one. If
the write fails, the temporary is removed.

Temporaries are named ``.frdm-partial-HOST~PID~TOKEN~NAME``: the destination's own name comes last, so its
extension is kept (OpenImageIO picks a format by extension), and host and pid say whose it is. A writer
killed mid-write (kill -9, a crash, a farm pre-emption) leaves its temporary; ``remove_stale(folder)``
removes those of dead processes on this host, and only those: on shared storage another host's or a live
writer's temporaries are never touched. Resuming writers (``frdm restore``, the server) call it first.

    with atomic_path("out/shot.0001.exr") as tmp:
        image_output.open(tmp, spec) ...      # anything that writes a file (or makes a folder) at tmp
    write_bytes(path, data) / write_text(path, text)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from typing import Any

PARTIAL_PREFIX = ".frdm-partial-"


def temp_name(name: str) -> str:
    """A fresh temporary file name for a destination called ``name`` (see the module docstring)."""
    owner = f"{socket.gethostname()}~{os.getpid()}~{uuid.uuid4().hex[:12]}"
    return f"{PARTIAL_PREFIX}{owner}~{name}"


def temp_path(path: str | os.PathLike[str]) -> str:
    """A fresh temporary name beside ``path``."""
    path = os.path.abspath(os.fspath(path))
    return os.path.join(os.path.dirname(path), temp_name(os.path.basename(path)))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, durable: bool = True) -> Iterator[str]:
    """Yield a temporary path to write ``path``'s new content at (a file, or a folder made there); on
    success it is synced and renamed over ``path``, on an exception removed. Creates the parent folder.

    ``durable=False`` skips the syncs: a reader still never sees half a file while the machine runs, but a
    power cut may leave the new file empty or missing. Only for what can be made again and is checked when
    read (the server's cache: a bad entry is a miss), where waiting for the disk buys nothing."""
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        if not os.path.lexists(tmp):
            raise FileNotFoundError(f"{path}: the writer produced nothing at its temporary {tmp}")
        if durable:
            _sync_tree(tmp)
        if os.path.isdir(tmp) and os.path.isdir(path) and not os.path.islink(path):
            # A folder cannot be renamed over a non-empty one: move the old aside first, then drop it.
            aside = temp_path(path)
            os.replace(path, aside)
            os.replace(tmp, path)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, path)
        if durable:
            _sync_dir(directory)
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)


def write_bytes(
    path: str | os.PathLike[str],
    data: bytes | bytearray | memoryview | list[Any] | tuple[Any, ...],
    *,
    durable: bool = True,
) -> None:
    """Write ``data`` to ``path`` atomically (``durable``: see ``atomic_path``): bytes-like, or a list or tuple
    of bytes-like parts written one after another (a header and a frame's pixels: never joined in memory)."""
    with atomic_path(path, durable=durable) as tmp, open(tmp, "xb") as fh:
        for part in data if isinstance(data, (list, tuple)) else (data,):
            fh.write(part)


def write_bytes_at(dir_fd: int, name: str, data: bytes | bytearray | memoryview) -> None:
    """``write_bytes`` into the open folder ``dir_fd``: the temporary is made there (O_EXCL, O_NOFOLLOW) and
    renamed over ``name`` relative to the descriptor, so no path is looked up again on the way: a folder
    swapped for a symlink meanwhile is never followed, and a symlink at ``name`` is replaced, not written
    through. The server writes path-mode outputs this way (folders reached from its allowed root)."""
    tmp = temp_name(name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        with contextlib.suppress(OSError):
            os.fsync(dir_fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def is_partial(name: str) -> bool:
    """Whether a file name is one of our temporaries (listings of outputs skip them)."""
    return os.path.basename(name).startswith(PARTIAL_PREFIX)


def remove_stale(directory: str | os.PathLike[str] | int) -> list[str]:
    """Remove the temporaries that dead writers on this host left in ``directory`` (a path, or an open
    folder descriptor: then nothing is looked up by path); return their names."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    host = socket.gethostname()
    removed = []
    for name in names:
        if not name.startswith(PARTIAL_PREFIX):
            continue
        fields = name[len(PARTIAL_PREFIX) :].split("~")
        if len(fields) < 4 or fields[0] != host or not fields[1].isdigit() or _alive(int(fields[1])):
            continue
        with contextlib.suppress(OSError):
            if isinstance(directory, int):
                os.unlink(name, dir_fd=directory)  # a file: a folder temporary of ours is never made in one
            else:
                _remove(os.path.join(os.fspath(directory), name))
            removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _sync_tree(path: str) -> None:
    """fsync a file, or every file of a folder (and the folders), so the rename publishes data on disk."""
    if os.path.isdir(path):
        for root, _, files in os.walk(path):
            for name in files:
                _sync_file(os.path.join(root, name))
            _sync_dir(root)
    else:
        _sync_file(path)


def _sync_file(path: str) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _sync_dir(directory: str) -> None:
    # Not every file system lets a folder be opened and synced (some network mounts, Windows): best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = [
    "PARTIAL_PREFIX",
    "atomic_path",
    "is_partial",
    "remove_stale",
    "temp_name",
    "temp_path",
    "write_bytes",
    "write_bytes_at",
    "write_text",
]
