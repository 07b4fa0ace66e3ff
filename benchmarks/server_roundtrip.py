"""Inference-server round trip: what the wire and the server add around the restorer (issue 13's figures).

Measured in one run, so the ratios compare like with like on a busy machine:

1. transport: frames/s of a full ``restore`` round trip of raw pixel frames (2K RGBA half, ``reply: raw``)
   through ``frdm serve`` with a pass-through restorer, against the same bytes pushed through a plain
   local DEALER/ROUTER socket pair and echoed back; then the same request again (every frame from the
   cache). ``--exr`` adds the same round trip with EXR bytes both ways (the old form);
2. overhead: per-frame wall time of the classical engine through the server (raw frames) against
   ``restore_frames`` in-process on already decoded frames, in ``--repeats`` interleaved pairs: the
   difference is the server's overhead (median and spread of the pairs);
3. feather: 8 classical frames at 1280x720 through the server, then the same request with only
   ``feather`` changed (the stage cache re-blends from the restorer's output): its time as a share of the
   first run's, and per frame;
4. preview (``--preview``): the node's "Preview frame" (``FrdmNode.preview``, inputs as uncompressed EXR
   files the way the Nuke adapter renders them, results written with the input's compression) on one
   frame after a blend-stage change and after a detection change, ``--repeats`` times, each detection
   change beside the classical frame time measured in process right after it.

    python benchmarks/server_roundtrip.py                                  # 2K, 12 frames, classical on 4
    python benchmarks/server_roundtrip.py --classical-size 1024x778 --classical-frames 3 --preview
    python benchmarks/server_roundtrip.py --width 256 --height 194 --frames 4 --classical-frames 3 \
        --feather-size 320x180   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from frdm.commands.serve import NUMPY_HUGEPAGE_ENV
from frdm.commands.tuning import tune_process

os.environ.setdefault(NUMPY_HUGEPAGE_ENV, "0")  # as frdm serve runs: in-process runs compare like with like
tune_process()  # and its malloc (frdm restore's too): the engine's frame-sized arrays reuse freed pages alike
import numpy as np  # noqa: E402
import zmq  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PASS = {"mask": "none", "colorspace": "raw", "write_matte": False}


class PassThroughRestorer:
    """Leaves every target as it came without reading it (``RestoredFrame.unchanged``: the pipeline then
    converts nothing into model space): isolates what the wire and the server do around a restorer."""

    engine_version = "bench-pass-2"

    def context(self, params: Mapping[str, Any]) -> tuple[int, int]:
        return (0, 0)

    def restore(self, clip: Any, params: Mapping[str, Any], progress: Any = None) -> Iterator[Any]:
        from frdm.engine.restorer import RestoredFrame

        for n in clip.targets:
            yield RestoredFrame.unchanged(n)


def passthrough() -> PassThroughRestorer:
    return PassThroughRestorer()


# The file the server's timed restorer writes its CPU seconds to (set for the server by this benchmark).
RESTORER_CPU_ENV = "FRDM_BENCH_RESTORER_CPU"
# Threads the engine runs for itself (the classical engine's one-ahead worker); every other Python thread is
# the server's or the pipeline's, and so are libzmq's (named ZMQbg/...).
ENGINE_THREADS = "frdm-classical"
CLOCK_TICK = 1.0 / os.sysconf("SC_CLK_TCK")


class TimedRestorer:
    """A restorer measured from inside its process: ``cpu`` is the CPU seconds its own work has cost: the
    calling thread's time inside its ``restore`` steps (``time.thread_time``) plus all the time of the
    threads only the engine runs (its own workers, OpenCV's and OpenMP's pools: every thread that is not one
    of the process's Python threads, bar the engine's, nor libzmq's). The clip is converted into model space
    before the count starts: that is the pipeline's work, like the blend after. With ``record`` the total is
    written there after every step (the server's side: the benchmark reads it from outside).

    OpenCV's pool also serves the pipeline's feather blur (small crops, rarely split): counted as the
    engine's, it makes the overhead figure a little low, never high."""

    def __init__(self, inner: Any, record: str | None = None):
        self.inner, self.record = inner, record
        self.engine_version = inner.engine_version
        self.cpu = 0.0
        self._seen: dict[int, float] = {}  # engine thread id -> its CPU seconds already counted
        self._roles: dict[int, str] = {}  # every thread seen -> its role

    def context(self, params: Mapping[str, Any]) -> tuple[int, int]:
        return self.inner.context(params)  # type: ignore[no-any-return]

    @staticmethod
    def _threads() -> dict[int, tuple[str, float]]:
        """Every thread of this process: its id -> (its role, CPU seconds so far; Linux /proc, clock ticks).
        The role: a Python thread's name without its number, else the kernel's name of the thread."""
        names = {t.native_id: t.name for t in threading.enumerate()}
        out = {}
        for entry in os.listdir("/proc/self/task"):
            tid = int(entry)
            try:
                with open(f"/proc/self/task/{entry}/stat") as fh:
                    comm, rest = fh.read().rsplit(")", 1)
            except OSError:  # ended meanwhile
                continue
            fields = rest.split()
            role = names.get(tid, comm.split("(", 1)[1]).rstrip("0123456789").rstrip("_-")
            out[tid] = (role, (int(fields[11]) + int(fields[12])) * CLOCK_TICK)  # utime, stime
        return out

    def _engine_threads(self) -> dict[int, float]:
        """CPU seconds so far of every thread that only the engine runs (see the class docstring)."""
        python = {t.native_id for t in threading.enumerate() if not t.name.startswith(ENGINE_THREADS)}
        return {
            tid: cpu
            for tid, (role, cpu) in self._threads().items()
            if tid not in python and not role.startswith("ZMQbg")
        }

    def _count(self, step: float) -> None:
        now = self._engine_threads()
        self.cpu += step + sum(cpu - self._seen.get(tid, 0.0) for tid, cpu in now.items())
        self._seen.update(now)
        if self.record is not None:
            # Beside the engine's total, the role of every thread seen (the benchmark reads their CPU from
            # outside: a profile of the server by thread).
            self._roles.update({tid: role for tid, (role, _) in self._threads().items()})
            with open(self.record + ".tmp", "w") as fh:
                json.dump({"engine": self.cpu, "roles": self._roles}, fh)
            os.replace(self.record + ".tmp", self.record)

    def restore(self, clip: Any, params: Mapping[str, Any], progress: Any = None) -> Iterator[Any]:
        from frdm.engine.restorer import no_progress

        clip.frames  # noqa: B018  (converted here, outside the count)
        # Threads alive now were made before this call (numpy's, an earlier call's pool): from here on.
        self._seen.update({tid: cpu for tid, cpu in self._engine_threads().items() if tid not in self._seen})
        steps = iter(self.inner.restore(clip, params, progress or no_progress))
        try:
            while True:
                start = time.thread_time()
                try:
                    item = next(steps)
                except StopIteration:
                    self._count(time.thread_time() - start)
                    return
                self._count(time.thread_time() - start)
                yield item
        finally:
            close = getattr(steps, "close", None)
            if close is not None:
                close()


def timed_classical() -> TimedRestorer:
    from frdm.engine.classical import ClassicalRestorer

    return TimedRestorer(ClassicalRestorer(), os.environ[RESTORER_CPU_ENV])


def restorer_cpu(record: str) -> tuple[float, dict[int, str]]:
    """The server's timed restorer's CPU seconds so far, and the role of every thread it has seen."""
    try:
        with open(record) as fh:
            data = json.load(fh)
        return float(data["engine"]), {int(k): str(v) for k, v in data["roles"].items()}
    except FileNotFoundError:
        return 0.0, {}


def make_pixels(count: int, width: int, height: int, seed: int = 0) -> dict[int, np.ndarray]:
    """A graded, grainy scan-like RGBA image per frame (compresses like film, not like noise or flat grey),
    with a few dust specks for the classical engine. Another ``seed``, other grain: frames no cache knows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 0.35 + 0.25 * np.sin(x / width * 6.0)[..., None] * np.cos(y / height * 4.0)[..., None]
    out = {}
    for n in range(1, count + 1):
        px = np.empty((height, width, 4), np.float32)
        px[..., :3] = base + 0.03 * rng.standard_normal((height, width, 3), dtype=np.float32) + 0.002 * n
        if n % 3 == 0:  # a few dust specks for the classical engine
            px[height // 3 : height // 3 + 6, width // 2 : width // 2 + 6, :3] = 0.95
        px[..., 3] = 1.0
        out[n] = px
    return out


def make_raw(count: int, width: int, height: int, seed: int = 0) -> dict[int, Any]:
    from frdm.server.protocol import RawImage

    win = (0, 0, width, height)
    return {
        n: RawImage.from_float32(px, ("R", "G", "B", "A"), ("half",) * 4, win, win)
        for n, px in make_pixels(count, width, height, seed).items()
    }


def make_frames(count: int, width: int, height: int, seed: int = 0) -> dict[int, bytes]:
    """The same frames as EXR bytes."""
    from frdm.engine.frames import Frame, encode_image

    win = (0, 0, width, height)
    return {
        n: encode_image(Frame(px, ("R", "G", "B", "A"), ("half",) * 4, win, win))
        for n, px in make_pixels(count, width, height, seed).items()
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw_socket_pair(blobs: list[bytes], repeats: int) -> float:
    """Seconds per round of: one multipart request of all blobs, each blob echoed back as its own message."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")

    def echo() -> None:
        for _ in range(repeats):
            identity, *parts = router.recv_multipart(copy=False)
            for part in parts:
                router.send_multipart([identity, b"h", part], copy=False)

    t = threading.Thread(target=echo)
    t.start()
    start = time.perf_counter()
    for _ in range(repeats):
        dealer.send_multipart([b"h", *blobs], copy=False)
        for _ in blobs:
            dealer.recv_multipart()
    elapsed = (time.perf_counter() - start) / repeats
    t.join()
    dealer.close(0)
    router.close(0)
    ctx.term()
    return elapsed


class Server:
    def __init__(self, cache: str, *args: str):
        self.address = f"tcp://127.0.0.1:{free_port()}"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
        cmd = [sys.executable, "-m", "frdm.cli", "serve", "--bind", self.address, "--cache-dir", cache, *args]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        if "listening on" not in line:
            raise RuntimeError(f"server did not start: {line}{self.proc.stderr.read()}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)

    def thread_cpu(self) -> dict[int, float]:
        """CPU seconds so far of each thread of the server (Linux /proc; threads that ended are gone)."""
        out = {}
        for entry in os.listdir(f"/proc/{self.proc.pid}/task"):
            try:
                with open(f"/proc/{self.proc.pid}/task/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(entry)] = (int(fields[11]) + int(fields[12])) * CLOCK_TICK
        return out

    def cpu_seconds(self) -> float:
        """CPU time (user + system, every thread) the server process has used so far (Linux /proc)."""
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def cpu_of(server: Server, run: Any) -> tuple[Any, float]:
    """``run()``'s result and the CPU seconds it cost here and in the server, the server's cache writer
    included (it writes after the reply: given ``SETTLE`` to finish). CPU time counts what a frame costs,
    not how long it waited for a core: on a loaded machine it compares like with like where wall time
    cannot."""
    here, there = time.process_time(), server.cpu_seconds()
    result = run()
    here = time.process_time() - here
    time.sleep(SETTLE)
    return result, here + server.cpu_seconds() - there


def server_round(
    address: str, params: dict[str, Any], sources: dict[int, Any], frames: list[int] | None = None
) -> tuple[float, int]:
    """Seconds for one restore request (raw sources get raw replies) and how many frames came cached."""
    from frdm.server.client import FrdmClient
    from frdm.server.protocol import RawImage

    reply = "raw" if any(isinstance(v, RawImage) for v in sources.values()) else "exr"
    with FrdmClient(address, timeout=600) as client:
        start = time.perf_counter()
        cached = 0
        for event in client.restore(params, frames or sorted(sources), sources=sources, reply=reply):
            if event.kind == "error":
                raise RuntimeError(f"{event.code}: {event.message}")
            cached += int(event.kind == "frame" and event.cached)
        return time.perf_counter() - start, cached


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--height", type=int, default=1556)
    ap.add_argument("--frames", type=int, default=12, help="frames per round trip")
    ap.add_argument(
        "--repeats", type=int, default=3, help="interleaved repeats: socket/server pairs, classical and preview pairs"
    )
    ap.add_argument("--exr", action="store_true", help="also time the round trip with EXR bytes both ways")
    ap.add_argument("--classical-frames", type=int, default=4, help="frames for the classical overhead (0: skip)")
    ap.add_argument("--classical-size", default=None, metavar="WxH", help="default: --width x --height")
    ap.add_argument("--feather-frames", type=int, default=8, help="frames for the feather change (0: skip)")
    ap.add_argument("--feather-size", default="1280x720", metavar="WxH")
    ap.add_argument("--preview", action="store_true", help="time the node's Preview frame (classical)")
    ap.add_argument("--preview-size", default=None, metavar="WxH", help="default: the classical size")
    ap.add_argument(
        "--colorspace", default=CLASSICAL["colorspace"], help="the classical runs' colour space (linear: EXR's)"
    )
    args = ap.parse_args()
    CLASSICAL["colorspace"] = args.colorspace
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # figures appear as they are measured

    size = lambda text, default: tuple(int(v) for v in text.lower().split("x")) if text else default  # noqa: E731
    print(
        f"frames: {args.frames} x {args.width}x{args.height} RGBA half raw, "
        f"{args.width * args.height * 8 / 1e6:.1f} MB each; {args.repeats} interleaved repeats"
    )
    with tempfile.TemporaryDirectory(prefix="frdm-bench-") as tmp:
        transport(tmp, args)
        if args.classical_frames:
            wh = size(args.classical_size, (args.width, args.height))
            classical_overhead(tmp, args.classical_frames, wh, args.repeats)
        if args.feather_frames:
            feather_change(tmp, args.feather_frames, size(args.feather_size, (1280, 720)))
        if args.preview:
            preview(tmp, size(args.preview_size or args.classical_size, (args.width, args.height)), args.repeats)
    return 0


def transport(tmp: str, args: argparse.Namespace) -> None:
    """Each repeat: the plain socket pair, then the server on frames it has never seen (other grain each
    repeat, so neither the stage cache nor the recent sources know them), then the same request again (every
    frame from the cache). Each server round is compared with the socket round right before it, so a load
    change on the machine hits both of a pair alike; the medians and the spread of the pairs are reported."""
    n = args.frames
    server = Server(os.path.join(tmp, "cache-pass"), "--restorer", "server_roundtrip:passthrough")
    raw, fresh, cached_s, exr = [], [], [], []
    raw_cpu: list[float] = []
    fresh_cpu: list[float] = []
    try:
        # Warm-up (imports, first allocations) on frames of their own, so the timed rounds miss.
        server_round(server.address, PASS, make_raw(1, args.width, args.height, seed=1000))
        for r in range(args.repeats):
            sources = make_raw(n, args.width, args.height, seed=r + 1)
            cpu = time.process_time()
            raw.append(raw_socket_pair([sources[f].buffer for f in sorted(sources)], 1))
            raw_cpu.append(time.process_time() - cpu)
            (seconds, _), cpu = cpu_of(server, lambda s=sources: server_round(server.address, PASS, s))
            fresh.append(seconds)
            fresh_cpu.append(cpu)
            seconds, cached = server_round(server.address, PASS, sources)
            assert cached == n, f"{cached} of {n} frames came from the cache"
            cached_s.append(seconds)
            del sources
            if args.exr:
                frames = make_frames(n, args.width, args.height, seed=100 + r)
                exr.append(server_round(server.address, PASS, frames)[0])
                del frames
    finally:
        server.stop()
    fps = lambda seconds: [n / s for s in seconds]  # noqa: E731
    ratio = lambda seconds: spread([r / s for r, s in zip(raw, seconds)], digits=3)  # noqa: E731  (each pair's)
    print(f"plain zmq socket pair (send all, echo each): {spread(fps(raw))} frames/s")
    print(f"frdm serve raw round trip, pass-through:     {spread(fps(fresh))} frames/s   ratio {ratio(fresh)}")
    print(f"frdm serve raw round trip, all from cache:   {spread(fps(cached_s))} frames/s   ratio {ratio(cached_s)}")
    if exr:
        print(f"frdm serve EXR round trip, pass-through:     {spread(fps(exr))} frames/s   ratio {ratio(exr)}")
    print(f"CPU per frame, socket pair (both ends):      {spread(raw_cpu, 1000 / n, ' ms')}")
    print(f"CPU per frame, pass-through (client+server): {spread(fresh_cpu, 1000 / n, ' ms')}")
    print(
        f"  socket pair's CPU over the server round's:  "
        f"{spread([r / s for r, s in zip(raw_cpu, fresh_cpu)], digits=3)} (per pair)"
    )


CLASSICAL = {"colorspace": "srgb", "write_matte": False}
# Seconds to let the server's cache writer finish a round's entries (it writes after the reply) before an
# in-process run, so that run does not pay for the server's disk work on a machine of few cores.
SETTLE = 1.5


def spread(values: list[float], scale: float = 1.0, unit: str = "", digits: int = 2) -> str:
    """median [min - max] of repeated measurements."""
    v = sorted(x * scale for x in values)
    return f"{statistics.median(v):8.{digits}f}{unit} [{v[0]:.{digits}f} - {v[-1]:.{digits}f}]"


def classical_overhead(tmp: str, count: int, wh: tuple[int, int], repeats: int) -> None:
    """In-process and through-the-server runs interleaved (each pair on its own detection knob, so nothing
    comes from a cache), so a load change on the machine hits both alike; the overhead of each pair.

    The firm figure is CPU measured inside each process: the server's CPU (every thread, its cache writer
    included) less the engine's own (``TimedRestorer``), as a share of the engine's: everything but
    restoring (wire, content ids, cache, model-space conversion, blend). The same split in process tells the
    pipeline's part (conversion, blend) from what the server adds."""
    from frdm.engine.classical import ClassicalRestorer
    from frdm.engine.frames import Frame, MemorySource
    from frdm.engine.pipeline import restore_frames

    w, h = wh
    print(
        f"classical engine on {count} frames of {w}x{h}, colorspace {CLASSICAL['colorspace']}, "
        f"{repeats} interleaved pairs:",
        flush=True,
    )
    pixels = make_pixels(count, w, h)
    win = (0, 0, w, h)
    # Held as halves, as the server holds the raw half frames it receives (and finished as halves, as it
    # replies them): both sides convert and blend alike.
    memory = MemorySource(
        {n: Frame(px.astype(np.float16), ("R", "G", "B", "A"), ("half",) * 4, win, win) for n, px in pixels.items()},
        "bench",
    )
    resident = TimedRestorer(ClassicalRestorer())  # one instance, as the server keeps one

    def in_process(params: dict[str, Any], frames: list[int]) -> None:
        for _ in restore_frames(memory, frames, params, resident, halves_out=True):
            pass

    in_process(dict(CLASSICAL, feather=1.0), [1])  # the same warm-up as the server's
    few = make_raw(count, w, h)
    record = os.path.join(tmp, "restorer-cpu")
    os.environ[RESTORER_CPU_ENV] = record
    server = Server(os.path.join(tmp, "cache-classical"), "--restorer", "server_roundtrip:timed_classical")
    inproc, served, inproc_cpu, served_cpu = [], [], [], []
    over_served, over_inproc, added, engine_in, engine_served = [], [], [], [], []
    by_role: dict[str, list[float]] = {}
    try:
        server_round(server.address, dict(CLASSICAL, feather=1.0), few, [1])
        time.sleep(SETTLE)
        for r in range(repeats):
            params = dict(CLASSICAL, dust_threshold=0.05 + 0.002 * r)
            start, cpu, engine = time.perf_counter(), time.process_time(), resident.cpu
            in_process(params, sorted(pixels))
            inproc.append((time.perf_counter() - start) / count)
            cpu, engine = time.process_time() - cpu, resident.cpu - engine
            inproc_cpu.append(cpu / count)
            engine_in.append(engine / count)
            there, threads, engine_there = server.cpu_seconds(), server.thread_cpu(), restorer_cpu(record)[0]
            (seconds, _), both = cpu_of(server, lambda p=params: server_round(server.address, p, few))
            engine_now, roles = restorer_cpu(record)
            there, engine_there = server.cpu_seconds() - there, engine_now - engine_there
            spent: dict[str, float] = {}
            for tid, now in server.thread_cpu().items():
                role = roles.get(tid, "(not seen by the engine's steps)")
                spent[role] = spent.get(role, 0.0) + now - threads.get(tid, 0.0)
            for role, seconds_spent in spent.items():
                by_role.setdefault(role, []).append(seconds_spent / count)
            served.append(seconds / count)
            served_cpu.append(both / count)
            engine_served.append(engine_there / count)
            over_served.append((there - engine_there) / engine_there * 100)
            over_inproc.append((cpu - engine) / engine * 100)
            added.append(((there - engine_there) - (cpu - engine)) / engine_there * 100)
    finally:
        server.stop()
    over = [(s - i) / i * 100 for i, s in zip(inproc, served)]
    over_cpu = [(s - i) / i * 100 for i, s in zip(inproc_cpu, served_cpu)]
    print(f"classical engine in process (restore_frames): {spread(inproc, 1000, ' ms')}/frame")
    print(f"classical engine through frdm serve (raw):    {spread(served, 1000, ' ms')}/frame")
    print(f"server overhead per frame, per pair (wall):   {spread(over, 1, ' %')} of the engine's time")
    print(f"CPU per frame in process:                     {spread(inproc_cpu, 1000, ' ms')}")
    print(f"CPU per frame through the server (+client):   {spread(served_cpu, 1000, ' ms')}")
    print(f"  over the in-process CPU, per pair:          {spread(over_cpu, 1, ' %')}")
    print(f"the engine's own CPU per frame, in process:   {spread(engine_in, 1000, ' ms')}")
    print(f"  in the server:                              {spread(engine_served, 1000, ' ms')}")
    print(f"server's CPU beyond the engine's, per round:  {spread(over_served, 1, ' %')} of the engine's CPU")
    print(f"  in process (conversion, blend):             {spread(over_inproc, 1, ' %')}")
    print(f"  what the server adds (the difference):      {spread(added, 1, ' %')}")
    print("  the server's CPU per frame by thread (the worker's includes the engine's steps; threads that")
    print("  ended during the round, e.g. each chunk's reader, are not counted here):")
    for role, values in sorted(by_role.items(), key=lambda item: -statistics.median(item[1])):
        print(f"    {role:<40} {spread(values, 1000, ' ms')}")


def feather_change(tmp: str, count: int, wh: tuple[int, int]) -> None:
    w, h = wh
    print(f"feather change on {count} classical frames of {w}x{h} (raw):", flush=True)
    frames = make_raw(count, w, h)
    server = Server(os.path.join(tmp, "cache-feather"), "--engine", "classical")
    try:
        server_round(server.address, dict(CLASSICAL, dust_threshold=0.07), make_raw(3, w, h), [2])  # warm-up
        first, _ = server_round(server.address, dict(CLASSICAL, feather=2.0), frames)
        changed, cached = server_round(server.address, dict(CLASSICAL, feather=4.0), frames)
    finally:
        server.stop()
    assert cached == 0
    print(f"first run:          {first:8.2f} s  ({first / count * 1000:.0f} ms/frame)")
    print(
        f"feather 2 -> 4:     {changed:8.2f} s  ({changed / count * 1000:.0f} ms/frame), "
        f"{changed / first * 100:.1f}% of the first run"
    )


def preview(tmp: str, wh: tuple[int, int], repeats: int) -> None:
    """The node's Preview frame (inputs rendered to EXR files, as the Nuke adapter does). Each repeat: a
    blend-stage change, a detection change, and the classical frame time of that very preview in process
    (frame 3 with its context, frames already decoded, finished as halves as the server finishes them)
    right after it, so each detection preview is compared with the engine's time measured under the same
    load. Both the detection preview and the in-process run start after ``SETTLE`` (the server's cache
    writer done with the preview before), and the in-process engine is warmed up first, as the server's."""
    from frdm.engine.classical import ClassicalRestorer
    from frdm.engine.frames import Frame, MemorySource, read_frame, write_frame
    from frdm.engine.pipeline import restore_frames
    from frdm.plugin.node import FrdmNode, Inputs

    w, h = wh
    print(f"node Preview frame at {w}x{h} (classical), {repeats} repeats:", flush=True)
    win = (0, 0, w, h)
    folder = os.path.join(tmp, "preview-in")
    for n, px in make_pixels(5, w, h).items():
        frame = Frame(px, ("R", "G", "B", "A"), ("half",) * 4, win, win, {"compression": ("string", "none")})
        write_frame(os.path.join(folder, f"src.{n:04d}.exr"), frame)  # uncompressed, as the Nuke adapter writes
    inputs = Inputs.from_sequence(os.path.join(folder, "src.####.exr"))
    memory = MemorySource({n: read_frame(inputs.source(n)) for n in inputs.available}, "preview")
    resident = ClassicalRestorer()
    server = Server(os.path.join(tmp, "cache-preview"), "--engine", "classical")
    blend, detect, engine, detect_cpu, engine_cpu = [], [], [], [], []
    try:
        node = FrdmNode(server.address, timeout=600)
        out = os.path.join(tmp, "preview-out", "p.####.exr")

        def once(**knobs: Any) -> float:
            node.set_params(knobs)
            start = time.perf_counter()
            node.preview(3, inputs, out, use_cache=False).wait(900)
            return time.perf_counter() - start

        def in_process(params: Mapping[str, Any]) -> float:
            start, cpu = time.perf_counter(), time.process_time()
            for _ in restore_frames(memory, [3], params, resident, halves_out=True):
                pass
            engine_cpu.append(time.process_time() - cpu)
            return time.perf_counter() - start

        once(**CLASSICAL, feather=1.0)  # warm-up and the first restore
        fresh = once(dust_threshold=0.07)
        in_process(dict(node.params, dust_threshold=0.071))  # the in-process engine's warm-up
        engine_cpu.clear()
        for r in range(repeats):
            blend.append(once(feather=3.0 + r))
            time.sleep(SETTLE)
            # CPU too (the node's and the server's, its cache writer's included: ``cpu_of`` lets it finish):
            # on a machine whose cores are shared (steal time) it compares like with like where wall time
            # cannot.
            seconds, cpu = cpu_of(server, lambda r=r: once(dust_threshold=0.08 + 0.002 * r))
            detect.append(seconds)
            detect_cpu.append(cpu)
            engine.append(in_process(dict(node.params)))
    finally:
        server.stop()
    over = [(d - e) / e * 100 for d, e in zip(detect, engine)]
    print(f"preview, fresh restore (first send of the shot): {fresh:8.2f} s")
    print(f"preview after a feather change:                  {spread(blend, 1, ' s')}")
    print(f"preview after a detection change:                {spread(detect, 1, ' s')}")
    print(f"classical frame time in process, same knobs:     {spread(engine, 1, ' s')}")
    print(f"detection-change preview over the frame time:    {spread(over, 1, ' %')} (per pair)")
    over_cpu = [(d - e) / e * 100 for d, e in zip(detect_cpu, engine_cpu)]
    print(f"  CPU: the preview's (node + server):            {spread(detect_cpu, 1, ' s')}")
    print(f"  CPU: the frame in process:                     {spread(engine_cpu, 1, ' s')}")
    print(f"  CPU: the preview's over the frame's:           {spread(over_cpu, 1, ' %')} (per pair)")


if __name__ == "__main__":
    sys.exit(main())
