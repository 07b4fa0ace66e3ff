"""The inference server and its client, end to end: the real server runs as a subprocess
(``python -m frdm.cli serve``) with a restorer double from tests/server_restorers.py whose timing the tests
control; the wire is real ZeroMQ on 127.0.0.1 (or ipc://)."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frdm.engine.errors import FrdmError
from frdm.server import protocol
from frdm.server.client import Event, FrdmClient, ServerError, load_curve_keys

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
W, H = 64, 48
RAW = {"mask": "none", "colorspace": "raw"}  # the output is exactly what the restorer made


# --- helpers -----------------------------------------------------------------------------------------


def make_frame(value: float, seed: int = 0):
    from frdm.engine.frames import Frame

    rng = np.random.default_rng(seed)
    px = np.empty((H, W, 4), np.float32)
    px[..., :3] = value + 0.05 * rng.random((H, W, 3), dtype=np.float32)
    px[..., 3] = 1.0
    return Frame(px, ("R", "G", "B", "A"), ("half",) * 4, (0, 0, W, H), (0, 0, W, H))


def exr_bytes(value: float, seed: int = 0) -> bytes:
    from frdm.engine.frames import encode_image

    return encode_image(make_frame(value, seed))


def decode(data: bytes) -> np.ndarray:
    from frdm.engine.frames import decode_image

    return decode_image(data).pixels


def expected_mean(sources: dict[int, bytes], frame: int) -> np.ndarray:
    """What NeighbourMeanRestorer makes of ``frame``: the mean RGB of frame-1..frame+1 that exist."""
    window = [decode(sources[n])[..., :3] for n in (frame - 1, frame, frame + 1) if n in sources]
    return np.mean(window, axis=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``frdm serve`` in a subprocess; ``address`` is where it listens once started."""

    def __init__(
        self,
        tmp: Path,
        *args: str,
        restorer: str | None = "server_restorers:fast",
        bind: str | None = None,
        cache: Path | None = None,
        delay: float = 0.4,
    ):
        self.bind = bind or f"tcp://127.0.0.1:{free_port()}"
        self.cache = cache or tmp / "cache"
        cmd = [
            sys.executable,
            "-m",
            "frdm.cli",
            "serve",
            "--bind",
            self.bind,
            "--cache-dir",
            str(self.cache),
            *args,
        ]
        if restorer:
            cmd += ["--restorer", restorer]
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            FRDM_TEST_FRAME_DELAY=str(delay),
            OMP_NUM_THREADS="1",
        )
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if "listening on" in line:
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 60) -> ServerProcess:
        self._ready.wait(timeout)
        if self.proc.poll() is not None or not any("listening on" in x for x in self.lines):
            raise RuntimeError("server did not start:\n" + "".join(self.lines))
        return self

    @property
    def address(self) -> str:
        return self.bind

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("root")


@pytest.fixture(scope="module")
def fast_server(tmp_path_factory, root):
    tmp = tmp_path_factory.mktemp("fast")
    server = ServerProcess(
        tmp, "--allow-root", str(root), "--max-frames", "50", "--max-pixels", str(256 * 256), "--max-message-mb", "2"
    )
    yield server.wait_ready()
    server.stop()


def wait_until_gone(address: str, job_id: str, seconds: float = 15) -> None:
    """The job leaves the server's table (it stops between steps, so allow it a moment)."""
    with FrdmClient(address, timeout=5) as client:
        deadline = time.monotonic() + seconds
        while job_id in client.status()["jobs"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert job_id not in client.status()["jobs"]


def collect(events) -> list[Event]:
    return list(events)


# --- host side imports -------------------------------------------------------------------------------


def test_protocol_and_client_import_without_torch_oiio_cv2():
    code = r"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'OpenImageIO', 'cv2'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import frdm.server.protocol, frdm.server.client
c = frdm.server.client.FrdmClient('tcp://127.0.0.1:1', timeout=0.1, retries=0)
h, blobs = frdm.server.protocol.restore_header('r', 'j', {}, [1], {1: b'x'}, {1: '/a/b.exr'})
assert blobs == [b'x'] and h['masks'] == [{'frame': 1, 'path': '/a/b.exr'}]
c.close()
bad = [m for m in ('torch', 'OpenImageIO', 'cv2') if m in sys.modules]
assert not bad, bad
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


# --- protocol, in process ----------------------------------------------------------------------------


def test_exr_info_reads_what_openimageio_wrote(tmp_path):
    from frdm.engine.frames import Frame, encode_image

    px = np.zeros((23, 37, 5), np.float32)
    frame = Frame(px, ("R", "G", "B", "A", "mask"), ("half",) * 4 + ("float",), (5, 7, 37, 23), (0, 0, 64, 48))
    data = encode_image(frame)
    info = protocol.exr_info(data)
    assert (info.width, info.height, info.channels, info.parts) == (37, 23, 5, 1)
    with pytest.raises(protocol.ProtocolError) as exc:
        protocol.exr_info(data[:40])
    assert exc.value.code == "bad_input"
    with pytest.raises(protocol.ProtocolError):
        protocol.exr_info(b"\x89PNG\r\n\x1a\n" + data[8:])


def huge_exr_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A few bytes that declare an enormous image: a decompression bomb if a decoder trusted it."""

    def attr(name: str, kind: str, value: bytes) -> bytes:
        return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value

    channels = b"".join(c + b"\0" + struct.pack("<iB3xii", 1, 0, 1, 1) for c in (b"B", b"G", b"R")) + b"\0"
    head = b"\x76\x2f\x31\x01" + struct.pack("<I", 2)
    head += attr("channels", "chlist", channels)
    head += attr("compression", "compression", b"\x03")
    head += attr("dataWindow", "box2i", struct.pack("<4i", 0, 0, width - 1, height - 1))
    head += attr("displayWindow", "box2i", struct.pack("<4i", 0, 0, width - 1, height - 1))
    return head + b"\0" + b"\0" * 64


def test_check_exr_size_refuses_a_declared_huge_frame():
    info = protocol.exr_info(huge_exr_header())
    assert (info.width, info.height, info.channels) == (100_000, 100_000, 3)
    with pytest.raises(protocol.ProtocolError) as exc:
        protocol.check_exr_size(info, protocol.Limits(), "frame 1")
    assert exc.value.code == "too_large" and "frame 1" in str(exc.value)


@pytest.mark.parametrize(
    "change, code",
    [
        ({"frames": [1, 1]}, "bad_request"),
        ({"frames": [True]}, "bad_request"),
        ({"frames": [2]}, "bad_input"),  # no source for frame 2
        ({"sources": [{"frame": 1, "blob": 2}]}, "bad_request"),
        ({"sources": [{"frame": 1, "blob": 1, "path": "/x.exr"}]}, "bad_request"),
        ({"sources": [{"frame": 1, "path": "relative.exr"}]}, "forbidden_path"),
        ({"params": {"feathr": 1}}, "bad_param"),
        ({"params": {"feather": -1}}, "bad_param"),
        ({"frames": list(range(11))}, "too_large"),
        ({"output_dir": "/a", "output_pattern": "/a/x.%04d.exr"}, "bad_request"),
    ],
)
def test_parse_restore_names_what_is_wrong(change, code):
    h = protocol.make_header("restore", "r1", job="j1", params={}, frames=[1], sources=[{"frame": 1, "blob": 1}])
    h.update(change)
    with pytest.raises(protocol.ProtocolError) as exc:
        protocol.parse_restore(h, 1, protocol.Limits(max_frames_per_job=10))
    assert exc.value.code == code


def test_resolve_under_roots(tmp_path):
    from frdm.server.server import resolve_under_roots

    root = tmp_path / "root"
    root.mkdir()
    (root / "a.exr").write_bytes(b"x")
    outside = tmp_path / "secret.exr"
    outside.write_bytes(b"x")
    (root / "link.exr").symlink_to(outside)
    roots = [os.path.realpath(root)]
    assert resolve_under_roots(str(root / "a.exr"), roots, what="s", must_exist=True) == os.path.realpath(
        root / "a.exr"
    )
    for bad in (str(outside), str(root / "link.exr"), str(root / ".." / "secret.exr")):
        with pytest.raises(protocol.ProtocolError) as exc:
            resolve_under_roots(bad, roots, what="s", must_exist=True)
        assert exc.value.code == "forbidden_path"
    with pytest.raises(protocol.ProtocolError) as exc:
        resolve_under_roots(str(root / "a.exr"), [], what="s", must_exist=True)
    assert exc.value.code == "forbidden_path" and "--allow-root" in str(exc.value)


# --- the real server ---------------------------------------------------------------------------------


def test_stale_partials_of_dead_writers_only_are_removed(tmp_path):
    from frdm.engine.atomic import PARTIAL_PREFIX, remove_stale
    from frdm.engine.atomic import write_bytes as atomic_write_bytes

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    names = {
        "dead": f"{PARTIAL_PREFIX}{host}~{dead.pid}~1~frdm.0001.exr",
        "alive": f"{PARTIAL_PREFIX}{host}~{os.getpid()}~1~frdm.0002.exr",  # a writer still at work
        "other_host": f"{PARTIAL_PREFIX}elsewhere~{dead.pid}~1~frdm.0003.exr",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"half a frame")
    remove_stale(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names["alive"], names["other_host"]])
    atomic_write_bytes(str(tmp_path / "sub" / "x.exr"), b"whole")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.exr"]


def test_hello_reports_version_engine_and_limits(fast_server):
    from frdm import __version__

    with FrdmClient(fast_server.address, timeout=5) as client:
        info = client.hello()
    assert info["version"] == __version__ and info["protocol"] == protocol.PROTOCOL_VERSION
    assert info["engine_version"] == "test-mean-1" and info["device"] == "cpu"
    assert info["limits"]["max_frames_per_job"] == 50 and info["limits"]["max_pixels_per_frame"] == 256 * 256
    assert info["memory"]["ram_total"] > 0 and info["path_mode"] is True


def test_inline_range_with_context_then_cache(fast_server):
    sources = {n: exr_bytes(0.1 * n, seed=n) for n in range(1, 6)}  # 1 and 5 are context only
    with FrdmClient(fast_server.address, timeout=5) as client:
        events = collect(client.restore(RAW, [2, 3, 4], sources=sources))
        kinds = [e.kind for e in events]
        assert kinds[0] == "accepted" and kinds[-1] == "done"
        frames = [e for e in events if e.kind == "frame"]
        assert [e.frame for e in frames] == [2, 3, 4] and not any(e.cached for e in frames)
        for e in frames:
            out = decode(e.data)
            np.testing.assert_allclose(out[..., :3], expected_mean(sources, e.frame), atol=2e-3)
            np.testing.assert_array_equal(out[..., 3], decode(sources[e.frame])[..., 3])  # alpha kept
        # The same request again: every frame from the cache, byte for byte.
        again = [e for e in client.restore(RAW, [2, 3, 4], sources=sources) if e.kind == "frame"]
        assert all(e.cached for e in again) and [e.data for e in again] == [e.data for e in frames]
        # A parameter that changes the result misses the cache; one of another engine's run stage does not.
        changed = [e for e in client.restore(dict(RAW, feather=5.0), [3], sources=sources) if e.kind == "frame"]
        assert not changed[0].cached
        same = [e for e in client.restore(dict(RAW, vram_budget_gb=3.0), [3], sources=sources) if e.kind == "frame"]
        assert same[0].cached
        # A changed neighbour (context) invalidates the frame that reads it, and only that one.
        sources2 = {**sources, 5: exr_bytes(0.9, seed=9)}
        third = {e.frame: e.cached for e in client.restore(RAW, [2, 3, 4], sources=sources2) if e.kind == "frame"}
        assert third == {2: True, 3: True, 4: False}
        # Mixed cached and restored frames still arrive in increasing order.
        sources3 = {**sources, 1: exr_bytes(0.8, seed=8)}
        fourth = [(e.frame, e.cached) for e in client.restore(RAW, [2, 3, 4], sources=sources3) if e.kind == "frame"]
        assert fourth == [(2, False), (3, True), (4, True)]


def test_path_mode_reads_and_writes_under_root(fast_server, root):
    from frdm.engine.frames import read_frame

    shot = root / "sh010"
    shot.mkdir()
    sources = {}
    for n in (1, 2, 3):
        (shot / f"src.{n:04d}.exr").write_bytes(exr_bytes(0.2 * n, seed=n))
        sources[n] = str(shot / f"src.{n:04d}.exr")
    out_dir = root / "out"
    with FrdmClient(fast_server.address, timeout=5) as client:
        events = collect(client.restore(RAW, [1, 2, 3], sources=sources, output_dir=str(out_dir)))
        assert events[-1].kind == "done", events[-1]
        frames = [e for e in events if e.kind == "frame"]
        assert [e.path for e in frames] == [str(out_dir / f"frdm.{n:04d}.exr") for n in (1, 2, 3)]
        inline = {n: Path(p).read_bytes() for n, p in sources.items()}
        for e in frames:
            assert e.data is None
            np.testing.assert_allclose(read_frame(e.path).pixels[..., :3], expected_mean(inline, e.frame), atol=2e-3)
        # An output pattern, with a mask given by path.
        pattern = str(root / "out2" / "sh010_frdm.####.exr")
        ev = collect(client.restore(RAW, [2], sources=sources, masks={2: sources[2]}, output_pattern=pattern))
        assert ev[-1].kind == "done" and os.path.exists(str(root / "out2" / "sh010_frdm.0002.exr"))


def test_path_mode_refuses_escapes(fast_server, root, tmp_path):
    outside = tmp_path / "outside.exr"
    outside.write_bytes(exr_bytes(0.5))
    (root / "escape.exr").symlink_to(outside)
    inside = root / "inside.exr"
    inside.write_bytes(exr_bytes(0.5))
    cases = [
        ({1: str(outside)}, {}),
        ({1: str(root / "escape.exr")}, {}),
        ({1: str(root) + "/../" + outside.parent.name + "/outside.exr"}, {}),
        ({1: str(inside)}, {"output_dir": str(tmp_path)}),  # output outside the roots
    ]
    with FrdmClient(fast_server.address, timeout=5) as client:
        for sources, kw in cases:
            events = collect(client.restore(RAW, [1], sources=sources, **kw))
            assert [e.kind for e in events] == ["error"] and events[0].code == "forbidden_path", events
        # A pattern whose frame 1 is the input itself: refused rather than overwriting the source.
        (root / "self.1.exr").write_bytes(exr_bytes(0.5))
        events = collect(
            client.restore(RAW, [1], sources={1: str(root / "self.1.exr")}, output_pattern=str(root / "self.%d.exr"))
        )
        assert events[0].code == "forbidden_path" and "overwrite" in events[0].message
        # An output "pattern" that is one file would put every frame into it: refused.
        events = collect(
            client.restore(RAW, [1], sources={1: str(inside)}, output_pattern=str(root / "take#2" / "one.exr"))
        )
        assert events[0].code == "bad_request" and "not a sequence pattern" in events[0].message
        assert client.hello()["protocol"] == protocol.PROTOCOL_VERSION  # still serving


def test_limits_and_bad_frames_get_clear_errors(fast_server):
    with FrdmClient(fast_server.address, timeout=5) as client:
        big = collect(client.restore(RAW, [1], sources={1: huge_exr_header()}))
        assert big[0].code == "too_large" and "100000x100000" in big[0].message
        many = collect(client.restore(RAW, list(range(60)), sources={n: b"x" for n in range(60)}))
        assert many[0].code == "too_large" and "50" in many[0].message
        junk = collect(client.restore(RAW, [1], sources={1: b"not an exr at all"}))
        assert junk[0].code == "bad_input" and "frame 1" in junk[0].message


def test_oversized_request_is_refused_before_it_is_sent(fast_server):
    big = {n: exr_bytes(0.5, seed=n) + b"\0" * 1_200_000 for n in (1, 2)}  # 2.4 MB over a 2 MiB limit
    with FrdmClient(fast_server.address, timeout=5) as client:
        assert client.hello()["limits"]["max_message_bytes"] == 2 << 20
        events = collect(client.restore(RAW, [1, 2], sources=big))
        assert [e.kind for e in events] == ["error"] and events[0].code == "too_large"
        assert "fewer frames" in events[0].message
    # Two parts each under the limit but over it together: the server itself refuses, and goes on.
    with FrdmClient(fast_server.address, timeout=5) as client:  # no hello: no local check
        events = collect(client.restore(RAW, [1, 2], sources=big))
        assert events[0].code == "too_large" and "exceeds the limit" in events[0].message
        assert client.hello()["protocol"] == protocol.PROTOCOL_VERSION


def test_exception_in_a_job_is_an_error_reply_and_the_server_goes_on(fast_server):
    from server_restorers import FAIL_VALUE

    from frdm.engine.frames import Frame, encode_image

    px = np.full((H, W, 3), FAIL_VALUE, np.float32)
    bad = encode_image(Frame(px, ("R", "G", "B"), ("float",) * 3, (0, 0, W, H), (0, 0, W, H)))
    with FrdmClient(fast_server.address, timeout=5) as client:
        events = collect(client.restore(RAW, [1], sources={1: bad}))
        assert events[-1].kind == "error" and events[-1].code == "internal"
        assert "test failure requested by frame 1" in events[-1].message
        ok = collect(client.restore(RAW, [1], sources={1: exr_bytes(0.3)}))
        assert ok[-1].kind == "done"


@pytest.mark.slow
def test_classical_engine_in_chunks_equals_the_in_process_pipeline(tmp_path):
    """The real engine behind the wire, run two frames at a time (the fair queue's chunks): the result is
    the in-process whole-range pipeline's, and the dust spot is gone."""
    from frdm.engine.classical import ClassicalRestorer
    from frdm.engine.frames import MemorySource, decode_image, encode_image
    from frdm.engine.pipeline import restore_frames

    rng = np.random.default_rng(7)
    base = 0.3 + 0.2 * rng.random((H, W, 3), dtype=np.float32)
    sources = {}
    for n in range(1, 7):
        frame = make_frame(0.0, seed=n)
        frame.pixels[..., :3] = base + 0.002 * n
        if n == 3:
            frame.pixels[20:24, 30:34, :3] = 0.95  # dust on one frame only
        sources[n] = encode_image(frame)
    params = {"colorspace": "srgb"}
    server = ServerProcess(tmp_path, "--engine", "classical", "--chunk", "2", restorer=None).wait_ready()
    try:
        with FrdmClient(server.address, timeout=30) as client:
            assert client.hello()["engine_version"] == ClassicalRestorer.engine_version
            events = collect(client.restore(params, [2, 3, 4, 5], sources=sources))
    finally:
        server.stop()
    assert events[-1].kind == "done", events[-1]
    got = {e.frame: decode(e.data) for e in events if e.kind == "frame"}
    memory = MemorySource({n: decode_image(b, name=f"frame {n}") for n, b in sources.items()}, "test")
    for n, frame in restore_frames(memory, [2, 3, 4, 5], params, ClassicalRestorer()):
        np.testing.assert_array_equal(got[n], decode(encode_image(frame)))
    spot = got[3][20:24, 30:34, :3]
    assert np.abs(spot - base[20:24, 30:34] - 0.006).max() < 0.1  # restored towards the clean plate


# --- malformed input, property based ------------------------------------------------------------------

MALFORMED_CASES = {"n": 0}
_VALID = {
    "v": protocol.PROTOCOL_VERSION,
    "type": "restore",
    "id": "r1",
    "job": "j1",
    "params": {},
    "frames": [1],
    "sources": [{"frame": 1, "blob": 1}],
}
_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True),
    st.binary(max_size=8),
    st.text(max_size=8),
    st.lists(st.text(max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=2),
)


def _invalid_for(field: str, value) -> bool:
    if field == "v":
        return value != 1 or isinstance(value, bool)
    if field == "type":
        return value not in protocol.REQUEST_TYPES
    if field in ("id", "job"):
        return not (isinstance(value, str) and 0 < len(value) <= 64 and value.isprintable())
    return True  # frames, sources, params: no junk value above is a valid one


@st.composite
def malformed(draw):
    kind = draw(st.sampled_from(["bytes", "parts", "missing", "wrong_type", "version", "huge", "blob"]))
    exr = b"\x76\x2f\x31\x01"  # the blob a valid restore would carry (content checked later)
    if kind == "bytes":
        return [draw(st.binary(max_size=300))]
    if kind == "parts":
        return [draw(st.binary(max_size=40)) for _ in range(draw(st.integers(2, 4)))]
    if kind == "missing":
        drop = draw(st.sets(st.sampled_from(["v", "type", "id", "frames", "sources"]), min_size=1))
        return [msgpack.packb({k: v for k, v in _VALID.items() if k not in drop}), exr]
    if kind == "wrong_type":
        field = draw(st.sampled_from(["v", "type", "id", "job", "frames", "sources", "params"]))
        value = draw(_junk.filter(lambda x: _invalid_for(field, x)))
        return [msgpack.packb(dict(_VALID, **{field: value})), exr]
    if kind == "version":
        v = draw(st.integers(-(2**63), 2**64 - 1).filter(lambda x: x != 1))
        return [msgpack.packb(dict(_VALID, v=v)), exr]
    if kind == "huge":
        which = draw(st.sampled_from(["frames", "blob_index", "array_len", "exr", "sources"]))
        if which == "frames":
            return [msgpack.packb(dict(_VALID, frames=list(range(draw(st.integers(51, 5000)))))), exr]
        if which == "blob_index":
            return [
                msgpack.packb(dict(_VALID, sources=[{"frame": 1, "blob": draw(st.integers(2, 2**63))}])),
                exr,
            ]
        if which == "array_len":  # a msgpack array declaring billions of items in a few bytes
            return [b"\x81\xa6frames\xdd" + struct.pack(">I", draw(st.integers(2**20, 2**32 - 1))) + b"\x01"]
        if which == "exr":
            w, h = draw(st.integers(257, 10**6)), draw(st.integers(257, 10**6))
            return [msgpack.packb(_VALID), huge_exr_header(w, h)]
        n = draw(st.integers(2200, 4000))
        return [msgpack.packb(dict(_VALID, sources=[{"frame": i, "path": "/x"} for i in range(n)]))]
    # "blob": the header is valid, the blob is not an EXR
    return [msgpack.packb(_VALID), draw(st.binary(max_size=200).filter(lambda b: not b.startswith(exr)))]


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(message=malformed())
def test_malformed_requests_get_an_error_and_the_server_goes_on(fast_server, message):
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(fast_server.address)
    try:
        sock.send_multipart(message)
        assert sock.poll(10_000), f"no reply to {message[:1]!r}"
        reply = protocol.unpack(sock.recv_multipart()[0])
        assert reply["type"] == "error" and reply["code"] in protocol.ERROR_CODES, reply
        assert reply["code"] not in ("internal",), reply  # refused by validation, not by accident
        assert reply["message"]
        MALFORMED_CASES["n"] += 1
        if MALFORMED_CASES["n"] % 50 == 0:  # and it still serves
            sock.send_multipart(protocol.encode(protocol.make_header("hello", "h")))
            assert sock.poll(10_000) and protocol.unpack(sock.recv_multipart()[0])["type"] == "hello"
    finally:
        sock.close(0)


def test_malformed_case_count_and_still_serving(fast_server):
    print(f"\nmalformed-input cases that got an error reply: {MALFORMED_CASES['n']}")
    with FrdmClient(fast_server.address, timeout=5) as client:
        assert client.hello()["protocol"] == protocol.PROTOCOL_VERSION


def test_oversized_header_is_refused(fast_server):
    with FrdmClient(fast_server.address, timeout=5, retries=0) as client, pytest.raises(ServerError) as exc:
        client._request(protocol.make_header("status", "s", pad="x" * (protocol.MAX_HEADER_BYTES + 1)))
    assert exc.value.code == "too_large"


# --- queueing, cancel, crash, shutdown ----------------------------------------------------------------


@pytest.mark.slow
def test_two_clients_are_served_fairly(tmp_path):
    server = ServerProcess(tmp_path, "--chunk", "1", restorer="server_restorers:slow", delay=0.25).wait_ready()
    try:
        order: list[tuple[str, int]] = []
        lock = threading.Lock()
        results: dict[str, list[Event]] = {}
        a_accepted = threading.Event()

        def run(name: str, frames: list[int], base: float) -> None:
            sources = {n: exr_bytes(base, seed=n) for n in frames}
            with FrdmClient(server.address, timeout=10) as client:
                events = []
                for e in client.restore(RAW, frames, sources=sources):
                    events.append(e)
                    if e.kind == "accepted":
                        a_accepted.set()
                    if e.kind == "frame":
                        with lock:
                            order.append((name, e.frame))
                results[name] = events

        a = threading.Thread(target=run, args=("A", list(range(1, 7)), 0.2))
        a.start()
        assert a_accepted.wait(20)
        b = threading.Thread(target=run, args=("B", [1, 2], 0.7))
        b.start()
        a.join(60)
        b.join(60)
        assert results["A"][-1].kind == "done" and results["B"][-1].kind == "done"
        assert [f for n, f in order if n == "A"] == list(range(1, 7))
        last_b = max(i for i, (n, _) in enumerate(order) if n == "B")
        last_a = max(i for i, (n, _) in enumerate(order) if n == "A")
        # Round-robin a frame at a time: B's two frames do not wait for all six of A's.
        assert last_b < last_a, order
        # Each got its own pixels (no cross-talk between the jobs).
        b_frames = [e for e in results["B"] if e.kind == "frame"]
        assert decode(b_frames[0].data)[0, 0, 0] > 0.6
    finally:
        server.stop()


@pytest.mark.slow
def test_heartbeat_keeps_a_slow_frame_alive(tmp_path):
    # One frame takes 2.5 s; the client gives up after 1.5 s of silence. The heartbeat must bridge it.
    server = ServerProcess(tmp_path, restorer="server_restorers:slow", delay=2.5).wait_ready()
    try:
        with FrdmClient(server.address, timeout=1.5, retries=0) as client:
            events = collect(client.restore(RAW, [1], sources={1: exr_bytes(0.3)}))
    finally:
        server.stop()
    assert events[-1].kind == "done", events[-1]
    beats = [e for e in events if e.kind == "progress"]
    assert len(beats) >= 2 and all(e.total == 1 for e in beats)
    assert [e.done for e in beats] == sorted(e.done for e in beats) and beats[-1].done > 0


@pytest.mark.slow
def test_cancel_mid_job_from_another_thread(tmp_path):
    server = ServerProcess(tmp_path, restorer="server_restorers:slow", delay=0.3).wait_ready()
    try:
        sources = {n: exr_bytes(0.3, seed=n) for n in range(1, 21)}
        client = FrdmClient(server.address, timeout=5)
        events: list[Event] = []
        first_frame = threading.Event()

        def run() -> None:
            for e in client.restore(RAW, list(range(1, 21)), sources=sources, job_id="job-to-cancel"):
                events.append(e)
                if e.kind == "frame":
                    first_frame.set()

        t = threading.Thread(target=run)
        t.start()
        assert first_frame.wait(30)
        with FrdmClient(server.address, timeout=5) as other:
            status = other.status()
        assert status["current"] == "job-to-cancel" and status["jobs"]["job-to-cancel"]["total"] == 20
        # Knowing the id from status is not enough to cancel someone else's job.
        with FrdmClient(server.address, timeout=5) as other, pytest.raises(ServerError) as refused:
            other.cancel("job-to-cancel")
        assert refused.value.code == "not_owner"
        client.cancel("job-to-cancel")  # from the test's thread while the worker thread iterates
        t.join(20)
        assert not t.is_alive()
        assert events[-1].kind == "error" and events[-1].code == "cancelled"
        assert 1 <= sum(e.kind == "frame" for e in events) < 20
        client.cancel("job-to-cancel")  # already finished: a no-op, not an error
        with FrdmClient(server.address, timeout=5) as other:
            assert other.status()["jobs"] == {}
            assert collect(other.restore(RAW, [1], sources={1: sources[1]}))[-1].kind == "done"
        # Leaving the loop early cancels the job (a Nuke user closing the progress dialog).
        for e in client.restore(RAW, list(range(1, 21)), sources=sources, job_id="job-left"):
            if e.kind == "frame":
                break
        wait_until_gone(server.address, "job-left")
        client.close()
        # A client that vanishes mid-job (its socket closed, no cancel sent): the server notices at its
        # next heartbeat and drops the job rather than restoring for nobody.
        header, blobs = protocol.restore_header("r-gone", "job-gone", RAW, list(range(1, 21)), sources)
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.connect(server.address)
        sock.send_multipart(protocol.encode(header, blobs))
        assert sock.poll(5000) and protocol.unpack(sock.recv_multipart()[0])["type"] == "accepted"
        sock.close(0)
        wait_until_gone(server.address, "job-gone")
    finally:
        server.stop()


def wait_for_entries(cache: Path, suffix: str, count: int, seconds: float = 30) -> None:
    """Until the server's cache folder holds ``count`` entries named ``*suffix`` (an entry appears only once
    complete: written atomically). Entries are written in the order they were made, and a frame's entry is
    made before its reply is sent: the first ``count`` entries are those of the first ``count`` frames."""
    deadline = time.monotonic() + seconds
    while sum(p.name.endswith(suffix) for p in cache.iterdir()) < count:
        assert time.monotonic() < deadline, f"fewer than {count} {suffix} entries in {cache} after {seconds} s"
        time.sleep(0.01)


@pytest.mark.slow
def test_kill_9_mid_job_then_restart_completes_from_cache(tmp_path):
    from frdm.engine.frames import read_frame

    root = tmp_path / "root"
    (root / "out").mkdir(parents=True)
    sources = {}
    for n in range(1, 7):
        (root / f"s.{n:04d}.exr").write_bytes(exr_bytes(0.1 * n, seed=n))
        sources[n] = str(root / f"s.{n:04d}.exr")
    inline = {n: Path(p).read_bytes() for n, p in sources.items()}
    args = ("--allow-root", str(root), "--chunk", "2")
    server = ServerProcess(tmp_path, *args, restorer="server_restorers:slow", delay=0.4).wait_ready()
    timeout = 3.0
    got: list[Event] = []
    try:
        with FrdmClient(server.address, timeout=timeout, retries=1) as client:
            killed_at = None
            for e in client.restore(RAW, list(range(1, 7)), sources=sources, output_dir=str(root / "out")):
                got.append(e)
                if e.kind == "frame" and killed_at is None and sum(x.kind == "frame" for x in got) == 2:
                    # A frame's reply does not wait for its cache entry (a thread of its own writes it): the
                    # kill waits until the entries of the frames delivered are on disk, or the restart might
                    # find one missing (a race the test lost on a busy machine).
                    wait_for_entries(server.cache, ".frame", 2)
                    os.kill(server.proc.pid, signal.SIGKILL)
                    killed_at = time.monotonic()
            reported = time.monotonic() - killed_at
    finally:
        server.stop()
    assert got[-1].kind == "error" and got[-1].code == "server_unreachable", got[-1]
    assert "restart" in got[-1].message.lower()
    assert reported < timeout + 2.0  # within its timeout (plus scheduling slack on a busy machine)
    done_before = [e.frame for e in got if e.kind == "frame"]
    # No partial output: every visible output file is a complete frame with the right pixels.
    visible = sorted(p for p in (root / "out").iterdir() if not p.name.startswith("."))
    assert {p.name for p in visible} >= {f"frdm.{n:04d}.exr" for n in done_before}
    for p in visible:
        n = int(p.name.split(".")[1])
        np.testing.assert_allclose(read_frame(p).pixels[..., :3], expected_mean(inline, n), atol=2e-3)

    server = ServerProcess(
        tmp_path, *args, restorer="server_restorers:slow", delay=0.4, cache=server.cache
    ).wait_ready()
    try:
        with FrdmClient(server.address, timeout=10) as client:
            again = collect(client.restore(RAW, list(range(1, 7)), sources=sources, output_dir=str(root / "out")))
    finally:
        server.stop()
    assert again[-1].kind == "done"
    cached = {e.frame: e.cached for e in again if e.kind == "frame"}
    assert sorted(cached) == list(range(1, 7))
    assert all(cached[n] for n in done_before) and not all(cached.values())
    assert not [p for p in (root / "out").iterdir() if p.name.startswith(".frdm-partial-")]
    for n in range(1, 7):
        np.testing.assert_allclose(
            read_frame(root / "out" / f"frdm.{n:04d}.exr").pixels[..., :3],
            expected_mean(inline, n),
            atol=2e-3,
        )


@pytest.mark.slow
def test_sigterm_finishes_the_frame_then_exits_over_ipc(tmp_path):
    bind = f"ipc://{tmp_path}/frdm.sock"
    server = ServerProcess(tmp_path, restorer="server_restorers:slow", bind=bind, delay=0.4).wait_ready()
    try:
        sources = {n: exr_bytes(0.2, seed=n) for n in range(1, 9)}
        events: list[Event] = []
        with FrdmClient(bind, timeout=5) as client:
            for e in client.restore(RAW, list(range(1, 9)), sources=sources):
                events.append(e)
                if e.kind == "frame" and e.frame == 1:
                    server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(15) == 0
    finally:
        server.stop()
    frames = [e for e in events if e.kind == "frame"]
    assert events[-1].kind == "error" and events[-1].code == "shutting_down", events[-1]
    assert 2 <= len(frames) < 8  # the frame in progress at SIGTERM was finished and delivered
    for e in frames:
        np.testing.assert_allclose(decode(e.data)[..., :3], expected_mean(sources, e.frame), atol=2e-3)


# --- security -----------------------------------------------------------------------------------------


def test_non_loopback_bind_without_keys_is_refused(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "frdm.cli",
            "serve",
            "--bind",
            f"tcp://0.0.0.0:{free_port()}",
            "--cache-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "frdm keygen" in out.stderr and "0.0.0.0" in out.stderr


@pytest.mark.slow
def test_curve_keys_authenticate_clients(tmp_path):
    keys = tmp_path / "keys"
    made = subprocess.run(
        [sys.executable, "-m", "frdm.cli", "keygen", str(keys)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    assert oct((keys / "server.key_secret").stat().st_mode & 0o777) == "0o600"
    port = free_port()
    # With keys, a non-loopback bind is allowed (and reached here through 127.0.0.1).
    server = ServerProcess(tmp_path, "--curve-keys", str(keys), bind=f"tcp://0.0.0.0:{port}").wait_ready()
    address = f"tcp://127.0.0.1:{port}"
    try:
        with FrdmClient(address, timeout=5, **load_curve_keys(keys)) as client:
            assert client.hello()["secure"] is True
            done = collect(client.restore(RAW, [1], sources={1: exr_bytes(0.4)}))
            assert done[-1].kind == "done"
        # Without the server's key: the handshake never completes, the client reports it and gives up.
        with FrdmClient(address, timeout=1, retries=1) as plain, pytest.raises(ServerError) as exc:
            plain.hello()
        assert exc.value.code == "server_unreachable"
        # With the server's key but a client key the server has not listed: refused too.
        server_key = load_curve_keys(keys)["server_public_key"]
        with FrdmClient(address, timeout=1, retries=0, server_public_key=server_key) as stranger:
            with pytest.raises(ServerError):
                stranger.hello()
            events = collect(stranger.restore(RAW, [1], sources={1: exr_bytes(0.4)}))
            assert events[-1].code == "server_unreachable"
        assert isinstance(exc.value, FrdmError)
    finally:
        server.stop()


def test_ipv6_loopback_bind_serves():
    """tcp://[::1] is loopback too: the server must bind it (libzmq needs IPv6 switched on) and the client reach it."""
    import socket

    try:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
        port = s.getsockname()[1]
        s.close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    address = f"tcp://[::1]:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "frdm.cli", "serve", "--bind", address], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        with FrdmClient(address, timeout=10, retries=3) as client:
            assert client.hello()["protocol"] == protocol.PROTOCOL_VERSION
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_serve_reuses_the_pages_of_a_request_s_frame_buffers_for_the_next_request():
    """``frdm serve`` tunes malloc so that the next request's frame buffers reuse the pages of the last one's
    (freed together when its job is done; glibc's default hands them back and the kernel zeroes fresh ones):
    counted as minor page faults in a child process."""
    code = r"""
import ctypes, resource, sys
from frdm.commands.tuning import tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc()
faults = []
for _ in range(3):  # requests of 4 frames (2K RGBA half: 25 MB each)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    request = [ctypes.create_string_buffer(25 << 20) for _ in range(4)]  # written through, as received
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
    del request
print(faults[-1])
"""
    faults = {
        how: int(subprocess.run([sys.executable, "-c", code, how], capture_output=True, text=True, check=True).stdout)
        for how in ("default", "tuned")
    }
    pages = 4 * (25 << 20) // 4096
    assert faults["default"] > pages // 2  # glibc's default: fresh pages for every request
    assert faults["tuned"] < pages // 20  # tuned: the pages the last request touched
