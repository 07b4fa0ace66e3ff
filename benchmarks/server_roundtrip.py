"""Inference-server round trip: what the wire and the server add around the restorer.

Three figures, measured in one run on the same frames (2K RGBA half EXRs by default):

1. transport: frames/s of a full ``restore`` round trip through ``frdm serve`` with a pass-through restorer
   (the server still decodes, colour-converts, blends, encodes, hashes and caches every frame) against the
   same bytes pushed through a plain local DEALER/ROUTER socket pair and echoed back: the ratio is what
   the protocol and server cost over bare ZeroMQ;
2. cache: frames/s of the same request again (every frame from the result cache);
3. overhead: per-frame wall time of the classical engine through the server against ``restore_frames``
   in-process on already decoded frames: the difference is the server's per-frame overhead.

    python benchmarks/server_roundtrip.py                       # 2048x1556, 12 frames, classical on 4
    python benchmarks/server_roundtrip.py --frames 8 --classical-frames 3 --classical-size 512x389   # CPU
    python benchmarks/server_roundtrip.py --width 256 --height 194 --frames 4 --classical-frames 3   # quick
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zmq

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PASS = {"mask": "none", "colorspace": "raw", "write_matte": False}


class PassThroughRestorer:
    """Returns every target unchanged: isolates what the server does around a restorer."""

    engine_version = "bench-pass-1"

    def context(self, params: Mapping[str, Any]) -> tuple[int, int]:
        return (0, 0)

    def restore(self, clip: Any, params: Mapping[str, Any], progress: Any = None) -> Iterator[Any]:
        from frdm.engine.restorer import RestoredFrame

        for n in clip.targets:
            image = clip.frames[clip.index(n)]
            yield RestoredFrame(n, image, np.zeros(image.shape[:2], np.float32))


def passthrough() -> PassThroughRestorer:
    return PassThroughRestorer()


def make_frames(count: int, width: int, height: int) -> dict[int, bytes]:
    """A graded, grainy scan-like image per frame (compresses like film, not like noise or flat grey)."""
    from frdm.engine.frames import Frame, encode_image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 0.35 + 0.25 * np.sin(x / width * 6.0)[..., None] * np.cos(y / height * 4.0)[..., None]
    out = {}
    for n in range(1, count + 1):
        px = np.empty((height, width, 4), np.float32)
        px[..., :3] = base + 0.03 * rng.standard_normal((height, width, 3), dtype=np.float32) + 0.002 * n
        if n % 3 == 0:  # a few dust specks for the classical engine
            px[height // 3 : height // 3 + 6, width // 2 : width // 2 + 6, :3] = 0.95
        px[..., 3] = 1.0
        frame = Frame(px, ("R", "G", "B", "A"), ("half",) * 4, (0, 0, width, height), (0, 0, width, height))
        out[n] = encode_image(frame)
    return out


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


def server_round(address: str, params: dict[str, Any], sources: dict[int, bytes]) -> tuple[float, int]:
    from frdm.server.client import FrdmClient

    with FrdmClient(address, timeout=120) as client:
        start = time.perf_counter()
        cached = 0
        for event in client.restore(params, sorted(sources), sources=sources):
            if event.kind == "error":
                raise RuntimeError(f"{event.code}: {event.message}")
            cached += int(event.kind == "frame" and event.cached)
        return time.perf_counter() - start, cached


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--height", type=int, default=1556)
    ap.add_argument("--frames", type=int, default=12, help="frames per round trip")
    ap.add_argument("--repeats", type=int, default=3, help="raw socket rounds (the best is kept)")
    ap.add_argument("--classical-frames", type=int, default=4, help="frames for the classical overhead")
    ap.add_argument(
        "--classical-size",
        default=None,
        metavar="WxH",
        help="frame size for the classical overhead (default: --width x --height; the classical engine at 2K "
        "takes minutes per frame on a busy 2-core CPU)",
    )
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # figures appear as they are measured

    from frdm.engine.classical import ClassicalRestorer
    from frdm.engine.frames import MemorySource, decode_image, encode_image
    from frdm.engine.pipeline import restore_frames

    sources = make_frames(args.frames, args.width, args.height)
    blobs = [sources[n] for n in sorted(sources)]
    megabytes = sum(len(b) for b in blobs) / 1e6
    print(f"frames: {args.frames} x {args.width}x{args.height} RGBA half EXR, {megabytes / args.frames:.1f} MB each")

    raw = min(raw_socket_pair(blobs, 1) for _ in range(args.repeats))
    raw_fps = args.frames / raw

    with tempfile.TemporaryDirectory(prefix="frdm-bench-") as tmp:
        server = Server(os.path.join(tmp, "cache-pass"), "--restorer", "server_roundtrip:passthrough")
        try:
            # Warm-up (imports, first allocations) on other parameters, so the timed round misses the cache.
            server_round(server.address, dict(PASS, feather=1.0), {1: sources[1]})
            seconds, _ = server_round(server.address, PASS, sources)
            cached_seconds, cached = server_round(server.address, PASS, sources)
        finally:
            server.stop()
        assert cached == args.frames
        fps, cached_fps = args.frames / seconds, args.frames / cached_seconds
        print(f"plain zmq socket pair (send all, echo each): {raw_fps:8.2f} frames/s")
        print(f"frdm serve round trip, pass-through engine:  {fps:8.2f} frames/s   ratio {fps / raw_fps:.3f}")
        print(
            f"frdm serve round trip, all from cache:       {cached_fps:8.2f} frames/s   "
            f"ratio {cached_fps / raw_fps:.3f}"
        )

        if args.classical_size:
            cw, ch = (int(v) for v in args.classical_size.lower().split("x"))
            few = make_frames(args.classical_frames, cw, ch)
        else:
            cw, ch = args.width, args.height
            few = {n: sources[n] for n in sorted(sources)[: args.classical_frames]}
        print(f"classical engine on {len(few)} frames of {cw}x{ch}:", flush=True)
        params = {"colorspace": "srgb"}
        memory = MemorySource({n: decode_image(b, name=f"frame {n}") for n, b in few.items()}, "bench")
        for _ in restore_frames(memory, [1], dict(params, feather=1.0), ClassicalRestorer()):
            pass  # the same warm-up as the server's
        start = time.perf_counter()
        for _ in restore_frames(memory, sorted(few), params, ClassicalRestorer()):
            pass
        inproc = (time.perf_counter() - start) / len(few)
        server = Server(os.path.join(tmp, "cache-classical"), "--engine", "classical")
        try:
            server_round(server.address, dict(params, feather=1.0), {1: few[1]})
            seconds, _ = server_round(server.address, params, few)
        finally:
            server.stop()
        per_frame = seconds / len(few)
        # The EXR codec the protocol implies (the server decodes each source and encodes each result).
        start = time.perf_counter()
        decoded = [decode_image(b) for b in few.values()]
        decode_s = (time.perf_counter() - start) / len(few)
        start = time.perf_counter()
        for frame in decoded:
            encode_image(frame)
        encode_s = (time.perf_counter() - start) / len(few)
        print(f"classical engine in process (restore_frames): {inproc * 1000:8.1f} ms/frame")
        print(f"classical engine through frdm serve:          {per_frame * 1000:8.1f} ms/frame")
        print(
            f"server overhead per frame:                    {(per_frame - inproc) * 1000:8.1f} ms "
            f"({(per_frame - inproc) / inproc * 100:.1f}% of the engine's time)"
        )
        rest = per_frame - inproc - decode_s - encode_s
        print(f"  of which EXR decode {decode_s * 1000:.1f} ms + encode {encode_s * 1000:.1f} ms (OpenImageIO);")
        print(f"  the rest (wire, hashing, cache write, queue): {rest * 1000:.1f} ms/frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
