"""The server never trusts its inputs (issue 12): OCIO configs, path-mode files opened from the root without
following symlinks, per-frame memory from the header by content, the queued-inline budget, the per-part
socket bound, msgpack extension types, a failing cache disk. The real server runs as a subprocess (see
tests/test_server.py for ``ServerProcess`` and the restorer doubles)."""

from __future__ import annotations

import os
import shutil
import struct
import time
import zlib
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from test_server import RAW, ServerProcess, collect, decode, expected_mean, exr_bytes

from frdm.server import protocol, sniff
from frdm.server.client import FrdmClient
from frdm.server.protocol import Limits, ProtocolError

# --- helpers -----------------------------------------------------------------------------------------


def exr_bomb(width: int, height: int, channels: int) -> bytes:
    """A valid zip-compressed half EXR of zeros: 2048x2048 with 64 channels is ~530 KB on the wire and
    1 GiB decoded (the issue's decompression bomb). Built chunk by chunk, so the test never holds the
    pixels itself."""

    def attr(name: str, kind: str, value: bytes) -> bytes:
        return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value

    names = sorted(f"c{i:02d}".encode() for i in range(channels))
    chlist = b"".join(n + b"\0" + struct.pack("<iB3xii", 1, 0, 1, 1) for n in names) + b"\0"  # HALF
    box = struct.pack("<4i", 0, 0, width - 1, height - 1)
    head = b"\x76\x2f\x31\x01" + struct.pack("<I", 2)
    head += attr("channels", "chlist", chlist) + attr("compression", "compression", b"\x03")  # ZIP
    head += attr("dataWindow", "box2i", box) + attr("displayWindow", "box2i", box)
    head += attr("lineOrder", "lineOrder", b"\x00") + attr("pixelAspectRatio", "float", struct.pack("<f", 1))
    head += attr("screenWindowCenter", "v2f", struct.pack("<2f", 0, 0))
    head += attr("screenWindowWidth", "float", struct.pack("<f", 1)) + b"\0"
    chunks = (height + 15) // 16  # ZIP compresses 16 scanlines per chunk
    packed: dict[int, bytes] = {}
    body, offsets = b"", []
    for c in range(chunks):
        n = min(16, height - 16 * c)
        data = packed.setdefault(n, zlib.compress(bytes(width * n * channels * 2), 9))
        offsets.append(len(head) + 8 * chunks + len(body))
        body += struct.pack("<ii", 16 * c, len(data)) + data
    return head + struct.pack(f"<{chunks}Q", *offsets) + body


def peak_rss(proc) -> int:
    """The process's peak resident memory (VmHWM), bytes."""
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


class Pipe:
    """A raw DEALER: several requests in flight at once, replies gathered by request id."""

    def __init__(self, address: str):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.replies: dict[str, list[dict]] = {}

    def send(self, header: dict, blobs=()) -> None:
        self.sock.send_multipart(protocol.encode(header, list(blobs)))

    def restore(self, rid: str, params: dict, frames, sources, masks=None, **kw) -> None:
        self.send(*protocol.restore_header(rid, rid, params, frames, sources, masks, **kw))

    def wait(self, rid: str, kinds=("done", "error"), timeout: float = 20) -> list[dict]:
        """Replies of ``rid`` up to the first of ``kinds``."""
        deadline = time.monotonic() + timeout
        while not any(r["type"] in kinds for r in self.replies.get(rid, [])):
            left = deadline - time.monotonic()
            assert left > 0 and self.sock.poll(int(left * 1000)), f"no {kinds} for {rid}: {self.replies.get(rid)}"
            parts = self.sock.recv_multipart()
            header = protocol.unpack(parts[0])
            header["_blobs"] = parts[1:]
            self.replies.setdefault(header["id"], []).append(header)
        return self.replies[rid]

    def close(self) -> None:
        self.sock.close(0)


def last(replies: list[dict]) -> dict:
    return [r for r in replies if r["type"] != "progress"][-1]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("root")


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("outside")


@pytest.fixture(scope="module")
def server(tmp_path_factory, root):
    """Default limits except a 1 MiB budget of queued inline data; frames take 0.3 s (jobs queue)."""
    tmp = tmp_path_factory.mktemp("inputs")
    proc = ServerProcess(
        tmp, "--allow-root", str(root), "--max-queued-mb", "1", restorer="server_restorers:slow", delay=0.3
    )
    yield proc.wait_ready()
    proc.stop()


# --- in process ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext, channels", [(".exr", 5), (".png", 4), (".tif", 3), (".jpg", 3), (".dpx", 3)])
def test_sniff_reads_each_format_by_content(tmp_path, ext, channels):
    from frdm.engine.frames import Frame, encode_image, read_frame

    px = np.random.default_rng(1).random((21, 34, channels), dtype=np.float32)
    names = ("R", "G", "B", "A", "Z")[:channels]
    fmt = ("half",) * channels if ext == ".exr" else ("uint8",) * channels
    data = encode_image(Frame(px, names, fmt, (0, 0, 34, 21), (0, 0, 34, 21)), ext)
    header = sniff.sniff(sniff.reader_of(data), "frame 7")
    (tmp_path / ("f" + ext)).write_bytes(data)
    decoded = read_frame(tmp_path / ("f" + ext))
    assert (header.width, header.height) == (decoded.width, decoded.height) == (34, 21)
    assert header.channels >= len(decoded.channels)  # an upper bound: a PNG palette may become RGBA
    # The same bytes under another name are still what they are.
    assert sniff.sniff(sniff.reader_of(data), "x").format == header.format
    with pytest.raises(ProtocolError) as exc:
        sniff.sniff(sniff.reader_of(b"GIF89a" + data[6:]), "frame 7")
    assert exc.value.code == "bad_input" and "frame 7" in str(exc.value)


def test_frame_memory_limit_counts_channels():
    header = sniff.sniff(sniff.reader_of(exr_bomb(2048, 2048, 64)), "source frame 1")
    assert (header.format, header.width, header.height, header.channels) == ("exr", 2048, 2048, 64)
    limits = Limits()
    assert header.width * header.height <= limits.max_pixels_per_frame and header.channels <= limits.max_channels
    with pytest.raises(ProtocolError) as exc:  # inside the old limits, over the per-frame memory limit
        sniff.check_frame_size(header, limits, "source frame 1")
    assert exc.value.code == "too_large" and "source frame 1" in str(exc.value) and "64 channels" in str(exc.value)
    sniff.check_frame_size(sniff.ImageHeader("exr", 8192, 4320, 3), limits, "8K RGB")  # a real 8K scan fits


def test_rooted_files_never_follow_a_symlink(tmp_path):
    from frdm.server import storage

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "shot").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.exr").write_bytes(b"outside")
    (root / "shot" / "out.0001.exr").symlink_to(outside / "secret.exr")  # a link where the output goes
    rp = storage.RootedPath(str(root), ("shot", "out.0001.exr"))
    with pytest.raises(ProtocolError) as exc:  # read: the link is refused, not followed
        storage.read_regular(rp, "source frame 1", 1 << 20)
    assert exc.value.code == "forbidden_path" and "symlink" in str(exc.value)
    storage.write_under_root(rp, b"frame", "output frame 1")  # write: the link itself is replaced
    assert (outside / "secret.exr").read_bytes() == b"outside"
    assert not (root / "shot" / "out.0001.exr").is_symlink()
    assert (root / "shot" / "out.0001.exr").read_bytes() == b"frame"
    assert storage.read_regular(rp, "source frame 1", 1 << 20) == b"frame"
    with pytest.raises(ProtocolError) as exc:
        storage.read_regular(rp, "source frame 1", 3)
    assert exc.value.code == "too_large"
    assert sorted(p.name for p in (root / "shot").iterdir()) == ["out.0001.exr"]  # no temporary left


def test_msgpack_timestamps_are_refused():
    data = msgpack.packb({"v": 1, "type": "status", "id": "s", "when": [msgpack.Timestamp(1, 0)]})
    with pytest.raises(ProtocolError) as exc:
        protocol.unpack(data)
    assert exc.value.code == "bad_request" and "Timestamp" in str(exc.value)


# --- the real server -----------------------------------------------------------------------------------


def test_ocio_config_fifo_device_outside_refused_at_once_while_hello_answers(server, root, outside):
    fifo = root / "config.ocio"
    os.mkfifo(fifo)  # OpenImageIO's loader would block on it holding the GIL: every thread stops
    (outside / "studio.ocio").write_text("ocio_profile_version: 2\n")
    (root / "link.ocio").symlink_to(outside / "studio.ocio")
    (root / "dev.ocio").symlink_to("/dev/null")
    (root / "junk.ocio").write_text("not an OCIO config\n")
    source = {1: exr_bytes(0.3)}
    cases = {
        str(fifo): ("forbidden_path", "FIFO"),
        "/dev/stdin": ("forbidden_path", "outside"),
        str(root / "dev.ocio"): ("forbidden_path", "outside"),
        str(root / "link.ocio"): ("forbidden_path", "outside"),
        str(outside / "studio.ocio"): ("forbidden_path", "outside"),
        "relative.ocio": ("forbidden_path", "absolute"),
        "ocio://../../etc/passwd": ("bad_param", "built-in"),
    }
    with FrdmClient(server.address, timeout=3, retries=0) as client:
        for config, (code, words) in cases.items():
            start = time.monotonic()
            events = collect(client.restore(dict(RAW, colorspace="ACEScg", ocio_config=config), [1], sources=source))
            assert time.monotonic() - start < 2.0, config
            assert [e.kind for e in events] == ["error"] and events[0].code == code, (config, events)
            assert "ocio_config" in events[0].message and words in events[0].message, events[0].message
            assert client.hello()["protocol"] == protocol.PROTOCOL_VERSION
        # A regular file under a root is allowed: it reaches the loader (and this one is no config).
        events = collect(
            client.restore(dict(RAW, colorspace="ACEScg", ocio_config=str(root / "junk.ocio")), [1], sources=source)
        )
        assert events[-1].kind == "error" and events[-1].code == "bad_param", events[-1]
        assert "could not be loaded" in events[-1].message
        assert collect(client.restore(dict(RAW, ocio_config="ocio://default"), [1], sources=source))[-1].kind == "done"


def test_symlink_swaps_after_acceptance_neither_read_nor_write_outside(server, root, outside):
    secret = exr_bytes(0.9, seed=99)  # an outside file's pixels must never come back
    for folder in ("swapfile", "swapdir", "outdir"):
        (root / folder).mkdir()
    (outside / "src.0001.exr").write_bytes(secret)
    (outside / "out").mkdir()
    (root / "swapfile" / "src.0001.exr").write_bytes(exr_bytes(0.2, seed=1))
    (root / "swapdir" / "src.0001.exr").write_bytes(exr_bytes(0.2, seed=2))
    inside = root / "in.0001.exr"
    inside.write_bytes(exr_bytes(0.4, seed=3))
    pipe = Pipe(server.address)
    try:
        # A job in front keeps the worker busy (0.3 s a frame) while the paths of the next ones change.
        pipe.restore("front", RAW, [1, 2, 3], {n: exr_bytes(0.5, seed=10 + n) for n in (1, 2, 3)})
        pipe.restore("file", RAW, [1], {1: str(root / "swapfile" / "src.0001.exr")})
        pipe.restore("dir", RAW, [1], {1: str(root / "swapdir" / "src.0001.exr")})
        pipe.restore("out", RAW, [1], {1: str(inside)}, output_dir=str(root / "outdir"))
        for rid in ("front", "file", "dir", "out"):
            assert pipe.wait(rid, kinds=("accepted", "error"))[-1]["type"] == "accepted", pipe.replies[rid]
        (root / "swapfile" / "src.0001.exr").unlink()
        (root / "swapfile" / "src.0001.exr").symlink_to(outside / "src.0001.exr")
        (root / "swapdir").rename(root / "swapdir.old")
        (root / "swapdir").symlink_to(outside)
        (root / "outdir").rmdir()
        (root / "outdir").symlink_to(outside / "out")
        assert last(pipe.wait("front"))["type"] == "done"
        for rid in ("file", "dir", "out"):
            replies = pipe.wait(rid)
            assert not [r for r in replies if r["type"] == "frame"], (rid, replies)
            end = last(replies)
            assert end["type"] == "error" and end["code"] == "forbidden_path", (rid, end)
            assert "symlink" in end["message"] and "frame 1" in end["message"], end["message"]
        assert list((outside / "out").iterdir()) == []  # nothing written outside the root
    finally:
        pipe.close()


def test_decompression_bomb_refused_with_low_peak_rss(server, root):
    bomb = exr_bomb(2048, 2048, 64)  # inside the old default limits (pixels, channels); 1 GiB decoded
    assert len(bomb) < 600_000
    (root / "bomb.0001.png").write_bytes(bomb)  # an EXR named .png: measured as the EXR it is
    with FrdmClient(server.address, timeout=10) as client:
        events = collect(client.restore(RAW, [1], sources={1: bomb}))
        assert [e.kind for e in events] == ["error"] and events[0].code == "too_large", events
        assert "source frame 1" in events[0].message and "64 channels" in events[0].message
        events = collect(client.restore(RAW, [1], sources={1: str(root / "bomb.0001.png")}))
        assert [e.kind for e in events] == ["error"] and events[0].code == "too_large", events
        assert client.hello()["limits"]["max_frame_bytes"] == 512 << 20
    rss = peak_rss(server.proc)
    print(f"\nserver peak RSS after the 64-channel bomb: {rss / 2**20:.0f} MiB")
    assert rss < 1.5e9


def test_queued_inline_data_has_a_server_wide_budget(server):
    padded = {1: exr_bytes(0.3, seed=5) + b"\0" * 700_000}  # 0.7 MB each against a 1 MiB budget
    other = {1: exr_bytes(0.6, seed=6) + b"\0" * 700_000}
    pipe = Pipe(server.address)
    try:
        pipe.restore("first", RAW, [1], padded)
        assert pipe.wait("first", kinds=("accepted", "error"))[-1]["type"] == "accepted"
        pipe.restore("second", RAW, [1], other)
        refused = last(pipe.wait("second"))
        assert refused["code"] == "busy" and "budget" in refused["message"], refused
        assert last(pipe.wait("first"))["type"] == "done"
        pipe.restore("again", RAW, [1], other)  # the first job's bytes are released with it
        assert last(pipe.wait("again"))["type"] == "done"
    finally:
        pipe.close()


def test_a_part_over_the_socket_bound_is_never_received(tmp_path):
    proc = ServerProcess(tmp_path, "--max-frame-mb", "1").wait_ready()
    try:
        pipe = Pipe(proc.address)
        header, _ = protocol.restore_header("big", "big", RAW, [1], {1: b"x"})
        pipe.send(header, [b"\0" * (8 << 20)])  # one 8 MiB part; a 1 MiB frame's file is at most ~2.1 MiB
        assert not pipe.sock.poll(1500), "the server took the part and answered"
        pipe.close()
        with FrdmClient(proc.address, timeout=5) as client:
            assert client.hello()["protocol"] == protocol.PROTOCOL_VERSION
            inline = {1: exr_bytes(0.3, seed=4)}
            assert collect(client.restore(RAW, [1], sources=inline))[-1].kind == "done"  # frames still pass
        assert peak_rss(proc.proc) < 400 << 20
    finally:
        proc.stop()


def test_a_failing_cache_disk_delivers_frames_uncached(tmp_path):
    proc = ServerProcess(tmp_path, restorer="server_restorers:fast").wait_ready()
    try:
        sources = {n: exr_bytes(0.1 * n, seed=20 + n) for n in (1, 2, 3)}
        shutil.rmtree(proc.cache)
        proc.cache.write_bytes(b"")  # the cache folder is gone and cannot be made: every write fails
        with FrdmClient(proc.address, timeout=5) as client:
            for _ in range(2):
                events = collect(client.restore(RAW, [1, 2, 3], sources=sources))
                assert events[-1].kind == "done", events[-1]
                frames = [e for e in events if e.kind == "frame"]
                assert [(e.frame, e.cached) for e in frames] == [(1, False), (2, False), (3, False)]
                for e in frames:
                    np.testing.assert_allclose(decode(e.data)[..., :3], expected_mean(sources, e.frame), atol=2e-3)
    finally:
        proc.stop()
    assert any("not cached" in line for line in proc.lines)


def test_ocio_luts_outside_the_roots_are_refused_before_the_loader_reads_them(server, root, outside):
    """A config under a root names more files (its search_path, each FileTransform's src); OpenColorIO opens
    them wherever they point, so each must lie under a root too, after '..' and symlinks."""
    lut = "Version 1\nFrom 0.0 1.0\nLength 2\nComponents 1\n{\n0.0\n0.5\n}\n"
    (outside / "private.spi1d").write_text(lut)
    (root / "luts").mkdir()
    (root / "luts" / "film.spi1d").write_text(lut)
    (root / "luts" / "link.spi1d").symlink_to(outside / "private.spi1d")

    def config(name: str, search_path: str, src: str) -> str:
        path = root / name
        path.write_text(
            "ocio_profile_version: 2\n"
            f"search_path: {search_path}\n"
            "roles: {default: sRGB, scene_linear: sRGB}\n"
            "displays: {sRGB: [!<View> {name: Raw, colorspace: sRGB}]}\n"
            "colorspaces:\n"
            "  - !<ColorSpace> {name: sRGB}\n"
            f"  - !<ColorSpace> {{name: film, to_scene_reference: !<FileTransform> {{src: '{src}'}}}}\n"
        )
        return str(path)

    cases = {
        config("lut-absolute.ocio", "luts", str(outside / "private.spi1d")): "private.spi1d",
        config("lut-search.ocio", f"luts:../{outside.name}", "private.spi1d"): "search_path",
        config("lut-dotdot.ocio", "luts", f"../../{outside.name}/private.spi1d"): "private.spi1d",
        config("lut-link.ocio", "luts", "link.spi1d"): "link.spi1d",
        config("lut-context.ocio", "luts", "$SHOT/film.spi1d"): "context variable",
    }
    source = {1: exr_bytes(0.3)}
    with FrdmClient(server.address, timeout=5, retries=0) as client:
        for path, words in cases.items():
            events = collect(client.restore(dict(RAW, colorspace="film", ocio_config=path), [1], sources=source))
            assert events[-1].kind == "error" and events[-1].code == "forbidden_path", (path, events[-1])
            assert "ocio_config" in events[-1].message and words in events[-1].message, events[-1].message
        good = config("lut-good.ocio", "luts", "film.spi1d")
        events = collect(client.restore(dict(RAW, colorspace="film", ocio_config=good), [1], sources=source))
        assert events[-1].kind == "done", events[-1]


def test_ocio_lut_checks_resolve_symlinks_before_dotdot_and_read_every_scalar_as_text(tmp_path):
    """'..' after a symlink climbs from the link's target, as the kernel (and so OpenColorIO) opens it, not
    from the link's folder; a src YAML would read as a number or a date is still a file name to yaml-cpp."""
    from frdm.server.ocio_files import check_ocio_files

    root, outside = tmp_path / "root", tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "private.spi1d").write_text("lut")
    root.mkdir()
    (root / "film.spi1d").write_text("lut")
    (root / "link").symlink_to(outside / "deep")  # a folder under the root that leads out
    (root / "123").symlink_to(outside / "private.spi1d")
    roots = [str(root)]

    def config(name: str, search_path: str, src: str) -> str:
        path = root / name
        path.write_text(
            f"ocio_profile_version: 2\nsearch_path: {search_path}\n"
            f"colorspaces:\n  - !<ColorSpace> {{name: film, to_scene_reference: !<FileTransform> {{src: {src}}}}}\n"
        )
        return str(path)

    for path, words in {
        config("src-link-up.ocio", ".", "link/../private.spi1d"): "private.spi1d",
        config("search-link-up.ocio", "link/..", "private.spi1d"): "search_path",
        config("src-number.ocio", ".", "123"): "'123'",
    }.items():
        with pytest.raises(ProtocolError) as err:
            check_ocio_files(path, roots)
        assert err.value.code == "forbidden_path" and words in str(err.value), (path, err.value)
    check_ocio_files(config("good.ocio", ".", "film.spi1d"), roots)
