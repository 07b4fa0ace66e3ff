"""Reading ahead of the restorer and writing behind it, each on a thread of its own, so that decoding and
encoding image files overlap the compute instead of adding to it.

OpenImageIO (decode, encode, its OpenEXR threads), numpy and OpenCV release the GIL in their heavy loops, so a
reader or a writer thread runs beside the restorer. Both keep the serial path's order exactly (one thread
each, first in first out) and bound their memory (a queue of ``depth`` items). An error on a thread is raised
in the caller's thread at the next hand-over, naming the frame; after it nothing more is read or written.
``depth`` 0 does the work in the caller's thread: the serial path, same code.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from frdm.engine.errors import InputError

T = TypeVar("T")
_DONE = object()


def _named(exc: BaseException, what: str) -> BaseException:
    """``exc`` with the frame it concerns said: an InputError's message names the file already and gets the
    frame in front; any other error keeps its type and gets a note."""
    if isinstance(exc, InputError):
        # Its own type (a ParamError stays one): the error's code travels to the user and on the wire.
        named = type(exc)(f"{what}: {exc}").with_traceback(exc.__traceback__)
        named.__suppress_context__ = True  # the message says it all; the traceback is the reader's or writer's
        return named
    # What ``add_note`` does (Python 3.11+); the engine runs on 3.10 too, where a traceback does not show it.
    exc.__notes__ = [*getattr(exc, "__notes__", []), what]
    return exc


class ReadAhead(Generic[T]):
    """``read(n)`` for each of ``numbers`` in order, up to ``depth`` frames ahead of ``take``."""

    def __init__(self, read: Callable[[int], T], numbers: Sequence[int], depth: int, description: str = "source"):
        self._read, self._numbers, self._description = read, list(numbers), description
        self._next = 0  # index into numbers of the next take
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if depth > 0 and self._numbers:
            self._items: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._run, name="frdm-read-ahead", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        for n in self._numbers:
            if self._stop.is_set():
                return
            try:
                item: Any = self._read(n)
            except BaseException as exc:  # handed to the caller's thread, which raises it
                self._put((n, exc))
                return
            if not self._put((n, item)):
                return

    def _put(self, item: tuple[int, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def take(self, n: int) -> T:
        """The next frame of the sequence, which must be ``n`` (frames are taken in the order given)."""
        if self._next >= len(self._numbers) or self._numbers[self._next] != n:
            due = self._numbers[self._next] if self._next < len(self._numbers) else "nothing"
            raise RuntimeError(f"ReadAhead: frame {n} taken where frame {due} was due (take in the order given)")
        self._next += 1
        if self._thread is None:
            return self._read(n)
        got, item = self._items.get()
        if isinstance(item, BaseException):
            self.close()
            raise _named(item, f"frame {got} of {self._description}")
        return item

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading (a read in progress finishes) and let the thread go."""
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    self._items.get(timeout=0.05)
            self._thread = None


class WriteBehind:
    """``write(n, item)`` on a thread, in the order submitted, at most ``depth`` items waiting."""

    def __init__(self, write: Callable[[int, Any], None], depth: int):
        self._write = write
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._items: queue.Queue[Any] = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._run, name="frdm-write-behind", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._items.get()
            if job is _DONE:
                return
            if self._error is not None:
                continue  # after a failure nothing more is written; the queue drains so submit never blocks
            n, item = job
            try:
                self._write(n, item)
            except BaseException as exc:
                self._error = _named(exc, f"frame {n}")

    def submit(self, n: int, item: Any) -> None:
        """Queue frame ``n`` for writing; raises the error of an earlier write, if one failed."""
        if self._error is not None:
            raise self._error
        if self._thread is None:
            try:
                self._write(n, item)
            except BaseException as exc:
                self._error = _named(exc, f"frame {n}")
                raise self._error from None
            return
        self._items.put((n, item))

    def close(self) -> None:
        """Wait until everything submitted is written; raises the first write error."""
        if self._thread is not None:
            self._items.put(_DONE)
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        """On leaving normally: ``close``. On an error: the frames submitted are still written (each is
        whole: resuming keeps them), and a write error of theirs does not hide the error that is leaving."""
        if kind is None:
            self.close()
            return
        with contextlib.suppress(BaseException):  # the error already leaving is the one to report
            self.close()
